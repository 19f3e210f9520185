"""Issue 13 item 6: Graph's per-tenant limit on key-credential reads, through the real SDKs.

Reading `keyCredentials` with `$select` is limited to 150 requests a minute per tenant
(docs/reference.md "Throttling"); the Graph stand-in enforces it by default (devstack/throttle.py),
and these tests lower it to see the product wait out Retry-After, stop waiting when its budget is
spent, answer HTTP callers with 503, requeue throttled queue messages and converge.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import azure.functions as func
import pytest

from devstack import Stack
from devstack.faults import Fault
from shared.adapters.graph import GraphError, graph_wait_budget
from shared.platform import Platform
from shared.settings import Settings
from tests.support.tenant import remove_consent

from .helpers import call_trigger, get_identity
from .platform_helpers import bootstrap, sweep
from .queue_helpers import approximate_count, deliver_one, drain, queue_client, use_fresh_queue


def refused(stack: Stack) -> int:
    return int(stack.world.key_credential_reads.to_json()["refused"])


def read_keys(stack: Stack, app_id: str, times: int, budget: float | None = None,
              selects: tuple[str, ...] = ()) -> list[object]:
    """`times` reads of the app's key credentials (then one read selecting each of `selects`) through one
    Platform's GraphClient, within one run's waiting budget when `budget` is given (as a queued
    reconcile or an HTTP request makes them); each outcome: the selected value, or the GraphError."""
    async def reads(platform: Platform) -> list[object]:
        outcomes: list[object] = []
        for select in ["keyCredentials"] * times + list(selects):
            try:
                outcomes.append((await platform.graph.get_json(f"/applications/{app_id}", {"$select": select}))
                                [select])
            except GraphError as exc:
                outcomes.append(exc)
        return outcomes

    async def run() -> list[object]:
        platform = Platform.create(Settings.from_environment(), clock=stack.world.clock.now)
        try:
            if budget is None:
                return await reads(platform)
            with graph_wait_budget(budget):
                return await reads(platform)
        finally:
            await platform.aclose()

    return asyncio.run(run())


def fresh_limit(stack: Stack, limit: int, window_seconds: float) -> None:
    """An empty window (the bootstrap's reads forgotten) with this limit."""
    stack.world.key_credential_reads.reset()
    stack.world.key_credential_reads.configure(limit, window_seconds)


def requeued_message(azurite: str, queue_name: str) -> Any:
    """The message put back on the queue (visible once its delay is over), within 30 s."""
    deadline = time.monotonic() + 30
    requeued = None
    with queue_client(azurite, queue_name) as queue:
        while requeued is None and time.monotonic() < deadline:
            requeued = next(iter(queue.receive_messages(visibility_timeout=1, max_messages=1)), None)
            time.sleep(0.2)
    assert requeued is not None, "nothing was requeued"
    return requeued


def app_object_id(stack: Stack, name: str) -> str:
    return next(a["id"] for a in stack.world.directory.applications.values()
                if a.get("uniqueName") == f"exo-automation-{name}")


def test_a_429_is_waited_out_for_its_retry_after_and_the_read_succeeds(stack: Stack) -> None:
    assert bootstrap(stack, "patient").error is None
    app = app_object_id(stack, "patient")
    fresh_limit(stack, 1, 2.0)
    first, second = read_keys(stack, app, 2)
    assert first == second and isinstance(second, list) and len(second) == 1
    counts = stack.world.key_credential_reads.to_json()
    assert (counts["admitted"], counts["refused"]) == (2, 1)  # refused once, then let through


def test_a_wait_the_budget_cannot_cover_is_not_started_and_ends_retryable(stack: Stack) -> None:
    assert bootstrap(stack, "hurried").error is None
    app = app_object_id(stack, "hurried")
    fresh_limit(stack, 1, 3.0)
    # One budget of 5 s for the three reads: the second waits 3 s (and up to a quarter more, jitter),
    # the third's wait no longer fits.
    first, second, third = read_keys(stack, app, 3, budget=5.0)
    assert isinstance(first, list) and isinstance(second, list)
    assert isinstance(third, GraphError) and third.status == 429 and third.code == "TooManyRequests"
    assert third.retry_after is not None and 1 <= third.retry_after <= 3
    error = third.classified()
    assert error.reason == "GraphThrottled" and error.retry_after == third.retry_after
    assert refused(stack) == 2  # the third read was refused once and not retried


def test_a_retry_after_longer_than_the_longest_wait_is_never_slept_on(stack: Stack) -> None:
    assert bootstrap(stack, "longwait").error is None
    app = app_object_id(stack, "longwait")
    fresh_limit(stack, 1, 600.0)  # Retry-After ~600 s: more than MAX_RETRY_AFTER_SECONDS (60)
    first, second = read_keys(stack, app, 2)
    assert isinstance(first, list)
    assert isinstance(second, GraphError) and second.status == 429 and second.retry_after is not None
    assert second.retry_after > 60
    assert refused(stack) == 1


def test_after_a_429_the_platform_holds_its_other_key_reads_instead_of_sending_them(stack: Stack) -> None:
    """Refused requests count against Graph's limits too (docs/reference.md), so once throttled the
    platform does not send more of the kind until the Retry-After is over; other reads still go."""
    assert bootstrap(stack, "held").error is None
    app = app_object_id(stack, "held")
    fresh_limit(stack, 1, 600.0)
    first, second, third, other = read_keys(stack, app, 3, selects=("id",))
    assert isinstance(first, list) and other == app
    assert isinstance(second, GraphError) and second.status == 429 and "not sent" not in second.message
    assert isinstance(third, GraphError) and third.status == 429 and "not sent" in third.message
    assert third.retry_after is not None and third.retry_after > 60
    assert third.classified().reason == "GraphThrottled"
    assert refused(stack) == 1  # the third read never reached Graph


def test_an_http_status_read_while_throttled_answers_503_with_a_capped_retry_after(stack: Stack) -> None:
    assert bootstrap(stack, "watched").error is None
    stack.world.key_credential_reads.configure(1, 300.0)  # the bootstrap's reads fill the window for minutes
    answer = get_identity("watched")
    assert answer.status == 503 and answer.content_type == "application/problem+json"
    assert answer.body["reason"] == "GraphThrottled"
    assert answer.headers["Retry-After"] == "60"  # Graph asked for ~300 s; a caller is told at most 60
    assert refused(stack) == 1  # answered without waiting: the one refusal was not retried


def test_a_queued_reconcile_still_throttled_is_requeued_after_retry_after_and_converges(
        stack: Stack, azurite: str, monkeypatch: pytest.MonkeyPatch) -> None:
    queue_name = use_fresh_queue(monkeypatch)
    assert bootstrap(stack, "requeued").error is None
    remove_consent(stack, "requeued")
    assert sweep(stack).due == {"requeued": ["ConsentMissing"]}
    # Graph keeps answering 429 (Retry-After 1 s) to the app's read: the SDK retries 3 times, then the
    # run ends GraphThrottled and the message goes back to the queue for after Retry-After.
    stack.world.faults.add(Fault(service="graph", method="GET", path=r"/applications\(uniqueName=", status=429,
                                 retry_after=1, count=4))
    message = {"name": "requeued", "reasons": ["ConsentMissing"], "sweepId": "s1"}
    with queue_client(azurite, queue_name) as queue:
        queue.create_queue()
        queue.send_message(json.dumps(message))
    assert deliver_one(azurite, queue_name)
    assert approximate_count(azurite, queue_name) == 1  # the original completed, one requeued
    requeued = requeued_message(azurite, queue_name)
    body = json.loads(requeued.content)
    assert body == {**message, "throttled": 1}
    call_trigger("reconcile_identity", message=func.QueueMessage(id=requeued.id, body=requeued.content.encode()))
    assert sweep(stack).due == {}
    assert approximate_count(azurite, f"{queue_name}-poison") == 0
    assert get_identity("requeued").body["lastResult"]["result"] == "Succeeded"


def test_a_throttled_sweep_converges_with_a_low_limit(stack: Stack, azurite: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The sweep's fan-out through the real triggers and Azurite, against a tenant whose limit is 2 reads
    per 4 s: reconciles meet 429s, wait them out, and every identity converges."""
    queue_name = use_fresh_queue(monkeypatch)
    names = [f"fleet-{i}" for i in range(6)]
    for name in names:
        assert bootstrap(stack, name).error is None
        remove_consent(stack, name)  # every identity due (the triggers run on the real clock, not the stand-ins')
    fresh_limit(stack, 2, 4.0)

    class Timer:  # the host's TimerRequest: only past_due is read
        past_due = False

    call_trigger("sweep_identities", timer=Timer())
    assert approximate_count(azurite, queue_name) == len(names)
    drain(azurite, queue_name, timeout=240)

    assert refused(stack) >= 1  # the limit was met ...
    assert sweep(stack).due == {}  # ... and everything converged
    assert approximate_count(azurite, f"{queue_name}-poison") == 0
    for name in names:
        assert get_identity(name).body["lastResult"]["result"] == "Succeeded", name


def test_a_throttled_continuation_of_a_202_is_requeued_after_retry_after_and_completes(
        stack: Stack, azurite: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A write that answered 202 and then meets Graph's throttling is delivered again after Retry-After,
    not after the host's visibility timeout, and without counting towards the poison queue (which would
    mark the operation Failed): it completes."""
    from .helpers import post_identity
    from .queue_helpers import operation

    queue_name = use_fresh_queue(monkeypatch)
    monkeypatch.setenv("HTTP_INLINE_BUDGET_SECONDS", "1")
    stack.world.key_replication_delay = 3.0
    answer = post_identity({"name": "throttled-op"})
    assert answer.status == 202, answer.body
    stack.world.faults.add(Fault(service="graph", method="GET", path=r"/applications\(uniqueName=", status=429,
                                 retry_after=1, count=4))
    assert deliver_one(azurite, queue_name)
    requeued = requeued_message(azurite, queue_name)
    body = json.loads(requeued.content)
    assert body == {"name": "throttled-op", "operationId": answer.body["id"], "throttled": 1}
    assert operation(answer.headers["Location"]).body["status"] == "Running"
    call_trigger("reconcile_identity", message=func.QueueMessage(id=requeued.id, body=requeued.content.encode()))
    assert operation(answer.headers["Location"]).body["status"] == "Succeeded"
    assert approximate_count(azurite, f"{queue_name}-poison") == 0
