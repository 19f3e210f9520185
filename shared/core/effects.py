"""What each action leaves behind: the observed state after it succeeded (pure).

The executor performs an action, then hands the services' answer (an `Outcome`) to `apply`; the
planner's property tests apply whole plans through the same function, so "a plan's effects leave
nothing to do" is tested on the effects the product really assumes, not on a copy of them.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass

from shared.core.checks import CheckContext, allowed_trusts
from shared.core.model import (
    CertificateVersion,
    KeyCredential,
    Observed,
    ObservedApplication,
    ObservedCertificate,
    ObservedFederatedCredential,
    key_id_for,
)
from shared.core.planner import (
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
    PublishConnectionRecord,
    RemoveFederatedCredential,
    RemoveRoleAssignment,
    RetireKeyCredential,
    RevokeConsent,
    TagCertificate,
    UpsertApplication,
    VerifySignIn,
)
from shared.core.record import ConnectionRecord
from shared.core.spec import FEDERATED, MANAGED_IDENTITY, IdentitySpec


@dataclass(frozen=True)
class Outcome:
    """What the services answered for one successful action: the objects and ids it produced."""

    detail: str = ""
    # The id Graph gave what the action created: a service principal, a grant, a role assignment,
    # a federated identity credential.
    created_id: str | None = None
    # The certificate version awaited (or recovered); None for a creation requested and still being issued.
    version: CertificateVersion | None = None
    # The registry tags as written: the certificate's, or the connection secret's for an identity
    # without a certificate.
    tags: Mapping[str, str] | None = None
    application: ObservedApplication | None = None  # the app as created or repaired
    record: ConnectionRecord | None = None  # the connection record as published


class UnknownAction(AssertionError):
    """An action no effect is defined for: a programming error, never a service's answer."""


def apply(observed: Observed, action: Action, outcome: Outcome) -> Observed:
    """The state after `action` succeeded with `outcome`."""
    replace = dataclasses.replace
    match action:
        case CreateCertificateVersion() if outcome.version is None:
            # Requested: Key Vault issues it while the run goes on; AwaitCertificate brings the version.
            assert outcome.tags is not None
            before = observed.certificate
            return replace(observed, certificate=ObservedCertificate(
                owned=True, tags=dict(outcome.tags), current=before.current if before else None,
                pending=True, versions=before.versions if before else ()))
        case CreateCertificateVersion() | AwaitCertificate():
            # Awaited, or at once when the create recovered a deleted certificate instead.
            assert outcome.version is not None and outcome.tags is not None
            before = observed.certificate
            older = (*before.versions, *([before.current] if before.current else [])) if before else ()
            return replace(observed, certificate=ObservedCertificate(
                owned=True, tags=dict(outcome.tags), current=outcome.version,
                versions=tuple(v for v in older if v.version != outcome.version.version)))
        case TagCertificate() | VerifySignIn():
            return observed  # tags are written with the run's outcome; a proof changes nothing
        case MarkDecommissioning():
            cert = observed.certificate
            assert outcome.tags is not None
            if cert is None:  # an identity without a certificate: its registry entry is the connection secret's
                return replace(observed, registry_tags=dict(outcome.tags))
            return replace(observed, certificate=replace(cert, tags=dict(outcome.tags)))
        case UpsertApplication():
            assert outcome.application is not None
            return replace(observed, application=outcome.application)
        case CreateServicePrincipal():
            return replace(observed, service_principal_id=outcome.created_id)
        case GrantConsent():
            return replace(observed, consent_assignment_id=outcome.created_id)
        case AssignRole(role_id=role_id):
            assert outcome.created_id is not None
            return replace(observed, role_assignments={**observed.role_assignments, role_id: outcome.created_id})
        case AddKeyCredential():
            return _with_key_of_current(observed)
        case RetireKeyCredential(key_id=key_id):
            app = observed.application
            if app is None:
                return observed
            return replace(observed, application=replace(
                app, key_credentials=tuple(k for k in app.key_credentials if k.key_id != key_id)))
        case AddFederatedCredential(name=name, issuer=issuer, subject=subject, audience=audience):
            assert outcome.created_id is not None
            added = ObservedFederatedCredential(outcome.created_id, name, issuer, subject, (audience,))
            return replace(observed, federated_credentials=(*(observed.federated_credentials or ()), added))
        case RemoveFederatedCredential(credential_id=credential_id):
            return replace(observed, federated_credentials=tuple(
                c for c in observed.federated_credentials or () if c.credential_id != credential_id))
        case PublishConnectionRecord():
            assert outcome.record is not None
            if outcome.tags is not None:  # the registry entry of an identity without a certificate came along
                return replace(observed, record=outcome.record, registry_tags=dict(outcome.tags))
            return replace(observed, record=outcome.record)
        case RemoveRoleAssignment(role_id=role_id):
            return replace(observed, role_assignments={k: v for k, v in observed.role_assignments.items()
                                                       if k != role_id})
        case RevokeConsent():
            return replace(observed, consent_assignment_id=None)
        case DeleteServicePrincipal():
            # Its grants and role assignments go with it.
            return replace(observed, service_principal_id=None, consent_assignment_id=None, role_assignments={})
        case DeleteApplication():
            return replace(observed, application=None, federated_credentials=None)
        case DeleteConnectionSecret():
            return replace(observed, record=None, record_unreadable=False)
        case DeleteCertificate():
            return replace(observed, certificate=None)
    raise UnknownAction(f"no effect defined for {action.kind}")


def _with_key_of_current(observed: Observed) -> Observed:
    app, cert = observed.application, observed.certificate
    if app is None or cert is None or cert.current is None:
        return observed
    version = cert.current
    if any(k.matches(version.thumbprint) for k in app.key_credentials):
        return observed
    key = KeyCredential(key_id_for(version.thumbprint), version.not_before, version.not_after, version.thumbprint)
    return dataclasses.replace(observed, application=dataclasses.replace(
        app, key_credentials=(*app.key_credentials, key)))


def record_to_publish(spec: IdentitySpec, observed: Observed, context: CheckContext, now: dt.datetime, *,
                      clear_previous: bool) -> ConnectionRecord:
    """The connection record a PublishConnectionRecord writes, from what the run knows now.

    The previously published certificate stays named as `previous` while it is still valid, so a
    job that cached it keeps working through the grace period; `clear_previous` ends that.
    """
    if spec.managed_identity is not None:
        principal = observed.managed_identity
        if principal is None:
            raise ValueError("a managed identity's connection record needs its service principal")
        return ConnectionRecord(
            identity=spec.name, app_id=principal.client_id, tenant_id=context.tenant_id,
            organization=spec.organization, key_vault_url=context.key_vault_url, certificate_name="",
            certificate_version="", thumbprint="", not_before=None, not_after=None, previous_thumbprint=None,
            previous_certificate_version=None, updated_at=now, credential_type=MANAGED_IDENTITY,
            managed_identity_client_id=principal.client_id)
    app = observed.application
    if app is None:
        raise ValueError("a connection record needs the app registration")
    if not spec.certificate:
        return ConnectionRecord(
            identity=spec.name, app_id=app.app_id, tenant_id=context.tenant_id, organization=spec.organization,
            key_vault_url=context.key_vault_url, certificate_name="", certificate_version="", thumbprint="",
            not_before=None, not_after=None, previous_thumbprint=None, previous_certificate_version=None,
            updated_at=now, credential_type=FEDERATED, federated=allowed_trusts(spec, context))
    cert = observed.certificate
    if cert is None or cert.current is None:
        raise ValueError("a connection record needs a certificate version")
    version, old = cert.current, observed.record
    previous_thumbprint = previous_version = None
    if not clear_previous and old is not None:
        if old.thumbprint != version.thumbprint and old.not_after is not None and old.not_after > now:
            previous_thumbprint, previous_version = old.thumbprint, old.certificate_version
        elif old.thumbprint == version.thumbprint:
            previous_thumbprint, previous_version = old.previous_thumbprint, old.previous_certificate_version
    return ConnectionRecord(
        identity=spec.name, app_id=app.app_id, tenant_id=context.tenant_id, organization=spec.organization,
        key_vault_url=context.key_vault_url, certificate_name=spec.names.certificate,
        certificate_version=version.version, thumbprint=version.thumbprint, not_before=version.not_before,
        not_after=version.not_after, previous_thumbprint=previous_thumbprint,
        previous_certificate_version=previous_version, updated_at=now, federated=allowed_trusts(spec, context))


__all__ = ["Outcome", "UnknownAction", "apply", "record_to_publish"]
