"""Turn (spec, observed state, now) into an ordered plan of small idempotent actions.

Pure: no I/O, no clock of its own. The checks (`shared.core.checks`, shared with the sweep) produce one
`Finding` per facet; the plan is the actions the violated findings call for, in the order that keeps
credential continuity (docs/architecture.md):
certificate → application → service principal → consent → key credential → federated credentials →
roles → sign-in proof → connection record → retirement of the previous key.

A new certificate version is requested first and waited for (`AwaitCertificate`) only where the plan
first needs it: Key Vault issues it (seconds when self-signed, minutes with a CA) while the app
registration, its service principal and grants are made.

Actions that depend on a certificate version created earlier in the same plan name it with
`thumbprint=None` ("the version this plan creates"); the executor resolves it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from dataclasses import dataclass
from typing import ClassVar

from shared.core.checks import (
    CheckContext,
    Facet,
    Finding,
    Reason,
    State,
    disallowed_held_roles,
    federated_diff,
    grantable_roles,
    run_checks,
    view_of_observed,
)
from shared.core.model import OWNER_TAG, OWNER_TAG_VALUE, Observed
from shared.core.registry import HeldGrant, RecordedGrants, judge_grants
from shared.core.roles import role_name
from shared.core.spec import IdentitySpec


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
class AddFederatedCredential(Action):
    facet: ClassVar[str] = "federatedCredentials"
    name: str
    issuer: str
    subject: str
    audience: str
    template: ClassVar[str] = "trust {issuer} subject {subject} (federated identity credential {name})"


@dataclass(frozen=True)
class RemoveFederatedCredential(Action):
    facet: ClassVar[str] = "federatedCredentials"
    credential_id: str
    name: str
    template: ClassVar[str] = "remove the federated identity credential {name} (a workload the spec no longer trusts)"


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
class PlanContext(CheckContext):
    verify_sign_in: bool = True


DECOMMISSIONING_TAG = "state"
DECOMMISSIONING_VALUE = "decommissioning"


def _ownership_findings(observed: Observed) -> list[Finding]:
    blocked = []
    if observed.certificate is not None and not observed.certificate.owned:
        blocked.append(Finding(Facet.CERTIFICATE, State.BLOCKED, "ForeignObject",
                               "a Key Vault certificate with this identity's name exists and is not managed "
                               "by this product; choose another name or remove it"))
    if observed.application is not None and not observed.application.owned:
        blocked.append(Finding(Facet.APPLICATION, State.BLOCKED, "ForeignObject",
                               "an app registration with this identity's uniqueName exists and this platform's "
                               "identity is not among its owners; it is not touched"))
    if not observed.record_owned:
        blocked.append(Finding(Facet.CONNECTION_RECORD, State.BLOCKED, "ForeignObject",
                               "a Key Vault secret with this identity's connection secret name exists and is "
                               "not managed by this product"))
    return blocked


def plan_actions(spec: IdentitySpec, observed: Observed, now: dt.datetime, context: PlanContext, *,
                 force_rotate: bool = False, prune_roles: bool = False) -> Plan:
    """The plan for one identity: the checks' violated findings, mapped to actions in chain order.

    `prune_roles` (an explicit bootstrap request only) also removes role assignments of its service
    principal that today's policy no longer allows; other runs only report them.
    """
    blocked = _ownership_findings(observed)
    cert = observed.certificate
    if cert is not None and cert.tags.get(DECOMMISSIONING_TAG) == DECOMMISSIONING_VALUE:
        blocked.append(Finding(Facet.CERTIFICATE, State.BLOCKED, "Decommissioning",
                               "this identity is being decommissioned; finish with DELETE before reusing the name"))
    if cert is None and observed.registry_tags.get(DECOMMISSIONING_TAG) == DECOMMISSIONING_VALUE:
        blocked.append(Finding(Facet.CONNECTION_RECORD, State.BLOCKED, "Decommissioning",
                               "this identity is being decommissioned; finish with DELETE before reusing the name"))
    changed = _kind_change(spec, observed)
    if changed is not None:
        blocked.append(changed)
    if not spec.certificate and cert is not None:
        # The registry entry is the certificate's: dropping the certificate would leave two entries.
        blocked.append(Finding(Facet.CERTIFICATE, State.BLOCKED, "CertificateCannotBeRemoved",
                               "this identity has a certificate; an identity cannot drop it: keep "
                               '{"type": "certificate"} in its credentials, or decommission it and bootstrap it again'))
    if blocked:
        return Plan(tuple(blocked), (), tuple(blocked))

    view = view_of_observed(spec, observed, context)
    pruned: list[Action] = []
    if prune_roles:
        held = disallowed_held_roles(view, context)
        pruned = [RemoveRoleAssignment(observed.role_assignments[r], r) for r in held]
        view = dataclasses.replace(view, held_roles=view.held_roles - set(held))
    checked = run_checks(view, now, context, force_rotate=force_rotate)
    target_thumbprint = checked.target.thumbprint if checked.target is not None else None
    actions: list[Action] = []
    needs_operator: list[Finding] = []
    for finding in checked.findings:
        if finding.facet is Facet.ROLE_POLICY:
            actions.extend(pruned)  # removals come where the role policy is judged
        if not finding.violated:
            continue
        match finding.reason:
            case Reason.CERTIFICATE_PENDING:
                actions.append(AwaitCertificate())
            case Reason.CERTIFICATE_MISSING | Reason.ROTATION_REQUESTED | Reason.CERTIFICATE_NOT_VALID \
                    | Reason.RENEWAL_DUE:
                actions.append(CreateCertificateVersion(finding.reason))
            case Reason.TAGS_DRIFT:
                actions.append(TagCertificate())
            case Reason.APPLICATION_MISSING | Reason.APPLICATION_DRIFT:
                actions.append(UpsertApplication(finding.reason))
            case Reason.SERVICE_PRINCIPAL_MISSING:
                actions.append(CreateServicePrincipal())
            case Reason.CONSENT_MISSING:
                actions.append(GrantConsent())
            case Reason.KEY_MISSING:
                actions.append(AddKeyCredential(target_thumbprint))
            case Reason.FEDERATED_CREDENTIAL_MISSING | Reason.FEDERATED_CREDENTIAL_STALE | Reason.FEDERATION_REFUSED:
                diff = federated_diff(view, context)
                assert diff is not None
                if diff.refused:
                    needs_operator.append(finding)
                actions.extend(RemoveFederatedCredential(c.credential_id, c.name) for c in diff.stale)
                actions.extend(AddFederatedCredential(t.credential_name(spec.name), t.issuer, t.subject, t.audience)
                               for t in diff.missing)
            case Reason.ROLE_REFUSED | Reason.ROLE_NO_LONGER_ALLOWED | Reason.ROLE_NOT_ASSIGNED \
                    | Reason.MANAGED_IDENTITY_REFUSED | Reason.MANAGED_IDENTITY_NOT_FOUND:
                needs_operator.append(finding)
            case Reason.ROLE_MISSING:
                grantable, _ = grantable_roles(spec, context)
                actions.extend(AssignRole(r.template_id, r.name) for r in grantable
                               if r.template_id not in view.held_roles)
            case Reason.RECORD_MISSING | Reason.RECORD_UNREADABLE | Reason.RECORD_DELETED | Reason.RECORD_STALE \
                    | Reason.RECORD_DRIFT:
                publishes_new_thumbprint = target_thumbprint is None or observed.record is None \
                    or observed.record.thumbprint != target_thumbprint
                if context.verify_sign_in and publishes_new_thumbprint and spec.certificate:
                    actions.append(VerifySignIn(target_thumbprint))
                actions.append(PublishConnectionRecord(finding.reason))
            case Reason.RETIREMENT_DUE:
                pass  # the retirement actions below also cover keys the sweep cannot see
    if not any(f.violated for f in checked.findings if f.facet is Facet.CONNECTION_RECORD):
        actions.extend(_retirement(observed, now, context))
    return Plan(checked.findings, _wait_where_needed(actions), needs_operator=tuple(needs_operator))


# Actions that work without the certificate version being issued: they run while Key Vault issues it.
_INDEPENDENT_OF_CERTIFICATE = (UpsertApplication, CreateServicePrincipal, GrantConsent, AssignRole,
                               RemoveRoleAssignment, AddFederatedCredential, RemoveFederatedCredential)


def _wait_where_needed(actions: list[Action]) -> tuple[Action, ...]:
    """The plan with its wait for the certificate version (the one it requests, or one already being
    issued) moved just before the first action that needs the version (or to the end)."""
    starts = [i for i, a in enumerate(actions) if isinstance(a, CreateCertificateVersion | AwaitCertificate)]
    if not starts:
        return tuple(actions)
    rest = [a for a in actions if not isinstance(a, AwaitCertificate)]
    first = starts[0] + 1 if isinstance(actions[starts[0]], CreateCertificateVersion) else starts[0]
    at = next((i for i in range(first, len(rest)) if not isinstance(rest[i], _INDEPENDENT_OF_CERTIFICATE)),
              len(rest))
    return (*rest[:at], AwaitCertificate(), *rest[at:])


def _kind_change(spec: IdentitySpec, observed: Observed) -> Finding | None:
    """An identity keeps its kind: a managedIdentity identity's grants are on a principal the product does not
    own, so turning it into another kind (or another principal) would leave them behind unrecorded."""
    recorded: object = None
    tags = observed.registry_tags
    if observed.certificate is None and tags.get(OWNER_TAG) == OWNER_TAG_VALUE and tags.get("credentials"):
        try:
            credentials = json.loads(tags["credentials"])
            recorded = credentials.get("m") if isinstance(credentials, dict) else None
        except ValueError:
            recorded = None  # a malformed registry entry is refused by registry_spec where it is read
    if recorded != spec.managed_identity and (recorded is not None or observed.record is not None):
        was = f"managedIdentity identity of principal {recorded}" if recorded else "identity with an app registration"
        return Finding(Facet.CONNECTION_RECORD, State.BLOCKED, "CredentialKindCannotChange",
                       f"its registry entry records a {was}; an identity's credential kind (and its managed identity) "
                       "cannot change: decommission it, then bootstrap it again")
    if spec.managed_identity is not None and observed.application is not None and observed.application.owned:
        return Finding(Facet.APPLICATION, State.BLOCKED, "CredentialKindCannotChange",
                       "this identity has an app registration; an identity's credential kind cannot change to "
                       "managedIdentity: decommission it, then bootstrap it again")
    return None


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
    cert = observed.certificate
    if not blocked and cert is not None and cert.pending and cert.current is None:
        blocked.append(Finding(Facet.CERTIFICATE, State.PENDING, "CertificatePending",
                               "the identity's first certificate version is still being created; retry the "
                               "decommission when Key Vault has finished"))
    if blocked:
        return Plan(tuple(blocked), (), tuple(blocked))
    actions: list[Action] = []
    if cert is not None and cert.tags.get(DECOMMISSIONING_TAG) != DECOMMISSIONING_VALUE:
        actions.append(MarkDecommissioning())
    elif cert is None and observed.registry_tags.get(OWNER_TAG) == OWNER_TAG_VALUE \
            and observed.registry_tags.get(DECOMMISSIONING_TAG) != DECOMMISSIONING_VALUE and observed.record_owned:
        actions.append(MarkDecommissioning())  # the registry entry of an identity without a certificate
    if spec is not None and spec.managed_identity is not None:
        removals, unconfirmed = _managed_identity_decommission(observed, spec.managed_identity)
        return Plan(unconfirmed, tuple(actions + removals), needs_operator=unconfirmed)
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


GRANTS_UNCONFIRMED = "GrantsUnconfirmed"


def _managed_identity_decommission(observed: Observed, principal_id: str) -> tuple[list[Action], tuple[Finding, ...]]:
    """Exactly the grants both the registry and the witness record making, among those the managed identity holds
    now; never its service principal, nor a grant or role it had before (or that someone else gave it since).
    Where the two records disagree, none of its grants is removed: the finding names them for an operator."""
    verdict = judge_grants(RecordedGrants.from_tags(observed.registry_tags),
                           RecordedGrants.from_witness(observed.grant_witness, principal_id),
                           observed.consent_assignment_id, observed.role_assignments)
    actions: list[Action] = [RemoveRoleAssignment(g.assignment_id, g.role_id) for g in verdict.removable
                             if g.role_id is not None]
    actions.extend(RevokeConsent(g.assignment_id) for g in verdict.removable if g.role_id is None)
    if observed.record is not None or observed.record_unreadable:
        actions.append(DeleteConnectionSecret())
    findings: tuple[Finding, ...] = ()
    if verdict.unconfirmed:
        findings = (Finding(
            Facet.MANAGED_IDENTITY, State.REFUSED, GRANTS_UNCONFIRMED,
            f"the registry's record of the grants this product made to managed identity {principal_id} (tags of the "
            "connection secret) and its witness (the identity's lease blob in the Functions storage account) "
            "disagree, so none of its grants was removed: someone may have edited the registry. Check these and "
            "remove by hand those this product made: " + "; ".join(_describe(g) for g in verdict.unconfirmed)),)
    return actions, findings


def _describe(grant: HeldGrant) -> str:
    what = "the Exchange.ManageAsApp grant (app-role assignment" if grant.role_id is None \
        else f"the {role_name(grant.role_id)} role (role assignment"
    says = "registry and witness" if grant.recorded and grant.witnessed else \
        "registry only" if grant.recorded else "witness only"
    return f"{what} {grant.assignment_id}; claimed by the {says})"
