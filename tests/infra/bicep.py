"""Offline reading of infra/: every .bicep file parsed with pycep-parser (no Bicep compiler here).

pycep gives a JSON-like tree: literals as Python values, expressions as {"function": ...} or
{"operator": ...} dicts, and references to parameters or variables as bare strings (so a string
value is either a literal or a name: tests that compare strings compare literals they wrote).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"


@dataclass(frozen=True)
class Resource:
    file: Path
    symbol: str
    type: str
    api_version: str
    existing: bool
    body: dict[str, Any]  # the resource's object (for a loop: the object of one iteration)
    loop: dict[str, Any] | None
    condition: Any

    @property
    def properties(self) -> dict[str, Any]:
        props = self.body.get("properties")
        return props if isinstance(props, dict) else {}


def bicep_files() -> list[Path]:
    return sorted(INFRA.rglob("*.bicep"))


@cache
def parse(path: Path) -> dict[str, Any]:
    from pycep import BicepParser

    tree: dict[str, Any] = BicepParser().parse(file_path=path)
    return tree


def text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def resources(type_: str | None = None) -> list[Resource]:
    found = []
    for path in bicep_files():
        for symbol, entry in parse(path).get("resources", {}).items():
            config = entry["config"]
            loop = condition = None
            if "loop_type" in config or ("condition" in config and "config" in config):
                loop = config.get("loop_type")
                condition = config.get("condition")
                config = config["config"]
            resource = Resource(path, symbol, entry["type"], entry["api_version"], entry["existing"], config, loop,
                                condition)
            if type_ is None or resource.type.lower() == type_.lower():
                found.append(resource)
    return found


def only(type_: str, *, existing: bool = False) -> Resource:
    matches = [r for r in resources(type_) if r.existing == existing]
    assert len(matches) == 1, f"expected one {type_}, found {[(r.file.name, r.symbol) for r in matches]}"
    return matches[0]


def modules(path: Path) -> dict[str, dict[str, Any]]:
    """Module declarations of a file: symbol -> {"path", "params", "condition"}."""
    found = {}
    for symbol, entry in parse(path).get("modules", {}).items():
        config = entry["config"]
        condition = config.get("condition") if "config" in config else None
        body = config["config"] if "config" in config and isinstance(config["config"], dict) else config
        found[symbol] = {"path": entry["detail"]["path"], "params": body.get("params") or {}, "condition": condition}
    return found


def parameters(path: Path) -> dict[str, dict[str, Any]]:
    result: dict[str, dict[str, Any]] = parse(path).get("parameters", {})
    return result


def variables(path: Path) -> dict[str, Any]:
    return {name: entry["value"] for name, entry in parse(path).get("variables", {}).items()}


def function_name(value: Any) -> str | None:
    if isinstance(value, dict) and "function" in value:
        return str(value["function"]["type"])
    return None


def walk(value: Any) -> Iterator[Any]:
    yield value
    if isinstance(value, dict):
        for item in value.values():
            yield from walk(item)
    elif isinstance(value, list):
        for item in value:
            yield from walk(item)


def app_settings() -> dict[str, Any]:
    """Every app setting the Bicep gives the Function App (Microsoft.Web/sites/config 'appsettings')."""
    settings: dict[str, Any] = {}
    for resource in resources("Microsoft.Web/sites/config"):
        if resource.body.get("name") == "appsettings":
            assert isinstance(resource.body["properties"], dict), "app settings must be one object literal"
            settings.update(resource.body["properties"])
    return settings


def load_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


KQL_EXTRACT = re.compile(r'extract\(@"((?:[^"]|"")*)",\s*1,\s*message\)')
