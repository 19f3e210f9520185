"""Issue: `function_app` indexes every function with the bindings the host needs.

In the v2 programming model an import error, or a decorator that fails at indexing, silently
leaves "0 functions loaded": these tests are the guard. A new function means a new row in
FUNCTIONS.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.integration.helpers import registered_functions

ROOT = Path(__file__).resolve().parents[2]
ALL_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]
STORAGE = "AzureWebJobsStorage"


def http(route: str) -> list[dict[str, Any]]:
    return [{"direction": "IN", "type": "httpTrigger", "name": "req", "route": route, "methods": ALL_METHODS,
             "authLevel": "FUNCTION"},
            {"direction": "OUT", "type": "http", "name": "$return"}]


# The write routes hand a 202's continuation to the reconcile queue through an output binding: the host then
# tells its own queue listener to poll at once.
CONTINUATION = {"direction": "OUT", "type": "queue", "name": "continuation", "queueName": "%RECONCILE_QUEUE%",
                "connection": STORAGE}

# function name -> its bindings (each expected binding must be present with at least these fields).
FUNCTIONS: dict[str, list[dict[str, Any]]] = {
    "identities": [*http("identities"), CONTINUATION],
    "identity": [*http("identities/{name}"), CONTINUATION],
    "rotate_identity": [*http("identities/{name}/rotate"), CONTINUATION],
    "operation_status": http("operations/{operationId}"),
    "status_page": http("status"),
    "health": http("health"),
    "sweep_identities": [
        {"direction": "IN", "type": "timerTrigger", "name": "timer", "schedule": "%SWEEP_SCHEDULE%",
         "runOnStartup": False},
    ],
    "reconcile_identity": [
        {"direction": "IN", "type": "queueTrigger", "name": "message", "queueName": "%RECONCILE_QUEUE%",
         "connection": STORAGE},
    ],
    "record_poisoned_reconcile": [
        {"direction": "IN", "type": "queueTrigger", "name": "message", "queueName": "%RECONCILE_QUEUE%-poison",
         "connection": STORAGE},
    ],
    "mailbox_report": [
        {"direction": "IN", "type": "timerTrigger", "name": "timer", "schedule": "%MAILBOX_REPORT_SCHEDULE%",
         "runOnStartup": False, "useMonitor": True},
    ],
}

# What the handlers import when they run, never when the app is indexed (cold start is measured).
HEAVY_MODULES = ("azure.identity", "azure.keyvault", "azure.storage", "msgraph", "kiota_http", "aiohttp",
                 "cryptography", "httpx")


def function_json(name: str) -> dict[str, Any]:
    """What the worker hands the host for one function (function.json, as built at indexing)."""
    for fn in registered_functions():
        if fn.get_function_name() == name:
            loaded: dict[str, Any] = json.loads(fn.get_function_json())
            return loaded
    raise AssertionError(f"function {name} is not registered")


def test_the_registered_functions_are_exactly_the_table() -> None:
    assert sorted(fn.get_function_name() for fn in registered_functions()) == sorted(FUNCTIONS)


@pytest.mark.parametrize("name", list(FUNCTIONS))
def test_bindings(name: str) -> None:
    document = function_json(name)
    assert document["scriptFile"] == "function_app.py"
    bindings = document["bindings"]
    assert len(bindings) == len(FUNCTIONS[name]), bindings
    for expected in FUNCTIONS[name]:
        matching = [b for b in bindings if all(b.get(k) == v for k, v in expected.items())]
        assert len(matching) == 1, f"{name}: no binding like {expected} in {bindings}"


def test_no_http_function_is_anonymous() -> None:
    for fn in registered_functions():
        for binding in json.loads(fn.get_function_json())["bindings"]:
            if binding["type"] == "httpTrigger":
                assert binding["authLevel"] == "FUNCTION", fn.get_function_name()


def test_each_trigger_is_async_and_has_one_trigger() -> None:
    import inspect

    for fn in registered_functions():
        triggers = [b for b in json.loads(fn.get_function_json())["bindings"] if b["type"].endswith("Trigger")]
        assert len(triggers) == 1, fn.get_function_name()
        assert inspect.iscoroutinefunction(fn.get_user_function()), fn.get_function_name()


def test_binding_settings_are_in_the_sample_settings() -> None:
    """A `%SETTING%` the host cannot resolve stops the function at start-up: each must be documented."""
    sample = json.loads((ROOT / "local.settings.sample.json").read_text())["Values"]
    used = {m for bindings in FUNCTIONS.values() for b in bindings for v in b.values() if isinstance(v, str)
            for m in re.findall(r"%([A-Za-z0-9_]+)%", v)} | {b["connection"] for bs in FUNCTIONS.values()
                                                            for b in bs if "connection" in b}
    assert used <= set(sample), f"missing from local.settings.sample.json: {sorted(used - set(sample))}"


def test_a_fresh_worker_indexes_every_function_without_settings_or_heavy_imports() -> None:
    """As the host's worker does: a new interpreter in the app's folder, no app settings at all."""
    script = (
        "import json, sys\n"
        "import function_app\n"
        "names = [f.get_function_name() for f in function_app.app.get_functions()]\n"
        f"heavy = sorted(m for m in sys.modules if any(m == h or m.startswith(h + '.') for h in {HEAVY_MODULES!r}))\n"
        "print(json.dumps({'names': names, 'heavy': heavy}))\n"
    )
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "SYSTEMROOT", "HOME", "LANG")}
    completed = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                               timeout=120, check=False)
    assert completed.returncode == 0, completed.stderr
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    assert sorted(result["names"]) == sorted(FUNCTIONS)
    assert result["heavy"] == [], "imported at indexing; import them where they are used"
