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
    ├── ExchangeRoleMissing      403: no Entra role Exchange accepts, or not one that allows the cmdlet (operator)
    ├── ExchangeUnauthorized     other 401: token refused (wrong tenant, organisation) (operator)
    ├── ExchangeSignInFailed     Entra ID refused the certificate (key not on the app, app gone) (operator)
    ├── ExchangeCmdletError      4xx from the cmdlet, with the server's message (caller)
    │   ├── ExchangeBadRequest   400: unknown cmdlet, bad parameter name or value
    │   └── ExchangeNotFound     404: the object named by -Identity does not exist
    ├── ExchangeThrottled        429 after the retries (Retryable, retry_after)
    └── ExchangeUnavailable      5xx or no answer after the retries (Retryable)

The operator errors are also `NeedsOperator`, the last two `Retryable`, so callers that only know
`shared.errors` treat them right. Tokens are never logged or put into messages.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import json
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shared.core.roles import EXCHANGE_RECIPIENT_ADMINISTRATOR, EXCHANGE_SUPPORTED_ROLES, role_name
from shared.errors import ExoAutomationError, NeedsOperator, Retryable
from shared.runtime.connection import Connection, ConnectionCache, connection_cache, run_sync
from shared.settings import Settings

if TYPE_CHECKING:
    import httpx

__all__ = [
    "CmdletCall",
    "ExchangeBadRequest",
    "ExchangeClient",
    "ExchangeCmdletError",
    "ExchangeConsentMissing",
    "ExchangeError",
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


@dataclass(frozen=True)
class RetryPolicy:
    """How long to keep trying after 429/5xx: attempts per request, a cap per wait, a cap in total."""

    max_attempts: int = 5
    max_wait_seconds: float = 60.0
    budget_seconds: float = 180.0
    backoff_seconds: float = 1.0


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
        """Every object the cmdlet returns, all pages followed."""
        rows: list[dict[str, Any]] = []
        async for page in self.pages(cmdlet, parameters):
            rows.extend(page)
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
                next_link = payload.get("@odata.nextLink")
                url = self._checked_next_link(next_link, current, cmdlet) if next_link else None
                yield rows
        finally:
            call.duration_ms = int((time.perf_counter() - started) * 1000)

    # -- one request, with refresh and retries ----------------------------------------------------
    async def _post(self, url: str, body: dict[str, Any], cmdlet: str, current: Connection
                    ) -> tuple[dict[str, Any], Connection]:
        import httpx
        from azure.core.exceptions import AzureError, ClientAuthenticationError

        refreshed = False
        attempt = 0
        waited = 0.0
        while True:
            attempt += 1
            try:
                token = (await current.credential.get_token(current.exchange_scope)).token
            except ClientAuthenticationError as exc:
                if not refreshed:
                    refreshed = True
                    logger.info("Entra ID refused certificate %s of %s; refreshing the connection once",
                                current.thumbprint, current.identity)
                    current = await self.cache.refresh(current)
                    continue
                raise _sign_in_failed(current, cmdlet, exc) from exc
            except AzureError as exc:
                raise ExchangeUnavailable(f"the token service did not answer for {_who(current)} "
                                          f"({type(exc).__name__})", cmdlet=cmdlet) from exc
            try:
                response = await self.cache.http().post(url, json=body, headers=self._headers(current, token))
            except httpx.TransportError as exc:
                wait = self._backoff(attempt)
                if attempt >= self.retry.max_attempts or waited + wait > self.retry.budget_seconds:
                    raise ExchangeUnavailable(f"Exchange Online did not answer {cmdlet} after {attempt} attempts "
                                              f"({type(exc).__name__})", cmdlet=cmdlet) from exc
                waited += wait
                await self._sleep(wait)
                continue
            status = response.status_code
            if status == 200:
                return _json_object(response), current
            if status in (401, 403) and not refreshed:
                refreshed = True
                logger.info("Exchange answered %d to %s for %s; refreshing the connection once", status, cmdlet,
                            current.identity)
                current = await self.cache.refresh(current)
                continue
            if status in _RETRIED_STATUSES:
                asked = _retry_after(response)
                wait = min(self._backoff(attempt) if asked is None else asked, self.retry.max_wait_seconds)
                if attempt >= self.retry.max_attempts or waited + wait > self.retry.budget_seconds:
                    raise _gave_up(status, cmdlet, attempt, _retry_after(response))
                logger.info("Exchange answered %d to %s; retrying in %.1f s", status, cmdlet, wait)
                waited += wait
                await self._sleep(wait)
                continue
            raise _refusal(response, cmdlet, current, token)

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

    def _backoff(self, attempt: int) -> float:
        base: float = self.retry.backoff_seconds * 2 ** (attempt - 1)
        return min(base * (0.5 + random.random() / 2), self.retry.max_wait_seconds)  # jitter, not security


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


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, moment.timestamp() - time.time())


def _gave_up(status: int, cmdlet: str, attempts: int, retry_after: float | None) -> ExchangeError:
    if status == 429:
        hint = f"; it asks to wait {retry_after:g} s" if retry_after is not None else ""
        return ExchangeThrottled(f"Exchange Online is throttling {cmdlet} (429 after {attempts} attempts{hint})",
                                 cmdlet=cmdlet, retry_after=retry_after)
    return ExchangeUnavailable(f"Exchange Online is unavailable for {cmdlet} ({status} after {attempts} attempts)",
                               cmdlet=cmdlet, status=status)


def _error_fields(response: httpx.Response) -> tuple[str, str, str, str]:
    """(code, message, target, exception type) of an OData error body, as far as it has them."""
    try:
        payload = response.json()
    except ValueError:
        return "", response.text.strip()[:300], "", ""
    error = payload.get("error") if isinstance(payload, dict) else None
    if not isinstance(error, dict):
        return "", "", "", ""
    details = error.get("details")
    first: dict[str, Any] = details[0] if isinstance(details, list) and details and isinstance(details[0], dict) \
        else {}
    inner_value = error.get("innererror")
    inner: dict[str, Any] = inner_value if isinstance(inner_value, dict) else {}
    return (str(error.get("code") or ""), str(error.get("message") or ""), str(first.get("target") or ""),
            str(inner.get("type") or first.get("code") or ""))


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
        names = ", ".join(f"'{role_name(r)}'" for r in held)
        return ExchangeRoleMissing(
            f"Exchange Online refused {cmdlet} for {_who(connection)}: its role {names} does not allow this "
            f"cmdlet; it needs a role whose Exchange permissions include {cmdlet}{said}",
            status=status, cmdlet=cmdlet)
    about = f" (parameter {target})" if target and target.lower() != cmdlet.lower() else ""
    text = f"Exchange Online refused {cmdlet}{about}: {message or f'HTTP {status}'}"
    kind = {400: ExchangeBadRequest, 404: ExchangeNotFound}.get(status, ExchangeCmdletError)
    return kind(text, status=status, cmdlet=cmdlet, server_message=message, code=code, target=target,
                exception_type=exception_type)


def _sign_in_failed(connection: Connection, cmdlet: str, exc: Exception) -> ExchangeError:
    text = str(getattr(exc, "message", "") or exc)
    first = text.strip().splitlines()[0][:300] if text.strip() else type(exc).__name__
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
    refused = "the certificate" if connection.certificate is not None else "the workload's token"
    hint = next((h for code, h in hints.items() if code in text), f"Entra ID refused {refused}")
    return ExchangeSignInFailed(f"{_who(connection)} cannot sign in for {cmdlet}: {hint} ({first})",
                                cmdlet=cmdlet)
