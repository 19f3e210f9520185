"""The sweep: find the identities that need work, with a handful of paged listings.

One Key Vault certificate listing is the registry (each item carries the identity's tags and the
current version's thumbprint and dates); one listing each of our applications, the grants on
Exchange's service principal, the assignments of each directory role in use, and the deleted
secrets describes the tenant side. `needs_work` then decides per identity, purely, and only
those identities are fanned out to the queue. Cost is O(N / page size), not O(N) (docs/architecture.md).

What the listings cannot see (a connection secret overwritten in place, say) is caught by the
deep check: every identity is reconciled in full at least every DEEP_CHECK_HOURS.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import json
import logging
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from azure.core.exceptions import AzureError

import shared.telemetry as telemetry
from shared.adapters.directory import application_from_graph
from shared.adapters.graph import GraphError, literal
from shared.adapters.vault import vault_error
from shared.core.checks import CheckResult, Facet, IdentityView, State, run_checks
from shared.core.fanout import fan_out
from shared.core.model import (
    EXCHANGE_MANAGE_AS_APP_ROLE_ID,
    OWNER_TAG,
    OWNER_TAG_VALUE,
    CertificateVersion,
    ObservedApplication,
)
from shared.core.planner import DECOMMISSIONING_TAG, DECOMMISSIONING_VALUE, PlanContext
from shared.core.record import format_time, parse_time
from shared.core.registry import LastRun, started_by_us
from shared.core.renewal import jittered_renewal_time, next_attempt_after_failure
from shared.core.spec import IdentityNames, IdentitySpec, registry_spec
from shared.errors import NeedsOperator
from shared.notify import notify_near_expiry
from shared.platform import Platform

log = logging.getLogger("exo_automation.sweep")
_ADOPTABLE = re.compile(r"^exo-[a-z0-9-]+-cert$")


@dataclass(frozen=True)
class RegistryEntry:
    """One identity as the certificate listing shows it."""

    name: str
    tags: dict[str, str]
    thumbprint: str | None
    not_before: dt.datetime | None
    not_after: dt.datetime | None
    enabled: bool
    version: str | None = None
    updated_on: dt.datetime | None = None

    @functools.cached_property
    def spec(self) -> IdentitySpec:
        return IdentitySpec.from_tags(self.tags)


@dataclass(frozen=True)
class TenantSnapshot:
    applications: dict[str, ObservedApplication]  # by appId
    consented_principals: frozenset[str]  # service principal ids holding Exchange.ManageAsApp
    role_holders: dict[str, frozenset[str]]  # role template id -> principal ids
    deleted_secrets: frozenset[str]


@dataclass
class SweepResult:
    sweep_id: str
    identities: int = 0
    due: dict[str, list[str]] = field(default_factory=dict)  # name -> reasons
    skipped: list[str] = field(default_factory=list)

    def message(self, name: str) -> dict[str, Any]:
        return {"name": name, "reasons": self.due[name], "sweepId": self.sweep_id}

    def messages(self) -> list[str]:
        return [json.dumps(self.message(name), sort_keys=True) for name in sorted(self.due)]

    def schedule(self, *, window_seconds: float = 60.0) -> tuple[list[tuple[dict[str, Any], int]], list[str]]:
        """The messages to queue, each with its visibility delay in seconds, spread so the reconciles'
        key-credential reads stay below Graph's per-tenant limit (shared/core/fanout.py); and the names
        left for the next sweep."""
        scheduled, deferred = fan_out(sorted(self.due.items()), window_seconds=window_seconds)
        return [(self.message(name), delay) for name, delay in scheduled], deferred


# A run writes its outcome to the certificate's tags: a change later than this after the run's
# start is someone else's (a new version, tags edited), which ends a failure's back-off early.
CHANGE_SLACK = dt.timedelta(minutes=5)


def view_of_listings(entry: RegistryEntry, snapshot: TenantSnapshot) -> IdentityView:
    """What the sweep's listings say about one identity, in the checks' terms.

    The sweep sees the connection record only through the thumbprint the registry says was
    published (and the deleted-secrets listing); the deep check covers the rest.
    """
    tags = entry.tags
    sp_id = tags.get("servicePrincipalId", "")
    published = tags.get("publishedThumbprint") or None
    current = None
    if entry.thumbprint and entry.not_before is not None and entry.not_after is not None:
        current = CertificateVersion(entry.version or "", entry.thumbprint, entry.not_before, entry.not_after,
                                     entry.enabled)
    return IdentityView(
        spec=entry.spec, tags=tags, current=current, pending=current is None,
        application=snapshot.applications.get(tags.get("appId", "")),
        # The SP is not listed; its grant and roles are, and they vanish with it.
        service_principal=bool(sp_id), consent=bool(sp_id) and sp_id in snapshot.consented_principals,
        held_roles=frozenset(role for role, holders in snapshot.role_holders.items() if sp_id and sp_id in holders),
        record_present=published is not None, record_unreadable=False,
        record_deleted=IdentityNames(entry.spec.name).connection_secret in snapshot.deleted_secrets,
        published_thumbprint=published, published_version=None, record_ids_match=None,
        retire_after=parse_time(tags["retireAfter"]) if tags.get("retireAfter") else None,
    )


def needs_work(entry: RegistryEntry, snapshot: TenantSnapshot, now: dt.datetime, context: PlanContext,
               deep_check: dt.timedelta) -> list[str]:
    """Why this identity must be reconciled now (empty: in sync as far as the listings show).

    The reasons are the shared checks' (`shared.core.checks`) over the listings' view. After a failed run
    the identity waits for its back-off (`renewal.next_attempt_after_failure`), whatever the checks
    say, unless its certificate changed since that run: re-running it on every sweep would repeat
    the failure (and its notification) without changing anything.
    """
    return assess(entry, snapshot, now, context, deep_check)[0]


def drifted_facets(checked: CheckResult) -> set[str]:
    """Facets found missing or drifted (renewals, pending work and policy refusals are not drift)."""
    return {str(f.facet) for f in checked.violations if f.state in (State.MISSING, State.DRIFT)
            and f.facet is not Facet.ROLE_POLICY}


def assess(entry: RegistryEntry, snapshot: TenantSnapshot, now: dt.datetime, context: PlanContext,
           deep_check: dt.timedelta) -> tuple[list[str], CheckResult]:
    """`needs_work`'s reasons, with the check results they come from."""
    checked = run_checks(view_of_listings(entry, snapshot), now, context)
    return _gated(entry, checked.reasons(), now, deep_check), checked


def _gated(entry: RegistryEntry, reasons: list[str], now: dt.datetime, deep_check: dt.timedelta) -> list[str]:
    failure = LastRun.from_tags(entry.tags)
    if failure.failed and failure.at is not None:
        retry_at = next_attempt_after_failure(failure.at, max(1, failure.failures), entry.not_after or now)
        changed = entry.updated_on is not None and entry.updated_on > failure.at + CHANGE_SLACK
        if now >= retry_at:
            return [*reasons, "RetryAfterFailure"]
        return [*reasons, "ChangedSinceFailure"] if changed else []
    last_checked = entry.tags.get("lastRun")  # every queued reconcile records its run
    if not reasons and (not last_checked or now - parse_time(last_checked) >= deep_check):
        return ["DeepCheckDue"]
    return reasons


async def read_registry(platform: Platform) -> list[RegistryEntry]:
    entries = []
    try:
        async for props in platform.vault.certificates.list_properties_of_certificates(max_page_size=25):
            tags = dict(props.tags or {})
            if tags.get(OWNER_TAG) != OWNER_TAG_VALUE and props.name and _ADOPTABLE.match(props.name):
                # A version made outside the product: one versions listing, only for such names.
                tags = await platform.vault.adopted_tags(props.name) or tags
            if tags.get(OWNER_TAG) != OWNER_TAG_VALUE or "identity" not in tags:
                continue
            name = tags["identity"]
            try:
                # Tags are editable by any vault writer: a spec that does not describe this very
                # certificate's identity of this organization is reported, never acted on.
                registry_spec(tags, name, platform.settings.organization)
                if props.name != IdentityNames(name).certificate:
                    raise NeedsOperator(f"certificate {props.name} claims to be identity {name!r}",
                                        reason="RegistryTagsInvalid")
            except NeedsOperator as exc:
                log.warning("registry entry %s skipped: %s", props.name, exc.message)
                continue
            entries.append(RegistryEntry(
                name=name, tags=tags,
                thumbprint=bytes(props.x509_thumbprint).hex().upper() if props.x509_thumbprint else None,
                not_before=props.not_before, not_after=props.expires_on, enabled=bool(props.enabled),
                version=props.version, updated_on=props.updated_on,
            ))
    except AzureError as exc:
        raise vault_error(exc, "listing certificates") from exc
    return entries


async def read_tenant(platform: Platform, role_ids: set[str]) -> TenantSnapshot:
    graph = platform.graph
    exchange_sp = await platform.directory.exchange_service_principal_id()

    async def applications() -> dict[str, ObservedApplication]:
        # The apps the platform owns: one paged listing that also proves ownership (tags do not).
        items = await platform.directory.owned_applications()
        return {item["appId"]: application_from_graph(item, owned=True) for item in items}

    async def grants() -> frozenset[str]:
        items = await graph.collect(f"/servicePrincipals/{exchange_sp}/appRoleAssignedTo",
                                    {"$select": "principalId,appRoleId", "$top": "999"})
        return frozenset(str(i["principalId"]) for i in items if i.get("appRoleId") == EXCHANGE_MANAGE_AS_APP_ROLE_ID)

    async def holders(role_id: str) -> tuple[str, frozenset[str]]:
        items = await graph.collect("/roleManagement/directory/roleAssignments", {
            "$filter": f"roleDefinitionId eq {literal(role_id)}", "$select": "principalId,directoryScopeId"})
        return role_id, frozenset(str(i["principalId"]) for i in items if i.get("directoryScopeId", "/") == "/")

    async def deleted_secrets() -> frozenset[str]:
        try:
            return frozenset([s.name async for s in platform.vault.secrets.list_deleted_secrets(max_page_size=25)
                              if s.name])
        except AzureError as exc:
            raise vault_error(exc, "listing deleted secrets") from exc

    try:
        apps, consented, deleted, role_pairs = await asyncio.gather(
            applications(), grants(), deleted_secrets(),
            asyncio.gather(*(holders(r) for r in sorted(role_ids))))
    except GraphError as exc:
        raise exc.classified() from exc
    return TenantSnapshot(apps, consented, dict(role_pairs), deleted)


async def sweep(platform: Platform) -> SweepResult:
    """Decide which identities need a reconcile; the caller enqueues `result.messages()`."""
    result = SweepResult(sweep_id=uuid.uuid4().hex)
    entries = await read_registry(platform)
    result.identities = len(entries)
    active = [e for e in entries if e.tags.get(DECOMMISSIONING_TAG) != DECOMMISSIONING_VALUE]
    result.skipped = sorted(e.name for e in entries if e not in active)
    context = platform.reconciler.context
    # Holders of every role a spec names (allowed or not), in both role modes: the checks judge them.
    roles = {role.template_id for e in active for role in e.spec.roles}
    snapshot = await read_tenant(platform, roles) if active else TenantSnapshot({}, frozenset(), {}, frozenset())
    now = platform.reconciler.clock()
    deep_check = dt.timedelta(hours=platform.settings.deep_check_hours)
    telemetry.ensure_configured()
    expiring: list[tuple[str, float, str | None]] = []
    for entry in active:
        reasons, checked = assess(entry, snapshot, now, context, deep_check)
        telemetry.record_drift_found(drifted_facets(checked))
        if entry.not_after is not None:
            days_to_expiry = (entry.not_after - now) / dt.timedelta(days=1)
            telemetry.record_days_to_expiry(entry.name, days_to_expiry)
            if days_to_expiry < platform.settings.notify_near_expiry_days:
                expiring.append((entry.name, days_to_expiry, entry.thumbprint))
            renew_at = jittered_renewal_time(entry.not_before or entry.not_after, entry.not_after, context.policy,
                                             entry.thumbprint or entry.name)
            # The contract of the expiry alert (infra/): one line per identity per sweep.
            log.info("identity=%s daysToExpiry=%.2f renewalDue=%s renewalTime=%s", entry.name,
                     days_to_expiry, now >= renew_at, format_time(renew_at))
        if reasons:
            result.due[entry.name] = reasons
    log.info("sweep=%s identities=%d due=%d skipped=%d", result.sweep_id, result.identities, len(result.due),
             len(result.skipped))
    for name in await read_deleted_identities(platform):
        if name not in result.due and name not in {e.name for e in entries}:
            result.due[name] = ["CertificateDeleted"]  # deleted by hand: the reconcile recovers it
    if expiring:
        await notify_near_expiry(platform.settings, expiring)
    return result


async def read_deleted_identities(platform: Platform) -> list[str]:
    """Live identities whose certificate was deleted by hand (one paged listing of deleted
    certificates): ours by our create tags and not being decommissioned, so the queue's reconcile
    recovers them instead of nobody noticing until their jobs fail."""
    names = []
    try:
        async for deleted in platform.vault.certificates.list_deleted_certificates(max_page_size=25):
            tags = deleted.properties.tags if deleted.properties else None
            if deleted.name and tags and started_by_us(tags, deleted.name) and tags.get("state") != "decommissioning":
                names.append(tags["identity"])
    except AzureError as exc:
        raise vault_error(exc, "listing deleted certificates") from exc
    return sorted(names)


def parse_message(body: str) -> dict[str, Any]:
    """A queue message from `SweepResult.messages`, or ValueError."""
    message = json.loads(body)
    if not isinstance(message, dict) or not isinstance(message.get("name"), str):
        raise ValueError("a reconcile message is a JSON object with a 'name'")
    return message


__all__ = ["RegistryEntry", "SweepResult", "TenantSnapshot", "needs_work", "sweep"]
