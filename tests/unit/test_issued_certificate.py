"""Which issued version is ours: the one whose certificate carries our create request's public key."""

from __future__ import annotations

import datetime as dt

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, pkcs12
from cryptography.x509.oid import NameOID

from shared.adapters.vault import version_from_pfx

NAME = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "exo-automation-reports")])
START = dt.datetime(2026, 11, 30, tzinfo=dt.UTC)


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _csr(key: rsa.RSAPrivateKey) -> bytes:
    return x509.CertificateSigningRequestBuilder().subject_name(NAME).sign(key, hashes.SHA256()).public_bytes(
        Encoding.DER)


def _pfx(key: rsa.RSAPrivateKey) -> tuple[bytes, x509.Certificate]:
    certificate = (x509.CertificateBuilder().subject_name(NAME).issuer_name(NAME).public_key(key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(START)
                   .not_valid_after(START + dt.timedelta(days=365)).sign(key, hashes.SHA256()))
    return pkcs12.serialize_key_and_certificates(None, key, certificate, None, NoEncryption()), certificate


def test_the_version_issued_for_our_request_is_read_from_its_pfx() -> None:
    key = _key()
    pfx, certificate = _pfx(key)
    version = version_from_pfx(pfx, "v1", _csr(key))
    assert version is not None
    assert version.version == "v1"
    assert version.thumbprint == certificate.fingerprint(hashes.SHA1()).hex().upper()
    assert (version.not_before, version.not_after) == (START, START + dt.timedelta(days=365))
    assert version.der == certificate.public_bytes(Encoding.DER)


def test_a_version_with_another_key_is_not_ours() -> None:
    pfx, _ = _pfx(_key())
    assert version_from_pfx(pfx, "v1", _csr(_key())) is None


def test_unreadable_input_is_not_ours() -> None:
    key = _key()
    pfx, _ = _pfx(key)
    assert version_from_pfx(b"not a pfx", "v1", _csr(key)) is None
    assert version_from_pfx(pfx, "v1", b"not a csr") is None
