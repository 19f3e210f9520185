"""The Entra ID objects of an automation identity, read and written through Graph."""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import functools
import hashlib
import logging
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar
from urllib.parse import quote

from shared.adapters.graph import GraphClient, GraphError, literal, path_for_unique_name, retry_while_replicating
from shared.core.model import (
    APP_OWNER_TAG,
    EXCHANGE_MANAGE_AS_APP_ROLE_ID,
    EXCHANGE_RESOURCE_APP_ID,
    CertificateVersion,
    KeyCredential,
    ObservedApplication,
    ObservedFederatedCredential,
    ObservedManagedIdentity,
    key_id_for,
)
from shared.core.record import format_time, parse_time
from shared.errors import ForeignObject, NeedsOperator

P = ParamSpec("P")
R = TypeVar("R")

log = logging.getLogger("exo_automation.directory")

APP_FIELDS = "id,appId,uniqueName,tags,keyCredentials,requiredResourceAccess,signInAudience"
EXCHANGE_PERMISSION = {
    "resourceAppId": EXCHANGE_RESOURCE_APP_ID,
    "resourceAccess": [{"id": EXCHANGE_MANAGE_AS_APP_ROLE_ID, "type": "Role"}],
}


# -- the tenant's app management policy: maximum key credential lifetime ----------------------------
# Key Vault backdates a new certificate's notBefore by 10 minutes (devstack/keyvault.py
# NOT_BEFORE_SKEW), and the key credential carries exactly the certificate's window.
KEY_VAULT_NOT_BEFORE_SKEW = dt.timedelta(minutes=10)
WORST_CASE_MONTH = dt.timedelta(days=31)
_DURATION = re.compile(r"^P(?:(?P<w>\d+)W)?(?:(?P<d>\d+)D)?"
                       r"(?:T(?:(?P<h>\d+)H)?(?:(?P<m>\d+)M)?(?:(?P<s>\d+(?:\.\d+)?)S)?)?$")


def parse_duration(value: object) -> dt.timedelta | None:
    """An ISO 8601 duration as Graph writes Edm.Duration (`P90D`, `P4DT12H30M5S`); None if not one.

    Years and months have no fixed length, and Edm.Duration does not use them.
    """
    if not isinstance(value, str) or value in ("P", "PT") or value.endswith("T"):
        return None
    match = _DURATION.match(value.strip().upper())
    if match is None:
        return None
    return dt.timedelta(weeks=int(match["w"] or 0), days=int(match["d"] or 0), hours=int(match["h"] or 0),
                        minutes=int(match["m"] or 0), seconds=float(match["s"] or 0))


@dataclass(frozen=True)
class KeyLifetimeLimit:
    """The tenant policy's maximum key credential lifetime, as written (`text`) and as a duration."""

    text: str
    max_lifetime: dt.timedelta
    policy_id: str = ""


def key_lifetime_limit(policy: dict[str, Any] | None) -> KeyLifetimeLimit | None:
    """The `asymmetricKeyLifetime` restriction of a tenantAppManagementPolicy, if it is in force.

    Applied whatever `restrictForAppsCreatedAfterDateTime` says: Microsoft may apply the date
    retroactively to existing apps, and a shorter certificate is harmless where it did not.
    """
    if not policy or not policy.get("isEnabled"):
        return None
    limits = []
    for restriction in (policy.get("applicationRestrictions") or {}).get("keyCredentials") or []:
        if restriction.get("restrictionType") != "asymmetricKeyLifetime":
            continue
        if (restriction.get("state") or "enabled") != "enabled":
            continue
        text = restriction.get("maxLifetime")
        duration = parse_duration(text)
        if duration is None:
            log.warning("the tenant's app management policy has an unreadable maxLifetime %r; ignored", text)
            continue
        limits.append(KeyLifetimeLimit(str(text), duration, str(policy.get("id") or "")))
    return min(limits, key=lambda limit: limit.max_lifetime) if limits else None


def trusted_ca_problem(restrictions: Sequence[Mapping[str, Any]], issuer: str) -> str | None:
    """Why the tenant's certificate-authority restrictions refuse certificates of `issuer`, or None.

    A `trustedCertificateAuthority` restriction lets only certificates chaining to the tenant's trusted
    CAs onto apps; a self-issued certificate never does. Whether a CA-backed issuer chains to one of
    them cannot be read from here, so only the self-issuer is judged.
    """
    for restriction in restrictions:
        if restriction.get("restrictionType") != "trustedCertificateAuthority":
            continue
        if (restriction.get("state") or "enabled") != "enabled":
            continue
        if issuer == SELF_ISSUER:
            ids = ", ".join(restriction.get("certificateBasedApplicationConfigurationIds") or []) or "none listed"
            return ("the policy only accepts certificates from trusted certificate authorities "
                    f"(configurations {ids}), and certificates are issued by Key Vault's issuer {issuer!r}")
    return None


def capped_validity_months(requested: int, max_lifetime: dt.timedelta | None) -> int:
    """The most whole months, up to `requested`, whose worst case fits in `max_lifetime`; 0 if none.

    Key Vault's validity is whole calendar months (at most 31 days each) from a notBefore it
    backdates by 10 minutes, and the policy limits endDateTime - startDateTime.
    """
    if max_lifetime is None:
        return requested
    fits = int((max_lifetime - KEY_VAULT_NOT_BEFORE_SKEW) / WORST_CASE_MONTH) \
        if max_lifetime >= KEY_VAULT_NOT_BEFORE_SKEW else 0
    return max(0, min(requested, fits))


def _replication_check(fresh_principal: bool) -> Callable[[GraphError], bool]:
    """Whether a failed write may only be replication delay.

    For a principal created moments ago, Graph refuses dependent writes with 400 or 404 whose
    codes are generic (`Request_BadRequest`, "Not a valid reference update"; docs/reference.md), so
    the message cannot be trusted to tell. Such writes are retried, within a bounded budget, only
    when this run created the principal; for an older principal a 400 is a real refusal.
    """
    def check(exc: GraphError) -> bool:
        return fresh_principal and exc.status in (400, 404)

    return check


def _no_backing_application(exc: GraphError) -> bool:
    return exc.status == 400 and "NoBackingApplicationObject" in exc.detail_codes


def _application_not_replicated(exc: GraphError) -> bool:
    """`POST /servicePrincipals` refused because the application has not replicated yet.

    Graph answers either 400 `NoBackingApplicationObject` or 403 `Authorization_RequestDenied` whose
    message says the backing application "must in the local tenant" (both seen, for tens of seconds;
    docs/reference.md "Service principals"). The 403's code is the one a missing permission has, so
    only that message marks it; any other 403 is a refusal.
    """
    return _no_backing_application(exc) or (
        exc.status == 403 and exc.code == "Authorization_RequestDenied" and "local tenant" in exc.message.lower())


def _with_owner_tag(tags: list[str] | None) -> list[str]:
    existing = list(tags or [])
    return existing if APP_OWNER_TAG in existing else [*existing, APP_OWNER_TAG]


def _with_exchange_permission(declared: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """The app's declared permissions with Exchange.ManageAsApp among them; nothing else changed."""
    others = [r for r in declared or [] if r.get("resourceAppId") != EXCHANGE_RESOURCE_APP_ID]
    exchange = next((r for r in declared or [] if r.get("resourceAppId") == EXCHANGE_RESOURCE_APP_ID), None)
    if exchange is None:
        return [*others, EXCHANGE_PERMISSION]
    kept = [a for a in exchange.get("resourceAccess", []) if a.get("id") != EXCHANGE_MANAGE_AS_APP_ROLE_ID]
    return [*others, {"resourceAppId": EXCHANGE_RESOURCE_APP_ID,
                      "resourceAccess": [*kept, {"id": EXCHANGE_MANAGE_AS_APP_ROLE_ID, "type": "Role"}]}]


def key_credential_from_graph(entry: Mapping[str, Any]) -> KeyCredential:
    thumbprint = None
    if entry.get("key"):
        thumbprint = hashlib.sha1(base64.b64decode(entry["key"])).hexdigest().upper()  # noqa: S324 - X.509 thumbprint
    return KeyCredential(
        key_id=str(entry["keyId"]), start=parse_time(entry["startDateTime"]), end=parse_time(entry["endDateTime"]),
        thumbprint=thumbprint, display_name=entry.get("displayName"),
    )


def application_from_graph(app: dict[str, Any], *, owned: bool) -> ObservedApplication:
    """The app as observed; `owned` must come from Graph's owners, never from its tags."""
    declares = any(
        r.get("resourceAppId") == EXCHANGE_RESOURCE_APP_ID
        and any(a.get("id") == EXCHANGE_MANAGE_AS_APP_ROLE_ID and a.get("type") == "Role"
                for a in r.get("resourceAccess", []))
        for r in app.get("requiredResourceAccess") or []
    )
    tags = tuple(app.get("tags") or ())
    return ObservedApplication(
        object_id=app["id"], app_id=app["appId"], owned=owned, tags=tags,
        key_credentials=tuple(key_credential_from_graph(k) for k in app.get("keyCredentials") or []),
        declares_exchange_permission=declares, sign_in_audience=app.get("signInAudience", ""),
        declared_permissions=tuple(app.get("requiredResourceAccess") or ()),
    )


def federated_credential_from_graph(entry: dict[str, Any]) -> ObservedFederatedCredential:
    return ObservedFederatedCredential(
        credential_id=str(entry.get("id", "")), name=str(entry.get("name", "")), issuer=str(entry.get("issuer", "")),
        subject=str(entry.get("subject", "")), audiences=tuple(str(a) for a in entry.get("audiences") or ()))


def key_credential_entry(identity: str, version: CertificateVersion, der: bytes) -> dict[str, Any]:
    return {
        "keyId": key_id_for(version.thumbprint),
        "type": "AsymmetricX509Cert",
        "usage": "Verify",
        "key": base64.b64encode(der).decode(),
        # Exactly the certificate's window in UTC: anything else is refused (docs/reference.md).
        "startDateTime": format_time(version.not_before),
        "endDateTime": format_time(version.not_after),
        "displayName": f"exo-automation {identity} {version.version}"[:90],
    }


def _ours(entry: Mapping[str, Any]) -> bool:
    """Added by this product: its keyId is the one derived from its own certificate."""
    thumbprint = key_credential_from_graph(entry).thumbprint
    return thumbprint is not None and entry.get("keyId") == key_id_for(thumbprint)


def _writable(entry: Mapping[str, Any]) -> dict[str, Any]:
    """A key credential as sent back in a PATCH: the fields Graph accepts, `key` included."""
    keep = ("keyId", "type", "usage", "key", "startDateTime", "endDateTime", "displayName", "customKeyIdentifier")
    return {k: entry[k] for k in keep if entry.get(k) is not None}


def with_key_added(existing: Sequence[Mapping[str, Any]], added: Mapping[str, Any],
                   now: dt.datetime) -> list[dict[str, Any]] | None:
    """The app's key credentials with `added` among them (None: it is there already).

    Graph replaces the whole collection, so every other key goes back as read; expired keys of ours
    are dropped on the way. Graph refuses any update while an expired key is present, so an expired
    key this product did not add needs an operator: it is not ours to remove.
    """
    if any(entry.get("keyId") == added["keyId"] for entry in existing):
        return None
    kept = []
    for entry in existing:
        if parse_time(entry["endDateTime"]) > now:
            kept.append(_writable(entry))
        elif not _ours(entry):
            raise NeedsOperator(
                f"the app has an expired key credential this product did not add ({entry.get('keyId')}); "
                "Graph refuses any key update while it is there: remove it, then retry", reason="ForeignExpiredKey")
    return [*kept, dict(added)]


def without_key(existing: Sequence[Mapping[str, Any]], key_id: str, now: dt.datetime) -> list[dict[str, Any]] | None:
    """The app's key credentials without `key_id` (None: it is gone already); never the last valid one."""
    remaining = [e for e in existing if e.get("keyId") != key_id]
    if len(remaining) == len(existing):
        return None
    if not any(parse_time(e["startDateTime"]) <= now < parse_time(e["endDateTime"]) for e in remaining):
        raise NeedsOperator("refusing to remove the last valid key credential", reason="LastValidKey")
    return [_writable(e) for e in remaining if parse_time(e["endDateTime"]) > now or not _ours(e)]


def _in_product_terms(method: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """A gateway method whose Graph errors leave it as the product's own (retryable, or needs an
    operator; `GraphError.classified`), so callers never see Graph's vocabulary."""
    @functools.wraps(method)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await method(*args, **kwargs)
        except GraphError as exc:
            raise exc.classified() from exc

    return wrapper


SELF_ISSUER = "Self"  # Key Vault's own issuer: self-signed certificates
# Graph returns members of evolvable enums newer than v1.0's (restrictionType trustedCertificateAuthority)
# only when asked; otherwise they read as unknownFutureValue (docs/reference.md).
INCLUDE_NEW_ENUM_MEMBERS = {"Prefer": "include-unknown-enum-members"}
_NO_POLICY = object()


class DirectoryGateway:
    def __init__(self, graph: GraphClient) -> None:
        self.graph = graph
        self._exchange_sp_id: str | None = None
        self._policy: object = _NO_POLICY  # not read yet

    # -- tenant policy ----------------------------------------------------------------------------
    @_in_product_terms
    async def key_lifetime_limit(self) -> KeyLifetimeLimit | None:
        """The tenant's maximum key credential lifetime, read once per gateway (per Platform).

        Reading it needs Policy.Read.All, which is optional: without it (403) the product works as
        before, uncapped, and says so once in the log.
        """
        policy = await self._app_management_policy()
        return key_lifetime_limit(policy)

    @_in_product_terms
    async def certificate_authority_problem(self, issuer: str) -> str | None:
        """Why the tenant's policy refuses certificates of Key Vault issuer `issuer` on apps, or None."""
        policy = await self._app_management_policy()
        if not policy or not policy.get("isEnabled"):
            return None
        return trusted_ca_problem((policy.get("applicationRestrictions") or {}).get("keyCredentials") or [], issuer)

    async def _app_management_policy(self) -> dict[str, Any] | None:
        """The tenant's default app management policy, read once per gateway (per Platform)."""
        if self._policy is _NO_POLICY:
            try:
                response = await self.graph.request("GET", "/policies/defaultAppManagementPolicy",
                                                    headers=INCLUDE_NEW_ENUM_MEMBERS)
                policy: dict[str, Any] | None = response.json()
            except GraphError as exc:
                if exc.status not in (403, 404):
                    raise
                log.warning("cannot read the tenant's app management policy (%s): certificate validity is not "
                            "capped to a maximum key credential lifetime; grant the optional Graph permission "
                            "Policy.Read.All to the platform identity", exc.code)
                policy = None
            self._policy = policy
        return self._policy if isinstance(self._policy, dict) else None

    @_in_product_terms
    async def exchange_service_principal_id(self) -> str:
        if self._exchange_sp_id is None:
            sp = await self.graph.get_optional(
                f"/servicePrincipals(appId={literal(EXCHANGE_RESOURCE_APP_ID)})", {"$select": "id"})
            if sp is None:
                raise NeedsOperator("the Office 365 Exchange Online service principal does not exist in this "
                                    "tenant; Exchange Online must be provisioned first", reason="ExchangeMissing")
            self._exchange_sp_id = str(sp["id"])
        return self._exchange_sp_id

    # -- application ------------------------------------------------------------------------------
    @_in_product_terms
    async def find_application(self, unique_name: str) -> ObservedApplication | None:
        """The app registration with this uniqueName; `owned` from Graph's owners, never from tags
        (tags on the app are writable by its owners and prove nothing; docs/architecture.md)."""
        found = await self.graph.get_optional(path_for_unique_name(unique_name), {"$select": APP_FIELDS})
        if found is None:
            return None
        return application_from_graph(found, owned=await self._owns(str(found["id"])))

    @_in_product_terms
    async def upsert_application(self, unique_name: str, display_name: str,
                                 existing: ObservedApplication | None) -> tuple[ObservedApplication, bool]:
        """Create the app, or repair the drifted parts of it, keeping what others added.

        Returns the app and whether this call's POST created it (Graph answered 201): only then is
        its key collection known to be the one in the answer, empty.
        """
        if existing is not None:
            # PATCH keeps omitted properties: an admin's display name, notes and the like stay.
            tags = _with_owner_tag(list(existing.tags))
            declared = _with_exchange_permission([dict(p) for p in existing.declared_permissions])
            await self.graph.request("PATCH", f"/applications/{existing.object_id}", json={
                "signInAudience": "AzureADMyOrg", "tags": tags, "requiredResourceAccess": declared})
            return dataclasses.replace(existing, owned=True, tags=tuple(tags), sign_in_audience="AzureADMyOrg",
                                       declares_exchange_permission=True, declared_permissions=tuple(declared)), False
        body = {"displayName": display_name, "uniqueName": unique_name, "signInAudience": "AzureADMyOrg",
                "tags": [APP_OWNER_TAG], "requiredResourceAccess": [EXCHANGE_PERMISSION]}
        # POST, not the uniqueName upsert: an app created app-only with POST gets its creator as owner,
        # which the upsert does not promise (docs/reference.md), and ownership is what makes it ours.
        try:
            response = await self.graph.request("POST", "/applications", json=body)
        except GraphError as exc:
            if exc.status not in (400, 409):
                raise
            # uniqueName is an alternate key: a concurrent create of the same name won; read it back
            # (it may still be replicating) and use it only if it is provably ours.
            try:
                found = await retry_while_replicating(lambda: self._must_find(unique_name),
                                                      lambda e: e.status == 404, budget_seconds=60)
            except GraphError:
                raise exc from None
            if not await self._owns(str(found["id"])):
                raise ForeignObject(f"an app registration with uniqueName {unique_name} was created meanwhile by "
                                    "someone else; this product does not own it") from exc
            return application_from_graph(found, owned=True), False
        return application_from_graph(response.json(), owned=True), True

    async def _owns(self, app_object_id: str) -> bool:
        """Whether the platform's own principal is among the app's owners (GET /applications/{id}/owners).

        Tags prove nothing (any owner of any app can set any tag); ownership in Graph is what the
        platform's tenant-wide permissions must be limited to.
        """
        platform = await self.graph.caller_object_id()
        owners = await self.graph.collect(f"/applications/{app_object_id}/owners", {"$select": "id"})
        return any(str(owner.get("id")) == platform for owner in owners)

    @_in_product_terms
    async def owned_applications(self) -> list[ObservedApplication]:
        """Every app registration the platform owns, in one paged listing (for the sweep)."""
        platform = await self.graph.caller_object_id()
        items = await self.graph.collect(f"/servicePrincipals/{platform}/ownedObjects/microsoft.graph.application",
                                         {"$select": APP_FIELDS, "$top": "999"})
        return [application_from_graph(item, owned=True) for item in items]

    async def _must_find(self, unique_name: str) -> dict[str, Any]:
        return await self.graph.get_json(path_for_unique_name(unique_name), {"$select": APP_FIELDS})

    # -- key credentials: Graph replaces the whole collection on every write ------------------------
    async def _key_credentials_with_keys(self, app_object_id: str) -> list[dict[str, Any]]:
        # `key` is only returned for a single object with $select=keyCredentials (docs/reference.md).
        app = await self.graph.get_json(f"/applications/{app_object_id}", {"$select": "keyCredentials"})
        return list(app.get("keyCredentials") or [])

    @_in_product_terms
    async def add_key_credential(self, app_object_id: str, identity: str, version: CertificateVersion, der: bytes,
                                 now: dt.datetime, *, created_empty: bool = False) -> bool:
        """Add the certificate's public key to the app (False: it was there already).

        The PATCH must send every key that stays, so the keys are read back first: a concurrent run may
        have added one since the app was observed. `created_empty`: this run's own POST created the app
        moments ago (Graph's answer had no keys) and its lease makes it their one writer, so there is
        nothing to read back.
        """
        existing = [] if created_empty else await self._key_credentials_with_keys(app_object_id)
        entries = with_key_added(existing, key_credential_entry(identity, version, der), now)
        if entries is None:
            return False
        await self.graph.request("PATCH", f"/applications/{app_object_id}", json={"keyCredentials": entries})
        return True

    @_in_product_terms
    async def remove_key_credential(self, app_object_id: str, key_id: str, now: dt.datetime) -> bool:
        """Remove one key credential of ours (False: it was gone already); expired ones of ours go too."""
        existing = await self._key_credentials_with_keys(app_object_id)
        entries = without_key(existing, key_id, now)
        if entries is None:
            return False
        await self.graph.request("PATCH", f"/applications/{app_object_id}", json={"keyCredentials": entries})
        return True

    @_in_product_terms
    async def delete_application(self, app_object_id: str) -> None:
        await self._delete(f"/applications/{app_object_id}")

    # -- federated identity credentials (Application.ReadWrite.OwnedBy on an owned app) ----------------
    @_in_product_terms
    async def federated_credentials(self, app_object_id: str) -> tuple[ObservedFederatedCredential, ...]:
        items = await self.graph.collect(f"/applications/{app_object_id}/federatedIdentityCredentials")
        return tuple(federated_credential_from_graph(item) for item in items)

    @_in_product_terms
    async def add_federated_credential(self, app_object_id: str, name: str, issuer: str, subject: str,
                                       audience: str) -> str:
        body = {"name": name, "issuer": issuer, "subject": subject, "audiences": [audience]}
        try:
            response = await self.graph.request("POST", f"/applications/{app_object_id}/federatedIdentityCredentials",
                                                json=body)
        except GraphError as exc:
            if exc.status not in (400, 409):
                raise
            # A concurrent run may have added the same credential: the name is unique per app.
            existing = next((c for c in await self.federated_credentials(app_object_id) if c.name == name), None)
            if existing is None or (existing.issuer, existing.subject, existing.audiences) != (issuer, subject,
                                                                                                (audience,)):
                raise
            return existing.credential_id
        return str(response.json()["id"])

    @_in_product_terms
    async def remove_federated_credential(self, app_object_id: str, credential_id: str) -> None:
        await self._delete(f"/applications/{app_object_id}/federatedIdentityCredentials/{credential_id}")

    # -- service principal ------------------------------------------------------------------------
    @_in_product_terms
    async def find_service_principal(self, app_id: str) -> str | None:
        """The object id of the app's service principal, if it has one."""
        return await self._service_principal_id(app_id)

    async def _service_principal_id(self, app_id: str) -> str | None:
        found = await self.graph.get_optional(f"/servicePrincipals(appId={literal(app_id)})", {"$select": "id"})
        return str(found["id"]) if found is not None else None

    @_in_product_terms
    async def find_managed_identity(self, principal_id: str) -> ObservedManagedIdentity | None:
        """A service principal by its object id (a managed identity's principal id): None if there is none.
        Whether it is a managed identity's comes from Graph (servicePrincipalType), which nobody with lesser
        rights can set."""
        try:
            found = await self.graph.get_optional(f"/servicePrincipals/{quote(principal_id, safe='')}",
                                                  {"$select": "id,appId,servicePrincipalType"})
        except GraphError as exc:
            if exc.status == 400:  # not an object id Graph accepts: no such principal
                return None
            raise
        if found is None:
            return None
        return ObservedManagedIdentity(str(found["id"]), str(found.get("appId") or ""),
                                       found.get("servicePrincipalType") == "ManagedIdentity")

    @_in_product_terms
    async def create_service_principal(self, app_id: str) -> str:
        """Create the app's service principal; its object id."""
        async def create() -> str:
            try:
                response = await self.graph.request("POST", "/servicePrincipals", json={"appId": app_id})
            except GraphError as exc:
                if exc.status in (400, 409) and not _application_not_replicated(exc):
                    existing = await self._service_principal_id(app_id)
                    if existing is not None:  # created concurrently by another run
                        return existing
                raise
            return str(response.json()["id"])

        return await retry_while_replicating(create, _application_not_replicated)

    @_in_product_terms
    async def delete_service_principal(self, sp_id: str) -> None:
        await self._delete(f"/servicePrincipals/{sp_id}")

    # -- consent ----------------------------------------------------------------------------------
    @_in_product_terms
    async def find_consent(self, sp_id: str) -> str | None:
        exchange_sp = await self.exchange_service_principal_id()
        assignments = await self.graph.collect(f"/servicePrincipals/{sp_id}/appRoleAssignments",
                                               {"$select": "id,appRoleId,resourceId"})
        for assignment in assignments:
            if (assignment.get("resourceId") == exchange_sp
                    and assignment.get("appRoleId") == EXCHANGE_MANAGE_AS_APP_ROLE_ID):
                return str(assignment["id"])
        return None

    @_in_product_terms
    async def grant_consent(self, sp_id: str, *, fresh_principal: bool = False) -> str:
        exchange_sp = await self.exchange_service_principal_id()
        body = {"principalId": sp_id, "resourceId": exchange_sp, "appRoleId": EXCHANGE_MANAGE_AS_APP_ROLE_ID}

        async def grant() -> str:
            try:
                response = await self.graph.request("POST", f"/servicePrincipals/{exchange_sp}/appRoleAssignedTo",
                                                    json=body)
            except GraphError as exc:
                # "Permission being assigned already exists": another run got there first.
                if exc.status == 400 and "already exists" in exc.message.lower():
                    existing = await self.find_consent(sp_id)
                    if existing is not None:
                        return existing
                raise
            return str(response.json()["id"])

        return await retry_while_replicating(grant, _replication_check(fresh_principal))

    @_in_product_terms
    async def revoke_consent(self, assignment_id: str) -> None:
        exchange_sp = await self.exchange_service_principal_id()
        await self._delete(f"/servicePrincipals/{exchange_sp}/appRoleAssignedTo/{assignment_id}")

    # -- directory roles --------------------------------------------------------------------------
    @_in_product_terms
    async def role_assignments(self, sp_id: str) -> dict[str, str]:
        items = await self.graph.collect("/roleManagement/directory/roleAssignments",
                                         {"$filter": f"principalId eq {literal(sp_id)}",
                                          "$select": "id,roleDefinitionId,principalId,directoryScopeId"})
        return {str(a["roleDefinitionId"]): str(a["id"]) for a in items if a.get("directoryScopeId", "/") == "/"}

    @_in_product_terms
    async def assign_role(self, sp_id: str, role_id: str, *, fresh_principal: bool = False) -> str:
        body = {"roleDefinitionId": role_id, "principalId": sp_id, "directoryScopeId": "/"}

        async def assign() -> str:
            try:
                response = await self.graph.request("POST", "/roleManagement/directory/roleAssignments", json=body)
            except GraphError as exc:
                if exc.status in (400, 409):
                    existing = (await self.role_assignments(sp_id)).get(role_id)
                    if existing is not None:  # a concurrent run assigned it
                        return existing
                raise
            return str(response.json()["id"])

        return await retry_while_replicating(assign, _replication_check(fresh_principal))

    @_in_product_terms
    async def remove_role_assignment(self, assignment_id: str) -> None:
        await self._delete(f"/roleManagement/directory/roleAssignments/{assignment_id}")

    # -- tenant-wide listings for the sweep: one paged listing each, whatever the number of identities
    @_in_product_terms
    async def exchange_grantees(self) -> frozenset[str]:
        """The principals holding Exchange.ManageAsApp (the grants on Exchange's service principal)."""
        exchange_sp = await self.exchange_service_principal_id()
        items = await self.graph.collect(f"/servicePrincipals/{exchange_sp}/appRoleAssignedTo",
                                         {"$select": "principalId,appRoleId", "$top": "999"})
        return frozenset(str(i["principalId"]) for i in items if i.get("appRoleId") == EXCHANGE_MANAGE_AS_APP_ROLE_ID)

    @_in_product_terms
    async def role_holders(self, role_id: str) -> frozenset[str]:
        """The principals holding a directory role tenant-wide (scope "/")."""
        items = await self.graph.collect("/roleManagement/directory/roleAssignments", {
            "$filter": f"roleDefinitionId eq {literal(role_id)}", "$select": "principalId,directoryScopeId"})
        return frozenset(str(i["principalId"]) for i in items if i.get("directoryScopeId", "/") == "/")

    async def _delete(self, path: str) -> None:
        try:
            await self.graph.request("DELETE", path)
        except GraphError as exc:
            if exc.status != 404:  # already gone is what we wanted
                raise
