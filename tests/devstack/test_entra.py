"""The Entra stand-in through the real clients (azure-identity, msal) and on the wire.

Directory state is written straight into the world (entra_helpers), so these tests do not depend
on the Graph stand-in.
"""

from __future__ import annotations

import asyncio
import base64
import os
import time
import uuid
from typing import Any

import jwt
import msal
import pytest
import requests
from azure.core.exceptions import ClientAuthenticationError
from azure.identity import CertificateCredential, ManagedIdentityCredential
from azure.identity.aio import ManagedIdentityCredential as AsyncManagedIdentityCredential
from cryptography.hazmat.primitives import hashes, serialization

from devstack import Stack
from devstack.pki import new_rsa_key, private_key_pem
from devstack.world import DEFAULT_PLATFORM_GRAPH_ROLES, EXCHANGE_APP_ID, GRAPH_APP_ID

from .entra_helpers import (
    EXCHANGE_RECIPIENT_ADMINISTRATOR,
    JobApp,
    JobCertificate,
    assign_directory_role,
    create_app,
    exchange_ready_app,
    grant_app_role,
    make_certificate,
)

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


def claims_of(token: str) -> dict[str, Any]:
    return jwt.decode(token, options={"verify_signature": False})


def requests_to(stack: Stack, route: str, method: str = "GET") -> int:
    return sum(r["count"] for r in stack.world.counter.snapshot()
               if r["service"] == "entra" and r["route"] == route and r["method"] == method)


def certificate_credential(stack: Stack, app: JobApp, data: bytes | None = None,
                           tenant_id: str | None = None) -> CertificateCredential:
    return CertificateCredential(tenant_id or stack.world.tenant_id, app.app_id,
                                 certificate_data=data or app.certificates[0].pem,
                                 authority=os.environ["AZURE_AUTHORITY_HOST"],
                                 disable_instance_discovery=True)


def exchange_scope(stack: Stack) -> str:
    return f"{os.environ['EXO_ENDPOINT']}/.default"


def token_url(stack: Stack, tenant: str | None = None) -> str:
    return f"{stack.url('entra')}/{tenant or stack.world.tenant_id}/oauth2/v2.0/token"


def assertion(cert: JobCertificate, client_id: str, audience: str, *, signing_key: Any = None,
              **overrides: Any) -> str:
    now = int(time.time())
    claims = {"aud": audience, "iss": client_id, "sub": client_id, "iat": now, "exp": now + 600,
              "jti": str(uuid.uuid4())}
    claims.update(overrides)
    x5t = base64.urlsafe_b64encode(cert.certificate.fingerprint(hashes.SHA1())).decode()
    return jwt.encode(claims, signing_key or cert.key, algorithm="RS256", headers={"x5t": x5t})


def post_token(stack: Stack, client_id: str, *, tenant: str | None = None, **form: str) -> requests.Response:
    data = {"client_id": client_id, "grant_type": "client_credentials", "scope": exchange_scope(stack),
            **form}
    return requests.post(token_url(stack, tenant), data=data, timeout=10)


def assert_oauth_error(response: requests.Response, status: int, error: str, aadsts: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["error"] == error
    assert body["error_codes"] == [aadsts]
    assert body["error_description"].startswith(f"AADSTS{aadsts}: ")
    assert {"timestamp", "trace_id", "correlation_id"} <= set(body)
    return body


# -- managed identity -------------------------------------------------------------------------------

def test_managed_identity_token_carries_the_platform_grants(stack: Stack) -> None:
    graph = os.environ["GRAPH_ENDPOINT"]
    credential = ManagedIdentityCredential()
    token = credential.get_token(f"{graph}/.default")

    claims = claims_of(token.token)
    assert claims["aud"] == graph
    assert claims["oid"] == stack.world.platform.object_id
    assert claims["appid"] == stack.world.platform.app_id
    assert claims["tid"] == stack.world.tenant_id
    assert claims["roles"] == sorted(DEFAULT_PLATFORM_GRAPH_ROLES)
    assert "wids" not in claims
    assert token.expires_on > time.time() + 3000
    assert requests_to(stack, "/msi/token") == 1

    # A directory role shows up as wids in the next token that is minted.
    assign_directory_role(stack.world, stack.world.platform.object_id, EXCHANGE_RECIPIENT_ADMINISTRATOR)
    again = claims_of(ManagedIdentityCredential().get_token(f"{graph}/.default").token)
    assert again["wids"] == [EXCHANGE_RECIPIENT_ADMINISTRATOR]


def test_managed_identity_async_client(stack: Stack) -> None:
    graph = os.environ["GRAPH_ENDPOINT"]

    async def fetch() -> str:
        # aiohttp builds its default trust store when first imported, possibly before the fixture
        # pointed SSL_CERT_FILE at the stand-in CA, so hand the CA file over explicitly.
        ca_file = os.environ["SSL_CERT_FILE"]
        async with AsyncManagedIdentityCredential(connection_verify=ca_file) as credential:
            return (await credential.get_token(f"{graph}/.default")).token

    claims = claims_of(asyncio.run(fetch()))
    assert claims["aud"] == graph
    assert claims["oid"] == stack.world.platform.object_id
    assert requests_to(stack, "/msi/token") == 1


def test_managed_identity_wire_format(stack: Stack) -> None:
    url = os.environ["IDENTITY_ENDPOINT"]
    header = {"X-IDENTITY-HEADER": os.environ["IDENTITY_HEADER"]}
    graph = os.environ["GRAPH_ENDPOINT"]

    ok = requests.get(url, params={"api-version": "2019-08-01", "resource": graph}, headers=header,
                      timeout=10)
    assert ok.status_code == 200
    body = ok.json()
    assert set(body) == {"access_token", "expires_on", "resource", "token_type", "client_id"}
    assert body["expires_on"].isdigit() and body["resource"] == graph and body["token_type"] == "Bearer"
    assert body["client_id"] == stack.world.platform.app_id

    unknown = requests.get(url, params={"api-version": "2019-08-01", "resource": "https://nowhere.example"},
                           headers=header, timeout=10)
    assert unknown.status_code == 400
    assert set(unknown.json()) == {"statusCode", "message", "correlationId"}
    assert unknown.json()["message"].startswith("AADSTS500011: The resource principal named https://nowhere")

    no_header = requests.get(url, params={"api-version": "2019-08-01", "resource": graph}, timeout=10)
    assert no_header.status_code == 401
    old_version = requests.get(url, params={"api-version": "2017-09-01", "resource": graph}, headers=header,
                               timeout=10)
    assert old_version.status_code == 400


def test_managed_identity_refusals_reach_the_client(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ClientAuthenticationError, match="AADSTS500011"):
        ManagedIdentityCredential().get_token("https://nowhere.example/.default")
    with pytest.raises(ClientAuthenticationError, match="Unable to load the proper Managed Identity"):
        ManagedIdentityCredential(client_id=str(uuid.uuid4())).get_token(f"{os.environ['GRAPH_ENDPOINT']}/.default")
    # The platform's own client id selects the same identity.
    own = ManagedIdentityCredential(client_id=stack.world.platform.app_id)
    assert claims_of(own.get_token(f"{os.environ['GRAPH_ENDPOINT']}/.default").token)["oid"] == \
        stack.world.platform.object_id
    monkeypatch.setenv("IDENTITY_HEADER", "not-the-secret")
    with pytest.raises(ClientAuthenticationError, match="401"):
        ManagedIdentityCredential().get_token(f"{os.environ['GRAPH_ENDPOINT']}/.default")


# -- discovery --------------------------------------------------------------------------------------

def test_openid_configuration_for_tenant_id_and_primary_domain(stack: Stack) -> None:
    base, tid = stack.url("entra"), stack.world.tenant_id
    for tenant in (tid, stack.world.organization):
        doc = requests.get(f"{base}/{tenant}/v2.0/.well-known/openid-configuration", timeout=10).json()
        assert doc["token_endpoint"] == f"{base}/{tid}/oauth2/v2.0/token"
        assert doc["issuer"] == f"{base}/{tid}/v2.0"
        assert doc["authorization_endpoint"] == f"{base}/{tid}/oauth2/v2.0/authorize"
        assert "private_key_jwt" in doc["token_endpoint_auth_methods_supported"]
    missing = requests.get(f"{base}/{uuid.uuid4()}/v2.0/.well-known/openid-configuration", timeout=10)
    assert_oauth_error(missing, 400, "invalid_tenant", 90002)
    keys = requests.get(f"{base}/{tid}/discovery/v2.0/keys", timeout=10).json()["keys"]
    assert [k["kid"] for k in keys] == [stack.world.issuer.key_id]


def test_msal_with_this_host_as_instance_discovery_endpoint(stack: Stack) -> None:
    app = exchange_ready_app(stack.world)
    cert = app.certificates[0]
    client = msal.ConfidentialClientApplication(
        app.app_id, authority=f"{stack.url('entra')}/{stack.world.tenant_id}",
        client_credential={"private_key": private_key_pem(cert.key).decode(), "thumbprint": cert.thumbprint},
        instance_discovery=f"{stack.url('entra')}/common/discovery/instance")
    result = client.acquire_token_for_client([exchange_scope(stack)])
    assert "access_token" in result, result
    assert requests_to(stack, "/common/discovery/instance") == 1


# -- client credentials with a certificate ---------------------------------------------------------

@pytest.mark.parametrize("form", ["pem", "pfx"])
def test_certificate_credential_gets_an_exchange_token(stack: Stack, form: str) -> None:
    app = exchange_ready_app(stack.world)
    assert app.sp is not None
    data = app.certificates[0].pem if form == "pem" else app.certificates[0].pfx
    token = certificate_credential(stack, app, data).get_token(exchange_scope(stack))

    claims = claims_of(token.token)
    assert claims["aud"] == os.environ["EXO_ENDPOINT"]
    assert claims["roles"] == ["Exchange.ManageAsApp"]
    assert claims["wids"] == [EXCHANGE_RECIPIENT_ADMINISTRATOR]
    assert claims["appid"] == app.app_id
    assert claims["oid"] == app.sp["id"]
    assert claims["tid"] == stack.world.tenant_id
    # disable_instance_discovery: one tenant discovery, one token request, no instance discovery.
    assert requests_to(stack, "/{tenant}/v2.0/.well-known/openid-configuration") == 1
    assert requests_to(stack, "/{tenant}/oauth2/v2.0/token", "POST") == 1
    assert requests_to(stack, "/common/discovery/instance") == 0


def test_token_without_consent_or_role_has_no_such_claims(stack: Stack) -> None:
    app = exchange_ready_app(stack.world, consent=False, role=None)
    claims = claims_of(certificate_credential(stack, app).get_token(exchange_scope(stack)).token)
    assert "roles" not in claims
    assert "wids" not in claims
    # The Exchange app id is an accepted resource identifier too.
    by_app_id = certificate_credential(stack, app).get_token(f"{EXCHANGE_APP_ID}/.default")
    assert claims_of(by_app_id.token)["aud"] == EXCHANGE_APP_ID


def test_msal_ps256_assertion_with_sha256_thumbprint(stack: Stack) -> None:
    app = exchange_ready_app(stack.world)
    cert = app.certificates[0]
    # Without a thumbprint msal signs PS256 and names the key by x5t#S256 (and sends x5c).
    public_pem = cert.certificate.public_bytes(serialization.Encoding.PEM).decode()
    client = msal.ConfidentialClientApplication(
        app.app_id, authority=f"{stack.url('entra')}/{stack.world.tenant_id}", instance_discovery=False,
        client_credential={"private_key": private_key_pem(cert.key).decode(),
                           "public_certificate": public_pem})
    result = client.acquire_token_for_client([exchange_scope(stack)])
    assert "access_token" in result, result
    assert claims_of(result["access_token"])["roles"] == ["Exchange.ManageAsApp"]


def test_unknown_certificate_is_refused(stack: Stack) -> None:
    app = exchange_ready_app(stack.world)
    stranger = make_certificate(stack.world)
    with pytest.raises(ClientAuthenticationError, match="AADSTS700027") as caught:
        certificate_credential(stack, app, stranger.pem).get_token(exchange_scope(stack))
    assert "The key was not found" in str(caught.value)
    assert stranger.thumbprint in str(caught.value)


def test_expired_certificate_is_refused_by_the_simulated_clock(stack: Stack) -> None:
    app = exchange_ready_app(stack.world)
    assert certificate_credential(stack, app).get_token(exchange_scope(stack)).token
    stack.world.clock.advance(366 * 86400)
    with pytest.raises(ClientAuthenticationError, match="AADSTS700027") as caught:
        certificate_credential(stack, app).get_token(exchange_scope(stack))
    assert "The key used is expired" in str(caught.value)


def test_app_without_service_principal_is_refused(stack: Stack) -> None:
    app = create_app(stack.world, with_sp=False)
    with pytest.raises(ClientAuthenticationError, match="AADSTS7000229"):
        certificate_credential(stack, app).get_token(exchange_scope(stack))


def test_unknown_application_is_refused(stack: Stack) -> None:
    app = exchange_ready_app(stack.world)
    with stack.world.lock:
        del stack.world.directory.applications[app.app["id"]]
    with pytest.raises(ClientAuthenticationError, match="AADSTS700016"):
        certificate_credential(stack, app).get_token(exchange_scope(stack))


def test_wrong_tenant_is_refused(stack: Stack) -> None:
    app = exchange_ready_app(stack.world)
    other = str(uuid.uuid4())
    # msal refuses at tenant discovery, before any token request; Entra's answer is in the chain.
    with pytest.raises(ClientAuthenticationError, match="Unable to get authority configuration") as caught:
        certificate_credential(stack, app, tenant_id=other).get_token(exchange_scope(stack))
    chain, error = [], caught.value
    while error is not None:
        chain.append(str(error))
        error = error.__cause__ or error.__context__
    assert any("AADSTS90002" in text for text in chain)
    assert requests_to(stack, "/{tenant}/oauth2/v2.0/token", "POST") == 0
    signed = assertion(app.certificates[0], app.app_id, token_url(stack, other))
    on_the_wire = post_token(stack, app.app_id, tenant=other, client_assertion_type=JWT_BEARER,
                             client_assertion=signed)
    assert_oauth_error(on_the_wire, 400, "invalid_tenant", 90002)


def test_a_key_credential_still_replicating_is_not_found(stack: Stack) -> None:
    app = exchange_ready_app(stack.world)
    key_id = app.app["keyCredentials"][0]["keyId"]
    with stack.world.lock:
        stack.world.directory.visible_at[key_id] = time.monotonic() + 60
    with pytest.raises(ClientAuthenticationError, match="AADSTS700027"):
        certificate_credential(stack, app).get_token(exchange_scope(stack))
    with stack.world.lock:
        del stack.world.directory.visible_at[key_id]
    assert certificate_credential(stack, app).get_token(exchange_scope(stack)).token


def test_roles_are_those_granted_on_the_requested_resource(stack: Stack) -> None:
    app = create_app(stack.world)
    assert app.sp is not None
    grant_app_role(stack.world, app.sp["id"], EXCHANGE_APP_ID, "full_access_as_app")
    grant_app_role(stack.world, app.sp["id"], GRAPH_APP_ID, "Application.Read.All")
    graph_token = certificate_credential(stack, app).get_token(f"{os.environ['GRAPH_ENDPOINT']}/.default")
    assert claims_of(graph_token.token)["roles"] == ["Application.Read.All"]
    exo_token = certificate_credential(stack, app).get_token(exchange_scope(stack))
    assert claims_of(exo_token.token)["roles"] == ["full_access_as_app"]


# -- the token endpoint on the wire ----------------------------------------------------------------

def test_successful_response_shape(stack: Stack) -> None:
    app = exchange_ready_app(stack.world)
    response = post_token(stack, app.app_id, client_assertion_type=JWT_BEARER,
                          client_assertion=assertion(app.certificates[0], app.app_id, token_url(stack)))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["token_type"] == "Bearer"
    assert 3500 <= body["expires_in"] <= 3600
    assert claims_of(body["access_token"])["aud"] == os.environ["EXO_ENDPOINT"]


def test_client_secret_is_refused(stack: Stack) -> None:
    app = exchange_ready_app(stack.world)
    assert_oauth_error(post_token(stack, app.app_id, client_secret="hunter2"), 401, "invalid_client", 7000215)
    assert_oauth_error(post_token(stack, app.app_id), 401, "invalid_client", 7000218)


@pytest.mark.parametrize(("change", "status", "error", "aadsts"), [
    ({"scope": "https://graph.example/User.Read"}, 400, "invalid_scope", 1002012),
    ({"scope": "https://nowhere.example/.default"}, 400, "invalid_resource", 500011),
    ({"grant_type": "password"}, 400, "unsupported_grant_type", 70003),
    ({"grant_type": ""}, 400, "invalid_request", 900144),
])
def test_request_refusals(stack: Stack, change: dict[str, str], status: int, error: str, aadsts: int) -> None:
    app = exchange_ready_app(stack.world)
    form = {"client_assertion_type": JWT_BEARER,
            "client_assertion": assertion(app.certificates[0], app.app_id, token_url(stack)), **change}
    assert_oauth_error(post_token(stack, app.app_id, **form), status, error, aadsts)


@pytest.mark.parametrize(("claims", "aadsts", "reason"), [
    ({"aud": "https://login.microsoftonline.com/common/oauth2/v2.0/token"}, 700023, "audience"),
    ({"iss": "someone-else"}, 700021, "doesn't match"),
    ({"iat": int(time.time()) - 7200, "exp": int(time.time()) - 3600}, 700024, "valid time range"),
    ({"nbf": int(time.time()) + 3600, "exp": int(time.time()) + 3900}, 700024, "valid time range"),
])
def test_assertion_claims_are_checked(stack: Stack, claims: dict[str, Any], aadsts: int, reason: str) -> None:
    app = exchange_ready_app(stack.world)
    forged = assertion(app.certificates[0], app.app_id, token_url(stack), **claims)
    response = post_token(stack, app.app_id, client_assertion_type=JWT_BEARER, client_assertion=forged)
    body = assert_oauth_error(response, 401, "invalid_client", aadsts)
    assert reason in body["error_description"]


def test_assertion_signed_by_another_key_is_refused(stack: Stack) -> None:
    app = exchange_ready_app(stack.world)
    forged = assertion(app.certificates[0], app.app_id, token_url(stack), signing_key=new_rsa_key())
    response = post_token(stack, app.app_id, client_assertion_type=JWT_BEARER, client_assertion=forged)
    body = assert_oauth_error(response, 401, "invalid_client", 700027)
    assert "did not match the expected signature value" in body["error_description"]
    garbage = post_token(stack, app.app_id, client_assertion_type=JWT_BEARER, client_assertion="not-a-jwt")
    assert_oauth_error(garbage, 401, "invalid_client", 50027)
