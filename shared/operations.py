"""Long operations: a write runs inline within a budget, else it answers 202 and goes on from the queue.

    HTTP POST/DELETE ──► submit(): run inline (holding the identity's lease) for up to
                         HTTP_INLINE_BUDGET_SECONDS ──► done: the run's answer, as before
                                     └─► not done: the run is cancelled (every step is idempotent, the
                                         lease is released), the operation document is stored and a
                                         message {name, operationId} queued ──► 202 + Location
    queue message    ──► resume(): the same run, its progress stored step by step
    GET /api/operations/{id} ──► the stored document (`shared.core.operation`)

Documents are small JSON blobs in the Functions storage account (container `identity-operations`),
so progress survives the process; the queue is the reconcile queue (`RECONCILE_QUEUE`), in the
host's base64 message encoding (host.json).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from shared import progress
from shared.adapters.storage import storage_client
from shared.core import operation as ops
from shared.core.spec import validate_name
from shared.errors import ExoAutomationError, InvalidSpec, Retryable
from shared.lease import IdentityBusy, StorageUnavailable, blob_service, create_container
from shared.platform import Platform
from shared.reconciler import RunResult, utc_now
from shared.settings import Settings

log = logging.getLogger("exo_automation.operations")

OPERATIONS_CONTAINER = "identity-operations"
# A queued run waits this long for another run of its identity before re-queueing itself.
QUEUE_LEASE_WAIT_SECONDS = 5.0
SEND_CONCURRENCY = 16  # queue messages sent at once by enqueue_many


def operation_location(operation_id: str) -> str:
    return f"/api/operations/{operation_id}"


def identity_location(name: str) -> str:
    return f"/api/identities/{name}"


# -- storage -----------------------------------------------------------------------------------------
class OperationStore:
    """Operation documents (blobs) and the reconcile queue, in the Functions storage account."""

    def __init__(self, settings: Settings, environ: Mapping[str, str] | None = None) -> None:
        self.settings = settings
        self.env = os.environ if environ is None else environ

    async def save(self, document: dict[str, Any]) -> None:
        from azure.core.exceptions import ResourceNotFoundError

        data = json.dumps(document, indent=2).encode("utf-8")
        async with blob_service(self.settings, self.env, "the operation could not be stored") as service:
            blob = service.get_blob_client(OPERATIONS_CONTAINER, f"{document['id']}.json")
            try:
                await blob.upload_blob(data, overwrite=True)
            except ResourceNotFoundError:
                await create_container(service, OPERATIONS_CONTAINER)
                await blob.upload_blob(data, overwrite=True)

    async def load(self, operation_id: str) -> dict[str, Any] | None:
        from azure.core.exceptions import ResourceNotFoundError

        async with blob_service(self.settings, self.env, "the operation could not be read") as service:
            blob = service.get_blob_client(OPERATIONS_CONTAINER, f"{operation_id}.json")
            try:
                downloaded = await blob.download_blob()
                document: dict[str, Any] = json.loads(await downloaded.readall())
                return document
            except ResourceNotFoundError:
                return None

    async def enqueue(self, message: dict[str, Any], *, delay_seconds: int = 0) -> None:
        await self.enqueue_many([(message, delay_seconds)])

    async def enqueue_many(self, messages: Sequence[tuple[dict[str, Any], int]], *, quick: bool = True) -> None:
        """Send each message to the reconcile queue, visible after its delay (whole seconds), on one
        client, a few at a time. `quick`: the short retries of a request an HTTP caller waits on."""
        from azure.core.exceptions import AzureError, ResourceExistsError, ResourceNotFoundError

        if not messages:
            return
        service, credential = storage_client("queue", self.settings, self.env, quick=quick)
        try:
            async with service:
                queue = service.get_queue_client(self.settings.reconcile_queue)
                gate = asyncio.Semaphore(SEND_CONCURRENCY)

                async def send(message: dict[str, Any], delay_seconds: int) -> None:
                    # The Functions host reads queue messages base64-encoded (host.json messageEncoding).
                    content = base64.b64encode(continuation_message(message).encode("utf-8")).decode("ascii")
                    async with gate:
                        await queue.send_message(content, visibility_timeout=delay_seconds or None)

                try:
                    await send(*messages[0])
                except ResourceNotFoundError:
                    with contextlib.suppress(ResourceExistsError):
                        await queue.create_queue()
                    await send(*messages[0])
                await asyncio.gather(*(send(message, delay) for message, delay in messages[1:]))
        except AzureError as exc:
            raise StorageUnavailable(f"the reconcile queue could not be written ({type(exc).__name__})",
                                     retry_after=10) from exc
        finally:
            if credential is not None:
                await credential.close()


# -- running -----------------------------------------------------------------------------------------
class _Progress:
    """Keeps an operation document current as the run's steps start and end."""

    def __init__(self, document: dict[str, Any], store: OperationStore | None) -> None:
        self.document = document
        self.store = store  # None: in memory only (an inline run that may never need it)
        self.printer: Callable[[str], None] | None = None

    async def __call__(self, action: Any, outcome: Any) -> None:
        now = utc_now()
        if outcome is None:
            self.document = ops.step_started(self.document, action.kind, action.describe(), now)
            if self.printer is not None:
                waiting = ops.waiting_for(action.kind)
                self.printer(f"  … {action.describe()}" + (f" (waiting for {waiting})" if waiting else ""))
        else:
            self.document = ops.step_finished(self.document, action.kind, action.describe(), outcome.result,
                                              outcome.detail, now)
            if self.printer is not None:
                self.printer(f"  {'✓' if outcome.result == 'Succeeded' else '✗'} {action.describe()}: "
                             f"{outcome.result} {outcome.detail}".rstrip())
        if self.store is not None:
            await self.store.save(self.document)


async def _run(platform: Platform, document: dict[str, Any], lease_wait: float,
               on_wait: Callable[[str], None] | None = None) -> RunResult:
    from shared import service

    # Audit events carry the caller's correlation id when it sent one, else the operation's id.
    who = {"caller": document.get("caller", "system"),
           "correlation_id": document.get("correlationId") or document["id"],
           "lease_wait": lease_wait, "on_wait": on_wait}
    kind = document["operation"]
    if kind == "bootstrap":
        return await service.bootstrap(platform, document["spec"], **who)
    if kind == "rotate":
        return await service.reconcile(platform, document["name"], force_rotate=ops.resume_force_rotate(document),
                                       operation="rotate", **who)
    return await service.decommission(platform, document["name"], **who)


def _finish(document: dict[str, Any], result: RunResult) -> dict[str, Any]:
    from shared.service import run_document

    error = (result.error.reason, result.error.message) if result.error is not None else None
    location = identity_location(result.name) if document["operation"] != "decommission" else None
    return ops.finished(document, run_document(result), error, utc_now(), location)


def continuation_message(message: Mapping[str, Any]) -> str:
    """A reconcile queue message's text (an output binding's value; the host base64-encodes it)."""
    return json.dumps(message, sort_keys=True)


@dataclass
class Submitted:
    """What a write request ends with: the run's result (inline), or the operation that goes on."""

    result: RunResult | None
    document: dict[str, Any]

    @property
    def accepted(self) -> bool:
        return self.result is None


def new_document(platform: Platform, kind: str, name: str, *, caller: str, spec: Any = None,
                 force_rotate: bool = False, correlation_id: str | None = None) -> dict[str, Any]:
    operation_id = correlation_id if correlation_id else uuid.uuid4().hex
    return ops.new_operation(operation_id, kind, name, caller=caller, now=utc_now(), spec=spec,
                             force_rotate=force_rotate)


async def submit(platform: Platform, kind: str, name: str, *, caller: str, correlation_id: str | None = None,
                 spec: Any = None, force_rotate: bool = False, budget: float | None = None,
                 hand_off: Callable[[str], None] | None = None) -> Submitted:
    """Run a write inline within `budget` seconds (HTTP_INLINE_BUDGET_SECONDS), else hand it to the queue.

    `hand_off`: the HTTP trigger's queue output binding (`func.Out.set`), which the host sends when the
    function returns, telling its own queue listener to poll at once; without it the message is sent here.
    """
    validate_name(name)
    budget = platform.settings.http_inline_budget_seconds if budget is None else budget
    # The operation id is fresh per request: a client's correlation id may repeat.
    document = new_document(platform, kind, name, caller=caller, spec=spec, force_rotate=force_rotate)
    if correlation_id:
        document["correlationId"] = correlation_id
    tracker = _Progress(document, None)
    store = OperationStore(platform.settings)

    async def inline() -> RunResult:
        with progress.listening(tracker):
            return await _run(platform, tracker.document, lease_wait=budget)

    task = asyncio.create_task(inline())
    done, _ = await asyncio.wait({task}, timeout=budget)
    why = "the run outlived the request's inline budget"
    if done:
        try:
            return Submitted(task.result(), tracker.document)
        except IdentityBusy:
            why = "another run of this identity was in progress"
    else:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, ExoAutomationError):
            await task
    document = ops.handed_to_queue(tracker.document, utc_now(), why)
    await store.save(document)
    continuation = {"name": name, "operationId": document["id"]}
    if hand_off is not None:
        hand_off(continuation_message(continuation))
    else:
        await store.enqueue(continuation)
    log.info("identity=%s operation=%s %s continues from the queue: %s", name, document["id"], kind, why)
    return Submitted(None, document)


async def run_and_track(platform: Platform, document: dict[str, Any], *, lease_wait: float,
                        printer: Callable[[str], None] | None = None, store: OperationStore | None = None
                        ) -> tuple[RunResult, dict[str, Any]]:
    """Run an operation in this process (the CLI), reporting each step to `printer`."""
    tracker = _Progress(document, store)
    tracker.printer = printer
    with progress.listening(tracker):
        result = await _run(platform, document, lease_wait=lease_wait, on_wait=printer)
    document = _finish(tracker.document, result)
    if store is not None:
        await store.save(document)
    return result, document


async def resume(platform: Platform, operation_id: str, name: str) -> None:
    """Carry a queued operation on (the reconcile queue trigger). Raises Retryable to be redelivered."""
    store = OperationStore(platform.settings)
    document = await store.load(operation_id)
    if document is None or document.get("name") != name:
        log.error("identity=%s operation %s not found: message dropped", name, operation_id)
        return
    if document["status"] in ops.TERMINAL:
        return  # a redelivery of a message already carried out
    tracker = _Progress(document, store)
    try:
        with progress.listening(tracker):
            result = await _run(platform, document, lease_wait=QUEUE_LEASE_WAIT_SECONDS)
    except IdentityBusy as busy:
        # Not a failure: queue it again for later, with a fresh delivery count.
        await store.enqueue({"name": name, "operationId": operation_id}, delay_seconds=int(busy.retry_after or 15))
        return
    except InvalidSpec as exc:
        await store.save(ops.finished(tracker.document, None, (exc.reason, exc.message), utc_now(), None))
        return
    except Retryable as exc:
        await store.save(ops.retrying(tracker.document, exc.reason, exc.message, utc_now()))
        raise
    except ExoAutomationError as exc:
        await store.save(ops.finished(tracker.document, None, (exc.reason, exc.message), utc_now(), None))
        return
    if isinstance(result.error, Retryable):
        await store.save(ops.retrying(tracker.document, result.error.reason, result.error.message, utc_now()))
        raise result.error
    await store.save(_finish(tracker.document, result))


async def requeue_busy(platform: Platform, message: dict[str, Any], busy: IdentityBusy) -> None:
    """A sweep's reconcile message for an identity another run holds: deliver it again later."""
    await OperationStore(platform.settings).enqueue(message, delay_seconds=int(busy.retry_after or 15))


async def record_poison(platform: Platform, operation_id: str) -> None:
    """The queued operation failed on every delivery: show it as failed."""
    store = OperationStore(platform.settings)
    document = await store.load(operation_id)
    if document is None or document["status"] in ops.TERMINAL:
        return
    last = document.get("lastError") or {}
    await store.save(ops.finished(document, None, ("PoisonMessage", "the operation failed on every delivery"
                                                   + (f"; last: {last.get('reason')}: {last.get('message')}"
                                                      if last else "")), utc_now(), None))


__all__ = ["OPERATIONS_CONTAINER", "OperationStore", "Submitted", "operation_location", "record_poison",
           "requeue_busy", "resume", "run_and_track", "submit"]
