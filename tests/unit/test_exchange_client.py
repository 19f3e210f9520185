"""The Exchange client's paging, retries and error mapping, over real HTTP against the Exchange stand-in.

No Key Vault here: the client gets its connection from a small fake cache whose credential hands
out tokens the Entra stand-in's issuer signed, with or without consent (`roles`) and role (`wids`).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from azure.core.credentials import AccessToken
from azure.core.exceptions import ClientAuthenticationError

from devstack import Stack
from devstack.faults import Fault
from devstack.world import Mailbox
from shared.core.record import ConnectionRecord
from shared.runtime.connection import Connection
from shared.runtime.exchange import (
    ExchangeBadRequest,
    ExchangeCmdletError,
    ExchangeCmdletNotPermitted,
    ExchangeConsentMissing,
    ExchangeError,
    ExchangeNonTerminatingErrors,
    ExchangeNotFound,
    ExchangeRoleMissing,
    ExchangeSignInFailed,
    ExchangeThrottled,
    ExchangeUnauthorized,
    ExchangeUnavailable,
    RetryPolicy,
    _error_fields,
    token_claims,
)

ERA = "31392ffb-586c-42d1-9346-e59415a2cc4e"
GLOBAL_READER = "f2ef992c-3afb-46b9-b7cf-a126ee74c451"
FAST = RetryPolicy(max_attempts=4, max_wait_seconds=0.05, budget_seconds=5.0, backoff_seconds=0.01)


class Credential:
    """Hands out one token, or raises what it was given."""

    def __init__(self, token: str | Exception) -> None:
        self.value = token
        self.requests = 0

    async def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        self.requests += 1
        if isinstance(self.value, Exception):
            raise self.value
        return AccessToken(self.value, int(time.time()) + 3600)

    async def close(self) -> None:
        return None


@dataclass
class FakeCache:
    """What ExchangeClient needs of a ConnectionCache: get, refresh (next connection in line), http."""

    connections: list[Connection]
    client: httpx.AsyncClient
    refreshes: int = 0

    async def get(self, name: str) -> Connection:
        return self.connections[min(self.refreshes, len(self.connections) - 1)]

    async def refresh(self, failed: Connection) -> Connection:
        self.refreshes += 1
        return await self.get(failed.identity)

    def http(self) -> httpx.AsyncClient:
        return self.client


def token(stack: Stack, *, roles: list[str] | None = None, wids: list[str] | None = None) -> str:
    """A token the Entra stand-in would mint for an app with these app roles (consent) and Entra roles."""
    issued, _ = stack.world.issuer.issue(
        audience=stack.url("exchange"), object_id=str(uuid.uuid4()), app_id=str(uuid.uuid4()),
        roles=["Exchange.ManageAsApp"] if roles is None else roles, wids=[ERA] if wids is None else wids)
    return issued


def make_connection(stack: Stack, credential: Credential, *, tenant_id: str | None = None,
                    thumbprint: str = "AA" * 20) -> Connection:
    import datetime as dt

    now = dt.datetime.now(dt.UTC)
    record = ConnectionRecord(
        identity="unit", app_id=str(uuid.uuid4()), tenant_id=tenant_id or stack.world.tenant_id,
        organization=stack.world.organization, key_vault_url="https://kv.example/", certificate_name="exo-unit-cert",
        certificate_version="v1", thumbprint=thumbprint, not_before=now, not_after=now + dt.timedelta(days=365),
        previous_thumbprint=None, previous_certificate_version=None, updated_at=now)
    certificate = SimpleNamespace(thumbprint=thumbprint, version="v1")
    return Connection(record, certificate, credential, f"{stack.url('exchange')}/.default",  # type: ignore[arg-type]
                      "https://graph.example/.default", stack.url("exchange"))


def run(stack: Stack, credentials: list[Credential | str | Exception],
        work: Callable[[Any], Awaitable[Any]], *, page_size: int = 1000, **connection_options: Any) -> tuple[Any, Any]:
    from shared.runtime.exchange import ExchangeClient

    async def scenario() -> tuple[Any, Any]:
        async with httpx.AsyncClient(trust_env=True) as client:
            conns = [make_connection(stack, c if isinstance(c, Credential) else Credential(c), **connection_options)
                     for c in credentials]
            cache = FakeCache(conns, client)
            exchange = ExchangeClient("unit", cache=cache, retry=FAST, page_size=page_size)  # type: ignore[arg-type]
            return await work(exchange), (exchange, cache)

    return asyncio.run(scenario())


def exchange_requests(stack: Stack) -> int:
    return sum(r["count"] for r in stack.world.counter.snapshot() if r["service"] == "exchange")


# -- paging ---------------------------------------------------------------------------------------
def test_pages_are_followed_with_the_same_body(stack: Stack) -> None:
    stack.world.mailboxes += [Mailbox(f"User {i}", f"user{i}@{stack.world.organization}") for i in range(6)]
    rows, (client, _) = run(stack, [token(stack)], lambda c: c.invoke("Get-Mailbox", {"ResultSize": "Unlimited"}),
                            page_size=4)
    assert len(rows) == 11
    assert len({r["UserPrincipalName"] for r in rows}) == 11
    (call,) = client.calls
    assert (call.cmdlet, call.items, call.pages, call.thumbprint) == ("Get-Mailbox", 11, 3, "AA" * 20)
    assert exchange_requests(stack) == 3


def test_pages_can_be_consumed_one_at_a_time(stack: Stack) -> None:
    async def first_page(client: Any) -> list[dict[str, Any]]:
        async for page in client.pages("Get-Mailbox"):
            return list(page)
        return []

    page, _ = run(stack, [token(stack)], first_page, page_size=2)
    assert len(page) == 2 and exchange_requests(stack) == 1


def test_a_next_link_outside_the_endpoint_is_not_followed(stack: Stack) -> None:
    async def scenario() -> None:
        def answer(request: httpx.Request) -> httpx.Response:
            return httpx.Response(200, json={"value": [{"Name": "x"}],
                                             "@odata.nextLink": "https://elsewhere.example/steal"})

        from shared.runtime.exchange import ExchangeClient

        async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as client:
            cache = FakeCache([make_connection(stack, Credential(token(stack)))], client)
            with pytest.raises(ExchangeError, match="outside"):
                await ExchangeClient("unit", cache=cache, retry=FAST).invoke("Get-Mailbox")  # type: ignore[arg-type]

    asyncio.run(scenario())


# -- retries --------------------------------------------------------------------------------------
def test_throttling_is_retried_honouring_retry_after(stack: Stack) -> None:
    stack.world.faults.add(Fault(service="exchange", status=429, retry_after=0.01, count=2))
    rows, _ = run(stack, [token(stack)], lambda c: c.invoke("Get-Mailbox"))
    assert len(rows) == 5
    assert exchange_requests(stack) == 3


def test_throttling_that_does_not_stop_raises_throttled_with_the_wait(stack: Stack) -> None:
    stack.world.faults.add(Fault(service="exchange", status=429, retry_after=0.02, count=None))
    with pytest.raises(ExchangeThrottled) as info:
        run(stack, [token(stack)], lambda c: c.invoke("Get-Mailbox"))
    assert info.value.retry_after == pytest.approx(0.02)
    assert info.value.reason == "ExchangeThrottled" and "429" in str(info.value)
    assert exchange_requests(stack) == FAST.max_attempts


def test_server_errors_are_retried_then_reported_unavailable(stack: Stack) -> None:
    stack.world.faults.add(Fault(service="exchange", status=503, count=1))
    rows, _ = run(stack, [token(stack)], lambda c: c.invoke("Get-Mailbox"))
    assert len(rows) == 5
    stack.world.counter.reset()
    stack.world.faults.add(Fault(service="exchange", status=500, count=None))
    with pytest.raises(ExchangeUnavailable, match="500"):
        run(stack, [token(stack)], lambda c: c.invoke("Get-Mailbox"))
    assert exchange_requests(stack) == FAST.max_attempts


def test_the_retry_budget_bounds_a_long_retry_after(stack: Stack) -> None:
    stack.world.faults.add(Fault(service="exchange", status=429, retry_after=30, count=1))
    started = time.monotonic()
    policy = RetryPolicy(max_attempts=5, max_wait_seconds=60.0, budget_seconds=1.0)

    async def scenario() -> None:
        from shared.runtime.exchange import ExchangeClient

        async with httpx.AsyncClient(trust_env=True) as client:
            cache = FakeCache([make_connection(stack, Credential(token(stack)))], client)
            with pytest.raises(ExchangeThrottled) as info:
                await ExchangeClient("unit", cache=cache, retry=policy).invoke("Get-Mailbox")  # type: ignore[arg-type]
            assert info.value.retry_after == 30

    asyncio.run(scenario())
    assert time.monotonic() - started < 5


def test_a_retry_after_date_is_waited_until(stack: Stack) -> None:
    from email.utils import formatdate

    from shared.runtime.exchange import ExchangeClient

    answers = [httpx.Response(503, headers={"Retry-After": formatdate(time.time() + 30, usegmt=True)}),
               httpx.Response(200, json={"value": [{"Name": "x"}]})]
    sleeps: list[float] = []

    async def no_sleep(seconds: float) -> None:
        sleeps.append(seconds)

    async def scenario() -> list[dict[str, Any]]:
        async with httpx.AsyncClient(transport=httpx.MockTransport(lambda request: answers.pop(0))) as client:
            cache = FakeCache([make_connection(stack, Credential(token(stack)))], client)
            exchange = ExchangeClient("unit", cache=cache, sleep=no_sleep)  # type: ignore[arg-type]
            return await exchange.invoke("Get-Mailbox")

    assert asyncio.run(scenario()) == [{"Name": "x"}]
    (slept,) = sleeps
    assert 25 < slept <= 30



# -- errors ---------------------------------------------------------------------------------------
def test_bad_parameter_carries_the_server_message(stack: Stack) -> None:
    with pytest.raises(ExchangeBadRequest) as info:
        run(stack, [token(stack)], lambda c: c.invoke("Get-Mailbox", {"Frobnicate": True}))
    error = info.value
    assert error.status == 400 and error.target == "Frobnicate"
    assert error.exception_type == "ParameterBindingException"
    assert "A parameter cannot be found that matches parameter name 'Frobnicate'" in str(error)
    assert "(parameter Frobnicate)" in str(error)


def test_a_cmdlet_error_carries_the_server_reason_not_invalid_operation(stack: Stack) -> None:
    # docs/reference.md "Exchange Online": error.message is always "Invalid Operation"; the reason is in
    # innererror.internalexception.message (this one) or details[0].message after `|Type|`.
    with pytest.raises(ExchangeBadRequest) as info:
        run(stack, [token(stack)], lambda c: c.invoke("Set-Mailbox", {"Identity": "adelev",
                                                                         "ProhibitSendQuota": "300 GB"}))
    error = info.value
    assert "Invalid Operation" not in str(error)
    assert error.server_message.startswith("The value of property 'ProhibitSendQuota' must be less than")
    assert error.exception_type == "DataValidationException"
    assert str(error).startswith("Exchange Online refused Set-Mailbox: The value of property 'ProhibitSendQuota'")


@pytest.mark.parametrize("roles", [[ERA], [GLOBAL_READER]], ids=["recipient-admin", "global-reader"])
def test_unknown_cmdlet_is_not_called_a_missing_role(stack: Stack, roles: list[str]) -> None:
    with pytest.raises(ExchangeCmdletNotPermitted) as info:
        run(stack, [token(stack, wids=roles), token(stack, wids=roles)], lambda c: c.invoke("Get-Nothing"))
    error = info.value
    assert not isinstance(error, ExchangeRoleMissing) and "role missing" not in str(error).lower()
    assert "unknown cmdlet or not permitted for this identity's role" in str(error)
    assert error.status == 403 and error.reason == "ExchangeCmdletNotPermitted"


def test_a_cmdlet_the_role_does_not_allow_names_the_roles_held(stack: Stack) -> None:
    with pytest.raises(ExchangeCmdletNotPermitted) as info:
        run(stack, [token(stack, wids=[GLOBAL_READER]), token(stack, wids=[GLOBAL_READER])],
            lambda c: c.invoke("Set-Mailbox", {"Identity": "adelev", "DisplayName": "x"}))
    assert info.value.roles == ("Global Reader",)
    assert "(it holds 'Global Reader')" in str(info.value) and "Set-Mailbox" in str(info.value)
    assert "\x00" not in str(info.value)


def test_the_same_cmdlet_runs_for_a_role_that_allows_it(stack: Stack) -> None:
    rows, _ = run(stack, [token(stack, wids=[ERA])],
                  lambda c: c.invoke("Set-Mailbox", {"Identity": "adelev", "DisplayName": "Adele V."}))
    assert rows == [] and stack.world.mailboxes[0].display_name == "Adele V."


def test_unknown_object_is_not_found(stack: Stack) -> None:
    with pytest.raises(ExchangeNotFound, match="couldn't be found") as info:
        run(stack, [token(stack)], lambda c: c.invoke("Get-Mailbox", {"Identity": "nobody"}))
    assert info.value.exception_type == "ManagementObjectNotFoundException"
    assert not info.value.server_message.startswith("|")


def test_warnings_are_logged_and_kept_on_the_call(stack: Stack, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="shared.exchange")
    rows, (client, _) = run(stack, [token(stack)],
                            lambda c: c.invoke("Get-MailboxStatistics", {"Identity": "sales"}))
    assert rows == []
    (call,) = client.calls
    assert call.warnings and "hasn't logged on to mailbox 'Sales'" in call.warnings[0]
    assert any("hasn't logged on to mailbox 'Sales'" in r.getMessage() for r in caplog.records)


def test_non_terminating_errors_are_raised_with_the_rows(stack: Stack) -> None:
    with pytest.raises(ExchangeNonTerminatingErrors) as info:
        run(stack, [token(stack)],
            lambda c: c.invoke("Get-MailboxStatistics", {"Identity": ["adelev", "nobody", "meganb"]}))
    error = info.value
    assert [row["DisplayName"] for row in error.rows] == ["Adele Vance", "Megan Bowen"]
    (reason,) = error.errors
    assert reason.startswith("The operation couldn't be performed because object 'nobody'")
    assert "2 returned" in str(error) and isinstance(error, ExchangeCmdletError)


def test_error_reasons_are_read_from_either_place() -> None:
    internal = httpx.Response(400, json={"error": {"code": "BadRequest", "message": "Invalid Operation",
                                                   "innerError": {"type": "X.Y.SomeException",
                                                                  "internalException": {"Message": "why"}}}})
    assert _error_fields(internal) == ("BadRequest", "why", "", "SomeException")
    detail = httpx.Response(400, json={"error": {"code": "BadRequest", "message": "Invalid Operation", "details": [
        {"code": "x", "target": "Identity", "message": "|A.B.NotFoundException|the reason"}]}})
    assert _error_fields(detail) == ("BadRequest", "the reason", "Identity", "NotFoundException")
    nul = httpx.Response(403, content=b"\x00" * 8)
    assert _error_fields(nul) == ("", "", "", "")


def test_missing_consent_is_named_after_one_refresh(stack: Stack) -> None:
    with pytest.raises(ExchangeConsentMissing, match=r"Exchange\.ManageAsApp") as info:
        run(stack, [token(stack, roles=[]), token(stack, roles=[])], lambda c: c.invoke("Get-Mailbox"))
    assert "admin consent" in str(info.value)
    assert isinstance(info.value, ExchangeError) and info.value.status == 401


def test_missing_role_is_named_after_one_refresh(stack: Stack) -> None:
    with pytest.raises(ExchangeRoleMissing, match="Exchange Recipient Administrator") as info:
        run(stack, [token(stack, wids=[]), token(stack, wids=[])], lambda c: c.invoke("Get-Mailbox"))
    assert info.value.status == 403


def test_a_role_granted_since_the_token_was_minted_is_picked_up_by_the_refresh(stack: Stack) -> None:
    rows, (_, cache) = run(stack, [token(stack, wids=[]), token(stack)], lambda c: c.invoke("Get-Mailbox"))
    assert len(rows) == 5 and cache.refreshes == 1


def test_other_401_is_unauthorized(stack: Stack) -> None:
    stack.world.faults.add(Fault(service="exchange", status=401, count=2))
    with pytest.raises(ExchangeUnauthorized):
        run(stack, [token(stack)], lambda c: c.invoke("Get-Mailbox"))


def test_sign_in_refused_twice_says_the_certificate_is_not_on_the_app(stack: Stack) -> None:
    refused = ClientAuthenticationError("CertificateCredential.get_token failed: AADSTS700027: Client assertion "
                                        "contains an invalid signature. [Reason - The key was not found.]")
    with pytest.raises(ExchangeSignInFailed, match="not \\(or no longer\\) a key of the app") as info:
        run(stack, [refused, refused], lambda c: c.invoke("Get-Mailbox"))
    assert "unit" in str(info.value) and "AA" * 20 in str(info.value)


def test_sign_in_refused_once_is_refreshed(stack: Stack) -> None:
    refused = ClientAuthenticationError("AADSTS700027: key not found")
    rows, (client, cache) = run(stack, [refused, token(stack)], lambda c: c.invoke("Get-Mailbox"))
    assert len(rows) == 5 and cache.refreshes == 1 and client.calls[0].items == 5


def test_token_claims_are_read_without_trusting_them(stack: Stack) -> None:
    claims = token_claims(token(stack, wids=[GLOBAL_READER]))
    assert claims["wids"] == [GLOBAL_READER] and claims["roles"] == ["Exchange.ManageAsApp"]
    assert token_claims("not-a-jwt") == {}
