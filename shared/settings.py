"""The product's settings: one typed object read from app settings / the environment.

Nothing is read at import time. `Settings.current()` (parsed once per process, again only when a
setting it read changes) and `Settings.from_environment()` validate everything they read and
names the setting at fault, so a misconfigured Function App says what to fix on its first call.
Endpoints are settings (not constants) because that is how national clouds and the local
stand-ins are reached; identity and TLS trust come from the standard azure-identity and OpenSSL
variables (`IDENTITY_ENDPOINT`, `AZURE_CLIENT_ID`, `AZURE_AUTHORITY_HOST`, `SSL_CERT_FILE`, ...).
"""

from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from shared.core.roles import EXCHANGE_RECIPIENT_ADMINISTRATOR, parse_allow_list
from shared.errors import SettingsError

_GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_ORGANIZATION = re.compile(
    r"^[a-z0-9][a-z0-9-]{0,62}\.(onmicrosoft\.com|onmicrosoft\.us|onmicrosoft\.de|partner\.onmschina\.cn)$")

# Microsoft's own authority hosts; any other host (sovereign/private cloud, the local stand-ins)
# makes MSAL's instance discovery call login.microsoftonline.com, which must then be turned off.
KNOWN_AUTHORITY_HOSTS = frozenset({
    "login.microsoftonline.com", "login.microsoftonline.us", "login.chinacloudapi.cn",
    "login.partner.microsoftonline.cn",
})

DEFAULT_GRAPH_ENDPOINT = "https://graph.microsoft.com"
DEFAULT_EXO_ENDPOINT = "https://outlook.office365.com"
DEFAULT_AUTHORITY_HOST = "https://login.microsoftonline.com"


@dataclass(frozen=True)
class Settings:
    key_vault_url: str
    tenant_id: str
    organization: str
    graph_endpoint: str = DEFAULT_GRAPH_ENDPOINT
    exo_endpoint: str = DEFAULT_EXO_ENDPOINT
    authority_host: str = DEFAULT_AUTHORITY_HOST
    verify_challenge_resource: bool = True
    allowed_roles: frozenset[str] = field(
        default_factory=lambda: frozenset({EXCHANGE_RECIPIENT_ADMINISTRATOR.template_id}))
    default_validity_months: int = 12
    # The Key Vault issuer of new certificates: "Self" (self-signed), or the name of an issuer
    # configured in the vault (a CA Key Vault integrates with, or a private CA), for tenants whose
    # app management policy accepts only certificates from trusted certificate authorities.
    certificate_issuer: str = "Self"
    renew_before_days: int | None = None
    renew_before_fraction: float | None = None
    rotation_grace_hours: float = 24.0
    managed_identity_client_id: str | None = None
    reconcile_queue: str = "identity-reconcile"
    verify_sign_in: bool = True
    verify_sign_in_timeout_seconds: float = 120.0
    require_app_roles: bool = False
    # Set by the platform when App Service Authentication is on; only then are its headers trusted.
    app_service_auth_enabled: bool = False
    # Accepted `aud` values of callers' Entra access tokens (the API app registration's client id
    # and/or application ID URI); empty: the app validates no tokens itself.
    auth_audiences: tuple[str, ...] = ()
    connection_cache_seconds: float = 300.0
    reports_container: str = "mailbox-reports"
    role_mode: str = "assign"
    deep_check_hours: float = 24.0
    notify_webhook_url: str | None = None
    notify_webhook_format: str = "json"
    notify_near_expiry_days: int = 14
    instance_name: str = ""
    # When the platform's permissions were last granted (infra sets the deployment time), and for how
    # long after it a 403 from Graph is taken for a permission not yet in effect (docs/reference.md:
    # a managed identity's new permissions can take hours to reach its tokens).
    platform_deployed_at: dt.datetime | None = None
    permission_propagation_hours: float = 6.0
    # How long a write request runs before it answers 202 and continues through the queue.
    http_inline_budget_seconds: float = 20.0
    # The blob lease that makes one run at a time the writer of an identity (Blob leases: 15-60 s).
    identity_lease_seconds: int = 30
    # Principal (object) ids of managed identities that identities may trust or be (issue #16): none by
    # default. Federation issuers identities may trust; empty: this tenant's Entra ID issuer only.
    allowed_managed_identities: frozenset[str] = frozenset()
    allowed_federation_issuers: tuple[str, ...] = ()
    # How a job's connection() signs in: `auto` (the identity's certificate if it has one, else its
    # federated trust), `certificate` or `federated`; and the workload token file Kubernetes'
    # workload identity mounts (else the job's managed identity vouches for it).
    connection_credential: str = "auto"
    federated_token_file: str | None = None

    @property
    def entra_issuer(self) -> str:
        """The issuer of this tenant's Entra ID v2.0 tokens (a managed identity's federation assertions)."""
        return f"{self.authority_host}/{self.tenant_id}/v2.0"

    @property
    def federation_issuers(self) -> frozenset[str]:
        """The issuers identities may trust: ALLOWED_FEDERATION_ISSUERS, else this tenant's Entra ID."""
        return frozenset(self.allowed_federation_issuers or (self.entra_issuer,))

    @property
    def graph_scope(self) -> str:
        return f"{self.graph_endpoint}/.default"

    @property
    def exo_scope(self) -> str:
        return f"{self.exo_endpoint}/.default"

    @property
    def disable_instance_discovery(self) -> bool:
        return (urlsplit(self.authority_host).hostname or "") not in KNOWN_AUTHORITY_HOSTS

    @classmethod
    def current(cls) -> Settings:
        """The process's settings, parsed once; parsed again only if a variable it read changed
        (the Functions host restarts the worker when app settings change; tests change them)."""
        global _current
        cached = _current
        if cached is not None and all(os.environ.get(name) == value for name, value in cached[1]):
            return cached[0]
        reader_names: list[str] = []
        settings = cls.from_environment(read=reader_names)
        _current = (settings, tuple((name, os.environ.get(name)) for name in reader_names))
        return settings

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None, *,
                         read: list[str] | None = None) -> Settings:
        """Parse and validate the settings; `read` collects the names of the variables consulted."""
        env = os.environ if environ is None else environ
        reader = _Reader(env, read if read is not None else [])
        settings = cls(
            key_vault_url=reader.https_url("KEY_VAULT_URL", required=True).rstrip("/") + "/",
            tenant_id=reader.guid("AZURE_TENANT_ID"),
            organization=reader.organization("EXO_ORGANIZATION"),
            graph_endpoint=reader.https_url("GRAPH_ENDPOINT", default=DEFAULT_GRAPH_ENDPOINT).rstrip("/"),
            exo_endpoint=reader.https_url("EXO_ENDPOINT", default=DEFAULT_EXO_ENDPOINT).rstrip("/"),
            authority_host=reader.https_url("AZURE_AUTHORITY_HOST", default=DEFAULT_AUTHORITY_HOST).rstrip("/"),
            verify_challenge_resource=reader.boolean("KEY_VAULT_VERIFY_CHALLENGE_RESOURCE", default=True),
            allowed_roles=reader.allowed_roles("ALLOWED_ROLES"),
            default_validity_months=reader.integer("CERTIFICATE_VALIDITY_MONTHS", default=12, low=1, high=24),
            certificate_issuer=reader.issuer_name("CERTIFICATE_ISSUER", default="Self"),
            renew_before_days=reader.optional_integer("RENEW_BEFORE_DAYS", low=1, high=365),
            renew_before_fraction=reader.optional_fraction("RENEW_BEFORE_FRACTION"),
            rotation_grace_hours=reader.number("ROTATION_GRACE_HOURS", default=24.0, low=0.0, high=24.0 * 30),
            managed_identity_client_id=reader.optional_guid("AZURE_CLIENT_ID"),
            reconcile_queue=reader.queue_name("RECONCILE_QUEUE", default="identity-reconcile"),
            verify_sign_in=reader.boolean("VERIFY_SIGN_IN", default=True),
            verify_sign_in_timeout_seconds=reader.number("VERIFY_SIGN_IN_TIMEOUT_SECONDS", default=120.0,
                                                         low=0.0, high=600.0),
            require_app_roles=reader.boolean("AUTH_REQUIRE_APP_ROLES", default=False),
            app_service_auth_enabled=reader.boolean("WEBSITE_AUTH_ENABLED", default=False),
            auth_audiences=reader.audiences("AUTH_AUDIENCE"),
            connection_cache_seconds=reader.number("CONNECTION_CACHE_SECONDS", default=300.0, low=0.0, high=3600.0),
            reports_container=reader.container_name("REPORTS_CONTAINER", default="mailbox-reports"),
            role_mode=reader.choice("ROLE_MODE", ("assign", "verify"), default="assign"),
            deep_check_hours=reader.number("DEEP_CHECK_HOURS", default=24.0, low=1.0, high=24.0 * 30),
            # Teams workflow URLs carry their signature in the query string: a secret, never logged whole.
            notify_webhook_url=reader.https_url("NOTIFY_WEBHOOK_URL", allow_query=True) or None,
            notify_webhook_format=reader.choice("NOTIFY_WEBHOOK_FORMAT", ("json", "teams", "slack"), default="json"),
            notify_near_expiry_days=reader.integer("NOTIFY_NEAR_EXPIRY_DAYS", default=14, low=1, high=365),
            instance_name=reader.text("PLATFORM_INSTANCE_NAME") or reader.text("WEBSITE_SITE_NAME") or "",
            platform_deployed_at=reader.optional_time("PLATFORM_DEPLOYED_AT"),
            permission_propagation_hours=reader.number("PERMISSION_PROPAGATION_HOURS", default=6.0, low=0.0,
                                                       high=72.0),
            http_inline_budget_seconds=reader.number("HTTP_INLINE_BUDGET_SECONDS", default=20.0, low=0.0,
                                                     high=120.0),
            identity_lease_seconds=reader.integer("IDENTITY_LEASE_SECONDS", default=30, low=15, high=60),
            allowed_managed_identities=reader.guids("ALLOWED_MANAGED_IDENTITIES"),
            allowed_federation_issuers=reader.issuers("ALLOWED_FEDERATION_ISSUERS"),
            connection_credential=reader.choice("CONNECTION_CREDENTIAL", ("auto", "certificate", "federated"),
                                                default="auto"),
            federated_token_file=reader.path("AZURE_FEDERATED_TOKEN_FILE"),
        )
        return settings


_current: tuple[Settings, tuple[tuple[str, str | None], ...]] | None = None


class _Reader:
    def __init__(self, env: Mapping[str, str], read: list[str]) -> None:
        self.env = env
        self.read = read

    def _raw(self, name: str) -> str | None:
        self.read.append(name)
        value = self.env.get(name)
        if value is None or not value.strip():
            return None
        return value.strip()

    def _missing(self, name: str, expected: str) -> SettingsError:
        return SettingsError(f"setting {name} is missing: expected {expected}", reason="SettingMissing",
                             setting=name)

    def _bad(self, name: str, value: str, expected: str) -> SettingsError:
        return SettingsError(f"setting {name} is malformed ({value!r}): expected {expected}", setting=name)

    def https_url(self, name: str, *, required: bool = False, default: str = "", allow_query: bool = False) -> str:
        value = self._raw(name)
        expected = "an https:// URL"
        if value is None:
            if required:
                raise self._missing(name, expected)
            return default
        try:
            parts = urlsplit(value)
            host = parts.hostname
        except ValueError:  # e.g. a stray `[`: urllib's "Invalid IPv6 URL"
            raise self._bad(name, "a URL that cannot be parsed" if allow_query else value, expected) from None
        if parts.scheme != "https" or not parts.netloc or (parts.query and not allow_query) or parts.fragment:
            # A URL that may carry a signature is a secret: the message names the scheme and host only.
            raise self._bad(name, f"{parts.scheme}://{host}/…" if allow_query else value, expected)
        return value

    def text(self, name: str) -> str | None:
        value = self._raw(name)
        if value is not None and (len(value) > 120 or not value.isprintable()):
            raise self._bad(name, value, "a short printable name")
        return value

    def guid(self, name: str) -> str:
        value = self._raw(name)
        if value is None:
            raise self._missing(name, "the directory (tenant) id, a GUID")
        if not _GUID.match(value):
            raise self._bad(name, value, "a GUID")
        return value.lower()

    def optional_guid(self, name: str) -> str | None:
        value = self._raw(name)
        if value is not None and not _GUID.match(value):
            raise self._bad(name, value, "a GUID")
        return value.lower() if value else None

    def organization(self, name: str) -> str:
        value = self._raw(name)
        expected = "the tenant's primary onmicrosoft domain, e.g. contoso.onmicrosoft.com"
        if value is None:
            raise self._missing(name, expected)
        if not _ORGANIZATION.match(value.lower()):
            raise self._bad(name, value, expected)
        return value.lower()

    def boolean(self, name: str, *, default: bool) -> bool:
        value = self._raw(name)
        if value is None:
            return default
        lowered = value.lower()
        if lowered in ("true", "1", "yes"):
            return True
        if lowered in ("false", "0", "no"):
            return False
        raise self._bad(name, value, "true or false")

    def integer(self, name: str, *, default: int, low: int, high: int) -> int:
        value = self.optional_integer(name, low=low, high=high)
        return default if value is None else value

    def optional_integer(self, name: str, *, low: int, high: int) -> int | None:
        value = self._raw(name)
        if value is None:
            return None
        try:
            number = int(value)
        except ValueError:
            raise self._bad(name, value, f"a whole number from {low} to {high}") from None
        if not low <= number <= high:
            raise self._bad(name, value, f"a whole number from {low} to {high}")
        return number

    def optional_time(self, name: str) -> dt.datetime | None:
        """An ISO 8601 moment with its offset (e.g. Bicep's utcNow(): 20240502T074112Z), as UTC."""
        value = self._raw(name)
        if value is None:
            return None
        expected = "an ISO 8601 date and time with its offset, e.g. 2024-05-02T07:41:12Z"
        text = value.strip()
        compact = re.fullmatch(r"(\d{8})T(\d{6})Z", text)
        try:
            moment = dt.datetime.strptime("".join(compact.groups()), "%Y%m%d%H%M%S").replace(tzinfo=dt.UTC) \
                if compact else dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise self._bad(name, value, expected) from None
        if moment.tzinfo is None:
            raise self._bad(name, value, expected)
        return moment.astimezone(dt.UTC)

    def number(self, name: str, *, default: float, low: float, high: float) -> float:
        value = self._raw(name)
        if value is None:
            return default
        try:
            number = float(value)
        except ValueError:
            raise self._bad(name, value, f"a number from {low:g} to {high:g}") from None
        if not low <= number <= high:
            raise self._bad(name, value, f"a number from {low:g} to {high:g}")
        return number

    def optional_fraction(self, name: str) -> float | None:
        value = self._raw(name)
        if value is None:
            return None
        try:
            number = float(value)
        except ValueError:
            raise self._bad(name, value, "a fraction of the lifetime between 0 and 1, e.g. 0.33") from None
        if not 0.0 < number < 1.0:
            raise self._bad(name, value, "a fraction of the lifetime between 0 and 1, e.g. 0.33")
        return number

    def issuer_name(self, name: str, *, default: str) -> str:
        value = self._raw(name) or default
        if not re.fullmatch(r"[0-9A-Za-z-]{1,127}", value):
            raise self._bad(name, value, "the name of a Key Vault certificate issuer (letters, digits, hyphens), "
                                         "or Self")
        return "Self" if value.lower() == "self" else value

    def audiences(self, name: str) -> tuple[str, ...]:
        value = self._raw(name)
        if value is None:
            return ()
        audiences = tuple(part.strip() for part in value.split(",") if part.strip())
        for audience in audiences:
            if len(audience) > 200 or not audience.isprintable() or " " in audience:
                raise self._bad(name, value, "comma-separated client ids or application ID URIs of the API app")
        return audiences

    def path(self, name: str) -> str | None:
        value = self._raw(name)
        if value is not None and (len(value) > 1024 or not value.isprintable()):
            raise self._bad(name, value, "a file path")
        return value

    def guids(self, name: str) -> frozenset[str]:
        value = self._raw(name)
        if value is None:
            return frozenset()
        items = [part.strip() for part in value.split(",") if part.strip()]
        if not all(_GUID.match(item) for item in items):
            raise self._bad(name, value, "comma-separated principal (object) ids, GUIDs")
        return frozenset(item.lower() for item in items)

    def issuers(self, name: str) -> tuple[str, ...]:
        value = self._raw(name)
        if value is None:
            return ()
        items = tuple(part.strip() for part in value.split(",") if part.strip())
        for item in items:
            parts = urlsplit(item)
            if parts.scheme != "https" or not parts.netloc or parts.query or parts.fragment or len(item) > 200:
                raise self._bad(name, value, "comma-separated https:// issuer URLs")
        return items

    def allowed_roles(self, name: str) -> frozenset[str]:
        value = self._raw(name)
        if value is None:
            return frozenset({EXCHANGE_RECIPIENT_ADMINISTRATOR.template_id})
        return parse_allow_list(value)

    def choice(self, name: str, options: tuple[str, ...], *, default: str) -> str:
        value = self._raw(name)
        if value is None:
            return default
        if value.lower() not in options:
            raise self._bad(name, value, " or ".join(options))
        return value.lower()

    def queue_name(self, name: str, *, default: str) -> str:
        value = self._raw(name) or default
        if not re.fullmatch(r"[a-z0-9](?!.*--)[a-z0-9-]{1,61}[a-z0-9]", value):
            raise self._bad(name, value, "a storage queue name (3-63 lower-case letters, digits, single hyphens)")
        return value

    def container_name(self, name: str, *, default: str) -> str:
        value = self._raw(name) or default
        if not re.fullmatch(r"[a-z0-9](?!.*--)[a-z0-9-]{1,61}[a-z0-9]", value):
            raise self._bad(name, value, "a blob container name (3-63 lower-case letters, digits, single hyphens)")
        return value
