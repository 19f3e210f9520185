"""What a caller asks for: the automation identity spec, validated, and the names derived from it."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from shared.core.roles import DirectoryRole, lookup_role, resolve_requested_roles
from shared.errors import InvalidSpec
from shared.settings import Settings

# Lower-case slug: it becomes part of Key Vault object names (^[0-9a-zA-Z-]+$, 127 max) and the
# application's uniqueName, so it is kept short and unambiguous.
NAME_PATTERN = re.compile(r"^[a-z](?:[a-z0-9]|-(?!-)){1,38}[a-z0-9]$")
_EMAIL = re.compile(r"^[^@\s,]+@[^@\s,]+\.[^@\s,]+$")

ALLOWED_KEY_SIZES = (2048, 3072, 4096)
SPEC_FIELDS = frozenset({"name", "organization", "roles", "validityMonths", "keySize", "contacts", "description",
                         "credentials"})
MAX_DESCRIPTION = 200
MAX_CONTACTS = 5
MAX_TAG_VALUE = 256
_GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")

# Federated identity credentials (docs/reference.md, "Federated identity credentials"): the audience
# Entra ID expects in a workload's assertion, Graph's limit per app, and its field lengths.
TOKEN_EXCHANGE_AUDIENCE = "api://AzureADTokenExchange"
MAX_FEDERATED = 20
MAX_ISSUER = 600
MAX_SUBJECT = 600
CERTIFICATE = "certificate"
FEDERATED = "federated"
MANAGED_IDENTITY = "managedIdentity"


@dataclass(frozen=True)
class FederatedTrust:
    """One workload the identity's app trusts: its token's issuer, subject and audience, exactly."""

    issuer: str
    subject: str
    audience: str = TOKEN_EXCHANGE_AUDIENCE

    def credential_name(self, identity: str) -> str:
        """The federated credential's name on the app: our prefix, and a digest of what it trusts, so
        a credential is ours only if its name and its issuer/subject/audience agree."""
        digest = hashlib.sha256(f"{self.issuer}\n{self.subject}\n{self.audience}".encode()).hexdigest()[:12]
        return f"{IdentityNames(identity).unique_name}-{digest}"

    def to_json(self) -> dict[str, str]:
        return {"type": FEDERATED, "issuer": self.issuer, "subject": self.subject, "audience": self.audience}


@dataclass(frozen=True)
class IdentityNames:
    """Where an identity lives: derived from its name, never stored separately."""

    name: str

    @property
    def certificate(self) -> str:
        return f"exo-{self.name}-cert"

    @property
    def connection_secret(self) -> str:
        # Distinct suffixes keep certificate names (whose backing secrets share the secrets
        # namespace) and connection secret names from ever colliding across identities.
        return f"exo-{self.name}-connection"

    @property
    def unique_name(self) -> str:
        return f"exo-automation-{self.name}"

    @property
    def display_name(self) -> str:
        return f"Exchange automation: {self.name}"


@dataclass(frozen=True)
class IdentitySpec:
    name: str
    organization: str
    roles: tuple[DirectoryRole, ...]
    validity_months: int
    key_size: int
    contacts: tuple[str, ...] = ()
    description: str = ""
    # The identity's credentials (issue #16): a certificate (the default), federated trusts, or an
    # existing managed identity (then alone: no app, no certificate).
    certificate: bool = True
    federated: tuple[FederatedTrust, ...] = ()
    managed_identity: str | None = None

    @property
    def names(self) -> IdentityNames:
        return IdentityNames(self.name)

    @property
    def role_ids(self) -> frozenset[str]:
        return frozenset(role.template_id for role in self.roles)

    def to_tags(self) -> dict[str, str]:
        """The spec as Key Vault tags.

        Key Vault allows 15 tags of at most 256 characters per object, and the registry needs
        room for ids and the last result too (README, "Key Vault tags"), so the spec takes five:
        the free-text parts share one `notes` tag, present only when there is something to say.
        """
        tags = {
            "identity": self.name,
            "organization": self.organization,
            "roles": ",".join(role.template_id for role in self.roles),
            "certificate": f"validityMonths={self.validity_months},keySize={self.key_size}",
        }
        notes = self.notes_tag()
        if notes:
            tags["notes"] = notes
        credentials = self.credentials_tag()
        if credentials:
            tags["credentials"] = credentials
        return tags

    @property
    def credential_type(self) -> str:
        """How its jobs sign in, as the connection record's `credentialType` says it."""
        return MANAGED_IDENTITY if self.managed_identity is not None else CERTIFICATE if self.certificate \
            else FEDERATED

    @property
    def default_credentials(self) -> bool:
        return self.certificate and not self.federated and self.managed_identity is None

    def credentials_tag(self) -> str:
        """The credentials, compactly, in one tag; empty for the default (a certificate only), so
        identities bootstrapped before issue #16 keep their tags. `c`: has a certificate; `f`:
        [issuer, subject] pairs (audience appended only when not the default); `m`: a managed identity."""
        if self.default_credentials:
            return ""
        data: dict[str, Any] = {"c": int(self.certificate)}
        if self.federated:
            data["f"] = [[t.issuer, t.subject] + ([t.audience] if t.audience != TOKEN_EXCHANGE_AUDIENCE else [])
                         for t in self.federated]
        if self.managed_identity is not None:
            data["m"] = self.managed_identity
        return json.dumps(data, separators=(",", ":"), ensure_ascii=False)

    def credentials_json(self) -> list[dict[str, str]]:
        items: list[dict[str, str]] = [{"type": CERTIFICATE}] if self.certificate else []
        items += [t.to_json() for t in self.federated]
        if self.managed_identity is not None:
            items.append({"type": MANAGED_IDENTITY, "principalId": self.managed_identity})
        return items

    def notes_tag(self) -> str:
        if not self.contacts and not self.description:
            return ""
        return json.dumps({"contacts": list(self.contacts), "description": self.description},
                          separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_tags(cls, tags: Mapping[str, str]) -> IdentitySpec:
        """The spec recorded on a certificate, as written by `to_tags`.

        Not trusted: anyone with Key Vault Certificates Officer can rewrite tags, so callers that
        act on it use `registry_spec` (shape and organization checked) and the planner checks the
        roles against today's policy on every run.
        """
        roles = []
        for template_id in filter(None, tags.get("roles", "").split(",")):
            role = lookup_role(template_id)
            roles.append(role if role is not None else DirectoryRole(template_id, template_id))
        certificate = dict(part.split("=", 1) for part in tags.get("certificate", "").split(",") if "=" in part)
        notes = json.loads(tags["notes"]) if tags.get("notes") else {}
        credentials: dict[str, Any] = json.loads(tags["credentials"]) if tags.get("credentials") else {"c": 1}
        federated = tuple(FederatedTrust(*(str(part) for part in entry)) for entry in credentials.get("f", ()))
        managed_identity = credentials.get("m")
        return cls(
            name=tags["identity"],
            organization=tags.get("organization", ""),
            roles=tuple(roles),
            validity_months=int(certificate.get("validityMonths", "12")),
            key_size=int(certificate.get("keySize", "2048")),
            contacts=tuple(notes.get("contacts", ())),
            description=str(notes.get("description", "")),
            certificate=bool(credentials.get("c")), federated=federated,
            managed_identity=str(managed_identity) if managed_identity is not None else None,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "organization": self.organization,
            "roles": [{"id": r.template_id, "displayName": r.name} for r in self.roles],
            "validityMonths": self.validity_months, "keySize": self.key_size,
            "contacts": list(self.contacts), "description": self.description,
            "credentials": self.credentials_json(),
        }


def registry_spec(tags: Mapping[str, str], name: str, organization: str) -> IdentitySpec:
    """The spec recorded in an identity's certificate tags, refused unless it is well-formed and
    describes this identity of this platform's organization (tags are editable by vault writers)."""
    from shared.errors import NeedsOperator

    try:
        spec = IdentitySpec.from_tags(tags)
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        raise NeedsOperator(f"the certificate tags of {name!r} are not a valid identity spec ({type(exc).__name__}); "
                            "repeat the bootstrap request to rewrite them", reason="RegistryTagsInvalid") from exc
    problems = []
    if spec.name != name:
        problems.append(f"identity {spec.name!r} instead of {name!r}")
    if spec.organization != organization:
        problems.append(f"organization {spec.organization!r} instead of {organization!r}")
    if not 1 <= spec.validity_months <= 24 or spec.key_size not in ALLOWED_KEY_SIZES:
        problems.append("a certificate policy outside the allowed ranges")
    if credential_shape_problems(spec):
        problems.append("credentials of the wrong shape")
    if problems:
        raise NeedsOperator(f"the certificate tags of {name!r} were changed outside this product: "
                            + "; ".join(problems) + "; repeat the bootstrap request to rewrite them",
                            reason="RegistryTagsInvalid")
    return spec


def validate_name(name: object) -> str:
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):  # `$` alone lets "abc\n" through
        raise InvalidSpec(
            "invalid identity name: use 3-40 lower-case letters, digits and single hyphens, "
            "starting with a letter and not ending with a hyphen",
            reason="InvalidName",
            errors=[{"pointer": "/name", "detail": "does not match ^[a-z][a-z0-9-]{1,38}[a-z0-9]$"}],
        )
    return name


def parse_spec(body: object, settings: Settings) -> IdentitySpec:
    """A request body as an IdentitySpec, or InvalidSpec listing every problem found."""
    if not isinstance(body, dict):
        raise InvalidSpec("the request body must be a JSON object", reason="InvalidBody")
    errors: list[dict[str, str]] = []
    for unknown in sorted(set(body) - SPEC_FIELDS):
        errors.append({"pointer": f"/{unknown}", "detail": "unknown field"})

    name = body.get("name")
    try:
        validate_name(name)
    except InvalidSpec as exc:
        errors.extend(exc.errors)

    organization = body.get("organization", settings.organization)
    if not isinstance(organization, str) or organization.lower() != settings.organization:
        errors.append({"pointer": "/organization",
                       "detail": f"must be this platform's organization ({settings.organization})"})

    requested_roles = body.get("roles", ["Exchange Recipient Administrator"])
    roles: tuple[DirectoryRole, ...] = ()
    if not isinstance(requested_roles, list) or not requested_roles or len(requested_roles) > 5 \
            or not all(isinstance(r, str) for r in requested_roles):
        errors.append({"pointer": "/roles", "detail": "must be a list of 1 to 5 role names or template ids"})
    else:
        try:
            roles = resolve_requested_roles(requested_roles, settings.allowed_roles)
        except InvalidSpec as exc:
            errors.extend(exc.errors)

    validity = body.get("validityMonths", settings.default_validity_months)
    if not isinstance(validity, int) or isinstance(validity, bool) or not 1 <= validity <= 24:
        errors.append({"pointer": "/validityMonths", "detail": "must be a whole number of months from 1 to 24"})

    key_size = body.get("keySize", 2048)
    if key_size not in ALLOWED_KEY_SIZES or isinstance(key_size, bool):
        errors.append({"pointer": "/keySize", "detail": "must be 2048, 3072 or 4096"})

    contacts = body.get("contacts", [])
    if not isinstance(contacts, list) or len(contacts) > MAX_CONTACTS or \
            not all(isinstance(c, str) and _EMAIL.fullmatch(c) and len(c) <= 64 for c in contacts):
        errors.append({"pointer": "/contacts", "detail": f"must be a list of at most {MAX_CONTACTS} e-mail addresses"})

    description = body.get("description", "")
    if not isinstance(description, str) or len(description) > MAX_DESCRIPTION or \
            any(ord(ch) < 32 for ch in description):
        errors.append({"pointer": "/description",
                       "detail": f"must be text of at most {MAX_DESCRIPTION} characters without control characters"})

    if not errors and len(IdentitySpec("x", "", (), 1, 2048, tuple(contacts), description).notes_tag()) > MAX_TAG_VALUE:
        errors.append({"pointer": "/description",
                       "detail": f"contacts and description together must fit in {MAX_TAG_VALUE} characters "
                                 "(they are stored as one Key Vault tag)"})

    credentials = parse_credentials(body.get("credentials", [{"type": CERTIFICATE}]), settings, errors)

    if errors:
        role_refused = any(e["pointer"].startswith("/roles/") for e in errors)
        refusal = next((e["reason"] for e in errors if "reason" in e), None)
        for error in errors:
            error.pop("reason", None)
        raise InvalidSpec("the identity request is invalid", errors=errors,
                          reason="RoleNotAllowed" if role_refused else refusal or "InvalidRequest")
    assert isinstance(name, str)
    assert isinstance(organization, str)
    certificate, federated, managed_identity = credentials
    return IdentitySpec(
        name=name, organization=organization.lower(), roles=roles, validity_months=int(validity),
        key_size=int(key_size), contacts=tuple(contacts), description=description,
        certificate=certificate, federated=federated, managed_identity=managed_identity,
    )


def credential_shape_problems(spec: IdentitySpec) -> list[str]:
    """What is wrong with the credentials' shape (the allow-lists are judged by the checks)."""
    problems = []
    if not spec.certificate and not spec.federated and spec.managed_identity is None:
        problems.append("no credential")
    if spec.managed_identity is not None and (spec.certificate or spec.federated):
        problems.append("a managed identity must be the only credential")
    if spec.managed_identity is not None and not _GUID.fullmatch(spec.managed_identity):
        problems.append("a managed identity that is not a principal id")
    if len(spec.federated) > MAX_FEDERATED or len(set(spec.federated)) != len(spec.federated):
        problems.append(f"more than {MAX_FEDERATED} or duplicate federated credentials")
    for trust in spec.federated:
        if not _https_url(trust.issuer) or not _subject_ok(trust.subject) or trust.audience != TOKEN_EXCHANGE_AUDIENCE:
            problems.append("a federated credential with a malformed issuer, subject or audience")
    return problems


def federation_refusal(trust: FederatedTrust, allowed_issuers: frozenset[str],
                       allowed_managed_identities: frozenset[str], entra_issuer: str) -> str | None:
    """Why today's settings refuse a federated trust (None: allowed). A trust in this tenant's Entra ID
    issuer names a managed identity (the subject is its principal id): that identity must be allowed too."""
    if trust.issuer not in allowed_issuers:
        return f"issuer {trust.issuer} is not on this platform's ALLOWED_FEDERATION_ISSUERS"
    if trust.issuer == entra_issuer and trust.subject.lower() not in allowed_managed_identities:
        return f"managed identity {trust.subject} is not on this platform's ALLOWED_MANAGED_IDENTITIES"
    return None


def managed_identity_refusal(principal_id: str, allowed_managed_identities: frozenset[str]) -> str | None:
    if principal_id.lower() not in allowed_managed_identities:
        return f"managed identity {principal_id} is not on this platform's ALLOWED_MANAGED_IDENTITIES"
    return None


def _https_url(value: object) -> bool:
    return isinstance(value, str) and len(value) <= MAX_ISSUER and value.startswith("https://") \
        and len(value) > len("https://") and value.isprintable() and " " not in value


def _subject_ok(value: object) -> bool:
    return isinstance(value, str) and 0 < len(value) <= MAX_SUBJECT and value.isprintable() and value.strip() == value


def parse_credentials(value: object, settings: Settings, errors: list[dict[str, str]]
                      ) -> tuple[bool, tuple[FederatedTrust, ...], str | None]:
    """The request's `credentials`: (certificate?, federated trusts, managed identity); problems go to
    `errors`, refusals by the allow-lists with a `reason` (IssuerNotAllowed, ManagedIdentityNotAllowed)."""
    certificate, federated, managed_identity = False, [], None
    start = len(errors)
    if not isinstance(value, list) or not value:
        errors.append({"pointer": "/credentials", "detail": "must be a non-empty list of credentials"})
        return True, (), None
    kinds = {CERTIFICATE: 0, FEDERATED: 0, MANAGED_IDENTITY: 0}
    for index, item in enumerate(value):
        pointer = f"/credentials/{index}"
        kind = item.get("type") if isinstance(item, dict) else None
        if not isinstance(kind, str) or kind not in kinds:
            errors.append({"pointer": f"{pointer}/type",
                           "detail": "must be certificate, federated or managedIdentity"})
            continue
        assert isinstance(item, dict) and isinstance(kind, str)
        kinds[kind] += 1
        allowed_fields = {CERTIFICATE: {"type"}, FEDERATED: {"type", "issuer", "subject", "audience"},
                          MANAGED_IDENTITY: {"type", "principalId"}}[kind]
        for unknown in sorted(set(item) - allowed_fields):
            errors.append({"pointer": f"{pointer}/{unknown}", "detail": "unknown field"})
        if kind == CERTIFICATE:
            certificate = True
        elif kind == FEDERATED:
            issuer, subject = item.get("issuer"), item.get("subject")
            audience = item.get("audience", TOKEN_EXCHANGE_AUDIENCE)
            if not _https_url(issuer):
                errors.append({"pointer": f"{pointer}/issuer",
                               "detail": f"must be an https:// issuer URL of at most {MAX_ISSUER} characters"})
            if not _subject_ok(subject):
                errors.append({"pointer": f"{pointer}/subject",
                               "detail": f"must be the workload's subject, 1 to {MAX_SUBJECT} printable characters"})
            if audience != TOKEN_EXCHANGE_AUDIENCE:
                errors.append({"pointer": f"{pointer}/audience", "detail": f"must be {TOKEN_EXCHANGE_AUDIENCE}"})
            if _https_url(issuer) and _subject_ok(subject):
                assert isinstance(issuer, str) and isinstance(subject, str)
                trust = FederatedTrust(issuer, subject.lower() if issuer == settings.entra_issuer else subject)
                refusal = federation_refusal(trust, settings.federation_issuers, settings.allowed_managed_identities,
                                             settings.entra_issuer)
                if trust.issuer == settings.entra_issuer and not _GUID.fullmatch(trust.subject):
                    errors.append({"pointer": f"{pointer}/subject", "detail": "a managed identity's subject is "
                                   "its principal (object) id"})
                elif refusal is not None:
                    errors.append({"pointer": pointer, "detail": refusal,
                                   "reason": "IssuerNotAllowed" if "ISSUERS" in refusal
                                   else "ManagedIdentityNotAllowed"})
                elif trust in federated:
                    errors.append({"pointer": pointer, "detail": "duplicate federated credential"})
                else:
                    federated.append(trust)
        else:
            principal = item.get("principalId")
            if not isinstance(principal, str) or not _GUID.fullmatch(principal):
                errors.append({"pointer": f"{pointer}/principalId",
                               "detail": "must be the managed identity's principal (object) id"})
            else:
                refusal = managed_identity_refusal(principal, settings.allowed_managed_identities)
                if refusal is not None:
                    errors.append({"pointer": pointer, "detail": refusal, "reason": "ManagedIdentityNotAllowed"})
                else:
                    managed_identity = principal.lower()
    if kinds[CERTIFICATE] > 1:
        errors.append({"pointer": "/credentials", "detail": "at most one certificate"})
    if kinds[FEDERATED] > MAX_FEDERATED:
        errors.append({"pointer": "/credentials",
                       "detail": f"at most {MAX_FEDERATED} federated credentials (Entra ID's limit per app)"})
    if kinds[MANAGED_IDENTITY] and len(value) > 1:
        errors.append({"pointer": "/credentials", "detail": "a managedIdentity credential must be the only one"})
    if len(errors) == start:
        trial = IdentitySpec("x", "", (), 1, 2048, certificate=certificate, federated=tuple(federated),
                             managed_identity=managed_identity)
        if len(trial.credentials_tag()) > MAX_TAG_VALUE:
            errors.append({"pointer": "/credentials", "detail": f"the credentials must fit in {MAX_TAG_VALUE} "
                           "characters (they are stored as one Key Vault tag): trust fewer workloads"})
    return certificate, tuple(federated), managed_identity
