"""Trust boundaries: attackers with less than tenant-admin rights must not reach anything through us.

The platform identity holds AppRoleAssignment.ReadWrite.All and RoleManagement.ReadWrite.Directory,
which Graph does not scope to owned objects, so the product authorises every write itself. Each
test plays one attacker with only that attacker's rights (tests/integration/attackers.py) through the
real SDKs, and asserts that no role, grant, key or deletion reached anything it must not, and that
the product says why.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from azure.keyvault.certificates import CertificatePolicy

from devstack import Stack
from devstack.world import EXCHANGE_APP_ID, new_id
from tests.devstack.entra_helpers import assign_directory_role, create_app, grant_app_role

from .attackers import (
    EXCHANGE_ADMINISTRATOR,
    GLOBAL_ADMINISTRATOR,
    PRIVILEGED_ROLE_ADMINISTRATOR,
    Attacker,
    app_owner,
    exchange_grants,
    foreign_app,
    principal_roles,
    vault_certificate_writer,
    vault_secret_writer,
)
from .helpers import call, delete_identity, get_identity, post_identity, principal_header, rotate, write_count
from .platform_helpers import bootstrap, reconcile, sweep

ERA = "31392ffb-586c-42d1-9346-e59415a2cc4e"
GLOBAL_READER = "f2ef992c-3afb-46b9-b7cf-a126ee74c451"


def sp_id_of(stack: Stack, name: str) -> str:
    with stack.world.lock:
        d = stack.world.directory
        app = next(a for a in d.applications.values() if a.get("uniqueName") == f"exo-automation-{name}")
        sp = d.sp_by_app_id(app["appId"])
        assert sp is not None
        return str(sp["id"])


def audit_records(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [r.audit for r in caplog.records if hasattr(r, "audit")]  # type: ignore[attr-defined]


# -- 1. A Key Vault certificate writer rewrites the spec's roles --------------------------------------
@pytest.mark.parametrize("role", [GLOBAL_ADMINISTRATOR, PRIVILEGED_ROLE_ADMINISTRATOR])
def test_vault_writer_cannot_reach_a_privileged_role_by_rotate_or_sweep(
        stack: Stack, role: str, caplog: pytest.LogCaptureFixture) -> None:
    assert post_identity({"name": "tagesc"}).status == 201
    sp_id = sp_id_of(stack, "tagesc")
    attacker = vault_certificate_writer(stack)
    attacker.set_certificate_tags("exo-tagesc-cert", roles=f"{ERA},{role}")

    caplog.set_level("INFO", logger="exo_automation.audit")
    # The timer's path: the sweep reports the refusal (never as a missing role), the queue's
    # reconcile refuses it.
    assert sweep(stack).due["tagesc"] == ["RoleRefused"]
    result = reconcile(stack, "tagesc")
    assert result.error is not None and result.error.reason == "RoleRefused"
    assert "tagesc" not in sweep(stack).due  # reported once, not re-run every sweep

    answer = rotate("tagesc")
    assert answer.status == 409, answer.body
    assert answer.body["reason"] == "RoleRefused"
    assert "privileged role" in answer.body["detail"]
    # The rotation itself still happened: refusing a role must not stop credential continuity.
    assert [a["action"] for a in answer.body["run"]["executed"]].count("CreateCertificateVersion") == 1

    assert principal_roles(stack, sp_id) == {ERA}
    status = get_identity("tagesc").body
    assert status["facets"]["rolePolicy"]["state"] == "refused"
    assert status["facets"]["rolePolicy"]["reason"] == "RoleRefused"
    assert status["facets"]["roles"]["state"] == "ok"
    refusals = [e for e in audit_records(caplog) if e["result"] == "RoleRefused"]
    assert refusals and all(e["action"] == "AssignRole" for e in refusals)


def test_vault_writer_tag_change_is_refused_at_bootstrap_too(stack: Stack) -> None:
    """A repeated bootstrap takes the request's roles, never the tags' (and rewrites them)."""
    assert post_identity({"name": "tagesc"}).status == 201
    vault_certificate_writer(stack).set_certificate_tags("exo-tagesc-cert", roles=f"{ERA},{GLOBAL_ADMINISTRATOR}")
    again = post_identity({"name": "tagesc"})
    assert again.status in (200, 201), again.body
    assert principal_roles(stack, sp_id_of(stack, "tagesc")) == {ERA}
    assert get_identity("tagesc").body["facets"]["rolePolicy"]["state"] == "ok"


def test_tags_naming_another_organization_are_refused(stack: Stack) -> None:
    assert post_identity({"name": "orgesc"}).status == 201
    vault_certificate_writer(stack).set_certificate_tags("exo-orgesc-cert", organization="fabrikam.onmicrosoft.com")
    answer = rotate("orgesc")
    assert answer.status == 409 and answer.body["reason"] == "RegistryTagsInvalid", answer.body
    assert "orgesc" not in sweep(stack).due


# -- 2. A narrowed allow-list stops repairs --------------------------------------------------------------
def test_narrowed_allow_list_stops_repairs_and_reports(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALLOWED_ROLES", "Exchange Recipient Administrator,Exchange Administrator")
    assert post_identity({"name": "narrow", "roles": ["Exchange Administrator"]}).status == 201
    sp_id = sp_id_of(stack, "narrow")
    assert principal_roles(stack, sp_id) == {EXCHANGE_ADMINISTRATOR}

    monkeypatch.setenv("ALLOWED_ROLES", "Exchange Recipient Administrator")
    with stack.world.lock:  # an admin removes the assignment
        d = stack.world.directory
        for key in [k for k, a in d.role_assignments.items() if a["principalId"] == sp_id]:
            del d.role_assignments[key]
    answer = rotate("narrow")
    assert answer.status == 409 and answer.body["reason"] == "RoleRefused", answer.body
    assert "ALLOWED_ROLES" in answer.body["detail"]
    assert principal_roles(stack, sp_id) == set()
    assert reconcile(stack, "narrow").error.reason == "RoleRefused"  # type: ignore[union-attr]
    assert principal_roles(stack, sp_id) == set()


def test_a_role_no_longer_allowed_is_reported_and_removed_only_by_a_new_bootstrap(
        stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALLOWED_ROLES", "Exchange Recipient Administrator,Exchange Administrator")
    assert post_identity({"name": "narrow", "roles": ["Exchange Administrator", ERA]}).status == 201
    sp_id = sp_id_of(stack, "narrow")
    monkeypatch.setenv("ALLOWED_ROLES", "Exchange Recipient Administrator")

    assert reconcile(stack, "narrow").error.reason == "RoleRefused"  # type: ignore[union-attr]
    assert principal_roles(stack, sp_id) == {EXCHANGE_ADMINISTRATOR, ERA}  # reported, not removed
    facet = get_identity("narrow").body["facets"]["rolePolicy"]
    assert facet["state"] == "refused" and "Exchange Administrator" in facet["message"]

    again = post_identity({"name": "narrow", "roles": [ERA]})
    assert again.status in (200, 201), again.body
    assert "RemoveRoleAssignment" in [a["action"] for a in again.body["executed"]]
    assert principal_roles(stack, sp_id) == {ERA}
    assert get_identity("narrow").body["inSync"] is True


# -- 3. A tag is not proof of ownership -------------------------------------------------------------------
@pytest.mark.parametrize("platform_app_permission", ["Application.ReadWrite.OwnedBy", "Application.ReadWrite.All"])
def test_foreign_app_with_our_name_and_tag_gets_nothing(stack: Stack, platform_app_permission: str) -> None:
    if platform_app_permission != "Application.ReadWrite.OwnedBy":
        stack.world.set_platform_graph_roles([platform_app_permission, "Application.Read.All",
                                              "AppRoleAssignment.ReadWrite.All", "RoleManagement.ReadWrite.Directory"])
    attacker = app_owner(stack)
    foreign = foreign_app(attacker, "exo-automation-own3", tags=["exo-automation-identities"])
    foreign_sp = foreign["servicePrincipal"]["id"]
    stack.world.counter.reset()

    answer = post_identity({"name": "own3"})
    assert answer.status == 409, answer.body
    assert answer.body["reason"] == "ForeignObject"
    assert "owners" in answer.body["detail"]
    assert exchange_grants(stack, foreign_sp) == []
    assert principal_roles(stack, foreign_sp) == set()
    assert app_keys(stack, foreign["id"]) == []
    assert write_count(stack) == 0

    gone = delete_identity("own3")
    assert gone.status == 409 and gone.body["reason"] == "ForeignObject", gone.body
    assert stack.world.directory.applications.get(foreign["id"]) is not None
    assert write_count(stack) == 0


# -- 4. Forged certificate tags aim decommission and rotation at a foreign app ------------------------------
def test_forged_certificate_tags_cannot_aim_decommission_or_rotation_at_a_foreign_app(stack: Stack) -> None:
    attacker = app_owner(stack)
    foreign = foreign_app(attacker, "exo-automation-own6")
    foreign_sp = foreign["servicePrincipal"]["id"]
    grant_app_role(stack.world, foreign_sp, EXCHANGE_APP_ID, "Exchange.ManageAsApp")  # as a tenant admin did
    assign_directory_role(stack.world, foreign_sp, ERA)

    writer = vault_certificate_writer(stack)
    with writer.certificates() as client:
        client.begin_create_certificate("exo-own6-cert", CertificatePolicy.get_default(), tags={
            "managed-by": "exo-automation-identities", "identity": "own6", "organization": stack.world.organization,
            "roles": ERA, "certificate": "validityMonths=12,keySize=2048", "appId": foreign["appId"],
            "servicePrincipalId": foreign_sp}).result()
    stack.world.counter.reset()

    for answer in (rotate("own6"), delete_identity("own6")):
        assert answer.status == 409, answer.body
        assert answer.body["reason"] == "ForeignObject"
    converge_result = sweep(stack)
    if "own6" in converge_result.due:
        assert reconcile(stack, "own6").error.reason == "ForeignObject"  # type: ignore[union-attr]
    assert len(exchange_grants(stack, foreign_sp)) == 1
    assert principal_roles(stack, foreign_sp) == {ERA}
    assert app_keys(stack, foreign["id"]) == []
    assert write_count(stack) == 0


# -- A Key Vault secret writer edits a managedIdentity identity's registry entry ----------------------------
def test_vault_secret_writer_cannot_aim_a_managed_identity_identity_at_another_principal(
        stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    """The spec comes from the request and today's allow-list; the tags on the connection secret only
    describe it, and are judged like that on every run (the queue path reads them back)."""
    import json

    job = stack.world.add_managed_identity("id-mailbox-jobs")
    target = stack.world.add_managed_identity("id-someone-elses")  # not on the allow-list
    monkeypatch.setenv("ALLOWED_MANAGED_IDENTITIES", job.object_id)
    credentials = [{"type": "managedIdentity", "principalId": job.object_id}]
    assert post_identity({"name": "mi-aimed", "credentials": credentials}).status == 201

    attacker = vault_secret_writer(stack)
    attacker.set_secret_tags("exo-mi-aimed-connection", credentials=json.dumps({"c": 0, "m": target.object_id}))
    stack.world.counter.reset()
    outcome = reconcile(stack, "mi-aimed")
    assert outcome.error is not None and outcome.error.reason == "ManagedIdentityRefused", outcome.error
    assert "ManagedIdentityRefused" in sweep(stack).due.get("mi-aimed", [])
    assert exchange_grants(stack, target.object_id) == [] and principal_roles(stack, target.object_id) == set()
    graph_writes = [r for r in stack.world.counter.snapshot() if r["service"] == "graph"
                    and r["method"] in ("POST", "PATCH", "DELETE")]
    assert not graph_writes, graph_writes
    status = get_identity("mi-aimed").body
    assert status["facets"]["managedIdentity"]["state"] == "refused"
    # The operator's request (the spec as it should be) is told the entry was changed, and changes nothing.
    writes = write_count(stack)
    answer = post_identity({"name": "mi-aimed", "credentials": credentials})
    assert answer.status == 409 and answer.body["reason"] == "CredentialKindCannotChange", answer.body
    assert write_count(stack) == writes


def test_vault_secret_writer_cannot_aim_decommission_at_another_principals_grants(
        stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    """Recorded grant ids only ever select among the grants of the identity's own managed identity."""
    job = stack.world.add_managed_identity("id-mailbox-jobs")
    other = stack.world.add_managed_identity("id-someone-elses")
    other_grant = grant_app_role(stack.world, other.object_id, EXCHANGE_APP_ID, "Exchange.ManageAsApp")
    other_role = assign_directory_role(stack.world, other.object_id, ERA)
    monkeypatch.setenv("ALLOWED_MANAGED_IDENTITIES", f"{job.object_id},{other.object_id}")
    credentials = [{"type": "managedIdentity", "principalId": job.object_id}]
    assert post_identity({"name": "mi-decoy", "credentials": credentials}).status == 201
    ours = exchange_grants(stack, job.object_id)

    vault_secret_writer(stack).set_secret_tags("exo-mi-decoy-connection", consentAssignment=other_grant,
                                               roleAssignments=other_role)
    answer = delete_identity("mi-decoy")
    assert answer.status == 409 and answer.body["reason"] == "GrantsUnconfirmed", answer.body
    assert exchange_grants(stack, other.object_id) == [other_grant]
    assert principal_roles(stack, other.object_id) == {ERA}
    # Ours are no longer claimed by the registry, only by the witness: left, and named for an operator.
    assert exchange_grants(stack, job.object_id) == ours and principal_roles(stack, job.object_id) == {ERA}
    assert ours[0] in answer.body["detail"] and "witness only" in answer.body["detail"]
    assert get_identity("mi-decoy").status == 404


def lease_metadata(azurite: str, name: str) -> dict[str, str]:
    """The identity's lease blob's metadata: the witness of a managedIdentity identity's grants."""
    from azure.storage.blob import BlobClient

    from shared.lease import LEASE_CONTAINER

    with BlobClient.from_connection_string(azurite, LEASE_CONTAINER, name) as blob:
        return dict(blob.get_blob_properties().metadata or {})


# What a Key Vault secret writer writes into the registry entry to make decommission remove a grant the managed
# identity had before the product made its own: (a) the recorded consent id rewritten to that grant's id, (b) an
# intent (`?` matches any consent, `?<role>` any assignment of the role), (c) a role assignment's id added.
TAMPERING = {
    "(a) consent id of a grant it had before": lambda tags, grant, role: {"consentAssignment": grant},
    "(b) intent for consent": lambda tags, grant, role: {"consentAssignment": "?"},
    "(b) intent for a role it had before": lambda tags, grant, role: {
        "roleAssignments": f"{tags['roleAssignments']},?{GLOBAL_READER}"},
    "(c) id of a role assignment it had before": lambda tags, grant, role: {
        "roleAssignments": f"{tags['roleAssignments']},{role}"},
}


@pytest.mark.parametrize("tampering", list(TAMPERING))
def test_vault_secret_writer_cannot_make_decommission_remove_grants_the_managed_identity_had_before(
        stack: Stack, azurite: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        tampering: str) -> None:
    """A grant is removed only if the registry and the witness (the lease blob's metadata, which a Key Vault
    writer cannot write) both say the product made it; they disagree here, so nothing of the managed identity's
    is removed, and the answer names what an operator should check."""
    from .helpers import connection_secret

    job = stack.world.add_managed_identity("id-mailbox-jobs")
    their_grant = grant_app_role(stack.world, job.object_id, EXCHANGE_APP_ID, "Exchange.ManageAsApp")  # an admin's
    their_role = assign_directory_role(stack.world, job.object_id, GLOBAL_READER)
    monkeypatch.setenv("ALLOWED_MANAGED_IDENTITIES", job.object_id)
    name = "mi-tamper-" + "abcd"[list(TAMPERING).index(tampering)]
    credentials = [{"type": "managedIdentity", "principalId": job.object_id}]
    assert post_identity({"name": name, "credentials": credentials}).status == 201
    assert principal_roles(stack, job.object_id) == {GLOBAL_READER, ERA}  # the product made only the role
    witness = lease_metadata(azurite, name)
    tags = connection_secret(stack, name)[1]
    assert "consentassignment" not in witness and witness["roleassignments"] == tags["roleAssignments"]

    changes = TAMPERING[tampering](tags, their_grant, their_role)
    vault_secret_writer(stack).set_secret_tags(f"exo-{name}-connection", **changes)
    # The next run (the sweep's deep check) resolves the registry's claims, and never copies them to the witness.
    assert reconcile(stack, name).error is None
    assert lease_metadata(azurite, name) == witness

    caplog.set_level("INFO", logger="exo_automation.audit")
    answer = delete_identity(name)
    assert answer.status == 409 and answer.body["reason"] == "GrantsUnconfirmed", answer.body
    (event,) = [e for e in audit_records(caplog) if e["result"] == "GrantsUnconfirmed"]  # operators are told
    assert (event["operation"], event["action"], event["facet"]) == ("decommission", "Decommission", "managedIdentity")
    # Read back from Graph: what it had before is untouched, and so is ours (the records disagree: an operator looks).
    assert exchange_grants(stack, job.object_id) == [their_grant]
    assert principal_roles(stack, job.object_id) == {GLOBAL_READER, ERA}
    detail = answer.body["detail"]
    claimed = their_grant if "consent" in tampering else their_role
    assert claimed in detail and "registry only" in detail, detail
    assert tags["roleAssignments"] in detail  # ours too, claimed by both
    assert [e["action"] for e in answer.body["run"]["executed"]] == ["MarkDecommissioning", "DeleteConnectionSecret"]
    assert get_identity(name).status == 404  # the rest of the decommission is done
    assert job.object_id in stack.world.directory.service_principals


# -- Someone who can write the Functions storage account's blobs edits the registry's index of names ----------
def test_names_a_storage_writer_adds_to_the_index_are_hints_that_reach_nothing(
        stack: Stack, azurite: str) -> None:
    """A lease blob names no identity by itself: without a registry entry in Key Vault (the connection secret's
    tags, ours and describing that very identity) the name is read and dropped, with zero writes."""
    from azure.identity import ManagedIdentityCredential
    from azure.keyvault.secrets import SecretClient
    from azure.storage.blob import ContainerClient

    from shared.lease import LEASE_CONTAINER

    from .test_registry_index import listed_names, secret_requests

    assert bootstrap(stack, "real").error is None
    assert sweep(stack).due == {}
    with ManagedIdentityCredential() as credential, \
            SecretClient(stack.settings()["KEY_VAULT_URL"], credential) as secrets:
        # Someone else's secret under an identity's connection-secret name, tagged like a registry entry.
        secrets.set_secret("exo-unowned-connection", "{}", tags={"identity": "unowned", "credentials": "[]"})

    def add_names(*names: str) -> None:
        with ContainerClient.from_connection_string(azurite, LEASE_CONTAINER) as container:
            for name in names:
                container.upload_blob(name, b"", overwrite=True)

    add_names("unowned", "real", "Not-An-Identity-Name")
    stack.world.counter.reset()
    result = sweep(stack)
    assert (result.due, result.identities) == ({}, 1)
    assert secret_requests(stack) == {"read": 1}  # unowned; real has its certificate, the other is no name
    assert write_count(stack) == 0
    # Two names without a certificate next to one certificate identity: one page of the listing costs less.
    add_names("ghost")
    stack.world.counter.reset()
    result = sweep(stack)
    assert (result.due, result.identities) == ({}, 1)
    assert secret_requests(stack) == {"list": 1} and write_count(stack) == 0
    assert listed_names(stack) == {"real"}


def app_keys(stack: Stack, object_id: str) -> list[str]:
    with stack.world.lock:
        return [k["keyId"] for k in stack.world.directory.applications[object_id]["keyCredentials"]]


# -- 5. A pending certificate someone else started is not adopted -------------------------------------------
def test_pending_foreign_certificate_is_not_adopted(stack: Stack) -> None:
    stack.world.services["keyvault"].creation_delay = 2.0
    writer = vault_certificate_writer(stack)
    with writer.certificates() as client:
        client.begin_create_certificate("exo-pend-cert", CertificatePolicy.get_default())  # no tags, not awaited
    stack.world.counter.reset()

    answer = post_identity({"name": "pend"})
    assert answer.status == 409 and answer.body["reason"] == "ForeignObject", answer.body
    assert write_count(stack) == 0
    time.sleep(2.2)  # the foreign creation completes
    again = post_identity({"name": "pend"})
    assert again.status == 409 and again.body["reason"] == "ForeignObject", again.body
    assert write_count(stack) == 0
    with writer.certificates() as client:
        assert (client.get_certificate("exo-pend-cert").properties.tags or {}) == {}  # no tags of ours written
    assert not [a for a in stack.world.directory.applications.values()
                if a.get("uniqueName") == "exo-automation-pend"]


def test_racing_a_foreign_pending_creation_is_refused_after_it_completes(stack: Stack) -> None:
    """Our create meets 409 (a creation in progress): we wait for it, and refuse it unless it is ours."""
    from shared.adapters.vault import VaultGateway
    from shared.core.spec import parse_spec
    from shared.errors import ForeignObject
    from shared.settings import Settings

    stack.world.services["keyvault"].creation_delay = 1.0
    writer = vault_certificate_writer(stack)
    with writer.certificates() as client:
        client.begin_create_certificate("exo-race-cert", CertificatePolicy.get_default())

    async def create() -> None:
        from azure.identity.aio import ManagedIdentityCredential

        settings = Settings.from_environment()
        async with ManagedIdentityCredential() as credential:
            vault = VaultGateway(settings, credential)
            try:
                spec = parse_spec({"name": "race"}, settings)
                ours = {"managed-by": "exo-automation-identities", "identity": "race"}
                started = await vault.start_certificate_version("exo-race-cert", spec, ours)
                await vault.await_certificate("exo-race-cert", started)
            finally:
                await vault.aclose()

    with pytest.raises(ForeignObject):
        asyncio.run(create())


# -- 8. DELETE while the first version is pending --------------------------------------------------------
def test_delete_while_our_first_version_is_pending_is_a_503_then_completes(stack: Stack) -> None:
    from azure.identity import ManagedIdentityCredential
    from azure.keyvault.certificates import CertificateClient

    stack.world.services["keyvault"].creation_delay = 1.5
    with ManagedIdentityCredential() as credential, \
            CertificateClient(stack.settings()["KEY_VAULT_URL"], credential) as client:
        # A bootstrap that stopped right after its create request (a crash, a timeout).
        client.begin_create_certificate("exo-pdel-cert", CertificatePolicy.get_default(), tags={
            "managed-by": "exo-automation-identities", "identity": "pdel", "organization": stack.world.organization,
            "roles": ERA, "certificate": "validityMonths=12,keySize=2048"})
    answer = delete_identity("pdel")
    assert answer.status == 503, answer.body
    assert answer.body["reason"] == "CertificatePending"
    assert answer.headers.get("Retry-After") == "10"
    time.sleep(1.7)
    done = delete_identity("pdel")
    assert done.status == 200 and done.body["result"] == "Succeeded", done.body


# -- 6. Caller identity comes from the platform only -------------------------------------------------------
def test_forged_principal_header_cannot_write_when_app_roles_are_required(
        stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    """No App Service Authentication in front and no token validation configured: refuse everything."""
    monkeypatch.setenv("AUTH_REQUIRE_APP_ROLES", "true")
    stack.world.counter.reset()
    for answer in (post_identity({"name": "forged"}, headers=principal_header(["ExoIdentities.ReadWrite"])),
                   get_identity("forged")):
        assert answer.status == 500, answer.body
        assert answer.body["reason"] == "AuthenticationMisconfigured"
        assert "WEBSITE_AUTH_ENABLED" in answer.body["detail"] and "AUTH_AUDIENCE" in answer.body["detail"]
    assert write_count(stack) == 0


def test_forged_principal_header_is_not_the_audit_caller(stack: Stack, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="exo_automation.audit")
    forged = principal_header(["ExoIdentities.ReadWrite"])
    assert post_identity({"name": "forged"}, headers=forged).status == 201
    callers = {e["caller"] for e in audit_records(caplog)}
    assert callers == {"function-key"}


API = "api://exo-identities"


def api_caller(stack: Stack, *roles: str) -> Attacker:
    """An admin's script registered in the tenant, granted `roles` of the API app registration."""
    with stack.world.lock:
        d = stack.world.directory
        api = next((sp for sp in d.service_principals.values() if API in sp.get("servicePrincipalNames", [])), None)
        if api is None:
            api_app = create_app(stack.world, "exo-identities-api").sp
            assert api_app is not None
            api = api_app
            api["servicePrincipalNames"].append(API)
            api["appRoles"] = [{"id": new_id(), "value": value, "displayName": value, "description": value,
                                "allowedMemberTypes": ["Application"], "isEnabled": True, "origin": "Application"}
                               for value in ("ExoIdentities.Read", "ExoIdentities.ReadWrite")]
    caller = Attacker(stack, create_app(stack.world, "admin-script"))
    for role in roles:
        role_id = next(r["id"] for r in api["appRoles"] if r["value"] == role)
        with stack.world.lock:
            assignment = new_id()
            stack.world.directory.app_role_assignments[assignment] = {
                "id": assignment, "principalId": caller.object_id, "principalType": "ServicePrincipal",
                "resourceId": api["id"], "appRoleId": role_id, "createdDateTime": None, "deletedDateTime": None}
    return caller


def bearer(attacker: Attacker, audience: str = API) -> dict[str, str]:
    with attacker.credential() as credential:
        return {"Authorization": f"Bearer {credential.get_token(f'{audience}/.default').token}"}


def test_validated_entra_tokens_authorise_callers_without_app_service_auth(
        stack: Stack, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("AUTH_REQUIRE_APP_ROLES", "true")
    monkeypatch.setenv("AUTH_AUDIENCE", API)
    caplog.set_level("INFO", logger="exo_automation.audit")
    writer, reader, nobody = (api_caller(stack, "ExoIdentities.ReadWrite"), api_caller(stack, "ExoIdentities.Read"),
                              api_caller(stack))
    stack.world.counter.reset()

    forged = post_identity({"name": "viatoken"}, headers=principal_header(["ExoIdentities.ReadWrite"]))
    assert forged.status == 401 and forged.body["reason"] == "AuthenticationRequired", forged.body
    assert post_identity({"name": "viatoken"}, headers=bearer(reader)).status == 403
    assert post_identity({"name": "viatoken"}, headers=bearer(nobody)).status == 403
    wrong_audience = post_identity({"name": "viatoken"}, headers=bearer(writer, stack.settings()["GRAPH_ENDPOINT"]))
    assert wrong_audience.status == 401 and wrong_audience.body["reason"] == "AuthenticationFailed"
    self_signed = post_identity({"name": "viatoken"}, headers={"Authorization": "Bearer " + forged_token(stack)})
    assert self_signed.status == 401, self_signed.body
    assert write_count(stack) == 0

    created = post_identity({"name": "viatoken"}, headers=bearer(writer))
    assert created.status == 201, created.body
    assert {e["caller"] for e in audit_records(caplog)} == {f"principal:{writer.principal.app_id}"}
    read = call("identity", "GET", "http://localhost/api/identities/viatoken", route_params={"name": "viatoken"},
                headers=bearer(reader))
    assert read.status == 200


def forged_token(stack: Stack) -> str:
    """A token with every right claim, signed by a key the tenant does not publish."""
    import time as clock

    import jwt
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = int(clock.time())
    claims = {"aud": API, "iss": f"https://sts.windows.net/{stack.world.tenant_id}/", "tid": stack.world.tenant_id,
              "iat": now, "nbf": now, "exp": now + 600, "roles": ["ExoIdentities.ReadWrite"], "oid": new_id()}
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": stack.world.issuer.key_id})


# -- 7. Secret hygiene: the function key never reaches a log; hostile bodies are 400 -------------------------
def test_deep_json_with_a_function_key_in_the_query_is_a_400_and_logs_no_key(
        stack: Stack, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG")
    key = "Fk3yS3cret-0123456789abcdef=="
    deep = b"[" * 8000 + b"]" * 8000
    answer = call("identities", "POST", f"http://localhost/api/identities?code={key}", raw=deep,
                  params={"code": key}, headers={"Content-Type": "application/json"})
    assert answer.status == 400, answer.body
    assert answer.body["reason"] == "MalformedJson"
    assert key not in caplog.text
    assert all(key not in r.getMessage() for r in caplog.records)


def test_an_unexpected_failure_logs_the_path_without_the_query(
        stack: Stack, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    from shared import service

    async def explode(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("boom")

    monkeypatch.setattr(service, "bootstrap", explode)
    key = "Fk3yS3cret-abcdef"
    answer = call("identities", "POST", f"http://localhost/api/identities?code={key}", body={"name": "boom"},
                  params={"code": key})
    assert answer.status == 500 and answer.body["reason"] == "InternalError"
    assert "unexpected failure handling POST /api/identities" in caplog.text
    assert key not in caplog.text
