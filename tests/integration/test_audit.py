"""Every mutating action emits exactly one audit event with who, what, before/after and result."""

from __future__ import annotations

import json
import logging

import pytest

from devstack import Stack
from devstack.faults import Fault
from shared.core.model import key_id_for

from .helpers import delete_identity, post_identity, principal_header, rotate

MUTATING = {"CreateCertificateVersion", "UpsertApplication", "CreateServicePrincipal", "GrantConsent",
            "AddKeyCredential", "AssignRole", "PublishConnectionRecord", "RetireKeyCredential",
            "MarkDecommissioning", "RemoveRoleAssignment", "RevokeConsent", "DeleteServicePrincipal",
            "DeleteApplication", "DeleteConnectionSecret", "DeleteCertificate"}
FIELDS = {"time", "correlationId", "caller", "operation", "identity", "action", "facet", "result", "retryable",
          "repeat", "detail", "target", "before", "after"}


def audit_events(caplog: pytest.LogCaptureFixture) -> list[dict]:
    return [r.audit for r in caplog.records if r.name == "exo_automation.audit"]  # type: ignore[attr-defined]


def test_one_event_per_mutating_action_across_the_lifecycle(stack: Stack, caplog: pytest.LogCaptureFixture,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    caplog.set_level(logging.INFO, logger="exo_automation.audit")
    created = post_identity({"name": "audited"}, headers={"x-ms-client-request-id": "req-123"})
    assert created.status == 201
    events = audit_events(caplog)
    mutating = [e["action"] for e in created.body["executed"] if e["action"] in MUTATING]
    assert [e["action"] for e in events] == mutating
    assert all(set(e) == FIELDS for e in events)
    assert {e["correlationId"] for e in events} == {"req-123"}
    assert {e["caller"] for e in events} == {"function-key"}
    assert {e["operation"] for e in events} == {"bootstrap"}
    grant = next(e for e in events if e["action"] == "GrantConsent")
    assert grant["facet"] == "consent" and grant["before"] == {"consentAssignmentId": None}
    assert grant["after"]["consentAssignmentId"]
    publish = next(e for e in events if e["action"] == "PublishConnectionRecord")
    # The create requests the version; the key added once Key Vault issued it is the one published.
    assert next(e for e in events if e["action"] == "CreateCertificateVersion")["after"]["thumbprint"] is None
    assert key_id_for(publish["after"]["publishedThumbprint"]) in next(
        e for e in events if e["action"] == "AddKeyCredential")["after"]["keyIds"]
    assert "-----BEGIN" not in json.dumps(events) and "eyJ" not in json.dumps(events)

    caplog.clear()
    assert post_identity({"name": "audited"}).status == 200
    assert audit_events(caplog) == [], "nothing changed, nothing audited"

    caplog.clear()
    monkeypatch.setenv("WEBSITE_AUTH_ENABLED", "true")  # App Service Authentication vouches for the caller
    rotated = rotate("audited", headers=principal_header(["ExoIdentities.ReadWrite"]))
    assert rotated.status == 200
    events = audit_events(caplog)
    assert [e["action"] for e in events] == ["CreateCertificateVersion", "AddKeyCredential",
                                             "PublishConnectionRecord"]
    assert {e["caller"] for e in events} == {"principal:admin@contoso"}
    publish = events[-1]
    assert publish["before"]["publishedThumbprint"] == publish["after"]["previousThumbprint"]

    caplog.clear()
    assert delete_identity("audited").status == 200
    events = audit_events(caplog)
    assert [e["action"] for e in events] == ["MarkDecommissioning", "RemoveRoleAssignment", "RevokeConsent",
                                             "DeleteServicePrincipal", "DeleteApplication", "DeleteConnectionSecret",
                                             "DeleteCertificate"]
    assert next(e for e in events if e["action"] == "DeleteApplication")["after"] == {
        "appId": None, "applicationObjectId": None}


def test_a_failed_action_is_audited_with_its_reason(stack: Stack, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="exo_automation.audit")
    stack.world.faults.add(Fault.from_json({"service": "graph", "method": "POST", "path": "/servicePrincipals$",
                                            "status": 500}))
    assert post_identity({"name": "half-done"}).status == 503
    events = audit_events(caplog)
    assert [(e["action"], e["result"], e["retryable"]) for e in events][-1] == (
        "CreateServicePrincipal", "GraphUnavailable", True)
    assert len(events) == 3
