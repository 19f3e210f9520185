"""Issue: telemetry is inert without a connection string; with one, Azure Monitor is configured
once; the metric instruments record what the sweep and the audit events say."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from shared import telemetry
from shared.audit import AuditEvent


@pytest.fixture(autouse=True)
def _fresh(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(telemetry, "_configured", False)
    telemetry.bind_meter_provider(None)
    yield
    telemetry.bind_meter_provider(None)


@pytest.fixture()
def reader() -> InMemoryMetricReader:
    memory = InMemoryMetricReader()
    telemetry.bind_meter_provider(MeterProvider(metric_readers=[memory]))
    return memory


def points(reader: InMemoryMetricReader) -> dict[str, list[tuple[dict[str, Any], float]]]:
    data = reader.get_metrics_data()
    found: dict[str, list[tuple[dict[str, Any], float]]] = {}
    for resource in data.resource_metrics if data else []:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                found[metric.name] = [(dict(p.attributes or {}), p.value) for p in metric.data.data_points]
    return found


def event(**overrides: Any) -> AuditEvent:
    fields: dict[str, Any] = {"correlation_id": "run-1", "caller": "sweep", "operation": "reconcile",
                              "identity": "reports", "action": "GrantConsent", "facet": "consent",
                              "result": "Succeeded", "before": {"consentAssignmentId": None},
                              "after": {"consentAssignmentId": "abc"}}
    return AuditEvent(**{**fields, **overrides})


def test_without_a_connection_string_nothing_is_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr(telemetry, "_configure_azure_monitor", lambda: calls.append(1))
    assert telemetry.ensure_configured({}) is False
    assert telemetry.ensure_configured({"APPLICATIONINSIGHTS_CONNECTION_STRING": "  "}) is False
    asyncio.run(telemetry.audit_sink(event()))
    telemetry.record_days_to_expiry("reports", 12.0)  # no provider: a no-op, no error
    assert calls == [] and telemetry._meter_provider is None


def test_a_connection_string_configures_azure_monitor_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr(telemetry, "_configure_azure_monitor", lambda: calls.append(1))
    env = {"APPLICATIONINSIGHTS_CONNECTION_STRING": "InstrumentationKey=00000000-0000-0000-0000-000000000000"}
    assert telemetry.ensure_configured(env) is True
    assert telemetry.ensure_configured(env) is True
    assert calls == [1]
    assert telemetry._meter_provider is not None


def test_a_failing_configuration_leaves_the_app_running(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> None:
        raise RuntimeError("exporter refused")

    monkeypatch.setattr(telemetry, "_configure_azure_monitor", broken)
    assert telemetry.ensure_configured({"APPLICATIONINSIGHTS_CONNECTION_STRING": "InstrumentationKey=x"}) is False


def test_days_to_expiry_is_a_gauge_per_identity(reader: InMemoryMetricReader) -> None:
    telemetry.record_days_to_expiry("reports", 200.123)
    telemetry.record_days_to_expiry("calendar", 9.5)
    telemetry.record_days_to_expiry("reports", 199.6)
    values = {a["identity"]: v for a, v in points(reader)["exo_automation.certificate.days_to_expiry"]}
    assert values == {"reports": 199.6, "calendar": 9.5}


def test_drift_found_counts_each_facet_once_per_identity(reader: InMemoryMetricReader) -> None:
    telemetry.record_drift_found(["keyCredential", "connectionRecord", "connectionRecord"])
    telemetry.record_drift_found(["keyCredential"])
    found = {a["facet"]: v for a, v in points(reader)["exo_automation.drift"]}
    assert found == {"keyCredential": 2, "connectionRecord": 1}


def test_rotations_and_repairs_from_audit_events(reader: InMemoryMetricReader) -> None:
    rotation = [
        event(correlation_id="r", action="CreateCertificateVersion", facet="certificate"),
        event(correlation_id="r", action="AddKeyCredential", facet="keyCredential"),
        event(correlation_id="r", action="PublishConnectionRecord", facet="connectionRecord",
              before={"publishedThumbprint": "AA"}, after={"publishedThumbprint": "BB"}),
    ]
    for item in rotation:
        telemetry.record_audit_event(item)
    telemetry.record_audit_event(event(operation="rotate", action="AddKeyCredential", facet="keyCredential",
                                       result="GraphPermissionMissing"))
    telemetry.record_audit_event(event())  # consent re-granted by a reconcile: a repair
    telemetry.record_audit_event(event(operation="bootstrap"))  # creation is neither
    got = points(reader)
    rotations = {a["result"]: v for a, v in got["exo_automation.rotations"]}
    assert rotations == {"Succeeded": 1, "GraphPermissionMissing": 1}
    assert [(a, v) for a, v in got["exo_automation.drift"]] == [({"facet": "consent", "state": "repaired"}, 1)]


def test_audit_events_become_flat_custom_dimensions() -> None:
    dims = telemetry.custom_dimensions(event())
    assert dims["audit.correlationId"] == "run-1" and dims["audit.action"] == "GrantConsent"
    assert json.loads(dims["audit.after"]) == {"consentAssignmentId": "abc"}
    assert all(isinstance(v, str) for v in dims.values())
    assert set(dims) == {f"audit.{k}" for k in event().to_json()}
