"""Which Entra directory roles an automation identity may hold.

Three layers, narrowest wins: the roles Exchange Online honours for app-only connections
(docs/reference.md), minus privileged roles that no configuration can unlock, intersected with the
operator's allow-list setting.
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.errors import InvalidSpec, SettingsError


@dataclass(frozen=True)
class DirectoryRole:
    template_id: str
    name: str


EXCHANGE_RECIPIENT_ADMINISTRATOR = DirectoryRole("31392ffb-586c-42d1-9346-e59415a2cc4e",
                                                 "Exchange Recipient Administrator")

# Roles Exchange Online accepts from the token's `wids` claim for app-only sessions.
EXCHANGE_SUPPORTED_ROLES = (
    DirectoryRole("17315797-102d-40b4-93e0-432062caca18", "Compliance Administrator"),
    DirectoryRole("29232cdf-9323-42fd-ade2-1d097af3e4de", "Exchange Administrator"),
    EXCHANGE_RECIPIENT_ADMINISTRATOR,
    DirectoryRole("62e90394-69f5-4237-9190-012177145e10", "Global Administrator"),
    DirectoryRole("f2ef992c-3afb-46b9-b7cf-a126ee74c451", "Global Reader"),
    DirectoryRole("729827e3-9c14-49f7-bb1b-9608f156bbb8", "Helpdesk Administrator"),
    DirectoryRole("194ae4cb-b126-40b2-bd5b-6091b380977d", "Security Administrator"),
    DirectoryRole("5d6b6bb7-de71-4623-b4af-96380a352509", "Security Reader"),
)

# Never granted, whatever the allow-list says: each of these can take over the tenant or its apps.
PRIVILEGED_ROLES = (
    DirectoryRole("62e90394-69f5-4237-9190-012177145e10", "Global Administrator"),
    DirectoryRole("e8611ab8-c189-46e8-94e1-60213ab1f814", "Privileged Role Administrator"),
    DirectoryRole("7be44c8a-adaf-4e2a-84d6-ab2649e08a13", "Privileged Authentication Administrator"),
    DirectoryRole("9b895d92-2cd3-44c7-9d02-a6ac2d5ea5c3", "Application Administrator"),
    DirectoryRole("158c047a-c907-4556-b7ef-446551a6b5f7", "Cloud Application Administrator"),
)

_BY_ID = {role.template_id: role for role in (*EXCHANGE_SUPPORTED_ROLES, *PRIVILEGED_ROLES)}
def _normalise(text: str) -> str:
    return "".join(text.lower().split())


_BY_NAME = {_normalise(role.name): role for role in _BY_ID.values()}
_PRIVILEGED_IDS = frozenset(role.template_id for role in PRIVILEGED_ROLES)
_SUPPORTED_IDS = frozenset(role.template_id for role in EXCHANGE_SUPPORTED_ROLES)


def lookup_role(text: str) -> DirectoryRole | None:
    """A role by template id or display name (case and spaces ignored)."""
    text = text.strip()
    return _BY_ID.get(text.lower()) or _BY_NAME.get(_normalise(text))


def refusal_reason(role: DirectoryRole) -> str | None:
    """Why `role` can never be granted, or None if only the allow-list decides."""
    if role.template_id in _PRIVILEGED_IDS:
        return f"'{role.name}' is a privileged role and is never granted by this product"
    if role.template_id not in _SUPPORTED_IDS:
        return f"'{role.name}' is not a role Exchange Online honours for app-only connections"
    return None


def policy_refusal(role: DirectoryRole, allowed: frozenset[str]) -> str | None:
    """Why today's policy refuses `role` (never-grant, not honoured, or not on the allow-list), or None."""
    reason = refusal_reason(role)
    if reason is not None:
        return reason
    if role.template_id not in allowed:
        return f"'{role.name}' is not on this platform's ALLOWED_ROLES"
    return None


def parse_allow_list(value: str) -> frozenset[str]:
    """The ALLOWED_ROLES setting: role names or template ids, comma-separated.

    Entries that can never be granted are refused here, so a misconfiguration shows at start-up
    rather than as a surprising 403 later.
    """
    allowed: set[str] = set()
    for entry in (part.strip() for part in value.split(",")):
        if not entry:
            continue
        role = lookup_role(entry)
        if role is None:
            raise SettingsError(f"ALLOWED_ROLES: unknown role {entry!r}; use a display name or template id "
                                f"of a role Exchange Online honours", reason="SettingInvalid", setting="ALLOWED_ROLES")
        reason = refusal_reason(role)
        if reason is not None:
            raise SettingsError(f"ALLOWED_ROLES: {reason}", reason="SettingInvalid", setting="ALLOWED_ROLES")
        allowed.add(role.template_id)
    if not allowed:
        raise SettingsError("ALLOWED_ROLES: at least one role is required", reason="SettingInvalid",
                            setting="ALLOWED_ROLES")
    return frozenset(allowed)


def resolve_requested_roles(requested: list[str], allowed: frozenset[str]) -> tuple[DirectoryRole, ...]:
    """Requested roles as DirectoryRoles, refusing anything privileged or outside the allow-list."""
    resolved: dict[str, DirectoryRole] = {}
    errors: list[dict[str, str]] = []
    for index, entry in enumerate(requested):
        role = lookup_role(entry) if isinstance(entry, str) else None
        pointer = f"/roles/{index}"
        if role is None:
            errors.append({"pointer": pointer, "detail": f"unknown role {entry!r}"})
            continue
        reason = policy_refusal(role, allowed)
        if reason is not None:
            errors.append({"pointer": pointer, "detail": reason})
        else:
            resolved[role.template_id] = role
    if errors:
        raise InvalidSpec("one or more requested roles cannot be granted", reason="RoleNotAllowed", errors=errors)
    return tuple(sorted(resolved.values(), key=lambda r: r.template_id))


def role_name(template_id: str) -> str:
    role = _BY_ID.get(template_id)
    return role.name if role else template_id
