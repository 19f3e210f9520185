"""One writer per identity: a blob lease in the Functions storage account.

Every mutating run (HTTP bootstrap / rotate / DELETE, a queued reconcile, the CLI) holds the lease
on blob `identity-leases/<name>` while it runs (`shared.service`); read-only paths (status, list,
dry runs, the sweep's listing) take none. The lease lasts `IDENTITY_LEASE_SECONDS` (15-60 s, Blob
storage's range), is renewed in the background at a third of that, released at the end, and
expires by itself if the process dies, so a killed run blocks the identity for one lease period
at most. A run that finds the lease held polls for it within its wait budget, then gives up with
`IdentityBusy` (retryable): HTTP answers 202 and queues the work, the queue re-enqueues the
message for later, the CLI says what it waits for.

A run can lose its lease: someone breaks it, or the process stalls past its end and another run
takes it. The reconciler calls `ensure_held()` before each action and before it records the
outcome, so a run whose renewal was refused, or that has not renewed in time, stops before its
next write with `LeaseLost` (retryable: the queue redelivers, HTTP answers 503, the CLI says so).

The blob's metadata has one more use: for a `managedIdentity` identity it is the witness of the grants
the product made (`shared.adapters.witness`), written under this lease. So no lifecycle rule may delete
these blobs (infra/modules/storage.bicep covers only the operation documents); only a completed
decommission deletes its identity's blob (`identity_gone`), when there are no grants left to witness.

The lease blobs also serve as an index of identity names (`LeaseStore.index`, one listing call per
5,000 names): the registry's readers use it to find identities without a certificate without listing
every secret of the vault (`shared.sweep.load_registry`). A name there is only a hint: what an identity
is, and whether it exists, still comes from Key Vault's tags.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging
import os
from collections.abc import AsyncIterator, Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from shared.adapters.storage import storage_client
from shared.core.record import format_time, parse_time
from shared.core.spec import NAME_PATTERN
from shared.errors import Retryable
from shared.retry import Backoff, NotYet, retry
from shared.settings import Settings

log = logging.getLogger("exo_automation.lease")

LEASE_CONTAINER = "identity-leases"
# When the registry's readers last listed every secret of the vault (metadata `listedAt`, the platform's
# clock): a blob in the lease container, whose listing shows it for free; "/" keeps it out of identity names.
SECRETS_LISTED_MARKER = "registry/secrets-listed"
_LISTED_AT = "listedAt"
# Polls a held lease: from a quarter second, doubling, at most 2 s apart, within the run's wait budget.
LEASE_POLL = Backoff(first=0.25, max_delay=2.0)


class IdentityBusy(Retryable):
    reason = "IdentityBusy"


class StorageUnavailable(Retryable):
    reason = "StorageUnavailable"


class LeaseLost(Retryable):
    reason = "LeaseLost"


@dataclass(frozen=True)
class LeaseIndex:
    """The lease container as an index: the names of the identities that ever had a run, and when every
    secret was last listed (None: never, or not recorded)."""

    names: frozenset[str]
    secrets_listed_at: dt.datetime | None


# A write started this close to the lease's end could land after it: the run stops instead.
EXPIRY_MARGIN_SECONDS = 2.0


@dataclass
class HeldLease:
    """The lease the current run holds: when it was last acquired or renewed (event-loop time at
    which that request was sent, so never later than the service counted it), and why it is lost."""

    name: str
    duration: float
    renewed_at: float
    lost: str | None = None
    # The lease blob's client and the lease (azure.storage.blob.aio), for writes the lease must cover: the
    # witness of a managedIdentity identity's grants is this blob's metadata (`shared.adapters.witness`).
    blob: Any = None
    lease: Any = None
    gone: bool = False  # the run removed the identity: its lease blob goes with the lease (`identity_gone`)

    def check(self, now: float) -> None:
        if self.lost is None and now >= self.renewed_at + self.duration - EXPIRY_MARGIN_SECONDS:
            self.lost = f"not renewed for {now - self.renewed_at:.0f} s (the process stalled?)"
        if self.lost is not None:
            raise LeaseLost(f"this run lost the lease on identity {self.name!r} ({self.lost}); it stopped before "
                            "its next write and runs again", retry_after=min(self.duration, 15))


_held: ContextVar[HeldLease | None] = ContextVar("exo_automation_identity_lease", default=None)


def held_lease(name: str) -> HeldLease | None:
    """The lease the current run holds on identity `name`, if it holds one."""
    held = _held.get()
    return held if held is not None and held.name == name else None


def identity_gone() -> None:
    """The current run removed its identity for good (a completed decommission): the lease blob is deleted
    with the lease instead of the lease being released, so the index no longer names it. A later run of
    the name creates the blob again. A no-op outside a lease."""
    held = _held.get()
    if held is not None:
        held.gone = True


def ensure_held() -> None:
    """Raise `LeaseLost` if the current run's identity lease is lost or may have run out (a no-op
    outside a lease: dry runs and reads take none). Called before every write of a run."""
    held = _held.get()
    if held is not None:
        held.check(asyncio.get_running_loop().time())


@contextlib.asynccontextmanager
async def blob_service(settings: Settings, env: Mapping[str, str], failure: str) -> AsyncIterator[Any]:
    """The Functions storage account's blob service for one piece of work, with the quick retries of a
    request someone waits on; an Azure error in it becomes `StorageUnavailable` ("<failure> (<error>)")."""
    from azure.core.exceptions import AzureError

    service, credential = storage_client("blob", settings, env, quick=True)
    try:
        async with service:
            yield service
    except AzureError as exc:
        raise StorageUnavailable(f"{failure} ({type(exc).__name__})", retry_after=10) from exc
    finally:
        if credential is not None:
            await credential.close()


async def create_container(service: Any, container: str) -> None:
    """Create a container the product writes to, unless it exists (a concurrent run may create it first)."""
    from azure.core.exceptions import ResourceExistsError

    with contextlib.suppress(ResourceExistsError):
        await service.create_container(container)


class LeaseStore:
    """Blob leases on identities, through the host's storage connection (AzureWebJobsStorage)."""

    def __init__(self, settings: Settings, environ: Mapping[str, str] | None = None) -> None:
        self.settings = settings
        self.env = os.environ if environ is None else environ
        self.duration = settings.identity_lease_seconds

    @contextlib.asynccontextmanager
    async def hold(self, name: str, *, wait_seconds: float,
                   on_wait: Callable[[str], None] | None = None) -> AsyncIterator[None]:
        """Hold the lease on `name` for the body; wait up to `wait_seconds` for another holder."""
        from azure.core.exceptions import AzureError

        service, credential = storage_client("blob", self.settings, self.env, quick=True)
        try:
            async with service:
                lease, sent_at = await self._acquire(service, name, wait_seconds, on_wait)
                held = HeldLease(name, float(self.duration), sent_at,
                                 blob=service.get_blob_client(LEASE_CONTAINER, name), lease=lease)
                renewer = asyncio.create_task(self._renew(lease, held))
                token = _held.set(held)
                try:
                    yield
                finally:
                    _held.reset(token)
                    renewer.cancel()
                    await asyncio.gather(renewer, return_exceptions=True)
                    try:
                        # Shielded: a cancelled run still hands the identity on at once.
                        await asyncio.shield(self._end(service, lease, held))
                    except (AzureError, asyncio.CancelledError) as exc:
                        log.warning("identity=%s lease not released (%s); it expires in %d s", name,
                                    type(exc).__name__, self.duration)
        finally:
            if credential is not None:
                await credential.close()

    @staticmethod
    async def _end(service: Any, lease: Any, held: HeldLease) -> None:
        """Release the lease; after a run that removed its identity, delete the blob with it (a waiting run
        then creates it again, as for a new name)."""
        from azure.core.exceptions import AzureError

        if held.gone and held.lost is None:
            try:
                await service.get_blob_client(LEASE_CONTAINER, held.name).delete_blob(lease=lease)
                return
            except AzureError as exc:
                log.warning("identity=%s lease blob not deleted (%s); the index names it until a run ends with "
                            "its removal", held.name, type(exc).__name__)
        await lease.release()

    async def _acquire(self, service: Any, name: str, wait_seconds: float,
                       on_wait: Callable[[str], None] | None) -> tuple[Any, float]:
        """The lease, and the event-loop time its successful acquire request was sent."""
        from azure.core.exceptions import AzureError, HttpResponseError, ResourceNotFoundError

        blob = service.get_blob_client(LEASE_CONTAINER, name)
        loop = asyncio.get_running_loop()

        async def acquire() -> tuple[Any, float]:
            while True:
                sent_at = loop.time()
                try:
                    return await blob.acquire_lease(lease_duration=self.duration), sent_at
                except ResourceNotFoundError:
                    await self._create(service, name)  # the identity's first run: lease it at once
                except HttpResponseError as exc:
                    if exc.status_code == 409:
                        raise NotYet(f"the lease on {name} is held") from exc
                    raise StorageUnavailable(f"the Functions storage account refused the identity lease "
                                             f"({exc.status_code} {getattr(exc, 'error_code', None)})") from exc
                except AzureError as exc:
                    raise StorageUnavailable(f"the Functions storage account is unreachable ({type(exc).__name__})",
                                             retry_after=10) from exc

        def waiting(exc: Exception, attempt: int, wait: float) -> None:
            if on_wait is not None and attempt == 1:
                on_wait(f"waiting for another run of {name} to finish (its lease is held)")

        try:
            return await retry(acquire, dataclasses.replace(LEASE_POLL, budget=wait_seconds), on_retry=waiting)
        except NotYet:
            raise IdentityBusy(f"another run is changing identity {name!r}; it continues once that run ends",
                               retry_after=min(self.duration, 15)) from None

    async def _create(self, service: Any, name: str) -> None:
        from azure.core.exceptions import AzureError, ResourceExistsError, ResourceNotFoundError

        blob = service.get_blob_client(LEASE_CONTAINER, name)
        try:
            try:
                await blob.upload_blob(b"", overwrite=False)
            except ResourceNotFoundError:
                await create_container(service, LEASE_CONTAINER)
                await blob.upload_blob(b"", overwrite=False)
        except ResourceExistsError:
            pass  # another run created it first: leasing it is what matters
        except AzureError as exc:
            raise StorageUnavailable(f"the identity lease blob could not be created ({type(exc).__name__})",
                                     retry_after=10) from exc

    async def index(self) -> LeaseIndex:
        """The names of the lease blobs, and the marker of the last full secret listing: one listing call
        per 5,000 blobs. A missing container is an empty index. Raises `StorageUnavailable`, or
        `SettingsError` where the Functions storage is not configured."""
        from azure.core.exceptions import ResourceNotFoundError

        names: set[str] = set()
        listed_at = None
        async with blob_service(self.settings, self.env, "the identity lease blobs could not be listed") as service:
            try:
                async for blob in service.get_container_client(LEASE_CONTAINER).list_blobs(include=["metadata"]):
                    if blob.name == SECRETS_LISTED_MARKER:
                        listed_at = _listed_at(blob.metadata)
                    elif NAME_PATTERN.fullmatch(blob.name):
                        names.add(blob.name)
            except ResourceNotFoundError:
                pass  # no run has held a lease here yet: an empty index
        return LeaseIndex(frozenset(names), listed_at)

    async def mark_secrets_listed(self, at: dt.datetime) -> None:
        """Record that every secret was listed at `at` (the marker blob's metadata). Raises
        `StorageUnavailable`."""
        from azure.core.exceptions import ResourceNotFoundError

        async with blob_service(self.settings, self.env, "the registry marker could not be written") as service:
            blob = service.get_blob_client(LEASE_CONTAINER, SECRETS_LISTED_MARKER)
            metadata = {_LISTED_AT: format_time(at)}
            try:
                await blob.upload_blob(b"", overwrite=True, metadata=metadata)
            except ResourceNotFoundError:
                await create_container(service, LEASE_CONTAINER)
                await blob.upload_blob(b"", overwrite=True, metadata=metadata)

    async def _renew(self, lease: Any, held: HeldLease) -> None:
        from azure.core.exceptions import AzureError, HttpResponseError

        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.duration / 3)
            sent_at = loop.time()
            try:
                await lease.renew()
                held.renewed_at = sent_at
            except HttpResponseError as exc:
                if exc.status_code == 409:
                    # Broken, or expired and taken by another run: it cannot come back.
                    held.lost = f"renewal refused: {getattr(exc, 'error_code', None) or exc.status_code}"
                    log.warning("identity=%s lease lost (%s); the run stops before its next write", held.name,
                                held.lost)
                    return
                log.warning("identity=%s lease renewal failed (%s)", held.name, exc.status_code)
            except AzureError as exc:
                # Two more tries before the lease lapses; ensure_held() stops the run if none succeeds.
                log.warning("identity=%s lease renewal failed (%s)", held.name, type(exc).__name__)


def _listed_at(metadata: Mapping[str, str] | None) -> dt.datetime | None:
    try:
        return parse_time((metadata or {})[_LISTED_AT])
    except (KeyError, ValueError):
        return None
