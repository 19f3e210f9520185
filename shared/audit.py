"""Audit events: one per change the product makes (or tries to make), to logs and any sinks.

An event says who asked (`caller`: the HTTP caller principal, `function-key`, `sweep`, `queue`,
`cli:<user>`), which identity and facet, what the action targeted, the ids and thumbprints before
and after, the result, and a correlation id shared by every event of one run. Events carry ids and
thumbprints only, never key material or tokens.

Sinks (telemetry, webhooks) register with `add_sink`; a failing sink is logged and never fails
the run that emitted the event.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("exo_automation.audit")


@dataclass(frozen=True)
class AuditEvent:
    correlation_id: str
    caller: str
    operation: str
    identity: str
    action: str
    facet: str
    result: str
    detail: str = ""
    retryable: bool = False  # a failure the next delivery or sweep may fix by itself
    # The same failure as the identity's last run, which operators heard about less than a day
    # ago: audited as always, not notified again (shared.core.registry.LastRun.repeats).
    repeat: bool = False
    target: dict[str, Any] = field(default_factory=dict)
    before: dict[str, Any] = field(default_factory=dict)
    after: dict[str, Any] = field(default_factory=dict)
    time: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))

    def to_json(self) -> dict[str, Any]:
        return {
            "time": self.time.strftime("%Y-%m-%dT%H:%M:%S.%fZ"), "correlationId": self.correlation_id,
            "caller": self.caller, "operation": self.operation, "identity": self.identity, "action": self.action,
            "facet": self.facet, "result": self.result, "retryable": self.retryable, "repeat": self.repeat,
            "detail": self.detail,
            "target": self.target,
            "before": self.before, "after": self.after,
        }


AuditSink = Callable[[AuditEvent], Awaitable[None]]
_sinks: list[AuditSink] = []


def add_sink(sink: AuditSink) -> None:
    if sink not in _sinks:
        _sinks.append(sink)


def remove_sink(sink: AuditSink) -> None:
    if sink in _sinks:
        _sinks.remove(sink)


async def emit(event: AuditEvent) -> None:
    document = event.to_json()
    log.info("audit %s", json.dumps(document, sort_keys=True), extra={"audit": document})
    for sink in list(_sinks):
        try:
            await sink(event)
        except Exception:
            log.exception("audit sink %r failed for identity=%s action=%s", sink, event.identity, event.action)
