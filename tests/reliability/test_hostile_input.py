"""Hostile input: property-based requests generated from openapi.yaml (schemathesis, positive and
negative modes) against the real handlers, and a hand table of escalation and collision attempts.

No input may produce a 5xx, every response must conform to the contract, and a refused request
must change nothing (foreign objects stay exactly as they were)."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from devstack import Stack
from tests.integration.helpers import call, principal_header, registered_functions, write_count
from tests.support.tenant import add_foreign_app, directory_of

from . import leakscan
from .common import app_named

OPENAPI = Path(__file__).resolve().parents[2] / "openapi.yaml"
GLOBAL_ADMINISTRATOR = "62e90394-69f5-4237-9190-012177145e10"
PRIVILEGED_ROLE_ADMINISTRATOR = "e8611ab8-c189-46e8-94e1-60213ab1f814"


def _routes() -> list[tuple[re.Pattern[str], str]]:
    """The HTTP functions function_app registers, as the host routes them (/api/<route>)."""
    routes = []
    for fn in registered_functions():
        route = getattr(fn.get_trigger(), "route", None)
        if route:
            pattern = re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]*)", re.escape(route))
            routes.append((re.compile(f"^/api/{pattern}/?$"), fn.get_function_name()))
    return routes


def functions_host(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    """A WSGI stand-in for the Functions host's HTTP routing: path → function, then the handler."""
    path = environ.get("PATH_INFO", "")
    if path == "/openapi.yaml":
        start_response("200 OK", [("Content-Type", "application/yaml")])
        return [OPENAPI.read_bytes()]
    routed = next(((m, f) for p, f in _routes() if (m := p.match(path))), None)
    if routed is None:
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"no such route"]
    match, function = routed
    headers = {key[5:].replace("_", "-").title(): value for key, value in environ.items() if key.startswith("HTTP_")}
    if environ.get("CONTENT_TYPE"):
        headers["Content-Type"] = environ["CONTENT_TYPE"]
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(length) if length else b""
    query = dict(parse_qsl(environ.get("QUERY_STRING", ""), keep_blank_values=True))
    status, response_headers, text = _invoke(function, environ["REQUEST_METHOD"], f"http://localhost{path}",
                                             body, query, match.groupdict(), headers)
    leakscan.hostile(status)
    start_response(f"{status} X", [(k, v) for k, v in response_headers.items() if k.lower() != "content-length"])
    return [text]


def _invoke(function: str, method: str, url: str, body: bytes, params: dict[str, str],
            route_params: dict[str, str], headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    """helpers.call, but any body (the status page answers HTML): raw bytes back, leak hooks run."""
    from tests.integration.helpers import invoke

    return invoke(function, method, url, body, params, route_params, headers)


schema = schemathesis.openapi.from_path(OPENAPI)
schema.app = functions_host
schema.config.generation.update(max_examples=40)


@schema.parametrize()
@settings(max_examples=40, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
def test_generated_requests_never_5xx_and_conform_to_the_contract(case: Any, stack: Stack,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VERIFY_SIGN_IN_TIMEOUT_SECONDS", "5")
    if not any(pattern.match(case.formatted_path) for pattern, _ in _routes()):
        pytest.skip(f"{case.path} is in openapi.yaml but no registered function serves it")
    case.call_and_validate(checks=[not_a_server_error, status_code_conformance, content_type_conformance,
                                   response_schema_conformance])


# -- the hand table ---------------------------------------------------------------------------------
def post(body: Any, **kwargs: Any) -> Any:
    response = call("identities", "POST", "http://localhost/api/identities",
                    raw=body if isinstance(body, bytes) else json.dumps(body).encode(), **kwargs)
    leakscan.hostile(response.status)
    return response


def routed(function: str, method: str, name: str, suffix: str = "", **kwargs: Any) -> Any:
    response = call(function, method, f"http://localhost/api/identities/{name}{suffix}",
                    route_params={"name": name}, **kwargs)
    leakscan.hostile(response.status)
    return response


ESCALATIONS = [
    ["Global Administrator"], [" Global Administrator "], ["GLOBAL ADMINISTRATOR"], ["global\tadministrator"],
    ["Global\u00a0Administrator"], ["Global Administrator\u200b"], [GLOBAL_ADMINISTRATOR],
    [GLOBAL_ADMINISTRATOR.upper()],
    [f"{{{GLOBAL_ADMINISTRATOR}}}"], [f" {GLOBAL_ADMINISTRATOR} "], ["Privileged Role Administrator"],
    [PRIVILEGED_ROLE_ADMINISTRATOR], ["Privileged Authentication Administrator"], ["Application Administrator"],
    ["Exchange Administrator"], ["User Administrator"], ["Exchange Recipient Administrator", GLOBAL_ADMINISTRATOR],
    ["Exchange Recipient Administrator", "Exchange Recipient Administrator ", "global administrator"],
    [{"id": GLOBAL_ADMINISTRATOR}], [["Global Administrator"]], [None],
]


@pytest.mark.parametrize("roles", ESCALATIONS, ids=[repr(r)[:40] for r in ESCALATIONS])
def test_privileged_or_unlisted_roles_are_refused_and_nothing_is_written(stack: Stack, roles: list[Any]) -> None:
    stack.world.counter.reset()
    response = post({"name": "climber", "roles": roles})
    assert response.status == 400, response.body
    assert response.content_type == "application/problem+json"
    assert response.body["reason"] in ("RoleNotAllowed", "InvalidRequest"), response.body
    assert write_count(stack) == 0
    assert not app_named(stack, "climber")


def test_an_allow_list_naming_a_privileged_role_grants_nothing(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALLOWED_ROLES", "Exchange Recipient Administrator, Global Administrator")
    stack.world.counter.reset()
    # Not counted as hostile input: the 500 answers the operator's setting, not the caller.
    response = call("identities", "POST", "http://localhost/api/identities",
                    body={"name": "climber", "roles": ["Global Administrator"]})
    # A misconfiguration, not hostile input: refused as such (500 SettingInvalid) before any write.
    assert response.status == 500 and response.body["reason"] == "SettingInvalid", response.body
    assert write_count(stack) == 0
    held = [a for a in stack.world.directory.role_assignments.values() if a["roleDefinitionId"] == GLOBAL_ADMINISTRATOR]
    assert held == []


def test_a_foreign_key_vault_certificate_with_the_identitys_name_is_left_alone(stack: Stack) -> None:
    from azure.identity import ManagedIdentityCredential
    from azure.keyvault.certificates import CertificateClient, CertificatePolicy

    with ManagedIdentityCredential() as credential, \
            CertificateClient(stack.settings()["KEY_VAULT_URL"], credential) as certificates:
        certificates.begin_create_certificate("exo-squat-cert", CertificatePolicy.get_default()).result()
        before = certificates.get_certificate("exo-squat-cert")
        stack.world.counter.reset()
        response = post({"name": "squat"})
        rotate_attempt = routed("rotate_identity", "POST", "squat", "/rotate")
        delete_attempt = routed("identity", "DELETE", "squat")
        after = certificates.get_certificate("exo-squat-cert")
    assert response.status == 409, response.body
    assert response.body["reason"] == "ForeignObject", response.body
    assert rotate_attempt.status in (404, 409) and delete_attempt.status in (404, 409), \
        (rotate_attempt.body, delete_attempt.body)
    assert (after.properties.version, after.properties.tags) == (before.properties.version, before.properties.tags)
    assert not app_named(stack, "squat"), "nothing is created beside a foreign certificate"


def test_a_foreign_app_holding_the_unique_name_is_left_alone(stack: Stack) -> None:
    assert post({"name": "template"}).status == 201
    (template,) = app_named(stack, "template")
    impostor = add_foreign_app(stack, template)
    impostor["uniqueName"] = "exo-automation-squatter"
    before = directory_of(stack, impostor)
    stack.world.counter.reset()
    attempts = [post({"name": "squatter"}), routed("rotate_identity", "POST", "squatter", "/rotate"),
                routed("identity", "DELETE", "squatter"),
                # a spec naming somebody else's app id is not a field the API knows
                post({"name": "hijack", "appId": impostor["appId"]})]
    assert attempts[0].status == 409 and attempts[0].body["reason"] == "ForeignObject", attempts[0].body
    assert all(400 <= a.status < 500 for a in attempts), [(a.status, a.body) for a in attempts]
    assert attempts[3].status == 400
    assert directory_of(stack, impostor) == before
    assert not app_named(stack, "hijack")


NAMES = ["../etc/passwd", "..", "%2e%2e", "a/b", "exo-x/../../y", "mailbox-\u0155eports",
         "\uff4d\uff41\uff49\uff4c\uff42\uff4f\uff58", "mail\u202ebox",
         "a\u0000bc", "abc\n", " abc", "a" * 10_000, "abc;rm -rf", "abc' or '1'='1", "<script>", "CON", "-abc",
         "abc\r\n", "abc\t", "ABC", ""]


@pytest.mark.parametrize("name", NAMES, ids=[repr(n)[:24] for n in NAMES])
def test_hostile_names_are_refused_everywhere(stack: Stack, name: str) -> None:
    stack.world.counter.reset()
    responses = [post({"name": name}), routed("identity", "GET", name), routed("identity", "DELETE", name),
                 routed("rotate_identity", "POST", name, "/rotate")]
    for response in responses:
        assert 400 <= response.status < 500, (name, response.status, response.body)
        assert response.content_type == "application/problem+json"
    assert write_count(stack) == 0
    assert stack.world.directory.applications == {}


def _forged(document: Any) -> dict[str, str]:
    raw = document if isinstance(document, bytes) else json.dumps(document).encode()
    return {"X-MS-CLIENT-PRINCIPAL": base64.b64encode(raw).decode()}


AUTH = [
    ("missing", {}, 401),
    ("empty", {"X-MS-CLIENT-PRINCIPAL": ""}, 401),
    ("not base64", {"X-MS-CLIENT-PRINCIPAL": "%%%"}, 401),
    ("base64 of garbage", _forged(b"\xff\xfe\x00"), 401),
    ("JSON null", _forged(None), 401),
    ("claims not a list", _forged({"claims": 5}), 403),
    ("claims a string", _forged({"claims": "ExoIdentities.ReadWrite"}), 403),
    ("claim typ an object", _forged({"claims": [{"typ": {"a": 1}, "val": "ExoIdentities.ReadWrite"}]}), 403),
    ("claim val a list", _forged({"claims": [{"typ": "roles", "val": ["ExoIdentities.ReadWrite"]}]}), 403),
    ("role_typ an object", _forged({"role_typ": {"x": 1}, "claims": [{"typ": "roles", "val": "ExoIdentities.Read"}]}),
     403),
    ("role in the name claim", _forged({"claims": [{"typ": "name", "val": "ExoIdentities.ReadWrite"}]}), 403),
    ("reader only", principal_header(["ExoIdentities.Read"]), 403),
    ("role with odd casing", principal_header(["exoidentities.readwrite"]), 403),
    ("role with whitespace", principal_header([" ExoIdentities.ReadWrite"]), 403),
    ("roles header, no principal", {"X-MS-CLIENT-PRINCIPAL-NAME": "admin", "X-MS-CLIENT-PRINCIPAL-ID": "1"}, 401),
]


@pytest.mark.parametrize("headers,status", [(h, s) for _, h, s in AUTH], ids=[a[0] for a in AUTH])
def test_missing_or_forged_callers_are_refused(stack: Stack, monkeypatch: pytest.MonkeyPatch,
                                               headers: dict[str, str], status: int) -> None:
    monkeypatch.setenv("AUTH_REQUIRE_APP_ROLES", "true")
    monkeypatch.setenv("WEBSITE_AUTH_ENABLED", "true")  # the platform vouches for the principal headers
    stack.world.counter.reset()
    for response in (post({"name": "intruder"}, headers=headers),
                     routed("rotate_identity", "POST", "intruder", "/rotate", headers=headers),
                     routed("identity", "DELETE", "intruder", headers=headers)):
        assert response.status == status, response.body
        assert response.content_type == "application/problem+json"
    assert write_count(stack) == 0
