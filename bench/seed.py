"""Seed many identities into the in-process stand-ins fast, as the product would have left them.

Bootstrapping through the product costs ~0.75 s per identity, too slow for a fleet of 1,000. So one
identity (the template) is bootstrapped through `shared.service.bootstrap`, and its state is then
cloned directly into the stand-ins' in-memory state, under `world.lock`:

- Key Vault: the certificate (policy, one issued version with a distinct self-signed X.509 built as
  the stand-in builds it, sharing the template's RSA key: generating a key per identity is slow),
  its tags as `record_outcome` wrote them (identity, appId, servicePrincipalId, publishedThumbprint
  substituted; `lastRun` kept, so no deep check is due), and the connection secret (record JSON and
  tags substituted);
- Graph: the application (uniqueName, displayName, keyCredentials with `keyId = key_id_for(thumbprint)`,
  key and customKeyIdentifier of the new certificate), its service principal, their owners, the
  Exchange.ManageAsApp assignment and the directory role assignments.

Substitution is by value: every string of the template's objects has the template's name, ids,
certificate version and thumbprint replaced (they are GUIDs / hex / a hyphenated name, so they cannot
occur by accident inside base64 or another value); key material is set explicitly. `check_clone`
reads a clone back and compares it with the template field by field (`faithfulness`); the benchmark
also asserts that a sweep finds nothing due and that a full reconcile of a clone changes nothing.
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import hashlib
import json
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives import serialization

if TYPE_CHECKING:
    from devstack import Stack


def bootstrap_template(stack: Stack, name: str) -> None:
    """Bootstrap the template identity through the product (shared.service.bootstrap)."""
    import asyncio

    from shared.platform import Platform
    from shared.service import bootstrap
    from shared.settings import Settings

    async def go() -> Any:
        platform = Platform.create(Settings.from_environment(), clock=stack.world.clock.now)
        try:
            return await bootstrap(platform, {"name": name})
        finally:
            await platform.aclose()

    result = asyncio.run(go())
    if result.error is not None:
        raise RuntimeError(f"bootstrap of the template identity failed: {result.error.reason}")


def certificate_name(identity: str) -> str:
    return f"exo-{identity}-cert"


def secret_name(identity: str) -> str:
    return f"exo-{identity}-connection"


def unique_name(identity: str) -> str:
    return f"exo-automation-{identity}"


@dataclass(frozen=True)
class Template:
    """What a bootstrapped identity left in the stand-ins (references into their state)."""

    name: str
    version: str
    thumbprint: str
    app: dict[str, Any]
    service_principal: dict[str, Any]
    grants: list[dict[str, Any]]
    role_assignments: list[dict[str, Any]]


def _substitute(value: Any, mapping: dict[str, str]) -> Any:
    if isinstance(value, str):
        for old, new in mapping.items():
            value = value.replace(old, new)
        return value
    if isinstance(value, dict):
        return {k: _substitute(v, mapping) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, mapping) for v in value]
    return copy.deepcopy(value)


def template_of(stack: Stack, name: str) -> Template:
    world = stack.world
    kv = world.services["keyvault"]
    d = world.directory
    with world.lock:
        cert = kv.certificates[certificate_name(name).lower()]
        current = cert.current()
        assert current.certificate is not None, "the template's certificate is still pending"
        der = current.certificate.public_bytes(serialization.Encoding.DER)
        app = next(a for a in d.applications.values() if a.get("uniqueName") == unique_name(name))
        sp = d.sp_by_app_id(app["appId"])
        assert sp is not None, "the template has no service principal"
        grants = [a for a in d.app_role_assignments.values() if a["principalId"] == sp["id"]]
        roles = [a for a in d.role_assignments.values() if a["principalId"] == sp["id"]]
    return Template(name, current.version, hashlib.sha1(der).hexdigest().upper(),
                    app, sp, grants, roles)


def _role_assignment_id(definition_id: str, principal_id: str) -> str:
    # As the Graph stand-in (and Graph) names tenant-wide assignments.
    raw = uuid.UUID(definition_id).bytes_le + uuid.UUID(principal_id).bytes_le
    return base64.urlsafe_b64encode(raw).decode().rstrip("=") + "-1"


def clone(stack: Stack, template: Template, names: list[str]) -> None:
    """Add `names` as identities in the same state as `template` (their own ids, keys and certificates)."""
    from devstack.graph import _opaque_id
    from devstack.keyvault import Certificate, CertVersion, Secret, build_certificate
    from shared.core.model import key_id_for

    world = stack.world
    kv = world.services["keyvault"]
    d = world.directory
    with world.lock:
        t_cert = kv.certificates[certificate_name(template.name).lower()]
        t_version = t_cert.current()
        t_secret = kv.secrets[secret_name(template.name).lower()]
        t_secret_version = t_secret.versions[-1]
        t_key = next(k for k in template.app["keyCredentials"] if k["keyId"] == key_id_for(template.thumbprint))
        owners_app = list(d.owners.get(template.app["id"], []))
        owners_sp = list(d.owners.get(template.service_principal["id"], []))

    # Certificates are built outside the lock (signing is the slow part).
    built = []
    for name in names:
        app_object_id, app_id, sp_id, version = str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4()), \
            uuid.uuid4().hex
        props = _substitute(t_version.x509_props, {template.name: name})
        certificate = build_certificate(t_version.key, props, t_version.nbf, t_version.exp)
        der = certificate.public_bytes(serialization.Encoding.DER)
        thumbprint = hashlib.sha1(der).hexdigest().upper()
        mapping = {
            template.app["id"]: app_object_id, template.app["appId"]: app_id,
            template.service_principal["id"]: sp_id, template.version: version, template.thumbprint: thumbprint,
            template.name: name,
        }
        built.append((name, mapping, props, certificate, der, thumbprint, version))

    with world.lock:
        for name, mapping, props, certificate, der, thumbprint, version in built:
            sub = _substitute
            cert_version = dataclasses.replace(
                t_version, version=version, x509_props=props, certificate=certificate,
                tags=sub(t_version.tags, mapping))
            assert isinstance(cert_version, CertVersion)
            operation = None
            if t_cert.operation is not None:
                operation = dataclasses.replace(t_cert.operation, request_id=uuid.uuid4().hex, version=version,
                                                target=sub(t_cert.operation.target, mapping))
            kv.certificates[certificate_name(name).lower()] = Certificate(
                name=certificate_name(name), policy=sub(t_cert.policy, mapping),
                policy_created=t_cert.policy_created, policy_updated=t_cert.policy_updated,
                versions=[cert_version], operation=operation)
            kv.secrets[secret_name(name).lower()] = Secret(secret_name(name), [dataclasses.replace(
                t_secret_version, version=uuid.uuid4().hex, value=sub(t_secret_version.value, mapping),
                tags=sub(t_secret_version.tags, mapping))])

            app = sub(template.app, mapping)
            key_entry = sub(t_key, mapping)
            key_entry.update(keyId=key_id_for(thumbprint), key=base64.b64encode(der).decode(),
                             customKeyIdentifier=base64.b64encode(bytes.fromhex(thumbprint)).decode())
            app["keyCredentials"] = [key_entry]
            d.applications[app["id"]] = app
            d.owners[app["id"]] = list(owners_app)
            sp = sub(template.service_principal, mapping)
            d.service_principals[sp["id"]] = sp
            d.owners[sp["id"]] = list(owners_sp)
            for grant in template.grants:
                copied = sub(grant, mapping)
                copied["id"] = _opaque_id()
                d.app_role_assignments[copied["id"]] = copied
            for assignment in template.role_assignments:
                copied = sub(assignment, mapping)
                copied["id"] = _role_assignment_id(copied["roleDefinitionId"], copied["principalId"])
                d.role_assignments[copied["id"]] = copied


def faithfulness(stack: Stack, template: Template, name: str) -> dict[str, Any]:
    """Compare a clone with the template: which fields differ (expected: ids, names, keys only)."""
    clone_state = template_of(stack, name)
    kv = stack.world.services["keyvault"]
    with stack.world.lock:
        tags_t = kv.certificates[certificate_name(template.name).lower()].current().tags
        tags_c = kv.certificates[certificate_name(name).lower()].current().tags
        record_t = json.loads(kv.secrets[secret_name(template.name).lower()].versions[-1].value)
        record_c = json.loads(kv.secrets[secret_name(name).lower()].versions[-1].value)

    def differing(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
        return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))

    return {
        "certificateTagsDiffer": differing(tags_t, tags_c),
        "certificateTagsMatchClone": tags_c.get("identity") == name
        and tags_c.get("appId") == clone_state.app["appId"]
        and tags_c.get("servicePrincipalId") == clone_state.service_principal["id"]
        and tags_c.get("publishedThumbprint") == clone_state.thumbprint,
        "recordFieldsDiffer": differing(record_t, record_c),
        "applicationFieldsDiffer": differing(template.app, clone_state.app),
        "servicePrincipalFieldsDiffer": differing(template.service_principal, clone_state.service_principal),
        "grants": len(clone_state.grants), "roleAssignments": len(clone_state.role_assignments),
    }


__all__ = ["Template", "certificate_name", "clone", "faithfulness", "secret_name", "template_of", "unique_name"]
