"""The version a run requests is waited for where it is needed, and recognised by its key.

Through the real certificates and secrets clients against the Key Vault stand-in: the create request's
CSR names the new version's public key; the backing secret read that proves it also gives the sign-in
proof its private key, so a bootstrap reads the new version once.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from azure.keyvault.certificates import CertificatePolicy
from cryptography.hazmat.primitives.serialization import pkcs12

from devstack import Stack
from devstack.faults import Fault

from .attackers import vault_certificate_writer
from .helpers import post_identity

OURS = {"managed-by": "exo-automation-identities"}


def _create_and_await(name: str, between: Any = None) -> Any:
    """Start a creation of identity `name` through the product's gateway, run `between()`, then await it."""
    from azure.identity.aio import ManagedIdentityCredential

    from shared.adapters.vault import VaultGateway
    from shared.core.spec import parse_spec
    from shared.settings import Settings

    async def run() -> Any:
        settings = Settings.from_environment()
        async with ManagedIdentityCredential() as credential:
            vault = VaultGateway(settings, credential)
            try:
                spec = parse_spec({"name": name}, settings)
                started = await vault.start_certificate_version(spec.names.certificate, spec,
                                                                {**OURS, "identity": name})
                if between is not None:
                    await asyncio.to_thread(between)
                return started, await vault.await_certificate(spec.names.certificate, started)
            finally:
                await vault.aclose()

    return asyncio.run(run())


def test_the_requested_version_is_read_once_with_its_key(stack: Stack) -> None:
    started, issued = _create_and_await("issued")
    assert started.csr, "Key Vault answered the create request with a CSR"
    assert issued.pfx is not None
    key, certificate, _ = pkcs12.load_key_and_certificates(issued.pfx, None)
    assert key is not None and certificate is not None
    (only,) = stack.world.services["keyvault"].certificates["exo-issued-cert"].issued()
    assert issued.version.version == only.version
    # The same version as Key Vault's certificate read would give: thumbprint, validity, DER.
    from azure.identity import ManagedIdentityCredential
    from azure.keyvault.certificates import CertificateClient

    with CertificateClient(stack.settings()["KEY_VAULT_URL"], ManagedIdentityCredential()) as client:
        read = client.get_certificate("exo-issued-cert")
    assert issued.version.thumbprint == bytes(read.properties.x509_thumbprint).hex().upper()
    assert issued.version.not_after == read.properties.expires_on
    assert issued.version.der == bytes(read.cer)


def test_without_the_secret_read_the_version_is_judged_by_its_tags(stack: Stack) -> None:
    stack.world.faults.add(Fault.from_json({"service": "keyvault", "method": "GET", "path": r"^/secrets/exo-",
                                            "status": 403}))
    _, issued = _create_and_await("no-secret-read")
    assert issued.pfx is None and issued.version.der


def test_a_newer_untagged_version_than_ours_is_not_adopted(stack: Stack) -> None:
    """A certificate writer adds a version between our creation's end and our read of it: the key is not
    our CSR's, and the version carries none of our tags, so it is refused rather than put on the app."""
    from shared.errors import ForeignObject

    writer = vault_certificate_writer(stack)

    def add_foreign_version() -> None:
        with writer.certificates() as client:
            client.begin_create_certificate("exo-overtaken-cert", CertificatePolicy.get_default())

    with pytest.raises(ForeignObject):
        _create_and_await("overtaken", between=add_foreign_version)


def test_a_bootstrap_makes_the_app_while_the_certificate_is_issued(stack: Stack) -> None:
    """With a 2 s issuance, the app registration and its grant exist before the creation completes, and
    the new version is read once (its backing secret), not through a certificate read as well."""
    keyvault = stack.world.services["keyvault"]
    keyvault.creation_delay = 2.0
    stack.world.counter.reset()
    answer = post_identity({"name": "overlap"})
    assert answer.status == 201, answer.body
    steps = [e["action"] for e in answer.body["executed"]]
    assert steps.index("UpsertApplication") < steps.index("AwaitCertificate") < steps.index("AddKeyCredential")
    counts = {(c["service"], c["method"], c["route"]): c["count"] for c in stack.world.counter.snapshot()}
    certificate_reads = sum(n for (s, m, r), n in counts.items()
                            if s == "keyvault" and m == "GET" and r.startswith("^/certificates/"))
    secret_reads = sum(n for (s, m, r), n in counts.items() if s == "keyvault" and m == "GET" and "secrets" in r)
    assert certificate_reads == 1, counts  # the observation's; none after the creation
    assert secret_reads == 2, counts  # the connection record's, and the new version with its key
