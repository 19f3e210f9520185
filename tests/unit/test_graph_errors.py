"""How a Graph refusal of the platform is classified: retried while a new permission may still be on its way."""

from __future__ import annotations

import datetime as dt

import pytest

from shared.adapters.graph import GraphError, permission_verdict
from shared.errors import NeedsOperator, Retryable
from shared.settings import Settings

DEPLOYED = dt.datetime(2024, 5, 2, 7, 0, tzinfo=dt.UTC)


@pytest.mark.parametrize(("after", "propagating"), [
    (dt.timedelta(0), True), (dt.timedelta(hours=5, minutes=59), True), (dt.timedelta(hours=6), False),
    (dt.timedelta(days=30), False), (-dt.timedelta(minutes=5), True),
], ids=["at-deployment", "inside", "at-the-end", "long-after", "clock-skew"])
def test_permission_verdict(after: dt.timedelta, propagating: bool) -> None:
    window = permission_verdict(DEPLOYED + after, DEPLOYED, 6.0)
    assert window.propagating is propagating and window.until == DEPLOYED + dt.timedelta(hours=6)


def test_an_unknown_deployment_time_never_counts_as_propagating() -> None:
    assert not permission_verdict(DEPLOYED, None, 6.0).propagating


def refused(after: dt.timedelta | None) -> GraphError:
    error = GraphError(403, "Authorization_RequestDenied", "Insufficient privileges to complete the operation.")
    if after is not None:
        error.permission_window = permission_verdict(DEPLOYED + after, DEPLOYED, 6.0)
    return error


def test_a_403_inside_the_window_is_retryable_and_says_since_when() -> None:
    classified = refused(dt.timedelta(hours=1)).classified()
    assert isinstance(classified, Retryable) and classified.reason == "PermissionNotYetInEffect"
    assert "permission missing or not yet in effect since 2024-05-02T07:00:00Z" in classified.message
    assert "until 2024-05-02T13:00:00Z" in classified.message


@pytest.mark.parametrize("after", [dt.timedelta(hours=7), None], ids=["after-the-window", "no-deployment-time"])
def test_a_403_outside_the_window_needs_an_operator(after: dt.timedelta | None) -> None:
    classified = refused(after).classified()
    assert isinstance(classified, NeedsOperator) and classified.reason == "GraphPermissionMissing"
    assert "permission missing or not yet in effect" in classified.message


@pytest.mark.parametrize(("value", "expected"), [
    ("20240502T070000Z", DEPLOYED), ("2024-05-02T09:00:00+02:00", DEPLOYED), ("", None),
])
def test_deployment_time_setting(value: str, expected: dt.datetime | None) -> None:
    env = {"KEY_VAULT_URL": "https://kv.vault.azure.net/", "AZURE_TENANT_ID": "00000000-0000-0000-0000-000000000001",
           "EXO_ORGANIZATION": "contoso.onmicrosoft.com", "PLATFORM_DEPLOYED_AT": value}
    assert Settings.from_environment(env).platform_deployed_at == expected


# -- throttling (docs/reference.md "Throttling") ----------------------------------------------------------

def test_reads_of_key_credentials_are_a_throttling_kind_of_their_own() -> None:
    from shared.adapters.graph import KEY_CREDENTIAL_READS, throttle_scope

    assert throttle_scope("id,appId,keyCredentials,tags") == KEY_CREDENTIAL_READS
    assert throttle_scope(" KeyCredentials ") == KEY_CREDENTIAL_READS
    assert throttle_scope("id,keyCredentialsX") == throttle_scope(None) == throttle_scope("id") == "graph"


def test_the_gate_stays_closed_for_the_longest_retry_after_of_its_kind() -> None:
    from shared.adapters.graph import KEY_CREDENTIAL_READS, ThrottleGate

    now = [10.0]
    gate = ThrottleGate(clock=lambda: now[0])
    gate.close_for(KEY_CREDENTIAL_READS, 30)
    gate.close_for(KEY_CREDENTIAL_READS, 5)  # a shorter one does not reopen it early
    assert gate.remaining(KEY_CREDENTIAL_READS) == 30 and gate.remaining("graph") == 0
    now[0] = 39.0
    assert gate.remaining(KEY_CREDENTIAL_READS) == 1
    now[0] = 41.0
    assert gate.remaining(KEY_CREDENTIAL_READS) == 0


def test_a_wait_budget_is_spent_only_on_waits_it_covers() -> None:
    from shared.adapters.graph import GraphWaitBudget

    budget = GraphWaitBudget(10)
    assert budget.spend(4) and budget.spend(6) and not budget.spend(0.5)
    assert GraphWaitBudget(-1).remaining == 0
