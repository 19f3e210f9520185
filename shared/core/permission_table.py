"""The platform identity's Microsoft Graph permissions per ROLE_MODE, and what a holder lacks (pure).

The data is infra/graph-permissions.json, the one source for the Bicep grant, the post-provision hook,
the documented table and the doctor (shared/doctor.py). It is deployed with the app (.funcignore
lets that one file of infra/ through) so the doctor can compare what the platform holds at run time.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

PERMISSION_TABLE = Path(__file__).resolve().parents[2] / "infra" / "graph-permissions.json"


class UnknownRoleMode(ValueError):
    """A ROLE_MODE the table does not describe."""


@dataclass(frozen=True)
class Permission:
    name: str
    app_role_id: str
    modes: tuple[str, ...]
    calls: tuple[str, ...]
    why: str
    optional: bool = False  # granted too, but the product works without it (with less)


@dataclass(frozen=True)
class PermissionTable:
    resource_app_id: str
    modes: dict[str, str]
    permissions: tuple[Permission, ...]

    def for_mode(self, mode: str) -> list[Permission]:
        if mode not in self.modes:
            raise UnknownRoleMode(f"unknown ROLE_MODE {mode!r}: expected one of {', '.join(self.modes)}")
        return [p for p in self.permissions if mode in p.modes]

    def names(self, mode: str) -> list[str]:
        return [p.name for p in self.for_mode(mode)]

    def required(self, mode: str) -> list[Permission]:
        """The rows of `mode` the product cannot work without."""
        return [p for p in self.for_mode(mode) if not p.optional]


def load_table(path: Path = PERMISSION_TABLE) -> PermissionTable:
    raw = json.loads(path.read_text(encoding="utf-8"))
    permissions = tuple(
        Permission(name=p["permission"], app_role_id=p["appRoleId"].lower(), modes=tuple(p["modes"]),
                   calls=tuple(p["calls"]), why=p["why"], optional=bool(p.get("optional", False)))
        for p in raw["permissions"]
    )
    return PermissionTable(resource_app_id=raw["resourceAppId"], modes=dict(raw["modes"]), permissions=permissions)


@dataclass
class GrantPlan:
    present: list[str] = field(default_factory=list)
    grant: list[tuple[str, str]] = field(default_factory=list)  # (permission, app role id)
    unknown: list[str] = field(default_factory=list)  # wanted, but Graph's service principal lacks it
    excess: list[tuple[str, str]] = field(default_factory=list)  # (permission or role id, assignment id)

    @property
    def complete(self) -> bool:
        return not self.grant and not self.unknown


def plan_grants(wanted: Sequence[Permission], graph_app_roles: Mapping[str, str],
                held: Mapping[str, str]) -> GrantPlan:
    """Compare the wanted permissions with what the identity holds on Microsoft Graph.

    `graph_app_roles` maps each application permission's value to its app role id, as Graph's own
    service principal publishes them (authoritative over the ids in the table); `held` maps the
    app role ids of the identity's assignments on that service principal to the assignment ids.
    """
    held_lower = {role.lower(): assignment for role, assignment in held.items()}
    by_id = {role_id.lower(): value for value, role_id in graph_app_roles.items()}
    plan = GrantPlan()
    wanted_ids = set()
    for permission in wanted:
        role_id = graph_app_roles.get(permission.name)
        if role_id is None:
            plan.unknown.append(permission.name)
            continue
        wanted_ids.add(role_id.lower())
        if role_id.lower() in held_lower:
            plan.present.append(permission.name)
        else:
            plan.grant.append((permission.name, role_id.lower()))
    for role_id, assignment_id in sorted(held_lower.items()):
        if role_id not in wanted_ids:
            plan.excess.append((by_id.get(role_id, role_id), assignment_id))
    return plan
