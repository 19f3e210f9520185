"""The sweep: find the identities that need work, with a handful of paged listings.

One Key Vault certificate listing is the registry (each item carries the identity's tags and the
current version's thumbprint and dates). Identities without a certificate keep their registry entry on
their connection secret's tags: the lease blobs' names (one storage listing) say which names to read,
and every secret is listed instead when that is cheaper, when the index is unavailable, and at least
once every DEEP_CHECK_HOURS, so an identity the index misses is still found (`load_registry`). One
listing each of our applications, the grants on Exchange's service principal, the assignments of each
directory role in use, and the deleted secrets describes the tenant side. `needs_work` then decides
per identity, purely, and only those identities are fanned out to the queue. Cost is O(N / page size),
not O(N) (docs/architecture.md).

What the listings cannot see (a connection secret overwritten in place, say) is caught by the
deep check: every identity is reconciled in full at least every DEEP_CHECK_HOURS.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import json
import logging
import math
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import shared.telemetry as telemetry
from shared.adapters.vault import TaggedSecret, VaultGateway
from shared.core import registry
from shared.core.checks import CheckResult, Facet, IdentityView, State, run_checks
from shared.core.fanout import fan_out
from shared.core.model import (
    CertificateVersion,
    ObservedApplication,
)
from shared.core.planner import DECOMMISSIONING_TAG, DECOMMISSIONING_VALUE, PlanContext
from shared.core.record import format_time, parse_time
from shared.core.registry import LastRun, started_by_us
from shared.core.renewal import jittered_renewal_time, next_attempt_after_failure
from shared.core.spec import IdentityNames, IdentitySpec, registry_spec
from shared.errors import ExoAutomationError, NeedsOperator, SettingsError
from shared.lease import LeaseIndex, LeaseStore, StorageUnavailable
from shared.notify import notify_near_expiry
from shared.platform import Platform
from shared.settings import Settings

log = logging.getLogger("exo_automation.sweep")


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
    tags, spec = entry.tags, entry.spec
    # A managed identity's principal is in the spec; an app's service principal in the registry tags.
    sp_id = spec.managed_identity or tags.get("servicePrincipalId", "")
    published = tags.get(registry.PUBLISHED_THUMBPRINT) or None
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
        # Without a certificate the registry entry is the connection secret itself: listed, so present.
        record_present=published is not None or not spec.certificate, record_unreadable=False,
        record_deleted=IdentityNames(spec.name).connection_secret in snapshot.deleted_secrets,
        published_thumbprint=published, published_version=None, record_ids_match=None,
        retire_after=parse_time(tags[registry.RETIRE_AFTER]) if tags.get(registry.RETIRE_AFTER) else None,
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
    last_checked = entry.tags.get(registry.LAST_RUN)  # every queued reconcile records its run
    if not reasons and (not last_checked or now - parse_time(last_checked) >= deep_check):
        return ["DeepCheckDue"]
    return reasons


# Key Vault's largest page of a listing (`maxresults` 25, docs/reference.md).
VAULT_PAGE = 25


@dataclass(frozen=True)
class RegistryRead:
    """Every identity, and how those without a certificate were found."""

    entries: list[RegistryEntry]
    index: LeaseIndex | None  # the lease blobs' names (None: storage unavailable or not configured)
    listed_every_secret: bool
    at: dt.datetime  # before the secrets were read: what a complete listing shows is at least this recent

    def unindexed(self) -> frozenset[str]:
        """Identities without a certificate that only the listing of every secret found: the index lacks
        their name (their next run's lease adds it)."""
        if self.index is None or not self.listed_every_secret:
            return frozenset()
        return frozenset(e.name for e in self.entries if not e.spec.certificate and e.name not in self.index.names)


def lists_every_secret(index: LeaseIndex | None, candidates: int, certificate_identities: int,
                       now: dt.datetime, period: dt.timedelta) -> bool:
    """Whether to find the identities without a certificate by listing every secret of the vault, rather than by
    reading the connection secret of each name of the index that has no certificate (`candidates`, one read each).

    The listing: without an index (storage unreachable or not configured); when the last complete listing is
    unknown, older than `period` (DEEP_CHECK_HOURS) or in the future, so an identity the index misses (its lease
    blob deleted, another storage account) is still found within that period; and when the reads would cost more
    than the listing, which holds at least each certificate identity's backing secret and record and each
    candidate's secret, 25 a page.
    """
    if index is None or index.secrets_listed_at is None:
        return True
    if not dt.timedelta(0) <= now - index.secrets_listed_at < period:
        return True
    return candidates > math.ceil((2 * certificate_identities + candidates) / VAULT_PAGE)


async def read_index(settings: Settings, environ: Mapping[str, str] | None = None) -> LeaseIndex | None:
    """The lease blobs as an index of names, or None (logged) when storage cannot say."""
    try:
        return await LeaseStore(settings, environ).index()
    except (SettingsError, ValueError) as exc:  # e.g. the CLI without the Functions storage's settings
        log.info("no identity index (lease blobs) here, so every secret is listed: %s", exc)
    except StorageUnavailable as exc:
        log.warning("the identity index (lease blobs) is unavailable, so every secret is listed: %s", exc.message)
    return None


async def find_without_certificate(vault: VaultGateway, organization: str, held: set[str],
                                   index: LeaseIndex | None, now: dt.datetime,
                                   period: dt.timedelta) -> tuple[list[RegistryEntry], bool]:
    """The registry entries of the identities without a certificate (`held`: the identities the certificate
    listing found), and whether every secret was listed to find them (`lists_every_secret`).

    A name in the index is only a hint: an entry still needs its connection secret's tags, checked like the
    listing's (`entries_without_certificate`)."""
    candidates = sorted(index.names - held) if index is not None else []
    if not lists_every_secret(index, len(candidates), len(held), now, period):
        try:
            secrets = await vault.owned_secrets_named([IdentityNames(name).connection_secret for name in candidates])
            return [e for e in entries_without_certificate(organization, secrets) if e.name not in held], False
        except ExoAutomationError as exc:
            # E.g. a disabled connection secret (403 on a read): the listing shows it, as it always did.
            log.warning("reading %d connection secrets by name failed, so every secret is listed: %s",
                        len(candidates), exc.message)
    entries = entries_without_certificate(organization, await vault.owned_secrets())
    return [e for e in entries if e.name not in held], True


async def load_registry(platform: Platform) -> RegistryRead:
    """Every identity: the certificate listing (concurrently with the lease blobs' listing), then those without a
    certificate (`find_without_certificate`)."""
    certificates, index = await asyncio.gather(_certificate_entries(platform), read_index(platform.settings))
    period = dt.timedelta(hours=platform.settings.deep_check_hours)
    at = platform.reconciler.clock()
    others, listed = await find_without_certificate(platform.vault, platform.settings.organization,
                                                    {e.name for e in certificates}, index, at, period)
    return RegistryRead(certificates + others, index, listed, at)


async def read_registry(platform: Platform) -> list[RegistryEntry]:
    """Every identity (`load_registry`)."""
    return (await load_registry(platform)).entries


def entries_without_certificate(organization: str, secrets: list[TaggedSecret]) -> list[RegistryEntry]:
    """The registry entries kept on connection secrets (identities without a certificate), checked like the
    certificates' (`registry_spec`): tags any secret writer can edit are reported, never acted on, when they
    do not describe this very secret's identity of this organization."""
    entries = []
    for secret in secrets:
        name = secret.tags.get(registry.IDENTITY, "")
        if "credentials" not in secret.tags or secret.name != IdentityNames(name).connection_secret:
            continue  # a certificate identity's record, or a certificate's backing secret
        try:
            spec = registry_spec(secret.tags, name, organization)
        except NeedsOperator as exc:
            log.warning("registry entry %s skipped: %s", secret.name, exc.message)
            continue
        if not spec.certificate:
            entries.append(RegistryEntry(name=name, tags=secret.tags, thumbprint=None, not_before=None,
                                         not_after=None, enabled=True, updated_on=secret.updated_on))
    return entries


async def _certificate_entries(platform: Platform) -> list[RegistryEntry]:
    entries = []
    for listed in await platform.vault.owned_certificates():
        tags = listed.tags
        if registry.IDENTITY not in tags:
            continue
        name = tags[registry.IDENTITY]
        try:
            # Tags are editable by any vault writer: a spec that does not describe this very
            # certificate's identity of this organization is reported, never acted on.
            registry_spec(tags, name, platform.settings.organization)
            if listed.name != IdentityNames(name).certificate:
                raise NeedsOperator(f"certificate {listed.name} claims to be identity {name!r}",
                                    reason="RegistryTagsInvalid")
        except NeedsOperator as exc:
            log.warning("registry entry %s skipped: %s", listed.name, exc.message)
            continue
        entries.append(RegistryEntry(
            name=name, tags=tags, thumbprint=listed.thumbprint, not_before=listed.not_before,
            not_after=listed.not_after, enabled=listed.enabled, version=listed.version,
            updated_on=listed.updated_on))
    return entries


async def read_tenant(platform: Platform, role_ids: set[str]) -> TenantSnapshot:
    directory = platform.directory

    async def applications() -> dict[str, ObservedApplication]:
        # The apps the platform owns: one paged listing that also proves ownership (tags do not).
        return {app.app_id: app for app in await directory.owned_applications()}

    async def holders(role_id: str) -> tuple[str, frozenset[str]]:
        return role_id, await directory.role_holders(role_id)

    apps, consented, deleted, role_pairs = await asyncio.gather(
        applications(), directory.exchange_grantees(), platform.vault.deleted_secret_names(),
        asyncio.gather(*(holders(r) for r in sorted(role_ids))))
    return TenantSnapshot(apps, consented, dict(role_pairs), deleted)


async def tenant_of(platform: Platform, entries: list[RegistryEntry]) -> TenantSnapshot:
    """The tenant side of these identities, from the listings (none without identities): the holders of every
    role a spec names (allowed or not, in both role modes), as the checks judge them."""
    if not entries:
        return TenantSnapshot({}, frozenset(), {}, frozenset())
    return await read_tenant(platform, {role.template_id for e in entries for role in e.spec.roles})


async def sweep(platform: Platform) -> SweepResult:
    """Decide which identities need a reconcile; the caller enqueues `result.messages()`."""
    result = SweepResult(sweep_id=uuid.uuid4().hex)
    found = await load_registry(platform)
    entries = found.entries
    result.identities = len(entries)
    active = [e for e in entries if e.tags.get(DECOMMISSIONING_TAG) != DECOMMISSIONING_VALUE]
    result.skipped = sorted(e.name for e in entries if e not in active)
    context = platform.reconciler.context
    snapshot = await tenant_of(platform, active)
    now = platform.reconciler.clock()
    deep_check = dt.timedelta(hours=platform.settings.deep_check_hours)
    telemetry.ensure_configured()
    expiring: list[tuple[str, float, str | None]] = []
    unindexed = found.unindexed() & {e.name for e in active}
    for entry in active:
        reasons, checked = assess(entry, snapshot, now, context, deep_check)
        if entry.name in unindexed:
            reasons = reasons or ["NotIndexed"]  # its run's lease adds it to the index
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
    if found.listed_every_secret and found.index is not None and not unindexed:
        await _record_secrets_listed(platform, found.at)
    if expiring:
        await notify_near_expiry(platform.settings, expiring)
    return result


async def _record_secrets_listed(platform: Platform, at: dt.datetime) -> None:
    """The index named every identity without a certificate that the listing of every secret found: readers can
    trust it for DEEP_CHECK_HOURS. (Not recorded while it misses one: the next sweep lists every secret again.)"""
    try:
        await LeaseStore(platform.settings).mark_secrets_listed(at)
    except StorageUnavailable as exc:
        log.warning("the identity index's marker could not be written (the next sweep lists every secret): %s",
                    exc.message)


async def read_deleted_identities(platform: Platform) -> list[str]:
    """Live identities whose certificate was deleted by hand (one paged listing of deleted
    certificates): ours by our create tags and not being decommissioned, so the queue's reconcile
    recovers them instead of nobody noticing until their jobs fail."""
    return sorted(tags[registry.IDENTITY] for name, tags in await platform.vault.deleted_certificates()
                  if started_by_us(tags, name) and tags.get(registry.STATE) != registry.DECOMMISSIONING)


def parse_message(body: str) -> dict[str, Any]:
    """A queue message from `SweepResult.messages`, or ValueError."""
    message = json.loads(body)
    if not isinstance(message, dict) or not isinstance(message.get("name"), str):
        raise ValueError("a reconcile message is a JSON object with a 'name'")
    return message


__all__ = ["RegistryEntry", "SweepResult", "TenantSnapshot", "needs_work", "sweep"]
