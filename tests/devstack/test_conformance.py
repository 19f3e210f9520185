"""Conformance of the stand-ins, driven only through the real SDK clients over HTTPS.

One chain does what the product does for a new automation identity, as the platform's managed
identity (azure-identity `ManagedIdentityCredential` against IDENTITY_ENDPOINT):

1. `CertificateClient.begin_create_certificate` issues a real certificate whose SHA-1 is `x5t`;
2. `SecretClient` hands over its PFX (the backing secret of that version);
3. `GraphServiceClient` creates the app and its service principal, adds the certificate as a key
   credential, grants Exchange.ManageAsApp on the Exchange service principal and assigns Exchange
   Recipient Administrator;

then the job side: `CertificateCredential` with that PFX gets a token for Exchange
(`<EXO_ENDPOINT>/.default`, standing in for `https://outlook.office365.com/.default`) that carries
the grant and the role, and `InvokeCommand Get-Mailbox` answers 200.

`REFUSALS` below is the table of what the services refuse along that chain, each row with the
docs/reference.md fact it implements and the exact error the real SDK surfaces.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import os
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from uuid import UUID

import httpx
import jwt
import pytest
from azure.core.exceptions import ClientAuthenticationError, HttpResponseError
from azure.identity import CertificateCredential, ManagedIdentityCredential
from azure.identity.aio import CertificateCredential as AsyncCertificateCredential
from azure.identity.aio import ManagedIdentityCredential as AsyncManagedIdentityCredential
from azure.keyvault.certificates import CertificateClient, CertificateContentType, CertificatePolicy
from azure.keyvault.secrets import SecretClient
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from kiota_abstractions.base_request_configuration import RequestConfiguration
from kiota_http.middleware.options import RetryHandlerOption
from msgraph import GraphServiceClient
from msgraph.generated.models.app_role_assignment import AppRoleAssignment
from msgraph.generated.models.application import Application
from msgraph.generated.models.key_credential import KeyCredential
from msgraph.generated.models.o_data_errors.o_data_error import ODataError
from msgraph.generated.models.required_resource_access import RequiredResourceAccess
from msgraph.generated.models.resource_access import ResourceAccess
from msgraph.generated.models.service_principal import ServicePrincipal
from msgraph.generated.models.unified_role_assignment import UnifiedRoleAssignment

from devstack import Stack
from devstack.world import EXCHANGE_APP_ID, EXCHANGE_MANAGE_AS_APP, GRAPH_APP_ID, GRAPH_APP_ROLES

from .graph_helpers import graph_client_at

# msgraph-sdk and kiota emit DeprecationWarnings from their own class bodies when a request
# builder is first imported (see test_graph.py); pytest runs with filterwarnings=error.
pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning:msgraph"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning:kiota_abstractions"),
]

RECIPIENT_ADMIN = "31392ffb-586c-42d1-9346-e59415a2cc4e"  # docs/reference.md: Well-known ids
GLOBAL_READER = "f2ef992c-3afb-46b9-b7cf-a126ee74c451"
SYSTEM_MAILBOX = "SystemMailbox{bb558c35-97f1-4cb9-8ff7-d53741dc928c}"
T = TypeVar("T")


# -- the chain, one step per helper -------------------------------------------------------------------

@dataclass
class VaultCertificate:
    """A Key Vault certificate version as the job receives it: public part and PFX."""

    name: str
    version: str
    cer: bytes
    x5t: bytes  # what the SDK decoded from the bundle's base64url `x5t`
    pfx: bytes

    @property
    def certificate(self) -> x509.Certificate:
        return x509.load_der_x509_certificate(self.cer)


@dataclass
class Registration:
    app_object_id: str
    app_id: str
    sp_id: str


class Chain:
    """The steps of the chain against the stand-ins named by the environment (tests/conftest.py)."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.tenant_id = os.environ["AZURE_TENANT_ID"]
        self.vault_url = os.environ["KEY_VAULT_URL"]
        self.graph_endpoint = os.environ["GRAPH_ENDPOINT"]
        self.exo_endpoint = os.environ["EXO_ENDPOINT"]
        self.authority = os.environ["AZURE_AUTHORITY_HOST"]

    # Key Vault, as the platform identity ------------------------------------------------------------
    def certificates(self) -> CertificateClient:
        return CertificateClient(self.vault_url, ManagedIdentityCredential())

    def create_certificate(self, name: str) -> VaultCertificate:
        policy = CertificatePolicy(issuer_name="Self", subject=f"CN={name}", validity_in_months=12,
                                   exportable=True, key_type="RSA", key_size=2048, reuse_key=False,
                                   content_type=CertificateContentType.pkcs12)
        with self.certificates() as certificates:
            created = certificates.begin_create_certificate(name, policy, _polling_interval=0).result()
        assert created.cer is not None and created.properties.x509_thumbprint is not None
        assert created.properties.version is not None
        with SecretClient(self.vault_url, ManagedIdentityCredential()) as secrets:
            secret = secrets.get_secret(name, created.properties.version)
        assert secret.properties.content_type == "application/x-pkcs12"
        assert secret.value is not None
        return VaultCertificate(name, created.properties.version, bytes(created.cer),
                                bytes(created.properties.x509_thumbprint), base64.b64decode(secret.value))

    # Graph, as the platform identity -------------------------------------------------------------------
    def graph(self, scenario: Callable[[GraphServiceClient], Awaitable[T]]) -> T:
        async def main() -> T:
            async with AsyncManagedIdentityCredential() as credential, \
                    graph_client_at(self.graph_endpoint, credential) as client:
                return await scenario(client)
        return asyncio.run(main())

    def register(self, vault_cert: VaultCertificate, *, consent: bool = True, role: bool = True,
                 name: str = "exo-job") -> Registration:
        """Steps 2-5 of docs/architecture.md's manual set-up: app, SP, key credential, consent, role."""
        certificate = vault_cert.certificate

        async def scenario(client: GraphServiceClient) -> Registration:
            exchange_permission = RequiredResourceAccess(resource_app_id=EXCHANGE_APP_ID, resource_access=[
                ResourceAccess(id=UUID(EXCHANGE_MANAGE_AS_APP), type="Role")])
            app = await client.applications.post(Application(
                display_name=name, sign_in_audience="AzureADMyOrg", tags=["exo-automation"],
                required_resource_access=[exchange_permission]))
            assert app is not None and app.id and app.app_id
            sp = await client.service_principals.post(ServicePrincipal(app_id=app.app_id))
            assert sp is not None and sp.id
            await client.applications.by_application_id(app.id).patch(Application(key_credentials=[
                KeyCredential(type="AsymmetricX509Cert", usage="Verify", key=vault_cert.cer,
                              display_name=f"CN={name}",
                              start_date_time=certificate.not_valid_before_utc,
                              end_date_time=certificate.not_valid_after_utc)]))
            if consent:
                exchange = await client.service_principals_with_app_id(EXCHANGE_APP_ID).get()
                assert exchange is not None and exchange.id
                await client.service_principals.by_service_principal_id(exchange.id).app_role_assigned_to.post(
                    AppRoleAssignment(principal_id=UUID(sp.id), resource_id=UUID(exchange.id),
                                      app_role_id=UUID(EXCHANGE_MANAGE_AS_APP)))
            if role:
                await client.role_management.directory.role_assignments.post(UnifiedRoleAssignment(
                    role_definition_id=RECIPIENT_ADMIN, principal_id=sp.id, directory_scope_id="/"))
            return Registration(app.id, app.app_id, sp.id)

        return self.graph(scenario)

    # the job --------------------------------------------------------------------------------------------
    def job_credential(self, app_id: str, pfx: bytes) -> CertificateCredential:
        return CertificateCredential(self.tenant_id, app_id, certificate_data=pfx, authority=self.authority,
                                     disable_instance_discovery=True)

    def exchange_token(self, app_id: str, pfx: bytes) -> str:
        return self.job_credential(app_id, pfx).get_token(f"{self.exo_endpoint}/.default").token

    def get_mailbox(self, token: str) -> httpx.Response:
        return self.invoke(token, "Get-Mailbox")

    def invoke(self, token: str, cmdlet: str, **parameters: Any) -> httpx.Response:
        organization = os.environ["EXO_ORGANIZATION"]
        headers = {
            "Authorization": f"Bearer {token}", "Content-Type": "application/json", "X-ResponseFormat": "json",
            "X-AnchorMailbox": f"UPN:{SYSTEM_MAILBOX}@{organization}", "Prefer": "odata.maxpagesize=1000",
        }
        body = {"CmdletInput": {"CmdletName": cmdlet, "Parameters": parameters}}
        url = f"{self.exo_endpoint}/adminapi/beta/{self.tenant_id}/InvokeCommand"
        return httpx.post(url, json=body, headers=headers, timeout=30)  # trust: SSL_CERT_FILE




def claims_of(token: str) -> dict[str, Any]:
    return jwt.decode(token, options={"verify_signature": False})


# -- the chain ------------------------------------------------------------------------------------------

def test_platform_sets_up_an_identity_and_the_job_runs_get_mailbox(stack: Stack) -> None:
    chain = Chain(stack)

    # 1. Key Vault issues a real certificate; x5t is the SHA-1 of its DER.
    vault_cert = chain.create_certificate("exo-job-reports")
    certificate = vault_cert.certificate
    assert vault_cert.x5t == hashlib.sha1(vault_cert.cer).digest()
    assert vault_cert.x5t == certificate.fingerprint(hashes.SHA1())
    assert certificate.subject.rfc4514_string() == "CN=exo-job-reports"
    lifetime = certificate.not_valid_after_utc - certificate.not_valid_before_utc
    assert dt.timedelta(days=365) <= lifetime <= dt.timedelta(days=367)

    # 2. The backing secret is an unencrypted PFX with the certificate and its private key.
    key, pfx_certificate, extra = pkcs12.load_key_and_certificates(vault_cert.pfx, None)
    assert isinstance(key, rsa.RSAPrivateKey) and pfx_certificate is not None and not extra
    assert pfx_certificate.public_bytes(serialization.Encoding.DER) == vault_cert.cer
    assert key.public_key().public_numbers() == certificate.public_key().public_numbers()  # type: ignore[union-attr]

    # 3. Graph: app, SP, key credential, consent, role; each visible as the SDK reads it back.
    registration = chain.register(vault_cert)

    async def read_back(client: GraphServiceClient) -> None:
        item = client.applications.by_application_id(registration.app_object_id)
        select = item.ApplicationItemRequestBuilderGetQueryParameters(select=["keyCredentials"])
        app = await item.get(RequestConfiguration(query_parameters=select))
        assert app is not None and len(app.key_credentials) == 1
        stored = app.key_credentials[0]
        assert stored.key == vault_cert.cer
        assert stored.custom_key_identifier == vault_cert.x5t
        assert stored.start_date_time == certificate.not_valid_before_utc
        assert stored.end_date_time == certificate.not_valid_after_utc
        owners = await item.owners.get()
        assert owners is not None and [o.id for o in owners.value] == [stack.world.platform.object_id]
        grants = await client.service_principals.by_service_principal_id(registration.sp_id) \
            .app_role_assignments.get()
        assert grants is not None and [g.app_role_id for g in grants.value] == [UUID(EXCHANGE_MANAGE_AS_APP)]
        roles = client.role_management.directory.role_assignments
        query = roles.RoleAssignmentsRequestBuilderGetQueryParameters(
            filter=f"principalId eq '{registration.sp_id}'")
        assigned = await roles.get(RequestConfiguration(query_parameters=query))
        assert assigned is not None and [a.role_definition_id for a in assigned.value] == [RECIPIENT_ADMIN]

    chain.graph(read_back)

    # 4. The job: CertificateCredential with the PFX; the token carries the grant and the role.
    token = chain.exchange_token(registration.app_id, vault_cert.pfx)
    claims = claims_of(token)
    assert claims["aud"] == chain.exo_endpoint
    assert claims["appid"] == registration.app_id and claims["oid"] == registration.sp_id
    assert claims["tid"] == chain.tenant_id
    assert claims["roles"] == ["Exchange.ManageAsApp"]
    assert claims["wids"] == [RECIPIENT_ADMIN]

    # 5. Exchange answers Get-Mailbox.
    response = chain.get_mailbox(token)
    assert response.status_code == 200, response.text
    assert [row["UserPrincipalName"] for row in response.json()["value"]] == \
        [m.user_principal_name for m in stack.world.mailboxes]

    # Everything went over the wire: the platform through the managed-identity endpoint, the job
    # through one client-credentials token request.
    calls = {(r["service"], r["method"], r["route"]): r["count"] for r in stack.world.counter.snapshot()}
    assert calls[("entra", "GET", "/msi/token")] >= 2  # Key Vault and Graph audiences
    assert calls[("entra", "POST", "/{tenant}/oauth2/v2.0/token")] == 1
    # Key Vault's first request goes without token and body, is answered with the challenge, and is resent.
    assert calls[("keyvault", "POST", "/certificates/{name}/create")] == 2
    assert calls[("graph", "POST", "/v1.0/roleManagement/directory/roleAssignments")] == 1
    assert calls[("exchange", "POST", "/adminapi/beta/{tenant}/InvokeCommand")] == 1


# -- refusals ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Refusal:
    """What the SDK surfaced: service, HTTP status, error code, and a finer detail where there is one.

    Entra: `code` is the AADSTS number and `detail` the `Reason - …` text; msal keeps the HTTP
    response to itself, so `status` is None. Graph: `detail` is the first `details[].code`.
    Key Vault: `detail` is `innererror.code`. Exchange: `code` is `error.code`, or "NUL body" for a
    403 whose body is NUL bytes; `detail` is the exception type that comes with the reason (`|Type|`
    of `details[0].message`, or `innererror.type` beside an internal exception).
    """

    service: str
    status: int | None
    code: str
    detail: str | None = None


def refusal_of(action: Callable[[], object]) -> Refusal | None:
    """Run `action`; the refusal it met, or None if nothing was refused."""
    try:
        outcome = action()
    except ODataError as error:
        assert error.error is not None
        details = error.error.details or []
        return Refusal("graph", error.response_status_code, str(error.error.code),
                       details[0].code if details else None)
    except ClientAuthenticationError as error:
        text = str(error)
        code = re.search(r"AADSTS\d+", text)
        reason = re.search(r"\[Reason - (.*?),", text)
        return Refusal("entra", None, code.group(0) if code else text, reason.group(1) if reason else None)
    except HttpResponseError as error:
        assert error.response is not None
        body = error.response.json()["error"]
        return Refusal("keyvault", error.status_code, body["code"], (body.get("innererror") or {}).get("code"))
    if isinstance(outcome, httpx.Response) and outcome.status_code >= 400:
        if outcome.content and set(outcome.content) == {0}:
            return Refusal("exchange", outcome.status_code, "NUL body")
        error = outcome.json()["error"]
        if outcome.status_code == 401:
            return Refusal("exchange", outcome.status_code, error["code"])
        assert error["message"] == "Invalid Operation"
        inner = error.get("innererror") or {}
        if inner.get("internalexception"):
            return Refusal("exchange", outcome.status_code, error["code"], inner["type"].rsplit(".", 1)[-1])
        kind = error["details"][0]["message"].split("|")[1] if error.get("details") else None
        return Refusal("exchange", outcome.status_code, error["code"], kind and kind.rsplit(".", 1)[-1])
    return None


def registered_job(chain: Chain, **options: Any) -> tuple[VaultCertificate, Registration]:
    vault_cert = chain.create_certificate("exo-job")
    return vault_cert, chain.register(vault_cert, **options)


def unknown_certificate(chain: Chain) -> Callable[[], object]:
    _, registration = registered_job(chain)
    stranger = chain.create_certificate("exo-job-stranger")  # in the vault, never added to the app
    return lambda: chain.exchange_token(registration.app_id, stranger.pfx)


def expired_certificate(chain: Chain) -> Callable[[], object]:
    vault_cert, registration = registered_job(chain)
    assert chain.exchange_token(registration.app_id, vault_cert.pfx)  # valid until the clock moves
    lapsed = vault_cert.certificate.not_valid_after_utc - chain.stack.world.clock.now()
    chain.stack.world.clock.advance(lapsed.total_seconds() + 86400)
    return lambda: chain.exchange_token(registration.app_id, vault_cert.pfx)


def consent_missing(chain: Chain) -> Callable[[], object]:
    vault_cert, registration = registered_job(chain, consent=False)
    token = chain.exchange_token(registration.app_id, vault_cert.pfx)
    assert "roles" not in claims_of(token) and claims_of(token)["wids"] == [RECIPIENT_ADMIN]
    return lambda: chain.get_mailbox(token)


def role_missing(chain: Chain) -> Callable[[], object]:
    vault_cert, registration = registered_job(chain, role=False)
    token = chain.exchange_token(registration.app_id, vault_cert.pfx)
    assert claims_of(token)["roles"] == ["Exchange.ManageAsApp"] and "wids" not in claims_of(token)
    return lambda: chain.get_mailbox(token)


def cmdlet_the_role_does_not_allow(chain: Chain) -> Callable[[], object]:
    vault_cert, registration = registered_job(chain, role=False)
    chain.graph(lambda client: client.role_management.directory.role_assignments.post(UnifiedRoleAssignment(
        role_definition_id=GLOBAL_READER, principal_id=registration.sp_id, directory_scope_id="/")))
    token = chain.exchange_token(registration.app_id, vault_cert.pfx)
    assert chain.get_mailbox(token).status_code == 200  # the role reads ...
    return lambda: chain.invoke(token, "Set-Mailbox", Identity="adelev", DisplayName="x")  # ... and may not write


def unknown_cmdlet(chain: Chain) -> Callable[[], object]:
    vault_cert, registration = registered_job(chain)
    token = chain.exchange_token(registration.app_id, vault_cert.pfx)
    return lambda: chain.invoke(token, "Get-Mailboxes")


def cmdlet_fails_on_an_unknown_object(chain: Chain) -> Callable[[], object]:
    vault_cert, registration = registered_job(chain)
    token = chain.exchange_token(registration.app_id, vault_cert.pfx)
    return lambda: chain.invoke(token, "Get-Mailbox", Identity="nobody")


def cmdlet_fails_a_value_check(chain: Chain) -> Callable[[], object]:
    vault_cert, registration = registered_job(chain)
    token = chain.exchange_token(registration.app_id, vault_cert.pfx)
    return lambda: chain.invoke(token, "Set-Mailbox", Identity="adelev", ProhibitSendQuota="500 GB")


def owned_by_writes_a_foreign_app(chain: Chain) -> Callable[[], object]:
    """The job is granted Application.ReadWrite.OwnedBy and tries to widen its own registration,
    which the platform created and therefore owns."""
    vault_cert, registration = registered_job(chain)

    async def grant_owned_by(client: GraphServiceClient) -> None:
        graph = await client.service_principals_with_app_id(GRAPH_APP_ID).get()
        assert graph is not None and graph.id
        await client.service_principals.by_service_principal_id(graph.id).app_role_assigned_to.post(
            AppRoleAssignment(principal_id=UUID(registration.sp_id), resource_id=UUID(graph.id),
                              app_role_id=UUID(GRAPH_APP_ROLES["Application.ReadWrite.OwnedBy"])))

    chain.graph(grant_owned_by)

    async def as_the_job() -> None:
        async with AsyncCertificateCredential(chain.tenant_id, registration.app_id, certificate_data=vault_cert.pfx,
                                              authority=chain.authority, disable_instance_discovery=True
                                              ) as credential, \
                graph_client_at(chain.graph_endpoint, credential) as client:
            # The permission works on what the job owns ...
            mine = await client.applications.post(Application(display_name="job-owned"))
            assert mine is not None and mine.id
            await client.applications.by_application_id(mine.id).patch(Application(display_name="job-renamed"))
            # ... and not on the registration the platform owns.
            await client.applications.by_application_id(registration.app_object_id).patch(Application(
                required_resource_access=[RequiredResourceAccess(resource_app_id=GRAPH_APP_ID, resource_access=[
                    ResourceAccess(id=UUID(GRAPH_APP_ROLES["Application.ReadWrite.All"]), type="Role")])]))

    return lambda: asyncio.run(as_the_job())


def key_credential_outlives_its_certificate(chain: Chain) -> Callable[[], object]:
    vault_cert = chain.create_certificate("exo-job")
    certificate = vault_cert.certificate

    async def patch(client: GraphServiceClient) -> None:
        app = await client.applications.post(Application(display_name="exo-job", sign_in_audience="AzureADMyOrg"))
        assert app is not None and app.id
        await client.applications.by_application_id(app.id).patch(Application(key_credentials=[KeyCredential(
            type="AsymmetricX509Cert", usage="Verify", key=vault_cert.cer,
            start_date_time=certificate.not_valid_before_utc,
            end_date_time=certificate.not_valid_after_utc + dt.timedelta(days=1))]))

    return lambda: chain.graph(patch)


def create_on_a_soft_deleted_name(chain: Chain) -> Callable[[], object]:
    chain.create_certificate("exo-job")
    with chain.certificates() as certificates:
        certificates.begin_delete_certificate("exo-job", _polling_interval=0).wait()
    return lambda: chain.create_certificate("exo-job")


def consent_without_application_read(chain: Chain) -> Callable[[], object]:
    chain.stack.world.set_platform_graph_roles(["Application.ReadWrite.OwnedBy", "AppRoleAssignment.ReadWrite.All",
                                                "RoleManagement.ReadWrite.Directory"])
    vault_cert = chain.create_certificate("exo-job")
    return lambda: chain.register(vault_cert, role=False)


def role_without_role_management(chain: Chain) -> Callable[[], object]:
    chain.stack.world.set_platform_graph_roles(["Application.ReadWrite.OwnedBy", "Application.Read.All",
                                                "AppRoleAssignment.ReadWrite.All"])
    vault_cert = chain.create_certificate("exo-job")
    return lambda: chain.register(vault_cert)


def service_principal_before_the_app_replicated(chain: Chain) -> Callable[[], object]:
    chain.stack.world.replication_delay = 60.0
    vault_cert = chain.create_certificate("exo-job")
    return lambda: chain.register(vault_cert)


def service_principal_before_the_app_replicated_400(chain: Chain) -> Callable[[], object]:
    chain.stack.world.sp_replication_error = "400"
    return service_principal_before_the_app_replicated(chain)


def backing_secret_without_a_secrets_role(chain: Chain) -> Callable[[], object]:
    with chain.stack.world.lock:
        chain.stack.world.vault_roles[chain.stack.world.platform.object_id] = {"Key Vault Certificates Officer"}
    return lambda: chain.create_certificate("exo-job")


def app_without_service_principal(chain: Chain) -> Callable[[], object]:
    vault_cert = chain.create_certificate("exo-job")
    registration = chain.register(vault_cert)

    async def delete_sp(client: GraphServiceClient) -> None:
        await client.service_principals.by_service_principal_id(registration.sp_id).delete()

    chain.graph(delete_sp)
    return lambda: chain.exchange_token(registration.app_id, vault_cert.pfx)


def key_credential_reads_over_the_tenant_limit(chain: Chain) -> Callable[[], object]:
    """150 reads of an app's keyCredentials with $select through msgraph-sdk, then the 151st within the
    minute, with the SDK's own retry turned off so that the refusal shows (it would wait Retry-After)."""
    async def read_150(client: GraphServiceClient) -> str:
        app = await client.applications.post(Application(display_name="exo-job"))
        assert app is not None and app.id
        item = client.applications.by_application_id(app.id)
        select = item.ApplicationItemRequestBuilderGetQueryParameters(select=["keyCredentials"])
        for _ in range(150):
            assert await item.get(RequestConfiguration(query_parameters=select)) is not None
        return app.id

    app_id = chain.graph(read_150)

    async def the_151st(client: GraphServiceClient) -> object:
        item = client.applications.by_application_id(app_id)
        select = item.ApplicationItemRequestBuilderGetQueryParameters(select=["keyCredentials"])
        try:
            return await item.get(RequestConfiguration(query_parameters=select,
                                                       options=[RetryHandlerOption(should_retry=False)]))
        except ODataError as error:
            retry_after = int((error.response_headers or {})["retry-after"])
            assert 1 <= retry_after <= 60, retry_after
            raise

    return lambda: chain.graph(the_151st)


REFUSALS: list[tuple[str, Callable[[Chain], Callable[[], object]], Refusal]] = [
    # docs/reference.md "Entra ID tokens": checked against the app's key credentials ...
    ("unknown certificate", unknown_certificate,
     Refusal("entra", None, "AADSTS700027", "The key was not found.")),
    # ... within their validity window (judged by the simulated clock).
    ("expired certificate (clock moved)", expired_certificate,
     Refusal("entra", None, "AADSTS700027", "The key used is expired.")),
    # docs/reference.md "Exchange Online": 401 without consent, 403 with consent but no role (seen).
    ("consent missing", consent_missing, Refusal("exchange", 401, "Unauthorized")),
    # ... and that 403, like the one for a cmdlet the role does not allow or that does not exist, has a
    # body of NUL bytes (seen; the body for "no role at all" is the stand-in's pick).
    ("role missing", role_missing, Refusal("exchange", 403, "NUL body")),
    ("cmdlet the role does not allow", cmdlet_the_role_does_not_allow, Refusal("exchange", 403, "NUL body")),
    ("unknown cmdlet", unknown_cmdlet, Refusal("exchange", 403, "NUL body")),
    # docs/reference.md "Exchange Online" errors (seen): "Invalid Operation", the reason in
    # details[0].message after `|Type|` ...
    ("cmdlet error on an unknown object", cmdlet_fails_on_an_unknown_object,
     Refusal("exchange", 404, "NotFound", "ManagementObjectNotFoundException")),
    # ... or in innererror.internalexception.message.
    ("cmdlet error from a value check", cmdlet_fails_a_value_check,
     Refusal("exchange", 400, "BadRequest", "DataValidationException")),
    # docs/reference.md "Owners and least privilege": OwnedBy writes only applications it owns.
    ("OwnedBy caller writes an app it does not own", owned_by_writes_a_foreign_app,
     Refusal("graph", 403, "Authorization_RequestDenied")),
    # docs/reference.md "Key credentials": end after the certificate's NotAfter fails the PATCH (seen).
    ("key credential outlives its certificate", key_credential_outlives_its_certificate,
     Refusal("graph", 400, "KeyCredentialsInvalidEndDate", "InvalidKeyEndDate")),
    # docs/reference.md "Key Vault / Delete (soft)": creating a deleted-but-recoverable name (seen).
    ("create on a soft-deleted name", create_on_a_soft_deleted_name,
     Refusal("keyvault", 409, "Conflict", "ObjectIsDeletedButRecoverable")),
    # docs/reference.md "Admin consent": AppRoleAssignment.ReadWrite.All alone is 403 (seen).
    ("consent without Application.Read.All", consent_without_application_read,
     Refusal("graph", 403, "Authorization_RequestDenied")),
    # docs/reference.md "Directory roles": needs RoleManagement.ReadWrite.Directory.
    ("role assignment without RoleManagement.ReadWrite.Directory", role_without_role_management,
     Refusal("graph", 403, "Authorization_RequestDenied")),
    # docs/reference.md "Service principals": right after the app, 403 "must be in the local tenant" or
    # 400 NoBackingApplicationObject (seen); the stand-in answers the 403 first by default.
    ("service principal before the app replicated", service_principal_before_the_app_replicated,
     Refusal("graph", 403, "Authorization_RequestDenied")),
    ("service principal before the app replicated (400 variant)", service_principal_before_the_app_replicated_400,
     Refusal("graph", 400, "Request_BadRequest", "NoBackingApplicationObject")),
    # docs/reference.md "Data-plane roles": Certificates Officer does not read secret values.
    ("backing secret without a secrets role", backing_secret_without_a_secrets_role,
     Refusal("keyvault", 403, "Forbidden", "ForbiddenByRbac")),
    # docs/reference.md "Throttling": reading keyCredentials with $select is limited to 150 requests a
    # minute per tenant (doc: List applications); 429 with Retry-After in seconds (doc: Throttling guidance).
    ("151st keyCredentials read in a minute", key_credential_reads_over_the_tenant_limit,
     Refusal("graph", 429, "TooManyRequests")),
    # An app whose service principal is gone cannot sign in (AADSTS7000229).
    ("token for an app without service principal", app_without_service_principal,
     Refusal("entra", None, "AADSTS7000229")),
]


@pytest.mark.parametrize(("prepare", "expected"), [(row[1], row[2]) for row in REFUSALS],
                         ids=[row[0] for row in REFUSALS])
def test_refusal(stack: Stack, prepare: Callable[[Chain], Callable[[], object]], expected: Refusal) -> None:
    action = prepare(Chain(stack))
    assert refusal_of(action) == expected



# -- the control API itself ------------------------------------------------------------------------------

def test_a_wildcard_fault_hits_the_services_but_never_the_control_api(stack: Stack) -> None:
    control = os.environ["DEVSTACK_CONTROL_URL"]
    added = httpx.post(f"{control}/control/faults", json={"service": "*", "status": 503, "count": None})
    assert added.status_code == 201, added.text
    assert httpx.get(f"{os.environ['GRAPH_ENDPOINT']}/v1.0/applications").status_code == 503
    assert httpx.get(f"{control}/control/faults").json()["injected"] == 1
    assert httpx.delete(f"{control}/control/faults").status_code == 204
    assert httpx.get(f"{os.environ['GRAPH_ENDPOINT']}/v1.0/applications").status_code == 401  # no token


def test_a_reset_forgets_the_faults_and_the_count_of_those_injected(stack: Stack) -> None:
    # What a test counts must not depend on the tests that ran before it in the session.
    control = os.environ["DEVSTACK_CONTROL_URL"]
    added = httpx.post(f"{control}/control/faults", json={"service": "graph", "status": 503, "count": 3})
    assert added.status_code == 201, added.text
    assert [httpx.get(f"{os.environ['GRAPH_ENDPOINT']}/v1.0/applications").status_code for _ in range(2)] == [503] * 2
    assert httpx.get(f"{control}/control/faults").json()["injected"] == 2
    assert httpx.post(f"{control}/control/reset").status_code == 204
    assert httpx.get(f"{control}/control/faults").json() == {"value": [], "injected": 0}
    assert httpx.get(f"{os.environ['GRAPH_ENDPOINT']}/v1.0/applications").status_code == 401  # no token, no fault
