"""Callers of the Graph stand-in for tests: tokens minted straight from the world's issuer.

The Entra stand-in is not needed for these tests, and a test can act as any service principal
with any set of Graph application permissions.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ssl
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
import pytest
from azure.core.credentials import AccessToken
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding
from msgraph import GraphServiceClient
from msgraph.generated.models.o_data_errors.o_data_error import ODataError

from devstack import Stack
from devstack.pki import new_rsa_key, self_signed_certificate
from devstack.world import GRAPH_APP_ID, new_id


class MintedCredential:
    """An azure-core TokenCredential that issues Graph tokens for one caller."""

    def __init__(self, stack: Stack, object_id: str, app_id: str, roles: Iterable[str]) -> None:
        self.stack = stack
        self.object_id = object_id
        self.app_id = app_id
        self.roles = list(roles)
        self.scopes_seen: list[tuple[str, ...]] = []

    def get_token(self, *scopes: str, claims: str | None = None, tenant_id: str | None = None,
                  enable_cae: bool = False, **kwargs: Any) -> AccessToken:
        self.scopes_seen.append(scopes)
        token, expires_on = self.stack.world.issuer.issue(
            audience=self.stack.url("graph"), object_id=self.object_id, app_id=self.app_id,
            roles=self.roles, wids=[],
        )
        return AccessToken(token, expires_on)

    def bearer(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.get_token().token}"}


def platform_credential(stack: Stack) -> MintedCredential:
    """The Function App's managed identity with the Graph permissions the tenant granted it."""
    world = stack.world
    graph_sp = world.resource_sp(GRAPH_APP_ID)
    roles = world.directory.granted_app_roles(world.platform.object_id, graph_sp["id"])
    return MintedCredential(stack, world.platform.object_id, world.platform.app_id, roles)


def other_caller(stack: Stack, roles: Iterable[str], name: str = "other-automation") -> MintedCredential:
    """A second service principal in the tenant holding exactly `roles`."""
    world = stack.world
    sp_id, app_id = new_id(), new_id()
    with world.lock:
        world.directory.service_principals[sp_id] = {
            "id": sp_id, "appId": app_id, "displayName": name, "servicePrincipalType": "ManagedIdentity",
            "accountEnabled": True, "appRoles": [], "tags": [], "servicePrincipalNames": [app_id],
            "appOwnerOrganizationId": None, "createdDateTime": None,
        }
    return MintedCredential(stack, sp_id, app_id, roles)


def graph_client(stack: Stack, credential: Any) -> contextlib.AbstractAsyncContextManager[GraphServiceClient]:
    """msgraph-sdk's client pointed at the stand-in, closed on exit."""
    return graph_client_at(stack.url("graph"), credential)


@contextlib.asynccontextmanager
async def graph_client_at(endpoint: str, credential: Any) -> AsyncIterator[GraphServiceClient]:
    """msgraph-sdk's client for the Graph at `endpoint` (no /v1.0), closed on exit."""
    client = GraphServiceClient(credential, scopes=[f"{endpoint}/.default"])
    client.request_adapter.base_url = f"{endpoint}/v1.0"
    try:
        yield client
    finally:
        http_client = client.request_adapter._http_client
        await http_client.aclose()
        # msgraph-core's AsyncGraphTransport does not forward aclose() to the transport it wraps,
        # so the connection pool underneath has to be closed by hand or its sockets leak.
        inner = getattr(http_client._transport, "transport", None)
        if inner is not None:
            await inner.aclose()


def raw_client(stack: Stack) -> httpx.Client:
    context = ssl.create_default_context(cafile=str(stack.ca_file))
    return httpx.Client(base_url=f"{stack.url('graph')}/v1.0", verify=context, timeout=30)


@dataclass
class Cert:
    certificate: x509.Certificate
    key: rsa.RSAPrivateKey

    @property
    def der(self) -> bytes:
        return self.certificate.public_bytes(Encoding.DER)

    @property
    def thumbprint(self) -> bytes:
        return self.certificate.fingerprint(hashes.SHA1())


def make_cert(stack: Stack, *, days: float = 30, starts_ago: float = 1, subject: str | None = None) -> Cert:
    """A self-signed certificate valid from `starts_ago` days before to `days` after the simulated now."""
    now = stack.world.clock.now().replace(microsecond=0)
    key = new_rsa_key()
    certificate = self_signed_certificate(
        key, subject or f"CN=test-{uuid.uuid4().hex[:8]}",
        now - dt.timedelta(days=starts_ago), now + dt.timedelta(days=days),
    )
    return Cert(certificate, key)


T = TypeVar("T")


def run(scenario: Callable[[GraphServiceClient], Awaitable[T]], stack: Stack,
        credential: MintedCredential | None = None) -> T:
    async def main() -> T:
        async with graph_client(stack, credential or platform_credential(stack)) as client:
            return await scenario(client)
    return asyncio.run(main())


async def refused(call: Awaitable[Any]) -> ODataError:
    with pytest.raises(ODataError) as caught:
        await call
    return caught.value
