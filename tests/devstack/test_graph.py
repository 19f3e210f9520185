"""The Graph stand-in, driven through msgraph-sdk's GraphServiceClient and, for wire details, httpx."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import os
import time
import uuid
from typing import Any, TypeVar
from uuid import UUID

import jwt
import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from kiota_abstractions.base_request_configuration import RequestConfiguration
from msgraph import GraphServiceClient
from msgraph.generated.models.app_role_assignment import AppRoleAssignment
from msgraph.generated.models.application import Application
from msgraph.generated.models.key_credential import KeyCredential
from msgraph.generated.models.required_resource_access import RequiredResourceAccess
from msgraph.generated.models.resource_access import ResourceAccess
from msgraph.generated.models.service_principal import ServicePrincipal
from msgraph.generated.models.unified_role_assignment import UnifiedRoleAssignment

from devstack import Stack
from devstack.faults import Fault
from devstack.world import AAD_GRAPH_APP_ID, EXCHANGE_APP_ID, EXCHANGE_MANAGE_AS_APP

from .graph_helpers import (
    Cert,
    MintedCredential,
    make_cert,
    other_caller,
    platform_credential,
    raw_client,
    refused,
    run,
)

# msgraph-sdk and kiota emit DeprecationWarnings from their own class bodies when a request
# builder is first imported; that is the SDK talking about itself, not something to fix here.
pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning:msgraph"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning:kiota_abstractions"),
]

RECIPIENT_ADMIN = "31392ffb-586c-42d1-9346-e59415a2cc4e"
EXCHANGE_ADMIN = "29232cdf-9323-42fd-ade2-1d097af3e4de"
T = TypeVar("T")



def upsert_config() -> RequestConfiguration[Any]:
    config: RequestConfiguration[Any] = RequestConfiguration()
    config.headers.add("Prefer", "create-if-missing")
    return config


def list_config(client: GraphServiceClient, **params: Any) -> RequestConfiguration[Any]:
    # Request builders are reached through the client: importing them at module level would run
    # their deprecation warnings during collection, outside the filters above.
    query = client.applications.ApplicationsRequestBuilderGetQueryParameters(**params)
    return RequestConfiguration(query_parameters=query)


def key_credential(cert: Cert, **overrides: Any) -> KeyCredential:
    values: dict[str, Any] = {"type": "AsymmetricX509Cert", "usage": "Verify", "key": cert.der}
    values.update(overrides)
    return KeyCredential(**values)


async def new_app_with_sp(client: GraphServiceClient, name: str) -> tuple[Application, ServicePrincipal]:
    app = await client.applications.post(Application(display_name=name, sign_in_audience="AzureADMyOrg"))
    assert app is not None and app.app_id is not None
    sp = await client.service_principals.post(ServicePrincipal(app_id=app.app_id))
    assert sp is not None
    return app, sp


# -- applications -------------------------------------------------------------------------------------

def test_create_application_returns_the_object_and_makes_the_caller_owner(stack: Stack) -> None:
    stack.world.clock.advance(10 * 86400)
    expected_day = stack.world.clock.now().date()

    async def scenario(client: GraphServiceClient) -> None:
        exo = RequiredResourceAccess(resource_app_id=EXCHANGE_APP_ID, resource_access=[
            ResourceAccess(id=UUID(EXCHANGE_MANAGE_AS_APP), type="Role")])
        app = await client.applications.post(Application(
            display_name="exo-job-reports", sign_in_audience="AzureADMyOrg", tags=["exo-automation"],
            required_resource_access=[exo]))
        assert app is not None and app.id and app.app_id and app.id != app.app_id
        assert app.sign_in_audience == "AzureADMyOrg"
        assert app.tags == ["exo-automation"]
        assert app.key_credentials == [] and app.password_credentials == []
        assert app.required_resource_access[0].resource_access[0].id == UUID(EXCHANGE_MANAGE_AS_APP)
        assert app.web is not None and app.web.redirect_uris == []
        assert app.publisher_domain == stack.world.organization
        assert app.created_date_time is not None and app.created_date_time.date() == expected_day

        default = await client.applications.post(Application(display_name="no-audience"))
        assert default is not None and default.sign_in_audience == "AzureADandPersonalMicrosoftAccount"

        owners = await client.applications.by_application_id(app.id).owners.get()
        assert owners is not None and [o.id for o in owners.value] == [stack.world.platform.object_id]

        error = await refused(client.applications.post(Application(sign_in_audience="AzureADMyOrg")))
        assert error.response_status_code == 400 and error.error.code == "Request_BadRequest"

    run(scenario, stack)
    with raw_client(stack) as http:
        headers = platform_credential(stack).bearer()
        answer = http.post("/applications", headers=headers, json={
            "displayName": "with-secret", "passwordCredentials": [{"displayName": "s"}]})
        assert answer.status_code == 400
        assert "service actions" in answer.json()["error"]["message"]
        assert not any(a["displayName"] == "with-secret" for a in stack.world.directory.applications.values())


def test_upsert_by_unique_name_creates_once_then_updates(stack: Stack) -> None:
    async def scenario(client: GraphServiceClient) -> None:
        by_key = client.applications_with_unique_name("exo-reports")
        missing = await refused(by_key.patch(Application(display_name="exo reports")))
        assert missing.response_status_code == 404 and missing.error.code == "Request_ResourceNotFound"

        created = await by_key.patch(Application(display_name="exo reports"), request_configuration=upsert_config())
        assert created is not None and created.unique_name == "exo-reports" and created.id
        # Whether an upserted app gets its app-only creator as owner is not documented (docs/reference.md,
        # "Applications"): the stand-in gives it none, so an OwnedBy caller cannot update it afterwards.
        assert stack.world.directory.owners[created.id] == []
        not_owner = await refused(by_key.patch(Application(display_name="exo reports v2", tags=["t"]),
                                               request_configuration=upsert_config()))
        assert not_owner.response_status_code == 403
        stack.world.directory.owners[created.id] = [stack.world.platform.object_id]  # an admin adds the owner
        again = await by_key.patch(Application(display_name="exo reports v2", tags=["t"]),
                                   request_configuration=upsert_config())
        assert again is None  # 204: it existed

        fetched = await by_key.get()
        assert fetched is not None and fetched.id == created.id
        assert fetched.display_name == "exo reports v2" and fetched.tags == ["t"]
        page = await client.applications.get(list_config(client, filter="uniqueName eq 'exo-reports'"))
        assert page is not None and [a.id for a in page.value] == [created.id]

        clash = await refused(client.applications.post(Application(display_name="x", unique_name="exo-reports")))
        assert clash.response_status_code == 400
        immutable = await refused(client.applications.by_application_id(created.id).patch(
            Application(unique_name="renamed")))
        assert immutable.response_status_code == 400

    run(scenario, stack)
    assert sum(a.get("uniqueName") == "exo-reports" for a in stack.world.directory.applications.values()) == 1


def test_owned_by_caller_manages_only_its_own_apps(stack: Stack) -> None:
    intruder = other_caller(stack, ["Application.ReadWrite.OwnedBy"])

    async def platform_side(client: GraphServiceClient) -> str:
        app = await client.applications.post(Application(display_name="platform-owned"))
        assert app is not None and app.id
        return app.id

    theirs = run(platform_side, stack)

    async def intruder_side(client: GraphServiceClient) -> None:
        patch = await refused(client.applications.by_application_id(theirs).patch(Application(display_name="x")))
        assert patch.response_status_code == 403 and patch.error.code == "Authorization_RequestDenied"
        assert patch.error.message == "Insufficient privileges to complete the operation."
        delete = await refused(client.applications.by_application_id(theirs).delete())
        assert delete.response_status_code == 403
        app_id = stack.world.directory.applications[theirs]["appId"]
        sp = await refused(client.service_principals.post(ServicePrincipal(app_id=app_id)))
        assert sp.response_status_code == 403
        readable = await client.applications.by_application_id(theirs).get()  # OwnedBy reads everything
        assert readable is not None and readable.display_name == "platform-owned"

        mine = await client.applications.post(Application(display_name="intruder-owned"))
        assert mine is not None and mine.id
        await client.applications.by_application_id(mine.id).patch(Application(display_name="renamed"))
        assert stack.world.directory.applications[mine.id]["displayName"] == "renamed"

    run(intruder_side, stack, intruder)
    assert stack.world.directory.applications[theirs]["displayName"] == "platform-owned"

    nobody = other_caller(stack, [], name="no-permissions")
    with raw_client(stack) as http:
        assert http.get("/applications", headers=nobody.bearer()).status_code == 403
        owner_ref = {"@odata.id": f"{stack.url('graph')}/v1.0/directoryObjects/{intruder.object_id}"}
        add_owner = http.post(f"/applications/{theirs}/owners/$ref", headers=platform_credential(stack).bearer(),
                              json=owner_ref)
        assert add_owner.status_code == 403  # adding owners takes Application.ReadWrite.All
        admin = other_caller(stack, ["Application.ReadWrite.All"], name="app-admin")
        added = http.post(f"/applications/{theirs}/owners/$ref", headers=admin.bearer(), json=owner_ref)
        assert added.status_code == 204
    assert intruder.object_id in stack.world.directory.owners[theirs]


# -- key credentials -------------------------------------------------------------------------------

def test_key_credential_patch_defaults_and_key_visibility(stack: Stack) -> None:
    cert = make_cert(stack, days=30, subject="CN=exo-reports")
    second = make_cert(stack, days=60)

    async def scenario(client: GraphServiceClient) -> None:
        app = await client.applications.post(Application(display_name="keys"))
        assert app is not None and app.id
        item = client.applications.by_application_id(app.id)
        await item.patch(Application(key_credentials=[key_credential(cert)]))

        plain = await item.get()
        assert plain is not None and len(plain.key_credentials) == 1
        stored = plain.key_credentials[0]
        assert stored.key is None  # only a single-object $select=keyCredentials shows it
        assert stored.start_date_time == cert.certificate.not_valid_before_utc
        assert stored.end_date_time == cert.certificate.not_valid_after_utc
        assert stored.custom_key_identifier == cert.thumbprint
        assert stored.display_name == "CN=exo-reports"
        assert stored.type == "AsymmetricX509Cert" and stored.usage == "Verify"

        selected = await item.get(RequestConfiguration(
            query_parameters=item.ApplicationItemRequestBuilderGetQueryParameters(select=["keyCredentials"])))
        assert selected is not None and selected.key_credentials[0].key == cert.der
        assert selected.display_name is None  # $select projects

        listed = await client.applications.get(list_config(client, select=["id", "keyCredentials"]))
        assert listed is not None
        assert [k.key for a in listed.value if a.id == app.id for k in a.key_credentials] == [None]

        # Keep the first key by sending it back whole, and add one under a keyId the client chose.
        stack.world.replication_delay = 30
        chosen = uuid.uuid4()
        await item.patch(Application(key_credentials=[
            key_credential(cert, key_id=stored.key_id),
            key_credential(second, key_id=chosen, display_name="n" * 120)]))
        stack.world.replication_delay = 0
        after = await item.get()
        assert after is not None
        by_id = {k.key_id: k for k in after.key_credentials}
        assert set(by_id) == {stored.key_id, chosen}
        assert by_id[chosen].display_name == "n" * 90
        assert str(chosen) in stack.world.directory.visible_at  # the new key is "just created"
        assert str(stored.key_id) not in stack.world.directory.visible_at

        # PATCH replaces the collection: sending only the second key drops the first.
        await item.patch(Application(key_credentials=[key_credential(second, key_id=chosen)]))
        final = await item.get()
        assert final is not None and [k.key_id for k in final.key_credentials] == [chosen]

    run(scenario, stack)


def test_key_credential_refusals_fail_the_whole_patch(stack: Stack) -> None:
    good = make_cert(stack, days=30)
    other = make_cert(stack, days=30)
    expired = make_cert(stack, days=-1, starts_ago=10)

    async def scenario(client: GraphServiceClient) -> None:
        app = await client.applications.post(Application(display_name="strict-keys"))
        assert app is not None and app.id
        item = client.applications.by_application_id(app.id)
        await item.patch(Application(key_credentials=[key_credential(good)]))
        before = await item.get()
        assert before is not None
        kept = before.key_credentials[0].key_id

        beyond = other.certificate.not_valid_after_utc + dt.timedelta(seconds=1)
        too_long = await refused(item.patch(Application(key_credentials=[
            key_credential(good, key_id=kept), key_credential(other, end_date_time=beyond)])))
        assert too_long.response_status_code == 400 and too_long.error.code == "KeyCredentialsInvalidEndDate"

        stale = await refused(item.patch(Application(key_credentials=[key_credential(expired)])))
        assert stale.response_status_code == 400 and stale.error.code == "KeyCredentialsInvalidEndDate"

        keyless = await refused(item.patch(Application(key_credentials=[
            KeyCredential(type="AsymmetricX509Cert", usage="Verify", key_id=kept)])))
        assert keyless.response_status_code == 400 and keyless.error.code == "KeyCredentialsInvalidValue"

        inverted = await refused(item.patch(Application(key_credentials=[key_credential(
            other, start_date_time=other.certificate.not_valid_after_utc - dt.timedelta(hours=1),
            end_date_time=other.certificate.not_valid_after_utc - dt.timedelta(hours=2))])))
        assert inverted.error.code == "KeyCredentialsInvalidEndDate"

        after = await item.get()
        assert after is not None and [k.key_id for k in after.key_credentials] == [kept]

        # Once the simulated clock passes NotAfter, re-sending the stored key is refused too.
        stack.world.clock.advance(31 * 86400)
        lapsed = await refused(item.patch(Application(key_credentials=[key_credential(good, key_id=kept)])))
        assert lapsed.error.code == "KeyCredentialsInvalidEndDate"

    run(scenario, stack)


def test_add_key_and_remove_key_need_a_proof_from_a_valid_certificate(stack: Stack) -> None:
    first, second, stranger = make_cert(stack), make_cert(stack), make_cert(stack)

    async def setup(client: GraphServiceClient) -> str:
        app = await client.applications.post(Application(display_name="self-rolling"))
        assert app is not None and app.id
        await client.applications.by_application_id(app.id).patch(Application(key_credentials=[key_credential(first)]))
        return app.id

    app_id = run(setup, stack)
    app = stack.world.directory.applications[app_id]

    def proof(cert: Cert, lifetime: int = 600, audience: str = AAD_GRAPH_APP_ID) -> str:
        now = int(time.time())
        return jwt.encode({"aud": audience, "iss": app_id, "nbf": now, "exp": now + lifetime}, cert.key,
                          algorithm="RS256", headers={"x5t": base64.urlsafe_b64encode(cert.thumbprint).decode()})

    # The application itself calls, with no Graph permission at all.
    itself = MintedCredential(stack, uuid.uuid4().hex, app["appId"], [])
    new_key = {"type": "AsymmetricX509Cert", "usage": "Verify", "key": base64.b64encode(second.der).decode()}
    with raw_client(stack) as http:
        headers = itself.bearer()
        for bad in (proof(first, lifetime=3600), proof(stranger), proof(first, audience="api://other")):
            answer = http.post(f"/applications/{app_id}/addKey", headers=headers,
                               json={"keyCredential": new_key, "passwordCredential": None, "proof": bad})
            assert answer.status_code == 400, answer.text
        added = http.post(f"/applications/{app_id}/addKey", headers=headers,
                          json={"keyCredential": new_key, "passwordCredential": None, "proof": proof(first)})
        assert added.status_code == 200, added.text
        assert added.json()["key"] is None
        assert len(app["keyCredentials"]) == 2
        old_key_id = app["keyCredentials"][0]["keyId"]
        removed = http.post(f"/applications/{app_id}/removeKey", headers=headers,
                            json={"keyId": old_key_id, "proof": proof(second)})
        assert removed.status_code == 204, removed.text
        assert [k["keyId"] for k in app["keyCredentials"]] == [added.json()["keyId"]]
        # Once every key has lapsed, no proof can be valid any more.
        stack.world.clock.advance(31 * 86400)
        late = http.post(f"/applications/{app_id}/removeKey", headers=headers,
                         json={"keyId": added.json()["keyId"], "proof": proof(second)})
        assert late.status_code == 400


# -- service principals, replication -------------------------------------------------------------------

def test_service_principal_waits_for_replication_and_is_unique(stack: Stack) -> None:
    async def scenario(client: GraphServiceClient) -> None:
        # msgraph-sdk builds its model deserializers on first use, which takes seconds on a loaded machine:
        # done before the 3 s window opens, so that the checks inside it are not late when this test runs first.
        await client.applications.post(Application(display_name="warm-up"))
        stack.world.replication_delay = 3.0
        app = await client.applications.post(Application(display_name="fresh", tags=["exo-automation"]))
        assert app is not None and app.id and app.app_id
        stack.world.replication_delay = 0
        hidden = await refused(client.applications.by_application_id(app.id).get())
        assert hidden.response_status_code == 404 and hidden.error.code == "Request_ResourceNotFound"
        # docs/reference.md "Service principals" (seen): 403 "... must be in the local tenant" and 400
        # NoBackingApplicationObject, by default in turn (403 first) for an OwnedBy caller.
        early = await refused(client.service_principals.post(ServicePrincipal(app_id=app.app_id)))
        assert early.response_status_code == 403 and early.error.code == "Authorization_RequestDenied"
        assert "must in the local tenant" in str(early.error.message)
        later = await refused(client.service_principals.post(ServicePrincipal(app_id=app.app_id)))
        assert later.response_status_code == 400 and later.error.code == "Request_BadRequest"
        assert [d.code for d in later.error.details] == ["NoBackingApplicationObject"]

        await asyncio.sleep(3.1)
        sp = await client.service_principals.post(ServicePrincipal(app_id=app.app_id))
        assert sp is not None and sp.app_id == app.app_id and sp.display_name == "fresh"
        assert sp.tags == ["exo-automation"] and sp.service_principal_type == "Application"
        twice = await refused(client.service_principals.post(ServicePrincipal(app_id=app.app_id)))
        assert twice.response_status_code == 409 and twice.error.code == "Request_MultipleObjectsWithSameKeyValue"

        by_app_id = await client.service_principals_with_app_id(app.app_id).get()
        assert by_app_id is not None and by_app_id.id == sp.id
        exo = await client.service_principals_with_app_id(EXCHANGE_APP_ID).get()
        assert exo is not None and exo.display_name == "Office 365 Exchange Online"

    run(scenario, stack)


@pytest.mark.parametrize(("mode", "statuses"), [("403", [403, 403]), ("400", [400, 400]), ("mixed", [403, 400])])
def test_service_principal_replication_refusal_is_a_control_knob(stack: Stack, mode: str,
                                                                 statuses: list[int]) -> None:
    import httpx

    control = os.environ["DEVSTACK_CONTROL_URL"]
    assert httpx.post(f"{control}/control/replication",
                      json={"delaySeconds": 30, "servicePrincipalError": mode}).status_code == 204
    assert httpx.post(f"{control}/control/replication",
                      json={"delaySeconds": 30, "servicePrincipalError": "404"}).status_code == 400

    async def scenario(client: GraphServiceClient) -> list[int]:
        app = await client.applications.post(Application(display_name="fresh"))
        assert app is not None and app.app_id
        seen = []
        for _ in statuses:
            error = await refused(client.service_principals.post(ServicePrincipal(app_id=app.app_id)))
            seen.append(int(error.response_status_code or 0))
        return seen

    assert run(scenario, stack) == statuses


def test_service_principal_replication_refusal_for_an_all_writer_is_400(stack: Stack) -> None:
    # The 403 names "this permission" (OwnedBy); a caller with Application.ReadWrite.All gets the 400.
    stack.world.set_platform_graph_roles(["Application.ReadWrite.All"])
    stack.world.replication_delay = 30

    async def scenario(client: GraphServiceClient) -> int:
        app = await client.applications.post(Application(display_name="fresh"))
        assert app is not None and app.app_id
        error = await refused(client.service_principals.post(ServicePrincipal(app_id=app.app_id)))
        return int(error.response_status_code or 0)

    assert run(scenario, stack) == 400


def test_a_permission_granted_to_the_platform_can_arrive_late(stack: Stack) -> None:
    # docs/reference.md "Entra ID tokens": a managed identity's new Graph permission can take hours to
    # reach its tokens. The control API grants with a delay; what it already held stays in effect.
    import httpx
    from azure.identity import ManagedIdentityCredential

    control = os.environ["DEVSTACK_CONTROL_URL"]
    graph = os.environ["GRAPH_ENDPOINT"]
    assert httpx.post(f"{control}/control/platform/graph-roles",
                      json={"roles": ["Application.ReadWrite.OwnedBy"]}).status_code == 204
    assert httpx.post(f"{control}/control/platform/graph-roles", json={
        "roles": ["Application.ReadWrite.OwnedBy", "Application.Read.All"], "effectiveAfterSeconds": 3}
    ).status_code == 204
    assert httpx.post(f"{control}/control/platform/graph-roles",
                      json={"roles": [], "effectiveAfterSeconds": -1}).status_code == 400

    def roles_now() -> list[str]:
        token = ManagedIdentityCredential().get_token(f"{graph}/.default").token  # a new credential: no cache
        return sorted(jwt.decode(token, options={"verify_signature": False}).get("roles", []))

    def list_apps() -> int:
        token = ManagedIdentityCredential().get_token(f"{graph}/.default").token
        return httpx.get(f"{graph}/v1.0/servicePrincipals", headers={"Authorization": f"Bearer {token}"}).status_code

    assert roles_now() == ["Application.ReadWrite.OwnedBy"]
    assert list_apps() == 200  # OwnedBy reads
    assert httpx.post(f"{control}/control/platform/graph-roles",
                      json={"roles": ["Application.Read.All"], "effectiveAfterSeconds": 3}).status_code == 204
    assert roles_now() == [] and list_apps() == 403  # dropped at once, the new grant not in effect yet
    time.sleep(3.1)
    assert roles_now() == ["Application.Read.All"] and list_apps() == 200


# -- consent and directory roles ---------------------------------------------------------------------------

def test_grant_exchange_manage_as_app(stack: Stack) -> None:
    exo_id = stack.world.resource_sp(EXCHANGE_APP_ID)["id"]
    consent_only = other_caller(stack, ["AppRoleAssignment.ReadWrite.All"], name="consent-only")

    async def scenario(client: GraphServiceClient) -> str:
        _, sp = await new_app_with_sp(client, "exo-consent")
        assert sp.id
        assigned_to = client.service_principals.by_service_principal_id(exo_id).app_role_assigned_to
        grant = AppRoleAssignment(principal_id=UUID(sp.id), resource_id=UUID(exo_id),
                                  app_role_id=UUID(EXCHANGE_MANAGE_AS_APP))
        created = await assigned_to.post(grant)
        assert created is not None and created.id and created.principal_display_name == "exo-consent"
        assert created.resource_display_name == "Office 365 Exchange Online"

        duplicate = await refused(assigned_to.post(grant))
        assert duplicate.response_status_code == 400 and duplicate.error.code == "Request_BadRequest"
        assert duplicate.error.message == "Permission being assigned already exists on the object."
        unknown_role = await refused(assigned_to.post(AppRoleAssignment(
            principal_id=UUID(sp.id), resource_id=UUID(exo_id), app_role_id=uuid.uuid4())))
        assert unknown_role.response_status_code == 400 and "was not found" in unknown_role.error.message
        ghost = await refused(assigned_to.post(AppRoleAssignment(
            principal_id=uuid.uuid4(), resource_id=UUID(exo_id), app_role_id=UUID(EXCHANGE_MANAGE_AS_APP))))
        assert ghost.response_status_code == 400

        ours = await client.service_principals.by_service_principal_id(sp.id).app_role_assignments.get()
        assert ours is not None and [a.app_role_id for a in ours.value] == [UUID(EXCHANGE_MANAGE_AS_APP)]
        return sp.id

    sp_id = run(scenario, stack)
    assert stack.world.directory.granted_app_roles(sp_id, exo_id) == ["Exchange.ManageAsApp"]

    async def without_read(client: GraphServiceClient) -> None:
        denied = await refused(client.service_principals.by_service_principal_id(exo_id).app_role_assigned_to.post(
            AppRoleAssignment(principal_id=UUID(sp_id), resource_id=UUID(exo_id),
                              app_role_id=UUID(EXCHANGE_MANAGE_AS_APP))))
        assert denied.response_status_code == 403 and denied.error.code == "Authorization_RequestDenied"

    stack.world.directory.app_role_assignments.clear()
    run(without_read, stack, consent_only)
    assert stack.world.directory.granted_app_roles(sp_id, exo_id) == []


def test_assign_exchange_recipient_administrator(stack: Stack) -> None:
    no_roles = other_caller(stack, ["Application.Read.All"], name="reader")

    async def scenario(client: GraphServiceClient) -> str:
        _, sp = await new_app_with_sp(client, "exo-role")
        assert sp.id
        assignments = client.role_management.directory.role_assignments
        request = UnifiedRoleAssignment(role_definition_id=RECIPIENT_ADMIN, principal_id=sp.id, directory_scope_id="/")
        created = await assignments.post(request)
        assert created is not None and created.id and created.id not in (sp.id, RECIPIENT_ADMIN)
        assert created.role_definition_id == RECIPIENT_ADMIN and created.directory_scope_id == "/"

        duplicate = await refused(assignments.post(request))
        assert duplicate.response_status_code == 400 and duplicate.error.code == "Request_BadRequest"
        nobody = await refused(assignments.post(UnifiedRoleAssignment(
            role_definition_id=RECIPIENT_ADMIN, principal_id=str(uuid.uuid4()), directory_scope_id="/")))
        assert nobody.response_status_code == 404

        query = assignments.RoleAssignmentsRequestBuilderGetQueryParameters
        both = await assignments.get(RequestConfiguration(query_parameters=query(
            filter=f"principalId eq '{sp.id}' and roleDefinitionId eq '{RECIPIENT_ADMIN}'")))
        assert both is not None and [a.id for a in both.value] == [created.id]
        other_role = await assignments.get(RequestConfiguration(query_parameters=query(
            filter=f"principalId eq '{sp.id}' and roleDefinitionId eq '{EXCHANGE_ADMIN}'")))
        assert other_role is not None and other_role.value == []

        definition = await client.role_management.directory.role_definitions.by_unified_role_definition_id(
            RECIPIENT_ADMIN).get()
        assert definition is not None and definition.display_name == "Exchange Recipient Administrator"
        return sp.id

    sp_id = run(scenario, stack)
    assert stack.world.directory.directory_roles_of(sp_id) == [RECIPIENT_ADMIN]

    async def denied(client: GraphServiceClient) -> None:
        error = await refused(client.role_management.directory.role_assignments.post(UnifiedRoleAssignment(
            role_definition_id=EXCHANGE_ADMIN, principal_id=sp_id, directory_scope_id="/")))
        assert error.response_status_code == 403

    run(denied, stack, no_roles)
    assert stack.world.directory.directory_roles_of(sp_id) == [RECIPIENT_ADMIN]


def test_deleting_the_application_removes_its_principal_and_grants(stack: Stack) -> None:
    exo_id = stack.world.resource_sp(EXCHANGE_APP_ID)["id"]

    async def scenario(client: GraphServiceClient) -> None:
        app, sp = await new_app_with_sp(client, "short-lived")
        assert app.id and sp.id
        await client.service_principals.by_service_principal_id(exo_id).app_role_assigned_to.post(AppRoleAssignment(
            principal_id=UUID(sp.id), resource_id=UUID(exo_id), app_role_id=UUID(EXCHANGE_MANAGE_AS_APP)))
        await client.role_management.directory.role_assignments.post(UnifiedRoleAssignment(
            role_definition_id=RECIPIENT_ADMIN, principal_id=sp.id, directory_scope_id="/"))
        await client.applications.by_application_id(app.id).delete()
        gone = await refused(client.service_principals.by_service_principal_id(sp.id).get())
        assert gone.response_status_code == 404
        d = stack.world.directory
        assert d.granted_app_roles(sp.id, exo_id) == [] and d.directory_roles_of(sp.id) == []

    run(scenario, stack)


# -- OData ---------------------------------------------------------------------------------------------

def test_filter_by_tag_and_page_through_results(stack: Stack) -> None:
    async def scenario(client: GraphServiceClient) -> None:
        tagged = set()
        for index in range(7):
            app = await client.applications.post(Application(display_name=f"tagged-{index}",
                                                             tags=["exo-automation", f"n{index}"]))
            assert app is not None
            tagged.add(app.id)
        for index in range(3):
            await client.applications.post(Application(display_name=f"plain-{index}", tags=["other"]))

        config = list_config(client, filter="tags/any(t:t eq 'exo-automation')", top=3, count=True,
                             select=["id", "displayName", "tags"])
        config.headers.add("ConsistencyLevel", "eventual")
        page = await client.applications.get(config)
        assert page is not None and page.odata_count == 7
        seen, pages = [], 0
        while page is not None:
            pages += 1
            assert len(page.value) <= 3
            seen.extend(a.id for a in page.value)
            if not page.odata_next_link:
                break
            assert "skiptoken" in page.odata_next_link
            page = await client.applications.with_url(page.odata_next_link).get()
        assert pages == 3 and sorted(seen) == sorted(tagged) and len(seen) == 7

        no_header = await client.applications.get(list_config(client, filter="startswith(displayName,'plain-')",
                                                              count=True))
        assert no_header is not None and no_header.odata_count is None and len(no_header.value) == 3

        too_big = await refused(client.applications.get(list_config(client, top=1000)))
        assert too_big.response_status_code == 400 and too_big.error.code == "Request_UnsupportedQuery"
        unsupported = await refused(client.applications.get(list_config(client, filter="notes eq 'x'")))
        assert unsupported.response_status_code == 400 and unsupported.error.code == "Request_UnsupportedQuery"
        broken = await refused(client.applications.get(list_config(client, filter="displayName eq")))
        assert broken.response_status_code == 400

    run(scenario, stack)


def test_error_shape_authentication_and_request_ids(stack: Stack) -> None:
    caller = platform_credential(stack)
    with raw_client(stack) as http:
        anonymous = http.get("/applications")
        assert anonymous.status_code == 401
        assert anonymous.json()["error"]["code"] == "InvalidAuthenticationToken"
        wrong_audience, _ = stack.world.issuer.issue(audience="https://vault.azure.net", object_id=caller.object_id,
                                                    app_id=caller.app_id, roles=caller.roles, wids=[])
        assert http.get("/applications", headers={"Authorization": f"Bearer {wrong_audience}"}).status_code == 401

        missing = http.get(f"/applications/{uuid.uuid4()}",
                           headers={**caller.bearer(), "client-request-id": "trace-me"})
        assert missing.status_code == 404
        error = missing.json()["error"]
        assert error["code"] == "Request_ResourceNotFound"
        assert error["innerError"]["client-request-id"] == "trace-me"
        assert error["innerError"]["request-id"] == missing.headers["request-id"]
        assert set(error["innerError"]) == {"date", "request-id", "client-request-id"}

        nowhere = http.get("/applicationz", headers=caller.bearer())
        assert nowhere.status_code == 400
        listed = http.get("/applications", headers=caller.bearer())
        assert listed.json()["@odata.context"].endswith("/v1.0/$metadata#applications")


# -- $batch -----------------------------------------------------------------------------------------------

def test_batch_dispatches_each_request_and_honours_depends_on(stack: Stack) -> None:
    caller = platform_credential(stack)
    with raw_client(stack) as http:
        headers = caller.bearer()
        app = http.post("/applications", headers=headers, json={"displayName": "batched"}).json()
        missing = str(uuid.uuid4())
        stack.world.faults.add(Fault(service="graph", method="GET", path=r"/servicePrincipals$", status=429,
                                     retry_after=3))
        answer = http.post("/$batch", headers=headers, json={"requests": [
            {"id": "1", "method": "GET", "url": f"/applications/{app['id']}?$select=displayName"},
            {"id": "2", "method": "PATCH", "url": f"/applications/{app['id']}",
             "headers": {"Content-Type": "application/json"}, "body": {"notes": "from batch"}},
            {"id": "3", "method": "GET", "url": f"/applications/{missing}"},
            {"id": "4", "method": "GET", "url": f"/applications/{app['id']}", "dependsOn": ["3"]},
            {"id": "5", "method": "GET", "url": "/servicePrincipals"},
        ]})
        assert answer.status_code == 200
        by_id = {r["id"]: r for r in answer.json()["responses"]}
        assert by_id["1"]["status"] == 200 and by_id["1"]["body"]["displayName"] == "batched"
        assert by_id["2"]["status"] == 204 and "body" not in by_id["2"]
        assert by_id["3"]["status"] == 404 and by_id["3"]["body"]["error"]["code"] == "Request_ResourceNotFound"
        assert by_id["4"]["status"] == 424
        assert by_id["5"]["status"] == 429 and by_id["5"]["headers"]["Retry-After"] == "3"
        assert stack.world.directory.applications[app["id"]]["notes"] == "from batch"

        too_many = [{"id": str(i), "method": "GET", "url": "/applications"} for i in range(21)]
        assert http.post("/$batch", headers=headers, json={"requests": too_many}).status_code == 400
        twins = [{"id": "a", "method": "GET", "url": "/applications"}] * 2
        assert http.post("/$batch", headers=headers, json={"requests": twins}).status_code == 400



def test_service_principal_key_credentials_and_sign_usage(stack: Stack) -> None:
    cert = make_cert(stack)

    async def scenario(client: GraphServiceClient) -> None:
        _, sp = await new_app_with_sp(client, "sp-keys")
        assert sp.id
        item = client.service_principals.by_service_principal_id(sp.id)
        await item.patch(ServicePrincipal(key_credentials=[key_credential(cert, usage="Sign")]))
        fetched = await item.get()
        assert fetched is not None and [k.usage for k in fetched.key_credentials] == ["Sign"]
        assert fetched.key_credentials[0].key is None

    run(scenario, stack)
    app_der = make_cert(stack).certificate.public_bytes(Encoding.DER)
    with raw_client(stack) as http:
        app = http.post("/applications", headers=platform_credential(stack).bearer(), json={
            "displayName": "sign-on-app", "keyCredentials": [
                {"type": "AsymmetricX509Cert", "usage": "Sign", "key": base64.b64encode(app_der).decode()}]})
        assert app.status_code == 400  # applications take Verify keys only


def test_wire_details_of_alternate_keys_and_empty_collections(stack: Stack) -> None:
    headers = platform_credential(stack).bearer()
    with raw_client(stack) as http:
        # OData doubles a quote inside a string literal; the key itself keeps one.
        path = "/applications(uniqueName='it''s-%2Fslashed')"
        created = http.patch(path, headers={**headers, "Prefer": "create-if-missing"}, json={"displayName": "quoted"})
        assert created.status_code == 201, created.text
        assert created.json()["uniqueName"] == "it's-/slashed"
        # An upsert-created app has no owner here (docs/reference.md): an admin makes the platform one.
        stack.world.directory.owners[created.json()["id"]] = [stack.world.platform.object_id]
        fetched = http.get(path, headers=headers, params={"$select": "id,uniqueName"})
        assert fetched.status_code == 200 and fetched.json() == {
            "@odata.context": f"{stack.url('graph')}/v1.0/$metadata#applications(id,uniqueName)/$entity",
            "id": created.json()["id"], "uniqueName": "it's-/slashed"}
        assert http.patch(path, headers={**headers, "Prefer": "create-if-missing"},
                          json={"displayName": "quoted"}).status_code == 204

        sp = http.post("/servicePrincipals", headers=headers, json={"appId": created.json()["appId"]}).json()
        empty = http.get(f"/servicePrincipals/{sp['id']}/appRoleAssignments", headers=headers,
                         params={"$select": "id,appRoleId,resourceId"})
        assert empty.status_code == 200 and empty.json()["value"] == []
        roles = http.get("/roleManagement/directory/roleAssignments", headers=headers,
                         params={"$filter": f"principalId eq '{sp['id']}'", "$select": "id,roleDefinitionId"})
        assert roles.status_code == 200 and roles.json()["value"] == []

    routes = {(c["method"], c["route"]): c["count"] for c in stack.world.counter.snapshot()
              if c["service"] == "graph"}
    assert routes[("PATCH", "/v1.0/applications({alt}='{key}')")] == 2
    assert routes[("GET", "/v1.0/servicePrincipals/{id}/appRoleAssignments")] == 1


# -- docs/reference.md "Throttling": reading keyCredentials with $select, 150 a minute per tenant ---------

def test_key_credential_reads_are_throttled_per_tenant_across_apps_routes_and_batch(stack: Stack) -> None:
    import ssl

    import httpx

    control = f"{stack.url('control')}/control/throttling/key-credential-reads"
    platform = platform_credential(stack).bearer()
    neighbour = other_caller(stack, ["Application.Read.All"], name="another-app-of-the-tenant").bearer()
    with httpx.Client(verify=ssl.create_default_context(cafile=str(stack.ca_file))) as admin:
        assert admin.get(control).json() == {"limit": 150, "windowSeconds": 60.0, "inWindow": 0, "admitted": 0,
                                             "refused": 0, "peakInWindow": 0}
        assert admin.post(control, json={"limit": 0}).status_code == 400
        assert admin.post(control, json={"limit": 3, "window": 2}).status_code == 400
        assert admin.post(control, json={"limit": 3, "windowSeconds": 2}).json()["limit"] == 3
    with raw_client(stack) as http:
        app = http.post("/applications", headers=platform, json={"displayName": "throttled"}).json()
        item = f"/applications/{app['id']}"
        # Reads that do not select keyCredentials are not counted, however many.
        for _ in range(5):
            assert http.get(item, headers=platform, params={"$select": "id,displayName"}).status_code == 200
            assert http.get(item, headers=platform).status_code == 200
        # The limit is the tenant's: one read by the platform, one by another app, one of owned objects.
        assert http.get(item, headers=platform, params={"$select": "keyCredentials"}).status_code == 200
        assert http.get("/applications", headers=neighbour, params={"$select": "id,KeyCredentials"}).status_code == 200
        owned = f"/servicePrincipals/{stack.world.platform.object_id}/ownedObjects/microsoft.graph.application"
        assert http.get(owned, headers=platform, params={"$select": "id,keyCredentials"}).status_code == 200

        throttled = http.get(item, headers=platform, params={"$select": "keyCredentials"})
        assert throttled.status_code == 429, throttled.text
        error = throttled.json()["error"]
        assert error["code"] == "TooManyRequests" and error["innerError"]["request-id"]
        assert 1 <= int(throttled.headers["Retry-After"]) <= 2
        # Inside $batch each request is throttled on its own (docs/reference.md "Batching").
        batch = http.post("/$batch", headers=platform, json={"requests": [
            {"id": "1", "method": "GET", "url": f"{item}?$select=keyCredentials"},
            {"id": "2", "method": "GET", "url": f"{item}?$select=displayName"}]}).json()["responses"]
        by_id = {r["id"]: r for r in batch}
        assert by_id["1"]["status"] == 429 and by_id["1"]["body"]["error"]["code"] == "TooManyRequests"
        assert by_id["2"]["status"] == 200
        retry_after = int(by_id["1"]["headers"]["Retry-After"])

        # Refused reads accrue too (doc: Throttling guidance); waiting out Retry-After gets through.
        time.sleep(retry_after)
        assert http.get(item, headers=platform, params={"$select": "keyCredentials"}).status_code == 200
    counts = stack.world.key_credential_reads.to_json()
    assert (counts["admitted"], counts["refused"], counts["peakInWindow"]) == (4, 2, 5)
    assert stack.world.key_credential_reads.refused[stack.world.platform.object_id] == 2
    stack.world.reset()
    assert stack.world.key_credential_reads.to_json()["limit"] == 150


def test_the_throttle_window_slides_and_retry_after_names_when_a_read_gets_through() -> None:
    from devstack.throttle import KeyCredentialReadThrottle

    now = [100.0]
    throttle = KeyCredentialReadThrottle(clock=lambda: now[0])
    throttle.configure(3, 10.0)
    for moment in (100.0, 104.0, 108.0):
        now[0] = moment
        assert throttle.take("a") is None
    now[0] = 109.0
    # Refused, and counted: three reads need two of 100, 104, 108, 109 gone, which is at 114.
    assert throttle.take("b") == 5
    now[0] = 113.0
    assert throttle.take("b") == 5  # too early: 104, 108, 109 and this one are in it; 108 must go too
    now[0] = 119.5
    assert throttle.take("b") is None  # left in the window: 113
    assert throttle.to_json() == {"limit": 3, "windowSeconds": 10.0, "inWindow": 2, "admitted": 4, "refused": 2,
                                  "peakInWindow": 4}
    with pytest.raises(ValueError):
        throttle.configure(1, 0)
