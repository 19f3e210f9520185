"""Small builders for planner inputs."""

from __future__ import annotations

import datetime as dt

from shared.core.checks import desired_certificate_tags
from shared.core.model import (
    APP_OWNER_TAG,
    CertificateVersion,
    KeyCredential,
    Observed,
    ObservedApplication,
    ObservedCertificate,
    key_id_for,
)
from shared.core.planner import PlanContext
from shared.core.record import ConnectionRecord
from shared.core.roles import EXCHANGE_RECIPIENT_ADMINISTRATOR
from shared.core.spec import IdentitySpec

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
TENANT = "11111111-2222-3333-4444-555555555555"
VAULT = "https://kv.vault.azure.net/"
CONTEXT = PlanContext(tenant_id=TENANT, key_vault_url=VAULT)
SPEC = IdentitySpec(name="reports", organization="contoso.onmicrosoft.com",
                    roles=(EXCHANGE_RECIPIENT_ADMINISTRATOR,), validity_months=12, key_size=2048)


def version(n: int, start: dt.datetime = T0, days: int = 365) -> CertificateVersion:
    return CertificateVersion(version=f"v{n}", thumbprint=f"{n:040X}", not_before=start,
                              not_after=start + dt.timedelta(days=days))


def key_for(v: CertificateVersion) -> KeyCredential:
    return KeyCredential(key_id=key_id_for(v.thumbprint), start=v.not_before, end=v.not_after, thumbprint=v.thumbprint)


def record_for(v: CertificateVersion, app_id: str = "app-1", previous: CertificateVersion | None = None,
               updated: dt.datetime = T0) -> ConnectionRecord:
    return ConnectionRecord(
        identity=SPEC.name, app_id=app_id, tenant_id=TENANT, organization=SPEC.organization, key_vault_url=VAULT,
        certificate_name=SPEC.names.certificate, certificate_version=v.version, thumbprint=v.thumbprint,
        not_before=v.not_before, not_after=v.not_after,
        previous_thumbprint=previous.thumbprint if previous else None,
        previous_certificate_version=previous.version if previous else None, updated_at=updated,
    )


def ready(current: CertificateVersion | None = None, *, keys: tuple[KeyCredential, ...] | None = None,
          versions: tuple[CertificateVersion, ...] = (), previous: CertificateVersion | None = None,
          updated: dt.datetime = T0) -> Observed:
    """A fully bootstrapped identity whose published certificate is `current`."""
    current = current or version(1)
    cert = ObservedCertificate(owned=True, tags=desired_certificate_tags(SPEC), current=current,
                               versions=versions or (current,))
    app = ObservedApplication(object_id="obj-1", app_id="app-1", owned=True, tags=(APP_OWNER_TAG,),
                              key_credentials=keys if keys is not None else (key_for(current),),
                              declares_exchange_permission=True)
    return Observed(certificate=cert, application=app, service_principal_id="sp-1", consent_assignment_id="grant-1",
                    role_assignments={EXCHANGE_RECIPIENT_ADMINISTRATOR.template_id: "ra-1"},
                    record=record_for(current, previous=previous, updated=updated))
