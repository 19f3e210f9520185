"""Service requests and wall time of the sweep over a fleet of identities, in the in-process stand-ins.

One identity is bootstrapped through the product, then cloned into the stand-ins' state
(bench/seed.py) up to each fleet size. For each size, with a warm `Platform` (as a Functions worker
keeps one): a first sweep (tokens, Key Vault's challenge) and `repeats` more, each with the request
counters reset. Requests are split as in the other benchmarks: *service* (Graph, Key Vault,
Exchange) per identity against the target, Entra *token* requests apart.

Rows: every size in-sync at 0 ms; the largest size with 25 ms latency injected on every Graph and
Key Vault request; the largest size with `due` identities whose Exchange grant was removed (the
sweep's wall time and cost, then the reconcile of those identities with bounded concurrency, then a
sweep that must find nothing). Target: an in-sync sweep costs at most 0.1 service requests per
identity (one request per facet per identity would be 5 or more).

Requests to the Functions storage account (Azurite: the lease blobs' listing that finds identities without a
certificate, the marker of a complete secret listing, the reconciles' leases) are service requests too,
counted in this process (`StorageCounter`). The largest size's sweep that lists every secret (at least once
every DEEP_CHECK_HOURS; the others read only the connection secrets the index names) is measured apart
(`completeListing`).

Then 1,000 identities due at once (every deep check, the clock moved past DEEP_CHECK_HOURS), fanned out
with the sweep trigger's visibility delays against the Graph stand-in's per-tenant limit on reading key
credentials (150 a minute), alone and with another app of the tenant reading too: wall time, Graph's
429s, requeues, and whether every identity converged. Time is scaled down (THROTTLE_TIME_SCALE) and the
output says how. Last, CERTLESS federated identities (no certificate) are bootstrapped through the product
next to the largest fleet, and its in-sync sweep measured again (`withoutCertificate`).

Faithfulness of the seeding is asserted, not assumed: after seeding, a sweep must find nothing due,
and a full reconcile of a clone must change nothing.

    python -m bench sweep        # or: python -m bench.sweep
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench import seed
from bench._common import (
    RequestTally,
    StorageCounter,
    WarningLog,
    in_process_stack,
    patched_environ,
    routes_table,
    summarize,
    target,
    write_result,
)

if TYPE_CHECKING:
    from devstack import Stack
    from shared.platform import Platform

NAME = "sweep"
TARGET_PER_IDENTITY = 0.1
SIZES = (100, 250, 500, 1000)
LATENCY_SECONDS = 0.025
TEMPLATE = "fleet-0000"


# Findings behind the figures (bench/sweep.py's author measured them; see the report of issue 4).
NOTES = [
    "Key Vault lists at most 25 certificates a page and each page needs the previous page's nextLink: "
    "ceil(N/25) sequential requests, most of the cost and of the wall time; injected latency adds about "
    "ceil(N/25) x latency. Graph listings run concurrently with it.",
    "The role-holder listing (/roleManagement/directory/roleAssignments) is requested without $top, so Graph's "
    "default page of 100 applies: ceil(N/100) pages per role in use (applications and grants use $top=999).",
    "The stand-ins' HTTP server writes headers and body separately without TCP_NODELAY; on a keep-alive "
    "connection each request can then wait for a delayed ACK (~40 ms on Linux), which dominates the wall times "
    "here and is not a cost of the product.",
    "The Key Vault stand-in builds every certificate item for each page it serves (O(N) per page): its own work "
    "per sweep grows as N^2/25.",
    "Identities without a certificate keep their registry entry on their connection secret. Key Vault's secret "
    "listing holds every certificate's backing secret and every identity's record as well: ceil(2N/25) pages for N "
    "certificate identities, which made it the largest share of the cost (136 requests at 1,000, 80 of them secret "
    "pages). The sweep now lists the lease blobs instead (one storage request per 5,000 names, concurrently with the "
    "certificates) and reads the connection secret of each name there without a certificate; it lists every secret "
    "only when that is cheaper, without the index, or once per DEEP_CHECK_HOURS (completeListing).",
    "throttledDue: before the platform held its requests after a 429 (ThrottleGate), the row with another app of "
    "the tenant reading 60 key credentials a minute (that one ignoring its own 429s) collapsed: each run retried on "
    "its own, refused reads count against the limit too, and the tenant stayed throttled (11,355 product 429s, 601 "
    "of 1,000 converged in 35 minutes at this scale). With the gate, the same neighbour and 300 identities: 22 "
    "429s, all converged; the row here (a neighbour waiting out its 429s): see graph429.",
]


def identity_name(index: int) -> str:
    return f"fleet-{index:04d}"


def _platform(stack: Stack) -> Platform:
    from shared.platform import Platform
    from shared.settings import Settings

    return Platform.create(Settings.from_environment(), clock=stack.world.clock.now)


def _reasons(due: dict[str, list[str]]) -> dict[str, int]:
    return dict(sorted(Counter(r for reasons in due.values() for r in reasons).items()))


# The Functions storage account's requests (the lease blobs' listing, the marker of a complete secret listing,
# the leases of reconciles), counted in this process while `run` measures: Azurite counts nothing for us.
_storage: StorageCounter | None = None


def _reset_counts(stack: Stack) -> None:
    stack.world.counter.reset()
    if _storage is not None:
        _storage.reset()


def _tally(stack: Stack) -> RequestTally:
    return RequestTally.of([*stack.world.counter.snapshot(), *(_storage.snapshot() if _storage is not None else [])])


async def _one_sweep(stack: Stack, platform: Platform) -> tuple[float, Any, RequestTally]:
    from shared.sweep import sweep

    _reset_counts(stack)
    started = time.perf_counter()
    result = await sweep(platform)
    elapsed = time.perf_counter() - started
    return elapsed, result, _tally(stack)


def _row(identities: int, latency: float, cold: tuple[float, Any, RequestTally],
         warm: list[tuple[float, Any, RequestTally]]) -> dict[str, Any]:
    service = max(t.service for _, _, t in warm)
    per_identity = service / identities
    last = warm[-1][1]
    return {
        "identities": identities,
        "latencyMs": round(latency * 1000),
        "due": len(last.due),
        "dueReasons": _reasons(last.due),
        "serviceRequests": service,
        "requestsPerIdentity": round(per_identity, 4),
        "target": TARGET_PER_IDENTITY,
        "met": per_identity <= TARGET_PER_IDENTITY,
        "wallSeconds": summarize(e for e, _, _ in warm),
        "tokenRequests": max(t.total("token") for _, _, t in warm),
        "byService": warm[-1][2].by_service(),
        "firstSweepOfPlatform": {"wallSeconds": round(cold[0], 4), "serviceRequests": cold[2].service,
                                 "tokenRequests": cold[2].total("token")},
        "_tally": warm[-1][2],
    }


async def _sweeps(stack: Stack, identities: int, repeats: int, latency: float = 0.0) -> dict[str, Any]:
    platform = _platform(stack)
    try:
        cold = await _one_sweep(stack, platform)
        warm = [await _one_sweep(stack, platform) for _ in range(repeats)]
    finally:
        await platform.aclose()
    for _, result, _ in [cold, *warm]:
        if result.identities != identities:
            raise RuntimeError(f"the sweep saw {result.identities} identities, {identities} were seeded")
    return _row(identities, latency, cold, warm)


def _require_in_sync(row: dict[str, Any]) -> None:
    if row["due"]:
        raise RuntimeError(f"the seeded fleet is not in sync: {row['due']} identities due, reasons "
                           f"{row['dueReasons']}; the seeding is not faithful and the figures would be meaningless")


async def _reconcile_clone(stack: Stack, name: str) -> dict[str, Any]:
    from shared.service import reconcile

    platform = _platform(stack)
    try:
        _reset_counts(stack)
        result = await reconcile(platform, name, operation="reconcile")
    finally:
        await platform.aclose()
    tally = _tally(stack)
    return {"identity": name, "succeeded": result.error is None, "changed": result.changed,
            "executed": [o.action.kind for o in result.executed], "serviceRequests": tally.service,
            "writes": tally.writes}


def _remove_grants(stack: Stack, names: list[str]) -> None:
    from devstack.world import EXCHANGE_MANAGE_AS_APP

    d = stack.world.directory
    with stack.world.lock:
        wanted = {seed.unique_name(n) for n in names}
        app_ids = {a["appId"] for a in d.applications.values() if a.get("uniqueName") in wanted}
        sp_ids = {s["id"] for s in d.service_principals.values() if s["appId"] in app_ids}
        for key in [k for k, a in d.app_role_assignments.items()
                    if a["principalId"] in sp_ids and a["appRoleId"] == EXCHANGE_MANAGE_AS_APP]:
            del d.app_role_assignments[key]


async def _due_scenario(stack: Stack, identities: int, due: int, repeats: int, concurrency: int) -> dict[str, Any]:
    from shared.service import reconcile

    step = max(1, identities // due)
    names = [identity_name(i) for i in range(1, identities, step)][:due]
    _remove_grants(stack, names)
    platform = _platform(stack)
    try:
        cold = await _one_sweep(stack, platform)
        warm = [await _one_sweep(stack, platform) for _ in range(repeats)]
        row = _row(identities, 0.0, cold, warm)
        found = warm[-1][1].due
        if set(found) != set(names) or any(reasons != ["ConsentMissing"] for reasons in found.values()):
            raise RuntimeError(f"expected exactly the {len(names)} identities without a grant to be due "
                               f"(ConsentMissing), found {len(found)}: {_reasons(found)}")

        semaphore = asyncio.Semaphore(concurrency)

        async def one(name: str) -> Any:
            async with semaphore:
                return await reconcile(platform, name, operation="reconcile", caller="sweep")

        _reset_counts(stack)
        started = time.perf_counter()
        outcomes = await asyncio.gather(*(one(n) for n in sorted(found)))
        reconcile_wall = time.perf_counter() - started
        tally = _tally(stack)
        after = await _one_sweep(stack, platform)
    finally:
        await platform.aclose()
    failed = {o.name: o.error.reason for o in outcomes if o.error is not None}
    row["reconcileDue"] = {
        "identities": len(outcomes), "concurrency": concurrency, "wallSeconds": round(reconcile_wall, 4),
        "secondsPerIdentity": round(reconcile_wall / max(1, len(outcomes)), 4),
        "serviceRequests": tally.service,
        "serviceRequestsPerReconciled": round(tally.service / max(1, len(outcomes)), 2),
        "writes": tally.writes, "tokenRequests": tally.total("token"), "failed": failed,
        "byService": tally.by_service(),
        "actions": dict(sorted(Counter(o.action.kind for r in outcomes for o in r.executed).items())),
    }
    row["sweepAfterReconcile"] = {"due": len(after[1].due), "dueReasons": _reasons(after[1].due),
                                  "wallSeconds": round(after[0], 4), "serviceRequests": after[2].service}
    return row


def _forget_complete_listing() -> None:
    """Remove the marker of the last complete secret listing, as when DEEP_CHECK_HOURS have passed since."""
    from azure.storage.blob import BlobClient

    from shared.adapters.storage import STORAGE_CONNECTION
    from shared.lease import LEASE_CONTAINER, SECRETS_LISTED_MARKER

    with BlobClient.from_connection_string(os.environ[STORAGE_CONNECTION], LEASE_CONTAINER,
                                           SECRETS_LISTED_MARKER) as marker:
        marker.delete_blob()


async def _complete_listing(stack: Stack, identities: int) -> dict[str, Any]:
    """The sweep that lists every secret (at least once every DEEP_CHECK_HOURS, and whenever the lease blobs
    cannot be listed), then the next one, which trusts the index again."""
    platform = _platform(stack)
    try:
        await _one_sweep(stack, platform)  # tokens and the vault's challenge, as in the other rows
        _forget_complete_listing()
        elapsed, result, tally = await _one_sweep(stack, platform)
        after = await _one_sweep(stack, platform)
    finally:
        await platform.aclose()
    if result.due or after[1].due or result.identities != identities:
        raise RuntimeError(f"expected {identities} identities in sync, found {result.identities}: {result.due}")
    return {"identities": identities, "serviceRequests": tally.service,
            "requestsPerIdentity": round(tally.service / identities, 4), "byService": tally.by_service(),
            "wallSeconds": round(elapsed, 4), "nextSweepServiceRequests": after[2].service, "_tally": tally}


CERTLESS = 20  # identities without a certificate added to the largest fleet (federated, through the product)


def _certless_names(count: int) -> list[str]:
    return [f"certless-{index:04d}" for index in range(count)]


def _bootstrap_certless(stack: Stack, names: list[str]) -> None:
    """Federated identities (no certificate) trusting the stand-ins' managed identity, bootstrapped through the
    product: each gets its registry entry on its connection secret and its lease blob, as in production."""
    from shared.service import bootstrap

    settings = stack.settings()
    trust = {"type": "federated", "issuer": f"{settings['AZURE_AUTHORITY_HOST']}/{stack.world.tenant_id}/v2.0",
             "subject": stack.world.platform.object_id}

    async def go() -> None:
        platform = _platform(stack)
        try:
            for name in names:
                result = await bootstrap(platform, {"name": name, "credentials": [trust]})
                if result.error is not None:
                    raise RuntimeError(f"bootstrap of {name} failed: {result.error.reason}")
        finally:
            await platform.aclose()

    asyncio.run(go())


def _without_certificate(stack: Stack, identities: int, count: int, repeats: int) -> dict[str, Any]:
    """`count` identities without a certificate next to the fleet: found through the lease blobs' names, one
    read of a connection secret each, instead of the listing of every secret."""
    with patched_environ({"ALLOWED_MANAGED_IDENTITIES": stack.world.platform.object_id}):
        _bootstrap_certless(stack, _certless_names(count))
        row = asyncio.run(_sweeps(stack, identities + count, repeats))
    _require_in_sync(row)
    row["withoutCertificate"] = count
    return row


# -- 1,000 identities due at once against Graph's key-credential read limit ---------------------------
# Graph allows 150 reads of keyCredentials with $select a minute per tenant (docs/reference.md); every
# reconcile makes at least one. At the real scale the product's fan-out (100 reads a minute) spreads
# 1,000 deep checks over 10 minutes; the benchmark divides time by THROTTLE_TIME_SCALE instead: the
# stand-in's window and the fan-out's window both shrink by it (150 and 100 reads per 15 s), so does
# every Retry-After and requeue delay derived from them. Wall time x scale is the real-time equivalent
# while the run is paced by the fan-out rather than by this machine's CPU (see "pacedBy").
THROTTLE_TIME_SCALE = 4.0
NEIGHBOUR_READS_PER_MINUTE = 60  # another app of the tenant reading key credentials (the shared row)
QUEUE_CONCURRENCY = 8  # messages handled at once, like one or two Functions instances (host.json batches)
NEIGHBOUR = "neighbour-app"


def _neighbour(stack: Stack, per_window: int, window: float, stop: threading.Event) -> threading.Thread:
    """Another app of the tenant reading key credentials at a steady rate, waiting out its 429s."""
    def run() -> None:
        pause = window / per_window
        while not stop.wait(pause):
            retry_after = stack.world.key_credential_reads.take(NEIGHBOUR)
            pause = window / per_window + (retry_after or 0)

    thread = threading.Thread(target=run, name="bench-neighbour", daemon=True)
    thread.start()
    return thread


async def _deliver(platform: Platform, scheduled: list[tuple[dict[str, Any], int]],
                   concurrency: int) -> dict[str, Any]:
    """An in-memory reconcile queue: each message is handed to the product when its visibility delay is
    over, `concurrency` at a time, with the queue trigger's decisions (shared/functions/sweep_triggers.py):
    the same waiting budget, and a run still throttled comes back after `throttled_requeue_delay`.
    (Azurite's delays are whole seconds, too coarse once time is scaled.)"""
    import heapq
    import random

    from shared.adapters.graph import graph_wait_budget
    from shared.core.fanout import throttled_requeue_delay
    from shared.errors import Retryable
    from shared.functions.sweep_triggers import QUEUE_GRAPH_WAIT_SECONDS
    from shared.operations import QUEUE_LEASE_WAIT_SECONDS
    from shared.service import reconcile

    loop = asyncio.get_running_loop()
    start = loop.time()
    queue = [(start + delay, index, message, 0) for index, (message, delay) in enumerate(scheduled)]
    heapq.heapify(queue)
    counter = len(queue)
    in_flight = 0
    tally: Counter[str] = Counter()
    failed: dict[str, str] = {}
    left: list[str] = []
    lag: list[float] = []

    async def handle(message: dict[str, Any], attempt: int) -> None:
        nonlocal counter
        try:
            with graph_wait_budget(QUEUE_GRAPH_WAIT_SECONDS):
                result = await reconcile(platform, message["name"], operation="reconcile", caller="sweep",
                                         correlation_id=message["sweepId"], lease_wait=QUEUE_LEASE_WAIT_SECONDS)
            error = result.error
        except Retryable as exc:
            error = exc
        if isinstance(error, Retryable) and error.reason == "GraphThrottled":
            delay = throttled_requeue_delay(error.retry_after, attempt, random.random())
            if delay is None:
                left.append(message["name"])
            else:
                tally["requeued"] += 1
                counter += 1
                heapq.heappush(queue, (loop.time() + delay, counter, message, attempt + 1))
        elif error is not None:
            failed[message["name"]] = error.reason
        else:
            tally["succeeded"] += 1

    async def worker() -> None:
        nonlocal in_flight
        while queue or in_flight:
            if not queue or queue[0][0] > loop.time():
                await asyncio.sleep(min(0.05, queue[0][0] - loop.time()) if queue else 0.05)
                continue
            visible_at, _, message, attempt = heapq.heappop(queue)
            lag.append(loop.time() - visible_at)
            in_flight += 1
            try:
                await handle(message, attempt)
            finally:
                in_flight -= 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return {"wallSeconds": round(loop.time() - start, 2), "succeeded": tally["succeeded"],
            "requeued": tally["requeued"], "leftToNextSweep": len(left), "failed": failed,
            # from a message becoming visible to a worker taking it: above 0 when the CPU paces the run
            "queueLagSeconds": {k: v for k, v in summarize(lag, 2).items() if k != "values"}}


async def _throttled_due(stack: Stack, identities: int, scale: float, neighbour_per_minute: int,
                         concurrency: int) -> dict[str, Any]:
    """Every identity's deep check due at once (the clock moved past DEEP_CHECK_HOURS), fanned out as the
    sweep trigger plans it, against the stand-in's key-credential read limit at `scale`."""
    from shared.core.fanout import KEY_CREDENTIAL_READS_PER_MINUTE
    from shared.sweep import sweep

    window = 60.0 / scale
    throttle = stack.world.key_credential_reads
    platform = _platform(stack)
    stack.world.clock.advance((platform.settings.deep_check_hours + 1) * 3600)
    throttle.reset()
    throttle.configure(throttle.limit, window)
    stop = threading.Event()
    neighbour = _neighbour(stack, neighbour_per_minute, window, stop) if neighbour_per_minute else None
    try:
        started = time.perf_counter()
        result = await sweep(platform)
        sweep_seconds = time.perf_counter() - started
        if len(result.due) != identities or _reasons(result.due) != {"DeepCheckDue": identities}:
            raise RuntimeError(f"expected all {identities} identities due for their deep check, found "
                               f"{len(result.due)}: {_reasons(result.due)}")
        scheduled, deferred = result.schedule(window_seconds=window)
        delivered = await _deliver(platform, scheduled, concurrency)
        stop.set()
        after = await sweep(platform)
    finally:
        stop.set()
        if neighbour is not None:
            neighbour.join()
        await platform.aclose()
    counts = throttle.to_json()
    product_429 = throttle.refused[stack.world.platform.object_id]
    spread = scheduled[-1][1] if scheduled else 0
    wall = sweep_seconds + delivered["wallSeconds"]
    return {
        "identities": identities, "due": len(result.due), "neighbourReadsPerMinute": neighbour_per_minute,
        "timeScale": scale,
        "standInLimit": {"reads": counts["limit"], "windowSeconds": counts["windowSeconds"],
                         "realLimit": "150 reads per 60 s"},
        "fanOut": {"readsPerWindow": KEY_CREDENTIAL_READS_PER_MINUTE, "windowSeconds": window,
                   "messages": len(scheduled), "deferred": len(deferred), "lastDelaySeconds": spread,
                   "lastDelayRealSeconds": round(spread * scale)},
        "wallSeconds": round(wall, 2),
        "realTimeEquivalentSeconds": round(wall * scale),
        # Paced by the fan-out when the deliveries end soon after the last message becomes visible.
        "pacedBy": "fan-out" if delivered["wallSeconds"] <= spread + 0.25 * window
        else "waits on 429s or this machine's CPU (see graph429, queueLagSeconds)",
        "graph429": {"product": product_429, "neighbour": throttle.refused[NEIGHBOUR]},
        "keyCredentialReads": {"admitted": counts["admitted"], "peakInWindow": counts["peakInWindow"]},
        **{k: v for k, v in delivered.items() if k != "wallSeconds"},
        "deliverySeconds": delivered["wallSeconds"], "sweepSeconds": round(sweep_seconds, 2),
        "sweepAfter": {"due": len(after.due), "dueReasons": _reasons(after.due)},
        "converged": not after.due and not delivered["failed"] and not delivered["leftToNextSweep"],
    }


def _bootstrap_template(stack: Stack) -> None:
    seed.bootstrap_template(stack, TEMPLATE)


def run(stack: Stack, sizes: Sequence[int], repeats: int, due: int, concurrency: int,
        throttle_scale: float = THROTTLE_TIME_SCALE, certless: int = CERTLESS) -> dict[str, Any]:
    sizes = sorted(sizes)
    largest = sizes[-1]
    started = time.perf_counter()
    _bootstrap_template(stack)
    template = seed.template_of(stack, TEMPLATE)
    bootstrap_seconds = time.perf_counter() - started
    seeded, seed_seconds = 1, 0.0
    rows: list[dict[str, Any]] = []
    with WarningLog() as warnings:
        for size in sizes:
            started = time.perf_counter()
            seed.clone(stack, template, [identity_name(i) for i in range(seeded, size)])
            seed_seconds += time.perf_counter() - started
            seeded = size
            row = asyncio.run(_sweeps(stack, size, repeats))
            _require_in_sync(row)
            rows.append(row)
        clone_name = identity_name(largest - 1)
        fidelity = seed.faithfulness(stack, template, clone_name)
        reconciled = asyncio.run(_reconcile_clone(stack, clone_name))
        if not reconciled["succeeded"] or reconciled["changed"]:
            raise RuntimeError(f"a full reconcile of the clone {clone_name} was not a no-op: {reconciled}; "
                               "the seeding is not faithful")

        for service in ("graph", "keyvault"):
            from devstack.faults import Fault

            stack.world.faults.add(Fault.from_json({"service": service, "latency": LATENCY_SECONDS, "count": None}))
        try:
            latency_row = asyncio.run(_sweeps(stack, largest, repeats, LATENCY_SECONDS))
        finally:
            stack.world.faults.clear()
        _require_in_sync(latency_row)
        rows.append(latency_row)
        complete = asyncio.run(_complete_listing(stack, largest))
        due_row = asyncio.run(_due_scenario(stack, largest, due, repeats, concurrency))
        throttled = [asyncio.run(_throttled_due(stack, largest, throttle_scale, neighbour, QUEUE_CONCURRENCY))
                     for neighbour in (0, NEIGHBOUR_READS_PER_MINUTE)]
        without = _without_certificate(stack, largest, certless, repeats)

    tallies = [r.pop("_tally") for r in rows]
    due_tally = due_row.pop("_tally")
    complete_tally = complete.pop("_tally")
    without_tally = without.pop("_tally")
    in_sync = [r for r in rows if r["latencyMs"] == 0]
    smallest, biggest = in_sync[0], in_sync[-1]
    growth = {
        "identities": [r["identities"] for r in in_sync],
        "serviceRequests": [r["serviceRequests"] for r in in_sync],
        "requestsPerIdentity": [r["requestsPerIdentity"] for r in in_sync],
        "wallSecondsMedian": [r["wallSeconds"]["median"] for r in in_sync],
        "identitiesRatio": round(biggest["identities"] / smallest["identities"], 2),
        "requestsRatio": round(biggest["serviceRequests"] / max(1, smallest["serviceRequests"]), 2),
        "wallRatio": round(biggest["wallSeconds"]["median"] / smallest["wallSeconds"]["median"], 2),
    }
    return {
        "setup": {
            "stack": "in-process stand-ins (same interpreter: wall times include the stand-ins' own work)",
            "seeding": "one identity bootstrapped through the product, cloned into the stand-ins' state "
                       "(bench/seed.py); verified by a sweep finding nothing due and a no-op reconcile of a clone",
            "platform": "one warm Platform per row (as a Functions worker keeps one); its first sweep is "
                        "reported apart (firstSweepOfPlatform), the figures are of the `repeats` sweeps after it",
            "repeats": repeats,
            "latency": f"{round(LATENCY_SECONDS * 1000)} ms on every Graph and Key Vault request (latency-only "
                       "fault), in the latency row",
            "requestCounting": "service = Graph + Key Vault + Exchange + the Functions storage account (Azurite, "
                               "counted in this process at azure-core's transport: the lease blobs' listing, the "
                               "marker of a complete secret listing, the reconciles' leases) per sweep; Entra token "
                               "requests apart",
            "templateBootstrapSeconds": round(bootstrap_seconds, 3),
            "cloneSeconds": round(seed_seconds, 3),
        },
        "targets": [target(f"service requests per identity, in-sync sweep of {r['identities']} at "
                           f"{r['latencyMs']} ms", TARGET_PER_IDENTITY, r["requestsPerIdentity"], "requests")
                    for r in rows] + [
            target(f"service requests per identity, in-sync sweep of {complete['identities']} listing every secret "
                   "(once per DEEP_CHECK_HOURS)", TARGET_PER_IDENTITY, complete["requestsPerIdentity"], "requests"),
            target(f"service requests per identity, in-sync sweep of {without['identities']} of which "
                   f"{certless} without a certificate", TARGET_PER_IDENTITY, without["requestsPerIdentity"],
                   "requests")] + [
            target(f"identities not converged after {r['identities']} due at once, neighbour "
                   f"{r['neighbourReadsPerMinute']} reads/min", 0, r["due"] - r["succeeded"] + r["sweepAfter"]["due"],
                   "identities") for r in throttled] + [
            target(f"product 429s with {throttled[0]['identities']} due at once, alone in the tenant", 0,
                   throttled[0]["graph429"]["product"], "responses")],
        "rows": rows,
        "growth": growth,
        "byRoute": {"runs": [f"{r['identities']}@{r['latencyMs']}ms" for r in rows]
                    + [f"{largest} listing every secret", f"{largest} due",
                       f"{without['identities']} ({certless} without a certificate)"],
                    "routes": routes_table([*tallies, complete_tally, due_tally, without_tally])},
        "completeListing": {
            "what": "the sweep that lists every secret to find identities without a certificate: at least once every "
                    "DEEP_CHECK_HOURS (the marker of the last one removed here), and whenever the lease blobs cannot "
                    "be listed; the sweeps in between read only the connection secrets of the index's names without "
                    "a certificate (nextSweepServiceRequests)",
            **complete},
        "withoutCertificate": {
            "what": f"{certless} federated identities (no certificate) bootstrapped through the product next to the "
                    f"{largest}, after the rows above: one read of a connection secret each",
            **without},
        "dueSweep": due_row,
        "throttledDue": {
            "what": f"all {largest} identities due at once (their deep check), fanned out as the sweep trigger "
                    "plans it (shared/core/fanout.py), reconciled through the product against the Graph stand-in's "
                    "key-credential read limit; first alone in the tenant, then with another app reading "
                    f"{NEIGHBOUR_READS_PER_MINUTE} a minute (and waiting out its own 429s)",
            "timeScale": f"time divided by {throttle_scale:g}: the stand-in allows 150 reads per "
                         f"{60 / throttle_scale:g} s instead of per 60 s, the fan-out plans 100 per "
                         f"{60 / throttle_scale:g} s; Retry-After and requeue delays shrink with them. The product's "
                         "fixed caps (60 s per wait, 120 s per queued run) are not reached at this scale; at the real "
                         "one a Retry-After of up to 60 s still fits them. realTimeEquivalentSeconds = wall x scale "
                         "while pacedBy is the fan-out",
            "queue": f"in memory, {QUEUE_CONCURRENCY} at a time, with the queue trigger's waiting budget and requeue "
                     "delays (Azurite's whole-second delays are too coarse once time is scaled)",
            "rows": throttled,
        },
        "seedFaithfulness": {**fidelity, "reconcileOfClone": reconciled},
        "productWarnings": warnings.to_json(),
        "notes": NOTES,
    }


def main(sizes: Sequence[int] = SIZES, repeats: int = 3, due: int = 100, concurrency: int = 8,
         results_dir: Path | None = None, stack: Stack | None = None, echo: bool = True,
         throttle_scale: float = THROTTLE_TIME_SCALE, certless: int = CERTLESS) -> dict[str, Any]:
    """Measure, write `sweep.json` and return it. `stack`: use that running (reset) stack (tests)."""
    if not sizes or min(sizes) < 2 or repeats < 1 or not 1 <= due < max(sizes) or throttle_scale < 1 or certless < 1:
        raise ValueError("sizes of at least 2 identities, repeats >= 1, 1 <= due < the largest size, a "
                         "throttle time scale of at least 1 and at least 1 identity without a certificate")
    from shared.adapters.storage import STORAGE_CONNECTION

    global _storage
    with in_process_stack(stack) as running, StorageCounter(os.environ[STORAGE_CONNECTION]) as storage:
        _storage = storage
        try:
            document = run(running, sizes, repeats, due, concurrency, throttle_scale, certless)
        finally:
            _storage = None
    return write_result(NAME, document, results_dir, echo=echo)


if __name__ == "__main__":
    main()
