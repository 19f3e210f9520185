"""What `connection(name)` costs a job: cached latency, and Key Vault requests when it is not cached.

Against the in-process stand-ins, after one bootstrap:

- *cached*: `iterations` calls of `await connection(name)` on one event loop (as in a Functions
  worker), settings read from the environment each call as a job does; p50/p99 in microseconds.
- *cold fetch*: the first call on a new loop (new cache). Key Vault requests are counted by the
  stand-in; target ≤ 2 (the connection secret and the PFX at the published version). The SDK keeps
  the vault's authentication challenge per process and the bootstrap already paid it here, as any
  warm worker has.
- *cold process*: the same first call in a fresh interpreter, which also pays that one
  unauthenticated challenge round trip (and the imports).
- *TTL refresh*: with `CONNECTION_CACHE_SECONDS=0`, a call after the first re-reads only the
  record (the certificate version is unchanged, so no PFX and no new credential).
- *federated cold*: an identity whose app trusts the stand-ins' managed identity (issue #16), used
  with `CONNECTION_CREDENTIAL=federated` on a new loop: the first `connection()` reads only the record
  (target ≤ 1 Key Vault request), and its first Exchange token costs the workload's assertion (the
  managed identity's token for `api://AzureADTokenExchange`) and the app's token (target ≤ 2 token
  requests). The Key Vault read's own access token is counted apart, as it is for certificates.

    python -m bench credentials        # or: python -m bench.credentials
"""

from __future__ import annotations

import asyncio
import dataclasses
import statistics
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench._common import RequestTally, child_env, in_process_stack, run_python, target, write_result

if TYPE_CHECKING:
    from devstack import Stack

NAME = "credentials"
IDENTITY = "bench-credentials"
TARGET_COLD_KEY_VAULT_REQUESTS = 2
FEDERATED_IDENTITY = "bench-federated"
TARGET_FEDERATED_KEY_VAULT_REQUESTS = 1
TARGET_FEDERATED_SIGN_IN_TOKEN_REQUESTS = 2

_COLD_PROCESS = """
import asyncio, json, sys, time
started = time.perf_counter()
from shared.runtime.connection import close_connections, connection

async def main():
    try:
        first = time.perf_counter()
        found = await connection(sys.argv[1])
        return found.thumbprint, time.perf_counter() - first
    finally:
        await close_connections()

thumbprint, call = asyncio.run(main())
print(json.dumps({"thumbprint": thumbprint, "callSeconds": call, "processSeconds": time.perf_counter() - started}))
"""


def _keyvault(stack: Stack) -> int:
    return sum(r["count"] for r in RequestTally.of(stack.world.counter.snapshot()).rows if r["service"] == "keyvault")


def _token_requests(stack: Stack) -> int:
    return sum(r["count"] for r in RequestTally.of(stack.world.counter.snapshot()).rows
               if r["service"] == "entra" and r["method"] in ("GET", "POST")
               and (r["route"].endswith("/msi/token") or r["route"].endswith("/oauth2/v2.0/token")))


def _percentile(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


async def _bootstrap() -> None:
    from shared.platform import Platform
    from shared.service import bootstrap
    from shared.settings import Settings

    platform = Platform.create(Settings.from_environment())
    try:
        result = await bootstrap(platform, {"name": IDENTITY})
    finally:
        await platform.aclose()
    if not result.succeeded:
        raise RuntimeError(f"bootstrap of {IDENTITY!r} failed: the figures would be meaningless")


async def _federated_cold(stack: Stack) -> dict[str, Any]:
    """Bootstrap an identity trusting the platform's managed identity, then a cold federated connection."""
    from bench._common import patched_environ
    from shared.platform import Platform
    from shared.runtime.connection import close_connections, connection
    from shared.service import bootstrap
    from shared.settings import Settings

    principal = stack.world.platform.object_id
    issuer = f"{stack.url('entra')}/{stack.world.tenant_id}/v2.0"
    with patched_environ({"ALLOWED_MANAGED_IDENTITIES": principal, "CONNECTION_CREDENTIAL": "federated"}):
        platform = Platform.create(Settings.from_environment())
        try:
            result = await bootstrap(platform, {"name": FEDERATED_IDENTITY, "credentials": [
                {"type": "certificate"}, {"type": "federated", "issuer": issuer, "subject": principal}]})
        finally:
            await platform.aclose()
        if not result.succeeded:
            raise RuntimeError(f"bootstrap of {FEDERATED_IDENTITY!r} failed: the figures would be meaningless")
        try:
            stack.world.counter.reset()
            found = await connection(FEDERATED_IDENTITY)
            vault_reads, vault_tokens = _keyvault(stack), _token_requests(stack)
            stack.world.counter.reset()
            await found.credential.get_token(found.exchange_scope)
            sign_in_tokens = _token_requests(stack)
        finally:
            await close_connections()
    return {"keyVaultRequests": vault_reads, "tokenRequestsForKeyVault": vault_tokens,
            "signInTokenRequests": sign_in_tokens, "certificateRead": found.certificate is not None}


async def _in_loop(stack: Stack, iterations: int) -> dict[str, Any]:
    from shared.runtime.connection import close_connections, connection
    from shared.settings import Settings

    try:
        stack.world.counter.reset()
        started = time.perf_counter()
        cold = await connection(IDENTITY)
        cold_seconds = time.perf_counter() - started
        cold_requests = _keyvault(stack)

        stack.world.counter.reset()
        samples: list[float] = []
        for _ in range(iterations):
            began = time.perf_counter_ns()
            found = await connection(IDENTITY)
            samples.append((time.perf_counter_ns() - began) / 1000)
            assert found is cold
        cached_requests = _keyvault(stack)

        explicit = Settings.from_environment()
        explicit_samples: list[float] = []
        for _ in range(iterations):
            began = time.perf_counter_ns()
            await connection(IDENTITY, settings=explicit)
            explicit_samples.append((time.perf_counter_ns() - began) / 1000)

        no_ttl = dataclasses.replace(explicit, connection_cache_seconds=0.0)
        await connection(IDENTITY, settings=no_ttl)
        stack.world.counter.reset()
        refreshed = await connection(IDENTITY, settings=no_ttl)
        ttl_requests = _keyvault(stack)
        assert refreshed.certificate.version == cold.certificate.version
    finally:
        await close_connections()

    def series(values: list[float]) -> dict[str, Any]:
        return {"calls": len(values), "p50Us": round(_percentile(values, 50), 2),
                "p99Us": round(_percentile(values, 99), 2), "maxUs": round(max(values), 2)}

    return {
        "thumbprint": cold.thumbprint,
        "coldFetch": {"keyVaultRequests": cold_requests, "wallMs": round(cold_seconds * 1000, 2)},
        "cached": {**series(samples), "keyVaultRequests": cached_requests,
                   "note": "settings read from the environment on each call, as a job does"},
        "cachedWithSettingsObject": series(explicit_samples),
        "ttlRefreshSameVersion": {"keyVaultRequests": ttl_requests},
    }


def _cold_process(stack: Stack) -> dict[str, Any]:
    stack.world.counter.reset()
    child = run_python(_COLD_PROCESS, env=child_env(stack.settings()), args=[IDENTITY])
    result = child.last_json()
    return {"keyVaultRequests": _keyvault(stack), "callMs": round(result["callSeconds"] * 1000, 2),
            "processMs": round(result["processSeconds"] * 1000, 2),
            "note": "includes the one unauthenticated challenge request a new process makes to the vault"}


def run(stack: Stack, iterations: int) -> dict[str, Any]:
    asyncio.run(_bootstrap())
    measured = asyncio.run(_in_loop(stack, iterations))
    measured["coldProcess"] = _cold_process(stack)
    measured["federatedCold"] = asyncio.run(_federated_cold(stack))
    return {
        "identity": IDENTITY,
        "setup": {"stack": "in-process stand-ins (same interpreter)", "iterations": iterations},
        "targets": [
            target("Key Vault requests for a cold fetch (warm process)", TARGET_COLD_KEY_VAULT_REQUESTS,
                   measured["coldFetch"]["keyVaultRequests"], "requests"),
            target("Key Vault requests for a cached connection()", 0, measured["cached"]["keyVaultRequests"],
                   "requests"),
            target("Key Vault requests for a cold federated connection()", TARGET_FEDERATED_KEY_VAULT_REQUESTS,
                   measured["federatedCold"]["keyVaultRequests"], "requests"),
            target("token requests for a federated connection's first Exchange token",
                   TARGET_FEDERATED_SIGN_IN_TOKEN_REQUESTS, measured["federatedCold"]["signInTokenRequests"],
                   "requests"),
        ],
        **measured,
    }


def main(iterations: int = 1000, results_dir: Path | None = None, stack: Stack | None = None,
         echo: bool = True) -> dict[str, Any]:
    """Measure, write `credentials.json`, print and return it. `stack`: use that running stack (tests)."""
    if iterations < 2:
        raise ValueError("iterations must be at least 2")
    with in_process_stack(stack) as running:
        document = run(running, iterations)
    return write_result(NAME, document, results_dir, echo=echo)


if __name__ == "__main__":
    main()
