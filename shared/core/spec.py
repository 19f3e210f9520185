"""What a caller asks for: the automation identity spec, validated, and the names derived from it."""

from __future__ import annotations

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
SPEC_FIELDS = frozenset({"name", "organization", "roles", "validityMonths", "keySize", "contacts", "description"})
MAX_DESCRIPTION = 200
MAX_CONTACTS = 5
MAX_TAG_VALUE = 256


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
        return tags

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
        return cls(
            name=tags["identity"],
            organization=tags.get("organization", ""),
            roles=tuple(roles),
            validity_months=int(certificate.get("validityMonths", "12")),
            key_size=int(certificate.get("keySize", "2048")),
            contacts=tuple(notes.get("contacts", ())),
            description=str(notes.get("description", "")),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "organization": self.organization,
            "roles": [{"id": r.template_id, "displayName": r.name} for r in self.roles],
            "validityMonths": self.validity_months, "keySize": self.key_size,
            "contacts": list(self.contacts), "description": self.description,
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

    if errors:
        role_refused = any(e["pointer"].startswith("/roles/") for e in errors)
        raise InvalidSpec("the identity request is invalid", errors=errors,
                          reason="RoleNotAllowed" if role_refused else "InvalidRequest")
    assert isinstance(name, str)
    assert isinstance(organization, str)
    return IdentitySpec(
        name=name, organization=organization.lower(), roles=roles, validity_months=int(validity),
        key_size=int(key_size), contacts=tuple(contacts), description=description,
    )
