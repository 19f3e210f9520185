"""The doctor's reads: settings, tokens, Graph, Key Vault and storage observed into `doctor.Facts`.

Read-only by construction: only GETs and listings, each listing stopped after its first page except
the registry's certificate listing (and what finds identities without a certificate, as the sweep finds
them). The cost is a fixed handful of requests plus ceil(N/25) Key Vault pages for N identities (bench/doctor.py
measures it). Tokens are observed through a wrapper
that notes, per scope, whether one came; the tokens themselves never leave it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import datetime as dt
import json
import logging
import os
from collections.abc import Awaitable, Mapping
from functools import cache
from typing import Any, TypeVar
from urllib.parse import urlsplit

from azure.core.exceptions import AzureError, HttpResponseError

from shared.adapters.credentials import platform_credential
from shared.adapters.graph import GraphClient, GraphError, literal
from shared.adapters.vault import VaultGateway, vault_error
from shared.core import registry
from shared.core.model import EXCHANGE_RESOURCE_APP_ID, OWNER_TAG, OWNER_TAG_VALUE
from shared.core.permission_table import PermissionTable, load_table
from shared.doctor import (
    NEEDED_AS_IS,
    Deployment,
    Facts,
    Failure,
    RegistryEntry,
    SettingProblem,
    document,
    evaluate,
    summary,
)
from shared.errors import ExoAutomationError, SettingsError, first_line
from shared.runtime.jobs import STORAGE_CONNECTION
from shared.settings import Settings

T = TypeVar("T")
log = logging.getLogger("exo_automation.doctor")

# The token audience of Azure Storage, the same in every cloud.
STORAGE_SCOPE = "https://storage.azure.com/.default"
# Graph returns members of evolvable enums newer than v1.0's (restrictionType trustedCertificateAuthority)
# only when asked; otherwise they read as unknownFutureValue (docs/reference.md).
INCLUDE_NEW_ENUM_MEMBERS = {"Prefer": "include-unknown-enum-members"}


@cache
def permission_table() -> PermissionTable:
    return load_table()


# -- settings ------------------------------------------------------------------------------------------
def load_settings(environ: Mapping[str, str]) -> tuple[Settings | None, list[SettingProblem]]:
    """The settings, with each malformed setting set aside (its default used) and reported.

    None when a setting in NEEDED_AS_IS is unusable: then only the settings can be reported.
    """
    env = dict(environ)
    problems: list[SettingProblem] = []
    while True:
        try:
            return Settings.from_environment(env), problems
        except SettingsError as exc:
            name = exc.setting
            problems.append(SettingProblem(name or "settings", exc.reason, exc.message))
            if name is None or name in NEEDED_AS_IS or name not in env:
                return None, problems
            del env[name]


# -- tokens --------------------------------------------------------------------------------------------
class RecordingCredential:
    """The platform's credential, noting per scope whether a token came (and its claims for Graph)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.outcomes: dict[str, Failure | None] = {}
        self.claims: dict[str, dict[str, Any]] = {}

    async def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        scope = scopes[0] if scopes else ""
        try:
            token = await self._inner.get_token(*scopes, **kwargs)
        except AzureError as exc:
            self.outcomes[scope] = Failure("PlatformTokenUnavailable", first_line(exc))
            raise
        self.outcomes[scope] = None
        self.claims[scope] = _claims(token.token)
        return token

    async def close(self) -> None:
        """The wrapped credential belongs to the caller, who closes it."""


def _claims(jwt: str) -> dict[str, Any]:
    try:
        payload = jwt.split(".")[1]
        claims: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return {key: claims[key] for key in ("oid", "roles") if key in claims}  # nothing else is kept
    except (IndexError, ValueError):
        return {}


async def _ask_token(credential: RecordingCredential, scope: str) -> None:
    with contextlib.suppress(AzureError):  # noted by the credential
        await credential.get_token(scope)


def token_outcomes(credential: RecordingCredential, settings: Settings) -> dict[str, Failure | None]:
    labels = {settings.graph_scope: "Microsoft Graph", settings.exo_scope: "Exchange Online", STORAGE_SCOPE: "Storage"}
    # The one other scope is Key Vault's: the SDK takes it from the vault's challenge.
    return {labels.get(scope, "Key Vault"): outcome for scope, outcome in credential.outcomes.items()}


# -- Microsoft Graph ---------------------------------------------------------------------------------
async def _graph_read(call: Awaitable[T]) -> T | Failure:
    try:
        return await call
    except GraphError as exc:
        return Failure(exc.code, exc.message, exc.status)
    except ExoAutomationError as exc:
        return Failure(exc.reason, exc.message)


async def observe_graph(facts: Facts, graph: GraphClient, settings: Settings, principal_id: str | None) -> str | None:
    """Graph's facts; the object id of the principal whose permissions were read (None: no token)."""
    try:
        own = await graph.caller_object_id()
    except ExoAutomationError:
        return None  # the credential noted why
    target = principal_id or own
    facts.checked_as_self = target == own
    graph_sp, held, exchange, definitions, policy = await asyncio.gather(
        _graph_read(graph.get_json(f"/servicePrincipals(appId={literal(permission_table().resource_app_id)})",
                                   {"$select": "id,appRoles"})),
        _graph_read(graph.collect(f"/servicePrincipals/{target}/appRoleAssignments",
                                  {"$select": "id,appRoleId,resourceId"})),
        _graph_read(graph.get_optional(f"/servicePrincipals(appId={literal(EXCHANGE_RESOURCE_APP_ID)})",
                                       {"$select": "id,appRoles"})),
        _graph_read(graph.collect("/roleManagement/directory/roleDefinitions",
                                  {"$select": "id,templateId,displayName,isEnabled"})),
        _graph_read(graph.get_json("/policies/defaultAppManagementPolicy", headers=INCLUDE_NEW_ENUM_MEMBERS)),
    )
    if isinstance(graph_sp, Failure):
        facts.graph_app_roles = graph_sp
    else:
        facts.graph_sp_id = str(graph_sp["id"])
        facts.graph_app_roles = {str(r["value"]): str(r["id"]).lower() for r in graph_sp.get("appRoles") or []
                                 if r.get("value") and "Application" in (r.get("allowedMemberTypes") or [])}
    facts.held = held if isinstance(held, Failure) else {
        str(a["appRoleId"]).lower(): str(a["id"]) for a in held
        if isinstance(graph_sp, Failure) or str(a.get("resourceId")) == facts.graph_sp_id}
    facts.exchange = exchange if isinstance(exchange, Failure) else (exchange or {})
    facts.role_definitions = definitions if isinstance(definitions, Failure) else {
        str(d.get("templateId") or d["id"]).lower(): d for d in definitions}
    facts.policy = policy
    return target


# -- Key Vault ---------------------------------------------------------------------------------------
def _text(value: Any) -> str | None:
    """An SDK enum member (or plain string) as its wire value."""
    return None if value is None else str(getattr(value, "value", value))


def _vault_failure(exc: AzureError, what: str) -> Failure:
    error = vault_error(exc, what)
    return Failure(error.reason, error.message, exc.status_code if isinstance(exc, HttpResponseError) else None)


async def observe_vault(facts: Facts, vault: VaultGateway, environ: Mapping[str, str]) -> None:
    """The registry (one paged certificate listing, and the identities without a certificate as the sweep finds
    them), one page of secrets, and the vault's recovery level."""
    level: str | None = None
    try:
        entries = []
        async for props in vault.certificates.list_properties_of_certificates(max_page_size=25):
            level = level or _text(props.recovery_level)
            tags = props.tags or {}
            if tags.get(OWNER_TAG) == OWNER_TAG_VALUE and "identity" in tags:
                entries.append(RegistryEntry(tags["identity"], tags.get("lastResult"), tags.get("lastError"),
                                             tags.get("state", "active")))
        facts.certificates = entries
    except AzureError as exc:
        facts.certificates = _vault_failure(exc, "listing certificates")
    try:
        async for page in vault.secrets.list_properties_of_secrets(max_page_size=1).by_page():
            async for secret in page:
                level = level or _text(secret.recovery_level)
            break  # one page shows the role works
    except AzureError as exc:
        facts.secrets = _vault_failure(exc, "listing secrets")
    facts.recovery_level = level
    if isinstance(facts.certificates, list) and facts.secrets is None:
        await _add_entries_without_certificate(facts, vault, environ)


async def _add_entries_without_certificate(facts: Facts, vault: VaultGateway, environ: Mapping[str, str]) -> None:
    """Identities without a certificate keep their registry entry on the connection secret, found as the sweep
    finds them (`shared.sweep.find_without_certificate`: the lease blobs' names, or every secret)."""
    from shared.sweep import find_without_certificate, read_index

    assert isinstance(facts.certificates, list) and facts.settings is not None
    known = {e.name for e in facts.certificates}
    index = await read_index(facts.settings, environ)
    try:
        entries, _ = await find_without_certificate(vault, facts.settings.organization, known, index,
                                                    dt.datetime.now(dt.UTC),
                                                    dt.timedelta(hours=facts.settings.deep_check_hours))
    except ExoAutomationError as exc:
        facts.secrets = Failure(exc.reason, exc.message)
        return
    facts.certificates = facts.certificates + [
        RegistryEntry(e.name, e.tags.get(registry.LAST_RESULT), e.tags.get(registry.LAST_ERROR),
                      e.tags.get(registry.STATE, "active")) for e in entries]


# -- Functions storage -------------------------------------------------------------------------------
def storage_clients(environ: Mapping[str, str], settings: Settings) -> tuple[Any, Any, Any] | None:
    """(queue service, blob service, credential they own or None) as the Functions host connects, or
    None where AzureWebJobsStorage is not configured. Raises ValueError for a malformed connection string."""
    from azure.storage.blob.aio import BlobServiceClient
    from azure.storage.queue.aio import QueueServiceClient

    options: dict[str, Any] = {"retry_total": 1}  # a doctor answers quickly; the host has its own retries
    connection_string = (environ.get(STORAGE_CONNECTION) or "").strip()
    if connection_string:
        return (QueueServiceClient.from_connection_string(connection_string, **options),
                BlobServiceClient.from_connection_string(connection_string, **options), None)
    account = (environ.get(f"{STORAGE_CONNECTION}__accountName") or "").strip()
    queue_uri = (environ.get(f"{STORAGE_CONNECTION}__queueServiceUri") or "").strip() \
        or (f"https://{account}.queue.core.windows.net" if account else "")
    blob_uri = (environ.get(f"{STORAGE_CONNECTION}__blobServiceUri") or "").strip() \
        or (f"https://{account}.blob.core.windows.net" if account else "")
    if not queue_uri or not blob_uri:
        return None
    client_id = (environ.get(f"{STORAGE_CONNECTION}__clientId") or "").strip()
    credential = platform_credential(dataclasses.replace(settings, managed_identity_client_id=client_id or
                                                         settings.managed_identity_client_id))
    return (QueueServiceClient(queue_uri, credential=credential, **options),
            BlobServiceClient(blob_uri, credential=credential, **options), credential)


async def _first_page(pager: Any) -> Failure | None:
    try:
        async for page in pager.by_page():
            async for _ in page:
                break
            break
    except HttpResponseError as exc:
        code = getattr(exc, "error_code", None) or exc.reason or "Refused"  # storage errors carry error_code
        return Failure(str(code), first_line(exc), exc.status_code)
    except AzureError as exc:
        return Failure(type(exc).__name__, first_line(exc))
    return None


async def observe_storage(facts: Facts, environ: Mapping[str, str], settings: Settings) -> None:
    try:
        clients = storage_clients(environ, settings)
    except ValueError as exc:
        facts.storage = {"queue": Failure("SettingInvalid", f"{STORAGE_CONNECTION}: {exc}")}
        return
    if clients is None:
        facts.storage = None
        return
    queues, blobs, credential = clients
    try:
        async with queues, blobs:
            facts.storage = {"queue": await _first_page(queues.list_queues(results_per_page=1)),
                             "blob": await _first_page(blobs.list_containers(results_per_page=1))}
    finally:
        if credential is not None:
            await credential.close()


# -- the whole run -----------------------------------------------------------------------------------
def deployment(settings: Settings, environ: Mapping[str, str], principal_id: str | None,
               app_name: str | None, resource_group: str | None) -> Deployment:
    defaults = Deployment()
    return Deployment(
        # App Service sets WEBSITE_SITE_NAME and WEBSITE_RESOURCE_GROUP in the running app.
        app_name=app_name or environ.get("WEBSITE_SITE_NAME") or defaults.app_name,
        resource_group=resource_group or environ.get("WEBSITE_RESOURCE_GROUP") or defaults.resource_group,
        vault_name=(urlsplit(settings.key_vault_url).hostname or defaults.vault_name).split(".")[0],
        graph_endpoint=settings.graph_endpoint,
        principal_id=principal_id or defaults.principal_id,
        client_id=settings.managed_identity_client_id or defaults.client_id,
    )


async def run_doctor(environ: Mapping[str, str] | None = None, *, credential: Any = None,
                     principal_id: str | None = None, app_name: str | None = None,
                     resource_group: str | None = None) -> dict[str, Any]:
    """Observe everything, read-only, and return the doctor's document.

    `credential` is the platform's (the caller keeps owning it); without one, the platform credential
    of the settings is made and closed here. `principal_id` names the identity whose Graph
    permissions are read (default: the one signed in, i.e. the platform itself in the Function App).
    """
    env = os.environ if environ is None else environ
    settings, problems = load_settings(env)
    if settings is None:
        return document(evaluate(Facts(None, Deployment(), tuple(problems)), permission_table()))
    facts = Facts(settings, deployment(settings, env, principal_id, app_name, resource_group), tuple(problems))
    owned = credential is None
    inner = platform_credential(settings) if owned else credential
    recorder = RecordingCredential(inner)
    graph = GraphClient(settings, recorder)
    vault = VaultGateway(settings, recorder)
    try:
        target, _, _ = await asyncio.gather(observe_graph(facts, graph, settings, principal_id),
                                            observe_vault(facts, vault, env), observe_storage(facts, env, settings))
        await _ask_token(recorder, STORAGE_SCOPE)
        if not (isinstance(facts.exchange, dict) and not facts.exchange):  # no SP: its own check says so
            await _ask_token(recorder, settings.exo_scope)
    finally:
        await graph.aclose()
        await vault.aclose()
        if owned:
            await inner.close()
    facts.tokens = token_outcomes(recorder, settings)
    roles = recorder.claims.get(settings.graph_scope, {}).get("roles")
    facts.token_roles = frozenset(roles) if isinstance(roles, list) else None
    if target is not None:
        facts.deployment = dataclasses.replace(facts.deployment, principal_id=target)
    return document(evaluate(facts, permission_table()))


async def health_verdict(*, credential: Any) -> str:
    """The doctor's one line for the status page; never raises (the page must show regardless)."""
    try:
        return summary(await run_doctor(credential=credential))
    except Exception as exc:  # the page's rows matter more than its verdict line
        log.warning("the doctor could not run for the status page: %s", type(exc).__name__)
        return "platform health unknown (the doctor could not run)"
