"""`connection(name)`: everything a job needs to act as an automation identity, cached in process.

A `Connection` is the identity's published connection record, its certificate with the private key
(read from Key Vault) and an azure-identity credential for Exchange Online and Microsoft Graph.
Usable from any function of the app (`await connection("reports")`) and from a plain script
(`connection_sync("reports")`).

Cost and freshness: a cold fetch reads two Key Vault secrets, the connection secret and the
certificate's backing secret at the version the record names. After that, `connection()` answers
from memory for `CONNECTION_CACHE_SECONDS`; then it re-reads the connection secret only, and reads
a PFX again only when the published certificate version changed. A caller that was refused by
Entra ID or Exchange asks for a refresh once (`refresh_connection`), which re-reads the record and
starts a new credential (its token cache may hold a token minted before a role or consent change).
A cached certificate that a rotation superseded keeps working until its refresh: the reconciler
keeps the previous key on the app for `ROTATION_GRACE_HOURS` (the overlap window).

Everything that holds a network session (the Key Vault client, the credentials, the HTTP client
for Exchange) belongs to one event loop, so the cache lives per loop, as `shared.platform` does:
a Functions host runs one loop for the life of the process; a script or test that owns its loop
calls `close_connections()` before the loop ends.

Never logged or returned: key material and tokens. `IdentityCertificate` holds the private key in
memory (that is its purpose) and its repr shows only names and the thumbprint.
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import logging
import threading
import time
import weakref
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from shared.core.record import ConnectionRecord
from shared.core.spec import FEDERATED, MANAGED_IDENTITY, NAME_PATTERN, TOKEN_EXCHANGE_AUDIENCE, IdentityNames
from shared.errors import IdentityNotFound, InvalidSpec, NeedsOperator, Retryable
from shared.settings import Settings

if TYPE_CHECKING:
    import httpx
    from azure.core.credentials import TokenCredential
    from azure.core.credentials_async import AsyncTokenCredential
    from azure.keyvault.secrets.aio import SecretClient
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

__all__ = [
    "Connection",
    "ConnectionCache",
    "IdentityCertificate",
    "SyncConnection",
    "close_connections",
    "close_sync_connections",
    "connection",
    "connection_cache",
    "connection_sync",
    "refresh_connection",
    "run_sync",
]

# The logger keeps its name from before the runtime moved into a sub-package: log queries rely on it.
logger = logging.getLogger("shared.connection")

T = TypeVar("T")

# A credential a refresh replaced may still be serving a call in flight: close it this much later.
RETIRED_CREDENTIAL_LINGER_SECONDS = 600.0
EXCHANGE_HTTP_TIMEOUT_SECONDS = 100.0


class IdentityCertificate:
    """One certificate version of an identity, private key included. Its repr never shows the key."""

    __slots__ = ("_key", "_pfx", "_x509", "name", "not_after", "not_before", "thumbprint", "version")

    def __init__(self, name: str, version: str, pfx: bytes) -> None:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.serialization import pkcs12

        try:
            key, certificate, _chain = pkcs12.load_key_and_certificates(pfx, None)
        except ValueError as exc:
            raise NeedsOperator(f"the backing secret of certificate {name}/{version} is not an unencrypted "
                                "PKCS#12 file", reason="CertificateUnreadable") from exc
        if key is None or certificate is None:
            raise NeedsOperator(f"the backing secret of certificate {name}/{version} holds no private key "
                                "(the certificate policy must be exportable)", reason="CertificateUnreadable")
        self.name = name
        self.version = version
        self.thumbprint = certificate.fingerprint(hashes.SHA1()).hex().upper()  # noqa: S303 - Entra's x5t
        self.not_before = certificate.not_valid_before_utc
        self.not_after = certificate.not_valid_after_utc
        self._pfx = pfx
        self._key: PrivateKeyTypes = key
        self._x509: x509.Certificate = certificate

    @property
    def pfx(self) -> bytes:
        """The unencrypted PKCS#12 (certificate and private key), as Key Vault stores it."""
        return self._pfx

    @property
    def x509(self) -> x509.Certificate:
        return self._x509

    @property
    def private_key(self) -> PrivateKeyTypes:
        return self._key

    def __repr__(self) -> str:
        return (f"IdentityCertificate(name={self.name!r}, version={self.version!r}, "
                f"thumbprint={self.thumbprint!r}, not_after={self.not_after.isoformat()!r})")


class WorkloadFederatedCredential:
    """Signs in as the identity's app with the job's own workload token as the client assertion
    (workload identity federation): no certificate or secret. The assertion is the job's token for
    `api://AzureADTokenExchange`, read from AZURE_FEDERATED_TOKEN_FILE (Kubernetes workload identity,
    as azure-identity's WorkloadIdentityCredential does) or else obtained from the job's managed identity.
    The app must carry a federated identity credential trusting exactly that token's issuer and subject."""

    def __init__(self, record: ConnectionRecord, settings: Settings) -> None:
        from azure.identity.aio import ClientAssertionCredential

        self._settings = settings
        self._assertion = ""
        self._workload: Any = None
        self._inner = ClientAssertionCredential(record.tenant_id, record.app_id, lambda: self._assertion,
                                                authority=settings.authority_host)

    async def _workload_token(self) -> str:
        if self._settings.federated_token_file:
            def read() -> str:
                with open(self._settings.federated_token_file or "", encoding="utf-8") as handle:
                    return handle.read().strip()
            try:
                return await asyncio.to_thread(read)
            except OSError as exc:
                raise NeedsOperator("the workload token file AZURE_FEDERATED_TOKEN_FILE cannot be read "
                                    f"({exc.strerror})", reason="WorkloadTokenUnreadable") from exc
        if self._workload is None:
            from azure.identity.aio import ManagedIdentityCredential

            self._workload = ManagedIdentityCredential(client_id=self._settings.managed_identity_client_id)
        return str((await self._workload.get_token(f"{TOKEN_EXCHANGE_AUDIENCE}/.default")).token)

    async def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        # The managed identity's token is cached by its credential: fetched over the network only
        # when the app token must be renewed and the workload token has expired too.
        self._assertion = await self._workload_token()
        return await self._inner.get_token(*scopes, **kwargs)

    async def close(self) -> None:
        await self._inner.close()
        if self._workload is not None:
            await self._workload.close()

    async def __aenter__(self) -> WorkloadFederatedCredential:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return "WorkloadFederatedCredential()"


def uses_federation(record: ConnectionRecord, settings: Settings) -> bool:
    """Whether a job signs in with its workload's token rather than the certificate (CONNECTION_CREDENTIAL)."""
    if settings.connection_credential == "federated" or record.credential_type == FEDERATED:
        if not record.federated:
            raise NeedsOperator(f"identity {record.identity} trusts no workload (its connection record names no "
                                "federated credential): set CONNECTION_CREDENTIAL=certificate, or add a "
                                "federated credential to the identity", reason="NoFederatedCredential")
        return True
    return False


@dataclass(frozen=True, repr=False, eq=False)
class Connection:
    """What a job connects with. `credential` gets tokens for `exchange_scope` and `graph_scope`;
    `certificate` is None when the job signs in with its workload's token (federated), or is the identity's
    managed identity itself (managedIdentity)."""

    record: ConnectionRecord
    certificate: IdentityCertificate | None
    credential: AsyncTokenCredential
    exchange_scope: str
    graph_scope: str
    exchange_endpoint: str

    @property
    def identity(self) -> str:
        return self.record.identity

    @property
    def app_id(self) -> str:
        return self.record.app_id

    @property
    def tenant_id(self) -> str:
        return self.record.tenant_id

    @property
    def organization(self) -> str:
        return self.record.organization

    @property
    def thumbprint(self) -> str:
        """The certificate's thumbprint; empty when the job signs in with its workload's token."""
        return self.certificate.thumbprint if self.certificate is not None else ""

    def __repr__(self) -> str:
        return (f"Connection(identity={self.identity!r}, app_id={self.app_id!r}, organization={self.organization!r}, "
                f"thumbprint={self.thumbprint!r}, "
                f"certificate_version={self.certificate.version if self.certificate else None!r})")


@dataclass
class _Entry:
    connection: Connection
    checked_at: float


@dataclass
class ConnectionCache:
    """The connections of one event loop, and the clients they share (one Key Vault client, one HTTP client)."""

    settings: Settings
    vault_credential: Any = None
    clock: Callable[[], float] = time.monotonic
    _entries: dict[str, _Entry] = field(default_factory=dict)
    _locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    _retired: list[tuple[float, Any]] = field(default_factory=list)
    _secrets: SecretClient | None = None
    _owns_vault_credential: bool = False
    _http: httpx.AsyncClient | None = None

    # -- public -----------------------------------------------------------------------------------
    async def get(self, name: str) -> Connection:
        entry = self._entries.get(name)
        if entry is not None and self.clock() - entry.checked_at < self.settings.connection_cache_seconds:
            return entry.connection
        return await self._load(name, failed=None)

    async def refresh(self, failed: Connection) -> Connection:
        """The identity's connection after `failed` was refused: re-read, with a new credential.

        Concurrent callers that saw the same failure share one refresh.
        """
        return await self._load(failed.identity, failed=failed)

    def http(self) -> httpx.AsyncClient:
        """The loop's pooled HTTP client for the Exchange REST endpoint (trust from SSL_CERT_FILE etc.)."""
        if self._http is None:
            import httpx

            self._http = httpx.AsyncClient(trust_env=True, timeout=EXCHANGE_HTTP_TIMEOUT_SECONDS,
                                           follow_redirects=False)
        return self._http

    async def aclose(self) -> None:
        credentials = [credential for _, credential in self._retired]
        credentials += [entry.connection.credential for entry in self._entries.values()]
        self._retired.clear()
        self._entries.clear()
        for credential in credentials:
            await credential.close()
        if self._secrets is not None:
            await self._secrets.close()
            self._secrets = None
        if self._owns_vault_credential and self.vault_credential is not None:
            await self.vault_credential.close()
            self.vault_credential = None
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    # -- loading ----------------------------------------------------------------------------------
    async def _load(self, name: str, failed: Connection | None) -> Connection:
        names = _names(name)
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            entry = self._entries.get(name)
            if entry is not None:
                if failed is None and self.clock() - entry.checked_at < self.settings.connection_cache_seconds:
                    return entry.connection  # another caller refreshed while we waited
                if failed is not None and entry.connection.credential is not failed.credential:
                    return entry.connection  # another caller already replaced the credential that failed
            try:
                record = await self._read_record(names)
            except Retryable as exc:
                if entry is None or failed is not None:
                    raise
                # Key Vault is down or throttling: the cached certificate stays valid through the
                # overlap window, so serve it for one more period rather than fail the job.
                logger.warning("connection record of %s could not be re-read (%s); using the cached one "
                               "(thumbprint %s)", name, exc.reason, entry.connection.thumbprint)
                entry.checked_at = self.clock()
                return entry.connection
            cached = entry.connection if entry is not None else None
            if record.credential_type == MANAGED_IDENTITY:
                return self._without_certificate(name, record, cached, failed, self._managed_identity_credential,
                                                 "managed identity")
            if uses_federation(record, self.settings):
                return self._without_certificate(
                    name, record, cached, failed, lambda r: WorkloadFederatedCredential(r, self.settings),
                    "federated (workload token)")
            if cached is not None and cached.certificate is not None \
                    and cached.certificate.version == record.certificate_version:
                certificate = cached.certificate
            else:
                pfx = await self._read_pfx(record)
                certificate = IdentityCertificate(record.certificate_name, record.certificate_version, pfx)
                if certificate.thumbprint != record.thumbprint.upper():
                    raise NeedsOperator(
                        f"the connection record of {name} names thumbprint {record.thumbprint} but certificate "
                        f"{record.certificate_name}/{record.certificate_version} has {certificate.thumbprint}",
                        reason="ConnectionRecordInconsistent")
            if cached is not None and failed is None and certificate is cached.certificate:
                # Same certificate: keep the credential and its token cache.
                connection = cached if cached.record.same_publication(record) else _replace_record(cached, record)
            else:
                connection = self._connect(record, certificate)
                if cached is not None:
                    await self._retire(cached.credential)
                if cached is None or cached.certificate is not certificate:
                    logger.info("connection of %s: certificate %s (version %s)", name, certificate.thumbprint,
                                certificate.version)
            self._entries[name] = _Entry(connection, self.clock())
            return connection

    def _without_certificate(self, name: str, record: ConnectionRecord, cached: Connection | None,
                             failed: Connection | None, credential_for: Callable[[ConnectionRecord], Any],
                             kind: str) -> Connection:
        """A federated or managed-identity connection: one Key Vault read (the record), no certificate."""
        if cached is not None and cached.certificate is None and failed is None \
                and cached.record.app_id == record.app_id and cached.record.credential_type == record.credential_type:
            connection = cached if cached.record.same_publication(record) else _replace_record(cached, record)
        else:
            connection = Connection(record, None, credential_for(record), self.settings.exo_scope,
                                    self.settings.graph_scope, self.settings.exo_endpoint)
            if cached is not None:
                self._retired.append((self.clock(), cached.credential))
            logger.info("connection of %s: %s", name, kind)
        self._entries[name] = _Entry(connection, self.clock())
        return connection

    @staticmethod
    def _managed_identity_credential(record: ConnectionRecord) -> Any:
        """A managedIdentity identity signs in as the managed identity itself, selected by the client id the
        record names (the job's host must have that identity assigned)."""
        from azure.identity.aio import ManagedIdentityCredential

        return ManagedIdentityCredential(client_id=record.managed_identity_client_id or record.app_id)

    def _connect(self, record: ConnectionRecord, certificate: IdentityCertificate) -> Connection:
        from azure.identity.aio import CertificateCredential

        credential = CertificateCredential(
            record.tenant_id, record.app_id, certificate_data=certificate.pfx,
            authority=self.settings.authority_host,
            disable_instance_discovery=self.settings.disable_instance_discovery,
        )
        return Connection(record, certificate, credential, self.settings.exo_scope, self.settings.graph_scope,
                          self.settings.exo_endpoint)

    async def _retire(self, credential: Any) -> None:
        now = self.clock()
        self._retired.append((now, credential))
        due = [c for at, c in self._retired if now - at >= RETIRED_CREDENTIAL_LINGER_SECONDS]
        self._retired = [(at, c) for at, c in self._retired if now - at < RETIRED_CREDENTIAL_LINGER_SECONDS]
        for old in due:
            await old.close()

    def _secret_client(self) -> SecretClient:
        if self._secrets is None:
            from azure.keyvault.secrets.aio import SecretClient

            if self.vault_credential is None:
                from shared.adapters.credentials import platform_credential

                self.vault_credential = platform_credential(self.settings)
                self._owns_vault_credential = True
            self._secrets = SecretClient(self.settings.key_vault_url, self.vault_credential,
                                         verify_challenge_resource=self.settings.verify_challenge_resource)
        return self._secrets

    async def _read_record(self, names: IdentityNames) -> ConnectionRecord:
        from azure.core.exceptions import AzureError, ResourceNotFoundError

        secret_name = names.connection_secret
        try:
            secret = await self._secret_client().get_secret(secret_name)
        except ResourceNotFoundError as exc:
            raise IdentityNotFound(f"no automation identity {names.name!r}: Key Vault has no connection secret "
                                   f"{secret_name} (bootstrap it first: POST /api/identities)") from exc
        except AzureError as exc:
            raise _vault_read_error(exc, secret_name) from exc
        try:
            return ConnectionRecord.loads(secret.value or "")
        except ValueError as exc:
            raise NeedsOperator(f"secret {secret_name} is not a v1 connection record ({exc})",
                                reason="ConnectionRecordUnreadable") from exc

    async def _read_pfx(self, record: ConnectionRecord) -> bytes:
        from azure.core.exceptions import AzureError, ResourceNotFoundError

        what = f"{record.certificate_name}/{record.certificate_version}"
        try:
            secret = await self._secret_client().get_secret(record.certificate_name, record.certificate_version)
        except ResourceNotFoundError as exc:
            # The record was published for a version that is gone: only a manual deletion does that.
            raise NeedsOperator(f"certificate {what} named by the connection record of {record.identity} is not in "
                                "Key Vault; reconcile the identity to publish a valid record",
                                reason="CertificateMissing") from exc
        except AzureError as exc:
            raise _vault_read_error(exc, f"the private key of {what}") from exc
        try:
            return base64.b64decode(secret.value or "", validate=True)
        except ValueError as exc:
            raise NeedsOperator(f"the backing secret of {what} is not base64", reason="CertificateUnreadable") from exc


def _replace_record(connection: Connection, record: ConnectionRecord) -> Connection:
    return Connection(record, connection.certificate, connection.credential, connection.exchange_scope,
                      connection.graph_scope, connection.exchange_endpoint)


def _names(name: str) -> IdentityNames:
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise InvalidSpec(f"{name!r} is not an identity name (lower-case letters, digits and single hyphens, "
                          "3 to 40 characters)", reason="InvalidIdentityName")
    return IdentityNames(name)


def _vault_read_error(exc: Any, what: str) -> Exception:
    from azure.core.exceptions import ClientAuthenticationError, HttpResponseError

    from shared.adapters.vault import vault_error

    if isinstance(exc, HttpResponseError) and not isinstance(exc, ClientAuthenticationError) \
            and (exc.status_code or 0) == 403:
        return NeedsOperator(f"Key Vault refused to let this app read {what}: the identity the job runs as needs "
                             "the 'Key Vault Secrets User' role on the vault (or on the identity's connection "
                             "secret and certificate)", reason="VaultPermissionMissing")
    return vault_error(exc, f"reading {what}")


# -- per-loop registry ----------------------------------------------------------------------------
_caches: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[Settings, ConnectionCache]] = \
    weakref.WeakKeyDictionary()


def connection_cache(settings: Settings | None = None) -> ConnectionCache:
    """The running loop's cache for `settings` (from the environment when not given)."""
    settings = settings or Settings.current()
    per_loop = _caches.setdefault(asyncio.get_running_loop(), {})
    cache = per_loop.get(settings)
    if cache is None:
        cache = per_loop[settings] = ConnectionCache(settings)
    return cache


async def connection(name: str, *, settings: Settings | None = None) -> Connection:
    """The identity's current connection (record, certificate with private key, credential).

    Raises IdentityNotFound when it has no connection secret, NeedsOperator when Key Vault refuses
    or holds something unreadable, Retryable when Key Vault is unavailable and nothing is cached.
    """
    return await connection_cache(settings).get(name)


async def refresh_connection(failed: Connection, *, settings: Settings | None = None) -> Connection:
    """Call once after Entra ID or Exchange refused `failed`: re-reads Key Vault, new credential."""
    return await connection_cache(settings).refresh(failed)


async def close_connections() -> None:
    """Close the running loop's connections (a script or test that owns its loop calls this last)."""
    per_loop = _caches.pop(asyncio.get_running_loop(), {})
    for cache in per_loop.values():
        await cache.aclose()


# -- plain scripts --------------------------------------------------------------------------------
class _BackgroundLoop:
    """One daemon thread running an event loop, so the async cache serves synchronous callers."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        with self._lock:
            if self._loop is None:
                self._loop = asyncio.new_event_loop()
                self._thread = threading.Thread(target=_serve, args=(self._loop,), name="exo-connections",
                                                daemon=True)
                self._thread.start()
                atexit.register(close_sync_connections)
            loop = self._loop
        return asyncio.run_coroutine_threadsafe(coroutine, loop).result()

    def close(self) -> None:
        with self._lock:
            loop, thread, self._loop, self._thread = self._loop, self._thread, None, None
        if loop is None or thread is None:
            return
        asyncio.run_coroutine_threadsafe(close_connections(), loop).result()
        loop.call_soon_threadsafe(loop.stop)
        thread.join()


def _serve(loop: asyncio.AbstractEventLoop) -> None:
    asyncio.set_event_loop(loop)
    try:
        loop.run_forever()
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


_background = _BackgroundLoop()


def run_sync(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that uses `connection()` from synchronous code, sharing one cache per process."""
    return _background.run(coroutine)


@dataclass(frozen=True, repr=False, eq=False)
class SyncConnection:
    """`Connection` for synchronous code: the same record and certificate, a synchronous credential."""

    record: ConnectionRecord
    certificate: IdentityCertificate
    credential: TokenCredential
    exchange_scope: str
    graph_scope: str

    @property
    def thumbprint(self) -> str:
        return self.certificate.thumbprint

    def __repr__(self) -> str:
        return (f"SyncConnection(identity={self.record.identity!r}, app_id={self.record.app_id!r}, "
                f"thumbprint={self.thumbprint!r})")


_sync_credentials: dict[tuple[Settings, str], tuple[IdentityCertificate, Any]] = {}
_sync_lock = threading.Lock()


def connection_sync(name: str, *, settings: Settings | None = None) -> SyncConnection:
    """`connection()` for a plain script; the cache and its refresh rules are the same."""
    from azure.identity import CertificateCredential

    settings = settings or Settings.current()
    current = run_sync(connection(name, settings=settings))
    if current.certificate is None:
        raise NeedsOperator(f"connection_sync() signs in with certificates only; identity {name} is used without "
                            "one here (its workload's token or its managed identity): call connection() from async "
                            "code", reason="FederatedNotSync")
    with _sync_lock:
        known = _sync_credentials.get((settings, name))
        if known is not None and known[0] is current.certificate:
            credential = known[1]
        else:
            credential = CertificateCredential(
                current.tenant_id, current.app_id, certificate_data=current.certificate.pfx,
                authority=settings.authority_host, disable_instance_discovery=settings.disable_instance_discovery,
            )
            _sync_credentials[(settings, name)] = (current.certificate, credential)
            if known is not None:
                known[1].close()
    return SyncConnection(current.record, current.certificate, credential, current.exchange_scope,
                          current.graph_scope)


def close_sync_connections() -> None:
    """Close what `connection_sync`/`run_sync` opened (optional: a script may simply exit)."""
    with _sync_lock:
        for _, credential in _sync_credentials.values():
            credential.close()
        _sync_credentials.clear()
    _background.close()
