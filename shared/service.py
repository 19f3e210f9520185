"""The operations behind the HTTP API and the CLI, and the JSON documents they return."""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

from shared.core import registry
from shared.core.checks import Finding
from shared.core.model import CertificateVersion, KeyCredential, Observed
from shared.core.planner import Plan, plan_actions
from shared.core.record import ConnectionRecord, format_time
from shared.core.registry import RecordedGrants
from shared.core.renewal import jittered_renewal_time
from shared.core.roles import role_name
from shared.core.spec import IdentityNames, IdentitySpec, parse_spec, registry_spec, validate_name
from shared.errors import IdentityNotFound
from shared.lease import IdentityBusy, LeaseStore, ensure_held, identity_gone
from shared.platform import Platform
from shared.reconciler import RunResult, recorded_spec_without_certificate

log = logging.getLogger("exo_automation.service")

# How long a run waits for another run of the same identity by default (HTTP passes what is left
# of its inline budget, the queue a few seconds, the CLI longer).
DEFAULT_LEASE_WAIT_SECONDS = 60.0
# Recording a poisoned message waits only briefly: a run that holds the identity records its own outcome.
POISON_LEASE_WAIT_SECONDS = 5.0


@contextlib.asynccontextmanager
async def writer(platform: Platform, name: str, *, dry_run: bool, lease_wait: float,
                 on_wait: Callable[[str], None] | None = None) -> AsyncIterator[None]:
    """The one-writer rule (`shared.lease`): a mutating run holds the identity's lease; a dry run
    only reads and takes none."""
    if dry_run:
        yield
        return
    async with LeaseStore(platform.settings).hold(name, wait_seconds=lease_wait, on_wait=on_wait):
        yield


async def bootstrap(platform: Platform, body: object, *, dry_run: bool = False, caller: str = "system",
                    correlation_id: str | None = None, lease_wait: float = DEFAULT_LEASE_WAIT_SECONDS,
                    on_wait: Callable[[str], None] | None = None) -> RunResult:
    spec = parse_spec(body, platform.settings)
    # A bootstrap request is the operator's explicit word on the roles: it also removes role
    # assignments that today's allow-list no longer permits (other runs only report them).
    async with writer(platform, spec.name, dry_run=dry_run, lease_wait=lease_wait, on_wait=on_wait):
        return await platform.reconciler.reconcile(spec, dry_run=dry_run, operation="bootstrap", caller=caller,
                                                   correlation_id=correlation_id, prune_roles=True)


async def recorded_spec(platform: Platform, name: str, *, recover: bool = False) -> IdentitySpec:
    """The spec an existing identity was created with (its certificate's tags).

    `recover` (mutating runs only): a live identity's certificate deleted by hand is recovered first.
    """
    validate_name(name)
    names = IdentityNames(name)
    cert = await platform.vault.observe_certificate(names.certificate)
    if cert is None and recover and await platform.vault.recover_deleted_identity(names.certificate):
        cert = await platform.vault.observe_certificate(names.certificate)
    if cert is None:
        # An identity without a certificate keeps its registry entry on its connection secret.
        _, _, owned, tags = await platform.vault.read_record_entry(names.connection_secret)
        spec = recorded_spec_without_certificate(tags, name, platform.settings.organization) if owned else None
        if spec is not None:
            return spec
    if cert is None or not cert.owned or "identity" not in cert.tags:
        raise IdentityNotFound(f"no automation identity named {name!r}")
    return registry_spec(cert.tags, name, platform.settings.organization)


async def reconcile(platform: Platform, name: str, *, force_rotate: bool = False, dry_run: bool = False,
                    operation: str = "reconcile", caller: str = "system",
                    correlation_id: str | None = None, lease_wait: float = DEFAULT_LEASE_WAIT_SECONDS,
                    on_wait: Callable[[str], None] | None = None) -> RunResult:
    validate_name(name)
    async with writer(platform, name, dry_run=dry_run, lease_wait=lease_wait, on_wait=on_wait):
        # Inside the lease: recovering a certificate deleted by hand is a write too.
        spec = await recorded_spec(platform, name, recover=not dry_run)
        return await platform.reconciler.reconcile(spec, force_rotate=force_rotate, dry_run=dry_run,
                                                   operation=operation, caller=caller,
                                                   correlation_id=correlation_id)


async def decommission(platform: Platform, name: str, *, dry_run: bool = False, caller: str = "system",
                       correlation_id: str | None = None, lease_wait: float = DEFAULT_LEASE_WAIT_SECONDS,
                       on_wait: Callable[[str], None] | None = None) -> RunResult:
    validate_name(name)
    async with writer(platform, name, dry_run=dry_run, lease_wait=lease_wait, on_wait=on_wait):
        result = await platform.reconciler.decommission(name, dry_run=dry_run, caller=caller,
                                                        correlation_id=correlation_id)
        if not dry_run and result.error is None:
            identity_gone()  # its lease blob goes too: the registry's index (shared.lease) names it no more
        return result


async def status(platform: Platform, name: str) -> dict[str, Any]:
    spec = await recorded_spec(platform, name)
    observed = await platform.reconciler.observe(spec.names, managed_identity=spec.managed_identity)
    now = platform.reconciler.clock()
    plan = plan_actions(spec, observed, now, platform.reconciler.context)
    return status_document(spec, observed, plan, platform)


async def list_identities(platform: Platform) -> list[dict[str, Any]]:
    """Every identity in the vault, as the sweep reads the registry (`shared.sweep.load_registry`): the paged
    certificate listing, and the connection secrets of identities without a certificate (their registry entry),
    found through the lease blobs' names or by listing every secret; no request per certificate identity."""
    from shared.sweep import read_registry

    items = []
    for entry in await read_registry(platform):
        tags = entry.tags
        items.append({
            "name": entry.name,
            "credentialType": entry.spec.credential_type,
            "appId": tags.get(registry.APP_ID),
            "thumbprint": entry.thumbprint,
            "notAfter": format_time(entry.not_after) if entry.not_after else None,
            "state": tags.get(registry.STATE, "active"),
            "lastResult": tags.get(registry.LAST_RESULT),
            "lastRun": tags.get(registry.LAST_RUN),
        })
    return sorted(items, key=lambda item: item["name"])


async def record_poison(platform: Platform, name: str, *,
                        lease_wait: float = POISON_LEASE_WAIT_SECONDS) -> bool:
    """Show in the identity's status that its reconcile exhausted the host's redeliveries.

    The tags are the identity's registry, written by one run at a time: this takes the identity's
    lease like any writer. If another run holds it, nothing is written (False): that run records
    its own outcome, which is newer than the poisoned message's.
    """
    names = IdentityNames(validate_name(name))
    poisoned = {registry.LAST_RESULT: "PoisonMessage", registry.LAST_RUN: format_time(platform.reconciler.clock()),
                registry.LAST_ERROR: "the reconcile failed on every delivery; see the function logs for the cause"}
    try:
        async with writer(platform, name, dry_run=False, lease_wait=lease_wait):
            cert = await platform.vault.observe_certificate(names.certificate)
            if cert is None:
                # An identity without a certificate: its registry entry is its connection secret's tags.
                _, _, owned, tags = await platform.vault.read_record_entry(names.connection_secret)
                if not owned or recorded_spec_without_certificate(tags, name, platform.settings.organization) is None:
                    return False
                ensure_held()
                await platform.vault.update_record_tags(names.connection_secret, {**tags, **poisoned})
                return True
            if not cert.owned or cert.current is None:
                return False
            ensure_held()
            await platform.vault.update_certificate_tags(names.certificate, cert.current.version,
                                                         {**cert.tags, **poisoned})
            return True
    except IdentityBusy:
        log.info("identity=%s is being changed by another run: its poisoned message is not recorded in the tags; "
                 "that run records its own outcome", name)
        return False


def facets_document(findings: Iterable[Finding]) -> dict[str, dict[str, Any]]:
    """Each facet's state, reason and message (status, plans, the status page)."""
    return {f.facet.value: {"state": f.state.value, "reason": f.reason, "message": f.message} for f in findings}


def plan_document(plan: Plan) -> dict[str, Any]:
    return {
        "inSync": plan.in_sync,
        "facets": facets_document(plan.findings),
        "actions": [{"action": a.kind, "description": a.describe()} for a in plan.actions],
        "blocked": [{"facet": f.facet.value, "reason": f.reason, "message": f.message} for f in plan.blocked],
    }


def run_document(result: RunResult) -> dict[str, Any]:
    document: dict[str, Any] = {
        "name": result.name,
        "operation": result.operation,
        "dryRun": result.dry_run,
        "correlationId": result.correlation_id,
        "result": "Succeeded" if result.succeeded else result.error.reason if result.error else "Failed",
        "plan": plan_document(result.plan),
        "executed": [{"action": o.action.kind, "result": o.result, "detail": o.detail} for o in result.executed],
    }
    if result.error is not None:
        document["error"] = {"reason": result.error.reason, "message": result.error.message}
    return document


def status_document(spec: IdentitySpec, observed: Observed, plan: Plan, platform: Platform) -> dict[str, Any]:
    cert = observed.certificate
    current = cert.current if cert else None
    app = observed.application
    record = observed.record
    policy = platform.reconciler.context.policy
    certificate: dict[str, Any] | None = None
    if current is not None:
        renew_at = jittered_renewal_time(current.not_before, current.not_after, policy, current.thumbprint)
        certificate = {
            "name": spec.names.certificate, "version": current.version, "thumbprint": current.thumbprint,
            "notBefore": format_time(current.not_before), "notAfter": format_time(current.not_after),
            "renewalTime": format_time(renew_at),
            "daysToExpiry": round((current.not_after - platform.reconciler.clock()) / dt.timedelta(days=1), 2),
        }
    tags = cert.tags if cert else observed.registry_tags
    return {
        "name": spec.name,
        "spec": spec.to_json(),
        "appId": app.app_id if app else None,
        "applicationObjectId": app.object_id if app else None,
        "servicePrincipalId": observed.service_principal_id,
        "certificate": certificate,
        "connectionRecord": {
            "secretName": spec.names.connection_secret, "credentialType": record.credential_type,
            "thumbprint": record.thumbprint or None, "certificateVersion": record.certificate_version or None,
            "previousThumbprint": record.previous_thumbprint, "updatedAt": format_time(record.updated_at),
        } if record else None,
        "keyCredentials": [
            {"keyId": k.key_id, "startDateTime": format_time(k.start), "endDateTime": format_time(k.end),
             "managed": _managed_key(k, current, record)}
            for k in (app.key_credentials if app else ())
        ],
        "managedIdentity": _managed_identity_document(spec, observed) if spec.managed_identity else None,
        "inSync": plan.in_sync,
        "facets": plan_document(plan)["facets"],
        "pendingActions": [{"action": a.kind, "description": a.describe()} for a in plan.actions],
        "lastResult": {"result": tags.get(registry.LAST_RESULT), "at": tags.get(registry.LAST_RUN),
                       "error": tags.get(registry.LAST_ERROR) or None},
        "state": tags.get(registry.STATE, "active"),
    }


def _managed_identity_document(spec: IdentitySpec, observed: Observed) -> dict[str, Any]:
    """A managedIdentity identity's principal and the grants it holds, each marked whether this product made it
    (recorded in the registry; decommission removes those only)."""
    principal = observed.managed_identity
    ours = RecordedGrants.from_tags(observed.registry_tags)
    consent = observed.consent_assignment_id
    return {
        "principalId": spec.managed_identity,
        "clientId": principal.client_id if principal else None,
        "isManagedIdentity": principal.is_managed_identity if principal else None,
        "consent": {"assignmentId": consent, "ours": ours.owns_consent(consent)} if consent else None,
        "roleAssignments": [{"roleId": role_id, "roleName": role_name(role_id), "assignmentId": assignment,
                             "ours": ours.owns_role(role_id, assignment)}
                            for role_id, assignment in sorted(observed.role_assignments.items())],
    }


def _managed_key(key: KeyCredential, current: CertificateVersion | None, record: ConnectionRecord | None) -> bool:
    if current is not None and key.matches(current.thumbprint):
        return True
    return record is not None and record.previous_thumbprint is not None and key.matches(record.previous_thumbprint)
