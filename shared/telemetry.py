"""Telemetry to Azure Monitor: audit events as log records and the product's metrics, only where
Application Insights is configured.

With `APPLICATIONINSIGHTS_CONNECTION_STRING` set, the first use calls azure-monitor-opentelemetry's
`configure_azure_monitor()` once (lazily: the import costs more than the whole cold-start budget).
Unset, nothing is configured and nothing is recorded: no exporter, no network, no import of the SDK.

Metrics (docs/operations.md has the table):
    exo_automation.certificate.days_to_expiry  gauge    {identity}           one value per identity per sweep
    exo_automation.rotations                   counter  {identity, result}   Succeeded or the failure's reason
    exo_automation.drift                       counter  {facet, state}       state: found (sweep) | repaired (reconcile)
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterable, Mapping
from typing import Any

from shared.audit import AuditEvent, add_sink

log = logging.getLogger("exo_automation.telemetry")
# Audit events in Application Insights: one flat record each, custom dimensions `audit.*`.
audit_log = logging.getLogger("exo_automation.telemetry.audit")

METER_NAME = "exo_automation"
CONNECTION_STRING = "APPLICATIONINSIGHTS_CONNECTION_STRING"

# Actions that repair drift when a reconcile (not a bootstrap or a rotation) performs them.
_REPAIRS = {"UpsertApplication", "CreateServicePrincipal", "GrantConsent", "AddKeyCredential", "AssignRole",
            "PublishConnectionRecord"}
_ROTATION_OPERATIONS = ("rotate", "reconcile")

_lock = threading.RLock()
_configured = False
_meter_provider: Any = None
_instruments: dict[str, Any] = {}
_rotating: list[str] = []  # correlation ids of recent runs that created a certificate version


def ensure_configured(environ: Mapping[str, str] | None = None) -> bool:
    """Configure Azure Monitor once if a connection string is set; True when telemetry is on."""
    global _configured
    if _configured:
        return True
    env = os.environ if environ is None else environ
    if not (env.get(CONNECTION_STRING) or "").strip():
        return False
    with _lock:
        if not _configured:
            try:
                _configure_azure_monitor()
            except Exception:
                # Telemetry must never stop the product: the app runs on, with logs in the host's stream.
                log.exception("could not configure Azure Monitor; telemetry stays off in this process")
                return False
            from opentelemetry import metrics

            bind_meter_provider(metrics.get_meter_provider())
            _configured = True
    return True


def _configure_azure_monitor() -> None:
    from azure.monitor.opentelemetry import configure_azure_monitor

    # Only the product's loggers: the SDKs' own debug chatter stays out of the workspace.
    configure_azure_monitor(logger_name="exo_automation", instrumentation_options={
        "django": {"enabled": False}, "fastapi": {"enabled": False}, "flask": {"enabled": False},
        "psycopg2": {"enabled": False}})


def bind_meter_provider(provider: Any) -> None:
    """Record the metrics with `provider` (Azure Monitor's, or an in-memory one in tests); None: off."""
    global _meter_provider
    with _lock:
        _meter_provider = provider
        _instruments.clear()


def _instrument(name: str) -> Any:
    if _meter_provider is None:
        return None
    if not _instruments:
        meter = _meter_provider.get_meter(METER_NAME)
        _instruments["days_to_expiry"] = meter.create_gauge(
            "exo_automation.certificate.days_to_expiry", unit="d",
            description="Days until the current certificate of an identity expires")
        _instruments["rotations"] = meter.create_counter(
            "exo_automation.rotations", unit="{rotation}", description="Rotations by result")
        _instruments["drift"] = meter.create_counter(
            "exo_automation.drift", unit="{finding}", description="Drift found by sweeps and repaired by reconciles")
    return _instruments[name]


def record_days_to_expiry(identity: str, days: float) -> None:
    gauge = _instrument("days_to_expiry")
    if gauge is not None:
        gauge.set(round(days, 2), {"identity": identity})


def record_drift_found(facets: Iterable[str]) -> None:
    """One count per drifted facet of one identity, as the sweep's checks found it."""
    counter = _instrument("drift")
    if counter is not None:
        for facet in sorted(set(facets)):
            counter.add(1, {"facet": facet, "state": "found"})


def record_audit_event(event: AuditEvent) -> None:
    """Rotations and repairs, counted from the audit events the reconciler emits.

    A rotation is a run that publishes a new thumbprint over an old one (or fails in a rotate or
    reconcile); a repair is any other successful corrective action of a reconcile. A key added in
    the run that also created a certificate version belongs to the rotation, not to drift.
    """
    rotations = _instrument("rotations")
    if rotations is None:
        return
    if event.operation not in _ROTATION_OPERATIONS:
        return
    if event.result != "Succeeded":
        rotations.add(1, {"identity": event.identity, "result": event.result})
        return
    if event.action == "CreateCertificateVersion":
        _rotating.append(event.correlation_id)
        del _rotating[:-64]
        return
    published = event.before.get("publishedThumbprint")
    if event.action == "PublishConnectionRecord" and published and published != event.after.get("publishedThumbprint"):
        rotations.add(1, {"identity": event.identity, "result": "Succeeded"})
        return
    if event.operation == "reconcile" and event.action in _REPAIRS and not (
            event.action == "AddKeyCredential" and event.correlation_id in _rotating):
        _instrument("drift").add(1, {"facet": event.facet, "state": "repaired"})


def custom_dimensions(event: AuditEvent) -> dict[str, str]:
    """The audit event as flat attributes (OpenTelemetry attributes are scalars: nested parts as JSON)."""
    document = event.to_json()
    return {f"audit.{key}": value if isinstance(value, str) else json.dumps(value, sort_keys=True)
            for key, value in document.items()}


async def audit_sink(event: AuditEvent) -> None:
    if not ensure_configured():
        return
    audit_log.info("audit identity %s action %s result %s", event.identity, event.action, event.result,
                   extra=custom_dimensions(event))
    record_audit_event(event)


def install() -> None:
    """Wiring for function_app: cheap (no SDK import); telemetry itself starts on first use."""
    from shared.notify import audit_sink as notify_sink

    add_sink(audit_sink)
    add_sink(notify_sink)


__all__ = ["audit_sink", "bind_meter_provider", "custom_dimensions", "ensure_configured", "install",
           "record_audit_event", "record_days_to_expiry", "record_drift_found"]
