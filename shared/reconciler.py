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
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from shared import progress
from shared.adapters.directory import DirectoryGateway, capped_validity_months
from shared.adapters.vault import SETTLE_POLL, StartedCertificate, VaultGateway
from shared.adapters.witness import GrantWitness
from shared.audit import AuditEvent, emit
from shared.core import registry
from shared.core.checks import Facet, desired_certificate_tags
from shared.core.effects import Outcome, UnknownAction, apply, record_to_publish
from shared.core.model import (
    OWNER_TAG,
    OWNER_TAG_VALUE,
    CertificateVersion,
    Observed,
    ObservedApplication,
    ObservedCertificate,
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
from shared.core.registry import CONSENT_ASSIGNMENT, ROLE_ASSIGNMENTS, LastRun, RecordedGrants
from shared.core.spec import IdentityNames, IdentitySpec, managed_identity_refusal, registry_spec
from shared.errors import ExoAutomationError, ForeignObject, IdentityNotFound, NeedsOperator, Retryable, first_line
from shared.lease import ensure_held
from shared.notify import CLEARED
from shared.retry import Backoff, retry

log = logging.getLogger("exo_automation.reconciler")

Clock = Callable[[], dt.datetime]
# The sign-in probe asks Entra for a token every half second for the first minute (a new key is
# usually accepted within seconds to tens of seconds, and a job can use it from then on: a token
# request is cheap), then at most every 2 s.
PROBE_POLICY = Backoff(first=0.5, steady=60.0, max_delay=2.0, budget=120.0)


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

        # One credential for every attempt: the certificate is parsed and the connection to Entra opened once,
        # so attempts follow each other at the policy's pace rather than a handshake later.
        credential = CertificateCredential(
            self.tenant_id, app_id, certificate_data=pfx, authority=self.authority_host,
            disable_instance_discovery=self.disable_instance_discovery,
        )

        async def sign_in() -> None:
            try:
                await credential.get_token(self.scope)
            except ClientAuthenticationError:
                raise  # a key added seconds ago is not yet known everywhere (observed: 4-18 s): tried again
            except AzureError as exc:
                raise Retryable(f"the token service is unavailable ({first_line(exc)})",
                                reason="TokenServiceUnavailable") from exc

        try:
            async with credential:
                await retry(sign_in, dataclasses.replace(PROBE_POLICY, budget=self.budget_seconds),
                            retry_on=lambda exc: isinstance(exc, ClientAuthenticationError))
        except ClientAuthenticationError as exc:
            raise Retryable("the new certificate cannot sign in yet; it will be published once it can "
                            f"({first_line(exc)})", reason="SignInNotYetPossible") from exc


class Reconciler:
    def __init__(self, context: PlanContext, vault: VaultGateway, directory: DirectoryGateway,
                 probe: SignInProbe | None, clock: Clock = utc_now, *, witness: GrantWitness) -> None:
        self.context = context
        self.vault = vault
        self.directory = directory
        self.probe = probe
        self.clock = clock
        self.witness = witness

    # -- observation -----------------------------------------------------------------------------
    async def observe(self, names: IdentityNames, *, federated: bool = False,
                      managed_identity: str | None = None) -> Observed:
        """`federated`: the spec trusts workloads, so the app's federated credentials are listed (also
        when the registry records trusts, so that ones the spec dropped are found). `managed_identity`: the
        principal of a managedIdentity identity, read by its id with its grant and roles."""
        observed = await self._observe(names, federated)
        if managed_identity is not None:
            observed = await self.observe_managed_identity(observed, managed_identity)
        return observed

    async def observe_managed_identity(self, observed: Observed, principal_id: str) -> Observed:
        """The managed identity's service principal, read by its id; its grant and roles only when Graph says
        it is a managed identity's (servicePrincipalType, which nobody with lesser rights can set)."""
        found = await self.directory.find_managed_identity(principal_id)
        observed = dataclasses.replace(observed, managed_identity=found, managed_identity_looked_up=True)
        if found is None or not found.is_managed_identity:
            return observed
        consent, roles = await asyncio.gather(self.directory.find_consent(found.principal_id),
                                              self.directory.role_assignments(found.principal_id))
        return dataclasses.replace(observed, service_principal_id=found.principal_id, consent_assignment_id=consent,
                                   role_assignments=roles)

    async def _observe(self, names: IdentityNames, federated: bool) -> Observed:
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
                            federated: bool) -> Observed:
        # Ours only if Graph says the platform owns it: tags on the app or the certificate are
        # writable by others and prove nothing (docs/architecture.md, "Trust boundaries").
        app = await self.directory.find_application(names.unique_name)
        cert = await cert_task
        observed = Observed(application=app)
        if app is not None and app.owned:
            sp_id = await self.directory.find_service_principal(app.app_id)
            if sp_id is not None:
                consent, roles = await asyncio.gather(self.directory.find_consent(sp_id),
                                                      self.directory.role_assignments(sp_id))
                observed = dataclasses.replace(observed, service_principal_id=sp_id,
                                               consent_assignment_id=consent, role_assignments=roles)
        record, unreadable, record_owned, record_tags = await record_task
        if cert is not None and cert.owned and app is not None and len(app.key_credentials) > 1:
            # Retirement needs to know which older keys are ours: only worth a listing when there are several.
            cert = dataclasses.replace(cert, versions=await self.vault.certificate_versions(names.certificate))
        observed = dataclasses.replace(observed, certificate=cert, record=record, record_unreadable=unreadable,
                                       record_owned=record_owned, registry_tags=record_tags)
        recorded = '"f":' in (cert.tags if cert is not None else record_tags).get("credentials", "")
        if (federated or recorded) and app is not None and app.owned:
            observed = dataclasses.replace(observed, federated_credentials=await self.directory.federated_credentials(
                app.object_id))
        elif federated:
            observed = dataclasses.replace(observed, federated_credentials=())  # no app yet: none of them
        return observed

    # -- operations -------------------------------------------------------------------------------
    async def reconcile(self, spec: IdentitySpec, *, force_rotate: bool = False, dry_run: bool = False,
                        operation: str = "reconcile", caller: str = "system",
                        correlation_id: str | None = None, prune_roles: bool = False) -> RunResult:
        observed = await self.observe(spec.names, federated=bool(spec.federated),
                                      managed_identity=spec.managed_identity)
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
        if spec.managed_identity is not None and (observed.record is not None or observed.record_unreadable):
            # The witness of the grants recorded so far (a new identity starts its own: nothing to read).
            observed = dataclasses.replace(observed, grant_witness=await self.witness.read(spec.name))
        executor = _Executor(self, spec, observed)
        executor.planned = plan.actions
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
            ensure_held()
            if result.error is not None:
                await executor.settle_requested_version()
            await executor.record_outcome(result)
        return result

    async def decommission(self, name: str, *, dry_run: bool = False, caller: str = "system",
                           correlation_id: str | None = None) -> RunResult:
        names = IdentityNames(name)
        observed = await self.observe(names)
        cert = observed.certificate
        nothing_there = cert is None and observed.application is None and observed.record is None \
            and not observed.record_unreadable
        if nothing_there:
            raise IdentityNotFound(f"no automation identity named {name!r}")
        # Decommission removes only what ownership proves ours; the recorded spec only names our roles.
        spec = cert.spec if cert is not None else recorded_spec_without_certificate(
            observed.registry_tags, name, observed.registry_tags.get("organization", ""))
        if spec is not None and spec.managed_identity is not None:
            observed = await self.observe_managed_identity(observed, spec.managed_identity)
            # Its grants are removed only where the witness, which a Key Vault writer cannot write, agrees.
            observed = dataclasses.replace(observed, grant_witness=await self.witness.read(name))
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
        executor = _Executor(self, spec, observed, names=names)
        await self._run(executor, plan.actions, result)
        if result.error is None and plan.needs_operator:
            # Everything else is done; the grants not proven ours are left, named, for an operator.
            first = plan.needs_operator[0]
            result.error = NeedsOperator(first.message, reason=first.reason)
            await emit(AuditEvent(
                correlation_id=result.correlation_id, caller=result.caller, operation=result.operation,
                identity=result.name, action="Decommission", facet=first.facet.value, result=first.reason,
                detail=first.message,
                before={"consentAssignmentId": observed.consent_assignment_id,
                        "roleAssignments": dict(sorted(observed.role_assignments.items()))},
                after={"consentAssignmentId": executor.observed.consent_assignment_id,
                       "roleAssignments": dict(sorted(executor.observed.role_assignments.items()))}))
        return result

    async def _run(self, executor: _Executor, actions: tuple[Action, ...], result: RunResult) -> None:
        for action in actions:
            ensure_held()  # a run that lost its identity's lease stops before its next write (LeaseLost)
            before = executor.snapshot()
            await progress.step(action)
            try:
                detail = await executor.execute(action)
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


class _GrantRecords:
    """How an executor keeps the two records of the grants it makes to a managed identity: the registry's (tags of
    the connection secret) and the witness (its lease blob's metadata). Each is kept from its own previous state,
    never from the other's, so an edit of the tags never reaches the witness; the witness is written first."""

    r: Reconciler
    spec: IdentitySpec | None
    names: IdentityNames | None
    observed: Observed
    planned: tuple[Action, ...]
    # The witness's metadata as this run read or wrote it; None: unknown (a new identity's is written at once).
    witness_known: Mapping[str, str] | None

    @property
    def _records_grants(self) -> bool:
        return self.spec is not None and self.spec.managed_identity is not None

    def _grants(self, *, resolve: bool = False) -> RecordedGrants:
        """The grants the registry records as ours; `resolve`: as this run leaves them."""
        return self._resolved(RecordedGrants.from_tags(self.observed.registry_tags)) if resolve \
            else RecordedGrants.from_tags(self.observed.registry_tags)

    def _witnessed(self, *, resolve: bool = False) -> RecordedGrants:
        """The grants the witness records as ours (none if it has no record for this managed identity)."""
        assert self.spec is not None
        witnessed = RecordedGrants.from_witness(self.observed.grant_witness, self.spec.managed_identity) \
            or RecordedGrants()
        return self._resolved(witnessed) if resolve else witnessed

    def _resolved(self, recorded: RecordedGrants) -> RecordedGrants:
        """A record as this run leaves it, once it has observed the managed identity's grants (only of an allowed
        managed identity: else the record is kept as it is)."""
        principal = self.observed.managed_identity
        if self.spec is None or principal is None or not principal.is_managed_identity \
                or principal.principal_id != self.spec.managed_identity \
                or managed_identity_refusal(principal.principal_id, self.r.context.allowed_managed_identities):
            return recorded
        return recorded.resolved(self.observed.consent_assignment_id, self.observed.role_assignments)

    def _intending(self, recorded: RecordedGrants) -> RecordedGrants:
        return recorded.intending(any(isinstance(a, GrantConsent) for a in self.planned),
                                  [a.role_id for a in self.planned if isinstance(a, AssignRole)])

    def _intended_grants(self) -> RecordedGrants:
        return self._intending(self._grants())

    async def _witness(self, grants: RecordedGrants) -> None:
        """Write the witness (under the lease this run holds), unless it already says exactly that."""
        assert self.spec is not None and self.spec.managed_identity is not None and self.names is not None
        metadata = grants.to_witness(self.spec.managed_identity)
        if metadata == self.witness_known:
            return
        await self.r.witness.write(self.names.name, metadata)
        self.witness_known = metadata
        self.observed = dataclasses.replace(self.observed, grant_witness=metadata)

    def _registry(self) -> dict[str, str] | None:
        """The registry entry an identity without a certificate keeps on its connection secret; a managed
        identity's also records the grants made, and those this plan is about to make."""
        assert self.spec is not None
        if self.spec.certificate:
            return None
        entry = desired_certificate_tags(self.spec)
        if self._records_grants:
            entry.update(self._intended_grants().to_tags())
        return entry

    async def _record_intent(self) -> None:
        """Before the first grant to a managed identity, record that this run makes it (a crash between the
        grant and the outcome then still finds it ours): in the witness, then in the registry (the connection
        secret was published before)."""
        assert self.names is not None
        await self._witness(self._intending(self._witnessed()))
        intended = self._intended_grants()
        if intended == self._grants():
            return
        tags = {k: v for k, v in self.observed.registry_tags.items() if k not in (CONSENT_ASSIGNMENT, ROLE_ASSIGNMENTS)}
        tags.update(intended.to_tags())
        await self.r.vault.update_record_tags(self.names.connection_secret, tags)
        self.observed = dataclasses.replace(self.observed, registry_tags=tags)


class _Executor(_GrantRecords):
    """Applies actions one small handler each; `shared.core.effects.apply` keeps what each produced
    (ids, versions, the record) in `observed` for the actions after it."""

    def __init__(self, reconciler: Reconciler, spec: IdentitySpec | None, observed: Observed,
                 names: IdentityNames | None = None) -> None:
        self.r = reconciler
        self.spec = spec
        self.names = names or (spec.names if spec else None)
        assert self.names is not None
        self.observed = observed
        self.fresh_principal = False  # created by this run: dependent writes may meet replication delay
        # The app was created by this run's POST, and no key was added since: it has no keys.
        self.fresh_application = False
        self.planned: tuple[Action, ...] = ()  # the plan being applied (a managed identity's grants are intended first)
        self._started: StartedCertificate | None = None  # this run's create request, for AwaitCertificate
        self._new_pfx: tuple[str, bytes] | None = None  # (version, PKCS#12) of the version this run awaited
        # Known only once read (an existing managedIdentity identity's reconcile or decommission reads it first).
        self.witness_known = observed.grant_witness
        self._handlers: dict[type[Action], Callable[[Any], Awaitable[Outcome]]] = {
            CreateCertificateVersion: self._create_certificate, AwaitCertificate: self._await_certificate,
            TagCertificate: self._tag_certificate, MarkDecommissioning: self._mark_decommissioning,
            UpsertApplication: self._upsert_application, CreateServicePrincipal: self._create_service_principal,
            GrantConsent: self._grant_consent, AssignRole: self._assign_role,
            AddKeyCredential: self._add_key, RetireKeyCredential: self._retire_key,
            AddFederatedCredential: self._add_federated_credential,
            RemoveFederatedCredential: self._remove_federated_credential,
            VerifySignIn: self._verify_sign_in, PublishConnectionRecord: self._publish_record,
            RemoveRoleAssignment: self._remove_role_assignment, RevokeConsent: self._revoke_consent,
            DeleteServicePrincipal: self._delete_service_principal, DeleteApplication: self._delete_application,
            DeleteConnectionSecret: self._delete_connection_secret, DeleteCertificate: self._delete_certificate,
        }

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

    async def execute(self, action: Action) -> str:
        handler = self._handlers.get(type(action))
        if handler is None:
            raise UnknownAction(f"no handler for {action.kind}")
        if isinstance(action, GrantConsent | AssignRole) and self._records_grants:
            await self._record_intent()
        elif isinstance(action, PublishConnectionRecord) and self._records_grants:
            # The record's secret carries the registry entry with the intended grants: the witness says so first.
            await self._witness(self._intending(self._witnessed()))
        outcome = await handler(action)
        self.observed = apply(self.observed, action, outcome)
        return outcome.detail

    # -- what the handlers need from what the run knows --------------------------------------------
    @property
    def current(self) -> CertificateVersion:
        cert = self.observed.certificate
        if cert is None or cert.current is None:
            raise NeedsOperator("no certificate version to work with", reason="CertificateMissing")
        return cert.current

    def _resolve(self, thumbprint: str | None) -> CertificateVersion:
        current = self.current
        if thumbprint is not None and current.thumbprint != thumbprint:
            raise NeedsOperator("the certificate changed during the run", reason="ConcurrentChange")
        return current

    def _app(self) -> ObservedApplication:
        app = self.observed.application
        if app is None:
            raise NeedsOperator("the app registration is missing", reason="ApplicationMissing")
        return app

    def _sp(self) -> str:
        if self.observed.service_principal_id is None:
            raise NeedsOperator("the service principal is missing", reason="ServicePrincipalMissing")
        return self.observed.service_principal_id

    @property
    def _spec(self) -> IdentitySpec:
        assert self.spec is not None, "only decommission runs without a spec, and it creates nothing"
        return self.spec

    @property
    def _names(self) -> IdentityNames:
        assert self.names is not None
        return self.names

    # -- handlers: one service call (or a small read-modify-write) each ------------------------------
    async def _create_certificate(self, action: CreateCertificateVersion) -> Outcome:
        tags = desired_certificate_tags(self._spec)
        # Checked before anything is created: a tenant that refuses even one month gets nothing.
        spec, capped = await self._within_key_lifetime_policy(self._spec)
        self._started = await self.r.vault.start_certificate_version(self._names.certificate, spec, tags)
        if self._started.recovered is not None:
            version = self._started.recovered
            return Outcome(f"recovered version {version.version} thumbprint {version.thumbprint}{capped}",
                           version=version, tags=tags)
        return Outcome(f"requested; Key Vault is issuing it{capped}", tags=tags)

    async def _await_certificate(self, action: AwaitCertificate) -> Outcome:
        try:
            issued = await self.r.vault.await_certificate(self._names.certificate, self._started)
        finally:
            self._started = None  # awaited, or its failure is the run's: nothing left to settle
        version = issued.version
        # The private key came with the proof that the version is ours: kept for this run's sign-in proof only.
        self._new_pfx = (version.version, issued.pfx) if issued.pfx is not None else None
        return Outcome(f"version {version.version} thumbprint {version.thumbprint}", version=version,
                       tags=desired_certificate_tags(self._spec))

    async def settle_requested_version(self) -> None:
        """After a failure before the version this run requested was awaited (a Graph step made while Key
        Vault issued it): take the version if it is issued within seconds, so the outcome is recorded on it
        (a new identity has no other version to hold its registry entry). Best effort: the run's own
        error is what it reports."""
        if self._started is None or self.spec is None:
            return
        try:
            issued = await self.r.vault.await_certificate(self._names.certificate, self._started,
                                                          patience=SETTLE_POLL)
        except ExoAutomationError as exc:
            log.info("identity=%s the requested certificate version is not issued yet (%s): the next run "
                     "takes it", self.spec.name, exc.reason)
            return
        finally:
            self._started = None
        self.observed = apply(self.observed, AwaitCertificate(),
                              Outcome(version=issued.version, tags=desired_certificate_tags(self.spec)))

    async def _tag_certificate(self, action: TagCertificate) -> Outcome:
        return Outcome("tags are written with the outcome")

    async def _mark_decommissioning(self, action: MarkDecommissioning) -> Outcome:
        cert = self.observed.certificate
        if cert is None:  # an identity without a certificate: its registry entry is the connection secret's
            tags = {**self.observed.registry_tags, DECOMMISSIONING_TAG: DECOMMISSIONING_VALUE}
            await self.r.vault.update_record_tags(self._names.connection_secret, tags)
            return Outcome("marked", tags=tags)
        assert cert.current is not None
        tags = {**cert.tags, DECOMMISSIONING_TAG: DECOMMISSIONING_VALUE}
        await self.r.vault.update_certificate_tags(self._names.certificate, cert.current.version, tags)
        return Outcome("marked", tags=tags)

    async def _upsert_application(self, action: UpsertApplication) -> Outcome:
        # Created by this call, re-read as provably ours, or a repair of an app observed as ours.
        app, self.fresh_application = await self.r.directory.upsert_application(
            self._names.unique_name, self._names.display_name, self.observed.application)
        return Outcome(f"appId {app.app_id}", application=app)

    async def _create_service_principal(self, action: CreateServicePrincipal) -> Outcome:
        sp_id = await self.r.directory.create_service_principal(self._app().app_id)
        self.fresh_principal = True
        return Outcome(f"servicePrincipal {sp_id}", created_id=sp_id)

    async def _grant_consent(self, action: GrantConsent) -> Outcome:
        assignment = await self.r.directory.grant_consent(self._sp(), fresh_principal=self.fresh_principal)
        return Outcome(f"appRoleAssignment {assignment}", created_id=assignment)

    async def _assign_role(self, action: AssignRole) -> Outcome:
        assignment = await self.r.directory.assign_role(self._sp(), action.role_id,
                                                        fresh_principal=self.fresh_principal)
        return Outcome(f"{action.role_name}: roleAssignment {assignment}", created_id=assignment)

    async def _add_key(self, action: AddKeyCredential) -> Outcome:
        version = self._resolve(action.thumbprint)
        der = version.der or await self.r.vault.certificate_der(self._names.certificate, version.version)
        # An app this run's POST created moments ago, under the identity's lease, has only the keys this
        # run adds: nothing to read back before the first (later key edits read back again).
        created_empty, self.fresh_application = self.fresh_application, False
        added = await self.r.directory.add_key_credential(self._app().object_id, self._spec.name, version, der,
                                                          self.r.clock(), created_empty=created_empty)
        return Outcome(f"keyId {key_id_for(version.thumbprint)}" if added else "already present")

    async def _retire_key(self, action: RetireKeyCredential) -> Outcome:
        removed = await self.r.directory.remove_key_credential(self._app().object_id, action.key_id, self.r.clock())
        return Outcome(f"removed {action.thumbprint}" if removed else "already removed")

    async def _add_federated_credential(self, action: AddFederatedCredential) -> Outcome:
        credential_id = await self.r.directory.add_federated_credential(
            self._app().object_id, action.name, action.issuer, action.subject, action.audience)
        return Outcome(f"federatedIdentityCredential {action.name}", created_id=credential_id)

    async def _remove_federated_credential(self, action: RemoveFederatedCredential) -> Outcome:
        await self.r.directory.remove_federated_credential(self._app().object_id, action.credential_id)
        return Outcome(f"removed {action.name}")

    async def _verify_sign_in(self, action: VerifySignIn) -> Outcome:
        version = self._resolve(action.thumbprint)
        if self.r.probe is None:
            return Outcome("skipped (no sign-in probe configured)")
        kept, self._new_pfx = self._new_pfx, None
        pfx = kept[1] if kept is not None and kept[0] == version.version else None
        await self.r.probe.prove(self._app().app_id,
                                 pfx or await self.r.vault.pfx(self._names.certificate, version.version))
        return Outcome(f"{version.thumbprint} obtained an Exchange token")

    async def _publish_record(self, action: PublishConnectionRecord) -> Outcome:
        spec = self._spec
        if spec.managed_identity is not None and self.observed.managed_identity is None:
            raise NeedsOperator(f"managed identity {spec.managed_identity} was not found",
                                reason="ManagedIdentityNotFound")
        if spec.certificate:
            self._resolve(None)  # a record names a certificate version: there must be one
        if spec.managed_identity is None:
            self._app()
        record = record_to_publish(spec, self.observed, self.r.context, self.r.clock(),
                                   clear_previous=action.clear_previous)
        # Without a certificate the record's secret also carries the registry entry.
        entry = self._registry()
        await self.r.vault.publish_record(self._names.connection_secret, record, entry)
        written = {**entry, OWNER_TAG: OWNER_TAG_VALUE, registry.IDENTITY: record.identity} if entry is not None \
            else None
        return Outcome(f"thumbprint {record.thumbprint} previous {record.previous_thumbprint}", record=record,
                       tags=written)

    async def _remove_role_assignment(self, action: RemoveRoleAssignment) -> Outcome:
        await self.r.directory.remove_role_assignment(action.assignment_id)
        return Outcome(action.assignment_id)

    async def _revoke_consent(self, action: RevokeConsent) -> Outcome:
        await self.r.directory.revoke_consent(action.assignment_id)
        return Outcome(action.assignment_id)

    async def _delete_service_principal(self, action: DeleteServicePrincipal) -> Outcome:
        await self.r.directory.delete_service_principal(self._sp())
        return Outcome("deleted")

    async def _delete_application(self, action: DeleteApplication) -> Outcome:
        await self.r.directory.delete_application(self._app().object_id)
        return Outcome("deleted")

    async def _delete_connection_secret(self, action: DeleteConnectionSecret) -> Outcome:
        await self.r.vault.delete_secret(self._names.connection_secret)
        return Outcome("soft-deleted")

    async def _delete_certificate(self, action: DeleteCertificate) -> Outcome:
        await self.r.vault.delete_certificate(self._names.certificate)
        return Outcome("soft-deleted")

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
        facts = {
            registry.STATE: cert.tags.get(registry.STATE, ""),
            registry.APP_ID: app.app_id if app else "",
            registry.SERVICE_PRINCIPAL_ID: self.observed.service_principal_id or "",
            registry.PUBLISHED_THUMBPRINT: record.thumbprint if record else "",
            registry.RETIRE_AFTER: format_time(record.updated_at + self.r.context.grace)
            if record and record.previous_thumbprint else "",
            registry.FAILURES: self._streak(result, now),
        }
        tags = registry.outcome_tags(desired_certificate_tags(self.spec), facts, now, _error_of(result))
        try:
            await self.r.vault.update_certificate_tags(self.names.certificate if self.names else "",
                                                       cert.current.version, tags)
        except ExoAutomationError as exc:
            # The outcome is also in the logs; failing the run for a tag would hide the real result.
            log.warning("identity=%s could not record the outcome in tags: %s", result.name, exc.message)

    @staticmethod
    def _streak(result: RunResult, now: dt.datetime) -> str:
        if result.error is None:
            return ""
        return result.previous.next_streak(result.error.reason, now, notified=not result.repeat)

    async def _record_outcome_without_certificate(self, result: RunResult) -> None:
        """The registry entry of an identity without a certificate: its connection secret's tags."""
        assert self.spec is not None and self.names is not None
        app, principal = self.observed.application, self.observed.managed_identity
        now = self.r.clock()
        facts = {registry.STATE: self.observed.registry_tags.get(registry.STATE, ""),
                 registry.FAILURES: self._streak(result, now)}
        if self.spec.managed_identity is None:
            facts.update({registry.APP_ID: app.app_id if app else "",
                          registry.SERVICE_PRINCIPAL_ID: self.observed.service_principal_id or ""})
        else:  # its principal is in `credentials`; the tags left hold the grants we made (at most 15 tags)
            facts.update({registry.APP_ID: principal.client_id if principal else "",
                          **self._grants(resolve=True).to_tags()})
            try:
                await self._witness(self._witnessed(resolve=True))
            except ExoAutomationError as exc:  # the intents it holds still say the grants made are ours
                log.warning("identity=%s could not record the outcome in the witness: %s", result.name, exc.message)
        tags = registry.outcome_tags({**desired_certificate_tags(self.spec), registry.IDENTITY: self.spec.name},
                                     facts, now, _error_of(result))
        try:
            await self.r.vault.update_record_tags(self.names.connection_secret, tags)
        except ExoAutomationError as exc:
            log.warning("identity=%s could not record the outcome in tags: %s", result.name, exc.message)


def _error_of(result: RunResult) -> tuple[str, str] | None:
    return (result.error.reason, result.error.message) if result.error is not None else None


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


__all__ = ["ActionOutcome", "Clock", "Reconciler", "RunResult", "SignInProbe", "utc_now"]
