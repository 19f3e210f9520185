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
5. a well-formed body, else 400;
6. the cmdlet must exist and one of the token's `wids` must allow it (CMDLET_ROLES), else **403 with a
   body of NUL bytes** (seen): an unknown cmdlet, a cmdlet the role does not allow and an identity
   with no role Exchange honours all look alike.

Cmdlets (parameter names are case-insensitive, as in PowerShell):

- `Get-Mailbox` and `Get-Recipient`: `Identity` (name, alias, UPN, primary SMTP address or
  ExternalDirectoryObjectId), `ResultSize` (positive int or "Unlimited"; default 1000, as the
  cmdlet's) and `RecipientTypeDetails` (one value or a list);
- `Get-MailboxStatistics`: `Identity` (required; a list stands for pipeline input). A mailbox nobody
  has logged on to answers no row and a warning; a list with unknown names answers the others plus
  one non-terminating error each (`@adminapi.errors`);
- `Set-Mailbox`: `Identity` (required), `DisplayName`, `CustomAttribute1`, `ProhibitSendQuota`
  ("Unlimited" or a size such as "49 GB", at most the 100 GB ProhibitSendReceiveQuota). No output;
  a call that changes nothing answers 200 with a warning (`@adminapi.warnings`).

Cmdlet failures answer in the shape measured on the real endpoint (docs/reference.md "Exchange
Online", seen): `error.message` is always "Invalid Operation"; the reason is in
`error.innererror.internalexception.message` (value checks of Set-Mailbox here), else in
`error.details[0].message` as `|<exception type>|<reason>` (parameter binding, object not found).

Paging: `Prefer: odata.maxpagesize=N` caps a page (default 1000) and the answer carries
`Preference-Applied`; when more rows remain, `@odata.nextLink` is this endpoint with a `$skiptoken`
query, and the client POSTs the same body to it. The skiptoken binds the cmdlet input it was issued
for, so a different body at a next link is refused with 400.

Unverified (assumptions chosen to be harmless to a client that reads the reason as above): which
roles allow which cmdlet (CMDLET_ROLES); the statuses of cmdlet failures (400, 404 for an
`Identity` that matches nothing); which failure carries `internalexception` and which only
`details`; the length and content type of the NUL body, and that an identity without any role
gets it too; the shape of an `@adminapi.errors` entry; the order of the checks; the
`WWW-Authenticate` value on 401.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
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
INVALID_OPERATION = "Invalid Operation"
NUL_BODY = b"\x00" * 8  # unverified length: "a body of NUL bytes" is what was measured
PROHIBIT_SEND_RECEIVE_QUOTA = 100 * 1024 ** 3  # a mailbox's default, the cap of ProhibitSendQuota
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|TB)?\s*$", re.IGNORECASE)
_UNITS = {"B": 1, "KB": 1024, "MB": 1024 ** 2, "GB": 1024 ** 3, "TB": 1024 ** 4}

# Entra roles (template ids) -> the cmdlets this stand-in lets them run. Unverified model of the role
# groups Exchange maps them to: the administrators run everything, the Exchange Recipient
# Administrator manages recipients, every other honoured role only reads.
_GLOBAL_ADMIN = "62e90394-69f5-4237-9190-012177145e10"
_EXCHANGE_ADMIN = "29232cdf-9323-42fd-ade2-1d097af3e4de"
_RECIPIENT_ADMIN = "31392ffb-586c-42d1-9346-e59415a2cc4e"
READ_CMDLETS = frozenset({"get-mailbox", "get-recipient", "get-mailboxstatistics"})
WRITE_CMDLETS = frozenset({"set-mailbox"})
CMDLET_ROLES: dict[str, frozenset[str]] = {
    role: READ_CMDLETS | WRITE_CMDLETS if role in (_GLOBAL_ADMIN, _EXCHANGE_ADMIN, _RECIPIENT_ADMIN)
    else READ_CMDLETS
    for role in EXCHANGE_SUPPORTED_ROLES
}


def _unauthorized(message: str) -> HttpError:
    return HttpError(401, "Unauthorized", message, headers={
        "WWW-Authenticate": f'Bearer client_id="{EXCHANGE_APP_ID}", error="invalid_token"',
    })


class _NotPermitted(HttpError):
    """403 with a body of NUL bytes: unknown cmdlet, or not one the identity's roles allow (seen)."""

    def __init__(self) -> None:
        super().__init__(403, "Forbidden", "")


class CmdletFailure(HttpError):
    """A terminating cmdlet error, answered in the real endpoint's shape (module docstring)."""

    def __init__(self, status: int, exception: str, reason: str, *, target: str = "",
                 internal: bool = False) -> None:
        super().__init__(status, {400: "BadRequest", 404: "NotFound"}.get(status, "InternalServerError"),
                         INVALID_OPERATION, inner_code=exception)
        self.exception = exception
        self.reason = reason
        self.target = target
        self.internal = internal

    def body(self) -> dict[str, Any]:
        short = self.exception.rsplit(".", 1)[-1]
        error: dict[str, Any] = {"code": self.code, "message": INVALID_OPERATION}
        inner: dict[str, Any] = {"message": INVALID_OPERATION, "type": self.exception}
        if self.internal:
            inner["internalexception"] = {"message": self.reason, "type": self.exception}
        else:
            error["details"] = [{"code": short, "target": self.target, "message": f"|{self.exception}|{self.reason}"}]
        error["innererror"] = inner
        return {"error": error}


def _bad_parameter(name: str, message: str) -> CmdletFailure:
    return CmdletFailure(400, "System.Management.Automation.ParameterBindingException", message, target=name)


def _not_found(identity: Any, organization: str) -> CmdletFailure:
    return CmdletFailure(404, "Microsoft.Exchange.Configuration.Tasks.ManagementObjectNotFoundException",
                         f"The operation couldn't be performed because object '{identity}' couldn't be found "
                         f"on '{organization}'.", target="Identity")


@dataclass
class CmdletOutput:
    """What a cmdlet produced: rows, and the non-terminating errors and warnings beside them."""

    rows: list[dict[str, Any]]
    errors: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


class ExchangeService(Service):
    name = "exchange"

    def __init__(self, world: World) -> None:
        super().__init__()
        self.world = world
        self.cmdlets: dict[str, Callable[[dict[str, Any]], CmdletOutput]] = {
            "get-mailbox": self.get_mailbox, "get-recipient": self.get_recipient,
            "get-mailboxstatistics": self.get_mailbox_statistics, "set-mailbox": self.set_mailbox,
        }
        self.route("POST", "/adminapi/beta/{tenant}/InvokeCommand", self.invoke_command)

    def error_response(self, error: HttpError, request: Request) -> Response:
        if isinstance(error, _NotPermitted):
            return Response(403, NUL_BODY, {"Content-Type": "application/json; charset=utf-8"})
        if isinstance(error, CmdletFailure):
            return Response.json(error.status, error.body(), error.headers)
        body: dict[str, Any] = {"code": error.code, "message": error.message}
        if error.details:
            body["details"] = error.details
        if error.inner_code:
            body["innererror"] = {"message": error.message, "type": error.inner_code}
        return Response.json(error.status, {"error": body}, error.headers)

    # -- the endpoint ------------------------------------------------------------------------------
    def invoke_command(self, request: Request) -> Response:
        claims = self._authorize(request)
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
        allowed = set().union(*(CMDLET_ROLES.get(w, frozenset()) for w in claims.get("wids") or []))
        if handler is None or name.lower() not in allowed:
            raise _NotPermitted()
        output = handler(parameters)
        rows = output.rows

        fingerprint = hashlib.sha256(json.dumps(cmdlet_input, sort_keys=True).encode()).hexdigest()[:16]
        offset = self._offset(request.query.get("$skiptoken"), fingerprint)
        page_size = self._page_size(request)
        page = rows[offset: offset + page_size]
        base = f"{self.base_url}/adminapi/beta/{tenant}"
        payload: dict[str, Any] = {
            "@odata.context": f"{base}/$metadata#Collection(Exchange.GenericHashTable)",
            "value": page,
        }
        if offset == 0 and output.errors:
            payload["@adminapi.errors"] = output.errors
        if offset == 0 and output.warnings:
            payload["@adminapi.warnings"] = output.warnings
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
    @staticmethod
    def _bind(parameters: dict[str, Any], names: tuple[str, ...], required: tuple[str, ...] = ()
              ) -> dict[str, Any]:
        allowed = {p.lower(): p for p in names}
        values: dict[str, Any] = {}
        for given, value in parameters.items():
            canonical = allowed.get(str(given).lower())
            if canonical is None:
                raise _bad_parameter(str(given),
                                     f"A parameter cannot be found that matches parameter name '{given}'.")
            values[canonical] = value
        missing = [name for name in required if values.get(name) in (None, "", [])]
        if missing:
            raise _bad_parameter(missing[0], "Cannot process command because of one or more missing mandatory "
                                             f"parameters: {' '.join(missing)}.")
        return values

    def _find(self, identity: Any) -> Mailbox | None:
        needle = str(identity).strip().lower()
        with self.world.lock:
            for mailbox in self.world.mailboxes:
                row = mailbox.to_cmdlet_output()
                keys = ("Name", "Alias", "UserPrincipalName", "PrimarySmtpAddress", "ExternalDirectoryObjectId")
                if any(str(row[k]).lower() == needle for k in keys):
                    return mailbox
        return None

    def _recipients(self, parameters: dict[str, Any]) -> list[dict[str, Any]]:
        values = self._bind(parameters, ("Identity", "ResultSize", "RecipientTypeDetails"))
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
            found = self._find(identity)
            rows = [r for r in rows if found is not None and r["UserPrincipalName"] == found.user_principal_name]
            if not rows:
                raise _not_found(identity, self.world.organization)
        return rows if result_size is None else rows[:result_size]

    def get_mailbox(self, parameters: dict[str, Any]) -> CmdletOutput:
        return CmdletOutput(self._recipients(parameters))

    def get_recipient(self, parameters: dict[str, Any]) -> CmdletOutput:
        rows = [{"Name": r["Name"], "DisplayName": r["DisplayName"], "Alias": r["Alias"],
                 "PrimarySmtpAddress": r["PrimarySmtpAddress"], "RecipientType": "UserMailbox",
                 "RecipientTypeDetails": r["RecipientTypeDetails"],
                 "ExternalDirectoryObjectId": r["ExternalDirectoryObjectId"]}
                for r in self._recipients(parameters)]
        return CmdletOutput(rows)

    def get_mailbox_statistics(self, parameters: dict[str, Any]) -> CmdletOutput:
        values = self._bind(parameters, ("Identity",), required=("Identity",))
        identities = values["Identity"] if isinstance(values["Identity"], list) else [values["Identity"]]
        output = CmdletOutput([])
        for identity in identities:
            mailbox = self._find(identity)
            if mailbox is None:
                if len(identities) == 1:
                    raise _not_found(identity, self.world.organization)
                failure = _not_found(identity, self.world.organization)
                output.errors.append({"message": f"|{failure.exception}|{failure.reason}",
                                      "type": failure.exception, "target": str(identity)})
                continue
            if mailbox.last_logon_time is None:
                output.warnings.append(f"The user hasn't logged on to mailbox '{mailbox.name}', so there is no "
                                       "data to return. After the user logs on, this warning will no longer appear.")
                continue
            output.rows.append({
                "DisplayName": mailbox.display_name, "ItemCount": mailbox.item_count,
                "TotalItemSize": f"{mailbox.total_item_size_bytes / 1024 ** 2:.2f} MB "
                                 f"({mailbox.total_item_size_bytes:,} bytes)",
                "LastLogonTime": mailbox.last_logon_time,
                "MailboxGuid": mailbox.to_cmdlet_output()["ExternalDirectoryObjectId"],
            })
        return output

    def set_mailbox(self, parameters: dict[str, Any]) -> CmdletOutput:
        values = self._bind(parameters, ("Identity", "DisplayName", "CustomAttribute1", "ProhibitSendQuota"),
                            required=("Identity",))
        mailbox = self._find(values["Identity"])
        if mailbox is None:
            raise _not_found(values["Identity"], self.world.organization)
        changes: dict[str, str] = {}
        if "ProhibitSendQuota" in values:
            changes["prohibit_send_quota"] = self._quota(values["ProhibitSendQuota"])
        if "DisplayName" in values:
            changes["display_name"] = str(values["DisplayName"])
        if "CustomAttribute1" in values:
            changes["custom_attribute1"] = str(values["CustomAttribute1"])
        with self.world.lock:
            changed = {k: v for k, v in changes.items() if getattr(mailbox, k) != v}
            for key, value in changed.items():
                setattr(mailbox, key, value)
        warnings = [] if changed else [f"The command completed successfully but no settings of "
                                       f"'{mailbox.name}' have been modified."]
        return CmdletOutput([], warnings=warnings)

    def _quota(self, value: Any) -> str:
        text = str(value).strip()
        if text.lower() == "unlimited":
            return "Unlimited"
        match = _SIZE.match(text)
        if match is None:
            raise _bad_parameter("ProhibitSendQuota",
                                 f"Cannot process argument transformation on parameter 'ProhibitSendQuota'. "
                                 f"Cannot convert value \"{text}\" to type "
                                 "\"Microsoft.Exchange.Data.Unlimited`1[Microsoft.Exchange.Data.ByteQuantifiedSize]\".")
        size = int(float(match.group(1)) * _UNITS[(match.group(2) or "B").upper()])
        if size > PROHIBIT_SEND_RECEIVE_QUOTA:
            raise CmdletFailure(400, "Microsoft.Exchange.Data.DataValidationException",
                                f"The value of property 'ProhibitSendQuota' must be less than or equal to that "
                                f"of property 'ProhibitSendReceiveQuota'. ProhibitSendQuota: {text}, "
                                "ProhibitSendReceiveQuota: 100 GB (107,374,182,400 bytes).", internal=True)
        return f"{text} ({size:,} bytes)"

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
