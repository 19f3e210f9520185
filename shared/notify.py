"""Webhook notifications for operators: rotation failures, drift that needs an operator, near expiry.

One POST per notification to `NOTIFY_WEBHOOK_URL`, shaped for Teams (an Adaptive Card message),
Slack (`text` + blocks) or as generic JSON. Every payload names the platform instance and the
vault. Delivery is bounded (3 attempts, short timeouts, back-off that honours `Retry-After` up to
a cap, 30 s in all); a failure is logged and swallowed: a webhook never fails or blocks a rotation.

The webhook URL is a secret (Slack and Teams put the credential in it): logs name its host only.
Payloads carry names, ids, thumbprints and reasons, never key material or tokens.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from shared.audit import AuditEvent
from shared.core.record import format_time
from shared.retry import Backoff, NotYet, parse_retry_after, retry

log = logging.getLogger("exo_automation.notify")

ATTEMPTS = 3
TIMEOUT_SECONDS = 5.0
BACKOFF_SECONDS = 0.5
MAX_RETRY_AFTER_SECONDS = 5.0  # also the longest wait between attempts
BUDGET_SECONDS = 30.0  # no wait ends later than this after the first attempt began
ROTATION_FACETS = frozenset({"certificate", "keyCredential", "connectionRecord"})
CLEARED = "Cleared"  # the audit result of a run that ends a notified failure
NEAR_EXPIRY_REPEAT = dt.timedelta(hours=24)


@dataclass(frozen=True)
class Notification:
    kind: str  # RotationFailed | NeedsOperator | NearExpiry | Cleared
    identity: str
    summary: str
    facts: dict[str, str] = field(default_factory=dict)
    correlation_id: str | None = None
    severity: str = "error"
    time: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))


def redact(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}/…"


def payload(note: Notification, fmt: str, instance: str, vault: str) -> dict[str, Any]:
    """The body for one notification in the webhook's format (json, teams or slack)."""
    title = f"[{instance or 'exo-automation'}] {note.kind}: {note.identity}"
    facts = {"Instance": instance, "Vault": vault, "Identity": note.identity, **note.facts}
    if note.correlation_id:
        facts["Correlation id"] = note.correlation_id
    if fmt == "teams":
        return {"type": "message", "attachments": [{
            "contentType": "application/vnd.microsoft.card.adaptive", "contentUrl": None,
            "content": {
                "$schema": "http://adaptivecards.io/schemas/adaptive-card.json", "type": "AdaptiveCard",
                "version": "1.4",
                "body": [
                    {"type": "TextBlock", "text": title, "weight": "Bolder", "size": "Medium", "wrap": True,
                     "color": {"error": "Attention", "warning": "Warning"}.get(note.severity, "Good")},
                    {"type": "TextBlock", "text": note.summary, "wrap": True},
                    {"type": "FactSet", "facts": [{"title": k, "value": v} for k, v in facts.items()]},
                ],
            }}]}
    if fmt == "slack":
        lines = "\n".join(f"*{k}:* {v}" for k, v in facts.items())
        return {"text": f"{title}: {note.summary}", "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": title[:150]}},
            {"type": "section", "text": {"type": "mrkdwn", "text": note.summary}},
            {"type": "section", "text": {"type": "mrkdwn", "text": lines}},
        ]}
    return {"type": "exo-automation.notification", "version": 1, "kind": note.kind, "severity": note.severity,
            "instance": instance, "vault": vault, "identity": note.identity, "summary": note.summary,
            "facts": note.facts, "correlationId": note.correlation_id,
            "time": format_time(note.time)}


Sleep = Callable[[float], Awaitable[None]]


async def deliver(url: str, body: dict[str, Any], *, attempts: int = ATTEMPTS, timeout: float = TIMEOUT_SECONDS,
                  backoff: float = BACKOFF_SECONDS, sleep: Sleep = asyncio.sleep) -> bool:
    """POST `body`; retry connection errors, 408, 429 and 5xx. True when the receiver accepted it."""
    import aiohttp

    data = json.dumps(body).encode()
    where = redact(url)
    tries = 0

    async def post() -> bool:
        nonlocal tries
        tries += 1
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session, \
                    session.post(url, data=data, headers={"Content-Type": "application/json"},
                                 allow_redirects=False) as response:
                if 200 <= response.status < 300:
                    return True
                log.warning("webhook %s answered %d (attempt %d of %d)", where, response.status, tries, attempts)
                if not (response.status in (408, 429) or response.status >= 500):
                    return False
                raise NotYet(f"answered {response.status}", retry_after=parse_retry_after(
                    response.headers.get("Retry-After"), dt.datetime.now(dt.UTC)))
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            log.warning("webhook %s failed (attempt %d of %d): %s", where, tries, attempts, type(exc).__name__)
            raise NotYet(type(exc).__name__) from exc

    policy = Backoff(first=backoff, max_delay=max(backoff, MAX_RETRY_AFTER_SECONDS), budget=BUDGET_SECONDS,
                     attempts=attempts, max_retry_after=MAX_RETRY_AFTER_SECONDS)
    try:
        return await retry(post, policy, sleep=sleep)
    except NotYet:
        log.error("webhook %s: giving up after %d attempts; the notification is lost (the logs have the event)",
                  where, tries)
        return False


class Notifier:
    """Sends notifications as the settings say; does nothing when no webhook is configured."""

    def __init__(self, url: str | None, fmt: str, instance: str, vault: str, *,
                 backoff: float | None = None) -> None:
        self.url = url
        self.fmt = fmt
        self.instance = instance
        self.vault = vault
        self.backoff = backoff

    @classmethod
    def from_settings(cls, settings: Any) -> Notifier:
        instance = settings.instance_name or urlsplit(settings.key_vault_url).hostname or ""
        return cls(settings.notify_webhook_url, settings.notify_webhook_format, instance, settings.key_vault_url)

    async def send(self, note: Notification) -> bool:
        if not self.url:
            return False
        try:
            delivered = await deliver(self.url, payload(note, self.fmt, self.instance, self.vault),
                                      backoff=BACKOFF_SECONDS if self.backoff is None else self.backoff)
        except Exception:
            log.exception("webhook %s: unexpected failure sending %s for %s", redact(self.url), note.kind,
                          note.identity)
            return False
        if delivered:
            log.info("notified %s for %s via %s", note.kind, note.identity, redact(self.url))
        return delivered


def _current_notifier() -> Notifier | None:
    from shared.errors import SettingsError
    from shared.settings import Settings

    try:
        settings = Settings.current()
    except SettingsError:
        return None  # the run that emitted the event has already reported the configuration
    return Notifier.from_settings(settings) if settings.notify_webhook_url else None


def notification_for(event: AuditEvent) -> Notification | None:
    """What an operator must hear about an audit event: failures that a redelivery will not fix."""
    if event.result == CLEARED:
        return Notification("Cleared", event.identity, f"{event.identity} is healthy again: {event.detail}"[:1000],
                            {"Operation": event.operation, "Caller": event.caller}, event.correlation_id,
                            severity="info")
    if event.result == "Succeeded" or event.retryable or event.repeat or event.operation == "bootstrap":
        # A bootstrap's caller gets the problem document in the HTTP answer; a repeat was notified
        # less than a day ago (a daily reminder follows while it lasts).
        return None
    rotation = event.operation == "rotate" or event.facet in ROTATION_FACETS
    kind = "RotationFailed" if rotation else "NeedsOperator"
    summary = (f"{event.action} failed during {event.operation} with {event.result}: {event.detail}"
               if event.detail else f"{event.action} failed during {event.operation} with {event.result}")
    facts = {"Operation": event.operation, "Action": event.action, "Facet": event.facet, "Result": event.result,
             "Caller": event.caller}
    for key in ("thumbprint", "publishedThumbprint"):
        if event.before.get(key):
            facts[f"Current {key}"] = str(event.before[key])
    return Notification(kind, event.identity, summary[:1000], facts, event.correlation_id)


async def notify(note: Notification) -> bool:
    """Send `note` to the configured webhook, if any; never raises."""
    notifier = _current_notifier()
    return await notifier.send(note) if notifier is not None else False


async def audit_sink(event: AuditEvent) -> None:
    note = notification_for(event)
    if note is None:
        return
    notifier = _current_notifier()
    if notifier is not None:
        await notifier.send(note)


_near_expiry_sent: dict[str, float] = {}


async def notify_near_expiry(settings: Any, expiring: list[tuple[str, float, str | None]]) -> int:
    """One notification per identity (name, days to expiry, thumbprint) under the threshold, at most
    once a day per identity and process. Returns how many were delivered."""
    notifier = Notifier.from_settings(settings)
    if not notifier.url:
        return 0
    sent = 0
    now = time.monotonic()
    for name, days, thumbprint in expiring:
        last = _near_expiry_sent.get(name)
        if last is not None and now - last < NEAR_EXPIRY_REPEAT.total_seconds():
            continue
        facts = {"Days to expiry": f"{days:.1f}", "Threshold (days)": str(settings.notify_near_expiry_days)}
        if thumbprint:
            facts["Thumbprint"] = thumbprint
        note = Notification("NearExpiry", name, f"the certificate of {name} expires in {days:.1f} days and has "
                            "not been renewed", facts, severity="warning")
        if not await notifier.send(note):
            # Each failure already cost its retries; the next sweep tries the rest again.
            log.warning("near-expiry notifications stop for this sweep: the webhook is failing")
            break
        _near_expiry_sent[name] = now
        sent += 1
    return sent


__all__ = ["Notification", "Notifier", "audit_sink", "deliver", "notification_for", "notify_near_expiry", "payload"]
