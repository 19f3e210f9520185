"""Observe an identity, plan, and apply the plan one small idempotent action at a time.

Nothing here remembers the last run: a crash at any point leaves state that the next run's
observation and plan complete (docs/architecture.md, "one reconciler").
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from shared import progress
from shared.adapters.directory import (
    DirectoryGateway,
    application_from_graph,
    capped_validity_months,
    key_credential_entry,
    key_credential_from_graph,
)
from shared.adapters.graph import GraphError
from shared.adapters.vault import VaultGateway
from shared.audit import AuditEvent, emit
from shared.core.checks import Facet, allowed_trusts, desired_certificate_tags
from shared.core.model import (
    OWNER_TAG,
    OWNER_TAG_VALUE,
    CertificateVersion,
    KeyCredential,
    Observed,
    ObservedCertificate,
    ObservedFederatedCredential,
    key_id_for,
)
from shared.core.planner import (
    DECOMMISSIONING_TAG,
    DECOMMISSIONING_VALUE,
    Action,
    AddFederatedCredential,
    AddKeyCredential,
    AssignRole,
    AwaitCertificate,
    CreateCertificateVersion,
    CreateServicePrincipal,
    DeleteApplication,
    DeleteCertificate,
    DeleteConnectionSecret,
    DeleteServicePrincipal,
    GrantConsent,
    MarkDecommissioning,
    Plan,
    PlanContext,
    PublishConnectionRecord,
    RemoveFederatedCredential,
    RemoveRoleAssignment,
    RetireKeyCredential,
    RevokeConsent,
    TagCertificate,
    UpsertApplication,
    VerifySignIn,
    plan_actions,
    plan_decommission,
)
from shared.core.record import ConnectionRecord, format_time
from shared.core.registry import LastRun
from shared.core.spec import FEDERATED, IdentityNames, IdentitySpec, registry_spec
from shared.errors import ExoAutomationError, ForeignObject, IdentityNotFound, NeedsOperator, Retryable, first_line
from shared.notify import CLEARED
from shared.retry import Backoff, retry

log = logging.getLogger("exo_automation.reconciler")

Clock = Callable[[], dt.datetime]
MAX_TAG = 256
PROBE_MAX_INTERVAL_SECONDS = 2.0


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass
class ActionOutcome:
    action: Action
    result: str = "Succeeded"
    detail: str = ""


@dataclass
class RunResult:
    name: str
    operation: str
    plan: Plan
    dry_run: bool = False
    executed: list[ActionOutcome] = field(default_factory=list)
    error: ExoAutomationError | None = None
    caller: str = "system"
    correlation_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    # How the identity's last recorded run ended (from the registry tags), and whether this run's
    # failure repeats one operators were already told about.
    previous: LastRun = field(default_factory=lambda: LastRun(None, None))
    repeat: bool = False

    @property
    def succeeded(self) -> bool:
        return self.error is None

    @property
    def changed(self) -> bool:
        return bool(self.executed)


class SignInProbe:
    """Proves a certificate can obtain an Exchange token (Entra validated it against the app)."""

    def __init__(self, tenant_id: str, authority_host: str, scope: str, disable_instance_discovery: bool,
                 budget_seconds: float = 120.0) -> None:
        self.tenant_id = tenant_id
        self.authority_host = authority_host
        self.scope = scope
        self.disable_instance_discovery = disable_instance_discovery
        self.budget_seconds = budget_seconds

    async def prove(self, app_id: str, pfx: bytes) -> None:
        from azure.core.exceptions import AzureError, ClientAuthenticationError
        from azure.identity.aio import CertificateCredential

        async def sign_in() -> None:
            credential = CertificateCredential(
                self.tenant_id, app_id, certificate_data=pfx, authority=self.authority_host,
                disable_instance_discovery=self.disable_instance_discovery,
            )
            try:
                async with credential:
                    await credential.get_token(self.scope)
            except ClientAuthenticationError:
                raise  # a key added seconds ago is not yet known everywhere (observed: 4-18 s): tried again
            except AzureError as exc:
                raise Retryable(f"the token service is unavailable ({first_line(exc)})",
                                reason="TokenServiceUnavailable") from exc

        # Short waits: a job can use the key as soon as Entra accepts it, and a token request is cheap.
        policy = Backoff(first=0.5, max_delay=PROBE_MAX_INTERVAL_SECONDS, budget=self.budget_seconds)
        try:
            await retry(sign_in, policy, retry_on=lambda exc: isinstance(exc, ClientAuthenticationError))
        except ClientAuthenticationError as exc:
            raise Retryable("the new certificate cannot sign in yet; it will be published once it can "
                            f"({first_line(exc)})", reason="SignInNotYetPossible") from exc


class Reconciler:
    def __init__(self, context: PlanContext, vault: VaultGateway, directory: DirectoryGateway,
                 probe: SignInProbe | None, clock: Clock = utc_now) -> None:
        self.context = context
        self.vault = vault
        self.directory = directory
        self.probe = probe
        self.clock = clock

    # -- observation -----------------------------------------------------------------------------
    async def observe(self, names: IdentityNames, *, federated: bool = False) -> tuple[Observed, dict[str, Any] | None]:
        """`federated`: the spec trusts workloads, so the app's federated credentials are listed (also
        when the registry records trusts, so that ones the spec dropped are found)."""
        try:
            return await self._observe(names, federated)
        except GraphError as exc:
            raise exc.classified() from exc

    async def _observe(self, names: IdentityNames, federated: bool) -> tuple[Observed, dict[str, Any] | None]:
        # Key Vault and Graph are read side by side; if Graph fails, the vault reads must not outlive the run.
        cert_task = asyncio.create_task(self.vault.observe_certificate(names.certificate))
        record_task = asyncio.create_task(self.vault.read_record_entry(names.connection_secret))
        try:
            return await self._observe_with(names, cert_task, record_task, federated)
        except BaseException:
            for task in (cert_task, record_task):
                task.cancel()
            await asyncio.gather(cert_task, record_task, return_exceptions=True)
            raise

    async def _observe_with(self, names: IdentityNames, cert_task: asyncio.Task[ObservedCertificate | None],
                            record_task: asyncio.Task[tuple[ConnectionRecord | None, bool, bool, dict[str, str]]],
                            federated: bool) -> tuple[Observed, dict[str, Any] | None]:
        app_raw = await self.directory.find_application(names.unique_name)
        cert = await cert_task
        observed = Observed()
        if app_raw is not None:
            # Ours only if Graph says the platform owns it: tags on the app or the certificate are
            # writable by others and prove nothing (docs/architecture.md, "Trust boundaries").
            app = application_from_graph(app_raw, owned=await self.directory.owns_application(str(app_raw["id"])))
            observed = dataclasses.replace(observed, application=app)
            if app.owned:
                sp = await self.directory.find_service_principal(app.app_id)
                if sp is not None:
                    sp_id = str(sp["id"])
                    consent, roles = await asyncio.gather(self.directory.find_consent(sp_id),
                                                          self.directory.role_assignments(sp_id))
                    observed = dataclasses.replace(observed, service_principal_id=sp_id,
                                                   consent_assignment_id=consent, role_assignments=roles)
        record, unreadable, record_owned, record_tags = await record_task
        if cert is not None and cert.owned and observed.application is not None \
                and len(observed.application.key_credentials) > 1:
            # Retirement needs to know which older keys are ours: only worth a listing when there are several.
            cert = dataclasses.replace(cert, versions=await self.vault.certificate_versions(names.certificate))
        observed = dataclasses.replace(observed, certificate=cert, record=record, record_unreadable=unreadable,
                                       record_owned=record_owned, registry_tags=record_tags)
        recorded = '"f":' in (cert.tags if cert is not None else record_tags).get("credentials", "")
        if (federated or recorded) and observed.application is not None and observed.application.owned:
            observed = dataclasses.replace(observed, federated_credentials=await self.directory.federated_credentials(
                observed.application.object_id))
        elif federated:
            observed = dataclasses.replace(observed, federated_credentials=())  # no app yet: none of them
        return observed, app_raw

    # -- operations -------------------------------------------------------------------------------
    async def reconcile(self, spec: IdentitySpec, *, force_rotate: bool = False, dry_run: bool = False,
                        operation: str = "reconcile", caller: str = "system",
                        correlation_id: str | None = None, prune_roles: bool = False) -> RunResult:
        observed, app_raw = await self.observe(spec.names, federated=bool(spec.federated))
        plan = plan_actions(spec, observed, self.clock(), self.context, force_rotate=force_rotate,
                            prune_roles=prune_roles)
        result = RunResult(spec.name, operation, plan, dry_run=dry_run, caller=caller,
                           correlation_id=correlation_id or uuid.uuid4().hex,
                           previous=LastRun.from_tags(observed.certificate.tags if observed.certificate
                                                      else observed.registry_tags))
        if plan.blocked:
            first = plan.blocked[0]
            result.error = ForeignObject(first.message) if first.reason == "ForeignObject" else \
                NeedsOperator(first.message, reason=first.reason)
            return result
        if dry_run:
            return result
        if observed.certificate is None and spec.certificate and plan.actions \
                and not isinstance(plan.actions[0], CreateCertificateVersion):
            # A new name: refuse before the first write if a soft-deleted certificate holds it. When the
            # first write is the certificate's create, its own 409 (ObjectIsDeletedButRecoverable) says so.
            await self.vault.refuse_if_deleted(spec.names.certificate)
        executor = _Executor(self, spec, observed, app_raw)
        await self._run(executor, plan.actions, result)
        if result.error is None and plan.needs_operator:
            first = plan.needs_operator[0]
            result.error = NeedsOperator(first.message, reason=first.reason)
        for refusal in (f for f in plan.needs_operator if f.facet is Facet.ROLE_POLICY):
            # Nothing was written for it, but a refused grant is a security event an operator must see.
            result.repeat = result.previous.repeats(refusal.reason, self.clock())
            await emit(AuditEvent(
                correlation_id=result.correlation_id, caller=result.caller, operation=result.operation,
                identity=result.name, action="AssignRole", facet=Facet.ROLES.value, result=refusal.reason,
                detail=refusal.message, repeat=result.repeat,
                before={"roleAssignments": dict(sorted(observed.role_assignments.items()))},
                after={"roleAssignments": dict(sorted(executor.observed.role_assignments.items()))}))
        for refusal in (f for f in plan.needs_operator if f.facet is Facet.FEDERATED_CREDENTIALS):
            # A refused trust, like a refused role: nothing written for it, and an operator must see it.
            result.repeat = result.previous.repeats(refusal.reason, self.clock())
            names = executor.snapshot()["federatedCredentials"]
            await emit(AuditEvent(
                correlation_id=result.correlation_id, caller=result.caller, operation=result.operation,
                identity=result.name, action="AddFederatedCredential", facet=refusal.facet.value,
                result=refusal.reason, detail=refusal.message, repeat=result.repeat,
                before={"federatedCredentials": sorted(c.name for c in observed.federated_credentials or ())},
                after={"federatedCredentials": names}))
        if result.error is None and result.previous.failed and result.previous.notified_at is not None:
            # The failure operators were told about is over: say so once.
            await emit(AuditEvent(
                correlation_id=result.correlation_id, caller=result.caller, operation=result.operation,
                identity=result.name, action="Reconcile", facet=Facet.CERTIFICATE.value, result=CLEARED,
                detail=f"{result.previous.result} no longer occurs"))
        # A repeated bootstrap that finds nothing to do writes nothing; a queued reconcile records
        # that it checked, which is how the sweep knows when the next deep check is due.
        if result.executed or result.error is not None or operation == "reconcile":
            await executor.record_outcome(result)
        return result

    async def decommission(self, name: str, *, dry_run: bool = False, caller: str = "system",
                           correlation_id: str | None = None) -> RunResult:
        names = IdentityNames(name)
        observed, app_raw = await self.observe(names)
        cert = observed.certificate
        nothing_there = cert is None and observed.application is None and observed.record is None \
            and not observed.record_unreadable
        if nothing_there:
            raise IdentityNotFound(f"no automation identity named {name!r}")
        # Decommission removes only what ownership proves ours; the recorded spec only names our roles.
        spec = cert.spec if cert is not None else recorded_spec_without_certificate(
            observed.registry_tags, name, observed.registry_tags.get("organization", ""))
        plan = plan_decommission(observed, spec, assign_roles=self.context.assign_roles)
        result = RunResult(name, "decommission", plan, dry_run=dry_run, caller=caller,
                           correlation_id=correlation_id or uuid.uuid4().hex)
        if plan.blocked:
            first = plan.blocked[0]
            result.error = ForeignObject(first.message) if first.reason == "ForeignObject" else \
                Retryable(first.message, reason=first.reason, retry_after=10)
            return result
        if dry_run:
            return result
        executor = _Executor(self, spec, observed, app_raw, names=names)
        await self._run(executor, plan.actions, result)
        return result

    async def _run(self, executor: _Executor, actions: tuple[Action, ...], result: RunResult) -> None:
        for action in actions:
            before = executor.snapshot()
            await progress.step(action)
            try:
                try:
                    detail = await executor.execute(action)
                except GraphError as graph_error:
                    raise graph_error.classified() from graph_error
            except ExoAutomationError as exc:
                result.executed.append(ActionOutcome(action, exc.reason, exc.message))
                await progress.step(action, result.executed[-1])
                result.error = exc
                result.repeat = result.previous.repeats(exc.reason, self.clock())
                log.warning("identity=%s action=%s result=%s detail=%s", result.name, action.kind, exc.reason,
                            exc.message)
                if action.mutating:
                    await emit(_audit_event(result, action, exc.reason, exc.message, before, executor.snapshot(),
                                            retryable=isinstance(exc, Retryable), repeat=result.repeat))
                return
            result.executed.append(ActionOutcome(action, "Succeeded", detail))
            await progress.step(action, result.executed[-1])
            log.info("identity=%s action=%s result=Succeeded detail=%s", result.name, action.kind, detail)
            if action.mutating:
                await emit(_audit_event(result, action, "Succeeded", detail, before, executor.snapshot()))


class _Executor:
    """Applies actions, keeping the ids each one produces for the ones after it."""

    def __init__(self, reconciler: Reconciler, spec: IdentitySpec | None, observed: Observed,
                 app_raw: dict[str, Any] | None, names: IdentityNames | None = None) -> None:
        self.r = reconciler
        self.spec = spec
        self.names = names or (spec.names if spec else None)
        assert self.names is not None
        self.observed = observed
        self.app_raw = app_raw
        self.fresh_principal = False  # created by this run: dependent writes may meet replication delay

    def snapshot(self) -> dict[str, Any]:
        """Ids and thumbprints as this run knows them now: the before/after of audit events."""
        o = self.observed
        cert = o.certificate.current if o.certificate else None
        return {
            "certificateVersion": cert.version if cert else None,
            "thumbprint": cert.thumbprint if cert else None,
            "state": o.certificate.tags.get(DECOMMISSIONING_TAG) if o.certificate else None,
            "appId": o.application.app_id if o.application else None,
            "applicationObjectId": o.application.object_id if o.application else None,
            "keyIds": sorted(k.key_id for k in o.application.key_credentials) if o.application else [],
            "servicePrincipalId": o.service_principal_id,
            "consentAssignmentId": o.consent_assignment_id,
            "roleAssignments": dict(sorted(o.role_assignments.items())),
            "federatedCredentials": sorted(c.name for c in o.federated_credentials or ()),
            "publishedThumbprint": o.record.thumbprint if o.record else None,
            "previousThumbprint": o.record.previous_thumbprint if o.record else None,
        }

    def _forget(self, **changes: Any) -> None:
        self.observed = dataclasses.replace(self.observed, **changes)

    @property
    def current(self) -> CertificateVersion:
        cert = self.observed.certificate
        if cert is None or cert.current is None:
            raise NeedsOperator("no certificate version to work with", reason="CertificateMissing")
        return cert.current

    def _set_current(self, version: CertificateVersion, tags: dict[str, str]) -> None:
        self.observed = dataclasses.replace(
            self.observed, certificate=ObservedCertificate(owned=True, tags=tags, current=version))

    def _resolve(self, thumbprint: str | None) -> CertificateVersion:
        current = self.current
        if thumbprint is not None and current.thumbprint != thumbprint:
            raise NeedsOperator("the certificate changed during the run", reason="ConcurrentChange")
        return current

    def _app(self) -> tuple[str, str]:
        app = self.observed.application
        if app is None:
            raise NeedsOperator("the app registration is missing", reason="ApplicationMissing")
        return app.object_id, app.app_id

    def _sp(self) -> str:
        if self.observed.service_principal_id is None:
            raise NeedsOperator("the service principal is missing", reason="ServicePrincipalMissing")
        return self.observed.service_principal_id

    async def execute(self, action: Action) -> str:
        names = self.names
        assert names is not None
        vault, directory = self.r.vault, self.r.directory
        match action:
            case CreateCertificateVersion() | AwaitCertificate():
                assert self.spec is not None
                tags = desired_certificate_tags(self.spec)
                capped = ""
                if isinstance(action, AwaitCertificate):
                    version = await vault.await_pending(names.certificate)
                else:
                    # Checked before anything is created: a tenant that refuses even one month gets nothing.
                    spec, capped = await self._within_key_lifetime_policy(self.spec)
                    version = await vault.create_certificate_version(names.certificate, spec, tags)
                self._set_current(version, tags)
                return f"version {version.version} thumbprint {version.thumbprint}{capped}"
            case TagCertificate():
                return "tags are written with the outcome"
            case UpsertApplication():
                app = await directory.upsert_application(names.unique_name, names.display_name, self.app_raw)
                self.app_raw = app
                # Created by this call, re-read as provably ours, or a repair of an app observed as ours.
                self.observed = dataclasses.replace(self.observed,
                                                    application=application_from_graph(app, owned=True))
                return f"appId {app['appId']}"
            case CreateServicePrincipal():
                _, app_id = self._app()
                sp = await directory.create_service_principal(app_id)
                self.observed = dataclasses.replace(self.observed, service_principal_id=str(sp["id"]))
                self.fresh_principal = True
                return f"servicePrincipal {sp['id']}"
            case GrantConsent():
                assignment = await directory.grant_consent(self._sp(), fresh_principal=self.fresh_principal)
                self.observed = dataclasses.replace(self.observed, consent_assignment_id=assignment)
                return f"appRoleAssignment {assignment}"
            case AddKeyCredential(thumbprint=thumbprint):
                version = self._resolve(thumbprint)
                detail = await self._add_key(version)
                registered = self.observed.application
                known = registered.key_credentials if registered is not None else ()
                if registered is not None and not any(k.matches(version.thumbprint) for k in known):
                    key = KeyCredential(key_id_for(version.thumbprint), version.not_before, version.not_after,
                                        version.thumbprint)
                    self._forget(application=dataclasses.replace(
                        registered, key_credentials=(*registered.key_credentials, key)))
                return detail
            case AddFederatedCredential(name=name, issuer=issuer, subject=subject, audience=audience):
                object_id, _ = self._app()
                credential_id = await directory.add_federated_credential(object_id, name, issuer, subject, audience)
                added = ObservedFederatedCredential(credential_id, name, issuer, subject, (audience,))
                self._forget(federated_credentials=(*(self.observed.federated_credentials or ()), added))
                return f"federatedIdentityCredential {name}"
            case RemoveFederatedCredential(credential_id=credential_id, name=name):
                object_id, _ = self._app()
                await directory.remove_federated_credential(object_id, credential_id)
                self._forget(federated_credentials=tuple(
                    c for c in self.observed.federated_credentials or () if c.credential_id != credential_id))
                return f"removed {name}"
            case AssignRole(role_id=role_id, role_name=role_name):
                assignment = await directory.assign_role(self._sp(), role_id, fresh_principal=self.fresh_principal)
                roles = {**self.observed.role_assignments, role_id: assignment}
                self.observed = dataclasses.replace(self.observed, role_assignments=roles)
                return f"{role_name}: roleAssignment {assignment}"
            case VerifySignIn(thumbprint=thumbprint):
                version = self._resolve(thumbprint)
                if self.r.probe is None:
                    return "skipped (no sign-in probe configured)"
                _, app_id = self._app()
                await self.r.probe.prove(app_id, await vault.pfx(names.certificate, version.version))
                return f"{version.thumbprint} obtained an Exchange token"
            case PublishConnectionRecord(clear_previous=clear_previous):
                record = self._record(clear_previous)
                assert self.spec is not None
                # Without a certificate the record's secret also carries the registry entry.
                registry = None if self.spec.certificate else desired_certificate_tags(self.spec)
                await vault.publish_record(names.connection_secret, record, registry)
                self.observed = dataclasses.replace(self.observed, record=record)
                return f"thumbprint {record.thumbprint} previous {record.previous_thumbprint}"
            case RetireKeyCredential(key_id=key_id, thumbprint=thumbprint):
                detail = await self._retire_key(key_id, thumbprint)
                registered = self.observed.application
                if registered is not None:
                    self._forget(application=dataclasses.replace(
                        registered, key_credentials=tuple(k for k in registered.key_credentials if k.key_id != key_id)))
                return detail
            case MarkDecommissioning():
                cert = self.observed.certificate
                assert cert is not None and cert.current is not None
                tags = {**cert.tags, DECOMMISSIONING_TAG: DECOMMISSIONING_VALUE}
                await vault.update_certificate_tags(names.certificate, cert.current.version, tags)
                self._forget(certificate=dataclasses.replace(cert, tags=tags))
                return "marked"
            case RemoveRoleAssignment(assignment_id=assignment_id, role_id=role_id):
                await directory.remove_role_assignment(assignment_id)
                self._forget(role_assignments={k: v for k, v in self.observed.role_assignments.items() if k != role_id})
                return assignment_id
            case RevokeConsent(assignment_id=assignment_id):
                await directory.revoke_consent(assignment_id)
                self._forget(consent_assignment_id=None)
                return assignment_id
            case DeleteServicePrincipal():
                await directory.delete_service_principal(self._sp())
                # Its grants and role assignments go with it.
                self._forget(service_principal_id=None, consent_assignment_id=None, role_assignments={})
                return "deleted"
            case DeleteApplication():
                object_id, _ = self._app()
                await directory.delete_application(object_id)
                self._forget(application=None)
                return "deleted"
            case DeleteConnectionSecret():
                await vault.delete_secret(names.connection_secret)
                self._forget(record=None, record_unreadable=False)
                return "soft-deleted"
            case DeleteCertificate():
                await vault.delete_certificate(names.certificate)
                return "soft-deleted"
        raise AssertionError(f"no executor for {action.kind}")

    async def _within_key_lifetime_policy(self, spec: IdentitySpec) -> tuple[IdentitySpec, str]:
        """The spec with its validity capped to the tenant's maximum key credential lifetime.

        Where the tenant's app management policy limits certificate (asymmetric key) lifetimes, Graph
        refuses a longer key credential (400 CredentialInvalidLifetimeAsPerAppPolicy), so the
        certificate is made short enough instead; Key Vault's validity is in whole months.
        """
        refused = await self.r.directory.certificate_authority_problem(self.r.vault.issuer)
        if refused is not None:
            raise NeedsOperator(
                f"the tenant's app management policy refuses this product's certificates: {refused}. Configure a "
                "certificate issuer in the vault for a CA the tenant trusts (Key Vault's integrated CAs, or your "
                "private CA) and name it in CERTIFICATE_ISSUER, or exempt this product's applications",
                reason="CertificateIssuerNotTrusted")
        limit = await self.r.directory.key_lifetime_limit()
        if limit is None:
            return spec, ""
        months = capped_validity_months(spec.validity_months, limit.max_lifetime)
        if months < 1:
            raise NeedsOperator(
                f"the tenant's app management policy allows key credentials of at most {limit.text}; certificates "
                "need at least one month (Key Vault's validity is in whole months, of up to 31 days): raise the "
                "policy's asymmetricKeyLifetime maxLifetime, or exempt this product's applications",
                reason="KeyLifetimePolicyTooShort")
        if months == spec.validity_months:
            return spec, ""
        log.warning("identity=%s validity capped from %d to %d months by the tenant's app management policy "
                    "(maxLifetime %s)", spec.name, spec.validity_months, months, limit.text)
        return (dataclasses.replace(spec, validity_months=months),
                f"; validity capped to {months} months by the tenant policy (maxLifetime {limit.text})")

    async def _add_key(self, version: CertificateVersion) -> str:
        names = self.names
        assert names is not None and self.spec is not None
        object_id, _ = self._app()
        der = version.der or await self.r.vault.certificate_der(names.certificate, version.version)
        # Always read back: a concurrent run may have added its key since the app was created.
        existing = await self.r.directory.key_credentials_with_keys(object_id)
        if any(entry.get("keyId") == key_id_for(version.thumbprint) for entry in existing):
            return "already present"
        now = self.r.clock()
        kept = []
        for entry in existing:
            if _parse(entry["endDateTime"]) > now:
                kept.append(_writable(entry))
            elif not _ours(entry):
                raise NeedsOperator(
                    f"the app has an expired key credential this product did not add ({entry.get('keyId')}); "
                    "Graph refuses any key update while it is there: remove it, then retry",
                    reason="ForeignExpiredKey")
        kept.append(key_credential_entry(self.spec.name, version, der))
        await self.r.directory.replace_key_credentials(object_id, kept)
        return f"keyId {key_id_for(version.thumbprint)}"

    async def _retire_key(self, key_id: str, thumbprint: str) -> str:
        object_id, _ = self._app()
        existing = await self.r.directory.key_credentials_with_keys(object_id)
        now = self.r.clock()
        remaining = [e for e in existing if e.get("keyId") != key_id]
        if len(remaining) == len(existing):
            return "already removed"
        if not any(_parse(e["startDateTime"]) <= now < _parse(e["endDateTime"]) for e in remaining):
            raise NeedsOperator("refusing to remove the last valid key credential", reason="LastValidKey")
        await self.r.directory.replace_key_credentials(
            object_id, [_writable(e) for e in remaining if _parse(e["endDateTime"]) > now or not _ours(e)])
        return f"removed {thumbprint}"

    def _record(self, clear_previous: bool) -> ConnectionRecord:
        names = self.names
        assert names is not None and self.spec is not None
        if not self.spec.certificate:
            _, app_id = self._app()
            return ConnectionRecord(
                identity=self.spec.name, app_id=app_id, tenant_id=self.r.context.tenant_id,
                organization=self.spec.organization, key_vault_url=self.r.context.key_vault_url,
                certificate_name="", certificate_version="", thumbprint="", not_before=None, not_after=None,
                previous_thumbprint=None, previous_certificate_version=None, updated_at=self.r.clock(),
                credential_type=FEDERATED, federated=allowed_trusts(self.spec, self.r.context))
        version = self.current
        _, app_id = self._app()
        old = self.observed.record
        previous_thumbprint = previous_version = None
        if not clear_previous and old is not None:
            if old.thumbprint != version.thumbprint and old.not_after is not None and old.not_after > self.r.clock():
                previous_thumbprint, previous_version = old.thumbprint, old.certificate_version
            elif old.thumbprint == version.thumbprint:
                previous_thumbprint, previous_version = old.previous_thumbprint, old.previous_certificate_version
        return ConnectionRecord(
            identity=self.spec.name, app_id=app_id, tenant_id=self.r.context.tenant_id,
            organization=self.spec.organization, key_vault_url=self.r.context.key_vault_url,
            certificate_name=names.certificate, certificate_version=version.version,
            thumbprint=version.thumbprint, not_before=version.not_before, not_after=version.not_after,
            previous_thumbprint=previous_thumbprint, previous_certificate_version=previous_version,
            updated_at=self.r.clock(), federated=allowed_trusts(self.spec, self.r.context),
        )

    async def record_outcome(self, result: RunResult) -> None:
        """Write the spec, ids, publication and last result to the certificate's tags.

        Key Vault is the registry (`shared.core.registry`): these tags are what one paged listing gives
        the sweep, so it can judge most drift without a read per identity.
        """
        cert = self.observed.certificate
        if self.spec is not None and not self.spec.certificate and self.observed.record is not None:
            await self._record_outcome_without_certificate(result)
            return
        if cert is None or cert.current is None or self.spec is None:
            return
        record = self.observed.record
        app = self.observed.application
        now = self.r.clock()
        streak = result.previous.next_streak(result.error.reason, now, notified=not result.repeat) \
            if result.error else ""
        optional = {
            "state": cert.tags.get("state", ""),
            "appId": app.app_id if app else "",
            "servicePrincipalId": self.observed.service_principal_id or "",
            "publishedThumbprint": record.thumbprint if record else "",
            "retireAfter": format_time(record.updated_at + self.r.context.grace)
            if record and record.previous_thumbprint else "",
            "failures": streak,
            "lastError": result.error.message[:MAX_TAG] if result.error else "",
        }
        # At most 15 tags per Key Vault object: empty values are left out (README, "Key Vault tags").
        tags = {
            **desired_certificate_tags(self.spec),
            **{k: v for k, v in optional.items() if v},
            "lastRun": format_time(now),
            "lastResult": "Succeeded" if result.error is None else result.error.reason,
        }
        try:
            await self.r.vault.update_certificate_tags(self.names.certificate if self.names else "",
                                                       cert.current.version, tags)
        except ExoAutomationError as exc:
            # The outcome is also in the logs; failing the run for a tag would hide the real result.
            log.warning("identity=%s could not record the outcome in tags: %s", result.name, exc.message)

    async def _record_outcome_without_certificate(self, result: RunResult) -> None:
        """The registry entry of an identity without a certificate: its connection secret's tags."""
        assert self.spec is not None and self.names is not None
        app = self.observed.application
        now = self.r.clock()
        streak = result.previous.next_streak(result.error.reason, now, notified=not result.repeat) \
            if result.error else ""
        optional = {
            "appId": app.app_id if app else "",
            "servicePrincipalId": self.observed.service_principal_id or "",
            "failures": streak,
            "lastError": result.error.message[:MAX_TAG] if result.error else "",
        }
        tags = {**desired_certificate_tags(self.spec), **{k: v for k, v in optional.items() if v},
                "identity": self.spec.name, "lastRun": format_time(now),
                "lastResult": "Succeeded" if result.error is None else result.error.reason}
        try:
            await self.r.vault.update_record_tags(self.names.connection_secret, tags)
        except ExoAutomationError as exc:
            log.warning("identity=%s could not record the outcome in tags: %s", result.name, exc.message)


def recorded_spec_without_certificate(tags: Mapping[str, str], name: str, organization: str) -> IdentitySpec | None:
    """The spec in a connection secret's tags, for an identity without a certificate (None: not one).
    Checked like certificate tags (`registry_spec`): they are as editable as those."""
    if tags.get(OWNER_TAG) != OWNER_TAG_VALUE or "credentials" not in tags:
        return None
    spec = registry_spec(tags, name, organization)
    return spec if not spec.certificate else None


def _audit_event(result: RunResult, action: Action, outcome: str, detail: str, before: dict[str, Any],
                 after: dict[str, Any], *, retryable: bool = False, repeat: bool = False) -> AuditEvent:
    keys = FACET_KEYS[action.facet]
    target = {k: v for k, v in dataclasses.asdict(action).items() if v is not None}
    return AuditEvent(
        correlation_id=result.correlation_id, caller=result.caller, operation=result.operation,
        identity=result.name, action=action.kind, facet=action.facet, result=outcome, detail=detail,
        retryable=retryable, repeat=repeat,
        target=target, before={k: before[k] for k in keys}, after={k: after[k] for k in keys},
    )


# The ids and thumbprints each facet's audit events report before and after the change.
FACET_KEYS: dict[str, tuple[str, ...]] = {
    "certificate": ("certificateVersion", "thumbprint", "state"),
    "application": ("appId", "applicationObjectId"),
    "servicePrincipal": ("servicePrincipalId",),
    "consent": ("consentAssignmentId",),
    "keyCredential": ("keyIds",),
    "roles": ("roleAssignments",),
    "federatedCredentials": ("federatedCredentials",),
    "connectionRecord": ("publishedThumbprint", "previousThumbprint"),
}


def _parse(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(dt.UTC)


def _ours(entry: dict[str, Any]) -> bool:
    """Added by this product: its keyId is the one derived from its own certificate."""
    thumbprint = key_credential_from_graph(entry).thumbprint
    return thumbprint is not None and entry.get("keyId") == key_id_for(thumbprint)


def _writable(entry: dict[str, Any]) -> dict[str, Any]:
    """A key credential as sent back in a PATCH: the fields Graph accepts, `key` included."""
    keep = ("keyId", "type", "usage", "key", "startDateTime", "endDateTime", "displayName", "customKeyIdentifier")
    return {k: entry[k] for k in keep if entry.get(k) is not None}


__all__ = ["ActionOutcome", "Clock", "Reconciler", "RunResult", "SignInProbe", "utc_now"]
