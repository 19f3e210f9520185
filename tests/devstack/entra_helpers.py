"""Directory set-up for stand-in tests, written straight into the world as Graph would store it.

Tests of Entra and Exchange must not depend on the Graph stand-in, so these helpers put
Graph-shaped dicts into `world.directory` under `world.lock`. Certificates are real (devstack.pki)
and dated by the simulated clock, which is what Entra judges key credentials by.
"""

from __future__ import annotations

import base64
import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import pkcs12

from devstack.pki import new_rsa_key, private_key_pem, self_signed_certificate
from devstack.world import EXCHANGE_APP_ID, World, iso, new_id

EXCHANGE_RECIPIENT_ADMINISTRATOR = "31392ffb-586c-42d1-9346-e59415a2cc4e"
USER_ADMINISTRATOR = "fe930be7-5e62-47db-91af-98c3a49a38b1"  # a role Exchange does not honour


@dataclass
class JobCertificate:
    """A job's certificate with its private key, as Key Vault would hand it over."""

    key: rsa.RSAPrivateKey
    certificate: x509.Certificate

    @property
    def pem(self) -> bytes:
        """Private key and certificate in one PEM, as CertificateCredential takes it."""
        return private_key_pem(self.key) + self.certificate.public_bytes(serialization.Encoding.PEM)

    @property
    def pfx(self) -> bytes:
        return pkcs12.serialize_key_and_certificates(
            b"job", self.key, self.certificate, None, serialization.NoEncryption())

    @property
    def thumbprint(self) -> str:
        return self.certificate.fingerprint(hashes.SHA1()).hex().upper()


@dataclass
class JobApp:
    app: dict[str, Any]
    sp: dict[str, Any] | None
    certificates: list[JobCertificate] = field(default_factory=list)

    @property
    def app_id(self) -> str:
        return str(self.app["appId"])


def make_certificate(world: World, *, days: int = 365, starts_in_days: float = -1 / 24,
                     subject: str = "CN=exo-job") -> JobCertificate:
    key = new_rsa_key()
    not_before = world.clock.now() + dt.timedelta(days=starts_in_days)
    cert = self_signed_certificate(key, subject, not_before, not_before + dt.timedelta(days=days))
    return JobCertificate(key, cert)


def key_credential(cert: JobCertificate, *, key_id: str | None = None) -> dict[str, Any]:
    """The Graph keyCredential for a certificate, its window being the certificate's."""
    der = cert.certificate.public_bytes(serialization.Encoding.DER)
    return {
        "keyId": key_id or new_id(),
        "type": "AsymmetricX509Cert",
        "usage": "Verify",
        "key": base64.b64encode(der).decode(),
        "displayName": cert.certificate.subject.rfc4514_string(),
        "customKeyIdentifier": base64.b64encode(cert.certificate.fingerprint(hashes.SHA1())).decode(),
        "startDateTime": iso(cert.certificate.not_valid_before_utc),
        "endDateTime": iso(cert.certificate.not_valid_after_utc),
    }


def create_app(world: World, name: str = "exo-job", *, certificates: list[JobCertificate] | None = None,
               with_sp: bool = True) -> JobApp:
    certificates = certificates if certificates is not None else [make_certificate(world)]
    with world.lock:
        now = iso(world.clock.now())
        app_object_id, app_id = new_id(), new_id()
        app = {
            "id": app_object_id, "appId": app_id, "displayName": name, "signInAudience": "AzureADMyOrg",
            "keyCredentials": [key_credential(c) for c in certificates], "passwordCredentials": [],
            "tags": [], "requiredResourceAccess": [], "createdDateTime": now,
        }
        world.directory.applications[app_object_id] = app
        sp = None
        if with_sp:
            sp_id = new_id()
            sp = {
                "id": sp_id, "appId": app_id, "displayName": name, "servicePrincipalType": "Application",
                "accountEnabled": True, "appRoles": [], "tags": [], "servicePrincipalNames": [app_id],
                "appOwnerOrganizationId": world.tenant_id, "createdDateTime": now,
            }
            world.directory.service_principals[sp_id] = sp
    return JobApp(app, sp, list(certificates))


def grant_app_role(world: World, principal_id: str, resource_app_id: str, role_value: str) -> str:
    """Admin consent for an application permission: an appRoleAssignment on the resource SP."""
    with world.lock:
        resource = world.resource_sp(resource_app_id)
        role_id = next(r["id"] for r in resource["appRoles"] if r["value"] == role_value)
        assignment_id = new_id()
        world.directory.app_role_assignments[assignment_id] = {
            "id": assignment_id, "principalId": principal_id, "principalType": "ServicePrincipal",
            "resourceId": resource["id"], "resourceDisplayName": resource["displayName"],
            "appRoleId": role_id, "createdDateTime": iso(world.clock.now()), "deletedDateTime": None,
        }
    return assignment_id


def assign_directory_role(world: World, principal_id: str, template_id: str) -> str:
    with world.lock:
        assignment_id = new_id()
        world.directory.role_assignments[assignment_id] = {
            "id": assignment_id, "principalId": principal_id, "roleDefinitionId": template_id,
            "directoryScopeId": "/",
        }
    return assignment_id


def exchange_ready_app(world: World, *, consent: bool = True,
                       role: str | None = EXCHANGE_RECIPIENT_ADMINISTRATOR) -> JobApp:
    """An app as the product sets it up: certificate, SP, Exchange.ManageAsApp, an Exchange role."""
    test_app = create_app(world)
    assert test_app.sp is not None
    if consent:
        grant_app_role(world, test_app.sp["id"], EXCHANGE_APP_ID, "Exchange.ManageAsApp")
    if role is not None:
        assign_directory_role(world, test_app.sp["id"], role)
    return test_app
