"""Exchange Online stand-in: the REST cmdlet endpoint the v3 PowerShell module uses.

`POST /adminapi/beta/{tenant}/InvokeCommand` with `{"CmdletInput": {"CmdletName", "Parameters"}}`
(docs/reference.md "Exchange Online", seen, undocumented). `{tenant}` is the tenant id or the primary
onmicrosoft domain, as clients in the wild use both.

Access, in this order:

1. a bearer token from the Entra stand-in whose audience is one of `world.resources["exchange"]`
   (a trailing slash is tolerated), else 401;
2. the tenant in the path must be the token's `tid`, else 401;
3. an `X-AnchorMailbox` header (any non-empty value: clients send `UPN:SystemMailbox{…}@<org>` or
   `APP:SystemMailbox{…}@<tenant id>`), else 400;
4. `roles` must hold `Exchange.ManageAsApp` (the admin consent), else 401;
5. `wids` must hold a role Exchange honours for app-only access (EXCHANGE_SUPPORTED_ROLES), else 403.

Cmdlets: `Get-Mailbox` with `Identity` (name, alias, UPN, primary SMTP address or
ExternalDirectoryObjectId), `ResultSize` (positive int or "Unlimited"; default 1000, as the cmdlet's)
and `RecipientTypeDetails` (one value or a list). Parameter names are case-insensitive, as in
PowerShell.

Paging: `Prefer: odata.maxpagesize=N` caps a page (default 1000) and the answer carries
`Preference-Applied`; when more rows remain, `@odata.nextLink` is this endpoint with a `$skiptoken`
query, and the client POSTs the same body to it. The skiptoken binds the cmdlet input it was issued
for, so a different body at a next link is refused with 400.

Unverified (assumptions chosen to be harmless to a client that only branches on the status code):
the error body, which follows the OData shape that client code in the wild reads
(`{"error": {"code", "message", "details": [{"code", "target", "message"}],
"innererror": {"message", "type"}}}`); the error codes; 404 for an `Identity` that matches
nothing; the order of the checks; the `WWW-Authenticate` value on 401.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from typing import Any

from .tokens import authenticate
from .web import HttpError, Request, Response, Service
from .world import EXCHANGE_APP_ID, EXCHANGE_SUPPORTED_ROLES, Mailbox, World

DEFAULT_RESULT_SIZE = 1000
DEFAULT_PAGE_SIZE = 1000
MANAGE_AS_APP = "Exchange.ManageAsApp"
RECIPIENT_TYPES = {
    "UserMailbox", "SharedMailbox", "RoomMailbox", "EquipmentMailbox", "LinkedMailbox",
    "SchedulingMailbox", "TeamMailbox", "DiscoveryMailbox", "GroupMailbox", "LegacyMailbox",
}
_MAXPAGESIZE = re.compile(r"odata\.maxpagesize\s*=\s*(\d+)", re.IGNORECASE)


def _unauthorized(message: str) -> HttpError:
    return HttpError(401, "Unauthorized", message, headers={
        "WWW-Authenticate": f'Bearer client_id="{EXCHANGE_APP_ID}", error="invalid_token"',
    })


def _cmdlet_error(status: int, code: str, exception: str, target: str, message: str) -> HttpError:
    return HttpError(status, code, message, inner_code=exception,
                     details=[{"code": exception, "target": target, "message": message}])


def _bad_parameter(name: str, message: str) -> HttpError:
    return _cmdlet_error(400, "BadRequest", "ParameterBindingException", name, message)


class ExchangeService(Service):
    name = "exchange"

    def __init__(self, world: World) -> None:
        super().__init__()
        self.world = world
        self.cmdlets = {"get-mailbox": self.get_mailbox}
        self.route("POST", "/adminapi/beta/{tenant}/InvokeCommand", self.invoke_command)

    def error_response(self, error: HttpError, request: Request) -> Response:
        body: dict[str, Any] = {"code": error.code, "message": error.message}
        if error.details:
            body["details"] = error.details
        if error.inner_code:
            body["innererror"] = {"message": error.message, "type": error.inner_code}
        return Response.json(error.status, {"error": body}, error.headers)

    # -- the endpoint ------------------------------------------------------------------------------
    def invoke_command(self, request: Request) -> Response:
        self._authorize(request)
        tenant = request.params["tenant"]
        body = request.json()
        cmdlet_input = body.get("CmdletInput") if isinstance(body, dict) else None
        if not isinstance(cmdlet_input, dict) or not isinstance(cmdlet_input.get("CmdletName"), str):
            raise HttpError(400, "BadRequest", 'The request body must be {"CmdletInput": {"CmdletName": '
                                               '"…", "Parameters": {…}}}.')
        name = cmdlet_input["CmdletName"].strip()
        parameters = cmdlet_input.get("Parameters") or {}
        if not isinstance(parameters, dict):
            raise HttpError(400, "BadRequest", "CmdletInput.Parameters must be an object.")
        handler = self.cmdlets.get(name.lower())
        if handler is None:
            message = (f"The term '{name}' is not recognized as the name of a cmdlet, function, script file, "
                       "or operable program.")
            raise _cmdlet_error(400, "BadRequest", "CommandNotFoundException", name, message)
        rows = handler(parameters)

        fingerprint = hashlib.sha256(json.dumps(cmdlet_input, sort_keys=True).encode()).hexdigest()[:16]
        offset = self._offset(request.query.get("$skiptoken"), fingerprint)
        page_size = self._page_size(request)
        page = rows[offset: offset + page_size]
        base = f"{self.base_url}/adminapi/beta/{tenant}"
        payload: dict[str, Any] = {
            "@odata.context": f"{base}/$metadata#Collection(Exchange.GenericHashTable)",
            "value": page,
        }
        if offset + page_size < len(rows):
            raw = f"{offset + page_size}:{fingerprint}".encode()
            token = base64.urlsafe_b64encode(raw).decode().rstrip("=")
            payload["@odata.nextLink"] = f"{base}/InvokeCommand?$skiptoken={token}"
        return Response.json(200, payload, {"Preference-Applied": f"odata.maxpagesize={page_size}"})

    def _authorize(self, request: Request) -> dict[str, Any]:
        audiences = [*self.world.resources.get("exchange", [])]
        audiences += [a.rstrip("/") + "/" for a in audiences]
        refusal = _unauthorized("The access token is missing, invalid or not for Exchange Online.")
        claims = authenticate(request, self.world.issuer, audiences, refusal)
        tenant = request.params["tenant"].lower()
        if claims.get("tid") != self.world.tenant_id or tenant not in (
                self.world.tenant_id.lower(), self.world.organization.lower()):
            raise _unauthorized("The access token was not issued for this organization.")
        if not (request.header("x-anchormailbox") or "").strip():
            raise HttpError(400, "BadRequest", "The X-AnchorMailbox header is required.")
        if MANAGE_AS_APP not in (claims.get("roles") or []):
            raise _unauthorized(f"The application has not been granted the {MANAGE_AS_APP} permission "
                                "(admin consent missing).")
        if not set(claims.get("wids") or []) & EXCHANGE_SUPPORTED_ROLES:
            raise HttpError(403, "Forbidden",
                            "The application has no Entra role that Exchange Online accepts for app-only "
                            "access (for example Exchange Recipient Administrator).")
        return claims

    def _page_size(self, request: Request) -> int:
        match = _MAXPAGESIZE.search(request.header("prefer") or "")
        if match is None:
            return DEFAULT_PAGE_SIZE
        return max(1, int(match.group(1)))

    def _offset(self, skiptoken: str | None, fingerprint: str) -> int:
        if skiptoken is None:
            return 0
        try:
            raw = base64.urlsafe_b64decode(skiptoken + "=" * (-len(skiptoken) % 4)).decode()
            offset_text, _, bound_to = raw.partition(":")
            offset = int(offset_text)
        except (ValueError, UnicodeDecodeError) as exc:
            raise HttpError(400, "BadRequest", "The $skiptoken is not valid.") from exc
        if bound_to != fingerprint or offset < 0:
            raise HttpError(400, "BadRequest", "The $skiptoken does not belong to this request; POST the "
                                               "same body to the next link.")
        return offset

    # -- cmdlets -----------------------------------------------------------------------------------
    def get_mailbox(self, parameters: dict[str, Any]) -> list[dict[str, Any]]:
        allowed = {p.lower(): p for p in ("Identity", "ResultSize", "RecipientTypeDetails")}
        values: dict[str, Any] = {}
        for given, value in parameters.items():
            canonical = allowed.get(str(given).lower())
            if canonical is None:
                raise _bad_parameter(str(given),
                                     f"A parameter cannot be found that matches parameter name '{given}'.")
            values[canonical] = value

        result_size = self._result_size(values.get("ResultSize", DEFAULT_RESULT_SIZE))
        types = values.get("RecipientTypeDetails")
        wanted_types: set[str] | None = None
        if types is not None:
            listed = types if isinstance(types, list) else str(types).split(",")
            by_lower = {t.lower(): t for t in RECIPIENT_TYPES}
            wanted_types = set()
            for item in listed:
                known = by_lower.get(str(item).strip().lower())
                if known is None:
                    raise _bad_parameter("RecipientTypeDetails",
                                         f"Cannot bind parameter 'RecipientTypeDetails'. '{item}' is not a "
                                         "valid value for RecipientTypeDetails.")
                wanted_types.add(known)

        with self.world.lock:
            mailboxes: list[Mailbox] = list(self.world.mailboxes)
        rows = [m.to_cmdlet_output() for m in mailboxes]
        if wanted_types is not None:
            rows = [r for r in rows if r["RecipientTypeDetails"] in wanted_types]
        identity = values.get("Identity")
        if identity is not None:
            needle = str(identity).strip().lower()
            keys = ("Name", "Alias", "UserPrincipalName", "PrimarySmtpAddress", "ExternalDirectoryObjectId")
            rows = [r for r in rows if any(str(r[k]).lower() == needle for k in keys)]
            if not rows:
                message = (f"The operation couldn't be performed because object '{identity}' couldn't be "
                           f"found on '{self.world.organization}'.")
                raise _cmdlet_error(404, "NotFound", "ManagementObjectNotFoundException", "Identity", message)
        return rows if result_size is None else rows[:result_size]

    def _result_size(self, value: Any) -> int | None:
        """None means Unlimited."""
        if isinstance(value, str) and value.strip().lower() == "unlimited":
            return None
        size = 0
        if isinstance(value, int) and not isinstance(value, bool):
            size = value
        elif isinstance(value, str) and value.strip().isdigit():
            size = int(value)
        if size < 1:
            raise _bad_parameter("ResultSize",
                                 f"Cannot bind parameter 'ResultSize' to the target. The value '{value}' is "
                                 "not a positive number or 'Unlimited'.")
        return size
