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

Faithfulness of the seeding is asserted, not assumed: after seeding, a sweep must find nothing due,
and a full reconcile of a clone must change nothing.

    python -m bench sweep        # or: python -m bench.sweep
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench import seed
from bench._common import RequestTally, WarningLog, in_process_stack, routes_table, summarize, target, write_result

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
    "Identities without a certificate keep their registry entry on their connection secret, so the sweep also "
    "lists secrets (concurrently with the certificates). Key Vault's secret listing holds every certificate's "
    "backing secret and every identity's record as well: ceil(2N/25) pages for N certificate identities, the "
    "largest share of the cost.",
]


def identity_name(index: int) -> str:
    return f"fleet-{index:04d}"


def _platform(stack: Stack) -> Platform:
    from shared.platform import Platform
    from shared.settings import Settings

    return Platform.create(Settings.from_environment(), clock=stack.world.clock.now)


def _reasons(due: dict[str, list[str]]) -> dict[str, int]:
    return dict(sorted(Counter(r for reasons in due.values() for r in reasons).items()))


async def _one_sweep(stack: Stack, platform: Platform) -> tuple[float, Any, RequestTally]:
    from shared.sweep import sweep

    stack.world.counter.reset()
    started = time.perf_counter()
    result = await sweep(platform)
    elapsed = time.perf_counter() - started
    return elapsed, result, RequestTally.of(stack.world.counter.snapshot())


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
        stack.world.counter.reset()
        result = await reconcile(platform, name, operation="reconcile")
    finally:
        await platform.aclose()
    tally = RequestTally.of(stack.world.counter.snapshot())
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

        stack.world.counter.reset()
        started = time.perf_counter()
        outcomes = await asyncio.gather(*(one(n) for n in sorted(found)))
        reconcile_wall = time.perf_counter() - started
        tally = RequestTally.of(stack.world.counter.snapshot())
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


def _bootstrap_template(stack: Stack) -> None:
    seed.bootstrap_template(stack, TEMPLATE)


def run(stack: Stack, sizes: Sequence[int], repeats: int, due: int, concurrency: int) -> dict[str, Any]:
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
        due_row = asyncio.run(_due_scenario(stack, largest, due, repeats, concurrency))

    tallies = [r.pop("_tally") for r in rows]
    due_tally = due_row.pop("_tally")
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
            "requestCounting": "service = Graph + Key Vault + Exchange per sweep; Entra token requests apart",
            "templateBootstrapSeconds": round(bootstrap_seconds, 3),
            "cloneSeconds": round(seed_seconds, 3),
        },
        "targets": [target(f"service requests per identity, in-sync sweep of {r['identities']} at "
                           f"{r['latencyMs']} ms", TARGET_PER_IDENTITY, r["requestsPerIdentity"], "requests")
                    for r in rows],
        "rows": rows,
        "growth": growth,
        "byRoute": {"runs": [f"{r['identities']}@{r['latencyMs']}ms" for r in rows] + [f"{largest} due"],
                    "routes": routes_table([*tallies, due_tally])},
        "dueSweep": due_row,
        "seedFaithfulness": {**fidelity, "reconcileOfClone": reconciled},
        "productWarnings": warnings.to_json(),
        "notes": NOTES,
    }


def main(sizes: Sequence[int] = SIZES, repeats: int = 3, due: int = 100, concurrency: int = 8,
         results_dir: Path | None = None, stack: Stack | None = None, echo: bool = True) -> dict[str, Any]:
    """Measure, write `sweep.json` and return it. `stack`: use that running (reset) stack (tests)."""
    if not sizes or min(sizes) < 2 or repeats < 1 or not 1 <= due < max(sizes):
        raise ValueError("sizes of at least 2 identities, repeats >= 1 and 1 <= due < the largest size")
    with in_process_stack(stack) as running:
        document = run(running, sizes, repeats, due, concurrency)
    return write_result(NAME, document, results_dir, echo=echo)


if __name__ == "__main__":
    main()
