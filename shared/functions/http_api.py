"""HTTP triggers for automation identities: parse, call `service`, shape the answer.

Routes (function auth level; see README "HTTP API" and openapi.yaml):
    POST   /api/identities                 bootstrap (idempotent); ?dryRun=true returns the plan
    GET    /api/identities                 list
    GET    /api/identities/{name}          status
    POST   /api/identities/{name}/rotate   rotate now; ?dryRun=true
    DELETE /api/identities/{name}          decommission; ?dryRun=true
    GET    /api/operations/{operationId}   progress of a write that answered 202 Accepted

Writes run inline for up to HTTP_INLINE_BUDGET_SECONDS, then answer 202 with `Location` (the
operation) and `Retry-After`, and continue from the queue (shared/operations.py). The continuation is
sent through the write routes' queue output binding (`continuation`) rather than the storage SDK: the
host's queue listener is told when a function of the same host adds a message through a binding and
polls at once, instead of up to host.json's maxPollingInterval later.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import azure.functions as func

from shared.caller_auth import AuthenticationFailed, Caller, KeysUnavailable, identify
from shared.errors import ExoAutomationError, InvalidSpec, SettingsError
from shared.functions.problems import PROBLEM_CONTENT_TYPE, dumps, problem, problem_for
from shared.settings import Settings

log = logging.getLogger("exo_automation.http")

bp = func.Blueprint()  # type: ignore[no-untyped-call]

MAX_BODY_BYTES = 16 * 1024
OPERATION_ID = re.compile(r"[0-9a-f]{32}")
READ_ROLE = "ExoIdentities.Read"
WRITE_ROLE = "ExoIdentities.ReadWrite"
ALL_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]
# The write routes' output binding to the reconcile queue, which carries a run on after a 202.
CONTINUATION_QUEUE = "%RECONCILE_QUEUE%"
# All of one request's waits on Microsoft Graph's Retry-After together (shared/adapters/graph.py): an
# HTTP answer must come within 230 s (docs/reference.md), and a caller is better told 503 + Retry-After.
HTTP_GRAPH_WAIT_SECONDS = 60.0


def _json(status: int, document: Any, headers: dict[str, str] | None = None) -> func.HttpResponse:
    return func.HttpResponse(dumps(document) if isinstance(document, dict) else json.dumps(document, indent=2),
                             status_code=status, mimetype="application/json", headers=headers)


def _problem(status: int, reason: str, detail: str, headers: dict[str, str] | None = None,
             **extensions: Any) -> func.HttpResponse:
    return func.HttpResponse(dumps(problem(status, reason, detail, **extensions)), status_code=status,
                             headers={"Content-Type": PROBLEM_CONTENT_TYPE, **(headers or {})})


def _method_not_allowed(req: func.HttpRequest, allowed: list[str]) -> func.HttpResponse:
    return _problem(405, "MethodNotAllowed", f"{req.method} is not supported here; use {', '.join(allowed)}",
                    headers={"Allow": ", ".join(allowed)})


def _correlation_id(req: func.HttpRequest) -> str | None:
    correlation = req.headers.get("x-ms-client-request-id") or req.headers.get("x-correlation-id")
    valid = correlation is not None and 0 < len(correlation) <= 64 and correlation.replace("-", "").isalnum()
    return correlation if valid else None


def _authorise(caller: Caller, settings: Settings, write: bool) -> func.HttpResponse | None:
    if not settings.require_app_roles:
        return None
    if not settings.app_service_auth_enabled and not settings.auth_audiences:
        # Client-sent principal headers are not evidence of anything: refuse rather than trust them.
        return _problem(500, "AuthenticationMisconfigured",
                        "AUTH_REQUIRE_APP_ROLES is true but no trustworthy caller identity is configured: turn on "
                        "App Service Authentication (the platform then sets WEBSITE_AUTH_ENABLED), or set "
                        "AUTH_AUDIENCE to the API app registration so the app validates callers' Entra tokens")
    if not caller.verified:
        how = "App Service authentication" if settings.app_service_auth_enabled else \
            "an Entra access token for this API (Authorization: Bearer)"
        return _problem(401, "AuthenticationRequired", f"this platform requires {how}; none was presented",
                        headers={"WWW-Authenticate": "Bearer"})
    needed = WRITE_ROLE if write else READ_ROLE
    if needed not in caller.roles and not (not write and WRITE_ROLE in caller.roles):
        return _problem(403, "AppRoleMissing", f"the caller needs the app role {needed}")
    return None


def _dry_run(req: func.HttpRequest) -> bool:
    value = req.params.get("dryRun")
    if value is None:
        return False
    if value.lower() in ("true", "1"):
        return True
    if value.lower() in ("false", "0"):
        return False
    raise InvalidSpec("dryRun must be true or false", reason="InvalidQuery",
                      errors=[{"pointer": "?dryRun", "detail": "must be true or false"}])


def _body(req: func.HttpRequest) -> object:
    raw = req.get_body() or b""
    if len(raw) > MAX_BODY_BYTES:
        raise _TooLarge()
    content_type = (req.headers.get("content-type") or "application/json").split(";")[0].strip().lower()
    if content_type != "application/json" and not content_type.endswith("+json"):
        raise _UnsupportedMediaType(content_type)
    try:
        return json.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidSpec(f"the request body is not valid JSON: {exc}", reason="MalformedJson") from exc
    except RecursionError as exc:  # e.g. thousands of nested arrays: valid JSON no spec ever needs
        raise InvalidSpec("the request body nests too deeply", reason="MalformedJson") from exc


class _TooLarge(Exception):
    pass


class _UnsupportedMediaType(Exception):
    def __init__(self, content_type: str) -> None:
        super().__init__(content_type)
        self.content_type = content_type


Handler = Callable[[Any, dict[str, Any]], Awaitable[func.HttpResponse]]


async def _handle(req: func.HttpRequest, write: bool, work: Handler) -> func.HttpResponse:
    """Common frame: settings, caller, authorisation, error mapping.

    `work` gets the platform and the run's audit context (`caller`, `correlation_id`).
    """
    from shared.adapters.graph import graph_wait_budget
    from shared.platform import current_platform

    try:
        settings = Settings.current()
    except SettingsError as exc:
        log.error("configuration error: %s", exc.message)
        return _problem(500, exc.reason, f"the platform is misconfigured: {exc.message}")
    try:
        caller = await identify(req.headers, settings)
    except AuthenticationFailed as exc:
        return _problem(401, "AuthenticationFailed", str(exc),
                        headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
    except KeysUnavailable as exc:
        return _problem(503, "AuthenticationUnavailable", str(exc), headers={"Retry-After": "30"})
    denied = _authorise(caller, settings, write)
    if denied is not None:
        return denied
    who = {"caller": caller.audit_name, "correlation_id": _correlation_id(req)}
    try:
        with graph_wait_budget(HTTP_GRAPH_WAIT_SECONDS):
            return await work(current_platform(settings), who)
    except _TooLarge:
        return _problem(413, "BodyTooLarge", f"request bodies are limited to {MAX_BODY_BYTES} bytes")
    except _UnsupportedMediaType as exc:
        return _problem(415, "UnsupportedMediaType", f"send application/json, not {exc.content_type}")
    except ExoAutomationError as exc:
        status, document, headers = problem_for(exc)
        if status >= 500:
            log.warning("request failed: %s %s", exc.reason, exc.message)
        return func.HttpResponse(dumps(document), status_code=status,
                                 headers={"Content-Type": PROBLEM_CONTENT_TYPE, **headers})
    except Exception:
        # Still a problem document, never a traceback: the cause goes to the logs only. The path
        # only: the query string may carry the function key (`?code=`).
        log.exception("unexpected failure handling %s %s", req.method, urlsplit(req.url).path)
        return _problem(500, "InternalError", "an unexpected error occurred; the function logs have the cause")


def _run_response(result: Any, created_status: int = 200) -> func.HttpResponse:
    from shared.functions.problems import problem_for as to_problem
    from shared.service import run_document

    document = run_document(result)
    if result.error is not None:
        status, problem_doc, headers = to_problem(result.error, run=document)
        return func.HttpResponse(dumps(problem_doc), status_code=status,
                                 headers={"Content-Type": PROBLEM_CONTENT_TYPE, **headers})
    return _json(created_status if result.changed else 200, document)


def _submitted(submitted: Any, created_status: int = 200) -> func.HttpResponse:
    """The inline run's answer, or 202 Accepted pointing at the operation that goes on from the queue."""
    from shared.core.operation import retry_after_seconds
    from shared.operations import operation_location

    if not submitted.accepted:
        return _run_response(submitted.result, created_status)
    document = submitted.document
    return _json(202, document, headers={"Location": operation_location(document["id"]),
                                         "Retry-After": str(retry_after_seconds(document))})


@bp.route(route="identities", methods=ALL_METHODS, auth_level=func.AuthLevel.FUNCTION)
@bp.queue_output(arg_name="continuation", queue_name=CONTINUATION_QUEUE, connection="AzureWebJobsStorage")
async def identities(req: func.HttpRequest, continuation: func.Out[str]) -> func.HttpResponse:
    if req.method == "GET":
        async def list_all(platform: Any, who: dict[str, Any]) -> func.HttpResponse:
            from shared.service import list_identities

            return _json(200, {"value": await list_identities(platform)})

        return await _handle(req, False, list_all)
    if req.method == "POST":
        async def create(platform: Any, who: dict[str, Any]) -> func.HttpResponse:
            from shared.operations import submit
            from shared.service import bootstrap

            dry_run = _dry_run(req)
            body = _body(req)
            if dry_run:
                return _run_response(await bootstrap(platform, body, dry_run=True, **who), created_status=201)
            from shared.core.spec import parse_spec

            spec = parse_spec(body, platform.settings)  # a bad request is answered at once, never queued
            return _submitted(await submit(platform, "bootstrap", spec.name, spec=body, hand_off=continuation.set,
                                           **who), created_status=201)

        return await _handle(req, True, create)
    return _method_not_allowed(req, ["GET", "POST"])


@bp.route(route="identities/{name}", methods=ALL_METHODS, auth_level=func.AuthLevel.FUNCTION)
@bp.queue_output(arg_name="continuation", queue_name=CONTINUATION_QUEUE, connection="AzureWebJobsStorage")
async def identity(req: func.HttpRequest, continuation: func.Out[str]) -> func.HttpResponse:
    name = req.route_params.get("name", "")
    if req.method == "GET":
        async def show(platform: Any, who: dict[str, Any]) -> func.HttpResponse:
            from shared.service import status

            return _json(200, await status(platform, name))

        return await _handle(req, False, show)
    if req.method == "DELETE":
        async def remove(platform: Any, who: dict[str, Any]) -> func.HttpResponse:
            from shared.operations import submit
            from shared.service import decommission

            if _dry_run(req):
                return _run_response(await decommission(platform, name, dry_run=True, **who))
            return _submitted(await submit(platform, "decommission", name, hand_off=continuation.set, **who))

        return await _handle(req, True, remove)
    return _method_not_allowed(req, ["GET", "DELETE"])


@bp.route(route="identities/{name}/rotate", methods=ALL_METHODS, auth_level=func.AuthLevel.FUNCTION)
@bp.queue_output(arg_name="continuation", queue_name=CONTINUATION_QUEUE, connection="AzureWebJobsStorage")
async def rotate_identity(req: func.HttpRequest, continuation: func.Out[str]) -> func.HttpResponse:
    name = req.route_params.get("name", "")
    if req.method != "POST":
        return _method_not_allowed(req, ["POST"])

    async def rotate(platform: Any, who: dict[str, Any]) -> func.HttpResponse:
        from shared.operations import submit
        from shared.service import reconcile, recorded_spec

        if _dry_run(req):
            return _run_response(await reconcile(platform, name, force_rotate=True, dry_run=True,
                                                 operation="rotate", **who))
        await recorded_spec(platform, name)  # an unknown name is answered at once (404), never queued
        return _submitted(await submit(platform, "rotate", name, force_rotate=True, hand_off=continuation.set,
                                       **who))

    return await _handle(req, True, rotate)


@bp.route(route="operations/{operationId}", methods=ALL_METHODS, auth_level=func.AuthLevel.FUNCTION)
async def operation_status(req: func.HttpRequest) -> func.HttpResponse:
    """The progress of a write that answered 202 (shared/operations.py)."""
    operation_id = req.route_params.get("operationId", "")
    if req.method != "GET":
        return _method_not_allowed(req, ["GET"])

    async def show(platform: Any, who: dict[str, Any]) -> func.HttpResponse:
        from shared.core.operation import TERMINAL, retry_after_seconds
        from shared.operations import OperationStore

        if not OPERATION_ID.fullmatch(operation_id):
            return _problem(404, "OperationNotFound", "no operation with that id")
        document = await OperationStore(platform.settings).load(operation_id)
        if document is None:
            return _problem(404, "OperationNotFound", "no operation with that id (operations are kept for "
                            "as long as the storage account's lifecycle policy keeps them)")
        headers = {} if document["status"] in TERMINAL else {"Retry-After": str(retry_after_seconds(document))}
        return _json(200, document, headers=headers)

    return await _handle(req, False, show)
