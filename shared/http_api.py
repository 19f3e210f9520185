"""HTTP triggers for automation identities: parse, call `service`, shape the answer.

Routes (function auth level; see README "HTTP API" and openapi.yaml):
    POST   /api/identities                 bootstrap (idempotent); ?dryRun=true returns the plan
    GET    /api/identities                 list
    GET    /api/identities/{name}          status
    POST   /api/identities/{name}/rotate   rotate now; ?dryRun=true
    DELETE /api/identities/{name}          decommission; ?dryRun=true
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import azure.functions as func

from .errors import ExoAutomationError, InvalidSpec, SettingsError
from .problems import PROBLEM_CONTENT_TYPE, dumps, problem, problem_for

log = logging.getLogger("exo_automation.http")

bp = func.Blueprint()  # type: ignore[no-untyped-call]

MAX_BODY_BYTES = 16 * 1024
READ_ROLE = "ExoIdentities.Read"
WRITE_ROLE = "ExoIdentities.ReadWrite"
ALL_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]
ROLE_CLAIM_URI = "http://schemas.microsoft.com/ws/2008/06/identity/claims/role"


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


def caller_principal(req: func.HttpRequest) -> dict[str, Any] | None:
    """The caller as App Service authentication describes it (X-MS-CLIENT-PRINCIPAL), if present."""
    encoded = req.headers.get("x-ms-client-principal")
    if not encoded:
        return None
    try:
        principal = json.loads(base64.b64decode(encoded))
    except (ValueError, binascii.Error):
        return None
    if not isinstance(principal, dict):
        return None
    claims = principal.get("claims")
    # A principal is App Service's JSON; anything else in its place (claims not a list of objects,
    # a claim type that is not a string) carries no roles rather than failing the request.
    claims = [c for c in claims if isinstance(c, dict) and isinstance(c.get("typ"), str)] \
        if isinstance(claims, list) else []
    # Entra puts app roles in `roles`; App Service may announce another claim type in `role_typ`.
    role_typ = principal.get("role_typ")
    role_types = {"roles", "role", ROLE_CLAIM_URI, role_typ if isinstance(role_typ, str) and role_typ else "roles"}
    roles = [c.get("val") for c in claims if c["typ"] in role_types]
    names = [c.get("val") for c in claims if c["typ"] in ("name", "appid", "oid")]
    return {"name": req.headers.get("x-ms-client-principal-name") or (names[0] if names else None),
            "id": req.headers.get("x-ms-client-principal-id"), "roles": [r for r in roles if isinstance(r, str)]}


def _who(req: func.HttpRequest) -> dict[str, Any]:
    """Caller and correlation id for audit events: the principal App Service authenticated, if any."""
    principal = caller_principal(req)
    caller = f"principal:{principal['name'] or principal['id']}" if principal else "function-key"
    correlation = req.headers.get("x-ms-client-request-id") or req.headers.get("x-correlation-id")
    valid = correlation is not None and 0 < len(correlation) <= 64 and correlation.replace("-", "").isalnum()
    return {"caller": caller, "correlation_id": correlation if valid else None}


def _authorise(req: func.HttpRequest, require_roles: bool, write: bool) -> func.HttpResponse | None:
    if not require_roles:
        return None
    principal = caller_principal(req)
    if principal is None:
        return _problem(401, "AuthenticationRequired",
                        "this platform requires App Service authentication; no caller principal was presented",
                        headers={"WWW-Authenticate": "Bearer"})
    needed = WRITE_ROLE if write else READ_ROLE
    held = set(principal["roles"])
    if needed not in held and not (not write and WRITE_ROLE in held):
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


class _TooLarge(Exception):
    pass


class _UnsupportedMediaType(Exception):
    def __init__(self, content_type: str) -> None:
        super().__init__(content_type)
        self.content_type = content_type


Handler = Callable[[Any], Awaitable[func.HttpResponse]]


async def _handle(req: func.HttpRequest, write: bool, work: Handler) -> func.HttpResponse:
    """Common frame: settings, authorisation, error mapping. `work` gets the platform."""
    from .platform import current_platform
    from .settings import Settings

    try:
        settings = Settings.from_environment()
    except SettingsError as exc:
        log.error("configuration error: %s", exc.message)
        return _problem(500, exc.reason, f"the platform is misconfigured: {exc.message}")
    denied = _authorise(req, settings.require_app_roles, write)
    if denied is not None:
        return denied
    try:
        return await work(current_platform(settings))
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
        # Still a problem document, never a traceback: the cause goes to the logs only.
        log.exception("unexpected failure handling %s %s", req.method, req.url)
        return _problem(500, "InternalError", "an unexpected error occurred; the function logs have the cause")


def _run_response(result: Any, created_status: int = 200) -> func.HttpResponse:
    from .problems import problem_for as to_problem
    from .service import run_document

    document = run_document(result)
    if result.error is not None:
        status, problem_doc, headers = to_problem(result.error, run=document)
        return func.HttpResponse(dumps(problem_doc), status_code=status,
                                 headers={"Content-Type": PROBLEM_CONTENT_TYPE, **headers})
    return _json(created_status if result.changed else 200, document)


@bp.route(route="identities", methods=ALL_METHODS, auth_level=func.AuthLevel.FUNCTION)
async def identities(req: func.HttpRequest) -> func.HttpResponse:
    if req.method == "GET":
        async def list_all(platform: Any) -> func.HttpResponse:
            from .service import list_identities

            return _json(200, {"value": await list_identities(platform)})

        return await _handle(req, False, list_all)
    if req.method == "POST":
        async def create(platform: Any) -> func.HttpResponse:
            from .service import bootstrap

            dry_run = _dry_run(req)
            return _run_response(await bootstrap(platform, _body(req), dry_run=dry_run, **_who(req)),
                                 created_status=201)

        return await _handle(req, True, create)
    return _method_not_allowed(req, ["GET", "POST"])


@bp.route(route="identities/{name}", methods=ALL_METHODS, auth_level=func.AuthLevel.FUNCTION)
async def identity(req: func.HttpRequest) -> func.HttpResponse:
    name = req.route_params.get("name", "")
    if req.method == "GET":
        async def show(platform: Any) -> func.HttpResponse:
            from .service import status

            return _json(200, await status(platform, name))

        return await _handle(req, False, show)
    if req.method == "DELETE":
        async def remove(platform: Any) -> func.HttpResponse:
            from .service import decommission

            return _run_response(await decommission(platform, name, dry_run=_dry_run(req), **_who(req)))

        return await _handle(req, True, remove)
    return _method_not_allowed(req, ["GET", "DELETE"])


@bp.route(route="identities/{name}/rotate", methods=ALL_METHODS, auth_level=func.AuthLevel.FUNCTION)
async def rotate_identity(req: func.HttpRequest) -> func.HttpResponse:
    name = req.route_params.get("name", "")
    if req.method != "POST":
        return _method_not_allowed(req, ["POST"])

    async def rotate(platform: Any) -> func.HttpResponse:
        from .service import reconcile

        result = await reconcile(platform, name, force_rotate=True, dry_run=_dry_run(req), operation="rotate",
                                 **_who(req))
        return _run_response(result)

    return await _handle(req, True, rotate)
