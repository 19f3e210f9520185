"""The stand-in tenant as tests arrange and inspect it: find an identity's objects, add an admin's
(or a stranger's) objects behind the product's back, and compare what hangs off an app."""

from __future__ import annotations

import base64
import copy
import datetime as dt
import json
import uuid
from typing import Any

from devstack import Stack
from devstack.world import EXCHANGE_APP_ID, EXCHANGE_MANAGE_AS_APP

ERA = "31392ffb-586c-42d1-9346-e59415a2cc4e"  # Exchange Recipient Administrator


def only(items: list, **match: object) -> dict:
    found = [i for i in items if all(i.get(k) == v for k, v in match.items())]
    assert len(found) == 1, f"expected exactly one {match}, found {len(found)}"
    return found[0]


def app_of(stack: Stack, name: str) -> dict[str, Any] | None:
    found = [a for a in stack.world.directory.applications.values()
             if a.get("uniqueName") == f"exo-automation-{name}"]
    assert len(found) <= 1
    return found[0] if found else None


def sp_of(stack: Stack, app: dict[str, Any]) -> dict[str, Any]:
    sp = stack.world.directory.sp_by_app_id(app["appId"])
    assert sp is not None
    return sp


def vault_state(stack: Stack) -> dict[str, Any]:
    state: dict[str, Any] = stack.world.services["keyvault"].snapshot()
    return state


def live_and_deleted(stack: Stack) -> tuple[set[str], set[str]]:
    state = vault_state(stack)
    live = {c["name"] for c in state["certificates"]} | {s["name"] for s in state["secrets"]}
    deleted = {c["name"] for c in state["deletedCertificates"]} | {s["name"] for s in state["deletedSecrets"]}
    return live, deleted


def self_signed_der(stack: Stack, common_name: str) -> tuple[bytes, dt.datetime, dt.datetime]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = stack.world.clock.now()
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=300)).sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.DER), cert.not_valid_before_utc, cert.not_valid_after_utc


def add_foreign_key(stack: Stack, app: dict[str, Any]) -> str:
    """An admin adds their own certificate to the app, behind the product's back."""
    der, start, end = self_signed_der(stack, "admin's own key")
    key_id = str(uuid.uuid4())
    app["keyCredentials"].append({
        "customKeyIdentifier": None, "displayName": "admin's own key", "key": base64.b64encode(der).decode(),
        "keyId": key_id, "startDateTime": start.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "endDateTime": end.strftime("%Y-%m-%dT%H:%M:%SZ"), "type": "AsymmetricX509Cert", "usage": "Verify"})
    return key_id


def add_role_assignment(stack: Stack, principal_id: str, role_id: str) -> str:
    assignment_id = f"admin-{uuid.uuid4()}"
    stack.world.directory.role_assignments[assignment_id] = {
        "id": assignment_id, "principalId": principal_id, "roleDefinitionId": role_id, "directoryScopeId": "/",
        "appScopeId": None}
    return assignment_id


def add_foreign_app(stack: Stack, template: dict[str, Any]) -> dict[str, Any]:
    """Somebody else's app in the tenant, with its own principal, consent and Exchange role."""
    d = stack.world.directory
    app = copy.deepcopy(template)
    app.update(id=str(uuid.uuid4()), appId=str(uuid.uuid4()), uniqueName="payroll-sync", displayName="Payroll sync",
               tags=[], keyCredentials=[])
    d.applications[app["id"]] = app
    d.owners[app["id"]] = []
    sp = copy.deepcopy(sp_of(stack, template))
    sp.update(id=str(uuid.uuid4()), appId=app["appId"], displayName="Payroll sync", tags=[])
    d.service_principals[sp["id"]] = sp
    consent_id = str(uuid.uuid4())
    d.app_role_assignments[consent_id] = {
        "id": consent_id, "principalId": sp["id"], "principalType": "ServicePrincipal",
        "principalDisplayName": "Payroll sync", "resourceId": stack.world.resource_sp(EXCHANGE_APP_ID)["id"],
        "resourceDisplayName": "Office 365 Exchange Online", "appRoleId": EXCHANGE_MANAGE_AS_APP,
        "createdDateTime": "2024-01-01T00:00:00Z", "deletedDateTime": None}
    add_role_assignment(stack, sp["id"], ERA)
    return app


def directory_of(stack: Stack, app: dict[str, Any]) -> str:
    """Everything hanging off one app, as comparable text."""
    d = stack.world.directory
    sp = d.sp_by_app_id(app["appId"])
    sp_id = sp["id"] if sp else None
    return json.dumps({
        "app": d.applications.get(app["id"]), "sp": sp,
        "consent": sorted((a["id"], a["appRoleId"]) for a in d.app_role_assignments.values()
                          if a["principalId"] == sp_id),
        "roles": sorted((a["id"], a["roleDefinitionId"]) for a in d.role_assignments.values()
                        if a["principalId"] == sp_id),
    }, sort_keys=True)


def remove_consent(stack: Stack, name: str) -> None:
    """Revoke identity `name`'s Exchange.ManageAsApp grant behind the product's back (drift)."""
    with stack.world.lock:
        d = stack.world.directory
        app_id = next(a["appId"] for a in d.applications.values() if a.get("uniqueName") == f"exo-automation-{name}")
        sp = next(s["id"] for s in d.service_principals.values() if s["appId"] == app_id)
        for key in [k for k, a in d.app_role_assignments.items()
                    if a["principalId"] == sp and a["appRoleId"] == EXCHANGE_MANAGE_AS_APP]:
            del d.app_role_assignments[key]
