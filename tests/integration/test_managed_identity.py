"""Issue #16: `managedIdentity` identities — no app registration; the grant and role go to an existing managed
identity, and decommission removes exactly what the product made.

End to end through the stand-ins and the real SDKs: a job whose host has the managed identity assigned runs
Get-Mailbox through `connection()` and `exchange_client()`; a principal not on the allow-list is refused with
zero writes; decommission leaves a grant or role the managed identity had before; drift repair restores a
removed grant or role; a crash between a grant and the outcome still records the grant as ours, in the registry
and in its witness (the identity's lease blob's metadata), and decommission then removes it.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest

from devstack import Stack
from devstack.world import EXCHANGE_APP_ID, EXCHANGE_MANAGE_AS_APP, ManagedIdentity
from shared.runtime.connection import close_connections, connection
from shared.runtime.exchange import exchange_client
from tests.devstack.entra_helpers import assign_directory_role, grant_app_role

from .helpers import connection_secret, delete_identity, get_identity, post_identity, write_count
from .platform_helpers import reconcile

ERA = "31392ffb-586c-42d1-9346-e59415a2cc4e"  # Exchange Recipient Administrator
GLOBAL_READER = "f2ef992c-3afb-46b9-b7cf-a126ee74c451"


def job_identity(stack: Stack, monkeypatch: pytest.MonkeyPatch, *, allow: bool = True) -> ManagedIdentity:
    """A user-assigned managed identity of the job's host, on ALLOWED_MANAGED_IDENTITIES."""
    identity = stack.world.add_managed_identity("id-mailbox-jobs")
    if allow:
        monkeypatch.setenv("ALLOWED_MANAGED_IDENTITIES", identity.object_id)
    return identity


def body(name: str, principal: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "credentials": [{"type": "managedIdentity", "principalId": principal}], **extra}


def grants_of(stack: Stack, principal: str) -> dict[str, list[str]]:
    """The managed identity's Exchange.ManageAsApp assignments and directory role assignments, by id."""
    d = stack.world.directory
    exchange = stack.world.resource_sp(EXCHANGE_APP_ID)["id"]
    return {
        "consent": sorted(a["id"] for a in d.app_role_assignments.values() if a["principalId"] == principal
                          and a["resourceId"] == exchange and a["appRoleId"] == EXCHANGE_MANAGE_AS_APP),
        "roles": sorted(a["roleDefinitionId"] for a in d.role_assignments.values() if a["principalId"] == principal),
    }


def secret_tags(stack: Stack, name: str) -> dict[str, str]:
    return connection_secret(stack, name)[1]


def read_record(stack: Stack, name: str) -> dict[str, Any]:
    return connection_secret(stack, name)[0]


def job_get_mailbox(name: str) -> tuple[list[dict[str, Any]], Any]:
    async def run() -> tuple[list[dict[str, Any]], Any]:
        try:
            found = await connection(name)
            mailboxes = await exchange_client(name).invoke("Get-Mailbox", {"ResultSize": "Unlimited"})
            return mailboxes, found
        finally:
            await close_connections()

    return asyncio.run(run())


def test_a_job_runs_get_mailbox_as_the_managed_identity_and_decommission_removes_only_ours(
        stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    mi = job_identity(stack, monkeypatch)
    apps_before = set(stack.world.directory.applications)
    answer = post_identity(body("mi-job", mi.object_id))
    assert answer.status == 201, answer.body
    assert set(stack.world.directory.applications) == apps_before  # no app registration at all
    assert grants_of(stack, mi.object_id) == {"consent": grants_of(stack, mi.object_id)["consent"], "roles": [ERA]}
    assert len(grants_of(stack, mi.object_id)["consent"]) == 1

    record = read_record(stack, "mi-job")
    assert record["credentialType"] == "managedIdentity"
    assert record["appId"] == record["managedIdentityClientId"] == mi.app_id
    assert record["thumbprint"] is None and record["certificateName"] is None
    tags = secret_tags(stack, "mi-job")
    assert tags["consentAssignment"] == grants_of(stack, mi.object_id)["consent"][0]
    assert tags["roleAssignments"] and "?" not in tags["roleAssignments"]
    assert "servicePrincipalId" not in tags and len(tags) <= 15

    status = get_identity("mi-job").body
    assert status["inSync"] is True, status["facets"]
    assert status["facets"]["managedIdentity"]["state"] == "ok"
    assert status["managedIdentity"]["clientId"] == mi.app_id
    assert status["managedIdentity"]["consent"]["ours"] is True
    assert [r["ours"] for r in status["managedIdentity"]["roleAssignments"]] == [True]

    mailboxes, found = job_get_mailbox("mi-job")
    assert len(mailboxes) == 5
    assert found.certificate is None and found.app_id == mi.app_id
    assert post_identity(body("mi-job", mi.object_id)).status == 200  # idempotent: nothing to change

    # Decommission: exactly our grant and role; the managed identity itself stays.
    writes = write_count(stack)
    assert delete_identity("mi-job").status == 200
    assert grants_of(stack, mi.object_id) == {"consent": [], "roles": []}
    assert mi.object_id in stack.world.directory.service_principals
    assert get_identity("mi-job").status == 404
    assert write_count(stack) > writes


def test_decommission_leaves_a_grant_and_role_the_managed_identity_had_before(
        stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    mi = job_identity(stack, monkeypatch)
    grant_app_role(stack.world, mi.object_id, EXCHANGE_APP_ID, "Exchange.ManageAsApp")  # an admin, earlier
    assign_directory_role(stack.world, mi.object_id, GLOBAL_READER)
    before = grants_of(stack, mi.object_id)
    monkeypatch.setenv("ALLOWED_ROLES", "Exchange Recipient Administrator,Global Reader")

    answer = post_identity(body("mi-pre", mi.object_id, roles=["Exchange Recipient Administrator", "Global Reader"]))
    assert answer.status == 201, answer.body
    executed = [e["action"] for e in answer.body["executed"]]
    assert "GrantConsent" not in executed
    status = get_identity("mi-pre").body
    assert status["inSync"] is True, status["facets"]
    ours = {r["roleId"]: r["ours"] for r in status["managedIdentity"]["roleAssignments"]}
    assert ours == {ERA: True, GLOBAL_READER: False}
    assert status["managedIdentity"]["consent"]["ours"] is False
    assert len(job_get_mailbox("mi-pre")[0]) == 5

    assert delete_identity("mi-pre").status == 200
    assert grants_of(stack, mi.object_id) == before  # what it had before, and nothing of ours


def test_drift_repair_restores_a_removed_grant_and_role(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    mi = job_identity(stack, monkeypatch)
    assert post_identity(body("mi-drift", mi.object_id)).status == 201
    with stack.world.lock:
        d = stack.world.directory
        for key in [k for k, a in d.app_role_assignments.items() if a["principalId"] == mi.object_id]:
            del d.app_role_assignments[key]
        for key in [k for k, a in d.role_assignments.items() if a["principalId"] == mi.object_id]:
            del d.role_assignments[key]
    facets = get_identity("mi-drift").body["facets"]
    assert facets["consent"]["state"] == "missing" and facets["roles"]["state"] == "missing"

    outcome = reconcile(stack, "mi-drift")  # the queue path: the spec read back from the registry tags
    assert outcome.error is None, outcome.error
    assert [o.action.kind for o in outcome.executed] == ["GrantConsent", "AssignRole"]
    assert len(grants_of(stack, mi.object_id)["consent"]) == 1
    assert grants_of(stack, mi.object_id)["roles"] == [ERA]
    tags = secret_tags(stack, "mi-drift")
    assert tags["consentAssignment"] == grants_of(stack, mi.object_id)["consent"][0]
    assert reconcile(stack, "mi-drift").executed == []
    assert len(job_get_mailbox("mi-drift")[0]) == 5

    assert delete_identity("mi-drift").status == 200  # the repaired grants are ours too
    assert grants_of(stack, mi.object_id) == {"consent": [], "roles": []}


def test_a_grant_made_just_before_a_crash_is_still_ours(stack: Stack, azurite: str,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from devstack.faults import Fault

    mi = job_identity(stack, monkeypatch)
    # The run stops after the grant: the role assignment is refused and the outcome (with the grant's id) is
    # never written. Only the intent, published with the record before the grant, says the grant is ours.
    stack.world.faults.add(Fault(service="graph", method="POST", path="roleAssignments$", status=400, count=None))
    stack.world.faults.add(Fault(service="keyvault", method="PATCH", path="/secrets/exo-mi-crash-connection",
                                 status=503, count=None))
    failed = post_identity(body("mi-crash", mi.object_id))
    assert failed.status >= 400, failed.body
    stack.world.faults.clear()
    assert len(grants_of(stack, mi.object_id)["consent"]) == 1
    tags = secret_tags(stack, "mi-crash")
    assert tags["consentAssignment"] == "?" and tags["roleAssignments"] == f"?{ERA}"

    witness = lease_metadata(azurite, "mi-crash")  # the witness's outcome was written, the registry's refused
    assert witness["consentassignment"] == grants_of(stack, mi.object_id)["consent"][0], witness
    assert "roleassignments" not in witness  # the role's intent resolved to nothing: its grant was refused

    assert reconcile(stack, "mi-crash").error is None
    tags = secret_tags(stack, "mi-crash")
    assert tags["consentAssignment"] == grants_of(stack, mi.object_id)["consent"][0]
    assert "?" not in tags["roleAssignments"]
    assert delete_identity("mi-crash").status == 200
    assert grants_of(stack, mi.object_id) == {"consent": [], "roles": []}


def lease_metadata(azurite: str, name: str) -> dict[str, str]:
    from azure.storage.blob import BlobClient

    from shared.lease import LEASE_CONTAINER

    with BlobClient.from_connection_string(azurite, LEASE_CONTAINER, name) as blob:
        return dict(blob.get_blob_properties().metadata or {})


def test_a_run_stopped_between_its_grants_and_their_ids_leaves_intents_in_both_records_and_they_are_ours(
        stack: Stack, azurite: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The run loses its lease while its role grant is in flight (as a killed run would, it records no outcome):
    the intents written before the grants, in the witness first and then the registry, still make both grants
    ours, so decommission removes them."""
    from azure.storage.blob import BlobClient, BlobLeaseClient

    from devstack.faults import Fault
    from shared import service
    from shared.lease import LEASE_CONTAINER, LeaseLost

    from .platform_helpers import with_platform

    monkeypatch.setenv("IDENTITY_LEASE_SECONDS", "15")  # renewed every 5 s
    mi = job_identity(stack, monkeypatch)
    stack.world.faults.add(Fault(service="graph", method="POST", path="roleAssignments$", latency=7.0))
    blob = BlobClient.from_connection_string(azurite, LEASE_CONTAINER, "mi-severed")

    def intents_witnessed() -> bool:
        try:
            return "?" in (blob.get_blob_properties().metadata or {}).get("roleassignments", "")
        except Exception:
            return False  # not created yet

    async def scenario(platform: Any) -> BaseException | None:
        run = asyncio.create_task(service.bootstrap(platform, body("mi-severed", mi.object_id)))
        while not await asyncio.to_thread(intents_witnessed):
            assert not run.done(), run
            await asyncio.sleep(0.05)
        # Someone breaks the lease: the run's renewal, due while the role's grant is in flight, is refused.
        await asyncio.to_thread(lambda: BlobLeaseClient(blob).break_lease(lease_break_period=0))
        return (await asyncio.gather(run, return_exceptions=True))[0]

    outcome = with_platform(stack, scenario)
    blob.close()
    assert isinstance(outcome, LeaseLost), outcome
    stack.world.faults.clear()
    made = grants_of(stack, mi.object_id)
    assert len(made["consent"]) == 1 and made["roles"] == [ERA], "both grants were made..."
    tags = secret_tags(stack, "mi-severed")
    assert (tags["consentAssignment"], tags["roleAssignments"]) == ("?", f"?{ERA}"), "...and no id recorded"
    witness = lease_metadata(azurite, "mi-severed")
    assert (witness["consentassignment"], witness["roleassignments"]) == ("?", f"?{ERA}")
    assert witness["principalid"] == mi.object_id

    assert delete_identity("mi-severed").status == 200
    assert grants_of(stack, mi.object_id) == {"consent": [], "roles": []}


@pytest.mark.parametrize("allowed", ["", "other"])
def test_a_managed_identity_not_on_the_allow_list_is_refused_with_zero_writes(
        stack: Stack, monkeypatch: pytest.MonkeyPatch, allowed: str) -> None:
    mi = job_identity(stack, monkeypatch, allow=False)
    monkeypatch.setenv("ALLOWED_MANAGED_IDENTITIES", str(uuid.uuid4()) if allowed else "")
    writes = write_count(stack)
    answer = post_identity(body("mi-refused", mi.object_id))
    assert answer.status == 400, answer.body
    assert answer.body["reason"] == "ManagedIdentityNotAllowed"
    assert "ALLOWED_MANAGED_IDENTITIES" in json.dumps(answer.body)
    assert [e["pointer"] for e in answer.body["errors"]] == ["/credentials/0"]
    assert write_count(stack) == writes
    assert grants_of(stack, mi.object_id) == {"consent": [], "roles": []}


def test_a_principal_that_is_not_a_managed_identity_is_refused_before_any_grant(
        stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.devstack.entra_helpers import create_app

    app = create_app(stack.world, "some-ordinary-app")
    sp = stack.world.directory.sp_by_app_id(app.app["appId"])
    assert sp is not None
    monkeypatch.setenv("ALLOWED_MANAGED_IDENTITIES", f"{sp['id']},{uuid.uuid4()}")
    writes = write_count(stack)
    for principal in (sp["id"], str(uuid.uuid4()).upper()):
        monkeypatch.setenv("ALLOWED_MANAGED_IDENTITIES", principal)
        answer = post_identity(body("mi-notfound", principal))
        assert answer.status == 409, answer.body
        assert answer.body["reason"] == "ManagedIdentityNotFound"
    assert write_count(stack) == writes


def test_an_identity_keeps_its_kind(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    mi = job_identity(stack, monkeypatch)
    assert post_identity(body("mi-kind", mi.object_id)).status == 201
    writes = write_count(stack)
    for other in ({"name": "mi-kind"}, body("mi-kind", str(uuid.uuid4()))):
        principal = other.get("credentials", [{}])[0].get("principalId", "")
        monkeypatch.setenv("ALLOWED_MANAGED_IDENTITIES", f"{mi.object_id},{principal}")
        answer = post_identity(other)
        assert answer.status == 409, answer.body
        assert answer.body["reason"] == "CredentialKindCannotChange"
    assert write_count(stack) == writes


def test_a_managed_identity_identity_is_listed_and_its_removed_grant_is_found_by_the_sweep(
        stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    from .helpers import call
    from .platform_helpers import converge, sweep

    mi = job_identity(stack, monkeypatch)
    assert post_identity(body("mi-listed", mi.object_id)).status == 201
    (listed,) = call("identities", "GET", "http://localhost/api/identities").body["value"]
    assert listed["name"] == "mi-listed" and listed["credentialType"] == "managedIdentity"
    assert listed["appId"] == mi.app_id and listed["thumbprint"] is None
    assert sweep(stack).due == {}

    exchange = stack.world.resource_sp(EXCHANGE_APP_ID)["id"]
    with stack.world.lock:
        d = stack.world.directory
        for key in [k for k, a in d.app_role_assignments.items()
                    if a["principalId"] == mi.object_id and a["resourceId"] == exchange]:
            del d.app_role_assignments[key]
    assert converge(stack) == {"mi-listed": ["ConsentMissing"]}
    assert len(grants_of(stack, mi.object_id)["consent"]) == 1
    assert len(job_get_mailbox("mi-listed")[0]) == 5


def test_a_poisoned_reconcile_shows_in_its_status(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    import azure.functions as func

    from .helpers import call_trigger

    mi = job_identity(stack, monkeypatch)
    assert post_identity(body("mi-poison", mi.object_id)).status == 201
    message = json.dumps({"name": "mi-poison", "reasons": ["ConsentMissing"], "sweepId": "x"})
    call_trigger("record_poisoned_reconcile", message=func.QueueMessage(id="1", body=message.encode()))
    assert get_identity("mi-poison").body["lastResult"]["result"] == "PoisonMessage"
    assert secret_tags(stack, "mi-poison")["consentAssignment"]  # the rest of the registry entry stays
