"""Service requests and wall time of the doctor (GET /api/health, `python -m shared doctor`) by fleet size.

One identity is bootstrapped through the product, then cloned into the stand-ins' state (bench/seed.py)
up to each size. For each size, with a warm platform credential (as a Functions worker keeps one), the
doctor runs `repeats` times with the request counters reset. Target: the cost does not depend on the
number of identities except for the registry's Key Vault listings (25 certificates a page; every secret,
two more pages per 25 certificate identities, until a sweep has recorded a complete secret listing), and
the doctor writes nothing. `afterSweep`: one run once a sweep has recorded it, when identities without a
certificate are found through the lease blobs' names instead. The Functions storage is Azurite: its
listings (the storage check's two, the lease blobs') are not counted by the stand-ins.

    python -m bench doctor        # or: python -m bench.doctor
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench import seed
from bench._common import RequestTally, in_process_stack, routes_table, summarize, target, write_result

if TYPE_CHECKING:
    from devstack import Stack

NAME = "doctor"
SIZES = (1, 100)
TEMPLATE = "fleet-0000"
FIXED_REQUEST_LIMIT = 12  # Graph reads and Key Vault's challenge and one page of secrets, per run


def identity_name(index: int) -> str:
    return f"fleet-{index:04d}"


async def _after_sweep(stack: Stack) -> dict[str, Any]:
    """One doctor run after a sweep has listed every secret and recorded it, so the registry's identities without a
    certificate are found through the lease blobs' names (none here: every name has a certificate)."""
    from shared.adapters.credentials import platform_credential
    from shared.doctor_probes import run_doctor
    from shared.platform import Platform
    from shared.settings import Settings
    from shared.sweep import sweep

    platform = Platform.create(Settings.from_environment(), clock=stack.world.clock.now)
    try:
        await sweep(platform)
    finally:
        await platform.aclose()
    credential = platform_credential(Settings.from_environment())
    try:
        await run_doctor(credential=credential)
        stack.world.counter.reset()
        await run_doctor(credential=credential)
    finally:
        await credential.close()
    tally = RequestTally.of(stack.world.counter.snapshot())
    return {"serviceRequests": tally.service, "byService": tally.by_service()}


def _forget_complete_listing() -> None:
    """The next size starts as a fresh deployment: no sweep has recorded a complete secret listing yet."""
    from azure.core.exceptions import ResourceNotFoundError
    from azure.storage.blob import BlobClient

    from shared.adapters.storage import STORAGE_CONNECTION
    from shared.lease import LEASE_CONTAINER, SECRETS_LISTED_MARKER

    with BlobClient.from_connection_string(os.environ[STORAGE_CONNECTION], LEASE_CONTAINER,
                                           SECRETS_LISTED_MARKER) as marker, contextlib.suppress(ResourceNotFoundError):
        marker.delete_blob()


async def _runs(stack: Stack, size: int, repeats: int) -> dict[str, Any]:
    from shared.adapters.credentials import platform_credential
    from shared.doctor_probes import run_doctor
    from shared.settings import Settings

    credential = platform_credential(Settings.from_environment())
    try:
        await run_doctor(credential=credential)  # warms the credential's token cache, as a running worker has
        seconds, tallies, statuses = [], [], set()
        for _ in range(repeats):
            stack.world.counter.reset()
            started = time.perf_counter()
            document = await run_doctor(credential=credential)
            seconds.append(time.perf_counter() - started)
            tallies.append(RequestTally.of(stack.world.counter.snapshot()))
            statuses.add(document["status"])
    finally:
        await credential.close()
    tally = tallies[-1]
    # The registry listings: certificates, and secrets (identities without a certificate keep their entry on
    # their connection secret; each certificate identity has two secrets: the backing secret and its record).
    pages = math.ceil(size / 25) + math.ceil(2 * size / 25)
    return {"identities": size, "serviceRequests": tally.service, "registryPages": pages,
            "fixedRequests": tally.service - pages, "tokenRequests": tally.total("token"), "writes": tally.writes,
            "byService": tally.by_service(), "wallSeconds": summarize(seconds), "doctorStatus": sorted(statuses),
            "_tally": tally}


def run(stack: Stack, sizes: Sequence[int], repeats: int) -> dict[str, Any]:
    stack.world.services["keyvault"].purge_protection = True  # as infra/ deploys the vault
    seed.bootstrap_template(stack, TEMPLATE)
    template = seed.template_of(stack, TEMPLATE)
    seeded, rows = 1, []
    for size in sorted(sizes):
        seed.clone(stack, template, [identity_name(i) for i in range(seeded, size)])
        seeded = max(seeded, size)
        _forget_complete_listing()
        row = asyncio.run(_runs(stack, size, repeats))
        row["afterSweep"] = asyncio.run(_after_sweep(stack))
        rows.append(row)
    tallies = [row.pop("_tally") for row in rows]
    growth = rows[-1]["serviceRequests"] - rows[0]["serviceRequests"]
    pages = rows[-1]["registryPages"] - rows[0]["registryPages"]
    return {
        "setup": {"stack": "in-process stand-ins; identities cloned from one bootstrapped through the product",
                  "credential": "one warm platform credential (token requests are reported apart)",
                  "storage": "Azurite, not counted by the stand-ins (the storage check's listings, the lease blobs')",
                  "repeats": repeats},
        "targets": [
            target(f"requests beyond the registry pages, {rows[0]['identities']} → {rows[-1]['identities']} "
                   "identities", 0, growth - pages, "requests"),
            *[target(f"fixed service requests per run at {r['identities']} identities", FIXED_REQUEST_LIMIT,
                     r["fixedRequests"], "requests") for r in rows],
            *[target(f"writes per run at {r['identities']} identities", 0, r["writes"], "requests") for r in rows],
        ],
        "rows": rows,
        "byRoute": {"runs": [str(r["identities"]) for r in rows], "routes": routes_table(tallies)},
    }


def main(sizes: Sequence[int] = SIZES, repeats: int = 3, results_dir: Path | None = None,
         stack: Stack | None = None, echo: bool = True) -> dict[str, Any]:
    """Measure, write `doctor.json` and return it. `stack`: use that running (reset) stack (tests)."""
    if not sizes or min(sizes) < 1 or repeats < 1:
        raise ValueError("sizes of at least 1 identity and repeats >= 1")
    with in_process_stack(stack) as running:
        document = run(running, sizes, repeats)
    return write_result(NAME, document, results_dir, echo=echo)


if __name__ == "__main__":
    main()
