"""The composition root: settings → credential → gateways → reconciler, once per event loop."""

from __future__ import annotations

import asyncio
import datetime as dt
import weakref
from dataclasses import dataclass
from typing import Any

from shared.adapters.credentials import platform_credential
from shared.adapters.directory import DirectoryGateway
from shared.adapters.graph import GraphClient
from shared.adapters.vault import VaultGateway
from shared.adapters.witness import GrantWitness
from shared.core.planner import PlanContext
from shared.core.renewal import DEFAULT_RENEWAL_FRACTION, RenewalPolicy
from shared.reconciler import Clock, Reconciler, SignInProbe, utc_now
from shared.settings import Settings


def renewal_policy(settings: Settings) -> RenewalPolicy:
    return RenewalPolicy(
        renew_before=dt.timedelta(days=settings.renew_before_days) if settings.renew_before_days else None,
        renew_at_fraction=(1 - settings.renew_before_fraction) if settings.renew_before_fraction
        else DEFAULT_RENEWAL_FRACTION,
    )


@dataclass
class Platform:
    settings: Settings
    credential: Any
    graph: GraphClient
    directory: DirectoryGateway
    vault: VaultGateway
    reconciler: Reconciler

    @classmethod
    def create(cls, settings: Settings, *, clock: Clock = utc_now, credential: Any = None) -> Platform:
        credential = credential or platform_credential(settings)
        graph = GraphClient(settings, credential, clock)
        directory = DirectoryGateway(graph)
        vault = VaultGateway(settings, credential)
        context = PlanContext(
            tenant_id=settings.tenant_id, key_vault_url=settings.key_vault_url, policy=renewal_policy(settings),
            grace=dt.timedelta(hours=settings.rotation_grace_hours), verify_sign_in=settings.verify_sign_in,
            assign_roles=settings.role_mode == "assign", allowed_roles=settings.allowed_roles,
            federation_issuers=settings.federation_issuers, entra_issuer=settings.entra_issuer,
            allowed_managed_identities=settings.allowed_managed_identities,
        )
        probe = SignInProbe(settings.tenant_id, settings.authority_host, settings.exo_scope,
                            settings.disable_instance_discovery,
                            budget_seconds=settings.verify_sign_in_timeout_seconds) if settings.verify_sign_in else None
        reconciler = Reconciler(context, vault, directory, probe, clock, witness=GrantWitness(settings))
        return cls(settings, credential, graph, directory, vault, reconciler)

    async def aclose(self) -> None:
        await self.graph.aclose()
        await self.vault.aclose()
        close = getattr(self.credential, "close", None)
        if close is not None:
            await close()


# Clients hold connections bound to the event loop that opened them; a host runs one loop, tests many.
_platforms: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[Settings, Platform]] = weakref.WeakKeyDictionary()


def current_platform(settings: Settings | None = None) -> Platform:
    settings = settings or Settings.current()
    loop = asyncio.get_running_loop()
    per_loop = _platforms.setdefault(loop, {})
    platform = per_loop.get(settings)
    if platform is None:
        platform = per_loop[settings] = Platform.create(settings)
    return platform


async def close_platforms() -> None:
    """Close the platforms of the running loop (a CLI or test that owns its loop calls this last)."""
    per_loop = _platforms.pop(asyncio.get_running_loop(), {})
    for platform in per_loop.values():
        await platform.aclose()
