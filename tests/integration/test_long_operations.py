"""Issue #14: writes that outlive HTTP answer 202 and go on from the queue; one writer per identity."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from devstack import Stack
from tests.reliability.common import cert_versions, one_of_everything

from .helpers import delete_identity, post_identity, registered_functions, rotate, run_job_get_mailbox
from .queue_helpers import drain, operation, use_fresh_queue


def test_a_slow_bootstrap_answers_202_quickly_and_completes_through_the_queue(
        stack: Stack, azurite: str, monkeypatch: pytest.MonkeyPatch) -> None:
    queue = use_fresh_queue(monkeypatch)
    monkeypatch.setenv("HTTP_INLINE_BUDGET_SECONDS", "3")
    stack.world.replication_delay = 5.0
    stack.world.key_replication_delay = 30.0
    registered_functions()
    started = time.monotonic()
    answer = post_identity({"name": "slowpoke"})
    assert time.monotonic() - started < 8, "the caller waits the inline budget, not the replication"
    assert answer.status == 202, answer.body
    location = answer.headers["Location"]
    assert location.startswith("/api/operations/") and int(answer.headers["Retry-After"]) > 0
    assert answer.body["status"] == "Running" and answer.body["continuesIn"] == "queue"

    first = operation(location)
    assert first.status == 200 and first.body["status"] == "Running" and "Retry-After" in first.headers

    # The queue run, as the host would run it, while a client polls the operation.
    seen: list[tuple[str, str | None, str | None]] = []
    worker = threading.Thread(target=drain, args=(azurite, queue), kwargs={"timeout": 120})
    worker.start()
    while worker.is_alive():
        body = operation(location).body
        current = body.get("currentStep") or {}
        seen.append((body["status"], current.get("action"), current.get("waitingFor")))
        time.sleep(0.5)
    worker.join()

    done = operation(location)
    assert done.status == 200 and "Retry-After" not in done.headers
    document = done.body
    assert document["status"] == "Succeeded", document
    assert document["resourceLocation"] == "/api/identities/slowpoke"
    assert document["result"]["result"] == "Succeeded"
    steps = [s["action"] for s in document["steps"] if s["result"] == "Succeeded"]
    for action in ("CreateCertificateVersion", "UpsertApplication", "AddKeyCredential", "VerifySignIn",
                   "PublishConnectionRecord"):
        assert action in steps, (action, steps)
    assert ("Running", "VerifySignIn", "key replication") in seen, "a poller is told what the run waits for"
    assert len(cert_versions(stack, "slowpoke")) == 1
    app = one_of_everything(stack, "slowpoke")
    assert len(app["keyCredentials"]) == 1
    assert run_job_get_mailbox(stack, "slowpoke")


def test_rotate_and_delete_answer_202_and_finish_from_the_queue(stack: Stack, azurite: str,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    queue = use_fresh_queue(monkeypatch)
    assert post_identity({"name": "mover"}).status == 201
    monkeypatch.setenv("HTTP_INLINE_BUDGET_SECONDS", "0")  # everything goes through the queue
    rotated = rotate("mover")
    assert rotated.status == 202, rotated.body
    drain(azurite, queue)
    assert operation(rotated.headers["Location"]).body["status"] == "Succeeded"
    assert len(cert_versions(stack, "mover")) == 2, "one rotation, however many deliveries"
    removed = delete_identity("mover")
    assert removed.status == 202
    drain(azurite, queue)
    document = operation(removed.headers["Location"]).body
    assert document["status"] == "Succeeded" and document["resourceLocation"] is None
    assert not [a for a in stack.world.directory.applications.values()
                if a.get("uniqueName") == "exo-automation-mover"]


def test_an_unknown_operation_is_a_404_problem(stack: Stack) -> None:
    for operation_id in ("0" * 32, "not-an-id"):
        answer = operation(f"/api/operations/{operation_id}")
        assert answer.status == 404 and answer.body["reason"] == "OperationNotFound"


def test_a_bad_request_is_answered_at_once_not_queued(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_INLINE_BUDGET_SECONDS", "0")
    answer = post_identity({"name": "Not Valid"})
    assert answer.status == 400
    assert rotate("nobody-here").status == 404


def test_a_busy_identity_answers_202_and_runs_after_the_holder(stack: Stack, azurite: str,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A run that finds the identity's lease held waits within its budget, then hands over to the queue."""
    import asyncio

    from shared.lease import LeaseStore
    from shared.settings import Settings

    queue = use_fresh_queue(monkeypatch)
    monkeypatch.setenv("HTTP_INLINE_BUDGET_SECONDS", "2")
    held = threading.Event()
    release = threading.Event()

    def holder() -> None:
        async def hold() -> None:
            async with LeaseStore(Settings.current()).hold("busy", wait_seconds=5):
                held.set()
                while not release.is_set():
                    await asyncio.sleep(0.1)

        asyncio.run(hold())

    thread = threading.Thread(target=holder)
    thread.start()
    assert held.wait(30)
    started = time.monotonic()
    answer = post_identity({"name": "busy"})
    release.set()
    thread.join()
    assert answer.status == 202 and time.monotonic() - started < 6
    assert answer.body["note"] == "another run of this identity was in progress"
    drain(azurite, queue)
    assert operation(answer.headers["Location"]).body["status"] == "Succeeded"
    one_of_everything(stack, "busy")


def _operations_of(answers: list[Any]) -> list[str]:
    return [a.headers["Location"] for a in answers if a.status == 202]


def test_the_continuation_leaves_through_the_functions_output_binding(
        stack: Stack, azurite: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 202's continuation is the write route's queue output binding: the host sends it when the function
    returns and wakes its own queue listener at once (no wait for the next poll of an idle queue)."""
    import json

    import azure.functions as func

    from devstack.host import queue_outputs, send_outputs

    from .helpers import registered, run_function
    from .queue_helpers import approximate_count

    queue = use_fresh_queue(monkeypatch)
    monkeypatch.setenv("HTTP_INLINE_BUDGET_SECONDS", "1")
    stack.world.key_replication_delay = 5.0
    outputs = queue_outputs(registered("identities"))
    assert {name: output.queue for name, output in outputs.items()} == {"continuation": queue}
    request = func.HttpRequest(method="POST", url="http://localhost/api/identities", params={}, route_params={},
                               headers={"Content-Type": "application/json"}, body=b'{"name": "bound"}')
    answer = run_function("identities", request, outputs)
    assert answer.status_code == 202
    operation_id = json.loads(answer.get_body())["id"]
    assert json.loads(outputs["continuation"].value or "") == {"name": "bound", "operationId": operation_id}
    assert approximate_count(azurite, queue) == 0, "the function sent nothing itself: the binding carries it"

    assert send_outputs(outputs) == [queue]  # what the host does once the function returned
    drain(azurite, queue, timeout=60)
    assert operation(f"/api/operations/{operation_id}").body["status"] == "Succeeded"
