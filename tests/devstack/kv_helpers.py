"""Credentials for driving the Key Vault stand-in until the Entra stand-in serves managed identity.

The tests take their credential from the `kv_credential` / `kv_async_credential` fixtures, which
call `make_credential` / `make_async_credential`: switching every Key Vault test to the real
`azure.identity.ManagedIdentityCredential` is the one line `USE_MANAGED_IDENTITY = True`.
"""

from __future__ import annotations

import asyncio
from typing import Any

from azure.core.credentials import AccessToken

from devstack import Stack, World

# Flip once devstack/entra.py serves IDENTITY_ENDPOINT.
USE_MANAGED_IDENTITY = False


def _token_for(world: World, scopes: tuple[str, ...]) -> AccessToken:
    if len(scopes) != 1:
        raise ValueError(f"expected exactly one scope, got {scopes!r}")
    audience = scopes[0].removesuffix("/.default")
    token, expires_on = world.issuer.issue(
        audience=audience, object_id=world.platform.object_id, app_id=world.platform.app_id, roles=[], wids=[],
    )
    return AccessToken(token, expires_on)


class IssuerCredential:
    """A sync TokenCredential that mints the platform identity's tokens straight from the issuer."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.requested_scopes: list[str] = []

    def get_token(self, *scopes: str, claims: str | None = None, tenant_id: str | None = None,
                  enable_cae: bool = False, **kwargs: Any) -> AccessToken:
        self.requested_scopes.extend(scopes)
        return _token_for(self.world, scopes)

    def close(self) -> None:
        return None

    def __enter__(self) -> IssuerCredential:
        return self

    def __exit__(self, *args: object) -> None:
        self.close()


class AsyncIssuerCredential:
    """The async twin of `IssuerCredential` (an AsyncTokenCredential)."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.requested_scopes: list[str] = []

    async def get_token(self, *scopes: str, claims: str | None = None, tenant_id: str | None = None,
                        enable_cae: bool = False, **kwargs: Any) -> AccessToken:
        self.requested_scopes.extend(scopes)
        await asyncio.sleep(0)
        return _token_for(self.world, scopes)

    async def close(self) -> None:
        return None

    async def __aenter__(self) -> AsyncIssuerCredential:
        return self

    async def __aexit__(self, *args: object) -> None:
        await self.close()


def make_credential(stack: Stack) -> Any:
    if USE_MANAGED_IDENTITY:
        from azure.identity import ManagedIdentityCredential

        return ManagedIdentityCredential()
    return IssuerCredential(stack.world)


def make_async_credential(stack: Stack) -> Any:
    if USE_MANAGED_IDENTITY:
        from azure.identity.aio import ManagedIdentityCredential

        return ManagedIdentityCredential()
    return AsyncIssuerCredential(stack.world)
