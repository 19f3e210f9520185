"""Issue: the Graph permission table is true.

The table (infra/graph-permissions.json, rendered in docs/deploy.md) says which Microsoft Graph
application permissions the platform identity holds in each role mode. Here the whole lifecycle
(bootstrap, status, sweep, renewal through the queue path, rotation, decommission) runs against the
stand-ins with the platform holding exactly the table's permissions, and its whole Graph traffic is
accounted for by the table's calls; then, with any one required permission removed, the lifecycle fails with
a problem document whose reason is GraphPermissionMissing. The post-provision hook, which grants the
same permissions with msgraph-sdk where the Bicep extension does not, is run against the stand-ins too.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import io
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any

import pytest

from devstack import Stack
from devstack.world import DEFAULT_PLATFORM_GRAPH_ROLES, GRAPH_APP_ID, GRAPH_APP_ROLES
from tests.infra.hook import load_hook

from .helpers import call, delete_identity, get_identity, post_identity, rotate, run_job_get_mailbox
from .platform_helpers import reconcile, sweep

HOOK = load_hook()
TABLE = HOOK.load_table()
EXCHANGE_RECIPIENT_ADMINISTRATOR = "31392ffb-586c-42d1-9346-e59415a2cc4e"
# The Graph call each reconcile action makes (to check that a refused action is one the removed
# permission's row names).
ACTION_CALLS = {
    "UpsertApplication": "POST /applications",
    "CreateServicePrincipal": "POST /servicePrincipals",
    "GrantConsent": "POST /servicePrincipals/{}/appRoleAssignedTo",
    "RevokeConsent": "DELETE /servicePrincipals/{}/appRoleAssignedTo/{}",
    "AssignRole": "POST /roleManagement/directory/roleAssignments",
    "RemoveRoleAssignment": "DELETE /roleManagement/directory/roleAssignments/{}",
    "AddKeyCredential": "PATCH /applications/{}",
    "AddFederatedCredential": "POST /applications/{}/federatedIdentityCredentials",
    "RemoveFederatedCredential": "DELETE /applications/{}/federatedIdentityCredentials/{}",
    "RetireKeyCredential": "PATCH /applications/{}",
    "DeleteServicePrincipal": "DELETE /servicePrincipals/{}",
    "DeleteApplication": "DELETE /applications/{}",
}

def mode_param(mode: str) -> Any:
    return pytest.param(mode, id=mode)


def normalise(call: str) -> str:
    """`METHOD /path` with ids and keys as {} and alternate keys as ({}='{}'), without /v1.0."""
    method, path = call.split(" ", 1)
    path = re.sub(r"\{[^}]*\}", "{}", path.removeprefix("/v1.0"))
    path = re.sub(r"\((?:\w+|\{\})='\{\}'\)", "({}='{}')", path)
    return f"{method} {path}"


def declared_calls(mode: str, without: str | None = None) -> set[str]:
    return {normalise(c) for p in TABLE.for_mode(mode) if p.name != without for c in p.calls}


def graph_traffic(stack: Stack) -> set[str]:
    return {normalise(f"{row['method']} {row['route']}") for row in stack.world.counter.snapshot()
            if row["service"] == "graph"}


# -- the lifecycle ---------------------------------------------------------------------------------
@dataclass
class Refusal:
    step: str
    status: int
    reason: str | None
    failed_action: str | None


def _refusal(step: str, status: int, body: Any) -> Refusal:
    body = body if isinstance(body, dict) else {}
    executed = (body.get("run") or {}).get("executed") or []
    failed = next((e["action"] for e in executed if e.get("result") != "Succeeded"), None)
    return Refusal(step, status, body.get("reason"), failed)


def assign_role_as_administrator(stack: Stack, service_principal_id: str) -> None:
    """What an administrator does in verify mode: assign the identity's role outside the product."""
    raw = uuid.UUID(EXCHANGE_RECIPIENT_ADMINISTRATOR).bytes_le + uuid.UUID(service_principal_id).bytes_le
    assignment_id = base64.urlsafe_b64encode(raw).decode().rstrip("=") + "-1"
    with stack.world.lock:
        stack.world.directory.role_assignments[assignment_id] = {
            "id": assignment_id, "principalId": service_principal_id,
            "roleDefinitionId": EXCHANGE_RECIPIENT_ADMINISTRATOR, "directoryScopeId": "/", "appScopeId": None,
        }


def run_lifecycle(stack: Stack, name: str, mode: str) -> Refusal | None:
    """Every operation the product offers, in order; the first refusal, or None when all succeeded.
    The identity also trusts a workload (a federated credential), dropped again before decommission; a
    second identity is of kind managedIdentity (the grant and role on an existing managed identity)."""
    trust = {"type": "federated", "subject": stack.world.platform.object_id,
             "issuer": f"{stack.url('entra')}/{stack.world.tenant_id}/v2.0"}
    job = stack.world.add_managed_identity("id-permission-check")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ALLOWED_MANAGED_IDENTITIES", f"{stack.world.platform.object_id},{job.object_id}")
        refusal = _run_lifecycle(stack, name, mode, {"name": name, "credentials": [{"type": "certificate"}, trust]})
        return refusal or _managed_identity_lifecycle(stack, f"{name}-mi", mode, job.object_id)


def _bootstrapped(stack: Stack, name: str, mode: str, request: dict[str, Any]) -> Refusal | None:
    """Bootstrap (in verify mode an administrator assigns the role in between), then status in sync and a job."""
    boot = post_identity(request)
    if mode == "verify" and boot.status == 502 and boot.body.get("reason") == "RoleNotAssigned":
        status = get_identity(name)
        if status.status != 200:
            return _refusal("status before the role", status.status, status.body)
        assert status.body["facets"]["roles"]["state"] == "missing"
        assign_role_as_administrator(stack, status.body["servicePrincipalId"])
        boot = post_identity(request)  # idempotent: completes once the role is there
    if boot.status not in (200, 201):
        return _refusal("bootstrap", boot.status, boot.body)
    status = get_identity(name)
    if status.status != 200:
        return _refusal("status", status.status, status.body)
    assert status.body["inSync"] is True, status.body["facets"]
    assert run_job_get_mailbox(stack, name), "the identity works for a job"
    return None


def _managed_identity_lifecycle(stack: Stack, name: str, mode: str, principal: str) -> Refusal | None:
    request = {"name": name, "credentials": [{"type": "managedIdentity", "principalId": principal}]}
    refusal = _bootstrapped(stack, name, mode, request)
    if refusal is not None:
        return refusal
    gone = delete_identity(name)
    return None if gone.status == 200 else _refusal("decommission (managed identity)", gone.status, gone.body)


def _run_lifecycle(stack: Stack, name: str, mode: str, request: dict[str, Any]) -> Refusal | None:
    refusal = _bootstrapped(stack, name, mode, request)
    if refusal is not None:
        return refusal

    try:
        assert sweep(stack).due == {}, "in sync: the sweep finds nothing to do"
        stack.world.clock.advance(dt.timedelta(days=300).total_seconds())  # past the renewal point
        due = sweep(stack).due
    except Exception as exc:
        return Refusal("sweep", 0, getattr(exc, "reason", type(exc).__name__), None)
    assert "RenewalDue" in due.get(name, []), due
    outcome = reconcile(stack, name)  # what the queue trigger runs for the message
    if outcome.error is not None:
        return Refusal("renewal", 0, outcome.error.reason, None)

    rotated = rotate(name)
    if rotated.status != 200:
        return _refusal("rotate", rotated.status, rotated.body)
    untrusted = post_identity({"name": name})  # the workload is no longer trusted: its credential goes
    if untrusted.status not in (200, 201):
        return _refusal("drop the federated credential", untrusted.status, untrusted.body)
    gone = delete_identity(name)
    if gone.status != 200:
        return _refusal("decommission", gone.status, gone.body)
    assert get_identity(name).status == 404
    # The doctor (GET /api/health) reads with the same permissions; what it finds is not the point here.
    assert call("health", "GET", "http://localhost/api/health").status in (200, 503)
    return None


# -- exactly the table: sufficient -----------------------------------------------------------------
def test_the_suite_runs_with_exactly_the_tables_assign_permissions() -> None:
    # Every other test of the suite runs with the stand-ins' default grant: it must be the table's.
    assert sorted(DEFAULT_PLATFORM_GRAPH_ROLES) == sorted(TABLE.names("assign"))


def test_table_ids_are_microsoft_graphs_app_role_ids() -> None:
    assert TABLE.resource_app_id == GRAPH_APP_ID
    for permission in TABLE.permissions:
        assert GRAPH_APP_ROLES[permission.name] == permission.app_role_id, permission.name
        assert permission.why and permission.calls and set(permission.modes) <= set(TABLE.modes)
    for mode in TABLE.modes:
        names = TABLE.names(mode)
        assert "Application.ReadWrite.All" not in names, "OwnedBy, never .All"
        assert "Directory.ReadWrite.All" not in names and "Directory.Read.All" not in names
    assert "RoleManagement.ReadWrite.Directory" not in TABLE.names("verify")


@pytest.mark.parametrize("mode", [mode_param("assign"), mode_param("verify")])
def test_exactly_the_tables_permissions_carry_the_whole_lifecycle(stack: Stack, monkeypatch: pytest.MonkeyPatch,
                                                                  mode: str) -> None:
    monkeypatch.setenv("ROLE_MODE", mode)
    stack.world.set_platform_graph_roles(TABLE.names(mode))
    assert run_lifecycle(stack, "permission-check", mode) is None

    traffic = graph_traffic(stack)
    declared = declared_calls(mode)
    assert traffic <= declared, f"Graph calls the table does not account for: {sorted(traffic - declared)}"
    assert declared <= traffic, f"the table names calls the product never makes: {sorted(declared - traffic)}"
    role_writes = {"POST /roleManagement/directory/roleAssignments",
                   "DELETE /roleManagement/directory/roleAssignments/{}"}
    if mode == "verify":
        assert not traffic & role_writes, "verify mode never writes role assignments"


# -- exactly the table: each required one needed, each optional one not ----------------------------
REMOVALS = [pytest.param(mode, p.name, id=f"{mode}-without-{p.name}")
            for mode in TABLE.modes for p in TABLE.required(mode)]
OPTIONAL_REMOVALS = [pytest.param(mode, p.name, id=f"{mode}-without-optional-{p.name}")
                     for mode in TABLE.modes for p in TABLE.for_mode(mode) if p.optional]


@pytest.mark.parametrize(("mode", "removed"), OPTIONAL_REMOVALS)
def test_the_lifecycle_passes_without_an_optional_permission(stack: Stack, monkeypatch: pytest.MonkeyPatch,
                                                             mode: str, removed: str) -> None:
    monkeypatch.setenv("ROLE_MODE", mode)
    stack.world.set_platform_graph_roles([name for name in TABLE.names(mode) if name != removed])
    assert run_lifecycle(stack, "permission-check", mode) is None, f"{removed} is marked optional"


@pytest.mark.parametrize(("mode", "removed"), REMOVALS)
def test_the_lifecycle_fails_without_any_one_permission(stack: Stack, monkeypatch: pytest.MonkeyPatch,
                                                        mode: str, removed: str) -> None:
    monkeypatch.setenv("ROLE_MODE", mode)
    stack.world.set_platform_graph_roles([name for name in TABLE.names(mode) if name != removed])
    refusal = run_lifecycle(stack, "permission-check", mode)
    assert refusal is not None, f"the lifecycle passed without {removed}: the table claims too much"
    assert refusal.reason == "GraphPermissionMissing", refusal
    assert refusal.status == 0 or 400 <= refusal.status < 600
    if refusal.failed_action is not None:
        row = next(p for p in TABLE.permissions if p.name == removed)
        assert ACTION_CALLS[refusal.failed_action] in {normalise(c) for c in row.calls}, \
            f"{refusal.failed_action} was refused, but the table does not say it needs {removed}"


# -- the post-provision hook (msgraph-sdk) against the stand-ins ------------------------------------
def run_hook(stack: Stack, *argv: str) -> tuple[int, str]:
    """The hook's main path with the platform's managed identity signing in, as an administrator would."""
    from azure.identity.aio import ManagedIdentityCredential

    args = HOOK.parse_args([*argv, "--principal-id", stack.world.platform.object_id,
                            "--graph-endpoint", stack.url("graph")], {})
    out = io.StringIO()

    async def go() -> int:
        async with ManagedIdentityCredential() as credential:
            code: int = await HOOK.run(args, {}, TABLE, credential=credential, out=out)
            return code

    return asyncio.run(go()), out.getvalue()


def held_graph_permissions(stack: Stack) -> set[str]:
    graph = stack.world.resource_sp(GRAPH_APP_ID)
    by_id = {role_id: name for name, role_id in GRAPH_APP_ROLES.items()}
    return {by_id[a["appRoleId"]] for a in stack.world.directory.app_role_assignments.values()
            if a["principalId"] == stack.world.platform.object_id and a["resourceId"] == graph["id"]}


def test_hook_dry_run_reports_and_changes_nothing(stack: Stack) -> None:
    stack.world.set_platform_graph_roles(["AppRoleAssignment.ReadWrite.All", "Application.Read.All",
                                          "Application.ReadWrite.All"])
    code, out = run_hook(stack, "--mode", "assign", "--grant", "--revoke-excess", "--dry-run")
    assert code == 0
    assert re.search(r"grant\s+Application\.ReadWrite\.OwnedBy", out)
    assert re.search(r"revoke\s+Application\.ReadWrite\.All", out)
    assert held_graph_permissions(stack) == {"AppRoleAssignment.ReadWrite.All", "Application.Read.All",
                                             "Application.ReadWrite.All"}
    assert not {(r["method"], r["route"]) for r in stack.world.counter.snapshot()
                if r["service"] == "graph" and r["method"] != "GET"}


def test_hook_without_grant_reports_missing_permissions_and_fails(stack: Stack) -> None:
    stack.world.set_platform_graph_roles(["AppRoleAssignment.ReadWrite.All", "Application.Read.All"])
    code, out = run_hook(stack, "--mode", "assign")
    assert code == 1
    assert re.search(r"MISSING\s+RoleManagement\.ReadWrite\.Directory", out)
    assert "--grant --mode assign" in out


@pytest.mark.parametrize("mode", [mode_param("assign"), mode_param("verify")])
def test_hook_grants_exactly_the_mode_and_the_lifecycle_then_passes(stack: Stack, monkeypatch: pytest.MonkeyPatch,
                                                                    mode: str) -> None:
    # Start from the other mode's grant plus a hand-made extra: the hook converges on the table.
    other = "verify" if mode == "assign" else "assign"
    stack.world.set_platform_graph_roles([*TABLE.names(other), "Application.ReadWrite.All"])
    code, out = run_hook(stack, "--mode", mode, "--grant", "--revoke-excess")
    assert code == 0, out
    assert held_graph_permissions(stack) == set(TABLE.names(mode))
    again, out = run_hook(stack, "--mode", mode)
    assert again == 0 and "MISSING" not in out and "excess" not in out  # idempotent

    monkeypatch.setenv("ROLE_MODE", mode)
    assert run_lifecycle(stack, "granted-by-hook", mode) is None


# -- a permission granted at deployment that has not reached the platform's tokens yet ----------------------
WITHOUT_CONSENT_RIGHT = [r for r in DEFAULT_PLATFORM_GRAPH_ROLES if r != "AppRoleAssignment.ReadWrite.All"]


def deployed_now(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PLATFORM_DEPLOYED_AT", stack.world.clock.now().strftime("%Y-%m-%dT%H:%M:%SZ"))
    monkeypatch.delenv("PERMISSION_PROPAGATION_HOURS", raising=False)  # the default: 6 hours


def test_a_permission_that_arrives_late_converges_without_an_operator(stack: Stack,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    # docs/reference.md "Entra ID tokens": a managed identity's new Graph permission can take hours to show.
    from shared.adapters.graph import PERMISSION_RETRY_AFTER_SECONDS
    from shared.errors import Retryable

    from .platform_helpers import bootstrap

    deployed_now(stack, monkeypatch)
    stack.world.set_platform_graph_roles(WITHOUT_CONSENT_RIGHT)
    stack.world.set_platform_graph_roles(DEFAULT_PLATFORM_GRAPH_ROLES, effective_after=3.0)  # granted, on its way
    first = bootstrap(stack, "late-grant")
    assert isinstance(first.error, Retryable), first.error
    assert first.error.reason == "PermissionNotYetInEffect"
    assert first.error.retry_after == PERMISSION_RETRY_AFTER_SECONDS
    assert "permission missing or not yet in effect since " in first.error.message
    status = get_identity("late-grant").body
    assert status["lastResult"]["result"] == "PermissionNotYetInEffect"
    assert "permission missing or not yet in effect since" in status["lastResult"]["error"]

    deadline = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=30)
    while True:  # later runs (the sweep's retries) pick the permission up once it is in the tokens
        result = reconcile(stack, "late-grant")
        if result.error is None or dt.datetime.now(dt.UTC) > deadline:
            break
        assert result.error.reason == "PermissionNotYetInEffect"
        time.sleep(1.0)
    assert result.error is None
    assert get_identity("late-grant").body["lastResult"]["result"] == "Succeeded"
    assert run_job_get_mailbox(stack, "late-grant")


def test_a_permission_still_missing_after_the_window_needs_an_operator(stack: Stack,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from shared.errors import NeedsOperator

    from .platform_helpers import bootstrap

    deployed_now(stack, monkeypatch)
    stack.world.set_platform_graph_roles(WITHOUT_CONSENT_RIGHT)
    stack.world.clock.advance(6 * 3600 + 60)
    late = bootstrap(stack, "never-granted")
    assert isinstance(late.error, NeedsOperator) and late.error.reason == "GraphPermissionMissing"
    assert "permission missing or not yet in effect since " in late.error.message
    monkeypatch.delenv("PLATFORM_DEPLOYED_AT")  # no deployment time known: an operator at once
    unknown = bootstrap(stack, "never-granted")
    assert isinstance(unknown.error, NeedsOperator) and unknown.error.reason == "GraphPermissionMissing"


def hide_platform_identity(stack: Stack, seconds: float) -> None:
    """As right after the first `azd up`: Graph does not know the brand-new platform identity yet."""
    with stack.world.lock:
        stack.world.directory.visible_at[stack.world.platform.object_id] = time.monotonic() + seconds
        for assignment in stack.world.directory.app_role_assignments.values():
            if assignment["principalId"] == stack.world.platform.object_id:
                stack.world.directory.visible_at.setdefault(assignment["id"], time.monotonic())


def test_hook_retries_its_own_calls_while_the_new_platform_identity_replicates(stack: Stack,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    # docs/reference.md "Replication": 404 on reads, "Not a valid reference update" on grants, for a while.
    monkeypatch.setattr(HOOK, "REPLICATION_WAITS", (1.0,) * 20)
    wanted = TABLE.names("assign")
    stack.world.set_platform_graph_roles([n for n in wanted if n != "RoleManagement.ReadWrite.Directory"])
    hide_platform_identity(stack, 4.0)
    code, out = run_hook(stack, "--mode", "assign", "--grant")
    assert code == 0, out
    assert "has not replicated the platform identity yet (404 Request_ResourceNotFound" in out
    assert "granted RoleManagement.ReadWrite.Directory" in out
    assert held_graph_permissions(stack) == set(wanted)


def test_hook_gives_up_on_a_principal_that_never_appears(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(HOOK, "REPLICATION_WAITS", (0.1, 0.1))
    hide_platform_identity(stack, 3600)
    with pytest.raises(HOOK.HookError, match="404 Request_ResourceNotFound"):
        run_hook(stack, "--mode", "assign", "--grant")
