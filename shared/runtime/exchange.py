"""Exchange Online cmdlets from Python, through the REST endpoint the v3 PowerShell module uses.

`POST {EXO_ENDPOINT}/adminapi/beta/{tenantId}/InvokeCommand` with `{"CmdletInput": {"CmdletName",
"Parameters"}}` (docs/reference.md "Exchange Online": seen, undocumented, so this module is the one place
that knows it). Pages are followed through `@odata.nextLink` by POSTing the same body; 429 and 5xx
are retried, honouring `Retry-After`, within a bounded budget.

Authentication comes from `shared.runtime.connection`: when Entra ID refuses the cached certificate, or
Exchange answers 401/403, the client refreshes the connection once (a rotation may have moved on, or
the cached token predates a role or consent change) and retries once. What is still refused after
that is reported by what is missing:

    ExchangeError (ExoAutomationError)
    ├── ExchangeConsentMissing   401, token without Exchange.ManageAsApp: admin consent missing (operator)
    ├── ExchangeRoleMissing      403 and the token holds no Entra role Exchange accepts (operator)
    ├── ExchangeCmdletNotPermitted  403 although the token holds such a role: the cmdlet does not exist or
    │                            the role does not allow it; the message names the roles held (operator)
    ├── ExchangeUnauthorized     other 401: token refused (wrong tenant, organisation) (operator)
    ├── ExchangeSignInFailed     Entra ID refused the certificate (key not on the app, app gone) (operator)
    ├── ExchangeCmdletError      4xx from the cmdlet, with the server's reason (caller)
    │   ├── ExchangeBadRequest   400: bad parameter name or value
    │   ├── ExchangeNotFound     404: the object named by -Identity does not exist
    │   └── ExchangeNonTerminatingErrors  200 whose `@adminapi.errors` is not empty (`rows`, `errors`)
    ├── ExchangeThrottled        429 after the retries (Retryable, retry_after)
    └── ExchangeUnavailable      5xx or no answer after the retries (Retryable)

Exchange answers a failed cmdlet with `error.message` "Invalid Operation"; the reason is read from
`error.innererror.internalexception.message`, else from `error.details[0].message` without its
leading `|Type|` (docs/reference.md "Exchange Online", seen). A 403 comes with a body of NUL bytes,
so it cannot tell a typo from a missing right: the token's own `wids` say which roles were held.

A 200 can carry non-terminating errors (`@adminapi.errors`) and warnings (`@adminapi.warnings`)
beside its rows. Warnings are logged (logger `shared.exchange`, WARNING) and kept on the call's
`CmdletCall.warnings`. Errors are never dropped: after the last page `invoke`/`pages` raise
`ExchangeNonTerminatingErrors`, which carries every row returned (`rows`, for `invoke`) and the
errors (`errors`), so a job that can live with a partial answer catches it and goes on.

The operator errors are also `NeedsOperator`, the last two `Retryable`, so callers that only know
`shared.errors` treat them right. Tokens are never logged or put into messages.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from shared.core.roles import EXCHANGE_RECIPIENT_ADMINISTRATOR, EXCHANGE_SUPPORTED_ROLES, role_name
from shared.core.spec import MANAGED_IDENTITY
from shared.errors import ExoAutomationError, NeedsOperator, Retryable, first_line
from shared.retry import Backoff, NotYet, parse_retry_after, retry
from shared.runtime.connection import Connection, ConnectionCache, connection_cache, run_sync
from shared.settings import Settings

if TYPE_CHECKING:
    import httpx

__all__ = [
    "CmdletCall",
    "ExchangeBadRequest",
    "ExchangeClient",
    "ExchangeCmdletError",
    "ExchangeCmdletNotPermitted",
    "ExchangeConsentMissing",
    "ExchangeError",
    "ExchangeNonTerminatingErrors",
    "ExchangeNotFound",
    "ExchangeRoleMissing",
    "ExchangeSignInFailed",
    "ExchangeThrottled",
    "ExchangeUnauthorized",
    "ExchangeUnavailable",
    "RetryPolicy",
    "exchange_client",
    "invoke_sync",
]

# The logger keeps its name from before the runtime moved into a sub-package: log queries rely on it.
logger = logging.getLogger("shared.exchange")

MANAGE_AS_APP = "Exchange.ManageAsApp"
SYSTEM_MAILBOX = "SystemMailbox{bb558c35-97f1-4cb9-8ff7-d53741dc928c}"
DEFAULT_PAGE_SIZE = 1000
_SUPPORTED_ROLE_IDS = frozenset(role.template_id for role in EXCHANGE_SUPPORTED_ROLES)
_RETRIED_STATUSES = frozenset({429, 500, 502, 503, 504})


# -- errors ---------------------------------------------------------------------------------------
class ExchangeError(ExoAutomationError):
    reason = "ExchangeError"

    def __init__(self, message: str, *, reason: str | None = None, status: int | None = None,
                 cmdlet: str | None = None) -> None:
        super().__init__(message, reason=reason)
        self.status = status
        self.cmdlet = cmdlet


class ExchangeConsentMissing(ExchangeError, NeedsOperator):
    reason = "ExchangeConsentMissing"


class ExchangeRoleMissing(ExchangeError, NeedsOperator):
    reason = "ExchangeRoleMissing"


class ExchangeCmdletNotPermitted(ExchangeError, NeedsOperator):
    """403 for an identity that holds a role Exchange accepts: unknown cmdlet, or one its roles do not allow."""

    reason = "ExchangeCmdletNotPermitted"

    def __init__(self, message: str, *, cmdlet: str, roles: tuple[str, ...]) -> None:
        super().__init__(message, status=403, cmdlet=cmdlet)
        self.roles = roles


class ExchangeUnauthorized(ExchangeError, NeedsOperator):
    reason = "ExchangeUnauthorized"


class ExchangeSignInFailed(ExchangeError, NeedsOperator):
    reason = "ExchangeSignInFailed"


class ExchangeCmdletError(ExchangeError):
    """The cmdlet refused the request; `server_message`, `code`, `target` and `exception_type` say why."""

    reason = "ExchangeCmdletError"

    def __init__(self, message: str, *, status: int, cmdlet: str, server_message: str, code: str = "",
                 target: str = "", exception_type: str = "") -> None:
        super().__init__(message, status=status, cmdlet=cmdlet)
        self.server_message = server_message
        self.code = code
        self.target = target
        self.exception_type = exception_type


class ExchangeBadRequest(ExchangeCmdletError):
    reason = "ExchangeBadRequest"


class ExchangeNotFound(ExchangeCmdletError):
    reason = "ExchangeNotFound"


class ExchangeNonTerminatingErrors(ExchangeCmdletError):
    """The cmdlet ran but reported errors for some objects (`@adminapi.errors` of a 200).

    `errors` holds each reported error's reason; `rows` every object the cmdlet did return (filled by
    `invoke`; with `pages` the caller already has them).
    """

    reason = "ExchangeNonTerminatingErrors"

    def __init__(self, message: str, *, cmdlet: str, errors: list[str]) -> None:
        super().__init__(message, status=200, cmdlet=cmdlet, server_message=errors[0] if errors else "")
        self.errors = errors
        self.rows: list[dict[str, Any]] = []


class ExchangeThrottled(ExchangeError, Retryable):
    reason = "ExchangeThrottled"

    def __init__(self, message: str, *, cmdlet: str, retry_after: float | None) -> None:
        ExchangeError.__init__(self, message, status=429, cmdlet=cmdlet)
        self.retry_after = retry_after


class ExchangeUnavailable(ExchangeError, Retryable):
    reason = "ExchangeUnavailable"

    def __init__(self, message: str, *, cmdlet: str, status: int | None = None) -> None:
        ExchangeError.__init__(self, message, status=status, cmdlet=cmdlet)
        self.retry_after = None


# -- the client -----------------------------------------------------------------------------------
@dataclass
class CmdletCall:
    """One cmdlet run, for the audit line: what ran, how many objects came back, in how many pages."""

    cmdlet: str
    items: int = 0
    pages: int = 0
    duration_ms: int = 0
    thumbprint: str = ""
    warnings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class RetryPolicy:
    """How long to keep trying after 429/5xx: attempts per request, a cap per wait, a cap in total."""

    max_attempts: int = 5
    max_wait_seconds: float = 60.0
    budget_seconds: float = 180.0
    backoff_seconds: float = 1.0

    def __post_init__(self) -> None:
        try:
            self.backoff  # noqa: B018
        except ValueError:  # refused here rather than at a job's first retry
            raise ValueError(f"not a retry policy: {self} (backoff_seconds must be above 0 and at most "
                             "max_wait_seconds, max_attempts at least 1, budget_seconds not negative)") from None

    @property
    def backoff(self) -> Backoff:
        # Jittered down to half, so that jobs throttled together do not come back together.
        return Backoff(first=self.backoff_seconds, max_delay=self.max_wait_seconds, budget=self.budget_seconds,
                       attempts=self.max_attempts, jitter=(0.5, 1.0), max_retry_after=self.max_wait_seconds)


class _Again(NotYet):
    """A 429, 5xx or no answer (`what`), asked again after a wait; `error` is what the caller gets if not."""

    def __init__(self, what: str, error: ExchangeError, retry_after: float | None = None) -> None:
        super().__init__(what, retry_after=retry_after)
        self.error = error


class ExchangeClient:
    """Runs cmdlets as one automation identity. Cheap to create; the connections and HTTP pool are shared."""

    def __init__(self, identity: str, *, settings: Settings | None = None, cache: ConnectionCache | None = None,
                 retry: RetryPolicy | None = None, page_size: int = DEFAULT_PAGE_SIZE,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.identity = identity
        self.cache = cache or connection_cache(settings)
        self.retry = retry or RetryPolicy()
        self.page_size = page_size
        self.calls: list[CmdletCall] = []
        self._sleep = sleep

    async def invoke(self, cmdlet: str, parameters: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        """Every object the cmdlet returns, all pages followed.

        Raises ExchangeNonTerminatingErrors, with every row in `rows`, when the cmdlet reported errors.
        """
        rows: list[dict[str, Any]] = []
        try:
            async for page in self.pages(cmdlet, parameters):
                rows.extend(page)
        except ExchangeNonTerminatingErrors as exc:
            exc.rows = rows
            raise
        return rows

    async def pages(self, cmdlet: str, parameters: Mapping[str, Any] | None = None
                    ) -> AsyncIterator[list[dict[str, Any]]]:
        """The cmdlet's output page by page (at most `page_size` objects each)."""
        call = CmdletCall(cmdlet)
        self.calls.append(call)
        started = time.perf_counter()
        body = {"CmdletInput": {"CmdletName": cmdlet, "Parameters": dict(parameters or {})}}
        current = await self.cache.get(self.identity)
        url: str | None = self._endpoint(current)
        try:
            while url is not None:
                payload, current = await self._post(url, body, cmdlet, current)
                call.thumbprint = current.thumbprint
                value = payload.get("value")
                rows = [row for row in value if isinstance(row, dict)] if isinstance(value, list) else []
                call.items += len(rows)
                call.pages += 1
                self._note_warnings_and_errors(payload, call, current)
                next_link = payload.get("@odata.nextLink")
                url = self._checked_next_link(next_link, current, cmdlet) if next_link else None
                yield rows
        finally:
            call.duration_ms = int((time.perf_counter() - started) * 1000)
        if call.errors:
            count = len(call.errors)
            raise ExchangeNonTerminatingErrors(
                f"Exchange Online ran {cmdlet} for {_who(current)} but reported {count} error"
                f"{'s' if count > 1 else ''} for some objects ({call.items} returned): {'; '.join(call.errors[:3])}"
                f"{' …' if count > 3 else ''}", cmdlet=cmdlet, errors=list(call.errors))

    def _note_warnings_and_errors(self, payload: dict[str, Any], call: CmdletCall, connection: Connection) -> None:
        for warning in _texts(payload.get("@adminapi.warnings")):
            call.warnings.append(warning)
            logger.warning("Exchange warned on %s for %s: %s", call.cmdlet, connection.identity, warning)
        call.errors.extend(_texts(payload.get("@adminapi.errors")))

    # -- one request, with refresh and retries ----------------------------------------------------
    async def _post(self, url: str, body: dict[str, Any], cmdlet: str, current: Connection
                    ) -> tuple[dict[str, Any], Connection]:
        """One request: 429, 5xx and no answer are asked again within `self.retry`; a refusal (by Entra ID,
        or 401/403 from Exchange) refreshes the connection once per request and asks again at once."""
        import httpx
        from azure.core.exceptions import AzureError, ClientAuthenticationError

        refreshed = False
        attempts = 0

        async def refresh(why: str) -> None:
            nonlocal current, refreshed
            refreshed = True
            logger.info("%s; refreshing the connection once", why)
            current = await self.cache.refresh(current)

        async def attempt() -> tuple[dict[str, Any], Connection]:
            nonlocal attempts
            attempts += 1
            while True:
                try:
                    token = (await current.credential.get_token(current.exchange_scope)).token
                except ClientAuthenticationError as exc:
                    if refreshed:
                        raise _sign_in_failed(current, cmdlet, exc) from exc
                    await refresh(f"Entra ID refused certificate {current.thumbprint} of {current.identity}")
                    continue
                except AzureError as exc:
                    raise ExchangeUnavailable(f"the token service did not answer for {_who(current)} "
                                              f"({type(exc).__name__})", cmdlet=cmdlet) from exc
                try:
                    response = await self.cache.http().post(url, json=body, headers=self._headers(current, token))
                except httpx.TransportError as exc:
                    raise _Again(f"Exchange did not answer {cmdlet} ({type(exc).__name__})", ExchangeUnavailable(
                        f"Exchange Online did not answer {cmdlet} after {attempts} attempts ({type(exc).__name__})",
                        cmdlet=cmdlet)) from exc
                status = response.status_code
                if status == 200:
                    return _json_object(response), current
                if status in (401, 403) and not refreshed:
                    await refresh(f"Exchange answered {status} to {cmdlet} for {current.identity}")
                    continue
                if status in _RETRIED_STATUSES:
                    asked = parse_retry_after(response.headers.get("Retry-After"), dt.datetime.now(dt.UTC))
                    raise _Again(f"Exchange answered {status} to {cmdlet}", _gave_up(status, cmdlet, attempts, asked),
                                 asked)
                raise _refusal(response, cmdlet, current, token)

        def retrying(exc: Exception, attempt: int, wait: float) -> None:
            logger.info("%s; retrying in %.1f s", exc, wait)

        try:
            return await retry(attempt, self.retry.backoff, on_retry=retrying, sleep=self._sleep)
        except _Again as exc:
            raise exc.error from exc.__cause__

    def _endpoint(self, connection: Connection) -> str:
        return f"{connection.exchange_endpoint}/adminapi/beta/{connection.tenant_id}/InvokeCommand"

    def _headers(self, connection: Connection, token: str) -> dict[str, str]:
        return {
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/json",
            "Accept": "application/json",
            "X-ResponseFormat": "json",
            "X-AnchorMailbox": f"UPN:{SYSTEM_MAILBOX}@{connection.organization}",
            "Prefer": f"odata.maxpagesize={self.page_size}",
        }

    def _checked_next_link(self, link: Any, connection: Connection, cmdlet: str) -> str:
        # The bearer token goes wherever the link points: only ever to the Exchange endpoint.
        if not isinstance(link, str) or not link.startswith(f"{connection.exchange_endpoint}/"):
            raise ExchangeError(f"Exchange returned a next link for {cmdlet} outside {connection.exchange_endpoint}; "
                                "refusing to follow it", reason="ExchangeBadNextLink", cmdlet=cmdlet)
        return link


def exchange_client(identity: str, *, settings: Settings | None = None, **options: Any) -> ExchangeClient:
    """An Exchange client for `identity` on the running loop's shared connection cache."""
    return ExchangeClient(identity, settings=settings, **options)


def invoke_sync(identity: str, cmdlet: str, parameters: Mapping[str, Any] | None = None, *,
                settings: Settings | None = None) -> list[dict[str, Any]]:
    """Run one cmdlet from synchronous code (a plain script); shares the process's connection cache."""

    async def run() -> list[dict[str, Any]]:
        return await ExchangeClient(identity, settings=settings).invoke(cmdlet, parameters)

    return run_sync(run())


# -- mapping answers to errors --------------------------------------------------------------------
def _json_object(response: httpx.Response) -> dict[str, Any]:
    try:
        payload = response.json()
    except ValueError as exc:
        raise ExchangeError("Exchange answered 200 with a body that is not JSON", reason="ExchangeBadResponse",
                            status=200) from exc
    if not isinstance(payload, dict):
        raise ExchangeError("Exchange answered 200 with a body that is not a JSON object",
                            reason="ExchangeBadResponse", status=200)
    return payload


def _gave_up(status: int, cmdlet: str, attempts: int, retry_after: float | None) -> ExchangeError:
    if status == 429:
        hint = f"; it asks to wait {retry_after:g} s" if retry_after is not None else ""
        return ExchangeThrottled(f"Exchange Online is throttling {cmdlet} (429 after {attempts} attempts{hint})",
                                 cmdlet=cmdlet, retry_after=retry_after)
    return ExchangeUnavailable(f"Exchange Online is unavailable for {cmdlet} ({status} after {attempts} attempts)",
                               cmdlet=cmdlet, status=status)


def _field(mapping: Any, name: str) -> Any:
    """A JSON member by name, case-insensitively (clients in the wild spell `innerError` both ways)."""
    if not isinstance(mapping, dict):
        return None
    return next((value for key, value in mapping.items() if str(key).lower() == name), None)


def _short_type(name: str) -> str:
    return name.strip().rsplit(".", 1)[-1]


def _reason(text: str) -> tuple[str, str]:
    """`|Type|reason` → (Type, reason); other text → ("", text)."""
    if text.startswith("|"):
        kind, bar, rest = text[1:].partition("|")
        if bar:
            return kind, rest.strip()
    return "", text.strip()


def _texts(value: Any) -> list[str]:
    """The entries of `@adminapi.warnings` / `@adminapi.errors` as plain reasons (strings or objects)."""
    if not isinstance(value, list):
        return []
    texts = []
    for item in value:
        text = item if isinstance(item, str) else _field(item, "message")
        if isinstance(text, str) and text.strip():
            texts.append(_reason(text)[1][:500])
    return texts


def _error_fields(response: httpx.Response) -> tuple[str, str, str, str]:
    """(code, reason, target, exception type) of an InvokeCommand error body, as far as it has them.

    The reason is `error.innererror.internalexception.message`, else `error.details[0].message` without
    its `|Type|` prefix, else `error.message` (docs/reference.md "Exchange Online", seen).
    """
    try:
        payload = response.json()
    except ValueError:
        text = response.text.replace("\x00", "").strip()
        return "", text[:300], "", ""
    error = _field(payload, "error")
    if not isinstance(error, dict):
        return "", "", "", ""
    details = _field(error, "details")
    first: dict[str, Any] = details[0] if isinstance(details, list) and details and isinstance(details[0], dict) \
        else {}
    inner = _field(error, "innererror")
    internal = _field(inner, "internalexception")
    code = str(_field(error, "code") or "")
    target = str(_field(first, "target") or "")
    internal_message = _field(internal, "message")
    if isinstance(internal_message, str) and internal_message.strip():
        kind = _field(internal, "type") or _field(inner, "type") or ""
        return code, internal_message.strip(), target, _short_type(str(kind))
    detail_message = _field(first, "message")
    if isinstance(detail_message, str) and detail_message.strip():
        kind, reason = _reason(detail_message)
        return code, reason, target, _short_type(kind or str(_field(inner, "type") or _field(first, "code") or ""))
    return code, str(_field(error, "message") or ""), target, _short_type(str(_field(inner, "type") or ""))


def token_claims(token: str) -> dict[str, Any]:
    """The claims of a JWT, unverified: only to explain a refusal, never to trust anything."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError):
        return {}
    return claims if isinstance(claims, dict) else {}


def _who(connection: Connection) -> str:
    return f"identity {connection.identity!r} (app {connection.app_id})"


def _refusal(response: httpx.Response, cmdlet: str, connection: Connection, token: str) -> ExchangeError:
    status = response.status_code
    code, message, target, exception_type = _error_fields(response)
    said = f": {message}" if message else ""
    if status == 401:
        claims = token_claims(token)
        if MANAGE_AS_APP not in (claims.get("roles") or []):
            return ExchangeConsentMissing(
                f"Exchange Online refused {cmdlet} for {_who(connection)}: the app has no admin consent for the "
                f"{MANAGE_AS_APP} application permission of Office 365 Exchange Online (its token carries no such "
                "role). Grant admin consent, or reconcile the identity so the platform repairs it.",
                status=status, cmdlet=cmdlet)
        if str(claims.get("tid", "")).lower() != connection.tenant_id.lower():
            return ExchangeUnauthorized(
                f"Exchange Online refused {cmdlet} for {_who(connection)}: the token is for tenant "
                f"{claims.get('tid')} but the connection record names {connection.tenant_id}{said}",
                status=status, cmdlet=cmdlet)
        return ExchangeUnauthorized(f"Exchange Online refused the token of {_who(connection)} for {cmdlet}{said}",
                                    status=status, cmdlet=cmdlet)
    if status == 403:
        held = sorted(set(token_claims(token).get("wids") or []) & _SUPPORTED_ROLE_IDS)
        if not held:
            return ExchangeRoleMissing(
                f"Exchange Online refused {cmdlet} for {_who(connection)}: the app holds no Entra role that Exchange "
                f"accepts for app-only access. Assign it the '{EXCHANGE_RECIPIENT_ADMINISTRATOR.name}' role (or "
                "another role Exchange accepts), or reconcile the identity so the platform repairs it.",
                status=status, cmdlet=cmdlet)
        names = tuple(role_name(r) for r in held)
        quoted = ", ".join(f"'{name}'" for name in names)
        return ExchangeCmdletNotPermitted(
            f"Exchange Online refused {cmdlet} for {_who(connection)}: unknown cmdlet or not permitted for this "
            f"identity's role (it holds {quoted}). Check the cmdlet's name; if it is right, the identity needs "
            f"a role whose Exchange permissions include {cmdlet}{said}",
            cmdlet=cmdlet, roles=names)
    about = f" (parameter {target})" if target and target.lower() != cmdlet.lower() else ""
    text = f"Exchange Online refused {cmdlet}{about}: {message or f'HTTP {status}'}"
    kind = {400: ExchangeBadRequest, 404: ExchangeNotFound}.get(status, ExchangeCmdletError)
    return kind(text, status=status, cmdlet=cmdlet, server_message=message, code=code, target=target,
                exception_type=exception_type)


def _sign_in_failed(connection: Connection, cmdlet: str, exc: Exception) -> ExchangeError:
    text = str(getattr(exc, "message", "") or exc)
    first = first_line(text) or type(exc).__name__
    hints = {
        "AADSTS700027": f"certificate {connection.thumbprint} is not (or no longer) a key of the app: reconcile "
                        "the identity so the platform publishes a certificate the app accepts",
        "AADSTS700016": "the app no longer exists in the tenant: bootstrap the identity again",
        "AADSTS7000229": "the app has no service principal: reconcile the identity",
        "AADSTS7000112": "the app is disabled in the tenant",
        "AADSTS70021": "the app trusts no workload with this token's issuer, subject and audience: compare the "
                       "job's token with the connection record's federatedCredentials",
    }
    if "temporarily_unavailable" in text:
        return ExchangeUnavailable(f"the token service is unavailable for {_who(connection)} ({first})", cmdlet=cmdlet)
    refused = "the certificate" if connection.certificate is not None else "the managed identity" \
        if connection.record.credential_type == MANAGED_IDENTITY else "the workload's token"
    hint = next((h for code, h in hints.items() if code in text), f"Entra ID refused {refused}")
    return ExchangeSignInFailed(f"{_who(connection)} cannot sign in for {cmdlet}: {hint} ({first})",
                                cmdlet=cmdlet)
