"""Issue: notifications reach a webhook (a local HTTPS receiver here), with retries, and a failing
webhook never fails or blocks a rotation."""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from devstack import Stack
from devstack.faults import Fault
from shared import notify, telemetry
from shared.audit import AuditEvent

from .helpers import post_identity, principal_header, rotate
from .platform_helpers import bootstrap, sweep

DAY = 86400.0
SECRET = "sig=do-not-log-me"


class Receiver(ThreadingHTTPServer):
    """A webhook endpoint over HTTPS (the stand-ins' certificate, trusted through SSL_CERT_FILE) that
    answers with the scripted statuses first, then 200."""

    daemon_threads = True

    def __init__(self, stack: Stack) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(stack.state_dir / "server.pem", stack.state_dir / "server.key")
        self.socket = context.wrap_socket(self.socket, server_side=True)
        self.received: list[dict[str, Any]] = []
        self.script: list[int] = []
        self.url = f"https://127.0.0.1:{self.server_address[1]}/hooks/exo?{SECRET}"

    def handle_error(self, request: Any, client_address: Any) -> None:
        return


class _Handler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.received.append({"path": self.path, "contentType": self.headers.get("Content-Type"),
                                     "body": json.loads(body)})
        status = self.server.script.pop(0) if self.server.script else 200
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        return


@pytest.fixture()
def receiver(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> Iterator[Receiver]:
    server = Receiver(stack)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("NOTIFY_WEBHOOK_URL", server.url)
    monkeypatch.setenv("NOTIFY_WEBHOOK_FORMAT", "json")
    monkeypatch.setenv("PLATFORM_INSTANCE_NAME", "exo-func-test")
    monkeypatch.setattr(notify, "BACKOFF_SECONDS", 0.05)
    notify._near_expiry_sent.clear()
    telemetry.install()
    yield server
    server.shutdown()
    server.server_close()


def fail_key_updates(stack: Stack) -> None:
    stack.world.faults.add(Fault.from_json({"service": "graph", "method": "PATCH", "path": "/applications/",
                                            "status": 403}))


def test_a_failed_rotation_is_delivered_after_retries(stack: Stack, receiver: Receiver,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="exo_automation")
    assert post_identity({"name": "notified"}).status == 201
    fail_key_updates(stack)
    receiver.script = [503, 500]  # two failures, then accepted: three deliveries of one notification

    rotated = rotate("notified", headers=principal_header(["ExoIdentities.ReadWrite"]))

    assert rotated.status == 502, rotated.body
    assert len(receiver.received) == 3
    assert [r["body"] for r in receiver.received[1:]] == [receiver.received[0]["body"]] * 2
    hit = receiver.received[-1]
    assert hit["path"] == f"/hooks/exo?{SECRET}" and hit["contentType"] == "application/json"
    body = hit["body"]
    assert body["kind"] == "RotationFailed" and body["identity"] == "notified"
    assert body["instance"] == "exo-func-test" and body["vault"] == stack.settings()["KEY_VAULT_URL"]
    assert body["facts"]["Action"] == "AddKeyCredential" and body["facts"]["Result"] == "GraphPermissionMissing"
    assert body["correlationId"] == rotated.body["run"]["correlationId"]
    assert "-----BEGIN" not in json.dumps(body) and "eyJ" not in json.dumps(body)
    assert SECRET not in caplog.text, "the webhook URL is a secret"
    assert "answered 503" in caplog.text and "notified RotationFailed for notified" in caplog.text


def test_a_failing_webhook_neither_fails_nor_blocks_a_rotation(stack: Stack, receiver: Receiver,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="exo_automation")
    assert post_identity({"name": "unheard"}).status == 201
    fail_key_updates(stack)
    receiver.script = [500] * 10

    failed = rotate("unheard", headers=principal_header(["ExoIdentities.ReadWrite"]))

    assert failed.status == 502 and "graph-permission-missing" in failed.body["type"], "the rotation's own result"
    assert len(receiver.received) == notify.ATTEMPTS, "bounded retries"
    assert "giving up after 3 attempts" in caplog.text
    stack.world.faults.clear()
    receiver.shutdown()  # the webhook is gone altogether: nothing listens any more
    receiver.server_close()
    retried = rotate("unheard", headers=principal_header(["ExoIdentities.ReadWrite"]))
    assert retried.status == 200 and retried.body["result"] == "Succeeded"
    assert SECRET not in caplog.text


def test_successes_notify_nobody(stack: Stack, receiver: Receiver) -> None:
    assert post_identity({"name": "quiet"}).status == 201
    assert rotate("quiet", headers=principal_header(["ExoIdentities.ReadWrite"])).status == 200
    sweep(stack)
    assert receiver.received == []


def test_the_sweep_notifies_near_expiry_once_a_day(stack: Stack, receiver: Receiver,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_WEBHOOK_FORMAT", "teams")
    assert bootstrap(stack, "expiring").error is None
    stack.world.clock.advance(358 * DAY)  # a 12-month certificate never renewed: about a week left
    assert bootstrap(stack, "fresh").error is None

    sweep(stack)
    sweep(stack)

    assert len(receiver.received) == 1
    card = receiver.received[0]["body"]
    assert card["type"] == "message"
    content = card["attachments"][0]["content"]
    assert content["type"] == "AdaptiveCard"
    facts = {f["title"]: f["value"] for f in content["body"][2]["facts"]}
    assert facts["Identity"] == "expiring" and facts["Instance"] == "exo-func-test"
    assert facts["Vault"] == stack.settings()["KEY_VAULT_URL"] and 0 < float(facts["Days to expiry"]) < 14
    assert "NearExpiry" in content["body"][0]["text"]


@pytest.mark.parametrize("fmt", ["json", "teams", "slack"], ids=["generic-json", "teams-card", "slack-blocks"])
def test_every_format_names_the_instance_and_the_vault(fmt: str) -> None:
    note = notify.Notification("NeedsOperator", "reports", "GrantConsent failed", {"Result": "GraphPermissionMissing"},
                               correlation_id="abc")
    text = json.dumps(notify.payload(note, fmt, "exo-func-prod", "https://kv-prod.vault.azure.net/"))
    assert "exo-func-prod" in text and "https://kv-prod.vault.azure.net/" in text and "reports" in text
    assert "GraphPermissionMissing" in text


def test_an_unreachable_webhook_is_logged_by_host_only(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="exo_automation.notify")
    sleeps: list[float] = []

    async def no_sleep(seconds: float) -> None:
        sleeps.append(seconds)

    delivered = asyncio.run(notify.deliver(f"https://127.0.0.1:9/hook?{SECRET}", {"x": 1}, sleep=no_sleep,
                                           timeout=2.0))
    assert delivered is False
    assert sleeps == [notify.BACKOFF_SECONDS, notify.BACKOFF_SECONDS * 2], "exponential back-off between attempts"
    assert "https://127.0.0.1/…" in caplog.text and SECRET not in caplog.text


def test_notification_rules_for_audit_events() -> None:
    def event(**overrides: Any) -> AuditEvent:
        fields: dict[str, Any] = {"correlation_id": "c", "caller": "sweep", "operation": "reconcile",
                                  "identity": "x", "action": "GrantConsent", "facet": "consent",
                                  "result": "GraphPermissionMissing"}
        return AuditEvent(**{**fields, **overrides})

    assert notify.notification_for(event()).kind == "NeedsOperator"  # type: ignore[union-attr]
    assert notify.notification_for(event(action="AddKeyCredential", facet="keyCredential")).kind == "RotationFailed"  # type: ignore[union-attr]
    assert notify.notification_for(event(result="Succeeded")) is None
    assert notify.notification_for(event(result="GraphUnavailable", retryable=True)) is None
    assert notify.notification_for(event(result="SignInNotYetPossible", retryable=True)) is None
    assert notify.notification_for(event(operation="bootstrap")) is None


def test_a_poisoned_reconcile_is_notified_and_shown_in_status(stack: Stack, receiver: Receiver) -> None:
    import azure.functions as func

    from .helpers import call_trigger

    assert post_identity({"name": "poisoned-note"}).status == 201
    body = json.dumps({"name": "poisoned-note", "reasons": ["KeyMissing"], "sweepId": "s1"})
    call_trigger("record_poisoned_reconcile", message=func.QueueMessage(id="m1", body=body.encode()))
    (hit,) = receiver.received
    assert hit["body"]["kind"] == "NeedsOperator" and hit["body"]["identity"] == "poisoned-note"
    assert "poison" in hit["body"]["summary"]


def test_a_lasting_failure_is_notified_once_then_daily_and_once_when_it_clears(
        stack: Stack, receiver: Receiver) -> None:
    from tests.integration.attackers import vault_certificate_writer

    from .platform_helpers import converge, reconcile

    assert bootstrap(stack, "stuck").error is None
    era = "31392ffb-586c-42d1-9346-e59415a2cc4e"
    writer = vault_certificate_writer(stack)
    writer.set_certificate_tags("exo-stuck-cert", roles=f"{era},62e90394-69f5-4237-9190-012177145e10")

    def kinds() -> list[str]:
        return [r["body"]["kind"] for r in receiver.received]

    assert reconcile(stack, "stuck").error.reason == "RoleRefused"  # type: ignore[union-attr]
    assert kinds() == ["NeedsOperator"]
    for _ in range(3):  # the queue retries after each back-off: the same failure, not news
        stack.world.clock.advance(6 * 3600)
        assert reconcile(stack, "stuck").error.reason == "RoleRefused"  # type: ignore[union-attr]
    assert kinds() == ["NeedsOperator"]
    stack.world.clock.advance(7 * 3600)  # over a day since it was notified: a reminder
    assert reconcile(stack, "stuck").error.reason == "RoleRefused"  # type: ignore[union-attr]
    assert kinds() == ["NeedsOperator", "NeedsOperator"]

    stack.world.clock.advance(1800)
    writer.set_certificate_tags("exo-stuck-cert", roles=era)  # an operator puts it right
    assert sweep(stack).due["stuck"] == ["ChangedSinceFailure"]  # no need to wait for the back-off
    converge(stack)
    assert kinds() == ["NeedsOperator", "NeedsOperator", "Cleared"]
    stack.world.clock.advance(2 * DAY)
    converge(stack)
    assert kinds() == ["NeedsOperator", "NeedsOperator", "Cleared"]
