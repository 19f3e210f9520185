"""Microsoft Graph access: msgraph-sdk's HTTP pipeline, JSON payloads.

The pipeline is msgraph-core's default middleware (retry honouring `Retry-After` on 429/503/504,
redirects, telemetry) around an httpx client whose base URL comes from `GRAPH_ENDPOINT`. Payloads
stay JSON dicts instead of msgraph-sdk's typed models: deserialising the first typed object
imports the whole model graph (about 0.7 to 2.4 s in a fresh process, msgraph-sdk-python #904/#909),
which would dominate a Functions cold start. Every call names the fields it needs (`$select`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import datetime as dt
import json
import logging
import math
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import parse_qsl, quote, urlsplit

import httpx

from shared.core.operation import MAX_RETRY_AFTER_SECONDS
from shared.core.record import format_time
from shared.errors import ExoAutomationError, NeedsOperator, Retryable, first_line
from shared.retry import Backoff, parse_retry_after, retry
from shared.settings import Settings

log = logging.getLogger("exo_automation.graph")
T = TypeVar("T")
REQUEST_OPTIONS_KEY = "kiota_request_options"  # msgraph_core.middleware.async_graph_transport


# Graph's codes for losing a race with a concurrent write: an alternate key (uniqueName) taken by
# a create that is still replicating, or an object changed between read and write.
RACE_CODES = frozenset({"Request_MultipleObjectsWithSameKeyValue", "ObjectConflict", "Request_PreconditionFailed",
                        "ConcurrencyViolation"})


class GraphError(Exception):
    """A Graph error response; `code` is Graph's error code (branch on it, never on `message`)."""

    def __init__(self, status: int, code: str, message: str, details: list[dict[str, Any]] | None = None,
                 retry_after: float | None = None, method: str = "", path: str = "") -> None:
        super().__init__(f"Graph {method} {path} → {status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.details = details or []
        self.retry_after = retry_after
        # For a 403: when the platform's permissions were granted and until when a refusal is taken for
        # one not yet in effect (set by GraphClient from its settings and clock; see permission_verdict).
        self.permission_window: PermissionWindow | None = None

    @property
    def detail_codes(self) -> set[str]:
        return {str(d.get("code")) for d in self.details if isinstance(d, dict)}

    @property
    def retryable(self) -> bool:
        return self.status == 429 or self.status >= 500

    @property
    def race(self) -> bool:
        """A conflict with a concurrent write (often one not yet replicated): the next run settles it."""
        return self.status in (409, 412) and bool({self.code, *self.detail_codes} & RACE_CODES)

    def classified(self) -> ExoAutomationError:
        """As one of the product's errors: retryable, or needs an operator."""
        if self.status == 429:
            # Still throttled after every wait the run could afford (GraphWaitBudget): the caller tries
            # again after Retry-After (an HTTP 503, a queue message delivered again later).
            return Retryable(f"Microsoft Graph is throttling the platform ({self.code}); retry after "
                             f"{_seconds(self.retry_after)}", reason="GraphThrottled", retry_after=self.retry_after)
        if self.retryable:
            return Retryable(f"Microsoft Graph is unavailable ({self.status} {self.code})",
                             reason="GraphUnavailable", retry_after=self.retry_after)
        if self.race:
            return Retryable(f"Microsoft Graph reported a concurrent change ({self.status} {self.code}); the next "
                             "run reads the result and continues", reason="DirectoryConflict",
                             retry_after=self.retry_after or 10)
        if self.status == 403:
            window = self.permission_window
            refused = f"Microsoft Graph refused the platform identity ({self.code}: {self.message})"
            since = f" since {_iso(window.granted_at)}" if window and window.granted_at else ""
            if window is not None and window.propagating:
                return Retryable(f"{refused}: permission missing or not yet in effect{since}, when the platform "
                                 "was deployed; a new permission can take hours to reach the platform's tokens, "
                                 f"so this is retried until {_iso(window.until)}, then needs an operator",
                                 reason="PermissionNotYetInEffect", retry_after=PERMISSION_RETRY_AFTER_SECONDS)
            return NeedsOperator(f"{refused}: permission missing or not yet in effect{since}; check the Graph "
                                 "permissions in the README's permission table (re-running `azd provision` "
                                 "grants them again)", reason="GraphPermissionMissing")
        return NeedsOperator(f"Microsoft Graph refused a request: {self.status} {self.code}: {self.message}",
                             reason="GraphRequestRefused")


PERMISSION_RETRY_AFTER_SECONDS = 300.0  # what an HTTP caller is told; the sweep backs off on its own


@dataclass(frozen=True)
class PermissionWindow:
    """Whether a 403 may still be a permission on its way (docs/reference.md "Entra ID tokens": a managed
    identity's new Graph permission can take hours to show in its tokens)."""

    granted_at: dt.datetime | None
    until: dt.datetime | None
    propagating: bool


def permission_verdict(now: dt.datetime, granted_at: dt.datetime | None, hours: float) -> PermissionWindow:
    """Pure: a 403 seen at `now` is taken for a permission not yet in effect while `now` is within `hours`
    of `granted_at`, the platform's deployment (which grants its permissions); after that, or when the
    deployment time is unknown, the permission is missing and an operator must act."""
    if granted_at is None:
        return PermissionWindow(None, None, False)
    until = granted_at + dt.timedelta(hours=hours)
    return PermissionWindow(granted_at, until, now < until)


def _seconds(value: float | None) -> str:
    return "a while" if value is None else f"{value:g} s"


def _iso(moment: dt.datetime | None) -> str:
    return format_time(moment) if moment else "?"


class GraphWaitBudget:
    """Seconds a run may still spend waiting out Graph's Retry-After (429) and back-off (503, 504).

    msgraph-core's retry handler sleeps up to 3 times per request; a run makes several requests. So
    the waits of one run share a budget: `graph_wait_budget` for an HTTP request or a queued run,
    otherwise each request gets its own of REQUEST_WAIT_SECONDS. A wait that does not fit is not
    started: the 429 goes back as Retryable with its Retry-After, and the caller answers (HTTP 503)
    or the queue delivers the message again later.
    """

    def __init__(self, seconds: float) -> None:
        self.remaining = max(0.0, seconds)

    def spend(self, seconds: float) -> bool:
        if seconds > self.remaining:
            return False
        self.remaining -= seconds
        return True


class ThrottleGate:
    """After a 429, this client's next Graph requests of the same kind wait for its Retry-After instead
    of being sent and refused too: refused requests count against Graph's limits as well
    (docs/reference.md "Throttling"), so concurrent runs retrying on their own would keep the tenant
    throttled. Reads of key credentials with $select have their own per-tenant limit, so they are a
    kind of their own (`throttle_scope`). One per GraphClient, i.e. per Platform (per worker process)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._until: dict[str, float] = {}

    def close_for(self, scope: str, seconds: float) -> None:
        self._until[scope] = max(self._until.get(scope, 0.0), self._clock() + seconds)

    def remaining(self, scope: str) -> float:
        return max(0.0, self._until.get(scope, 0.0) - self._clock())


KEY_CREDENTIAL_READS = "keyCredentialReads"


def throttle_scope(select: str | None) -> str:
    """Which of Graph's limits a request counts against, as far as the product tells them apart."""
    fields = {field.strip().lower() for field in (select or "").split(",")}
    return KEY_CREDENTIAL_READS if "keycredentials" in fields else "graph"


# Requests released together from the gate, or retried together, are spread over up to a quarter of
# the wait, at most this many seconds (random): enough to send them one after another, not at once.
GATE_JITTER_SECONDS = 2.0


def _jittered(wait: float) -> float:
    return wait + random.uniform(0, min(wait / 4, GATE_JITTER_SECONDS))

_wait_budget: ContextVar[GraphWaitBudget | None] = ContextVar("exo_automation_graph_wait_budget", default=None)
# One request's waits when no run budget is set (the CLI, the sweep): one longest Retry-After.
REQUEST_WAIT_SECONDS = MAX_RETRY_AFTER_SECONDS


@contextlib.contextmanager
def graph_wait_budget(seconds: float) -> Iterator[GraphWaitBudget]:
    """Every Graph wait inside (tasks started inside included) comes out of one budget of `seconds`."""
    budget = GraphWaitBudget(seconds)
    token = _wait_budget.set(budget)
    try:
        yield budget
    finally:
        _wait_budget.reset(token)


def literal(value: str) -> str:
    """An OData string literal."""
    return "'" + value.replace("'", "''") + "'"


class GraphClient:
    def __init__(self, settings: Settings, credential: Any,
                 clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)) -> None:
        self._settings = settings
        self._credential = credential
        self._clock = clock
        # msgraph-core's transport wrapper does not close what it wraps: keep the real one to close.
        self._transport = httpx.AsyncHTTPTransport(retries=1, trust_env=True)
        self._gate = ThrottleGate()
        self._http = _graph_http(settings, self._transport, self._gate)
        self._caller_oid: str | None = None

    async def aclose(self) -> None:
        await self._http.aclose()
        await self._transport.aclose()

    async def request(self, method: str, path: str, *, params: dict[str, str] | None = None,
                      json: Any = None, headers: dict[str, str] | None = None) -> httpx.Response:
        token = await self._token()
        all_headers = {"Authorization": f"Bearer {token.token}", "Accept": "application/json"}
        all_headers.update(headers or {})
        own_budget = _wait_budget.set(GraphWaitBudget(REQUEST_WAIT_SECONDS)) if _wait_budget.get() is None else None
        try:
            select = (params or {}).get("$select") or dict(parse_qsl(urlsplit(path).query)).get("$select")
            await self._through_gate(throttle_scope(select), method, path)
            # The request-options extension is what makes msgraph-core run its middleware (retry
            # with Retry-After, redirects); without it the pipeline is bypassed.
            response = await self._http.request(method, path, params=params, json=json, headers=all_headers,
                                                extensions={REQUEST_OPTIONS_KEY: {}})
        except httpx.TransportError as exc:
            raise Retryable(f"Microsoft Graph could not be reached: {type(exc).__name__}",
                            reason="GraphUnreachable") from exc
        finally:
            if own_budget is not None:
                _wait_budget.reset(own_budget)
        if response.status_code >= 400:
            error = _error_from(response, method, path, self._clock())
            if error.status == 403:
                error.permission_window = permission_verdict(self._clock(), self._settings.platform_deployed_at,
                                                             self._settings.permission_propagation_hours)
            raise error
        return response

    async def _through_gate(self, scope: str, method: str, path: str) -> None:
        """Wait while Graph throttles this client's requests of `scope` (ThrottleGate), out of the run's
        waiting budget; a wait the budget cannot cover is not started and the request is not sent
        (GraphThrottled)."""
        while (closed := self._gate.remaining(scope)) > 0:
            wait = _jittered(closed)
            budget = _wait_budget.get()
            if budget is not None and not budget.spend(wait):
                raise GraphError(429, "TooManyRequests", "not sent: Microsoft Graph is throttling this platform's "
                                 "requests", retry_after=math.ceil(closed), method=method, path=path.split("?")[0])
            await asyncio.sleep(wait)

    async def _token(self) -> Any:
        from azure.core.exceptions import AzureError

        try:
            return await self._credential.get_token(self._settings.graph_scope)
        except AzureError as exc:
            # DefaultAzureCredential folds every cause (an outage, a misconfigured identity) into one
            # status-less error: retry, and say why, so a lasting cause shows in status and logs.
            raise Retryable(f"the platform identity could not get a Microsoft Graph token: {first_line(exc)}",
                            reason="PlatformTokenUnavailable") from exc

    async def caller_object_id(self) -> str:
        """The object id of the principal this client signs in as (its token's `oid` claim).

        Issued by Entra, so nobody with lesser rights can forge it: this is the owner the product
        looks for when it proves that an app registration is its own (docs/architecture.md).
        """
        if self._caller_oid is None:
            token = await self._token()
            try:
                payload = token.token.split(".")[1]
                claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
                self._caller_oid = str(claims["oid"])
            except (IndexError, KeyError, ValueError, TypeError) as exc:
                raise NeedsOperator("the platform's Microsoft Graph token carries no object id (oid): ownership "
                                    "of app registrations cannot be proven", reason="PlatformIdentityUnknown") from exc
        return self._caller_oid

    async def get_json(self, path: str, params: dict[str, str] | None = None,
                       headers: dict[str, str] | None = None) -> dict[str, Any]:
        response = await self.request("GET", path, params=params, headers=headers)
        body: dict[str, Any] = response.json()
        return body

    async def get_optional(self, path: str, params: dict[str, str] | None = None) -> dict[str, Any] | None:
        try:
            return await self.get_json(path, params)
        except GraphError as exc:
            if exc.status == 404:
                return None
            raise

    async def pages(self, path: str, params: dict[str, str] | None = None,
                    headers: dict[str, str] | None = None) -> AsyncIterator[list[dict[str, Any]]]:
        """Each page of a collection, following `@odata.nextLink` (an absolute URL)."""
        body = await self.get_json(path, params, headers)
        while True:
            yield list(body.get("value", []))
            next_link = body.get("@odata.nextLink")
            if not next_link:
                return
            body = await self.get_json(next_link, None, headers)

    async def collect(self, path: str, params: dict[str, str] | None = None,
                      headers: dict[str, str] | None = None) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        async for page in self.pages(path, params, headers):
            items.extend(page)
        return items


def _graph_http(settings: Settings, transport: httpx.AsyncHTTPTransport, gate: ThrottleGate) -> httpx.AsyncClient:
    from kiota_http.kiota_client_factory import KiotaClientFactory
    from kiota_http.middleware import RetryHandler
    from msgraph_core import GraphClientFactory
    from msgraph_core.middleware import GraphTelemetryHandler

    client = httpx.AsyncClient(base_url=f"{settings.graph_endpoint}/v1.0", timeout=httpx.Timeout(60.0),
                               transport=transport, trust_env=True)
    # msgraph-core's default pipeline, with a retry handler that never sleeps on a long Retry-After.
    middleware = [_capped_retry_handler(gate) if isinstance(m, RetryHandler) else m
                  for m in KiotaClientFactory.get_default_middleware(None)]
    middleware.append(GraphTelemetryHandler())
    result: httpx.AsyncClient = GraphClientFactory.create_with_custom_middleware(middleware, client=client)
    return result


def _capped_retry_handler(gate: ThrottleGate) -> Any:
    from kiota_http.middleware import RetryHandler
    from kiota_http.middleware.options import RetryHandlerOption

    class CappedRetryHandler(RetryHandler):
        """Sleeps on a Retry-After of at most MAX_RETRY_AFTER_SECONDS, and only while the run's wait
        budget (GraphWaitBudget) covers it; otherwise the request is not retried: the error goes back
        (as Retryable, with its Retry-After) so the run answers."""

        def get_delay_time(self, retry_count: int, response: httpx.Response | None = None,
                           delay: float = RetryHandlerOption.DEFAULT_DELAY) -> float:
            wanted: float = super().get_delay_time(retry_count, response, delay)
            scope = throttle_scope(response.request.url.params.get("$select")) if response is not None else ""
            if response is not None and response.status_code == 429:
                gate.close_for(scope, wanted)  # the client's other requests of the kind wait too
            if response is None or response.status_code not in self.retry_on_status_codes \
                    or retry_count >= self.options.max_retry:
                return wanted  # the handler will not sleep on it (kiota's send: check_retry_valid)
            too_long = wanted > MAX_RETRY_AFTER_SECONDS
            if response.status_code == 429:
                # Concurrent requests refused together are retried spread out, not all at once.
                wanted = _jittered(max(wanted, gate.remaining(scope)))
            budget = _wait_budget.get()
            if too_long or (budget is not None and not budget.spend(wanted)):
                log.warning("Graph %s %s: %s, Retry-After %s; not waiting (%s s of this run's waiting budget left)",
                            response.request.method, response.request.url.path, response.status_code,
                            response.headers.get("retry-after", "none"),
                            f"{budget.remaining:.0f}" if budget is not None else "?")
                return RetryHandlerOption.MAX_DELAY
            if response.status_code == 429:
                log.info("Graph %s %s throttled (429); retrying in %.1f s", response.request.method,
                         response.request.url.path, wanted)
            return wanted

    return CappedRetryHandler()


def _error_from(response: httpx.Response, method: str, path: str, now: dt.datetime) -> GraphError:
    code, message = "UnknownError", response.reason_phrase
    details: list[dict[str, Any]] = []
    try:
        error = response.json().get("error", {})
        code = str(error.get("code", code))
        message = str(error.get("message", message))
        details = error.get("details") or []
    except ValueError:
        pass
    retry_after = parse_retry_after(response.headers.get("retry-after"), now)
    return GraphError(response.status_code, code, message, details, retry_after, method, path.split("?")[0])


# Waits on replication: from half a second, doubling, at most 15 s apart, jittered, 3 minutes in all.
REPLICATION_BACKOFF = Backoff(first=0.5, max_delay=15.0, budget=180.0, jitter=(0.75, 1.25))


async def retry_while_replicating(operation: Callable[[], Awaitable[T]], is_replication: Callable[[GraphError], bool],
                                  *, budget_seconds: float = REPLICATION_BACKOFF.budget) -> T:
    """Retry `operation` while Graph says a just-created object has not replicated yet.

    Entra ID is eventually consistent: a service principal created a moment ago can be unknown to
    the next write for seconds to minutes (docs/reference.md). No wait ends later than `budget_seconds`
    after the first try; these answers are not throttling, so a Retry-After on them does not pace the tries.
    """
    policy = dataclasses.replace(REPLICATION_BACKOFF, budget=budget_seconds)
    return await retry(operation, policy, retry_on=lambda exc: isinstance(exc, GraphError) and is_replication(exc),
                       retry_after=lambda exc: None)


def path_for_unique_name(unique_name: str) -> str:
    key = quote(literal(unique_name), safe="'")
    return f"/applications(uniqueName={key})"
