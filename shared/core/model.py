"""The observed state of one identity, as gathered from Key Vault and Graph (plain data)."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from shared.core.record import ConnectionRecord
from shared.core.spec import IdentitySpec

OWNER_TAG = "managed-by"
OWNER_TAG_VALUE = "exo-automation-identities"
# Graph tags are plain strings; this one marks applications this product created.
APP_OWNER_TAG = "exo-automation-identities"

EXCHANGE_RESOURCE_APP_ID = "00000002-0000-0ff1-ce00-000000000000"
EXCHANGE_MANAGE_AS_APP_ROLE_ID = "dc50a0fb-09a3-484d-be87-e023b12c6440"

_KEY_ID_NAMESPACE = uuid.UUID("5a1c6f9e-2b0e-4c1f-9a57-0e5d3c8b7a41")


def key_id_for(thumbprint: str) -> str:
    """The keyCredential id this product gives a certificate: stable, so listings identify it
    without downloading key material, and a repeated add cannot create a second entry."""
    return str(uuid.uuid5(_KEY_ID_NAMESPACE, thumbprint.upper()))


@dataclass(frozen=True)
class CertificateVersion:
    version: str
    thumbprint: str  # upper-case hex SHA-1, as Exchange wants it
    not_before: dt.datetime
    not_after: dt.datetime
    enabled: bool = True
    # The public certificate (DER) when the read that found this version returned it.
    der: bytes | None = field(default=None, compare=False, repr=False)

    def valid_at(self, now: dt.datetime) -> bool:
        return self.enabled and self.not_before <= now < self.not_after


@dataclass(frozen=True)
class ObservedCertificate:
    owned: bool
    tags: Mapping[str, str]
    current: CertificateVersion | None  # newest completed version
    pending: bool = False  # a create operation is still in progress
    versions: tuple[CertificateVersion, ...] = ()

    @property
    def spec(self) -> IdentitySpec | None:
        if not self.owned or "identity" not in self.tags:
            return None
        return IdentitySpec.from_tags(self.tags)

    def version_by_thumbprint(self, thumbprint: str) -> CertificateVersion | None:
        candidates = [*self.versions, *([self.current] if self.current else [])]
        return next((c for c in candidates if c.thumbprint == thumbprint), None)


@dataclass(frozen=True)
class KeyCredential:
    key_id: str
    start: dt.datetime
    end: dt.datetime
    thumbprint: str | None = None  # known when Graph returned the key itself
    display_name: str | None = None

    def matches(self, thumbprint: str) -> bool:
        return self.key_id == key_id_for(thumbprint) or self.thumbprint == thumbprint.upper()


@dataclass(frozen=True)
class ObservedApplication:
    object_id: str
    app_id: str
    owned: bool
    tags: tuple[str, ...]
    key_credentials: tuple[KeyCredential, ...]
    declares_exchange_permission: bool
    sign_in_audience: str = "AzureADMyOrg"
    # The app's declared permissions (requiredResourceAccess) as listed: a repair adds Exchange's
    # without dropping permissions others declared.
    declared_permissions: tuple[Mapping[str, Any], ...] = field(default=(), compare=False, repr=False)


@dataclass(frozen=True)
class ObservedFederatedCredential:
    """A federated identity credential on the app, as Graph lists it."""

    credential_id: str
    name: str
    issuer: str
    subject: str
    audiences: tuple[str, ...]


@dataclass(frozen=True)
class ObservedManagedIdentity:
    """The service principal a managedIdentity identity names, read by its id (no app registration)."""

    principal_id: str
    client_id: str  # the service principal's appId
    # Graph's servicePrincipalType: only a managed identity's service principal is accepted.
    is_managed_identity: bool


@dataclass(frozen=True)
class Observed:
    certificate: ObservedCertificate | None = None
    application: ObservedApplication | None = None
    service_principal_id: str | None = None
    consent_assignment_id: str | None = None
    # roleDefinitionId (template id) -> role assignment id, for our service principal
    role_assignments: Mapping[str, str] = field(default_factory=dict)
    record: ConnectionRecord | None = None
    record_unreadable: bool = False  # the secret exists but is not a v1 record
    record_owned: bool = True
    # The app's federated identity credentials; None: not listed (the spec trusts no workload and
    # the registry records none, so there is nothing of ours to look for).
    federated_credentials: tuple[ObservedFederatedCredential, ...] | None = None
    # The connection secret's tags: the registry entry of an identity without a certificate.
    registry_tags: Mapping[str, str] = field(default_factory=dict)
    # A managedIdentity identity's principal as Graph shows it (None: not looked up, or not found:
    # see `managed_identity_looked_up`); its grant and roles are in the fields above.
    managed_identity: ObservedManagedIdentity | None = None
    managed_identity_looked_up: bool = False
    # A managedIdentity identity's witness of the grants made (its lease blob's metadata, `shared.core.registry`
    # `RecordedGrants.from_witness`); None: not read (status, a first bootstrap), or no lease blob.
    grant_witness: Mapping[str, str] | None = None
