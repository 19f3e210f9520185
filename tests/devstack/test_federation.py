"""Stand-in conformance for workload identity federation (issue #16), through the real clients.

- Graph `federatedIdentityCredentials`: create, list, delete; the 20 limit; one audience; unique name
  and issuer+subject; Application.ReadWrite.OwnedBy writes only on owned apps.
- Entra ID: the managed identity endpoint's token for `api://AzureADTokenExchange` (this tenant's
  v2.0 issuer, subject = the identity's principal id); the token endpoint exchanging such a token, or
  a GitHub-like issuer's, for the app's token only on an exact issuer/subject/audience match
  (azure-identity's ClientAssertionCredential as the client).
- The GitHub-like issuer: discovery document and JWKS that verify its tokens.
- Exchange: a managed identity's own token works when its service principal holds the grant and role.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import jwt
import pytest
from azure.core.exceptions import ClientAuthenticationError

from devstack import Stack
from devstack.world import EXCHANGE_APP_ID

from .entra_helpers import assign_directory_role, exchange_ready_app, grant_app_role
from .graph_helpers import other_caller, platform_credential, raw_client

AUDIENCE = "api://AzureADTokenExchange"
ERA = "31392ffb-586c-42d1-9346-e59415a2cc4e"


def owned_app(stack: Stack) -> dict[str, Any]:
    """An app the platform created (and so owns) through Graph."""
    with raw_client(stack) as client:
        created = client.post("/applications", json={"displayName": "fic-test"},
                              headers=platform_credential(stack).bearer())
        assert created.status_code == 201, created.text
        return dict(created.json())


def fic(name: str, issuer: str = "https://token.actions.githubusercontent.com", subject: str = "repo:a/b:ref:x",
        audiences: list[str] | None = None) -> dict[str, Any]:
    return {"name": name, "issuer": issuer, "subject": subject, "audiences": audiences or [AUDIENCE]}


def test_graph_creates_lists_and_deletes_federated_credentials(stack: Stack) -> None:
    app = owned_app(stack)
    path = f"/applications/{app['id']}/federatedIdentityCredentials"
    headers = platform_credential(stack).bearer()
    with raw_client(stack) as client:
        created = client.post(path, json=fic("ours-1"), headers=headers)
        assert created.status_code == 201, created.text
        assert created.json()["audiences"] == [AUDIENCE] and created.json()["id"]
        listed = client.get(path, headers=headers).json()["value"]
        assert [c["name"] for c in listed] == ["ours-1"]
        assert client.delete(f"{path}/{created.json()['id']}", headers=headers).status_code == 204
        assert client.get(path, headers=headers).json()["value"] == []
        assert client.delete(f"{path}/{created.json()['id']}", headers=headers).status_code == 404


def test_graph_refuses_what_it_refuses(stack: Stack) -> None:
    app = owned_app(stack)
    path = f"/applications/{app['id']}/federatedIdentityCredentials"
    headers = platform_credential(stack).bearer()
    with raw_client(stack) as client:
        assert client.post(path, json=fic("first"), headers=headers).status_code == 201
        assert client.post(path, json=fic("first", subject="other"), headers=headers).status_code == 409
        assert client.post(path, json=fic("second"), headers=headers).status_code == 400  # same issuer+subject
        assert client.post(path, json=fic("two", audiences=[AUDIENCE, "x"]), headers=headers).status_code == 400
        assert client.post(path, json={**fic("bad"), "issuer": ""}, headers=headers).status_code == 400
        for i in range(19):
            assert client.post(path, json=fic(f"name{i}", subject=f"s{i}"), headers=headers).status_code == 201
        over = client.post(path, json=fic("name20", subject="s20"), headers=headers)
        assert over.status_code == 400 and "20" in over.json()["error"]["message"]


def test_owned_by_writes_only_on_owned_apps(stack: Stack) -> None:
    app = owned_app(stack)
    path = f"/applications/{app['id']}/federatedIdentityCredentials"
    stranger = other_caller(stack, ["Application.ReadWrite.OwnedBy"])
    reader = other_caller(stack, ["Application.Read.All"], name="reader")
    with raw_client(stack) as client:
        assert client.post(path, json=fic("theirs"), headers=stranger.bearer()).status_code == 403
        assert client.post(path, json=fic("theirs"), headers=reader.bearer()).status_code == 403
        assert client.get(path, headers=reader.bearer()).status_code == 200


def test_the_managed_identity_token_for_token_exchange_names_its_principal(stack: Stack) -> None:
    settings = stack.settings()
    answer = httpx.get(settings["IDENTITY_ENDPOINT"], params={"api-version": "2019-08-01", "resource": AUDIENCE},
                       headers={"X-IDENTITY-HEADER": settings["IDENTITY_HEADER"]})
    assert answer.status_code == 200, answer.text
    claims = jwt.decode(answer.json()["access_token"], options={"verify_signature": False})
    assert claims["iss"] == f"{stack.url('entra')}/{stack.world.tenant_id}/v2.0"
    assert claims["sub"] == stack.world.platform.object_id and claims["aud"] == AUDIENCE


def trusting_app(stack: Stack, issuer: str, subject: str) -> str:
    app = exchange_ready_app(stack.world)
    with stack.world.lock:
        stack.world.directory.federated_credentials[app.app["id"]] = [
            {"id": str(uuid.uuid4()), **fic("trust", issuer=issuer, subject=subject)}]
    return str(app.app_id)


def sign_in(stack: Stack, app_id: str, assertion: str) -> str:
    from azure.identity.aio import ClientAssertionCredential

    async def run() -> str:
        async with ClientAssertionCredential(stack.world.tenant_id, app_id, lambda: assertion,
                                             authority=stack.url("entra")) as credential:
            return (await credential.get_token(f"{stack.url('exchange')}/.default")).token

    return asyncio.run(run())


def test_the_token_endpoint_exchanges_a_matching_workload_token_and_nothing_else(stack: Stack) -> None:
    oidc = stack.world.services["oidc"]
    subject = "repo:contoso/exo-jobs:environment:production"
    app_id = trusting_app(stack, oidc.issuer, subject)
    token = sign_in(stack, app_id, oidc.issue(subject, AUDIENCE))
    assert "Exchange.ManageAsApp" in jwt.decode(token, options={"verify_signature": False})["roles"]

    for wrong in (oidc.issue("repo:contoso/exo-jobs:environment:staging", AUDIENCE),
                  oidc.issue(subject, "api://SomethingElse"),
                  stack.world.issuer.issue(audience=AUDIENCE, object_id=subject, app_id="x", roles=[], wids=[],
                                           issuer=f"{stack.url('entra')}/{stack.world.tenant_id}/v2.0")[0]):
        with pytest.raises(ClientAuthenticationError, match="AADSTS70021"):
            sign_in(stack, app_id, wrong)


def test_a_forged_workload_token_is_refused(stack: Stack) -> None:
    from devstack.pki import new_rsa_key

    oidc = stack.world.services["oidc"]
    app_id = trusting_app(stack, oidc.issuer, "repo:a/b:ref:x")
    forged = jwt.encode({"iss": oidc.issuer, "sub": "repo:a/b:ref:x", "aud": AUDIENCE, "exp": 4102444800},
                        new_rsa_key(), algorithm="RS256", headers={"kid": oidc.key_id})
    with pytest.raises(ClientAuthenticationError, match="AADSTS50027"):
        sign_in(stack, app_id, forged)


def test_the_github_like_issuer_publishes_discovery_and_keys_that_verify_its_tokens(stack: Stack) -> None:
    oidc = stack.world.services["oidc"]
    configuration = httpx.get(f"{oidc.issuer}/.well-known/openid-configuration").json()
    assert configuration["issuer"] == oidc.issuer
    keys = jwt.PyJWKSet.from_dict(httpx.get(configuration["jwks_uri"]).json())
    url, request_token = oidc.workload("repo:contoso/x:environment:prod")
    token = httpx.get(f"{url}&audience={AUDIENCE}",
                      headers={"Authorization": f"bearer {request_token}"}).json()["value"]
    key = keys[jwt.get_unverified_header(token)["kid"]]
    claims = jwt.decode(token, key.key, algorithms=["RS256"], audience=AUDIENCE, issuer=oidc.issuer)
    assert claims["sub"] == "repo:contoso/x:environment:prod" and claims["environment"] == "prod"
    assert httpx.get(f"{url}&audience={AUDIENCE}", headers={"Authorization": "bearer nope"}).status_code == 401


def test_exchange_accepts_a_managed_identitys_own_token_with_grant_and_role(stack: Stack) -> None:
    from azure.identity.aio import ManagedIdentityCredential

    settings = stack.settings()

    async def get_mailbox() -> int:
        async with ManagedIdentityCredential() as credential:
            token = (await credential.get_token(f"{settings['EXO_ENDPOINT']}/.default")).token
        async with httpx.AsyncClient() as client:
            answer = await client.post(
                f"{settings['EXO_ENDPOINT']}/adminapi/beta/{stack.world.tenant_id}/InvokeCommand",
                json={"CmdletInput": {"CmdletName": "Get-Mailbox", "Parameters": {}}},
                headers={"Authorization": f"Bearer {token}", "X-ResponseFormat": "json",
                         "X-AnchorMailbox": f"UPN:SystemMailbox{{bb558c35-97f1-4cb9-8ff7-d53741dc928c}}@"
                                            f"{stack.world.organization}"})
            return answer.status_code

    assert asyncio.run(get_mailbox()) == 401  # no Exchange.ManageAsApp yet
    grant_app_role(stack.world, stack.world.platform.object_id, EXCHANGE_APP_ID, "Exchange.ManageAsApp")
    assign_directory_role(stack.world, stack.world.platform.object_id, ERA)
    assert asyncio.run(get_mailbox()) == 200
