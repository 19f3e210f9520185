"""Timer and queue triggers: the sweep fans out, one queue message reconciles one identity.

Retries and poison messages come from the Functions host (host.json `queues.maxDequeueCount`),
not from loops here: a retryable failure raises so the host redelivers; a failure that needs an
operator is recorded in the identity's tags and the message completes, since redelivery cannot
fix it. A message that still fails after the last delivery lands in `<queue>-poison`, whose
trigger records it in the identity's status. A message for an identity another run holds (its
lease, shared/lease.py) is queued again for later rather than failed. A message with an
`operationId` carries on a write that answered 202 (shared/operations.py).
"""

from __future__ import annotations

import logging

import azure.functions as func

log = logging.getLogger("exo_automation.triggers")

bp = func.Blueprint()  # type: ignore[no-untyped-call]


@bp.timer_trigger(schedule="%SWEEP_SCHEDULE%", arg_name="timer", run_on_startup=False, use_monitor=True)
@bp.queue_output(arg_name="reconcile", queue_name="%RECONCILE_QUEUE%", connection="AzureWebJobsStorage")
async def sweep_identities(timer: func.TimerRequest, reconcile: func.Out[list[str]]) -> None:
    from shared.platform import current_platform
    from shared.sweep import sweep

    if timer.past_due:
        log.info("the sweep is running late (past due); it catches up in one run")
    result = await sweep(current_platform())
    reconcile.set(result.messages())


@bp.queue_trigger(arg_name="message", queue_name="%RECONCILE_QUEUE%", connection="AzureWebJobsStorage")
async def reconcile_identity(message: func.QueueMessage) -> None:
    from shared import operations
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
        await operations.resume(current_platform(), body["operationId"], name)
        return
    sweep_id = body.get("sweepId") if isinstance(body.get("sweepId"), str) else None
    try:
        result = await reconcile(current_platform(), name, operation="reconcile", caller="sweep",
                                 correlation_id=sweep_id, lease_wait=operations.QUEUE_LEASE_WAIT_SECONDS)
    except (IdentityNotFound, InvalidSpec) as exc:
        log.warning("identity=%s skipped: %s", name, exc.message)  # decommissioned since the sweep
        return
    except IdentityBusy as busy:
        # Another run holds the identity: deliver this later, without counting towards the poison queue.
        await operations.requeue_busy(current_platform(), body, busy)
        return
    if isinstance(result.error, Retryable):
        # Raising hands the message back to the host, which redelivers it with its own back-off.
        raise result.error
    if result.error is not None:
        log.error("identity=%s needs an operator: %s: %s", name, result.error.reason, result.error.message)


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
