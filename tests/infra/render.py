"""What one azd deployment would create, for given parameters of infra/main.bicep, offline.

A small evaluator over pycep's tree: it decides every condition (module `if`, resource `if`,
`a ? b : c`, `||`, `&&`, `!`, `empty`, `equals`) and expands loops over arrays it can compute
(`filter`, `split`, `replace`). What only Azure knows at deployment time (resource ids, module outputs,
`environment()`, string interpolations) stays an `Opaque` value that names the expression, so a test
can still check *which* output a property refers to. A condition that depends on an Opaque value is
an error (the tests must never guess), except `empty()` of a module output or a resource id, which a
deployment never leaves empty.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .bicep import INFRA, parse


class Opaque(str):
    """A value known only at deployment time; its text is the expression (e.g. `network.outputs.id`)."""


REFERENCE = re.compile(r"\w+\.(outputs\.\w+|id)")


class Undecidable(Exception):
    pass


@dataclass(frozen=True)
class Rendered:
    module: str  # symbol of the module in main.bicep ("" for main.bicep itself)
    file: Path
    symbol: str
    type: str
    body: Any  # the evaluated resource object (a list of them for a resource loop)

    @property
    def properties(self) -> dict[str, Any]:
        props = self.body.get("properties") if isinstance(self.body, dict) else None
        return props if isinstance(props, dict) else {}


def _truth(value: Any, what: Any) -> bool:
    if isinstance(value, Opaque):
        raise Undecidable(f"condition depends on a deployment-time value: {what!r} -> {value!r}")
    return bool(value)


def _accessor_path(node: Any) -> list[Any]:
    if isinstance(node, dict) and _is_node(node, "operator") and node["operator"]["type"] == "property_accessor":
        operands = node["operator"]["operands"]
        return [operands["operand_1"], *_accessor_path(operands["operand_2"])]
    return [node]


def _is_node(node: dict[str, Any], key: str) -> bool:
    """pycep's expression nodes, not an object literal with a property of that name (`operator: 'GreaterThan'`)."""
    return len(node) == 1 and isinstance(node.get(key), dict) and "type" in node[key]


def evaluate(node: Any, scope: Mapping[str, Any]) -> Any:
    if node is None or isinstance(node, (bool, int, float)):
        return node
    if isinstance(node, str):
        if node in scope:
            return scope[node]
        return Opaque(node) if "${" in node else node
    if isinstance(node, list):
        return [evaluate(item, scope) for item in node]
    if not isinstance(node, dict):
        raise TypeError(node)
    if _is_node(node, "operator"):
        return _operator(node["operator"], scope)
    if _is_node(node, "function"):
        return _function(node["function"], scope)
    if "loop_type" in node and "config" in node:
        return _loop(node, scope)
    return {key: evaluate(value, scope) for key, value in node.items()}


def _operator(op: dict[str, Any], scope: Mapping[str, Any]) -> Any:
    kind, operands = op["type"], op["operands"]
    if kind == "conditional":
        chosen = _truth(evaluate(operands["condition"], scope), operands["condition"])
        return evaluate(operands["true_value" if chosen else "false_value"], scope)
    if kind == "or":
        return (_truth(evaluate(operands["operand_1"], scope), operands)
                or _truth(evaluate(operands["operand_2"], scope), operands))
    if kind == "and":
        return (_truth(evaluate(operands["operand_1"], scope), operands)
                and _truth(evaluate(operands["operand_2"], scope), operands))
    if kind == "not":
        return not _truth(evaluate(operands["bool_value"], scope), operands)
    if kind in ("equals", "not_equals"):
        left, right = (evaluate(v, scope) for v in operands.values())
        if isinstance(left, Opaque) or isinstance(right, Opaque):
            raise Undecidable(f"comparison with a deployment-time value: {operands!r}")
        return (left == right) == (kind == "equals")
    if kind == "property_accessor":
        path = _accessor_path({"operator": op})
        value = evaluate(path[0], scope)
        for step in path[1:]:
            if isinstance(value, dict) and isinstance(step, str) and step in value:
                value = value[step]
            else:
                return Opaque(".".join(str(p) for p in path))
        return value
    return Opaque(f"{kind}(...)")


def _function(fn: dict[str, Any], scope: Mapping[str, Any]) -> Any:
    kind, params = fn["type"], fn.get("parameters") or {}
    if kind == "empty":
        value = evaluate(params["item_to_test"], scope)
        if isinstance(value, Opaque) and REFERENCE.fullmatch(value):
            return False  # an output or the id of a deployed resource: never empty
        if isinstance(value, Opaque):
            raise Undecidable(f"empty() of a deployment-time value: {params!r}")
        return value is None or len(value) == 0
    if kind == "split":
        text, delimiter = evaluate(params["input_string"], scope), evaluate(params["delimiter"], scope)
        return Opaque("split(...)") if isinstance(text, Opaque) else text.split(delimiter)
    if kind == "replace":
        text = evaluate(params["original_string"], scope)
        if isinstance(text, Opaque):
            return Opaque("replace(...)")
        return text.replace(evaluate(params["old_string"], scope), evaluate(params["new_string"], scope))
    if kind == "filter":
        items = evaluate(params["input_array"], scope)
        if isinstance(items, Opaque):
            return Opaque("filter(...)")
        lam = params["expression"]["detail"]
        return [item for item in items if _truth(evaluate(lam["expression"], {**scope, lam["var_1"]: item}), lam)]
    return Opaque(f"{kind}(...)")


def _loop(node: dict[str, Any], scope: Mapping[str, Any]) -> Any:
    detail = node["loop_type"]["detail"]
    items = evaluate(detail["array_name"], scope)
    if isinstance(items, Opaque):  # e.g. a loop over a loaded table: one symbolic iteration
        items = [Opaque(f"item of {items}")]
    result = []
    for index, item in enumerate(items):
        inner = {**scope, detail["item_name"]: item}
        if "index_name" in detail:
            inner[detail["index_name"]] = index
        if node.get("condition") is not None and not _truth(evaluate(node["condition"], inner), node["condition"]):
            continue
        result.append(evaluate(node["config"], inner))
    return result


def _scope(path: Path, given: Mapping[str, Any]) -> dict[str, Any]:
    tree = parse(path)
    scope: dict[str, Any] = {}
    for name, param in tree.get("parameters", {}).items():
        if name in given:
            scope[name] = given[name]
        elif param.get("default") is not None:
            scope[name] = evaluate(param["default"], scope)
        else:
            raise KeyError(f"{path.name}: parameter {name} has no default and was not given")
    for name, variable in tree.get("variables", {}).items():
        scope[name] = evaluate(variable["value"], scope)
    return scope


def _resources(module: str, path: Path, scope: Mapping[str, Any]) -> list[Rendered]:
    found = []
    for symbol, entry in parse(path).get("resources", {}).items():
        if entry["existing"]:
            continue
        config = entry["config"]
        if "loop_type" in config:
            body: Any = _loop(config, scope)
        else:
            if "condition" in config and "config" in config:
                if not _truth(evaluate(config["condition"], scope), config["condition"]):
                    continue
                config = config["config"]
            body = evaluate(config, scope)
        found.append(Rendered(module, path, symbol, entry["type"], body))
    return found


@dataclass(frozen=True)
class Deployment:
    modules: dict[str, dict[str, Any]]  # deployed module symbol -> the parameters it gets
    resources: list[Rendered]

    def of_type(self, type_: str) -> list[Rendered]:
        return [r for r in self.resources if r.type.lower() == type_.lower()]

    def one(self, type_: str) -> Rendered:
        matches = self.of_type(type_)
        assert len(matches) == 1, f"expected one {type_}, found {[(r.module, r.symbol) for r in matches]}"
        return matches[0]

    def app_settings(self) -> dict[str, Any]:
        configs = [r for r in self.of_type("Microsoft.Web/sites/config") if r.body["name"] == "appsettings"]
        assert len(configs) == 1
        settings: dict[str, Any] = configs[0].body["properties"]
        return settings


REQUIRED = {"environmentName": "exo-test", "location": "westeurope", "exoOrganization": "contoso.onmicrosoft.com"}


def render(**parameters: Any) -> Deployment:
    """The resources one deployment of infra/main.bicep creates with these parameters (and the defaults)."""
    main = INFRA / "main.bicep"
    scope = _scope(main, {**REQUIRED, **parameters})
    modules: dict[str, dict[str, Any]] = {}
    resources = _resources("", main, scope)
    for symbol, entry in parse(main).get("modules", {}).items():
        config = entry["config"]
        if "condition" in config and "config" in config:
            if not _truth(evaluate(config["condition"], scope), config["condition"]):
                continue
            config = config["config"]
        params = evaluate(config.get("params") or {}, scope)
        modules[symbol] = params
        path = (main.parent / entry["detail"]["path"]).resolve()
        resources += _resources(symbol, path, _scope(path, params))
    return Deployment(modules, resources)
