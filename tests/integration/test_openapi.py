"""Issue: openapi.yaml describes the handlers as they behave.

Each call below goes through the real handler; its status must be documented for the operation and
its body must validate against the documented schema (and headers the document promises must be
there). The document itself must be valid OpenAPI 3.1, and its paths must be the function routes.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator

from devstack import Stack
from devstack.faults import Fault

from .helpers import (
    HttpResult,
    call,
    delete_identity,
    get_identity,
    post_identity,
    principal_header,
    registered_functions,
    rotate,
)

DOCUMENT_PATH = Path(__file__).resolve().parents[2] / "openapi.yaml"
HTTP_METHODS = ("get", "put", "post", "delete", "patch", "head", "options", "trace")


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    with DOCUMENT_PATH.open(encoding="utf-8") as stream:
        loaded: dict[str, Any] = yaml.safe_load(stream)
    return loaded


def resolve(document: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        ref = node["$ref"]
        assert ref.startswith("#/"), ref
        target: Any = document
        for part in ref[2:].split("/"):
            target = target[part]
        node = target
    return node


def validate_body(document: dict[str, Any], schema: dict[str, Any], body: Any) -> None:
    # References in the document are relative to its root: validate with the components alongside.
    root = {**schema, "components": document["components"]}
    errors = sorted(Draft202012Validator(root).iter_errors(body), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors[:5])


def conforms(document: dict[str, Any], method: str, template: str, result: HttpResult) -> None:
    """`result` of `method template` is what the document says that operation answers."""
    path_item = document["paths"][template]
    if result.status == 405:
        documented = {m.upper() for m in path_item if m in HTTP_METHODS}
        allowed = {m.strip() for m in result.headers.get("Allow", "").split(",") if m.strip()}
        assert allowed == documented, f"405 Allow {allowed} but the document has {documented} on {template}"
        response = resolve(document, {"$ref": "#/components/responses/MethodNotAllowed"})
    else:
        operation = path_item[method.lower()]
        assert str(result.status) in operation["responses"], \
            f"{method} {template} answered {result.status}, not documented ({sorted(operation['responses'])})"
        response = resolve(document, operation["responses"][str(result.status)])
    media_type = result.content_type.split(";")[0].strip()
    assert media_type in response["content"], f"{media_type} not documented for {result.status}"
    for header in response.get("headers", {}):
        assert header.lower() in {h.lower() for h in result.headers}, f"{header} promised for {result.status}"
    validate_body(document, response["content"][media_type]["schema"], result.body)


def test_the_document_is_valid_openapi_3_1(document: dict[str, Any]) -> None:
    from openapi_spec_validator import validate

    assert document["openapi"].startswith("3.1")
    validate(document)


def test_every_function_route_is_documented_and_nothing_else(document: dict[str, Any]) -> None:
    routes: dict[str, set[str]] = {}
    for fn in registered_functions():
        for binding in json.loads(fn.get_function_json())["bindings"]:
            if binding["type"] == "httpTrigger":
                assert binding["authLevel"] == "FUNCTION"
                routes["/api/" + binding["route"]] = set(binding["methods"])
    assert set(routes) == set(document["paths"])
    for path, methods in routes.items():
        documented = {m.upper() for m in document["paths"][path] if m in HTTP_METHODS}
        assert documented <= methods, f"{path}: the trigger does not accept {documented - methods}"
        # Path parameters in the template are declared (the route uses the same names).
        declared = {resolve(document, p)["name"] for p in document["paths"][path].get("parameters", [])}
        assert set(re.findall(r"{(\w+)}", path)) == declared


def test_function_key_security_is_documented(document: dict[str, Any]) -> None:
    schemes = document["components"]["securitySchemes"]
    assert {(s["type"], s["in"], s["name"]) for s in schemes.values()} == {
        ("apiKey", "header", "x-functions-key"), ("apiKey", "query", "code")}
    assert {name for requirement in document["security"] for name in requirement} == set(schemes)


def test_the_request_schema_is_the_spec_parser(document: dict[str, Any]) -> None:
    """The documented body schema mirrors shared/core/spec.py: its fields, limits and name pattern."""
    from shared.core.spec import ALLOWED_KEY_SIZES, MAX_CONTACTS, MAX_DESCRIPTION, NAME_PATTERN, SPEC_FIELDS

    spec = document["components"]["schemas"]["IdentitySpec"]
    props = spec["properties"]
    assert set(props) == SPEC_FIELDS and spec["additionalProperties"] is False
    assert resolve(document, props["name"])["pattern"] == NAME_PATTERN.pattern
    assert tuple(props["keySize"]["enum"]) == ALLOWED_KEY_SIZES
    assert props["contacts"]["maxItems"] == MAX_CONTACTS
    assert props["description"]["maxLength"] == MAX_DESCRIPTION
    assert (props["validityMonths"]["minimum"], props["validityMonths"]["maximum"]) == (1, 24)
    assert (props["roles"]["minItems"], props["roles"]["maxItems"]) == (1, 5)


# Bodies where the schema alone decides; the handler must agree with the schema on each.
SCHEMA_CASES = [
    ("minimal", {"name": "abc"}),
    ("every field", {"name": "every-field", "organization": "contoso.onmicrosoft.com",
                     "roles": ["Exchange Recipient Administrator"], "validityMonths": 24, "keySize": 4096,
                     "contacts": ["ops@contoso.com"], "description": "nightly mailbox report"}),
    ("longest description", {"name": "abc", "description": "x" * 200}),
    ("unknown field", {"name": "abc", "owner": "me"}),
    ("no name", {"roles": ["Exchange Recipient Administrator"]}),
    ("upper-case name", {"name": "Abc"}),
    ("double hyphen", {"name": "a--b"}),
    ("trailing hyphen", {"name": "abc-"}),
    ("name too long", {"name": "a" * 41}),
    ("name too short", {"name": "ab"}),
    ("no roles", {"name": "abc", "roles": []}),
    ("six roles", {"name": "abc", "roles": ["Exchange Recipient Administrator"] * 6}),
    ("validity 0", {"name": "abc", "validityMonths": 0}),
    ("validity 25", {"name": "abc", "validityMonths": 25}),
    ("validity as text", {"name": "abc", "validityMonths": "12"}),
    ("validity as boolean", {"name": "abc", "validityMonths": True}),
    ("key size 1024", {"name": "abc", "keySize": 1024}),
    ("six contacts", {"name": "abc", "contacts": [f"u{i}@contoso.com" for i in range(6)]}),
    ("contact not an address", {"name": "abc", "contacts": ["not-mail"]}),
    ("description too long", {"name": "abc", "description": "x" * 201}),
    ("control character", {"name": "abc", "description": "a\u0007b"}),
    ("array body", [{"name": "abc"}]),
]


@pytest.mark.parametrize("body", [c[1] for c in SCHEMA_CASES], ids=[c[0] for c in SCHEMA_CASES])
def test_handler_and_request_schema_agree(stack: Stack, document: dict[str, Any], body: Any) -> None:
    schema = document["paths"]["/api/identities"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    root = {**schema, "components": document["components"]}
    schema_accepts = Draft202012Validator(root).is_valid(body)
    result = post_identity(body, params={"dryRun": "true"})
    assert (result.status == 200) is schema_accepts, (result.status, result.body)
    conforms(document, "POST", "/api/identities", result)


def test_successful_calls_conform(stack: Stack, document: dict[str, Any]) -> None:
    def check(method: str, template: str, result: HttpResult, status: int) -> None:
        assert result.status == status, result.body
        conforms(document, method, template, result)

    one = "/api/identities/{name}"
    check("POST", "/api/identities", post_identity({"name": "doc-dry"}, params={"dryRun": "true"}), 200)
    check("POST", "/api/identities", post_identity({"name": "doc-one", "contacts": ["ops@contoso.com"]}), 201)
    check("POST", "/api/identities", post_identity({"name": "doc-one", "contacts": ["ops@contoso.com"]}), 200)
    check("GET", "/api/identities", call("identities", "GET", "http://localhost/api/identities"), 200)
    check("GET", one, get_identity("doc-one"), 200)
    check("POST", one + "/rotate", rotate("doc-one", params={"dryRun": "true"}), 200)
    check("POST", one + "/rotate", rotate("doc-one"), 200)
    status = get_identity("doc-one")
    check("GET", one, status, 200)
    assert status.body["connectionRecord"]["previousThumbprint"] is not None
    check("DELETE", one, delete_identity("doc-one", params={"dryRun": "true"}), 200)
    check("DELETE", one, delete_identity("doc-one"), 200)
    check("GET", "/api/identities", call("identities", "GET", "http://localhost/api/identities"), 200)


def test_long_operation_calls_conform(stack: Stack, azurite: str, document: dict[str, Any],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from .queue_helpers import drain, operation, use_fresh_queue

    queue = use_fresh_queue(monkeypatch)
    one = "/api/identities/{name}"
    ops = "/api/operations/{operationId}"
    monkeypatch.setenv("HTTP_INLINE_BUDGET_SECONDS", "0")
    answers = [("POST", "/api/identities", post_identity({"name": "doc-async"}))]
    drain(azurite, queue)
    answers += [("POST", one + "/rotate", rotate("doc-async"))]
    drain(azurite, queue)
    answers += [("DELETE", one, delete_identity("doc-async"))]
    for method, template, answer in answers:
        assert answer.status == 202, answer.body
        conforms(document, method, template, answer)
    conforms(document, "GET", ops, operation(answers[-1][2].headers["Location"]))  # still running
    drain(azurite, queue)
    for _, _, answer in answers:
        done = operation(answer.headers["Location"])
        assert done.body["status"] == "Succeeded", done.body
        conforms(document, "GET", ops, done)
    missing = operation("/api/operations/" + "0" * 32)
    assert missing.status == 404
    conforms(document, "GET", ops, missing)


def _set(monkeypatch: pytest.MonkeyPatch, **env: str) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)


def test_error_calls_conform(stack: Stack, document: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    one = "/api/identities/{name}"

    def check(method: str, template: str, result: HttpResult, status: int, reason: str | None = None) -> None:
        assert result.status == status, result.body
        assert result.content_type == "application/problem+json"
        if reason is not None:
            assert result.body["reason"] == reason, result.body
        conforms(document, method, template, result)

    check("POST", "/api/identities", post_identity({"name": "Bad"}), 400, "InvalidRequest")
    check("POST", "/api/identities", post_identity(None, raw=b"{"), 400, "MalformedJson")
    check("POST", "/api/identities", post_identity({"name": "abc"}, params={"dryRun": "maybe"}), 400,
          "InvalidQuery")
    check("POST", "/api/identities", post_identity({"name": "abc", "roles": ["Global Administrator"]}), 400,
          "RoleNotAllowed")
    check("GET", one, get_identity("Bad--name"), 400, "InvalidName")
    check("POST", "/api/identities", post_identity(None, raw=b" " * (16 * 1024 + 1)), 413, "BodyTooLarge")
    check("POST", "/api/identities", post_identity(None, raw=b"name=abc",
                                                   headers={"Content-Type": "text/plain"}), 415)
    check("GET", one, get_identity("nobody"), 404, "IdentityNotFound")
    check("POST", one + "/rotate", rotate("nobody"), 404, "IdentityNotFound")
    check("DELETE", one, delete_identity("nobody"), 404, "IdentityNotFound")
    for method, function, url, template in [
        ("PUT", "identities", "http://localhost/api/identities", "/api/identities"),
        ("PATCH", "identity", "http://localhost/api/identities/abc", one),
        ("GET", "rotate_identity", "http://localhost/api/identities/abc/rotate", one + "/rotate"),
    ]:
        check(method, template, call(function, method, url, route_params={"name": "abc"}), 405, "MethodNotAllowed")

    # A foreign app holds the uniqueName: a conflict, with the plan in `run`.
    foreign_id = "0f0f0f0f-0000-4000-8000-00000000f0f0"
    stack.world.directory.applications[foreign_id] = {
        "id": foreign_id, "appId": "00000000-0000-0000-0000-0000000000f0", "uniqueName": "exo-automation-taken",
        "displayName": "someone else's", "tags": [], "keyCredentials": [], "requiredResourceAccess": [],
        "signInAudience": "AzureADMyOrg", "passwordCredentials": [],
    }
    taken = post_identity({"name": "taken"})
    check("POST", "/api/identities", taken, 409, "ForeignObject")
    assert taken.body["run"]["plan"]["blocked"]

    # Graph throttles / fails: retryable, with Retry-After.
    stack.world.faults.add(Fault.from_json({"service": "graph", "method": "GET", "status": 500, "count": None}))
    check("POST", "/api/identities", post_identity({"name": "flaky"}), 503, "GraphUnavailable")
    stack.world.faults.clear()

    # The platform lost a Graph permission: an operator must act.
    stack.world.set_platform_graph_roles([])
    check("POST", "/api/identities", post_identity({"name": "unpermitted"}), 502)
    stack.world.set_platform_graph_roles(["Application.ReadWrite.OwnedBy", "Application.Read.All",
                                          "AppRoleAssignment.ReadWrite.All", "RoleManagement.ReadWrite.Directory"])

    # App roles required: no principal, then a reader writing.
    _set(monkeypatch, AUTH_REQUIRE_APP_ROLES="true", WEBSITE_AUTH_ENABLED="true")
    check("GET", "/api/identities", call("identities", "GET", "http://localhost/api/identities"), 401,
          "AuthenticationRequired")
    check("DELETE", one, delete_identity("abc", headers=principal_header(["ExoIdentities.Read"])), 403,
          "AppRoleMissing")
    monkeypatch.delenv("AUTH_REQUIRE_APP_ROLES")
    monkeypatch.delenv("WEBSITE_AUTH_ENABLED")

    monkeypatch.delenv("EXO_ORGANIZATION")
    check("GET", one, get_identity("abc"), 500, "SettingMissing")
