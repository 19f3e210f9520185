"""Cold start: what a fresh Functions worker process pays before it answers.

Figures (each from fresh Python processes, min / median / max):

* `importFunctionApp`: `import function_app` (target <= 0.5 s), beside `import azure.functions`
  alone for reference (the floor every Python function app pays) and the job runtime alone
  (`jobRuntime`: what a job's process imports for `connection()` and the Exchange client);
* `statusFromStart`: a fresh process that imports `function_app`, indexes its functions, and calls
  the status handler (`identity`, GET /api/identities/{name}) for one bootstrapped identity, against
  the stand-ins running in another process (target <= 1.0 s). Measured two ways: from the first line
  of the child (`time.perf_counter()` at the very top, the brief's figure) and from the moment the
  parent spawned it (adds interpreter start-up). `statusBreakdown` splits it into importing
  `function_app`, importing what the first call imports lazily (SDKs, aiohttp, the product's
  modules), the first call itself (token, TLS handshakes, requests) and a second, warm call;
* `graphModel`: the Graph access design. msgraph-sdk's typed models import the model graph lazily on
  the first deserialisation (msgraph-sdk-python #904, #909): a fresh process that deserialises one
  `Application` with kiota's JsonParseNode, against the product's way (msgraph-core's middleware
  client and plain JSON: shared.adapters.graph + shared.adapters.directory.application_from_graph).

Each kind of child is run once untimed first, so that byte-code compilation is not measured.

    python -m bench coldstart        # or: python -m bench.coldstart
"""

from __future__ import annotations

import json
import ssl
import tempfile
import time
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from bench._common import RequestTally, child_env, run_python, summarize, target, write_result

NAME = "coldstart"
TARGET_IMPORT_SECONDS = 0.5
TARGET_STATUS_SECONDS = 1.0
IDENTITY = "coldstart-probe"

IMPORT_CHILD = """\
import time
t0 = time.perf_counter()
import {module}
elapsed = time.perf_counter() - t0
import json, sys
print(json.dumps({{"seconds": elapsed, "modules": len(sys.modules)}}))
"""

# argv: identity name, spawn time (time.time_ns() in the parent), optional file listing modules to
# import before the first call (breakdown runs), "twice" to time a second, warm call as well.
HANDLER_CHILD = """\
import time
t0 = time.perf_counter()
import asyncio, json, sys
import azure.functions as func
import function_app
t_import = time.perf_counter()
modules_after_import = set(sys.modules)
handlers = {f.get_function_name(): f.get_user_function() for f in function_app.app.get_functions()}
name, spawned_ns, preload, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
t_index = time.perf_counter()
preload_failed = []
if preload != "-":
    import importlib
    for module in open(preload).read().split():
        try:
            importlib.import_module(module)
        except Exception:
            preload_failed.append(module)
t_preload = time.perf_counter()
modules_before_call = set(sys.modules)

def request(method, body=None):
    data = json.dumps(body).encode() if body is not None else b""
    url = "http://localhost/api/identities" + ("" if method == "POST" else "/" + name)
    return func.HttpRequest(method=method, url=url, headers={"Content-Type": "application/json"} if data else {},
                            params={}, route_params={} if method == "POST" else {"name": name}, body=data)

class Output:  # what the host passes for a queue output binding (the continuation of a 202; unused here)
    def set(self, value):
        self.value = value

async def main():
    if mode == "bootstrap":
        response = await handlers["identities"](request("POST", {"name": name}), continuation=Output())
    else:
        response = await handlers["identity"](request("GET"), continuation=Output())
    t_response = time.perf_counter()
    t_response_ns = time.time_ns()
    t_second = None
    if mode == "twice":
        again = await handlers["identity"](request("GET"), continuation=Output())
        t_second = time.perf_counter() - t_response
        assert again.status_code == response.status_code
    from shared.platform import close_platforms
    await close_platforms()
    return response, t_response, t_response_ns, t_second

response, t_response, t_response_ns, t_second = asyncio.run(main())
body = json.loads(response.get_body() or b"null")
print(json.dumps({
    "status": response.status_code,
    "inSync": body.get("inSync") if isinstance(body, dict) else None,
    "result": body.get("result") if isinstance(body, dict) else None,
    "importSeconds": t_import - t0,
    "indexSeconds": t_index - t_import,
    "preloadSeconds": t_preload - t_index,
    "preloadFailed": preload_failed,
    "callSeconds": t_response - t_preload,
    "secondCallSeconds": t_second,
    "fromFirstLineSeconds": t_response - t0,
    "fromSpawnSeconds": (t_response_ns - spawned_ns) / 1e9,
    "modulesImportedByCall": [m for m in sys.modules if m not in modules_before_call],
    "modulesImportedAfterFunctionApp": len(set(sys.modules) - modules_after_import),
}))
"""

TYPED_MODEL_CHILD = """\
import time
t0 = time.perf_counter()
import json, sys
from kiota_serialization_json.json_parse_node import JsonParseNode
from msgraph.generated.models.application import Application
t_import = time.perf_counter()
modules = len(sys.modules)
document = json.loads(sys.argv[1])
app = JsonParseNode(document).get_object_value(Application)
t_done = time.perf_counter()
assert app.app_id == document["appId"] and len(app.key_credentials) == len(document["keyCredentials"])
print(json.dumps({"importSeconds": t_import - t0, "deserialiseSeconds": t_done - t_import,
                  "totalSeconds": t_done - t0, "modulesImportedByDeserialise": len(sys.modules) - modules}))
"""

RAW_JSON_CHILD = """\
import time
t0 = time.perf_counter()
import json, sys
from msgraph_core import GraphClientFactory
import shared.adapters.graph
from shared.adapters.directory import application_from_graph
t_import = time.perf_counter()
modules = len(sys.modules)
document = json.loads(sys.argv[1])
app = application_from_graph(document, owned=True)
t_done = time.perf_counter()
assert app.app_id == document["appId"] and len(app.key_credentials) == len(document["keyCredentials"])
print(json.dumps({"importSeconds": t_import - t0, "deserialiseSeconds": t_done - t_import,
                  "totalSeconds": t_done - t0, "modulesImportedByDeserialise": len(sys.modules) - modules}))
"""

# One application as Graph returns it for `$select` of the fields the product reads.
SAMPLE_APPLICATION: dict[str, Any] = {
    "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#applications/$entity",
    "id": "5f9a7a3e-3a0f-4b1e-9d1c-0c6b3c1f2a10",
    "appId": "0f4c8a52-8d2e-4a7c-b7a9-1d2e3f4a5b6c",
    "displayName": "Exchange automation: mailbox-reports",
    "uniqueName": "exo-automation-mailbox-reports",
    "signInAudience": "AzureADMyOrg",
    "tags": ["exo-automation-identities", "exo-automation-identity:mailbox-reports"],
    "keyCredentials": [{
        "keyId": "7c2f1e0a-5b4d-4c3e-8f2a-9b1c0d2e3f4a",
        "type": "AsymmetricX509Cert",
        "usage": "Verify",
        "startDateTime": "2025-01-01T00:00:00Z",
        "endDateTime": "2026-01-01T00:00:00Z",
        "customKeyIdentifier": "QTFCMkMzRDRFNUY2QTFCMkMzRDRFNUY2QTFCMkMzRDQ=",
        "displayName": "exo-automation mailbox-reports 0123456789abcdef",
    }],
    "requiredResourceAccess": [{
        "resourceAppId": "00000002-0000-0ff1-ce00-000000000000",
        "resourceAccess": [{"id": "dc50a0fb-09a3-484d-be87-e023b12c6440", "type": "Role"}],
    }],
}


def _series(runs: list[dict[str, Any]], key: str) -> dict[str, Any]:
    return summarize(r[key] for r in runs)


def _repeat(count: int, once: Callable[[], dict[str, Any]], warmup: bool) -> list[dict[str, Any]]:
    if warmup:
        once()  # untimed: byte-code compilation, OS file cache
    return [once() for _ in range(count)]


def measure_imports(runs: int, warmup: bool = True) -> dict[str, Any]:
    env = child_env()
    results: dict[str, Any] = {}
    # A job's process imports only the job runtime (connection record, Exchange client, job helper),
    # never the admin stack: measured apart (tests/unit/test_public_surface.py pins what it loads).
    for key, module in (("functionApp", "function_app"), ("azureFunctions", "azure.functions"),
                        ("jobRuntime", "shared.runtime.connection, shared.runtime.exchange, shared.runtime.jobs")):
        def once(module: str = module) -> dict[str, Any]:
            child = run_python(IMPORT_CHILD.format(module=module), env=env)
            return {**child.last_json(), "processWallSeconds": child.wall_seconds}

        measured = _repeat(runs, once, warmup)
        results[key] = {"module": module, "seconds": _series(measured, "seconds"),
                        "processWallSeconds": _series(measured, "processWallSeconds"),
                        "modulesLoaded": measured[-1]["modules"]}
    overhead = results["functionApp"]["seconds"]["median"] - results["azureFunctions"]["seconds"]["median"]
    results["functionAppOverAzureFunctionsSeconds"] = round(overhead, 4)
    return results


class _Control:
    """The stand-ins' control API in the other process (request counters)."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.base = env["DEVSTACK_CONTROL_URL"].rstrip("/")
        self.context = ssl.create_default_context(cafile=env["SSL_CERT_FILE"])

    def _call(self, method: str, path: str) -> Any:
        request = urllib.request.Request(self.base + path, method=method)
        with urllib.request.urlopen(request, context=self.context, timeout=30) as response:
            raw = response.read()
        return json.loads(raw) if raw else None

    def reset_requests(self) -> None:
        self._call("DELETE", "/control/requests")

    def requests(self) -> RequestTally:
        return RequestTally.of(self._call("GET", "/control/requests")["value"])


def _handler_child(env: Mapping[str, str], mode: str, preload: Path | None = None) -> dict[str, Any]:
    child = run_python(HANDLER_CHILD, env=env,
                       args=[IDENTITY, str(time.time_ns()), str(preload) if preload else "-", mode])
    result: dict[str, Any] = child.last_json()
    result["processWallSeconds"] = child.wall_seconds
    result["stderr"] = child.stderr
    expected = (200, 201) if mode == "bootstrap" else (200,)
    if result["status"] not in expected:
        raise RuntimeError(f"the {mode} call answered {result['status']}: {child.stdout}")
    return result


def measure_status(runs: int, breakdown_runs: int, state_dir: Path, warmup: bool = True) -> dict[str, Any]:
    from devstack.process import start_stack_process

    # With Azurite: the bootstrap holds its identity's lease in the Functions storage account.
    stack_env, stop = start_stack_process(state_dir / "devstack")
    try:
        env = child_env(stack_env)
        control = _Control(stack_env)
        bootstrap = _handler_child(env, "bootstrap")  # not timed: the identity the status calls look at
        if bootstrap["result"] != "Succeeded":
            raise RuntimeError(f"bootstrapping {IDENTITY!r} for the status measurement failed: {bootstrap}")

        tallies: list[RequestTally] = []

        def once() -> dict[str, Any]:
            control.reset_requests()
            result = _handler_child(env, "status")
            tallies.append(control.requests())
            return result

        measured = _repeat(runs, once, warmup)
        tallies = tallies[-runs:]  # not the untimed warm-up run
        lazily_imported = measured[-1]["modulesImportedByCall"]
        preload = state_dir / "lazy-modules.txt"
        preload.write_text("\n".join(lazily_imported) + "\n")
        split = _repeat(breakdown_runs, lambda: _handler_child(env, "twice", preload), warmup)
        profiled = _handler_child({**env, "PYTHONPROFILEIMPORTTIME": "1"}, "status")
    finally:
        stop()

    status = {
        "identity": IDENTITY,
        "stack": "python -m devstack up in a separate process (with Azurite); one identity bootstrapped first",
        "fromFirstLineSeconds": _series(measured, "fromFirstLineSeconds"),
        "fromSpawnSeconds": _series(measured, "fromSpawnSeconds"),
        "processWallSeconds": _series(measured, "processWallSeconds"),
        "importFunctionAppSeconds": _series(measured, "importSeconds"),
        "indexFunctionsSeconds": _series(measured, "indexSeconds"),
        "firstCallSeconds": _series(measured, "callSeconds"),
        "inSync": measured[-1]["inSync"],
        "requestsPerStatus": {"service": summarize((t.service for t in tallies), 0),
                              "token": summarize((t.total("token") for t in tallies), 0),
                              "byRoute": tallies[-1].rows if tallies else []},
        "modulesImportedByFirstCall": len(lazily_imported),
    }
    breakdown = {
        "description": "the same call with the modules it imports lazily imported first, timed apart",
        "importFunctionAppSeconds": _series(split, "importSeconds"),
        "indexFunctionsSeconds": _series(split, "indexSeconds"),
        "lazyImportsSeconds": _series(split, "preloadSeconds"),
        "firstCallWithoutImportsSeconds": _series(split, "callSeconds"),
        "secondCallSeconds": _series(split, "secondCallSeconds"),
        "fromFirstLineSeconds": _series(split, "fromFirstLineSeconds"),
        "modulesStillImportedByCall": split[-1]["modulesImportedByCall"][:20],
        "preloadFailed": split[-1]["preloadFailed"][:20],
        "lazyImportsByPackageMs": {
            "description": "import time (self, ms) of the modules the first call imports, by package, from "
                           "one run under -X importtime (which inflates it; compare the shares)",
            "packages": _lazy_import_times(profiled["stderr"], set(lazily_imported)),
        },
    }
    return {"status": status, "breakdown": breakdown}


def _package_of(module: str) -> str:
    parts = module.split(".")
    if parts[0] == "azure" and len(parts) > 1:
        return ".".join(parts[:3] if parts[1] in ("keyvault", "identity") and len(parts) > 2 else parts[:2])
    return parts[0]


def _lazy_import_times(importtime_log: str, lazy: set[str], limit: int = 15) -> dict[str, float]:
    """Sum the self times (lines of `-X importtime`) of the lazily imported modules, by package."""
    totals: dict[str, float] = {}
    for line in importtime_log.splitlines():
        fields = line.removeprefix("import time:").split("|")
        if not line.startswith("import time:") or len(fields) != 3 or "cumulative" in line:
            continue
        name = fields[2].strip()
        if name in lazy:
            package = _package_of(name)
            totals[package] = totals.get(package, 0.0) + int(fields[0]) / 1000
    ranked = sorted(totals.items(), key=lambda item: -item[1])
    top = {package: round(ms, 1) for package, ms in ranked[:limit]}
    if len(ranked) > limit:
        top["(others)"] = round(sum(ms for _, ms in ranked[limit:]), 1)
    top["(total)"] = round(sum(totals.values()), 1)
    return top


def measure_graph_model(runs: int, warmup: bool = True) -> dict[str, Any]:
    env = child_env()
    document = json.dumps(SAMPLE_APPLICATION)
    results: dict[str, Any] = {}
    for key, code in (("typedModel", TYPED_MODEL_CHILD), ("rawJson", RAW_JSON_CHILD)):
        def once(code: str = code) -> dict[str, Any]:
            result: dict[str, Any] = run_python(code, env=env, args=[document]).last_json()
            return result

        measured = _repeat(runs, once, warmup)
        results[key] = {"importSeconds": _series(measured, "importSeconds"),
                        "deserialiseSeconds": _series(measured, "deserialiseSeconds"),
                        "totalSeconds": _series(measured, "totalSeconds"),
                        "modulesImportedByDeserialise": measured[-1]["modulesImportedByDeserialise"]}
    results["typedModel"]["description"] = ("msgraph-sdk typed model: import kiota JsonParseNode and "
                                            "msgraph.generated.models.application.Application, deserialise one "
                                            "application")
    results["rawJson"]["description"] = ("the product's design: import msgraph-core (GraphClientFactory) and "
                                         "shared.adapters.graph, read the same application as JSON into the product's "
                                         "own value (shared.adapters.directory.application_from_graph)")
    results["typedMinusRawSeconds"] = round(results["typedModel"]["totalSeconds"]["median"]
                                            - results["rawJson"]["totalSeconds"]["median"], 4)
    return results


def main(runs: int = 7, breakdown_runs: int = 3, model_runs: int = 5, results_dir: Path | None = None,
         echo: bool = True, warmup: bool = True) -> dict[str, Any]:
    """Measure, write `coldstart.json` and return it. The smoke test passes runs=1, warmup=False."""
    if min(runs, breakdown_runs, model_runs) < 1:
        raise ValueError("every run count must be at least 1")
    imports = measure_imports(runs, warmup)
    with tempfile.TemporaryDirectory(prefix="bench-coldstart-") as state_dir:
        status = measure_status(runs, breakdown_runs, Path(state_dir), warmup)
    model = measure_graph_model(model_runs, warmup)
    status_median = status["status"]["fromFirstLineSeconds"]["median"]
    spawn_median = status["status"]["fromSpawnSeconds"]["median"]
    document = {
        "runs": {"import": runs, "status": runs, "statusBreakdown": breakdown_runs, "graphModel": model_runs,
                 "untimedWarmUpRunFirst": warmup},
        "targets": [
            target("import function_app in a fresh process (median)", TARGET_IMPORT_SECONDS,
                   imports["functionApp"]["seconds"]["median"], "s"),
            target("fresh process to first completed status, from its first line (median)", TARGET_STATUS_SECONDS,
                   status_median, "s"),
            target("fresh process to first completed status, from spawn (median)", TARGET_STATUS_SECONDS,
                   spawn_median, "s"),
        ],
        "importFunctionApp": imports,
        "statusFromStart": status["status"],
        "statusBreakdown": status["breakdown"],
        "graphModel": model,
    }
    return write_result(NAME, document, results_dir, echo=echo)


if __name__ == "__main__":
    main()
