"""Turn (spec, observed state, now) into an ordered plan of small idempotent actions.

Pure: no I/O, no clock of its own. One check per facet produces a `Finding`; the plan is the
actions those findings call for, in the order that keeps credential continuity (docs/architecture.md):
certificate → application → service principal → consent → key credential → roles → sign-in
proof → connection record → retirement of the previous key.

Actions that depend on a certificate version created earlier in the same plan name it with
`thumbprint=None` ("the version this plan creates"); the executor resolves it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass, field
from enum import StrEnum
from typing import ClassVar

from .model import APP_OWNER_TAG, OWNER_TAG, OWNER_TAG_VALUE, Observed
from .renewal import RenewalPolicy, jittered_renewal_time, renewal_due
from .spec import IdentitySpec


class Facet(StrEnum):
    CERTIFICATE = "certificate"
    APPLICATION = "application"
    SERVICE_PRINCIPAL = "servicePrincipal"
    CONSENT = "consent"
    KEY_CREDENTIAL = "keyCredential"
    ROLES = "roles"
    CONNECTION_RECORD = "connectionRecord"


class State(StrEnum):
    OK = "ok"
    MISSING = "missing"
    DRIFT = "drift"
    DUE = "due"
    PENDING = "pending"
    BLOCKED = "blocked"


@dataclass(frozen=True)
class Finding:
    facet: Facet
    state: State
    reason: str
    message: str


# -- actions -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Action:
    # The facet an action changes, whether it changes anything (audit events are per change), and
    # how plans and dry runs describe it (formatted with the action's fields).
    facet: ClassVar[str] = "certificate"
    mutating: ClassVar[bool] = True
    template: ClassVar[str] = ""

    @property
    def kind(self) -> str:
        return type(self).__name__

    def describe(self) -> str:
        return self.template.format(**dataclasses.asdict(self)) if self.template else self.kind


@dataclass(frozen=True)
class MarkDecommissioning(Action):
    template: ClassVar[str] = "mark the certificate as being decommissioned, so no sweep recreates what is removed"


@dataclass(frozen=True)
class CreateCertificateVersion(Action):
    reason: str
    template: ClassVar[str] = "create a new certificate version in Key Vault ({reason})"


@dataclass(frozen=True)
class AwaitCertificate(Action):
    facet: ClassVar[str] = "certificate"
    mutating: ClassVar[bool] = False
    template: ClassVar[str] = "wait for the certificate operation already in progress in Key Vault"


@dataclass(frozen=True)
class TagCertificate(Action):
    facet: ClassVar[str] = "certificate"
    mutating: ClassVar[bool] = False
    template: ClassVar[str] = "record the identity's spec and ids in the certificate's tags"


@dataclass(frozen=True)
class UpsertApplication(Action):
    facet: ClassVar[str] = "application"
    reason: str
    template: ClassVar[str] = "create or repair the app registration ({reason})"


@dataclass(frozen=True)
class CreateServicePrincipal(Action):
    facet: ClassVar[str] = "servicePrincipal"
    template: ClassVar[str] = "create the app's service principal"


@dataclass(frozen=True)
class GrantConsent(Action):
    facet: ClassVar[str] = "consent"
    template: ClassVar[str] = "grant admin consent for Exchange.ManageAsApp (app-role assignment)"


@dataclass(frozen=True)
class AddKeyCredential(Action):
    facet: ClassVar[str] = "keyCredential"
    thumbprint: str | None  # None: the version created earlier in this plan

    def describe(self) -> str:
        which = self.thumbprint or "the new certificate version"
        return f"add {which} to the app's key credentials"


@dataclass(frozen=True)
class AssignRole(Action):
    facet: ClassVar[str] = "roles"
    role_id: str
    role_name: str
    template: ClassVar[str] = "assign the directory role {role_name}"


@dataclass(frozen=True)
class VerifySignIn(Action):
    facet: ClassVar[str] = "connectionRecord"
    mutating: ClassVar[bool] = False
    thumbprint: str | None
    template: ClassVar[str] = "prove the certificate can obtain an Exchange token before it is published"


@dataclass(frozen=True)
class PublishConnectionRecord(Action):
    facet: ClassVar[str] = "connectionRecord"
    reason: str
    clear_previous: bool = False
    template: ClassVar[str] = "publish the connection record ({reason})"


@dataclass(frozen=True)
class RetireKeyCredential(Action):
    facet: ClassVar[str] = "keyCredential"
    key_id: str
    thumbprint: str
    template: ClassVar[str] = "remove the retired key credential {thumbprint} from the app"


@dataclass(frozen=True)
class RemoveRoleAssignment(Action):
    facet: ClassVar[str] = "roles"
    assignment_id: str
    role_id: str
    template: ClassVar[str] = "remove the role assignment {assignment_id}"


@dataclass(frozen=True)
class RevokeConsent(Action):
    facet: ClassVar[str] = "consent"
    assignment_id: str
    template: ClassVar[str] = "remove the Exchange.ManageAsApp grant"


@dataclass(frozen=True)
class DeleteServicePrincipal(Action):
    facet: ClassVar[str] = "servicePrincipal"
    template: ClassVar[str] = "delete the service principal"


@dataclass(frozen=True)
class DeleteApplication(Action):
    facet: ClassVar[str] = "application"
    template: ClassVar[str] = "delete the app registration"


@dataclass(frozen=True)
class DeleteConnectionSecret(Action):
    facet: ClassVar[str] = "connectionRecord"
    template: ClassVar[str] = "soft-delete the connection secret"


@dataclass(frozen=True)
class DeleteCertificate(Action):
    template: ClassVar[str] = "soft-delete the certificate (all versions)"


@dataclass(frozen=True)
class Plan:
    findings: tuple[Finding, ...]
    actions: tuple[Action, ...]
    blocked: tuple[Finding, ...] = ()
    # Drift the product reports but may not repair (verify-only role mode): the run then fails
    # with NeedsOperator after doing everything else.
    needs_operator: tuple[Finding, ...] = ()

    @property
    def in_sync(self) -> bool:
        return not self.actions and not self.blocked and not self.needs_operator


@dataclass(frozen=True)
class PlanContext:
    tenant_id: str
    key_vault_url: str
    policy: RenewalPolicy = field(default_factory=RenewalPolicy)
    grace: dt.timedelta = dt.timedelta(hours=24)
    verify_sign_in: bool = True
    assign_roles: bool = True  # False: verify-only role mode (an administrator assigns roles)


DECOMMISSIONING_TAG = "state"
DECOMMISSIONING_VALUE = "decommissioning"


def desired_certificate_tags(spec: IdentitySpec) -> dict[str, str]:
    return {OWNER_TAG: OWNER_TAG_VALUE, **spec.to_tags()}


def _ownership_findings(observed: Observed) -> list[Finding]:
    blocked = []
    if observed.certificate is not None and not observed.certificate.owned:
        blocked.append(Finding(Facet.CERTIFICATE, State.BLOCKED, "ForeignObject",
                               "a Key Vault certificate with this identity's name exists and is not managed "
                               "by this product; choose another name or remove it"))
    if observed.application is not None and not observed.application.owned:
        blocked.append(Finding(Facet.APPLICATION, State.BLOCKED, "ForeignObject",
                               "an app registration with this identity's uniqueName exists and is not tagged "
                               "as managed by this product"))
    if not observed.record_owned:
        blocked.append(Finding(Facet.CONNECTION_RECORD, State.BLOCKED, "ForeignObject",
                               "a Key Vault secret with this identity's connection secret name exists and is "
                               "not managed by this product"))
    return blocked


def plan_actions(spec: IdentitySpec, observed: Observed, now: dt.datetime, context: PlanContext, *,
                 force_rotate: bool = False) -> Plan:
    blocked = _ownership_findings(observed)
    cert = observed.certificate
    if cert is not None and cert.tags.get(DECOMMISSIONING_TAG) == DECOMMISSIONING_VALUE:
        blocked.append(Finding(Facet.CERTIFICATE, State.BLOCKED, "Decommissioning",
                               "this identity is being decommissioned; finish with DELETE before reusing the name"))
    if blocked:
        return Plan(tuple(blocked), (), tuple(blocked))

    findings: list[Finding] = []
    actions: list[Action] = []

    # Certificate: the version jobs will use after this plan.
    target = cert.current if cert is not None else None
    creates_version = False
    if cert is not None and cert.pending:
        findings.append(Finding(Facet.CERTIFICATE, State.PENDING, "CertificatePending",
                                "a certificate operation is in progress in Key Vault"))
        actions.append(AwaitCertificate())
        creates_version = True
    elif target is None:
        findings.append(Finding(Facet.CERTIFICATE, State.MISSING, "CertificateMissing", "no certificate yet"))
        actions.append(CreateCertificateVersion("CertificateMissing"))
        creates_version = True
    elif force_rotate:
        findings.append(Finding(Facet.CERTIFICATE, State.DUE, "RotationRequested", "rotation was requested"))
        actions.append(CreateCertificateVersion("RotationRequested"))
        creates_version = True
    elif not target.valid_at(now):
        findings.append(Finding(Facet.CERTIFICATE, State.DUE, "CertificateNotValid",
                                f"the current version is not valid now (valid {target.not_before:%Y-%m-%d} "
                                f"to {target.not_after:%Y-%m-%d}, enabled={target.enabled})"))
        actions.append(CreateCertificateVersion("CertificateNotValid"))
        creates_version = True
    elif renewal_due(now, target.not_before, target.not_after, context.policy, target.thumbprint):
        when = jittered_renewal_time(target.not_before, target.not_after, context.policy, target.thumbprint)
        findings.append(Finding(Facet.CERTIFICATE, State.DUE, "RenewalDue",
                                f"renewal was due at {when:%Y-%m-%dT%H:%M:%SZ}"))
        actions.append(CreateCertificateVersion("RenewalDue"))
        creates_version = True
    else:
        findings.append(Finding(Facet.CERTIFICATE, State.OK, "CertificateValid",
                                f"valid until {target.not_after:%Y-%m-%dT%H:%M:%SZ}"))
    target_thumbprint = None if creates_version or target is None else target.thumbprint

    # Tags follow the spec; a new version is created with them already.
    wanted_tags = desired_certificate_tags(spec)
    if cert is not None and not creates_version and any(cert.tags.get(k) != v for k, v in wanted_tags.items()):
        actions.append(TagCertificate())

    app = observed.application
    if app is None:
        findings.append(Finding(Facet.APPLICATION, State.MISSING, "ApplicationMissing", "no app registration"))
        actions.append(UpsertApplication("ApplicationMissing"))
    elif not app.declares_exchange_permission or app.sign_in_audience != "AzureADMyOrg" \
            or APP_OWNER_TAG not in app.tags:
        findings.append(Finding(Facet.APPLICATION, State.DRIFT, "ApplicationDrift",
                                "the app no longer declares Exchange.ManageAsApp, is not single-tenant, "
                                "or lost its ownership tag"))
        actions.append(UpsertApplication("ApplicationDrift"))
    else:
        findings.append(Finding(Facet.APPLICATION, State.OK, "ApplicationPresent", f"appId {app.app_id}"))

    if observed.service_principal_id is None:
        findings.append(Finding(Facet.SERVICE_PRINCIPAL, State.MISSING, "ServicePrincipalMissing",
                                "no service principal"))
        actions.append(CreateServicePrincipal())
    else:
        findings.append(Finding(Facet.SERVICE_PRINCIPAL, State.OK, "ServicePrincipalPresent",
                                observed.service_principal_id))

    if observed.consent_assignment_id is None:
        findings.append(Finding(Facet.CONSENT, State.MISSING, "ConsentMissing",
                                "Exchange.ManageAsApp is not granted"))
        actions.append(GrantConsent())
    else:
        findings.append(Finding(Facet.CONSENT, State.OK, "ConsentGranted", "Exchange.ManageAsApp granted"))

    key_present = (target_thumbprint is not None and app is not None
                   and any(k.matches(target_thumbprint) for k in app.key_credentials))
    if key_present:
        findings.append(Finding(Facet.KEY_CREDENTIAL, State.OK, "KeyRegistered",
                                "the current certificate is a key credential of the app"))
    else:
        findings.append(Finding(Facet.KEY_CREDENTIAL, State.MISSING, "KeyMissing",
                                "the certificate jobs should use is not on the app"))
        actions.append(AddKeyCredential(target_thumbprint))

    missing_roles = [role for role in spec.roles if role.template_id not in observed.role_assignments]
    needs_operator: list[Finding] = []
    if missing_roles and not context.assign_roles:
        finding = Finding(Facet.ROLES, State.MISSING, "RoleNotAssigned",
                          "verify-only role mode: an administrator must assign "
                          + ", ".join(r.name for r in missing_roles) + " to the app's service principal")
        findings.append(finding)
        needs_operator.append(finding)
    elif missing_roles:
        findings.append(Finding(Facet.ROLES, State.MISSING, "RoleMissing",
                                "not assigned: " + ", ".join(r.name for r in missing_roles)))
        actions.extend(AssignRole(r.template_id, r.name) for r in missing_roles)
    else:
        findings.append(Finding(Facet.ROLES, State.OK, "RolesAssigned", ", ".join(r.name for r in spec.roles)))

    record = observed.record
    app_id = app.app_id if app is not None else None
    record_stale_reason = None
    if record is None:
        record_stale_reason = "RecordUnreadable" if observed.record_unreadable else "RecordMissing"
    elif creates_version or target is None or record.thumbprint != target.thumbprint \
            or record.certificate_version != target.version:
        record_stale_reason = "NewCertificate"
    elif record.app_id != app_id or record.organization != spec.organization \
            or record.tenant_id != context.tenant_id or record.key_vault_url != context.key_vault_url:
        record_stale_reason = "RecordDrift"

    if record_stale_reason is not None:
        findings.append(Finding(Facet.CONNECTION_RECORD, State.MISSING if record is None else State.DRIFT,
                                record_stale_reason, "jobs do not see the current connection parameters"))
        publishes_new_thumbprint = record is None or creates_version or target is None \
            or record.thumbprint != target.thumbprint
        if context.verify_sign_in and publishes_new_thumbprint:
            actions.append(VerifySignIn(target_thumbprint))
        actions.append(PublishConnectionRecord(record_stale_reason))
    else:
        assert record is not None
        findings.append(Finding(Facet.CONNECTION_RECORD, State.OK, "RecordCurrent",
                                f"published {record.thumbprint}"))
        actions.extend(_retirement(observed, now, context))

    return Plan(tuple(findings), tuple(actions), needs_operator=tuple(needs_operator))


def _retirement(observed: Observed, now: dt.datetime, context: PlanContext) -> list[Action]:
    """Remove our superseded keys once the overlap is over; never a foreign or the last valid key."""
    record, app, cert = observed.record, observed.application, observed.certificate
    if record is None or app is None or cert is None:
        return []
    if not any(k.matches(record.thumbprint) and k.end > now for k in app.key_credentials):
        return []  # the published key is not there: retiring anything now could leave jobs without one
    in_grace = now < record.updated_at + context.grace
    keep = {record.thumbprint}
    if record.previous_thumbprint and in_grace:
        keep.add(record.previous_thumbprint)
    actions: list[Action] = []
    for version in cert.versions:
        if version.thumbprint in keep:
            continue
        for key in app.key_credentials:
            if key.matches(version.thumbprint):
                actions.append(RetireKeyCredential(key.key_id, version.thumbprint))
    if record.previous_thumbprint and not in_grace:
        actions.append(PublishConnectionRecord("PreviousRetired", clear_previous=True))
    return actions


def plan_decommission(observed: Observed, spec: IdentitySpec | None, *, assign_roles: bool = True) -> Plan:
    """Remove what the identity owns, role assignments and consent first, the registry entry last."""
    blocked = _ownership_findings(observed)
    if blocked:
        return Plan(tuple(blocked), (), tuple(blocked))
    actions: list[Action] = []
    cert = observed.certificate
    if cert is not None and cert.tags.get(DECOMMISSIONING_TAG) != DECOMMISSIONING_VALUE:
        actions.append(MarkDecommissioning())
    # In verify-only mode an administrator assigned the roles; deleting the service principal
    # removes its assignments without the product needing write access to directory roles.
    owned_roles = spec.role_ids if spec is not None and assign_roles else frozenset()
    for role_id, assignment_id in sorted(observed.role_assignments.items()):
        if role_id in owned_roles:
            actions.append(RemoveRoleAssignment(assignment_id, role_id))
    if observed.consent_assignment_id is not None:
        actions.append(RevokeConsent(observed.consent_assignment_id))
    if observed.service_principal_id is not None:
        actions.append(DeleteServicePrincipal())
    if observed.application is not None:
        actions.append(DeleteApplication())
    if observed.record is not None or observed.record_unreadable:
        actions.append(DeleteConnectionSecret())
    if cert is not None:
        actions.append(DeleteCertificate())
    return Plan((), tuple(actions))
