"""Connection record v1: the JSON document jobs read from the connection secret.

A public contract (README, "Connection record"): fields are only ever added; a reader must ignore
fields it does not know, and `schemaVersion` changes only for an incompatible change.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

from shared.core.spec import CERTIFICATE, MANAGED_IDENTITY, TOKEN_EXCHANGE_AUDIENCE, FederatedTrust

SCHEMA_VERSION = 1
CONTENT_TYPE = "application/vnd.exo-automation.connection+json; version=1"


def format_time(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(dt.UTC)


@dataclass(frozen=True)
class ConnectionRecord:
    identity: str
    app_id: str
    tenant_id: str
    organization: str
    key_vault_url: str
    certificate_name: str
    certificate_version: str
    thumbprint: str  # empty, with the certificate's name and version, for an identity without one
    not_before: dt.datetime | None
    not_after: dt.datetime | None
    previous_thumbprint: str | None
    previous_certificate_version: str | None
    updated_at: dt.datetime
    # Added by issue #16 (fields only added): how jobs sign in, and the workloads the app trusts
    # (the issuer, subject and audience a job's assertion must carry exactly).
    credential_type: str = CERTIFICATE
    federated: tuple[FederatedTrust, ...] = ()
    # A managedIdentity identity's client id (its service principal's appId, also in `app_id`): what
    # `Connect-ExchangeOnline -ManagedIdentity -ManagedIdentityAccountId` and azure-identity take.
    managed_identity_client_id: str | None = None

    @property
    def has_certificate(self) -> bool:
        return self.credential_type == CERTIFICATE

    def to_json(self) -> dict[str, Any]:
        """A record without a certificate keeps the certificate fields, as null (fields are only added)."""
        certificate = self.has_certificate
        return {
            "schemaVersion": SCHEMA_VERSION,
            "identity": self.identity,
            "appId": self.app_id,
            "tenantId": self.tenant_id,
            "organization": self.organization,
            "keyVaultUrl": self.key_vault_url,
            "certificateName": self.certificate_name if certificate else None,
            "certificateVersion": self.certificate_version if certificate else None,
            "thumbprint": self.thumbprint if certificate else None,
            "notBefore": format_time(self.not_before) if certificate and self.not_before else None,
            "notAfter": format_time(self.not_after) if certificate and self.not_after else None,
            "previousThumbprint": self.previous_thumbprint,
            "previousCertificateVersion": self.previous_certificate_version,
            "updatedAt": format_time(self.updated_at),
            "credentialType": self.credential_type,
            **({"federatedCredentials": [{"issuer": t.issuer, "subject": t.subject, "audience": t.audience}
                                         for t in self.federated]} if self.federated else {}),
            **({"managedIdentityClientId": self.managed_identity_client_id}
               if self.credential_type == MANAGED_IDENTITY else {}),
        }

    def dumps(self) -> str:
        return json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def loads(cls, text: str) -> ConnectionRecord:
        """Parse a record; ValueError if it is not a v1 record."""
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("schemaVersion") != SCHEMA_VERSION:
            raise ValueError("not a v1 connection record")
        try:
            certificate = str(data.get("credentialType") or CERTIFICATE) == CERTIFICATE
            return cls(
                identity=data["identity"], app_id=data["appId"], tenant_id=data["tenantId"],
                organization=data["organization"], key_vault_url=data["keyVaultUrl"],
                certificate_name=data["certificateName"] if certificate else "",
                certificate_version=data["certificateVersion"] if certificate else "",
                thumbprint=data["thumbprint"] if certificate else "",
                not_before=parse_time(data["notBefore"]) if certificate else None,
                not_after=parse_time(data["notAfter"]) if certificate else None,
                previous_thumbprint=data.get("previousThumbprint"),
                previous_certificate_version=data.get("previousCertificateVersion"),
                updated_at=parse_time(data["updatedAt"]),
                credential_type=str(data.get("credentialType") or CERTIFICATE),
                federated=tuple(FederatedTrust(str(f["issuer"]), str(f["subject"]),
                                               str(f.get("audience") or TOKEN_EXCHANGE_AUDIENCE))
                                for f in data.get("federatedCredentials") or ()),
                managed_identity_client_id=str(data["managedIdentityClientId"])
                if data.get("credentialType") == MANAGED_IDENTITY else None,
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"connection record is missing a field: {exc}") from exc

    def same_publication(self, other: ConnectionRecord) -> bool:
        """Equal in everything a job relies on (the timestamp aside)."""
        mine, theirs = self.to_json(), other.to_json()
        mine.pop("updatedAt")
        theirs.pop("updatedAt")
        return mine == theirs
