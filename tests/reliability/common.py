"""Helpers of the reliability suite (product operations on the stand-ins' simulated clock)."""

from __future__ import annotations

import json
from typing import Any

from devstack import Stack
from devstack.faults import Fault
from tests.integration.platform_helpers import with_platform


def run(stack: Stack, name: str, *, rotate: bool = False) -> Any:
    """A queued reconcile (or a rotate-now) of `name`, on the simulated clock."""
    from shared import service

    return with_platform(stack, lambda p: service.reconcile(
        p, name, force_rotate=rotate, operation="rotate" if rotate else "reconcile"))


def executed(result: Any) -> list[str]:
    return [o.action.kind for o in result.executed]


def fault(stack: Stack, spec: dict[str, Any]) -> Fault:
    return stack.world.faults.add(Fault.from_json(spec))


def app_named(stack: Stack, name: str) -> list[dict[str, Any]]:
    return [a for a in stack.world.directory.applications.values() if a.get("uniqueName") == f"exo-automation-{name}"]


def record(stack: Stack, name: str) -> dict[str, Any]:
    from azure.identity import ManagedIdentityCredential
    from azure.keyvault.secrets import SecretClient

    with ManagedIdentityCredential() as credential, \
            SecretClient(stack.settings()["KEY_VAULT_URL"], credential) as secrets:
        value: dict[str, Any] = json.loads(secrets.get_secret(f"exo-{name}-connection").value or "")
    return value


def cert_versions(stack: Stack, name: str) -> list[dict[str, Any]]:
    state = stack.world.services["keyvault"].snapshot()
    found = [c for c in state["certificates"] if c["name"] == f"exo-{name}-cert"]
    return list(found[0]["versions"]) if found else []


def one_of_everything(stack: Stack, name: str) -> dict[str, Any]:
    """Exactly one app, principal, consent and role assignment for `name`; returns the app."""
    from devstack.world import EXCHANGE_MANAGE_AS_APP

    d = stack.world.directory
    apps = app_named(stack, name)
    assert len(apps) == 1, f"{name}: {len(apps)} apps"
    app = apps[0]
    sps = [s for s in d.service_principals.values() if s["appId"] == app["appId"]]
    assert len(sps) == 1, f"{name}: {len(sps)} service principals"
    grants = [a for a in d.app_role_assignments.values()
              if a["principalId"] == sps[0]["id"] and a["appRoleId"] == EXCHANGE_MANAGE_AS_APP]
    assert len(grants) == 1, f"{name}: {len(grants)} consents"
    roles = [a for a in d.role_assignments.values() if a["principalId"] == sps[0]["id"]]
    assert len(roles) == 1, f"{name}: {len(roles)} role assignments"
    return app
