"""Issue: bad input through the HTTP handlers gets a 4xx problem document and changes nothing."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any

import pytest

from devstack import Stack
from shared.functions.problems import problem_type

from .helpers import HttpResult, call, principal_header, write_count

LIST = ("identities", "http://localhost/api/identities", {})
ONE = ("identity", "http://localhost/api/identities/abc", {"name": "abc"})
ROTATE = ("rotate_identity", "http://localhost/api/identities/abc/rotate", {"name": "abc"})
GLOBAL_ADMINISTRATOR = "62e90394-69f5-4237-9190-012177145e10"
PRIVILEGED_ROLE_ADMINISTRATOR = "e8611ab8-c189-46e8-94e1-60213ab1f814"
NO_PRINCIPAL = "x"  # any value that is not base64 JSON: the same as none


@dataclass
class Case:
    status: int
    reason: str | None
    method: str = "POST"
    route: tuple[str, str, dict[str, str]] = LIST
    body: Any = None
    raw: bytes | None = None
    params: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    env: dict[str, str | None] = field(default_factory=dict)
    pointer: str | None = None  # an `errors` entry must point here
    allow: str | None = None  # the Allow header of a 405

    def named(self, name: str) -> Case:
        """This case against another identity name in the route."""
        function, url, _ = self.route
        self.route = (function, url.replace("/abc", f"/{name}"), {"name": name})
        return self


def spec(**fields: Any) -> dict[str, Any]:
    return {"name": "abc", **fields}


# App roles required behind App Service Authentication, which vouches for the principal headers.
APP_ROLES = {"AUTH_REQUIRE_APP_ROLES": "true", "WEBSITE_AUTH_ENABLED": "true"}

CASES: list[tuple[str, Case]] = [
    # -- the body ---------------------------------------------------------------------------------
    ("malformed JSON", Case(400, "MalformedJson", raw=b'{"name": "abc",')),
    ("empty body", Case(400, "MalformedJson", raw=b"")),
    ("body not UTF-8", Case(400, "MalformedJson", raw=b'{"name": "\xff"}')),
    ("JSON array body", Case(400, "InvalidBody", body=[spec()])),
    ("JSON string body", Case(400, "InvalidBody", body="abc")),
    ("unknown field", Case(400, "InvalidRequest", body=spec(owner="me"), pointer="/owner")),
    ("name missing", Case(400, "InvalidRequest", body={"roles": ["Exchange Recipient Administrator"]},
                          pointer="/name")),
    ("name upper case", Case(400, "InvalidRequest", body=spec(name="Mailbox-Reports"), pointer="/name")),
    ("name too short", Case(400, "InvalidRequest", body=spec(name="ab"), pointer="/name")),
    ("name too long", Case(400, "InvalidRequest", body=spec(name="a" * 41), pointer="/name")),
    ("name double hyphen", Case(400, "InvalidRequest", body=spec(name="mailbox--reports"), pointer="/name")),
    ("name trailing hyphen", Case(400, "InvalidRequest", body=spec(name="reports-"), pointer="/name")),
    ("name leading digit", Case(400, "InvalidRequest", body=spec(name="1reports"), pointer="/name")),
    ("name with a dot", Case(400, "InvalidRequest", body=spec(name="a.b.c"), pointer="/name")),
    ("name not a string", Case(400, "InvalidRequest", body=spec(name=123), pointer="/name")),
    ("other organization", Case(400, "InvalidRequest", body=spec(organization="fabrikam.onmicrosoft.com"),
                                pointer="/organization")),
    ("Global Administrator by name", Case(400, "RoleNotAllowed", body=spec(roles=["Global Administrator"]),
                                          pointer="/roles/0")),
    ("Global Administrator by template id", Case(400, "RoleNotAllowed", body=spec(roles=[GLOBAL_ADMINISTRATOR]),
                                                 pointer="/roles/0")),
    ("privileged role among allowed ones", Case(400, "RoleNotAllowed", pointer="/roles/1", body=spec(
        roles=["Exchange Recipient Administrator", PRIVILEGED_ROLE_ADMINISTRATOR]))),
    ("privileged role in odd spelling", Case(400, "RoleNotAllowed", body=spec(roles=["global  ADMINISTRATOR"]),
                                             pointer="/roles/0")),
    ("role not on the allow-list", Case(400, "RoleNotAllowed", body=spec(roles=["Exchange Administrator"]),
                                        pointer="/roles/0")),
    ("role outside the Exchange list", Case(400, "RoleNotAllowed", body=spec(roles=["User Administrator"]),
                                            pointer="/roles/0")),
    ("unknown role template id", Case(400, "RoleNotAllowed", pointer="/roles/0",
                                      body=spec(roles=["00000000-0000-0000-0000-000000000001"]))),
    ("roles empty", Case(400, "InvalidRequest", body=spec(roles=[]), pointer="/roles")),
    ("roles not a list", Case(400, "InvalidRequest", body=spec(roles="Exchange Recipient Administrator"),
                              pointer="/roles")),
    ("six roles", Case(400, "InvalidRequest", body=spec(roles=["Exchange Recipient Administrator"] * 6),
                       pointer="/roles")),
    ("validity 25 months", Case(400, "InvalidRequest", body=spec(validityMonths=25), pointer="/validityMonths")),
    ("validity as boolean", Case(400, "InvalidRequest", body=spec(validityMonths=True), pointer="/validityMonths")),
    ("key size 1024", Case(400, "InvalidRequest", body=spec(keySize=1024), pointer="/keySize")),
    ("bad contact", Case(400, "InvalidRequest", body=spec(contacts=["ops"]), pointer="/contacts")),
    ("description too long", Case(400, "InvalidRequest", body=spec(description="x" * 201),
                                  pointer="/description")),
    ("contacts and description overflow their tag", Case(400, "InvalidRequest", pointer="/description", body=spec(
        contacts=[f"{'a' * 48}{i}@contoso.com" for i in range(5)], description="x" * 40))),
    ("oversized body", Case(413, "BodyTooLarge", body=spec(description="x" * (16 * 1024)))),
    ("wrong content type", Case(415, "UnsupportedMediaType", raw=b"name=abc",
                                headers={"Content-Type": "application/x-www-form-urlencoded"})),
    ("text content type", Case(415, "UnsupportedMediaType", raw=b'{"name": "abc"}',
                               headers={"Content-Type": "text/plain"})),
    # -- the query and the route ------------------------------------------------------------------
    ("dryRun=maybe on POST", Case(400, "InvalidQuery", body=spec(), params={"dryRun": "maybe"},
                                  pointer="?dryRun")),
    ("dryRun=maybe on DELETE", Case(400, "InvalidQuery", "DELETE", ONE, params={"dryRun": "maybe"})),
    ("dryRun=maybe on rotate", Case(400, "InvalidQuery", "POST", ROTATE, params={"dryRun": "yes please"})),
    ("bad name in status route", Case(400, "InvalidName", "GET", ONE).named("ABC")),
    ("bad name in delete route", Case(400, "InvalidName", "DELETE", ONE).named("a--b")),
    ("bad name in rotate route", Case(400, "InvalidName", "POST", ROTATE).named("x")),
    # -- methods ----------------------------------------------------------------------------------
    *[(f"{m} /identities", Case(405, "MethodNotAllowed", m, LIST, allow="GET, POST")) for m in ("PUT", "PATCH",
                                                                                              "DELETE")],
    *[(f"{m} /identities/name", Case(405, "MethodNotAllowed", m, ONE, allow="GET, DELETE"))
      for m in ("POST", "PUT", "PATCH")],
    *[(f"{m} /identities/name/rotate", Case(405, "MethodNotAllowed", m, ROTATE, allow="POST"))
      for m in ("GET", "PUT", "PATCH", "DELETE")],
    # -- the caller, when App Service authentication fronts the app -------------------------------
    ("no principal, POST", Case(401, "AuthenticationRequired", body=spec(), env=APP_ROLES)),
    ("no principal, GET", Case(401, "AuthenticationRequired", "GET", LIST, env=APP_ROLES)),
    ("no principal, status", Case(401, "AuthenticationRequired", "GET", ONE, env=APP_ROLES)),
    ("unreadable principal", Case(401, "AuthenticationRequired", body=spec(), env=APP_ROLES,
                                  headers={"X-MS-CLIENT-PRINCIPAL": NO_PRINCIPAL})),
    ("principal not an object", Case(401, "AuthenticationRequired", body=spec(), env=APP_ROLES, headers={
        "X-MS-CLIENT-PRINCIPAL": base64.b64encode(b"[1]").decode()})),
    ("principal without roles, GET", Case(403, "AppRoleMissing", "GET", LIST, env=APP_ROLES,
                                          headers=principal_header([]))),
    ("principal without roles, POST", Case(403, "AppRoleMissing", body=spec(), env=APP_ROLES,
                                           headers=principal_header(["Some.Other.Role"]))),
    ("reader POSTs", Case(403, "AppRoleMissing", body=spec(), env=APP_ROLES,
                          headers=principal_header(["ExoIdentities.Read"]))),
    ("reader DELETEs", Case(403, "AppRoleMissing", "DELETE", ONE, env=APP_ROLES,
                            headers=principal_header(["ExoIdentities.Read"]))),
    ("reader rotates", Case(403, "AppRoleMissing", "POST", ROTATE, env=APP_ROLES,
                            headers=principal_header(["ExoIdentities.Read"]))),
    ("reader dry-runs a POST", Case(403, "AppRoleMissing", body=spec(), params={"dryRun": "true"}, env=APP_ROLES,
                                    headers=principal_header(["ExoIdentities.Read"]))),
    # -- the platform's settings ------------------------------------------------------------------
    ("EXO_ORGANIZATION unset", Case(500, "SettingMissing", body=spec(), env={"EXO_ORGANIZATION": None})),
    ("KEY_VAULT_URL not https", Case(500, "SettingInvalid", "GET", LIST,
                                     env={"KEY_VAULT_URL": "http://vault.example/"})),
    ("privileged role on the allow-list", Case(500, "SettingInvalid", body=spec(roles=["Global Administrator"]),
                                               env={"ALLOWED_ROLES": "Global Administrator"})),
]

# Where a settings row must name the setting at fault.
SETTING_NAMED = {"EXO_ORGANIZATION unset": "EXO_ORGANIZATION", "KEY_VAULT_URL not https": "KEY_VAULT_URL",
                 "privileged role on the allow-list": "ALLOWED_ROLES"}


def send(case: Case) -> HttpResult:
    function, url, route_params = case.route
    return call(function, case.method, url, body=case.body, raw=case.raw, params=case.params,
                route_params=route_params, headers=case.headers)


def vault_is_empty(stack: Stack) -> bool:
    state = stack.world.services["keyvault"].snapshot()
    return not any(state[kind] for kind in ("certificates", "secrets", "deletedCertificates", "deletedSecrets"))


@pytest.mark.parametrize("case", [c[1] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_a_problem_and_changes_nothing(stack: Stack, case: Case, monkeypatch: pytest.MonkeyPatch,
                                                    request: pytest.FixtureRequest) -> None:
    for name, value in case.env.items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    applications_before = dict(stack.world.directory.applications)
    stack.world.counter.reset()

    response = send(case)

    assert response.status == case.status, response.body
    assert response.content_type == "application/problem+json"
    problem = response.body
    assert {"type", "title", "status", "detail"} <= set(problem)
    assert problem["status"] == case.status and problem["title"] and problem["detail"]
    if case.reason is not None:
        assert problem["reason"] == case.reason
        assert problem["type"] == problem_type(case.reason)
    if case.pointer is not None:
        assert case.pointer in [e["pointer"] for e in problem.get("errors", [])], problem
    if case.allow is not None:
        assert response.headers["Allow"] == case.allow
    if case.status == 401:
        assert response.headers["WWW-Authenticate"] == "Bearer"
    setting = SETTING_NAMED.get(request.node.callspec.id)
    if setting is not None:
        assert setting in problem["detail"]

    assert write_count(stack) == 0
    assert stack.world.directory.applications == applications_before == {}
    assert vault_is_empty(stack)


def test_no_key_material_or_internals_in_problems(stack: Stack) -> None:
    """A problem explains the request, not the platform: no tracebacks, tokens or paths."""
    for _, case in CASES:
        if case.env:
            continue
        text = repr(send(case).body)
        for leak in ("Traceback", "eyJ", "-----BEGIN", "/work/", "site-packages"):
            assert leak not in text, (leak, text)


def test_every_problem_lists_all_the_errors_of_a_body(stack: Stack) -> None:
    response = call("identities", "POST", "http://localhost/api/identities", body={
        "name": "A", "roles": ["Global Administrator", "Exchange Administrator"], "validityMonths": 0,
        "keySize": 1, "extra": 1})
    assert response.status == 400
    pointers = {e["pointer"] for e in response.body["errors"]}
    assert pointers == {"/extra", "/name", "/roles/0", "/roles/1", "/validityMonths", "/keySize"}


def test_app_roles_let_readers_read_and_writers_write(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTH_REQUIRE_APP_ROLES", "true")
    monkeypatch.setenv("WEBSITE_AUTH_ENABLED", "true")
    reader, writer = principal_header(["ExoIdentities.Read"]), principal_header(["ExoIdentities.ReadWrite"])

    assert call("identities", "GET", LIST[1], headers=reader).status == 200
    assert call("identities", "POST", LIST[1], body=spec(), headers=reader).status == 403
    created = call("identities", "POST", LIST[1], body=spec(), headers=writer)
    assert created.status == 201, created.body
    assert call("identity", "GET", ONE[1], route_params=ONE[2], headers=reader).status == 200
    assert call("identity", "GET", ONE[1], route_params=ONE[2], headers=writer).status == 200
    assert call("identities", "GET", LIST[1]).status == 401


def test_app_roles_are_not_asked_for_by_default(stack: Stack) -> None:
    """Behind the function key alone (the default) no principal is needed."""
    assert call("identities", "GET", LIST[1]).status == 200


def _principal(claims: list[dict[str, Any]], **fields: Any) -> dict[str, str]:
    encoded = base64.b64encode(json.dumps({"auth_typ": "aad", "claims": claims, **fields}).encode()).decode()
    return {"X-MS-CLIENT-PRINCIPAL": encoded}


ROLE_CLAIM_SHAPES = [
    ("roles claim", _principal([{"typ": "roles", "val": "ExoIdentities.Read"}]), 200),
    ("role URI claim", _principal([{"typ": "http://schemas.microsoft.com/ws/2008/06/identity/claims/role",
                                    "val": "ExoIdentities.Read"}]), 200),
    ("claim type named by role_typ", _principal([{"typ": "app-roles", "val": "ExoIdentities.Read"}],
                                                 role_typ="app-roles"), 200),
    ("role only in another claim", _principal([{"typ": "scp", "val": "ExoIdentities.Read"}]), 403),
    ("claim without a type", _principal([{"val": "ExoIdentities.Read"}]), 403),
]


@pytest.mark.parametrize(("headers", "status"), [(c[1], c[2]) for c in ROLE_CLAIM_SHAPES],
                         ids=[c[0] for c in ROLE_CLAIM_SHAPES])
def test_app_roles_are_read_from_the_claim_types_app_service_uses(stack: Stack, monkeypatch: pytest.MonkeyPatch,
                                                                  headers: dict[str, str], status: int) -> None:
    monkeypatch.setenv("AUTH_REQUIRE_APP_ROLES", "true")
    monkeypatch.setenv("WEBSITE_AUTH_ENABLED", "true")
    assert call("identities", "GET", LIST[1], headers=headers).status == status


def test_an_unexpected_failure_is_still_a_problem_document(stack: Stack, monkeypatch: pytest.MonkeyPatch,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    import shared.service

    async def broken(platform: Any) -> list[dict[str, Any]]:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(shared.service, "list_identities", broken)
    response = call("identities", "GET", LIST[1])
    assert response.status == 500
    assert response.content_type == "application/problem+json"
    assert response.body["reason"] == "InternalError"
    assert "secret internals" not in json.dumps(response.body)
    assert "secret internals" in caplog.text, "the cause is logged"
