"""The state every stand-in shares: one tenant's directory, the clock, faults and counters.

Graph owns the writes to `Directory`; Entra reads it to decide what a token carries; Key Vault
keeps its own objects in `keyvault.Vault`. All mutations happen under `World.lock`.
"""

from __future__ import annotations

import copy
import datetime as dt
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from .clock import SimulatedClock
from .faults import FaultTable, RequestCounter
from .throttle import KeyCredentialReadThrottle
from .tokens import TokenIssuer

EXCHANGE_APP_ID = "00000002-0000-0ff1-ce00-000000000000"
EXCHANGE_MANAGE_AS_APP = "dc50a0fb-09a3-484d-be87-e023b12c6440"
GRAPH_APP_ID = "00000003-0000-0000-c000-000000000000"
KEY_VAULT_APP_ID = "cfa8b339-82a2-471a-a3c9-0fc0be7a4093"
# Azure Storage's first-party app and the token audience of every storage account, in every cloud.
STORAGE_APP_ID = "e406a681-f3d4-42a8-90b6-c2b029497af1"
STORAGE_RESOURCE = "https://storage.azure.com"
AAD_GRAPH_APP_ID = "00000002-0000-0000-c000-000000000000"  # audience of addKey/removeKey proofs

GRAPH_APP_ROLES = {
    "Application.ReadWrite.OwnedBy": "18a4783c-866b-4cc7-a460-3d5e5662c884",
    "Application.ReadWrite.All": "1bfefb4e-e0b5-418b-a88f-73c46d2cc8e9",
    "Application.Read.All": "9a5d68dd-52b0-4cc2-bd40-abcf44ac3a30",
    "AppRoleAssignment.ReadWrite.All": "06b708a9-e830-4db3-a914-8e69da51d44f",
    "RoleManagement.ReadWrite.Directory": "9e3f62cf-ca93-4989-b6ce-bf83c28f9fe8",
    "RoleManagement.Read.Directory": "483bed4a-2ad3-4361-a73b-c83ccdbdc53c",
    "Directory.Read.All": "7ab1d382-f21e-4acd-a863-ba3e13f7da61",
    "Policy.Read.All": "246dd0d5-5bd0-4def-940b-0421030a5b68",
}
EXCHANGE_APP_ROLES = {
    "Exchange.ManageAsApp": EXCHANGE_MANAGE_AS_APP,
    "full_access_as_app": "dc890d15-9560-4a4c-9b7f-a736ec74ec40",
}

# Built-in directory roles by template id: (display name, isPrivileged).
ROLE_DEFINITIONS = {
    "62e90394-69f5-4237-9190-012177145e10": ("Global Administrator", True),
    "e8611ab8-c189-46e8-94e1-60213ab1f814": ("Privileged Role Administrator", True),
    "7be44c8a-adaf-4e2a-84d6-ab2649e08a13": ("Privileged Authentication Administrator", True),
    "9b895d92-2cd3-44c7-9d02-a6ac2d5ea5c3": ("Application Administrator", True),
    "158c047a-c907-4556-b7ef-446551a6b5f7": ("Cloud Application Administrator", True),
    "29232cdf-9323-42fd-ade2-1d097af3e4de": ("Exchange Administrator", True),
    "31392ffb-586c-42d1-9346-e59415a2cc4e": ("Exchange Recipient Administrator", False),
    "17315797-102d-40b4-93e0-432062caca18": ("Compliance Administrator", False),
    "f2ef992c-3afb-46b9-b7cf-a126ee74c451": ("Global Reader", False),
    "729827e3-9c14-49f7-bb1b-9608f156bbb8": ("Helpdesk Administrator", True),
    "194ae4cb-b126-40b2-bd5b-6091b380977d": ("Security Administrator", True),
    "5d6b6bb7-de71-4623-b4af-96380a352509": ("Security Reader", False),
    "fe930be7-5e62-47db-91af-98c3a49a38b1": ("User Administrator", True),
}
# Roles Exchange Online honours for app-only connections (docs/reference.md).
EXCHANGE_SUPPORTED_ROLES = {
    "17315797-102d-40b4-93e0-432062caca18", "29232cdf-9323-42fd-ade2-1d097af3e4de",
    "31392ffb-586c-42d1-9346-e59415a2cc4e", "62e90394-69f5-4237-9190-012177145e10",
    "f2ef992c-3afb-46b9-b7cf-a126ee74c451", "729827e3-9c14-49f7-bb1b-9608f156bbb8",
    "194ae4cb-b126-40b2-bd5b-6091b380977d", "5d6b6bb7-de71-4623-b4af-96380a352509",
}

# What the platform's managed identity holds by default: the least privilege that works.
DEFAULT_PLATFORM_GRAPH_ROLES = (
    "Application.ReadWrite.OwnedBy",
    "Application.Read.All",
    "AppRoleAssignment.ReadWrite.All",
    "RoleManagement.ReadWrite.Directory",
    "Policy.Read.All",  # optional: reads the tenant's app management policy (key lifetime cap)
)
DEFAULT_PLATFORM_VAULT_ROLES = ("Key Vault Certificates Officer", "Key Vault Secrets Officer")


def iso(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def new_id() -> str:
    return str(uuid.uuid4())


# The tenant-wide default app management policy's id as Graph returns it (unverified: an all-zero id,
# as in Microsoft's examples for the singleton `policies/defaultAppManagementPolicy`).
DEFAULT_APP_MANAGEMENT_POLICY_ID = "00000000-0000-0000-0000-000000000000"


def default_app_management_policy() -> dict[str, Any]:
    """`GET /policies/defaultAppManagementPolicy` of a tenant that never changed it: not enabled."""
    restrictions = {"passwordCredentials": [], "keyCredentials": []}
    return {
        "id": DEFAULT_APP_MANAGEMENT_POLICY_ID,
        "displayName": "Default app management tenant policy",
        "description": "Default tenant policy that enforces app management restrictions on applications and "
                       "service principals. To apply policy to targeted resources, create a new policy under "
                       "appManagementPolicies collection.",
        "isEnabled": False,
        "applicationRestrictions": copy.deepcopy(restrictions),
        "servicePrincipalRestrictions": copy.deepcopy(restrictions),
    }


@dataclass
class Directory:
    """Entra ID objects as Graph returns them (dicts in Graph's JSON shape, keys included)."""

    applications: dict[str, dict[str, Any]] = field(default_factory=dict)
    service_principals: dict[str, dict[str, Any]] = field(default_factory=dict)
    app_role_assignments: dict[str, dict[str, Any]] = field(default_factory=dict)
    role_definitions: dict[str, dict[str, Any]] = field(default_factory=dict)
    role_assignments: dict[str, dict[str, Any]] = field(default_factory=dict)
    # application object id -> owner directory object ids (service principals here)
    owners: dict[str, list[str]] = field(default_factory=dict)
    # object id -> real (time.monotonic) moment it becomes visible; replication delay
    visible_at: dict[str, float] = field(default_factory=dict)
    # application object id -> its federatedIdentityCredentials, in Graph's JSON shape
    federated_credentials: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    # `tenantAppManagementPolicy` in Graph's JSON shape; Graph enforces it on key credential writes
    app_management_policy: dict[str, Any] = field(default_factory=default_app_management_policy)

    def sp_by_app_id(self, app_id: str) -> dict[str, Any] | None:
        for sp in self.service_principals.values():
            if sp["appId"] == app_id:
                return sp
        return None

    def app_by_app_id(self, app_id: str) -> dict[str, Any] | None:
        for app in self.applications.values():
            if app["appId"] == app_id:
                return app
        return None

    def granted_app_roles(self, principal_id: str, resource_id: str) -> list[str]:
        """Values of the app roles `principal_id` holds on `resource_id`."""
        resource = self.service_principals.get(resource_id)
        if resource is None:
            return []
        by_id = {role["id"]: role["value"] for role in resource.get("appRoles", [])}
        return [
            by_id[a["appRoleId"]] for a in self.app_role_assignments.values()
            if a["principalId"] == principal_id and a["resourceId"] == resource_id and a["appRoleId"] in by_id
        ]

    def directory_roles_of(self, principal_id: str) -> list[str]:
        """Template ids of the directory roles assigned to `principal_id` (the token's `wids`)."""
        result = []
        for assignment in self.role_assignments.values():
            if assignment["principalId"] == principal_id:
                definition = self.role_definitions.get(assignment["roleDefinitionId"])
                if definition is not None:
                    result.append(definition["templateId"])
        return result


@dataclass
class PlatformIdentity:
    """The Function App's managed identity: a service principal in the tenant."""

    object_id: str
    app_id: str
    identity_header: str


@dataclass(frozen=True)
class ManagedIdentity:
    """A user-assigned managed identity assigned to the app the stand-ins host (a job's own identity):
    a service principal of type ManagedIdentity, selected at the identity endpoint by its client id."""

    object_id: str
    app_id: str
    display_name: str


@dataclass
class Mailbox:
    name: str
    user_principal_name: str
    recipient_type_details: str = "UserMailbox"
    prohibit_send_quota: str = "99 GB (106,300,440,576 bytes)"
    display_name: str = ""
    custom_attribute1: str = ""
    # Get-MailboxStatistics; a mailbox nobody ever logged on to has no statistics (a warning instead)
    item_count: int = 0
    total_item_size_bytes: int = 0
    last_logon_time: str | None = None

    def __post_init__(self) -> None:
        self.display_name = self.display_name or self.name

    def to_cmdlet_output(self) -> dict[str, Any]:
        return {
            "Name": self.name, "DisplayName": self.display_name,
            "Alias": self.user_principal_name.split("@")[0],
            "UserPrincipalName": self.user_principal_name,
            "PrimarySmtpAddress": self.user_principal_name,
            "RecipientTypeDetails": self.recipient_type_details,
            "ProhibitSendQuota": self.prohibit_send_quota,
            "CustomAttribute1": self.custom_attribute1,
            "ExternalDirectoryObjectId": str(uuid.uuid5(uuid.NAMESPACE_DNS, self.user_principal_name)),
        }


class World:
    def __init__(self, tenant_id: str | None = None, organization: str = "contoso.onmicrosoft.com") -> None:
        self.lock = threading.RLock()
        self.tenant_id = tenant_id or new_id()
        self.organization = organization
        self.clock = SimulatedClock()
        self.faults = FaultTable()
        self.counter = RequestCounter()
        # Graph's per-tenant limit on reads of key credentials with $select (devstack/throttle.py)
        self.key_credential_reads = KeyCredentialReadThrottle()
        self.issuer = TokenIssuer(self.tenant_id)
        self.replication_delay = 0.0  # seconds of real time before new directory objects show
        # How `POST /servicePrincipals` refuses an application that has not replicated yet (both seen):
        # "403" (Authorization_RequestDenied, "... must in the local tenant"; only for a caller writing
        # with Application.ReadWrite.OwnedBy), "400" (NoBackingApplicationObject), or "mixed": 403 and
        # 400 in turn, 403 first. The default is "mixed", so a client must survive both.
        self.sp_replication_error = "mixed"
        self.sp_replication_refusals = 0  # refusals answered so far, for "mixed"
        # Seconds before a new key credential is accepted at sign-in; None: replication_delay.
        self.key_replication_delay: float | None = None
        self.directory = Directory()
        self.platform = PlatformIdentity(new_id(), new_id(), uuid.uuid4().hex)
        # principal object id -> Key Vault data-plane role names
        self.vault_roles: dict[str, set[str]] = {}
        self.mailboxes: list[Mailbox] = []
        # service name -> resource identifiers (token audiences) it answers to; set by the stack
        self.resources: dict[str, list[str]] = {}
        self.services: dict[str, Any] = {}
        # OIDC issuers outside Entra ID (the GitHub-like stand-in) -> their signing keys by kid: what
        # Entra ID would fetch from the issuer's JWKS to verify a federated assertion.
        self.external_issuers: dict[str, dict[str, Any]] = {}
        # User-assigned managed identities the hosted app may also use (`add_managed_identity`), by client id.
        self.managed_identities: dict[str, ManagedIdentity] = {}
        self._seed()

    # -- seeding ---------------------------------------------------------------------------------
    def _seed(self) -> None:
        d = self.directory
        now = iso(self.clock.now())
        d.service_principals.clear()
        self._add_resource_sp(GRAPH_APP_ID, "Microsoft Graph", GRAPH_APP_ROLES, now)
        self._add_resource_sp(EXCHANGE_APP_ID, "Office 365 Exchange Online", EXCHANGE_APP_ROLES, now)
        self._add_resource_sp(KEY_VAULT_APP_ID, "Azure Key Vault", {}, now)
        # Storage is Azurite, which takes no tokens; the SP lets the platform get one as in Azure.
        self._add_resource_sp(STORAGE_APP_ID, "Azure Storage", {}, now)
        self.resource_sp(STORAGE_APP_ID)["servicePrincipalNames"].append(STORAGE_RESOURCE)
        for template_id, (name, privileged) in ROLE_DEFINITIONS.items():
            d.role_definitions[template_id] = {
                "id": template_id, "templateId": template_id, "displayName": name,
                "isBuiltIn": True, "isEnabled": True, "isPrivileged": privileged,
            }
        d.service_principals[self.platform.object_id] = {
            "id": self.platform.object_id, "appId": self.platform.app_id,
            "displayName": "exo-automation-platform", "servicePrincipalType": "ManagedIdentity",
            "accountEnabled": True, "appRoles": [], "tags": [], "servicePrincipalNames": [self.platform.app_id],
            "appOwnerOrganizationId": None, "createdDateTime": now,
        }
        self.set_platform_graph_roles(DEFAULT_PLATFORM_GRAPH_ROLES)
        self.vault_roles[self.platform.object_id] = set(DEFAULT_PLATFORM_VAULT_ROLES)
        self.mailboxes = [
            Mailbox("Adele Vance", f"adelev@{self.organization}", item_count=1523,
                    total_item_size_bytes=412_000_000, last_logon_time="2024-05-02T07:41:12Z"),
            Mailbox("Alex Wilber", f"alexw@{self.organization}", item_count=87, total_item_size_bytes=9_300_000,
                    last_logon_time="2024-05-01T16:03:55Z"),
            Mailbox("Megan Bowen", f"meganb@{self.organization}", item_count=4410,
                    total_item_size_bytes=2_050_000_000, last_logon_time="2024-05-02T08:15:40Z"),
            Mailbox("Conference Room Adams", f"adams@{self.organization}", "RoomMailbox"),
            Mailbox("Sales", f"sales@{self.organization}", "SharedMailbox"),
        ]

    def _add_resource_sp(self, app_id: str, name: str, roles: dict[str, str], now: str) -> None:
        sp_id = new_id()
        self.directory.service_principals[sp_id] = {
            "id": sp_id, "appId": app_id, "displayName": name, "servicePrincipalType": "Application",
            "accountEnabled": True, "tags": [], "servicePrincipalNames": [app_id],
            "appOwnerOrganizationId": "f8cdef31-a31e-4b4a-93e4-5f571e91255a",
            "appRoles": [
                {"id": role_id, "value": value, "displayName": value, "description": value,
                 "allowedMemberTypes": ["Application"], "isEnabled": True, "origin": "Application"}
                for value, role_id in roles.items()
            ],
            "createdDateTime": now,
        }

    def resource_sp(self, app_id: str) -> dict[str, Any]:
        sp = self.directory.sp_by_app_id(app_id)
        assert sp is not None, f"seeded resource {app_id} missing"
        return sp

    def set_platform_graph_roles(self, role_values: tuple[str, ...] | list[str],
                                 effective_after: float = 0.0) -> None:
        """Replace the Graph application permissions granted to the platform identity.

        Permissions it already holds stay as they are; newly granted ones show in its tokens (and in
        Graph) only `effective_after` real seconds from now, as a managed identity's new permission takes
        time to arrive (docs/reference.md "Entra ID tokens": hours in real life).
        """
        unknown = [value for value in role_values if value not in GRAPH_APP_ROLES]
        if unknown:
            raise ValueError(f"unknown Graph application permission {unknown[0]!r}")
        if effective_after < 0:
            raise ValueError("effectiveAfterSeconds must not be negative")
        with self.lock:
            graph = self.resource_sp(GRAPH_APP_ID)
            d = self.directory
            wanted = {GRAPH_APP_ROLES[value] for value in role_values}
            held = set()
            for key, assignment in list(d.app_role_assignments.items()):
                if assignment["principalId"] == self.platform.object_id and assignment["resourceId"] == graph["id"]:
                    if assignment["appRoleId"] in wanted:
                        held.add(assignment["appRoleId"])
                    else:
                        del d.app_role_assignments[key]
            for value in dict.fromkeys(role_values):
                if GRAPH_APP_ROLES[value] in held:
                    continue
                assignment_id = new_id()
                if effective_after > 0:
                    d.visible_at[assignment_id] = time.monotonic() + effective_after
                d.app_role_assignments[assignment_id] = {
                    "id": assignment_id, "principalId": self.platform.object_id,
                    "principalType": "ServicePrincipal", "principalDisplayName": "exo-automation-platform",
                    "resourceId": graph["id"], "resourceDisplayName": "Microsoft Graph",
                    "appRoleId": GRAPH_APP_ROLES[value], "createdDateTime": iso(self.clock.now()),
                    "deletedDateTime": None,
                }

    def add_managed_identity(self, display_name: str) -> ManagedIdentity:
        """A user-assigned managed identity (its service principal, type ManagedIdentity, no app registration),
        assigned to the hosted app: the identity endpoint serves its tokens when asked by its client or object id."""
        identity = ManagedIdentity(new_id(), new_id(), display_name)
        with self.lock:
            self.directory.service_principals[identity.object_id] = {
                "id": identity.object_id, "appId": identity.app_id, "displayName": display_name,
                "servicePrincipalType": "ManagedIdentity", "accountEnabled": True, "appRoles": [], "tags": [],
                "servicePrincipalNames": [identity.app_id], "appOwnerOrganizationId": None,
                "createdDateTime": iso(self.clock.now()),
            }
            self.managed_identities[identity.app_id] = identity
        return identity

    def set_key_lifetime_policy(self, max_lifetime: str | None,
                                restrict_for_apps_created_after: str = "2015-01-01T00:00:00Z",
                                state: str = "enabled") -> None:
        """Enable the tenant's default app management policy with an `asymmetricKeyLifetime`
        restriction of `max_lifetime` (ISO 8601 duration), or disable it when None."""
        with self.lock:
            policy = default_app_management_policy()
            if max_lifetime is not None:
                policy["isEnabled"] = True
                policy["applicationRestrictions"]["keyCredentials"] = [{
                    "restrictionType": "asymmetricKeyLifetime", "maxLifetime": max_lifetime,
                    "restrictForAppsCreatedAfterDateTime": restrict_for_apps_created_after, "state": state,
                }]
            self.directory.app_management_policy = policy

    def set_trusted_ca_restriction(self, configuration_ids: list[str] | None,
                                   restrict_for_apps_created_after: str = "2015-01-01T00:00:00Z") -> None:
        """Add to the tenant's default app management policy (and enable it) a `trustedCertificateAuthority`
        key credential restriction: certificates must chain to one of the given trusted-CA configurations
        (certificateBasedApplicationConfiguration ids); None removes it. Reported, not enforced here."""
        with self.lock:
            policy = self.directory.app_management_policy
            kept = [r for r in policy["applicationRestrictions"]["keyCredentials"]
                    if r.get("restrictionType") != "trustedCertificateAuthority"]
            if configuration_ids is not None:
                policy["isEnabled"] = True
                kept.append({"restrictionType": "trustedCertificateAuthority", "maxLifetime": None,
                             "restrictForAppsCreatedAfterDateTime": restrict_for_apps_created_after,
                             "state": "enabled", "certificateBasedApplicationConfigurationIds": configuration_ids})
            policy["applicationRestrictions"]["keyCredentials"] = kept

    def register_resource(self, service: str, identifiers: list[str], sp_app_id: str | None) -> None:
        """Audiences a service accepts; the matching resource SP gets them as servicePrincipalNames."""
        self.resources[service] = identifiers
        if sp_app_id is not None:
            sp = self.resource_sp(sp_app_id)
            for identifier in identifiers:
                if identifier not in sp["servicePrincipalNames"]:
                    sp["servicePrincipalNames"].append(identifier)

    # -- replication delay ------------------------------------------------------------------------
    def mark_created(self, object_id: str) -> None:
        if self.replication_delay > 0:
            self.directory.visible_at[object_id] = time.monotonic() + self.replication_delay

    def sp_replication_status(self, owned_by_only: bool) -> int:
        """The status of the next `POST /servicePrincipals` refused for an invisible application."""
        with self.lock:
            mode = self.sp_replication_error
            turn = self.sp_replication_refusals
            self.sp_replication_refusals += 1
        if not owned_by_only or mode == "400":
            return 400
        if mode == "403":
            return 403
        return 403 if turn % 2 == 0 else 400
    def mark_key_created(self, key_id: str) -> None:
        delay = self.replication_delay if self.key_replication_delay is None else self.key_replication_delay
        if delay > 0:
            self.directory.visible_at[key_id] = time.monotonic() + delay

    def is_visible(self, object_id: str) -> bool:
        moment = self.directory.visible_at.get(object_id)
        return moment is None or time.monotonic() >= moment

    def reset(self) -> None:
        """Back to the seeded tenant (ids of the seeded objects change)."""
        with self.lock:
            self.clock.reset()
            self.faults.reset()
            self.counter.reset()
            self.key_credential_reads.reset()
            self.replication_delay = 0.0
            self.sp_replication_error = "mixed"
            self.sp_replication_refusals = 0
            self.key_replication_delay = None
            self.directory = Directory()
            self.managed_identities.clear()
            self.vault_roles.clear()
            self._seed()
            for service in self.services.values():
                reset = getattr(service, "reset", None)
                if reset is not None:
                    reset()
            for name, identifiers in list(self.resources.items()):
                app_id = {"graph": GRAPH_APP_ID, "exchange": EXCHANGE_APP_ID, "keyvault": KEY_VAULT_APP_ID}.get(name)
                self.register_resource(name, identifiers, app_id)
