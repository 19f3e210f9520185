"""Issue: rotate now through POST /api/identities/{name}/rotate."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from devstack import Stack
from tests.support.tenant import only

from .helpers import get_identity, post_identity, rotate, run_job_get_mailbox, write_count


def connection_record(stack: Stack, name: str) -> dict[str, Any]:
    from azure.identity import ManagedIdentityCredential
    from azure.keyvault.secrets import SecretClient

    with ManagedIdentityCredential() as credential, \
            SecretClient(stack.settings()["KEY_VAULT_URL"], credential) as secrets:
        record: dict[str, Any] = json.loads(secrets.get_secret(f"exo-{name}-connection").value or "")
    return record


def pfx_of(stack: Stack, record: dict[str, Any]) -> bytes:
    from azure.identity import ManagedIdentityCredential
    from azure.keyvault.secrets import SecretClient

    with ManagedIdentityCredential() as credential, \
            SecretClient(stack.settings()["KEY_VAULT_URL"], credential) as secrets:
        return base64.b64decode(secrets.get_secret(record["certificateName"], record["certificateVersion"]).value
                                or "")


def exchange_token(stack: Stack, record: dict[str, Any], pfx: bytes) -> str:
    from azure.identity import CertificateCredential

    settings = stack.settings()
    with CertificateCredential(record["tenantId"], record["appId"], certificate_data=pfx,
                               authority=settings["AZURE_AUTHORITY_HOST"],
                               disable_instance_discovery=True) as credential:
        return credential.get_token(f"{settings['EXO_ENDPOINT']}/.default").token


def cert_versions(stack: Stack, name: str) -> list[dict[str, Any]]:
    state = stack.world.services["keyvault"].snapshot()
    (cert,) = [c for c in state["certificates"] if c["name"] == f"exo-{name}-cert"]
    return list(cert["versions"])


def app_of(stack: Stack, name: str) -> dict[str, Any]:
    return only(list(stack.world.directory.applications.values()), uniqueName=f"exo-automation-{name}")


def test_rotate_now_publishes_a_new_version_and_keeps_the_old_one_working(stack: Stack) -> None:
    assert post_identity({"name": "rotor"}).status == 201
    old = connection_record(stack, "rotor")
    old_pfx = pfx_of(stack, old)

    response = rotate("rotor")

    assert response.status == 200, response.body
    assert response.body["operation"] == "rotate" and response.body["result"] == "Succeeded"
    assert response.body["plan"]["facets"]["certificate"]["reason"] == "RotationRequested"
    done = [e["action"] for e in response.body["executed"]]
    assert done.index("CreateCertificateVersion") < done.index("AddKeyCredential") \
        < done.index("VerifySignIn") < done.index("PublishConnectionRecord")
    assert "RetireKeyCredential" not in done, "the previous key stays for the grace period"

    versions = cert_versions(stack, "rotor")
    assert len(versions) == 2
    new = connection_record(stack, "rotor")
    assert new["thumbprint"] != old["thumbprint"]
    assert new["previousThumbprint"] == old["thumbprint"]
    assert new["certificateVersion"] != old["certificateVersion"]
    assert {v["thumbprint"] for v in versions} == {old["thumbprint"], new["thumbprint"]}
    assert new["appId"] == old["appId"], "rotation keeps the identity"

    keys = app_of(stack, "rotor")["keyCredentials"]
    assert len(keys) == 2
    status = get_identity("rotor").body
    assert status["certificate"]["thumbprint"] == new["thumbprint"]
    assert status["connectionRecord"]["previousThumbprint"] == old["thumbprint"]
    assert [k["managed"] for k in status["keyCredentials"]] == [True, True]
    assert status["inSync"] is True

    # A job that reads the record now uses the new certificate; one still holding the old one works too.
    assert run_job_get_mailbox(stack, "rotor")
    assert exchange_token(stack, new, pfx_of(stack, new))
    assert exchange_token(stack, old, old_pfx)


def test_dry_run_rotate_changes_nothing(stack: Stack) -> None:
    assert post_identity({"name": "still"}).status == 201
    before = connection_record(stack, "still")
    app_before = json.dumps(app_of(stack, "still"), sort_keys=True)
    stack.world.counter.reset()

    response = rotate("still", params={"dryRun": "true"})

    assert response.status == 200, response.body
    assert response.body["dryRun"] is True and response.body["executed"] == []
    planned = [a["action"] for a in response.body["plan"]["actions"]]
    assert planned[0] == "CreateCertificateVersion"
    assert {"AddKeyCredential", "PublishConnectionRecord"} <= set(planned)
    assert write_count(stack) == 0
    assert len(cert_versions(stack, "still")) == 1
    assert connection_record(stack, "still") == before
    assert json.dumps(app_of(stack, "still"), sort_keys=True) == app_before


@pytest.mark.parametrize("dry_run", [False, True], ids=["rotate", "dry-run rotate"])
def test_rotating_an_unknown_identity_is_404(stack: Stack, dry_run: bool) -> None:
    stack.world.counter.reset()
    response = rotate("nobody", params={"dryRun": "true"} if dry_run else {})
    assert response.status == 404
    assert response.content_type == "application/problem+json"
    assert response.body["reason"] == "IdentityNotFound" and "nobody" in response.body["detail"]
    assert write_count(stack) == 0


def test_rotating_twice_keeps_the_last_two_and_the_next_run_retires_the_oldest(stack: Stack) -> None:
    assert post_identity({"name": "twice"}).status == 201
    first = connection_record(stack, "twice")["thumbprint"]
    assert rotate("twice").status == 200
    second = connection_record(stack, "twice")["thumbprint"]
    assert rotate("twice").status == 200
    record = connection_record(stack, "twice")
    assert (record["previousThumbprint"], record["thumbprint"] != second) == (second, True)

    settle = post_identity({"name": "twice"})
    assert settle.status in (200, 201), settle.body
    retired = [e["detail"] for e in settle.body["executed"] if e["action"] == "RetireKeyCredential"]
    assert retired == [f"removed {first}"]
    assert len(app_of(stack, "twice")["keyCredentials"]) == 2
    assert run_job_get_mailbox(stack, "twice")


def test_rotation_leaves_an_admins_own_key_on_the_app(stack: Stack) -> None:
    import datetime as dt
    import uuid

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    assert post_identity({"name": "shared-app"}).status == 201
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "admin break-glass")])
    now = stack.world.clock.now()
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=200)).sign(key, hashes.SHA256()))
    admin_key_id = str(uuid.uuid4())
    app_of(stack, "shared-app")["keyCredentials"].append({
        "customKeyIdentifier": base64.b64encode(cert.fingerprint(hashes.SHA1())).decode(),
        "displayName": "admin break-glass", "endDateTime": cert.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "key": base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode(), "keyId": admin_key_id,
        "startDateTime": cert.not_valid_before_utc.strftime("%Y-%m-%dT%H:%M:%SZ"), "type": "AsymmetricX509Cert",
        "usage": "Verify"})

    assert rotate("shared-app").status == 200
    assert rotate("shared-app").status == 200
    assert post_identity({"name": "shared-app"}).status in (200, 201)

    key_ids = [k["keyId"] for k in app_of(stack, "shared-app")["keyCredentials"]]
    assert admin_key_id in key_ids
    status = get_identity("shared-app").body
    assert [k["managed"] for k in status["keyCredentials"] if k["keyId"] == admin_key_id] == [False]
