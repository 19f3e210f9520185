"""Timer and queue triggers: the sweep fans out, one queue message reconciles one identity.

Retries and poison messages come from the Functions host (host.json `queues.maxDequeueCount`),
not from loops here: a retryable failure raises so the host redelivers; a failure that needs an
operator is recorded in the identity's tags and the message completes, since redelivery cannot
fix it. A message that still fails after the last delivery lands in `<queue>-poison`, whose
trigger records it in the identity's status. A message for an identity another run holds (its
lease, shared/lease.py) is queued again for later rather than failed, and so is one that Microsoft
Graph still throttles after the run's waiting budget (after its Retry-After, doubling). A message with
an `operationId` carries on a write that answered 202 (shared/operations.py).

The sweep sends its messages itself, each with a visibility delay, so that 1,000 identities due at
once become visible at a rate whose key-credential reads stay below Graph's per-tenant limit
(shared/core/fanout.py).
"""

from __future__ import annotations

import logging
import random
from typing import TYPE_CHECKING, Any

import azure.functions as func

if TYPE_CHECKING:
    from shared.errors import Retryable

log = logging.getLogger("exo_automation.triggers")

# A queued reconcile's waits on Graph's Retry-After, all requests together; past it the message goes
# back to the queue for later (the function timeout is 10 minutes, host.json).
QUEUE_GRAPH_WAIT_SECONDS = 120.0

bp = func.Blueprint()  # type: ignore[no-untyped-call]


@bp.timer_trigger(schedule="%SWEEP_SCHEDULE%", arg_name="timer", run_on_startup=False, use_monitor=True)
async def sweep_identities(timer: func.TimerRequest) -> None:
    from shared.operations import OperationStore
    from shared.platform import current_platform
    from shared.sweep import sweep

    if timer.past_due:
        log.info("the sweep is running late (past due); it catches up in one run")
    platform = current_platform()
    result = await sweep(platform)
    # Sent by the SDK, not an output binding: each message gets its own visibility delay, so the
    # reconciles' key-credential reads stay below Graph's per-tenant limit (shared/core/fanout.py).
    scheduled, deferred = result.schedule()
    await OperationStore(platform.settings).enqueue_many(scheduled, quick=False)
    if scheduled:
        log.info("sweep=%s queued %d reconciles over %d s; %d left for the next sweep", result.sweep_id,
                 len(scheduled), scheduled[-1][1], len(deferred))


@bp.queue_trigger(arg_name="message", queue_name="%RECONCILE_QUEUE%", connection="AzureWebJobsStorage")
async def reconcile_identity(message: func.QueueMessage) -> None:
    from shared import operations
    from shared.adapters.graph import graph_wait_budget
    from shared.errors import IdentityNotFound, InvalidSpec, Retryable
    from shared.lease import IdentityBusy
    from shared.platform import current_platform
    from shared.service import reconcile
    from shared.sweep import parse_message

    try:
        body = parse_message(message.get_body().decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        log.error("discarding a malformed reconcile message %s: %s", message.id, exc)
        return
    name = body["name"]
    if isinstance(body.get("operationId"), str):  # a write that answered 202 goes on here
        try:
            with graph_wait_budget(QUEUE_GRAPH_WAIT_SECONDS):
                await operations.resume(current_platform(), body["operationId"], name)
        except Retryable as exc:
            # Throttling needs time, not deliveries: requeued after Retry-After while that helps; then (or
            # for any other transient failure) the host redelivers it, and poison marks the operation Failed.
            if exc.reason != "GraphThrottled" or not await _requeue_throttled(body, exc):
                raise
        return
    sweep_id = body.get("sweepId") if isinstance(body.get("sweepId"), str) else None
    try:
        with graph_wait_budget(QUEUE_GRAPH_WAIT_SECONDS):
            result = await reconcile(current_platform(), name, operation="reconcile", caller="sweep",
                                     correlation_id=sweep_id, lease_wait=operations.QUEUE_LEASE_WAIT_SECONDS)
    except (IdentityNotFound, InvalidSpec) as exc:
        log.warning("identity=%s skipped: %s", name, exc.message)  # decommissioned since the sweep
        return
    except IdentityBusy as busy:
        # Another run holds the identity: deliver this later, without counting towards the poison queue.
        await operations.requeue_busy(current_platform(), body, busy)
        return
    except Retryable as exc:
        if exc.reason != "GraphThrottled":
            raise
        if not await _requeue_throttled(body, exc):
            _left_to_the_sweep(body)
        return
    if isinstance(result.error, Retryable) and result.error.reason == "GraphThrottled":
        if not await _requeue_throttled(body, result.error):
            _left_to_the_sweep(body)
        return
    if isinstance(result.error, Retryable):
        # Raising hands the message back to the host, which redelivers it with its own back-off.
        raise result.error
    if result.error is not None:
        log.error("identity=%s needs an operator: %s: %s", name, result.error.reason, result.error.message)


async def _requeue_throttled(body: dict[str, Any], error: Retryable) -> bool:
    """Graph still throttles after the run's waiting budget: deliver the message again after its
    Retry-After (doubling, jittered), not after the host's fixed visibility timeout, and without
    counting towards the poison queue: throttling needs time, not an operator. False once it has been
    requeued as often as that is worth (the caller decides what then)."""
    from shared.core.fanout import throttled_requeue_delay
    from shared.operations import OperationStore
    from shared.platform import current_platform

    attempt: int = body["throttled"] if isinstance(body.get("throttled"), int) else 0
    delay = throttled_requeue_delay(error.retry_after, attempt, random.random())
    if delay is None:
        return False
    log.info("identity=%s throttled by Microsoft Graph (Retry-After %s); delivered again in %d s", body["name"],
             error.retry_after, delay)
    await OperationStore(current_platform().settings).enqueue({**body, "throttled": attempt + 1},
                                                              delay_seconds=delay)
    return True


def _left_to_the_sweep(body: dict[str, Any]) -> None:
    # The sweep brings it back: the identity is still due, or waits out its failure back-off.
    log.warning("identity=%s still throttled by Microsoft Graph after %s redeliveries; left to the next sweep",
                body["name"], body.get("throttled", 0))


@bp.queue_trigger(arg_name="message", queue_name="%RECONCILE_QUEUE%-poison", connection="AzureWebJobsStorage")
async def record_poisoned_reconcile(message: func.QueueMessage) -> None:
    from shared.platform import current_platform
    from shared.service import record_poison
    from shared.sweep import parse_message

    try:
        body = parse_message(message.get_body().decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        log.error("poison queue: unreadable message %s", message.id)
        return
    name = body["name"]
    if isinstance(body.get("operationId"), str):
        from shared.operations import record_poison as record_operation_poison

        await record_operation_poison(current_platform(), body["operationId"])
    log.error("identity=%s reconcile failed after every redelivery (dequeueCount=%s)", name,
              message.dequeue_count)
    await record_poison(current_platform(), name)
    from shared.notify import Notification, notify

    await notify(Notification("NeedsOperator", name, "the reconcile failed on every redelivery and was moved to the "
                              "poison queue; see the function logs for the cause", {"Queue": "poison"}))
