"""Key Vault's data plane (certificates and secrets) as azure-keyvault-certificates/-secrets see it.

Wire shapes, defaults and error bodies follow docs/reference.md, the SDKs' generated models and
responses recorded from the real service by the Azure SDK test suites. Where the service's
behaviour is not documented the choice made is the stricter one and is marked "unverified".

Timestamps come from the simulated clock (certificate validity, autorenew, purge dates); the delay
before a pending creation completes is real time, because the SDK's poller sleeps in real time.
"""

from __future__ import annotations

import base64
import binascii
import calendar
import datetime as dt
import fnmatch
import hashlib
import ipaddress
import json
import re
import secrets
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

from .pki import new_rsa_key, private_key_pem
from .tokens import bearer_token
from .web import HttpError, Request, Response, Service
from .world import World, iso

NAME_RE = re.compile(r"^[0-9a-zA-Z-]{1,127}$")
PAGE_MAX = 25
PKCS12 = "application/x-pkcs12"
PEM = "application/x-pem-file"
# Real self-signed certificates start 10 minutes before their creation (recorded responses:
# nbf = created - 600 s, exp = created + validity_months).
NOT_BEFORE_SKEW = dt.timedelta(minutes=10)
DEFAULT_RETENTION_DAYS = 90
SECRET_VALUE_MAX = 25 * 1024  # doc: 25 KB per secret value
MAX_TAGS = 15  # unverified (docs/reference.md: commonly 15 per object)
RSA_KEY_SIZES = (2048, 3072, 4096)
OID_RE = re.compile(r"\d+(\.\d+)+")
PEM_KEY_RE = re.compile(rb"-----BEGIN (?:RSA |ENCRYPTED )?PRIVATE KEY-----.*?-----END (?:RSA |ENCRYPTED )?"
                        rb"PRIVATE KEY-----", re.S)
SERVER_AUTH, CLIENT_AUTH = "1.3.6.1.5.5.7.3.1", "1.3.6.1.5.5.7.3.2"
KEY_USAGES = {
    "digitalSignature": "digital_signature", "nonRepudiation": "content_commitment",
    "keyEncipherment": "key_encipherment", "dataEncipherment": "data_encipherment",
    "keyAgreement": "key_agreement", "keyCertSign": "key_cert_sign", "cRLSign": "crl_sign",
    "encipherOnly": "encipher_only", "decipherOnly": "decipher_only",
}
NOT_FOUND_HINT = ("If you recently deleted this {kind} you may be able to recover it using the correct "
                  "recovery command. For help resolving this issue, please see "
                  "https://go.microsoft.com/fwlink/?linkid=2125182")

# Built-in data-plane roles (doc: Azure built-in roles, Key Vault data actions).
KV = "Microsoft.KeyVault/vaults"
ROLE_DATA_ACTIONS: dict[str, tuple[str, ...]] = {
    "Key Vault Administrator": (f"{KV}/*",),
    "Key Vault Certificates Officer": (f"{KV}/certificatecas/*", f"{KV}/certificates/*",
                                       f"{KV}/certificatecontacts/write"),
    "Key Vault Certificate User": (f"{KV}/certificates/read", f"{KV}/secrets/getSecret/action",
                                   f"{KV}/secrets/readMetadata/action", f"{KV}/keys/read"),
    "Key Vault Secrets Officer": (f"{KV}/secrets/*",),
    "Key Vault Secrets User": (f"{KV}/secrets/getSecret/action", f"{KV}/secrets/readMetadata/action"),
    "Key Vault Reader": (f"{KV}/*/read", f"{KV}/secrets/readMetadata/action"),
}

_X500_ATTRIBUTES = {
    "CN": NameOID.COMMON_NAME, "O": NameOID.ORGANIZATION_NAME, "OU": NameOID.ORGANIZATIONAL_UNIT_NAME,
    "L": NameOID.LOCALITY_NAME, "ST": NameOID.STATE_OR_PROVINCE_NAME, "S": NameOID.STATE_OR_PROVINCE_NAME,
    "C": NameOID.COUNTRY_NAME, "E": NameOID.EMAIL_ADDRESS, "EMAIL": NameOID.EMAIL_ADDRESS,
    "DC": NameOID.DOMAIN_COMPONENT, "SERIALNUMBER": NameOID.SERIAL_NUMBER, "STREET": NameOID.STREET_ADDRESS,
    "T": NameOID.TITLE, "TITLE": NameOID.TITLE, "G": NameOID.GIVEN_NAME, "GN": NameOID.GIVEN_NAME,
    "SN": NameOID.SURNAME, "UID": NameOID.USER_ID,
}


def _bad(message: str) -> HttpError:
    return HttpError(400, "BadParameter", message)


def _ts(moment: dt.datetime) -> int:
    return int(moment.timestamp())


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _new_version() -> str:
    return uuid.uuid4().hex


def add_months(moment: dt.datetime, months: int) -> dt.datetime:
    month_index = moment.month - 1 + months
    year, month = moment.year + month_index // 12, month_index % 12 + 1
    day = min(moment.day, calendar.monthrange(year, month)[1])
    return moment.replace(year=year, month=month, day=day)


def parse_subject(subject: str) -> x509.Name:
    """An X.500 name as Key Vault accepts it: "CN=a, O=b", attribute names case-insensitive."""
    parts, current, escaped, quoted = [], "", False, False
    for char in subject:
        if escaped:
            current += char
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char in ",;" and not quoted:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    attributes = []
    for part in parts:
        attr, sep, value = part.strip().partition("=")
        attr, value = attr.strip(), value.strip()
        if not sep or not attr or not value:
            raise _bad(f"The subject name '{subject}' is not a valid X.500 distinguished name.")
        if OID_RE.fullmatch(attr):
            oid = x509.ObjectIdentifier(attr)
        elif attr.upper() in _X500_ATTRIBUTES:
            oid = _X500_ATTRIBUTES[attr.upper()]
        else:
            raise _bad(f"The subject name '{subject}' has an unknown attribute '{attr}'.")
        try:
            attributes.append(x509.NameAttribute(oid, value))
        except ValueError as exc:
            raise _bad(f"The subject name '{subject}' is not valid: {exc}") from exc
    # Written most specific first (as LDAP strings are); encoded the other way round.
    return x509.Name([x509.RelativeDistinguishedName([a]) for a in reversed(attributes)])


def _strict_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# -- state --------------------------------------------------------------------------------------------


@dataclass
class CertVersion:
    version: str
    created: dt.datetime
    updated: dt.datetime
    nbf: dt.datetime
    exp: dt.datetime
    key: rsa.RSAPrivateKey
    content_type: str
    exportable: bool
    x509_props: dict[str, Any]
    enabled: bool = False
    requested_enabled: bool = True
    tags: dict[str, str] = field(default_factory=dict)
    certificate: x509.Certificate | None = None  # None while the issuance is pending


@dataclass
class Operation:
    request_id: str
    version: str
    csr: bytes
    issuer: dict[str, Any]
    ready_at: float
    status: str = "inProgress"
    cancellation_requested: bool = False
    target: str | None = None


@dataclass
class Certificate:
    name: str
    policy: dict[str, Any]
    policy_created: dt.datetime
    policy_updated: dt.datetime
    versions: list[CertVersion] = field(default_factory=list)
    operation: Operation | None = None

    def current(self) -> CertVersion:
        """The version GET /certificates/{name} returns: the newest issued one, else the pending one.

        A first creation still pending shows as a disabled version without `cer` (recorded); while a
        later version is pending the previous one stays current (unverified).
        """
        issued = [v for v in self.versions if v.certificate is not None]
        return issued[-1] if issued else self.versions[-1]

    def issued(self) -> list[CertVersion]:
        return [v for v in self.versions if v.certificate is not None]

    def find(self, version: str) -> CertVersion | None:
        for v in self.versions:
            if v.version == version.lower():
                return v
        return None


@dataclass
class SecretVersion:
    version: str
    value: str
    content_type: str | None
    created: dt.datetime
    updated: dt.datetime
    enabled: bool = True
    nbf: dt.datetime | None = None
    exp: dt.datetime | None = None
    tags: dict[str, str] = field(default_factory=dict)


@dataclass
class Secret:
    name: str
    versions: list[SecretVersion] = field(default_factory=list)

    def find(self, version: str) -> SecretVersion | None:
        for v in self.versions:
            if v.version == version.lower():
                return v
        return None


@dataclass
class Deleted:
    item: Certificate | Secret
    deleted: dt.datetime
    purge_at: dt.datetime


# -- policy -------------------------------------------------------------------------------------------


def normalize_policy(raw: Any, now: dt.datetime) -> dict[str, Any]:
    """The policy as the service stores and returns it, defaults filled in; 400 BadParameter if invalid.

    Defaults are those of recorded responses: exportable RSA 2048, PKCS#12, serverAuth+clientAuth,
    digitalSignature+keyEncipherment, 12 months, AutoRenew at 80 % of the lifetime.
    """
    if not isinstance(raw, dict):
        raise _bad("The certificate policy must be a JSON object.")
    key_in = raw.get("key_props") or {}
    secret_in = raw.get("secret_props") or {}
    x509_in = raw.get("x509_props") or {}
    issuer_in = raw.get("issuer") or {}
    for section, value in (("key_props", key_in), ("secret_props", secret_in), ("x509_props", x509_in),
                           ("issuer", issuer_in)):
        if not isinstance(value, dict):
            raise _bad(f"The policy property '{section}' must be an object.")

    kty = key_in.get("kty") or "RSA"
    if kty not in ("RSA", "RSA-HSM"):
        # Real vaults also issue EC certificates; this stand-in only makes RSA keys.
        raise _bad(f"Key type '{kty}' is not supported by this vault (only RSA is).")
    key_size = key_in.get("key_size") or 2048
    if not _strict_int(key_size) or key_size not in RSA_KEY_SIZES:
        raise _bad(f"The key size {key_size} is not valid for RSA keys; use 2048, 3072 or 4096.")
    exportable = key_in.get("exportable")
    reuse_key = key_in.get("reuse_key")
    for label, flag in (("exportable", exportable), ("reuse_key", reuse_key)):
        if flag is not None and not isinstance(flag, bool):
            raise _bad(f"The key property '{label}' must be a boolean.")
    key_props = {"exportable": True if exportable is None else exportable, "kty": kty, "key_size": key_size,
                 "reuse_key": bool(reuse_key)}

    content_type = secret_in.get("contentType") or PKCS12
    if content_type not in (PKCS12, PEM):
        raise _bad(f"The content type '{content_type}' is not supported; use {PKCS12} or {PEM}.")

    x509_props: dict[str, Any] = {}
    subject = x509_in.get("subject")
    sans_in = x509_in.get("sans") or {}
    if not isinstance(sans_in, dict):
        raise _bad("The policy property 'sans' must be an object.")
    sans = {k: v for k, v in sans_in.items() if v}
    for k, v in sans.items():
        if k not in ("emails", "dns_names", "upns", "uris", "ipAddresses") or not isinstance(v, list) \
                or not all(isinstance(item, str) and item for item in v):
            raise _bad(f"The subject alternative name property '{k}' is not valid.")
    for address in sans.get("ipAddresses", []):
        try:
            ipaddress.ip_address(address)
        except ValueError as exc:
            raise _bad(f"'{address}' is not a valid IP address.") from exc
    if subject is not None:
        if not isinstance(subject, str) or not subject.strip():
            raise _bad("The subject must be a non-empty string.")
        parse_subject(subject)
        x509_props["subject"] = subject
    elif not sans:
        raise _bad("The certificate policy needs a subject or subject alternative names.")
    if "sans" in x509_in:
        x509_props["sans"] = sans
    ekus = x509_in.get("ekus")
    if ekus is None:
        ekus = [SERVER_AUTH, CLIENT_AUTH]
    if not isinstance(ekus, list) or not all(isinstance(e, str) and OID_RE.fullmatch(e) for e in ekus):
        raise _bad("The extended key usages must be a list of object identifiers.")
    x509_props["ekus"] = ekus
    key_usage = x509_in.get("key_usage")
    if key_usage is None:
        key_usage = ["digitalSignature", "keyEncipherment"]
    if not isinstance(key_usage, list) or any(u not in KEY_USAGES for u in key_usage):
        raise _bad(f"The key usage {key_usage!r} is not valid; allowed: {', '.join(KEY_USAGES)}.")
    if ({"encipherOnly", "decipherOnly"} & set(key_usage)) and "keyAgreement" not in key_usage:
        raise _bad("The key usages encipherOnly and decipherOnly require keyAgreement.")
    x509_props["key_usage"] = key_usage
    validity = x509_in.get("validity_months")
    if validity is None:
        validity = 12
    if not _strict_int(validity) or not 1 <= validity <= 1200:
        raise _bad(f"The validity_months value {validity!r} is not valid.")
    x509_props["validity_months"] = validity
    x509_props["basic_constraints"] = {"ca": False}

    validity_days = (add_months(now, validity) - now).days
    actions_in = raw.get("lifetime_actions")
    if actions_in is None:
        actions_in = [{"trigger": {"lifetime_percentage": 80}, "action": {"action_type": "AutoRenew"}}]
    if not isinstance(actions_in, list):
        raise _bad("The lifetime actions must be a list.")
    actions = []
    for entry in actions_in:
        trigger = entry.get("trigger") if isinstance(entry, dict) else None
        action = entry.get("action") if isinstance(entry, dict) else None
        if not isinstance(trigger, dict) or not isinstance(action, dict):
            raise _bad("Each lifetime action needs a trigger and an action.")
        percentage, days = trigger.get("lifetime_percentage"), trigger.get("days_before_expiry")
        if (percentage is None) == (days is None):
            raise _bad("A lifetime action trigger needs exactly one of lifetime_percentage and "
                       "days_before_expiry.")
        if percentage is not None and (not _strict_int(percentage) or not 1 <= percentage <= 99):
            raise _bad(f"The lifetime_percentage {percentage!r} must be between 1 and 99.")
        if days is not None and (not _strict_int(days) or not 1 <= days < validity_days):
            raise _bad(f"The days_before_expiry {days!r} must be at least 1 and less than the validity "
                       f"({validity_days} days).")
        kind = {"autorenew": "AutoRenew", "emailcontacts": "EmailContacts"}.get(
            str(action.get("action_type", "")).lower())
        if kind is None:
            raise _bad(f"The lifetime action type {action.get('action_type')!r} is not valid.")
        actions.append({"trigger": {"lifetime_percentage": percentage} if percentage is not None
                        else {"days_before_expiry": days}, "action": {"action_type": kind}})

    issuer_name = issuer_in.get("name") or "Unknown"
    issuer = {k: v for k, v in issuer_in.items() if v is not None}
    canonical = {"self": "Self", "unknown": "Unknown"}.get(str(issuer_name).lower())
    if canonical is None:
        # No issuer providers are configured in this vault (unverified wording).
        raise _bad(f"Issuer '{issuer_name}' not found; this vault supports the Self and Unknown issuers.")
    issuer["name"] = canonical

    enabled = (raw.get("attributes") or {}).get("enabled")
    return {
        "key_props": key_props,
        "secret_props": {"contentType": content_type},
        "x509_props": x509_props,
        "lifetime_actions": actions,
        "issuer": issuer,
        "attributes": {"enabled": True if enabled is None else bool(enabled)},
    }


def merge_policy(current: dict[str, Any], update: Any) -> dict[str, Any]:
    """PATCH semantics of the policy: members present in the update replace, the rest stay."""
    if not isinstance(update, dict):
        raise _bad("The certificate policy must be a JSON object.")
    merged = json.loads(json.dumps(current))
    for section, value in update.items():
        if section == "id" or value is None:
            continue
        if isinstance(value, dict) and isinstance(merged.get(section), dict):
            merged[section].update({k: v for k, v in value.items() if v is not None})
        else:
            merged[section] = value
    return merged


def _key_usage_extension(names: list[str]) -> x509.KeyUsage:
    flags = dict.fromkeys(KEY_USAGES.values(), False)
    for name in names:
        flags[KEY_USAGES[name]] = True
    return x509.KeyUsage(**flags)


def _sans_extension(sans: dict[str, list[str]]) -> x509.SubjectAlternativeName | None:
    names: list[x509.GeneralName] = []
    names += [x509.DNSName(n) for n in sans.get("dns_names", [])]
    names += [x509.RFC822Name(n) for n in sans.get("emails", [])]
    names += [x509.UniformResourceIdentifier(n) for n in sans.get("uris", [])]
    names += [x509.IPAddress(ipaddress.ip_address(n)) for n in sans.get("ipAddresses", [])]
    # UPNs are otherName entries (OID 1.3.6.1.4.1.311.20.2.3) holding a DER UTF8String.
    for upn in sans.get("upns", []):
        encoded = upn.encode()
        names.append(x509.OtherName(x509.ObjectIdentifier("1.3.6.1.4.1.311.20.2.3"),
                                    b"\x0c" + _der_length(len(encoded)) + encoded))
    return x509.SubjectAlternativeName(names) if names else None


def _der_length(length: int) -> bytes:
    if length < 0x80:
        return bytes([length])
    raw = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def _subject_of(x509_props: dict[str, Any]) -> x509.Name:
    subject = x509_props.get("subject")
    return parse_subject(subject) if subject else x509.Name([])


def _extensions(x509_props: dict[str, Any]) -> list[tuple[x509.ExtensionType, bool]]:
    result: list[tuple[x509.ExtensionType, bool]] = []
    if x509_props.get("key_usage"):
        result.append((_key_usage_extension(x509_props["key_usage"]), True))
    if x509_props.get("ekus"):
        result.append((x509.ExtendedKeyUsage([x509.ObjectIdentifier(o) for o in x509_props["ekus"]]), False))
    sans = _sans_extension(x509_props.get("sans") or {})
    if sans is not None:
        # An empty subject makes the SAN extension critical (RFC 5280 4.2.1.6).
        result.append((sans, not x509_props.get("subject")))
    # Key Vault marks basicConstraints non-critical (decoded from recorded certificates).
    result.append((x509.BasicConstraints(ca=False, path_length=None), False))
    return result


def build_csr(key: rsa.RSAPrivateKey, x509_props: dict[str, Any]) -> bytes:
    builder = x509.CertificateSigningRequestBuilder().subject_name(_subject_of(x509_props))
    for extension, critical in _extensions(x509_props):
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def build_certificate(key: rsa.RSAPrivateKey, x509_props: dict[str, Any], nbf: dt.datetime,
                      exp: dt.datetime) -> x509.Certificate:
    name = _subject_of(x509_props)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(int.from_bytes(secrets.token_bytes(16), "big") >> 1 or 1)
        .not_valid_before(nbf)
        .not_valid_after(exp)
    )
    for extension, critical in _extensions(x509_props):
        builder = builder.add_extension(extension, critical=critical)
    builder = builder.add_extension(
        x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False
    ).add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    return builder.sign(key, hashes.SHA256())


def _months_between(start: dt.datetime, end: dt.datetime) -> int:
    months = max(1, (end.year - start.year) * 12 + end.month - start.month)
    while add_months(start, months) < end:
        months += 1
    return months


def policy_from_certificate(cert: x509.Certificate, key: rsa.RSAPrivateKey,
                            content_type: str) -> dict[str, Any]:
    """The policy Key Vault derives for an imported certificate (recorded: issuer Unknown, EmailContacts)."""
    x509_props: dict[str, Any] = {"subject": cert.subject.rfc4514_string()}
    try:
        ekus = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        x509_props["ekus"] = [oid.dotted_string for oid in ekus]
    except x509.ExtensionNotFound:
        x509_props["ekus"] = []
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        names = []
        for name, attr in KEY_USAGES.items():
            if attr in ("encipher_only", "decipher_only") and not usage.key_agreement:
                continue
            if getattr(usage, attr):
                names.append(name)
        x509_props["key_usage"] = names
    except x509.ExtensionNotFound:
        x509_props["key_usage"] = []
    x509_props["validity_months"] = _months_between(cert.not_valid_before_utc, cert.not_valid_after_utc)
    x509_props["basic_constraints"] = {"ca": False}
    return {
        "key_props": {"exportable": True, "kty": "RSA", "key_size": key.key_size, "reuse_key": False},
        "secret_props": {"contentType": content_type},
        "x509_props": x509_props,
        "lifetime_actions": [{"trigger": {"lifetime_percentage": 80},
                              "action": {"action_type": "EmailContacts"}}],
        "issuer": {"name": "Unknown"},
        "attributes": {"enabled": True},
    }


# -- the service --------------------------------------------------------------------------------------


class KeyVaultService(Service):
    name = "keyvault"

    def __init__(self, world: World) -> None:
        super().__init__()
        self.world = world
        self.certificates: dict[str, Certificate] = {}
        self.secrets: dict[str, Secret] = {}
        self.deleted_certificates: dict[str, Deleted] = {}
        self.deleted_secrets: dict[str, Deleted] = {}
        # Test knobs, not service behaviour: real seconds a Self-issued creation stays pending, the
        # vault's purge protection, and its soft-delete retention.
        self.creation_delay = 0.0
        self.purge_protection = False
        self.retention_days = DEFAULT_RETENTION_DAYS
        self._routes()

    # -- wiring ---------------------------------------------------------------------------------------
    def _routes(self) -> None:
        c, s = f"{KV}/certificates", f"{KV}/secrets"
        one_cert = r"^/certificates/(?P<name>[^/]+)"
        one_secret = r"^/secrets/(?P<name>[^/]+)"
        table = [
            ("POST", "/certificates/{name}/create", f"{c}/create/action", self.create_certificate),
            ("POST", "/certificates/{name}/import", f"{c}/import/action", self.import_certificate),
            ("GET", "/certificates", f"{c}/read", self.list_certificates),
            ("GET", "/certificates/{name}/versions", f"{c}/read", self.list_certificate_versions),
            ("GET", "/certificates/{name}/policy", f"{c}/read", self.get_policy),
            ("PATCH", "/certificates/{name}/policy", f"{c}/update/action", self.update_policy),
            ("GET", "/certificates/{name}/pending", f"{c}/read", self.get_operation),
            ("PATCH", "/certificates/{name}/pending", f"{c}/update/action", self.cancel_operation),
            ("DELETE", "/certificates/{name}/pending", f"{c}/delete", self.delete_operation),
            ("GET", one_cert + r"/(?P<version>[^/]*)$", f"{c}/read", self.get_certificate),
            ("GET", one_cert + "$", f"{c}/read", self.get_certificate),
            ("PATCH", one_cert + r"/(?P<version>[^/]*)$", f"{c}/update/action", self.update_certificate),
            ("PATCH", one_cert + "$", f"{c}/update/action", self.update_certificate),
            ("DELETE", "/certificates/{name}", f"{c}/delete", self.delete_certificate),
            ("GET", "/deletedcertificates", f"{c}/read", self.list_deleted_certificates),
            ("GET", "/deletedcertificates/{name}", f"{c}/read", self.get_deleted_certificate),
            ("DELETE", "/deletedcertificates/{name}", f"{c}/purge/action", self.purge_certificate),
            ("POST", "/deletedcertificates/{name}/recover", f"{c}/recover/action", self.recover_certificate),
            ("PUT", "/secrets/{name}", f"{s}/setSecret/action", self.set_secret),
            ("GET", "/secrets", f"{s}/readMetadata/action", self.list_secrets),
            ("GET", "/secrets/{name}/versions", f"{s}/readMetadata/action", self.list_secret_versions),
            ("GET", one_secret + r"/(?P<version>[^/]*)$", f"{s}/getSecret/action", self.get_secret),
            ("GET", one_secret + "$", f"{s}/getSecret/action", self.get_secret),
            ("PATCH", one_secret + r"/(?P<version>[^/]*)$", f"{s}/update/action", self.update_secret),
            ("PATCH", one_secret + "$", f"{s}/update/action", self.update_secret),
            ("DELETE", "/secrets/{name}", f"{s}/delete", self.delete_secret),
            ("GET", "/deletedsecrets", f"{s}/readMetadata/action", self.list_deleted_secrets),
            ("GET", "/deletedsecrets/{name}", f"{s}/readMetadata/action", self.get_deleted_secret),
            ("DELETE", "/deletedsecrets/{name}", f"{s}/purge/action", self.purge_secret),
            ("POST", "/deletedsecrets/{name}/recover", f"{s}/recover/action", self.recover_secret),
        ]
        for method, template, action, handler in table:
            self.route(method, template, self._guarded(action, handler))

    def _guarded(self, action: str, handler: Any) -> Any:
        def run(request: Request) -> Response:
            claims = self._authenticate(request)
            with self.world.lock:
                self._housekeeping()
                self._authorize(claims, action, request)
            name = request.params.get("name")
            if name is not None and not NAME_RE.match(name):
                raise _bad(f"The request URI contains an invalid name: {name}")
            response: Response = handler(request)
            return response

        return run

    def error_response(self, error: HttpError, request: Request) -> Response:
        body: dict[str, Any] = {"code": error.code, "message": error.message}
        if error.inner_code:
            body["innererror"] = {"code": error.inner_code}
        return Response.json(error.status, {"error": body}, error.headers)

    def reset(self) -> None:
        with self.world.lock:
            self.certificates.clear()
            self.secrets.clear()
            self.deleted_certificates.clear()
            self.deleted_secrets.clear()
            self.creation_delay = 0.0
            self.purge_protection = False
            self.retention_days = DEFAULT_RETENTION_DAYS

    # -- authentication and authorization --------------------------------------------------------------
    def _challenge(self) -> str:
        entra = self.world.services.get("entra")
        authority = entra.base_url if entra is not None else "https://login.windows.net"
        resource = (self.world.resources.get("keyvault") or ["https://vault.azure.net"])[0]
        return f'Bearer authorization="{authority}/{self.world.tenant_id}", resource="{resource}"'

    def _unauthorized(self, message: str) -> HttpError:
        return HttpError(401, "Unauthorized", message, headers={"WWW-Authenticate": self._challenge()})

    def _authenticate(self, request: Request) -> dict[str, Any]:
        token = bearer_token(request)
        if token is None:
            raise self._unauthorized("AKV10000: Request is missing a Bearer or PoP token.")
        audiences = self.world.resources.get("keyvault") or []
        try:
            return self.world.issuer.verify(token, audiences)
        except jwt.InvalidAudienceError as exc:
            try:
                found = jwt.decode(token, options={"verify_signature": False}).get("aud")
            except jwt.PyJWTError:
                found = None
            expected = audiences[0] if audiences else "https://vault.azure.net"
            message = f"AKV10022: Invalid audience. Expected {expected}, found: {found}."
            raise self._unauthorized(message) from exc
        except jwt.PyJWTError as exc:
            raise self._unauthorized(f"Token validation failed: {exc}.") from exc

    def _authorize(self, claims: dict[str, Any], action: str, request: Request) -> None:
        roles = self.world.vault_roles.get(claims.get("oid", ""), set())
        for role in roles:
            if any(fnmatch.fnmatchcase(action, pattern) for pattern in ROLE_DATA_ACTIONS.get(role, ())):
                return
        kind = action.split("/")[2]
        name = request.params.get("name", "")
        resource = ("/subscriptions/00000000-0000-0000-0000-000000000000/resourcegroups/devstack/providers/"
                    f"microsoft.keyvault/vaults/devstack/{kind}" + (f"/{name}" if name else ""))
        message = (
            "Caller is not authorized to perform action on resource.\r\n"
            "If role assignments, deny assignments or role definitions were changed recently, please observe "
            "propagation time.\r\n"
            f"Caller: appid={claims.get('appid')};oid={claims.get('oid')};iss={claims.get('iss')}\r\n"
            f"Action: '{action}'\r\nResource: '{resource}'\r\nAssignment: (not found)\r\n"
            "DenyAssignmentId: null\r\nDecisionReason: 'DeniedWithNoValidRBAC' \r\n"
            "Vault: devstack;location=local\r\n"
        )
        raise HttpError(403, "Forbidden", message, inner_code="ForbiddenByRbac")

    # -- what the service does by itself ------------------------------------------------------------------
    def _housekeeping(self) -> None:
        """Catch up, under the lock, with what the service would have done since the last request."""
        now = self.world.clock.now()
        for table in (self.deleted_certificates, self.deleted_secrets):
            for key in [k for k, d in table.items() if d.purge_at <= now]:
                del table[key]
        for cert in self.certificates.values():
            op = cert.operation
            if op is not None and op.status == "inProgress" and op.issuer.get("name") == "Self" \
                    and time.monotonic() >= op.ready_at:
                self._finish_operation(cert, op)
            self._maybe_renew(cert, now)

    def _finish_operation(self, cert: Certificate, op: Operation) -> None:
        version = cert.find(op.version)
        if op.cancellation_requested or version is None:
            op.status = "cancelled"
            return
        version.certificate = build_certificate(version.key, version.x509_props, version.nbf, version.exp)
        version.enabled = version.requested_enabled
        op.status = "completed"
        op.target = f"{self.base_url}/certificates/{cert.name}"

    def _renewal_due(self, cert: Certificate, now: dt.datetime) -> bool:
        if cert.policy["issuer"]["name"] != "Self":
            return False
        if cert.operation is not None and cert.operation.status == "inProgress":
            return False
        latest = cert.versions[-1]
        if latest.certificate is None:
            return False
        for action in cert.policy["lifetime_actions"]:
            if action["action"]["action_type"] != "AutoRenew":
                continue
            trigger = action["trigger"]
            if "lifetime_percentage" in trigger:
                at = latest.nbf + (latest.exp - latest.nbf) * (trigger["lifetime_percentage"] / 100)
            else:
                at = latest.exp - dt.timedelta(days=trigger["days_before_expiry"])
            # The second condition keeps a trigger that precedes the creation from renewing forever.
            if at <= now and at > latest.created:
                return True
        return False

    def _maybe_renew(self, cert: Certificate, now: dt.datetime) -> None:
        if not self._renewal_due(cert, now):
            return
        key = cert.versions[-1].key if cert.policy["key_props"]["reuse_key"] else \
            new_rsa_key(cert.policy["key_props"]["key_size"])
        # Renewed versions carry no tags: whether the service copies them is unverified, and
        # a product must not depend on it.
        version = self._new_version(cert.policy, key, now, enabled=True, tags={})
        version.certificate = build_certificate(key, version.x509_props, version.nbf, version.exp)
        version.enabled = True
        cert.versions.append(version)
        cert.operation = Operation(
            request_id=_new_version(), version=version.version, csr=build_csr(key, version.x509_props),
            issuer=dict(cert.policy["issuer"]), ready_at=time.monotonic(), status="completed",
            target=f"{self.base_url}/certificates/{cert.name}",
        )

    def _new_version(self, policy: dict[str, Any], key: rsa.RSAPrivateKey, now: dt.datetime, *,
                     enabled: bool, tags: dict[str, str]) -> CertVersion:
        x509_props = policy["x509_props"]
        return CertVersion(
            version=_new_version(), created=now, updated=now, nbf=now - NOT_BEFORE_SKEW,
            exp=add_months(now, x509_props["validity_months"]), key=key,
            content_type=policy["secret_props"]["contentType"], exportable=policy["key_props"]["exportable"],
            x509_props=json.loads(json.dumps(x509_props)), enabled=False, requested_enabled=enabled,
            tags=tags,
        )

    # -- shapes -----------------------------------------------------------------------------------------
    @property
    def recovery_level(self) -> str:
        custom = "Customized" if self.retention_days < DEFAULT_RETENTION_DAYS else ""
        return f"{custom}Recoverable" if self.purge_protection else f"{custom}Recoverable+Purgeable"

    def _attributes(self, enabled: bool, nbf: dt.datetime | None, exp: dt.datetime | None,
                    created: dt.datetime, updated: dt.datetime) -> dict[str, Any]:
        out: dict[str, Any] = {"enabled": enabled}
        if nbf is not None:
            out["nbf"] = _ts(nbf)
        if exp is not None:
            out["exp"] = _ts(exp)
        out.update(created=_ts(created), updated=_ts(updated), recoveryLevel=self.recovery_level,
                   recoverableDays=self.retention_days)
        return out

    def _policy_json(self, cert: Certificate) -> dict[str, Any]:
        policy = json.loads(json.dumps(cert.policy))
        policy["attributes"].update(created=_ts(cert.policy_created), updated=_ts(cert.policy_updated))
        return {"id": f"{self.base_url}/certificates/{cert.name}/policy", **policy}

    def _cert_bundle(self, cert: Certificate, v: CertVersion, *, full: bool) -> dict[str, Any]:
        base = self.base_url
        out: dict[str, Any] = {"id": f"{base}/certificates/{cert.name}/{v.version}"}
        if v.certificate is not None:
            der = v.certificate.public_bytes(serialization.Encoding.DER)
            out.update(kid=f"{base}/keys/{cert.name}/{v.version}",
                       sid=f"{base}/secrets/{cert.name}/{v.version}",
                       x5t=_b64url(hashlib.sha1(der).digest()), cer=base64.b64encode(der).decode())
        out["attributes"] = self._attributes(v.enabled, v.nbf, v.exp, v.created, v.updated)
        if v.tags:
            out["tags"] = dict(v.tags)
        if full:
            out["policy"] = self._policy_json(cert)
            if cert.operation is not None:
                out["pending"] = {"id": f"{base}/certificates/{cert.name}/pending"}
        return out

    def _cert_item(self, cert: Certificate, v: CertVersion, *, versioned: bool) -> dict[str, Any]:
        bundle = self._cert_bundle(cert, v, full=False)
        versionless = f"{self.base_url}/certificates/{cert.name}"
        out: dict[str, Any] = {"id": bundle["id"] if versioned else versionless}
        if "x5t" in bundle:
            out["x5t"] = bundle["x5t"]
        out["attributes"] = bundle["attributes"]
        if v.tags:
            out["tags"] = dict(v.tags)
        return out

    def _operation_json(self, cert: Certificate, op: Operation) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": f"{self.base_url}/certificates/{cert.name}/pending", "issuer": dict(op.issuer),
            "csr": base64.b64encode(op.csr).decode(), "cancellation_requested": op.cancellation_requested,
            "status": op.status,
        }
        if op.status == "inProgress":
            out["status_details"] = ("Pending certificate created. Certificate request is in progress. This "
                                     "may take some time based on the issuer provider. Please check again "
                                     "later.")
        if op.target:
            out["target"] = op.target
        out["request_id"] = op.request_id
        return out

    def _deleted_fields(self, kind: str, name: str, deleted: Deleted) -> dict[str, Any]:
        return {"recoveryId": f"{self.base_url}/{kind}/{name}", "deletedDate": _ts(deleted.deleted),
                "scheduledPurgeDate": _ts(deleted.purge_at)}

    @staticmethod
    def _cert_secret_value(v: CertVersion, content_type: str) -> str:
        assert v.certificate is not None
        key = v.key if v.exportable else None  # doc: non-exportable keys are left out of the secret
        if content_type == PEM:
            text = private_key_pem(key).decode() if key is not None else ""
            return text + v.certificate.public_bytes(serialization.Encoding.PEM).decode()
        pfx = pkcs12.serialize_key_and_certificates(None, key, v.certificate, None,
                                                    serialization.NoEncryption())
        return base64.b64encode(pfx).decode()

    def _managed_secret(self, cert: Certificate, v: CertVersion, *, value: str | None) -> dict[str, Any]:
        base = self.base_url
        out: dict[str, Any] = {}
        if value is not None:
            out["value"] = value
        out.update(contentType=v.content_type, id=f"{base}/secrets/{cert.name}/{v.version}", managed=True,
                   attributes=self._attributes(v.enabled, v.nbf, v.exp, v.created, v.updated),
                   kid=f"{base}/keys/{cert.name}/{v.version}")
        return out

    def _secret_bundle(self, secret: Secret, v: SecretVersion, *, with_value: bool) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if with_value:
            out["value"] = v.value
        if v.content_type is not None:
            out["contentType"] = v.content_type
        out["id"] = f"{self.base_url}/secrets/{secret.name}/{v.version}"
        out["attributes"] = self._attributes(v.enabled, v.nbf, v.exp, v.created, v.updated)
        if v.tags:
            out["tags"] = dict(v.tags)
        return out

    def _secret_item(self, secret: Secret, v: SecretVersion, *, versioned: bool) -> dict[str, Any]:
        out = self._secret_bundle(secret, v, with_value=False)
        if not versioned:
            out["id"] = f"{self.base_url}/secrets/{secret.name}"
        return out

    def _managed_item(self, cert: Certificate, v: CertVersion, *, versioned: bool) -> dict[str, Any]:
        out = self._managed_secret(cert, v, value=None)
        out.pop("kid")
        if not versioned:
            out["id"] = f"{self.base_url}/secrets/{cert.name}"
        return out

    # -- paging -----------------------------------------------------------------------------------------
    def _page(self, request: Request, path: str, items: list[tuple[str, dict[str, Any]]]) -> Response:
        """One page of `(sort key, item)` pairs; the skiptoken carries the last key returned."""
        query = {k.lower(): v for k, v in request.query.items()}
        raw = query.get("maxresults")
        if raw is None or raw == "":
            size = PAGE_MAX
        else:
            try:
                size = int(raw)
            except ValueError:
                size = 0
            if not 1 <= size <= PAGE_MAX:
                # The service caps pages at 25 (doc); the exact wording is unverified.
                raise _bad(f"The value '{raw}' of parameter 'maxresults' is not valid; it must be between "
                           f"1 and {PAGE_MAX}.")
        items = sorted(items, key=lambda pair: pair[0])
        token = query.get("$skiptoken")
        if token:
            try:
                marker = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))["NextMarker"]
            except (ValueError, KeyError, TypeError, binascii.Error) as exc:
                raise _bad("The $skiptoken parameter is not valid.") from exc
            items = [pair for pair in items if pair[0] > marker]
        page, rest = items[:size], items[size:]
        next_link = None
        if rest:
            marker_token = _b64url(json.dumps({"NextMarker": page[-1][0]}).encode())
            api = query.get("api-version", "7.5")
            next_link = f"{self.base_url}{path}?api-version={api}&$skiptoken={marker_token}&maxresults={size}"
        return Response.json(200, {"value": [item for _, item in page], "nextLink": next_link})

    # -- lookups ----------------------------------------------------------------------------------------
    def _cert(self, name: str) -> Certificate:
        cert = self.certificates.get(name.lower())
        if cert is None:
            raise HttpError(404, "CertificateNotFound", f"A certificate with (name/id) {name} was not found "
                            f"in this key vault. {NOT_FOUND_HINT.format(kind='certificate')}")
        return cert

    def _cert_version(self, cert: Certificate, name: str, version: str) -> CertVersion:
        if not version:
            return cert.current()
        found = cert.find(version)
        if found is None:
            raise HttpError(404, "CertificateNotFound", f"A certificate with (name/id) {name}/{version} was "
                            f"not found in this key vault. {NOT_FOUND_HINT.format(kind='certificate')}")
        return found

    @staticmethod
    def _secret_not_found(name: str) -> HttpError:
        return HttpError(404, "SecretNotFound", f"A secret with (name/id) {name} was not found in this key "
                         f"vault. {NOT_FOUND_HINT.format(kind='secret')}")

    @staticmethod
    def _secret_name_taken(name: str) -> HttpError:
        # unverified: the service refuses a certificate over a plain secret's name; wording guessed.
        return HttpError(409, "Conflict", f"A secret with the name {name} already exists; a certificate "
                         "cannot use the name of an existing secret.")

    @staticmethod
    def _managed_refusal(operation: str) -> HttpError:
        return HttpError(403, "Forbidden", f'Operation "{operation}" is not allowed as this object\'s '
                         "lifetime is managed by Key Vault.", inner_code="SecretManagedByKeyVault")

    def _ensure_not_deleted(self, kind: str, name: str) -> None:
        key = name.lower()
        if key in self.deleted_certificates or key in self.deleted_secrets:
            label = "Certificate" if kind == "certificate" else "Secret"
            message = (f"{label} {name} is currently in a deleted but recoverable state, and its name "
                       f"cannot be reused; in this state, the {kind} can only be recovered or purged.")
            raise HttpError(409, "Conflict", message,
                            inner_code="ObjectIsDeletedButRecoverable")

    @staticmethod
    def _body(request: Request) -> dict[str, Any]:
        body = request.json()
        if not isinstance(body, dict):
            raise _bad("The request body must be a JSON object.")
        return body

    @staticmethod
    def _tags(raw: Any) -> dict[str, str] | None:
        if raw is None:
            return None
        if not isinstance(raw, dict) or not all(isinstance(v, str) for v in raw.values()):
            raise _bad("Tags must be an object of string values.")
        if len(raw) > MAX_TAGS:
            raise _bad(f"At most {MAX_TAGS} tags are allowed.")
        return dict(raw)

    @staticmethod
    def _enabled(raw: Any) -> bool | None:
        if raw is None:
            return None
        if not isinstance(raw, dict):
            raise _bad("Attributes must be an object.")
        enabled = raw.get("enabled")
        if enabled is not None and not isinstance(enabled, bool):
            raise _bad("The attribute 'enabled' must be a boolean.")
        return enabled

    # -- certificates -----------------------------------------------------------------------------------
    def create_certificate(self, request: Request) -> Response:
        name = request.params["name"]
        body = self._body(request)
        tags = self._tags(body.get("tags"))
        enabled = self._enabled(body.get("attributes"))
        now = self.world.clock.now()
        with self.world.lock:
            existing = self.certificates.get(name.lower())
            raw_policy = body.get("policy")
            if raw_policy is None and existing is None:
                raise _bad("A certificate policy is required to create a certificate.")
            policy = normalize_policy(raw_policy, now) if raw_policy is not None else existing.policy  # type: ignore[union-attr]
            reuse_key = existing is not None and policy["key_props"]["reuse_key"]
            reuse = existing.versions[-1].key if reuse_key else None  # type: ignore[union-attr]
        # Key generation is slow (seconds for 4096 bits): outside the lock, state re-checked after.
        key = reuse or new_rsa_key(policy["key_props"]["key_size"])
        with self.world.lock:
            self._ensure_not_deleted("certificate", name)
            if name.lower() in self.secrets:
                raise self._secret_name_taken(name)
            cert = self.certificates.get(name.lower())
            if cert is not None and cert.operation is not None and cert.operation.status == "inProgress":
                raise HttpError(409, "Conflict", f"Certificate {name} has a pending operation in progress.")
            if cert is None:
                cert = Certificate(name, policy, now, now)
                self.certificates[name.lower()] = cert
            elif raw_policy is not None:
                cert.policy, cert.policy_updated = policy, now
            version = self._new_version(policy, key, now, enabled=True if enabled is None else enabled,
                                        tags=tags or {})
            cert.versions.append(version)
            op = Operation(request_id=_new_version(), version=version.version,
                           csr=build_csr(key, version.x509_props), issuer=dict(policy["issuer"]),
                           ready_at=time.monotonic() + self.creation_delay)
            cert.operation = op
            api = request.query.get("api-version", "7.5")
            headers = {"Location": f"{self.base_url}/certificates/{cert.name}/pending?api-version={api}"
                                   f"&request_id={op.request_id}", "Retry-After": "10"}
            return Response.json(202, self._operation_json(cert, op), headers)

    def import_certificate(self, request: Request) -> Response:
        name = request.params["name"]
        body = self._body(request)
        value = body.get("value")
        if not isinstance(value, str) or not value:
            raise _bad("The property 'value' (the base64 certificate) is required.")
        password = body.get("pwd")
        tags = self._tags(body.get("tags"))
        enabled = self._enabled(body.get("attributes"))
        raw_policy = body.get("policy")
        if raw_policy is not None and not isinstance(raw_policy, dict):
            raise _bad("The certificate policy must be a JSON object.")
        with self.world.lock:
            existing = self.certificates.get(name.lower())
            stored_type = existing.policy["secret_props"]["contentType"] if existing is not None else PKCS12
        content_type = ((raw_policy or {}).get("secret_props") or {}).get("contentType") or stored_type
        key, cert_obj = self._parse_import(value, password, content_type)
        now = self.world.clock.now()
        derived = policy_from_certificate(cert_obj, key, content_type)
        policy = normalize_policy(merge_policy(derived, raw_policy), now) if raw_policy else derived
        with self.world.lock:
            self._ensure_not_deleted("certificate", name)
            if name.lower() in self.secrets:
                raise self._secret_name_taken(name)
            cert = self.certificates.get(name.lower())
            if cert is None:
                cert = Certificate(name, policy, now, now)
                self.certificates[name.lower()] = cert
            elif raw_policy:
                cert.policy, cert.policy_updated = policy, now
            version = CertVersion(
                version=_new_version(), created=now, updated=now, nbf=cert_obj.not_valid_before_utc,
                exp=cert_obj.not_valid_after_utc, key=key, content_type=content_type,
                exportable=policy["key_props"]["exportable"], x509_props=policy["x509_props"],
                enabled=True if enabled is None else enabled, tags=tags or {}, certificate=cert_obj,
            )
            cert.versions.append(version)
            return Response.json(200, self._cert_bundle(cert, version, full=True))

    @staticmethod
    def _parse_import(value: str, password: Any,
                      content_type: str) -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
        secret = password.encode() if isinstance(password, str) and password else None
        try:
            if content_type == PEM:
                # The SDK base64-encodes PEM too; accept the PEM text itself as well.
                as_text = value.lstrip().startswith("-----")
                text = value.encode() if as_text else base64.b64decode(value, validate=True)
                certs = x509.load_pem_x509_certificates(text)
                match = PEM_KEY_RE.search(text)
                key = serialization.load_pem_private_key(match.group(0), secret) if match else None
                cert_obj = certs[0] if certs else None
            else:
                pfx = base64.b64decode(value, validate=True)
                key, cert_obj, _ = pkcs12.load_key_and_certificates(pfx, secret)
        except (ValueError, TypeError, binascii.Error) as exc:
            raise _bad(f"The specified certificate content could not be read: {exc}") from exc
        if cert_obj is None or key is None:
            raise _bad("The certificate to import must contain an X.509 certificate and its private key.")
        if not isinstance(key, rsa.RSAPrivateKey):
            raise _bad("Only RSA keys can be imported into this vault.")
        if key.public_key().public_numbers() != cert_obj.public_key().public_numbers():  # type: ignore[union-attr]
            raise _bad("The private key does not match the certificate's public key.")
        return key, cert_obj

    def get_certificate(self, request: Request) -> Response:
        name, version = request.params["name"], request.params.get("version") or ""
        with self.world.lock:
            cert = self._cert(name)
            v = self._cert_version(cert, name, version)
            # doc (SDK): a specific version comes without its management policy.
            return Response.json(200, self._cert_bundle(cert, v, full=not version))

    def update_certificate(self, request: Request) -> Response:
        name, version = request.params["name"], request.params.get("version") or ""
        body = self._body(request)
        tags = self._tags(body.get("tags"))
        enabled = self._enabled(body.get("attributes"))
        now = self.world.clock.now()
        with self.world.lock:
            cert = self._cert(name)
            v = self._cert_version(cert, name, version)
            if body.get("policy") is not None:
                cert.policy = normalize_policy(merge_policy(cert.policy, body["policy"]), now)
                cert.policy_updated = now
            if enabled is not None:
                if v.certificate is None:
                    v.requested_enabled = enabled
                else:
                    v.enabled = enabled
            if tags is not None:
                v.tags = tags
            v.updated = now
            return Response.json(200, self._cert_bundle(cert, v, full=True))

    def list_certificates(self, request: Request) -> Response:
        include_pending = request.query.get("includePending", "").lower() == "true"
        with self.world.lock:
            items = [(cert.name.lower(), self._cert_item(cert, cert.current(), versioned=False))
                     for cert in self.certificates.values() if include_pending or cert.issued()]
        return self._page(request, "/certificates", items)

    def list_certificate_versions(self, request: Request) -> Response:
        name = request.params["name"]
        with self.world.lock:
            cert = self._cert(name)
            items = [(f"{i:06d}", self._cert_item(cert, v, versioned=True))
                     for i, v in enumerate(cert.versions)]
        return self._page(request, f"/certificates/{cert.name}/versions", items)

    def get_policy(self, request: Request) -> Response:
        with self.world.lock:
            return Response.json(200, self._policy_json(self._cert(request.params["name"])))

    def update_policy(self, request: Request) -> Response:
        body = self._body(request)
        now = self.world.clock.now()
        with self.world.lock:
            cert = self._cert(request.params["name"])
            cert.policy = normalize_policy(merge_policy(cert.policy, body), now)
            cert.policy_updated = now
            return Response.json(200, self._policy_json(cert))

    def _operation(self, name: str) -> tuple[Certificate, Operation]:
        cert = self.certificates.get(name.lower())
        if cert is None or cert.operation is None:
            raise HttpError(404, "PendingCertificateNotFound", f"Pending certificate not found: {name}")
        return cert, cert.operation

    def get_operation(self, request: Request) -> Response:
        with self.world.lock:
            cert, op = self._operation(request.params["name"])
            return Response.json(200, self._operation_json(cert, op))

    def cancel_operation(self, request: Request) -> Response:
        body = self._body(request)
        if not isinstance(body.get("cancellation_requested"), bool):
            raise _bad("The property 'cancellation_requested' (boolean) is required.")
        with self.world.lock:
            cert, op = self._operation(request.params["name"])
            if op.status != "inProgress":
                # Recorded wording of the service for a finished operation.
                raise HttpError(403, "Forbidden", "Pending status must be in progress to allow update.")
            op.cancellation_requested = body["cancellation_requested"]
            return Response.json(200, self._operation_json(cert, op))

    def delete_operation(self, request: Request) -> Response:
        with self.world.lock:
            cert, op = self._operation(request.params["name"])
            payload = self._operation_json(cert, op)
            if op.status == "inProgress":
                op.status = "cancelled"
            cert.operation = None
            return Response.json(200, payload)

    def delete_certificate(self, request: Request) -> Response:
        name = request.params["name"]
        now = self.world.clock.now()
        with self.world.lock:
            cert = self._cert(name)
            del self.certificates[name.lower()]
            deleted = Deleted(cert, now, now + dt.timedelta(days=self.retention_days))
            payload = {**self._deleted_fields("deletedcertificates", cert.name, deleted),
                       **self._cert_bundle(cert, cert.current(), full=True)}
            cert.operation = None
            self.deleted_certificates[name.lower()] = deleted
            return Response.json(200, payload)

    def _deleted_cert(self, name: str) -> Deleted:
        deleted = self.deleted_certificates.get(name.lower())
        if deleted is None:
            raise HttpError(404, "CertificateNotFound", f"Deleted Certificate not found: {name}")
        return deleted

    def get_deleted_certificate(self, request: Request) -> Response:
        with self.world.lock:
            deleted = self._deleted_cert(request.params["name"])
            cert = deleted.item
            assert isinstance(cert, Certificate)
            return Response.json(200, {**self._deleted_fields("deletedcertificates", cert.name, deleted),
                                       **self._cert_bundle(cert, cert.current(), full=True)})

    def list_deleted_certificates(self, request: Request) -> Response:
        include_pending = request.query.get("includePending", "").lower() == "true"
        with self.world.lock:
            items = []
            for deleted in self.deleted_certificates.values():
                cert = deleted.item
                assert isinstance(cert, Certificate)
                if include_pending or cert.issued():
                    items.append((cert.name.lower(), {
                        **self._deleted_fields("deletedcertificates", cert.name, deleted),
                        **self._cert_item(cert, cert.current(), versioned=False)}))
        return self._page(request, "/deletedcertificates", items)

    def purge_certificate(self, request: Request) -> Response:
        name = request.params["name"]
        with self.world.lock:
            self._deleted_cert(name)
            if self.purge_protection:
                raise self._purge_protected()
            del self.deleted_certificates[name.lower()]
            return Response.empty(204)

    def recover_certificate(self, request: Request) -> Response:
        name = request.params["name"]
        with self.world.lock:
            deleted = self._deleted_cert(name)
            cert = deleted.item
            assert isinstance(cert, Certificate)
            del self.deleted_certificates[name.lower()]
            self.certificates[name.lower()] = cert
            return Response.json(200, self._cert_bundle(cert, cert.current(), full=True))

    @staticmethod
    def _purge_protected() -> HttpError:
        return HttpError(403, "Forbidden", 'Operation "purge" is not allowed because purge protection is '
                         "enabled for this vault. Key Vault service will automatically purge it after the "
                         "retention period has passed. Vault: devstack;location=local")

    # -- secrets ----------------------------------------------------------------------------------------
    def set_secret(self, request: Request) -> Response:
        name = request.params["name"]
        body = self._body(request)
        value = body.get("value")
        if not isinstance(value, str):
            raise _bad("The property 'value' (string) is required.")
        if len(value.encode()) > SECRET_VALUE_MAX:
            raise _bad(f"The secret value is larger than the allowed {SECRET_VALUE_MAX} bytes.")
        content_type = body.get("contentType")
        if content_type is not None and not isinstance(content_type, str):
            raise _bad("The property 'contentType' must be a string.")
        tags = self._tags(body.get("tags"))
        attributes = body.get("attributes") or {}
        enabled = self._enabled(attributes)
        nbf, exp = self._moments(attributes)
        now = self.world.clock.now()
        with self.world.lock:
            if name.lower() in self.certificates:
                raise self._managed_refusal("set")
            self._ensure_not_deleted("secret", name)
            secret = self.secrets.setdefault(name.lower(), Secret(name))
            v = SecretVersion(_new_version(), value, content_type, now, now,
                              True if enabled is None else enabled, nbf, exp, tags or {})
            secret.versions.append(v)
            return Response.json(200, self._secret_bundle(secret, v, with_value=True))

    @staticmethod
    def _moments(attributes: dict[str, Any]) -> tuple[dt.datetime | None, dt.datetime | None]:
        result = []
        for label in ("nbf", "exp"):
            raw = attributes.get(label)
            if raw is None:
                result.append(None)
            elif _strict_int(raw):
                result.append(dt.datetime.fromtimestamp(raw, dt.UTC))
            else:
                raise _bad(f"The attribute '{label}' must be a Unix time in seconds.")
        return result[0], result[1]

    def get_secret(self, request: Request) -> Response:
        name, version = request.params["name"], request.params.get("version") or ""
        out_type = request.query.get("outContentType")
        if out_type is not None and out_type not in (PKCS12, PEM):
            raise _bad(f"The outContentType '{out_type}' is not supported.")
        with self.world.lock:
            cert = self.certificates.get(name.lower())
            if cert is not None:
                issued = cert.issued()
                v = (cert.find(version) if version else (issued[-1] if issued else None))
                if v is None or v.certificate is None:
                    raise self._secret_not_found(f"{name}/{version}" if version else name)
                if not v.enabled:
                    raise self._disabled()
                # Conversion only goes from PFX to PEM (doc, 2025-06-01-preview).
                target = PEM if out_type == PEM else v.content_type
                payload = self._managed_secret(cert, v, value=self._cert_secret_value(v, target))
                payload["contentType"] = target
                return Response.json(200, payload)
            secret = self.secrets.get(name.lower())
            if secret is None:
                raise self._secret_not_found(name)
            sv = secret.find(version) if version else secret.versions[-1]
            if sv is None:
                raise self._secret_not_found(f"{name}/{version}")
            if not sv.enabled:
                raise self._disabled()
            return Response.json(200, self._secret_bundle(secret, sv, with_value=True))

    @staticmethod
    def _disabled() -> HttpError:
        return HttpError(403, "Forbidden", "Operation get is not allowed on a disabled secret.",
                         inner_code="SecretDisabled")

    def update_secret(self, request: Request) -> Response:
        name, version = request.params["name"], request.params.get("version") or ""
        body = self._body(request)
        tags = self._tags(body.get("tags"))
        attributes = body.get("attributes") or {}
        enabled = self._enabled(attributes)
        nbf, exp = self._moments(attributes)
        now = self.world.clock.now()
        with self.world.lock:
            if name.lower() in self.certificates:
                raise self._managed_refusal("update")
            secret = self.secrets.get(name.lower())
            if secret is None:
                raise self._secret_not_found(name)
            v = secret.find(version) if version else secret.versions[-1]
            if v is None:
                raise self._secret_not_found(f"{name}/{version}")
            if enabled is not None:
                v.enabled = enabled
            if "nbf" in attributes:
                v.nbf = nbf
            if "exp" in attributes:
                v.exp = exp
            if "contentType" in body:
                v.content_type = body["contentType"]
            if tags is not None:
                v.tags = tags
            v.updated = now
            return Response.json(200, self._secret_bundle(secret, v, with_value=False))

    def list_secrets(self, request: Request) -> Response:
        with self.world.lock:
            items = [(s.name.lower(), self._secret_item(s, s.versions[-1], versioned=False))
                     for s in self.secrets.values()]
            # Certificates' backing secrets are listed too (recorded), marked managed.
            items += [(c.name.lower(), self._managed_item(c, c.issued()[-1], versioned=False))
                      for c in self.certificates.values() if c.issued()]
        return self._page(request, "/secrets", items)

    def list_secret_versions(self, request: Request) -> Response:
        name = request.params["name"]
        with self.world.lock:
            cert = self.certificates.get(name.lower())
            if cert is not None:
                items = [(f"{i:06d}", self._managed_item(cert, v, versioned=True))
                         for i, v in enumerate(cert.issued())]
                path = f"/secrets/{cert.name}/versions"
            else:
                secret = self.secrets.get(name.lower())
                if secret is None:
                    raise self._secret_not_found(name)
                items = [(f"{i:06d}", self._secret_item(secret, v, versioned=True))
                         for i, v in enumerate(secret.versions)]
                path = f"/secrets/{secret.name}/versions"
        return self._page(request, path, items)

    def delete_secret(self, request: Request) -> Response:
        name = request.params["name"]
        now = self.world.clock.now()
        with self.world.lock:
            if name.lower() in self.certificates:
                raise self._managed_refusal("delete")
            secret = self.secrets.pop(name.lower(), None)
            if secret is None:
                raise self._secret_not_found(name)
            deleted = Deleted(secret, now, now + dt.timedelta(days=self.retention_days))
            self.deleted_secrets[name.lower()] = deleted
            return Response.json(200, self._deleted_secret_json(deleted))

    def _deleted_secret_json(self, deleted: Deleted) -> dict[str, Any]:
        item = deleted.item
        if isinstance(item, Certificate):
            issued = item.issued()
            body = self._managed_secret(item, issued[-1], value=None) if issued else {}
            return {**self._deleted_fields("deletedsecrets", item.name, deleted), **body}
        return {**self._deleted_fields("deletedsecrets", item.name, deleted),
                **self._secret_bundle(item, item.versions[-1], with_value=False)}

    def _deleted_secret(self, name: str) -> Deleted:
        deleted = self.deleted_secrets.get(name.lower())
        if deleted is None:
            # A deleted certificate's backing secret is deleted with it and shows here too.
            from_cert = self.deleted_certificates.get(name.lower())
            if from_cert is not None and isinstance(from_cert.item, Certificate) and from_cert.item.issued():
                return from_cert
            raise HttpError(404, "SecretNotFound", f"Deleted Secret not found: {name}")
        return deleted

    def get_deleted_secret(self, request: Request) -> Response:
        with self.world.lock:
            return Response.json(200, self._deleted_secret_json(self._deleted_secret(request.params["name"])))

    def list_deleted_secrets(self, request: Request) -> Response:
        with self.world.lock:
            items = [(d.item.name.lower(), self._deleted_secret_json(d))
                     for d in self.deleted_secrets.values()]
            items += [(d.item.name.lower(), self._deleted_secret_json(d))
                      for d in self.deleted_certificates.values()
                      if isinstance(d.item, Certificate) and d.item.issued()]
            for _, item in items:
                item.pop("kid", None)
        return self._page(request, "/deletedsecrets", items)

    def purge_secret(self, request: Request) -> Response:
        name = request.params["name"]
        with self.world.lock:
            deleted = self._deleted_secret(name)
            if isinstance(deleted.item, Certificate):
                raise self._managed_refusal("purge")
            if self.purge_protection:
                raise self._purge_protected()
            del self.deleted_secrets[name.lower()]
            return Response.empty(204)

    def recover_secret(self, request: Request) -> Response:
        name = request.params["name"]
        with self.world.lock:
            deleted = self._deleted_secret(name)
            if isinstance(deleted.item, Certificate):
                raise self._managed_refusal("recover")
            secret = deleted.item
            del self.deleted_secrets[name.lower()]
            self.secrets[name.lower()] = secret
            return Response.json(200, self._secret_bundle(secret, secret.versions[-1], with_value=False))

    # -- inspection -------------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """Everything in the vault except key material and secret values (for /control/state)."""
        with self.world.lock:
            self._housekeeping()

            def cert_json(cert: Certificate) -> dict[str, Any]:
                versions = []
                for v in cert.versions:
                    entry: dict[str, Any] = {
                        "version": v.version, "status": "issued" if v.certificate is not None else "pending",
                        "enabled": v.enabled, "created": iso(v.created), "notBefore": iso(v.nbf),
                        "expires": iso(v.exp), "tags": dict(v.tags), "contentType": v.content_type,
                        "exportable": v.exportable,
                    }
                    if v.certificate is not None:
                        der = v.certificate.public_bytes(serialization.Encoding.DER)
                        entry["thumbprint"] = hashlib.sha1(der).hexdigest().upper()
                        entry["subject"] = v.certificate.subject.rfc4514_string()
                    versions.append(entry)
                op = cert.operation
                return {"name": cert.name, "policy": self._policy_json(cert), "versions": versions,
                        "operation": None if op is None else {"status": op.status, "requestId": op.request_id,
                                                              "version": op.version}}

            def secret_json(secret: Secret) -> dict[str, Any]:
                return {"name": secret.name, "versions": [
                    {"version": v.version, "contentType": v.content_type, "enabled": v.enabled,
                     "created": iso(v.created), "tags": dict(v.tags), "valueLength": len(v.value)}
                    for v in secret.versions]}

            def deleted_json(deleted: Deleted) -> dict[str, Any]:
                item = deleted.item
                body = cert_json(item) if isinstance(item, Certificate) else secret_json(item)
                return {**body, "deletedDate": iso(deleted.deleted),
                        "scheduledPurgeDate": iso(deleted.purge_at)}

            return {
                "certificates": [cert_json(c) for c in self.certificates.values()],
                "secrets": [secret_json(s) for s in self.secrets.values()],
                "deletedCertificates": [deleted_json(d) for d in self.deleted_certificates.values()],
                "deletedSecrets": [deleted_json(d) for d in self.deleted_secrets.values()],
                "purgeProtection": self.purge_protection,
                "retentionDays": self.retention_days,
            }
