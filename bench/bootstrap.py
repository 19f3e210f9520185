"""Service requests and wall time per bootstrap, against the in-process stand-ins.

For `iterations` distinct identities: reset the stand-ins' request counters, run
`shared.service.bootstrap` through a fresh `Platform`, read the counters. Then the same again for
each identity (a repeat, in-sync bootstrap: reads only, no writes expected).

Requests are split as the target counts them: *service* requests (Graph, Key Vault, Exchange),
*token* requests (Entra: managed identity, and the sign-in proof of the new certificate) and Key Vault
*polls* of the pending certificate operation. Target: at most 15 service requests per bootstrap.

The first bootstrap in a process (`firstInProcess`) pays three requests a warm one does not: Key
Vault's unauthenticated first request (the SDK learns the vault's challenge from its 401; the
certificates client's is shared with the secrets client, and no SDK option avoids it), the tenant's
app management policy and the Exchange Online service principal's id (each read once per process);
a warm Functions worker pays them once, a cold one on its first call. The product's modules and
SDKs are imported before the first timed bootstrap (bench/coldstart measures import costs), so
wall times are request work only.

Then, under a realistic profile (25 ms per request, 2 s certificate issuance, 20 s key replication),
the time from `POST /api/identities` to a job's first successful Exchange call, with its target
("replication delay + 3 s") beside it (bench/first_call.py).

    python -m bench bootstrap        # or: python -m bench.bootstrap
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench._common import RequestTally, WarningLog, in_process_stack, routes_table, summarize, target, write_result
from bench.first_call import measure as measure_first_call

if TYPE_CHECKING:
    from devstack import Stack

NAME = "bootstrap"
TARGET_SERVICE_REQUESTS = 15


async def _bootstrap_each(stack: Stack, names: list[str]) -> list[tuple[float, Any, RequestTally]]:
    """Bootstrap each name in turn on one Platform, as a Functions host does (one per process)."""
    from shared.platform import Platform
    from shared.service import bootstrap
    from shared.settings import Settings

    platform = Platform.create(Settings.from_environment())
    runs = []
    try:
        for name in names:
            stack.world.counter.reset()
            started = time.perf_counter()
            result = await bootstrap(platform, {"name": name})
            elapsed = time.perf_counter() - started
            runs.append((elapsed, result, RequestTally.of(stack.world.counter.snapshot())))
    finally:
        await platform.aclose()
    return runs


async def _load_product() -> None:
    """Create and close a Platform without a request: the SDK imports it does lazily are then not timed."""
    from shared.platform import Platform
    from shared.settings import Settings

    await Platform.create(Settings.from_environment()).aclose()


def _measure(stack: Stack, names: list[str]) -> dict[str, Any]:
    tallies: list[RequestTally] = []
    walls: list[float] = []
    changed: list[bool] = []
    actions: list[list[str]] = []
    with WarningLog() as warnings:
        for name, (elapsed, result, tally) in zip(names, asyncio.run(_bootstrap_each(stack, names)), strict=True):
            if not result.succeeded:
                reason = result.error.reason if result.error else "Failed"
                raise RuntimeError(f"bootstrap of {name!r} did not succeed ({reason}): the figures would be "
                                   f"meaningless; executed {[o.action.kind for o in result.executed]}")
            tallies.append(tally)
            walls.append(elapsed)
            changed.append(bool(result.changed))
            actions.append([o.action.kind for o in result.executed])
    service = [t.service for t in tallies]
    return {
        "identities": names,
        "serviceRequests": summarize(service, 0),
        "tokenRequests": summarize((t.total("token") for t in tallies), 0),
        "keyVaultPendingPolls": summarize((t.total("poll") for t in tallies), 0),
        "writes": summarize((t.writes for t in tallies), 0),
        "wallSeconds": summarize(walls),
        "firstInProcess": {"serviceRequests": service[0], "wallSeconds": round(walls[0], 4)},
        "warm": {"serviceRequests": summarize(service[1:], 0), "wallSeconds": summarize(walls[1:])},
        "byService": [t.by_service() for t in tallies],
        "byRoute": routes_table(tallies),
        "changed": changed,
        "executedActions": actions[0] if len(set(map(tuple, actions))) == 1 else actions,
        "productWarnings": warnings.to_json(),
    }


def run(iterations: int, stack: Stack, realistic: bool = True) -> dict[str, Any]:
    from shared.settings import Settings

    settings = Settings.from_environment()
    names = [f"bench-{i + 1}" for i in range(iterations)]
    asyncio.run(_load_product())
    first = _measure(stack, names)
    repeat = _measure(stack, names)
    repeat["readOnly"] = repeat["writes"]["max"] == 0
    repeat["inSync"] = not any(repeat["changed"])
    first_call = measure_first_call(stack) if realistic else None
    document: dict[str, Any] = {
        "iterations": iterations,
        "setup": {
            "stack": "in-process stand-ins (same interpreter: wall times include the stand-ins' own work)",
            "platform": "one Platform (credential, clients) for all bootstraps of a measurement, as a "
                        "Functions host keeps one per process; the first bootstrap also pays the process's "
                        "first-use costs (Key Vault's unauthenticated first request per client, the Exchange "
                        "service principal lookup). The product's modules and SDKs are imported before the "
                        "first timed bootstrap (see bench/coldstart for import costs)",
            "verifySignIn": settings.verify_sign_in,
            "requestCounting": "service = Graph + Key Vault + Exchange; token (Entra) and Key Vault "
                               "pending polls counted apart",
        },
        "targets": [
            target("service requests per bootstrap (max over iterations)", TARGET_SERVICE_REQUESTS,
                   first["serviceRequests"]["max"], "requests"),
            target("service requests per bootstrap (warm process, max)", TARGET_SERVICE_REQUESTS,
                   first["warm"]["serviceRequests"]["max"], "requests"),
            target("writes by a repeated (in-sync) bootstrap", 0, repeat["writes"]["max"], "requests"),
        ],
        "bootstrap": first,
        "repeat": repeat,
    }
    if first_call is not None:
        document["targets"].append(target(f"POST to a job's first successful Exchange call ({first_call['target']})",
                                          first_call["targetSeconds"], first_call["postToFirstExchangeCallSeconds"],
                                          "seconds"))
        document["firstExchangeCall"] = first_call
    return document


def main(iterations: int = 5, results_dir: Path | None = None, stack: Stack | None = None,
         echo: bool = True, realistic: bool = True) -> dict[str, Any]:
    """Measure, write `bootstrap.json` and return it. `stack`: use that running stack (tests).
    `realistic`: also measure POST → first Exchange call under the realistic profile (~25 s)."""
    if iterations < 1:
        raise ValueError("iterations must be at least 1")
    with in_process_stack(stack) as running:
        document = run(iterations, running, realistic)
    return write_result(NAME, document, results_dir, echo=echo)


if __name__ == "__main__":
    main()
