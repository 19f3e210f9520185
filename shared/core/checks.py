"""One definition of drift: a check per facet over a gathered view of one identity.

Each check is a small pure function of an `IdentityView` (what Key Vault and Graph say about the
identity) that returns a `Finding`: its facet, state, `Reason` and a message, and whether the
desired state is violated. The checks run as a chain (`run_checks`): the certificate check decides
which version jobs will use, and the key and record checks judge against that.

Two sources build views. The reconciler observes one identity in full (`view_of_observed`); the
sweep builds views from its paged listings (`shared.sweep`), seeing less (the connection record
only through the published thumbprint recorded in the registry tags). Both run these same checks:
the planner maps the violated findings to actions, the sweep turns them into queue messages, and
the status page, notifications and telemetry read the findings. cert-manager's certificate
policies (a chain of small checks over gathered inputs, shared by its trigger and readiness
controllers) are the model.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from shared.core.model import (
    APP_OWNER_TAG,
    OWNER_TAG,
    OWNER_TAG_VALUE,
    CertificateVersion,
    Observed,
    ObservedApplication,
    ObservedFederatedCredential,
)
from shared.core.renewal import RenewalPolicy, jittered_renewal_time, renewal_due
from shared.core.roles import EXCHANGE_RECIPIENT_ADMINISTRATOR, DirectoryRole, policy_refusal, role_name
from shared.core.spec import (
    FEDERATED,
    MANAGED_IDENTITY,
    FederatedTrust,
    IdentitySpec,
    federation_refusal,
    managed_identity_refusal,
)


class Facet(StrEnum):
    CERTIFICATE = "certificate"
    APPLICATION = "application"
    SERVICE_PRINCIPAL = "servicePrincipal"
    CONSENT = "consent"
    KEY_CREDENTIAL = "keyCredential"
    ROLES = "roles"
    # Roles the spec asks for (or the service principal holds) that today's policy refuses: shown
    # apart from `roles`, so a refused role is never mistaken for one that is merely missing.
    ROLE_POLICY = "rolePolicy"
    CONNECTION_RECORD = "connectionRecord"
    # The app's federated identity credentials (issue #16): only for identities that trust workloads.
    FEDERATED_CREDENTIALS = "federatedCredentials"
    # A managedIdentity identity's own principal (issue #16): allowed, and a managed identity in Graph.
    MANAGED_IDENTITY = "managedIdentity"


class State(StrEnum):
    OK = "ok"
    MISSING = "missing"
    DRIFT = "drift"
    DUE = "due"
    PENDING = "pending"
    BLOCKED = "blocked"
    REFUSED = "refused"


class Reason(StrEnum):
    """Every reason a check gives, in status documents, queue messages, metrics and notifications."""

    CERTIFICATE_PENDING = "CertificatePending"
    CERTIFICATE_MISSING = "CertificateMissing"
    ROTATION_REQUESTED = "RotationRequested"
    CERTIFICATE_NOT_VALID = "CertificateNotValid"
    RENEWAL_DUE = "RenewalDue"
    CERTIFICATE_VALID = "CertificateValid"
    TAGS_DRIFT = "TagsDrift"
    APPLICATION_MISSING = "ApplicationMissing"
    APPLICATION_DRIFT = "ApplicationDrift"
    APPLICATION_PRESENT = "ApplicationPresent"
    SERVICE_PRINCIPAL_MISSING = "ServicePrincipalMissing"
    SERVICE_PRINCIPAL_PRESENT = "ServicePrincipalPresent"
    CONSENT_MISSING = "ConsentMissing"
    CONSENT_GRANTED = "ConsentGranted"
    KEY_MISSING = "KeyMissing"
    KEY_REGISTERED = "KeyRegistered"
    ROLE_REFUSED = "RoleRefused"
    ROLE_NO_LONGER_ALLOWED = "RoleNoLongerAllowed"
    ROLES_ALLOWED = "RolesAllowed"
    ROLE_MISSING = "RoleMissing"
    ROLE_NOT_ASSIGNED = "RoleNotAssigned"  # verify-only role mode: an administrator must assign it
    ROLES_ASSIGNED = "RolesAssigned"
    RECORD_MISSING = "RecordMissing"
    RECORD_UNREADABLE = "RecordUnreadable"
    RECORD_DELETED = "RecordDeleted"
    RECORD_STALE = "RecordStale"  # jobs would get another certificate than the current one
    RECORD_DRIFT = "RecordDrift"  # same certificate, other ids (app, organization, tenant, vault)
    RECORD_CURRENT = "RecordCurrent"
    RETIREMENT_DUE = "RetirementDue"
    FEDERATED_CREDENTIAL_MISSING = "FederatedCredentialMissing"
    FEDERATED_CREDENTIAL_STALE = "FederatedCredentialStale"  # ours, trusting a workload the spec no longer names
    FEDERATED_CREDENTIALS_PRESENT = "FederatedCredentialsPresent"
    FEDERATION_REFUSED = "FederationRefused"  # an issuer or managed identity today's allow-lists refuse
    MANAGED_IDENTITY_REFUSED = "ManagedIdentityRefused"  # not on today's ALLOWED_MANAGED_IDENTITIES
    MANAGED_IDENTITY_NOT_FOUND = "ManagedIdentityNotFound"  # no such service principal, or not a managed identity
    MANAGED_IDENTITY_PRESENT = "ManagedIdentityPresent"


# Reasons an operator must act on: repeating the run does not change them.
NEEDS_OPERATOR = frozenset({Reason.ROLE_REFUSED, Reason.ROLE_NO_LONGER_ALLOWED, Reason.ROLE_NOT_ASSIGNED,
                            Reason.FEDERATION_REFUSED, Reason.MANAGED_IDENTITY_REFUSED,
                            Reason.MANAGED_IDENTITY_NOT_FOUND})


@dataclass(frozen=True)
class Finding:
    facet: Facet
    state: State
    reason: str
    message: str

    @property
    def violated(self) -> bool:
        return self.state is not State.OK


@dataclass(frozen=True)
class CheckContext:
    """The platform's policy, as the planner's PlanContext carries it."""

    tenant_id: str
    key_vault_url: str
    policy: RenewalPolicy = field(default_factory=RenewalPolicy)
    grace: dt.timedelta = dt.timedelta(hours=24)
    assign_roles: bool = True
    allowed_roles: frozenset[str] = frozenset({EXCHANGE_RECIPIENT_ADMINISTRATOR.template_id})
    # ALLOWED_FEDERATION_ISSUERS (or this tenant's Entra ID issuer) and ALLOWED_MANAGED_IDENTITIES.
    federation_issuers: frozenset[str] = frozenset()
    entra_issuer: str = ""
    allowed_managed_identities: frozenset[str] = frozenset()


@dataclass(frozen=True)
class IdentityView:
    """What is known about one identity, from a full observation or from the sweep's listings."""

    spec: IdentitySpec
    tags: Mapping[str, str]
    current: CertificateVersion | None
    pending: bool
    application: ObservedApplication | None
    service_principal: bool
    consent: bool
    held_roles: frozenset[str]  # role template ids the service principal holds at directory scope
    # The connection record as far as the source sees it: the sweep knows only the thumbprint the
    # registry says was published (None: it cannot judge the record's other fields).
    record_present: bool
    record_unreadable: bool
    record_deleted: bool
    published_thumbprint: str | None
    published_version: str | None
    record_ids_match: bool | None
    retire_after: dt.datetime | None  # when the previous key's overlap ends, if there is one
    # The app's federated identity credentials (None: not seen; the sweep's listings do not show
    # them, so they are judged by the deep check only), and whether the record names the spec's.
    federated: tuple[ObservedFederatedCredential, ...] | None = None
    record_federated_match: bool | None = None
    record_credential_type: str | None = None
    # A managedIdentity identity's principal: found in Graph as a managed identity (None: not seen).
    managed_identity_found: bool | None = None


def desired_certificate_tags(spec: IdentitySpec) -> dict[str, str]:
    return {OWNER_TAG: OWNER_TAG_VALUE, **spec.to_tags()}


def view_of_observed(spec: IdentitySpec, observed: Observed, context: CheckContext) -> IdentityView:
    cert, record, principal = observed.certificate, observed.record, observed.managed_identity
    signs_in_as = principal.client_id if spec.managed_identity is not None and principal is not None \
        else observed.application.app_id if observed.application else None
    ids_match = record is not None and record.organization == spec.organization \
        and record.tenant_id == context.tenant_id and record.key_vault_url == context.key_vault_url \
        and record.app_id == signs_in_as \
        and record.managed_identity_client_id == (signs_in_as if spec.managed_identity is not None else None)
    return IdentityView(
        spec=spec, tags=cert.tags if cert else {}, current=cert.current if cert else None,
        pending=bool(cert and cert.pending), application=observed.application,
        service_principal=observed.service_principal_id is not None,
        consent=observed.consent_assignment_id is not None,
        held_roles=frozenset(observed.role_assignments) if observed.service_principal_id else frozenset(),
        record_present=record is not None, record_unreadable=observed.record_unreadable, record_deleted=False,
        published_thumbprint=record.thumbprint if record else None,
        published_version=record.certificate_version if record else None,
        record_ids_match=ids_match if record is not None else None,
        retire_after=record.updated_at + context.grace if record is not None and record.previous_thumbprint
        else None,
        federated=observed.federated_credentials,
        record_federated_match=record.federated == allowed_trusts(spec, context) if record is not None else None,
        record_credential_type=record.credential_type if record is not None else None,
        managed_identity_found=(principal is not None and principal.is_managed_identity
                                and principal.principal_id == spec.managed_identity)
        if observed.managed_identity_looked_up else None,
    )


# -- the checks, in chain order ---------------------------------------------------------------------
def check_certificate(view: IdentityView, now: dt.datetime, context: CheckContext, *,
                      force_rotate: bool = False) -> Finding:
    target = view.current
    if view.pending:
        return Finding(Facet.CERTIFICATE, State.PENDING, Reason.CERTIFICATE_PENDING,
                       "a certificate operation is in progress in Key Vault")
    if target is None:
        return Finding(Facet.CERTIFICATE, State.MISSING, Reason.CERTIFICATE_MISSING, "no certificate yet")
    if force_rotate:
        return Finding(Facet.CERTIFICATE, State.DUE, Reason.ROTATION_REQUESTED, "rotation was requested")
    if not target.valid_at(now):
        return Finding(Facet.CERTIFICATE, State.DUE, Reason.CERTIFICATE_NOT_VALID,
                       f"the current version is not valid now (valid {target.not_before:%Y-%m-%d} "
                       f"to {target.not_after:%Y-%m-%d}, enabled={target.enabled})")
    if renewal_due(now, target.not_before, target.not_after, context.policy, target.thumbprint):
        when = jittered_renewal_time(target.not_before, target.not_after, context.policy, target.thumbprint)
        return Finding(Facet.CERTIFICATE, State.DUE, Reason.RENEWAL_DUE,
                       f"renewal was due at {when:%Y-%m-%dT%H:%M:%SZ}")
    return Finding(Facet.CERTIFICATE, State.OK, Reason.CERTIFICATE_VALID,
                   f"valid until {target.not_after:%Y-%m-%dT%H:%M:%SZ}")


def check_tags(view: IdentityView) -> Finding:
    wanted = desired_certificate_tags(view.spec)
    if any(view.tags.get(k) != v for k, v in wanted.items()):
        return Finding(Facet.CERTIFICATE, State.DRIFT, Reason.TAGS_DRIFT,
                       "the certificate's tags no longer record the identity's spec")
    return Finding(Facet.CERTIFICATE, State.OK, Reason.CERTIFICATE_VALID, "tags record the spec")


def check_application(view: IdentityView) -> Finding:
    app = view.application
    if app is None:
        return Finding(Facet.APPLICATION, State.MISSING, Reason.APPLICATION_MISSING, "no app registration")
    if not app.declares_exchange_permission or app.sign_in_audience != "AzureADMyOrg" or APP_OWNER_TAG not in app.tags:
        return Finding(Facet.APPLICATION, State.DRIFT, Reason.APPLICATION_DRIFT,
                       "the app no longer declares Exchange.ManageAsApp, is not single-tenant, or lost its tag")
    return Finding(Facet.APPLICATION, State.OK, Reason.APPLICATION_PRESENT, f"appId {app.app_id}")


def check_service_principal(view: IdentityView) -> Finding:
    if not view.service_principal:
        return Finding(Facet.SERVICE_PRINCIPAL, State.MISSING, Reason.SERVICE_PRINCIPAL_MISSING,
                       "no service principal")
    return Finding(Facet.SERVICE_PRINCIPAL, State.OK, Reason.SERVICE_PRINCIPAL_PRESENT, "present")


def check_consent(view: IdentityView) -> Finding:
    if not view.consent:
        return Finding(Facet.CONSENT, State.MISSING, Reason.CONSENT_MISSING, "Exchange.ManageAsApp is not granted")
    return Finding(Facet.CONSENT, State.OK, Reason.CONSENT_GRANTED, "Exchange.ManageAsApp granted")


def check_key(view: IdentityView, target: CertificateVersion | None) -> Finding:
    """`target`: the version jobs will use after this run (None: one this run creates)."""
    app = view.application
    if target is not None and app is not None and any(k.matches(target.thumbprint) for k in app.key_credentials):
        return Finding(Facet.KEY_CREDENTIAL, State.OK, Reason.KEY_REGISTERED,
                       "the current certificate is a key credential of the app")
    return Finding(Facet.KEY_CREDENTIAL, State.MISSING, Reason.KEY_MISSING,
                   "the certificate jobs should use is not on the app")


def grantable_roles(spec: IdentitySpec, context: CheckContext) -> tuple[list[DirectoryRole], list[str]]:
    """The spec's roles today's policy allows, and why the others are refused."""
    grantable, refused = [], []
    for role in spec.roles:
        reason = policy_refusal(role, context.allowed_roles)
        if reason is None:
            grantable.append(role)
        else:
            refused.append(reason)
    return grantable, refused


def disallowed_held_roles(view: IdentityView, context: CheckContext) -> list[str]:
    """Roles the service principal holds that today's policy refuses (assign mode: maybe ours). None for a
    managed identity: the roles it holds beside ours are its owner's business, never judged or pruned here."""
    if not context.assign_roles or view.spec.managed_identity is not None:
        return []
    return sorted(r for r in view.held_roles
                  if policy_refusal(DirectoryRole(r, role_name(r)), context.allowed_roles) is not None)


def check_role_policy(view: IdentityView, context: CheckContext) -> Finding:
    """Policy is re-checked on every run: the spec read back from tags is untrusted input."""
    _, refused = grantable_roles(view.spec, context)
    problems: list[tuple[State, Reason, str]] = []
    if refused:
        problems.append((State.REFUSED, Reason.ROLE_REFUSED, "not granted: " + "; ".join(refused)))
    held = disallowed_held_roles(view, context)
    if held:
        problems.append((State.DRIFT, Reason.ROLE_NO_LONGER_ALLOWED,
                         "the service principal holds " + ", ".join(role_name(r) for r in held)
                         + ", which today's policy does not allow; repeat the bootstrap request "
                         "(POST /api/identities) to remove it, or decommission the identity"))
    if not problems:
        return Finding(Facet.ROLE_POLICY, State.OK, Reason.ROLES_ALLOWED,
                       "every requested role is on today's allow-list")
    # One finding per facet (status documents key facets by name): the first problem names it.
    state, reason, _ = problems[0]
    return Finding(Facet.ROLE_POLICY, state, reason, "; ".join(m for _, _, m in problems))


def check_roles(view: IdentityView, context: CheckContext) -> Finding:
    grantable, _ = grantable_roles(view.spec, context)
    missing = [r for r in grantable if r.template_id not in view.held_roles]
    if missing and not context.assign_roles:
        return Finding(Facet.ROLES, State.MISSING, Reason.ROLE_NOT_ASSIGNED,
                       "verify-only role mode: an administrator must assign "
                       + ", ".join(r.name for r in missing) + " to the app's service principal")
    if missing:
        return Finding(Facet.ROLES, State.MISSING, Reason.ROLE_MISSING,
                       "not assigned: " + ", ".join(r.name for r in missing))
    return Finding(Facet.ROLES, State.OK, Reason.ROLES_ASSIGNED, ", ".join(r.name for r in grantable))


_STALE = "jobs do not see the current connection parameters"


def _record_absent(view: IdentityView) -> Finding | None:
    if view.record_deleted:
        return Finding(Facet.CONNECTION_RECORD, State.MISSING, Reason.RECORD_DELETED,
                       "the connection record was deleted (it is recoverable)")
    if not view.record_present:
        reason = Reason.RECORD_UNREADABLE if view.record_unreadable else Reason.RECORD_MISSING
        return Finding(Facet.CONNECTION_RECORD, State.MISSING, reason, _STALE)
    return None


def check_record(view: IdentityView, target: CertificateVersion | None) -> Finding:
    """`target`: the version jobs will use after this run (None: one this run creates)."""
    absent = _record_absent(view)
    if absent is not None:
        return absent
    if target is None or view.published_thumbprint != target.thumbprint \
            or (view.published_version is not None and view.published_version != target.version):
        return Finding(Facet.CONNECTION_RECORD, State.DRIFT, Reason.RECORD_STALE, _STALE)
    if view.record_ids_match is False or view.record_federated_match is False:
        return Finding(Facet.CONNECTION_RECORD, State.DRIFT, Reason.RECORD_DRIFT, _STALE)
    return Finding(Facet.CONNECTION_RECORD, State.OK, Reason.RECORD_CURRENT, f"published {view.published_thumbprint}")


def ours(credential: ObservedFederatedCredential, identity: str) -> FederatedTrust | None:
    """The trust a federated credential on the app stands for, if this product added it: its name is the
    one we derive from its own issuer, subject and audience (a foreign credential keeps its name)."""
    if len(credential.audiences) != 1:
        return None
    trust = FederatedTrust(credential.issuer, credential.subject, credential.audiences[0])
    return trust if credential.name == trust.credential_name(identity) else None


@dataclass(frozen=True)
class FederatedDiff:
    """What the app's federated credentials lack and have too many of, against the spec and policy."""

    missing: tuple[FederatedTrust, ...]
    stale: tuple[ObservedFederatedCredential, ...]  # ours, trusting a workload the spec no longer names
    refused: tuple[str, ...]


def allowed_trusts(spec: IdentitySpec, context: CheckContext) -> tuple[FederatedTrust, ...]:
    """The spec's federated trusts today's allow-lists allow (what the app gets and the record names)."""
    return tuple(t for t in spec.federated if federation_refusal(
        t, context.federation_issuers, context.allowed_managed_identities, context.entra_issuer) is None)


def federated_diff(view: IdentityView, context: CheckContext) -> FederatedDiff | None:
    """None: nothing to judge (no trust wanted or seen, or the source cannot see the credentials)."""
    if view.federated is None or (not view.spec.federated
                                  and not any(ours(c, view.spec.name) for c in view.federated)):
        return None  # foreign credentials on the app are not ours to judge
    allowed, refused = [], []
    for trust in view.spec.federated:
        refusal = federation_refusal(trust, context.federation_issuers, context.allowed_managed_identities,
                                     context.entra_issuer)
        (refused.append(refusal) if refusal is not None else allowed.append(trust))
    present = {ours(c, view.spec.name) for c in view.federated} - {None}
    missing = tuple(t for t in allowed if t not in present)
    # A trust today's policy refuses is removed as well: the allow-lists are re-checked on every run.
    stale = tuple(c for c in view.federated if (t := ours(c, view.spec.name)) is not None and t not in allowed)
    return FederatedDiff(missing, stale, tuple(refused))


def check_federated(view: IdentityView, context: CheckContext) -> Finding | None:
    diff = federated_diff(view, context)
    if diff is None:
        return None
    if diff.refused:
        return Finding(Facet.FEDERATED_CREDENTIALS, State.REFUSED, Reason.FEDERATION_REFUSED,
                       "not trusted: " + "; ".join(diff.refused))
    if diff.missing:
        return Finding(Facet.FEDERATED_CREDENTIALS, State.MISSING, Reason.FEDERATED_CREDENTIAL_MISSING,
                       "the app does not trust " + ", ".join(f"{t.issuer} {t.subject}" for t in diff.missing))
    if diff.stale:
        return Finding(Facet.FEDERATED_CREDENTIALS, State.DRIFT, Reason.FEDERATED_CREDENTIAL_STALE,
                       "the app trusts workloads the spec no longer names: " + ", ".join(c.name for c in diff.stale))
    return Finding(Facet.FEDERATED_CREDENTIALS, State.OK, Reason.FEDERATED_CREDENTIALS_PRESENT,
                   f"{len(view.spec.federated)} workload(s) trusted")


def check_record_without_certificate(view: IdentityView) -> Finding:
    """The record of an identity without a certificate: its kind, ids and trusts (no thumbprint to publish)."""
    absent = _record_absent(view)
    if absent is not None:
        return absent
    kind = MANAGED_IDENTITY if view.spec.managed_identity is not None else FEDERATED
    if view.record_credential_type not in (None, kind) or view.record_ids_match is False \
            or view.record_federated_match is False:
        return Finding(Facet.CONNECTION_RECORD, State.DRIFT, Reason.RECORD_DRIFT, _STALE)
    return Finding(Facet.CONNECTION_RECORD, State.OK, Reason.RECORD_CURRENT, f"published ({kind})")


def check_managed_identity(view: IdentityView, context: CheckContext) -> Finding:
    """A managedIdentity identity's principal: on today's allow-list (the tags naming it are untrusted), and
    a managed identity's service principal in Graph (a source that cannot see it judges the allow-list only)."""
    principal = view.spec.managed_identity or ""
    refusal = managed_identity_refusal(principal, context.allowed_managed_identities)
    if refusal is not None:
        return Finding(Facet.MANAGED_IDENTITY, State.REFUSED, Reason.MANAGED_IDENTITY_REFUSED,
                       f"nothing is granted: {refusal}")
    if view.managed_identity_found is False:
        return Finding(Facet.MANAGED_IDENTITY, State.MISSING, Reason.MANAGED_IDENTITY_NOT_FOUND,
                       f"{principal} is not the principal (object) id of a managed identity's service principal "
                       "in this tenant; nothing is granted")
    return Finding(Facet.MANAGED_IDENTITY, State.OK, Reason.MANAGED_IDENTITY_PRESENT, f"principal {principal}")


def check_retirement(view: IdentityView, now: dt.datetime) -> Finding | None:
    """The previous key's overlap is over (None: nothing to retire, or not yet)."""
    if view.retire_after is not None and now >= view.retire_after:
        return Finding(Facet.KEY_CREDENTIAL, State.DUE, Reason.RETIREMENT_DUE,
                       "the previous key's grace period is over")
    return None


@dataclass(frozen=True)
class CheckResult:
    """The chain's findings, and what the certificate check decided for the checks after it."""

    findings: tuple[Finding, ...]
    creates_version: bool
    target: CertificateVersion | None  # the version jobs use after this run; None if one is created

    @property
    def violations(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.violated)

    def reasons(self) -> list[str]:
        """Why work is needed. A key or record that is missing only because a new version is
        coming is part of that rotation, not a reason of its own."""
        follows = {Reason.KEY_MISSING, Reason.RECORD_STALE} if self.creates_version else set()
        return [str(f.reason) for f in self.violations if f.reason not in follows]


def run_checks(view: IdentityView, now: dt.datetime, context: CheckContext, *,
               force_rotate: bool = False) -> CheckResult:
    if view.spec.managed_identity is not None:
        # No app and no certificate: the principal, then the record (published before the grants, so the
        # registry entry that records them exists), the grant and the roles. Nothing is judged, and nothing
        # granted, for a principal that is refused or not a managed identity.
        principal = check_managed_identity(view, context)
        if principal.violated:
            return CheckResult((principal,), False, None)
        return CheckResult((principal, check_record_without_certificate(view), check_consent(view),
                            check_role_policy(view, context), check_roles(view, context)), False, None)
    if not view.spec.certificate:
        # No certificate to judge, key to register or retire: the app, its grants, trusts and record.
        chain = [check_application(view), check_service_principal(view), check_consent(view),
                 check_federated(view, context), check_role_policy(view, context), check_roles(view, context),
                 check_record_without_certificate(view)]
        return CheckResult(tuple(f for f in chain if f is not None), False, None)
    certificate = check_certificate(view, now, context, force_rotate=force_rotate)
    creates_version = certificate.state is not State.OK
    target = None if creates_version else view.current
    findings = [certificate]
    tags = check_tags(view)
    if tags.violated and not creates_version:  # a new version is created with the right tags
        findings.append(tags)
    findings += [check_application(view), check_service_principal(view), check_consent(view),
                 check_key(view, target)]
    federated = check_federated(view, context)
    if federated is not None:
        findings.append(federated)
    findings += [check_role_policy(view, context), check_roles(view, context), check_record(view, target)]
    if not any(f.violated for f in findings if f.facet is Facet.CONNECTION_RECORD):
        retirement = check_retirement(view, now)
        if retirement is not None:
            findings.append(retirement)
    return CheckResult(tuple(findings), creates_version, target)
