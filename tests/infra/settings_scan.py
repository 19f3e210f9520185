"""The app settings the code reads, derived from the code (never written down): `reader.<kind>("NAME", …)`
calls in shared/settings.py, literal environment reads anywhere in shared/ and function_app.py, settings
named by keyword (`identity_setting="NAME"`, as jobs declare theirs), and the `%NAME%` expressions and
storage connections of the registered functions' bindings; and where each may be listed."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from collections.abc import Iterator, Mapping
from functools import cache
from pathlib import Path
from typing import Any

from .bicep import ROOT

CODE = [ROOT / "function_app.py", *sorted((ROOT / "shared").rglob("*.py"))]
SETTING = r"([A-Za-z][A-Za-z0-9_]*)"
READS = [
    re.compile(r"\breader\.\w+\(\s*\"" + SETTING + r"\""),
    re.compile(r"\b(?:os\.)?environ(?:\.get)?[\[(]\s*\"" + SETTING + r"\""),
    re.compile(r"\bos\.getenv\(\s*\"" + SETTING + r"\""),
]
# Set by the platform itself (App Service / Functions / the OS), never by an operator.
PLATFORM_PROVIDED = re.compile(r"^(WEBSITE_\w+|IDENTITY_ENDPOINT|IDENTITY_HEADER|MSI_\w+|SSL_CERT_FILE|"
                               r"REQUESTS_CA_BUNDLE|CONTAINER_NAME|FUNCTIONS_\w+|"
                               r"AZURE_FEDERATED_TOKEN_FILE)$")  # the last: Kubernetes workload identity
# Settings the Functions host reads (not the product): where each may or must appear.
HOST_ONLY = {
    "FUNCTIONS_WORKER_RUNTIME": "local only: Flex Consumption takes the runtime from functionAppConfig",
    "APPLICATIONINSIGHTS_CONNECTION_STRING": "telemetry target",
    "APPLICATIONINSIGHTS_AUTHENTICATION_STRING": "Entra-authenticated telemetry (local auth is off)",
    "PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY": "the Python worker's telemetry with telemetryMode OpenTelemetry",
}
# Set by infra/ ahead of the code that reads it (another change brings the reader): allowed in infra/ and
# the sample, required nowhere. Drop an entry once the code reads the setting (it is then derived above).
AHEAD_OF_CODE: dict[str, str] = {}  # settings infra/ sets before a release's code reads them (why)
REQUIRED_IN_INFRA_FROM_HOST = {"APPLICATIONINSIGHTS_CONNECTION_STRING", "APPLICATIONINSIGHTS_AUTHENTICATION_STRING",
                               "PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY"}
REQUIRED_IN_LOCAL_FROM_HOST = {"FUNCTIONS_WORKER_RUNTIME"}
IDENTITY_CONNECTION_SUFFIXES = ("accountName", "credential", "clientId", "blobServiceUri", "queueServiceUri",
                                "tableServiceUri", "serviceUri")
HOST_STORAGE = "AzureWebJobsStorage"  # the timer trigger and the host itself always use it


def read_in_source() -> dict[str, str]:
    """Setting name -> the file that reads it."""
    found: dict[str, str] = {}
    for path in CODE:
        source = path.read_text(encoding="utf-8")
        names = [name for pattern in READS for name in pattern.findall(source)]
        names += [node.value.value for node in ast.walk(ast.parse(source))
                  if isinstance(node, ast.keyword) and node.arg and node.arg.endswith("_setting")
                  and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)]
        for name in names:
            if not PLATFORM_PROVIDED.match(name):
                found.setdefault(name, path.name)
    return found


class _RecordingEnvironment(dict[str, str]):
    def __init__(self, values: Mapping[str, str]) -> None:
        super().__init__(values)
        self.asked: set[str] = set()

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        self.asked.add(key)
        return super().get(key, default)

    def __getitem__(self, key: str) -> str:
        self.asked.add(key)
        return super().__getitem__(key)


def read_by_settings_object() -> set[str] | None:
    """What Settings.from_environment actually asks for, or None when it cannot be built here."""
    from shared.errors import SettingsError
    from shared.settings import Settings

    environment = _RecordingEnvironment({
        "KEY_VAULT_URL": "https://kv-example.vault.azure.net/",
        "AZURE_TENANT_ID": "00000000-0000-0000-0000-000000000001",
        "EXO_ORGANIZATION": "contoso.onmicrosoft.com",
    })
    try:
        Settings.from_environment(environment)
    except SettingsError:
        return None
    return environment.asked


@cache
def bindings() -> list[dict[str, Any]]:
    """The registered functions' bindings, as the host indexes them (in a fresh interpreter: the
    function list can be built only once per app object)."""
    script = ("import json, function_app\n"
              "print(json.dumps([json.loads(f.get_function_json()) for f in function_app.app.get_functions()]))")
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120,
                            check=False)
    assert result.returncode == 0, result.stderr
    functions: list[dict[str, Any]] = json.loads(result.stdout.strip().splitlines()[-1])
    return [binding for function in functions for binding in function["bindings"]]


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def binding_settings() -> set[str]:
    return {name for binding in bindings() for text in _strings(binding) for name in re.findall(r"%(\w+)%", text)}


def connections() -> set[str]:
    names = {HOST_STORAGE}
    names |= {b["connection"] for b in bindings() if isinstance(b.get("connection"), str) and b["connection"]}
    return names


def code_settings() -> set[str]:
    return set(read_in_source()) | binding_settings()


def allowed_everywhere() -> set[str]:
    allowed = code_settings() | set(HOST_ONLY) | set(AHEAD_OF_CODE)
    for connection in connections():
        allowed.add(connection)
        allowed |= {f"{connection}__{suffix}" for suffix in IDENTITY_CONNECTION_SUFFIXES}
    return allowed


def local_settings() -> dict[str, str]:
    values: dict[str, str] = json.loads((ROOT / "local.settings.sample.json").read_text(encoding="utf-8"))["Values"]
    return values


def documented_settings(path: Path) -> list[str]:
    """Names in the Markdown table(s) whose first header cell is "Setting"."""
    if not path.exists():
        return []
    names: list[str] = []
    in_table = False
    for line in path.read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.lstrip().startswith("|") else []
        if not cells:
            in_table = False
            continue
        if not in_table:
            in_table = cells[0].lower() in ("setting", "settings", "app setting")
            continue
        match = re.fullmatch(r"`" + SETTING + r"`", cells[0])
        if match:
            names.append(match.group(1))
    return names


