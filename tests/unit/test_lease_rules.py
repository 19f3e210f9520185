"""The pure rule of the identity lease: when a held lease counts as lost (the run then stops
before its next write)."""

from __future__ import annotations

import asyncio

import pytest

from shared.errors import Retryable
from shared.lease import EXPIRY_MARGIN_SECONDS, HeldLease, LeaseLost, ensure_held


def test_a_lease_renewed_in_time_is_held() -> None:
    held = HeldLease("reports", duration=15.0, renewed_at=100.0)
    held.check(100.0 + 15.0 - EXPIRY_MARGIN_SECONDS - 0.01)
    assert held.lost is None


def test_a_lease_not_renewed_in_time_is_lost_even_if_nobody_said_so() -> None:
    # A stalled process: its renewer never ran, so only the time since the last renewal tells.
    held = HeldLease("reports", duration=15.0, renewed_at=100.0)
    with pytest.raises(LeaseLost) as raised:
        held.check(100.0 + 15.0 - EXPIRY_MARGIN_SECONDS)
    assert isinstance(raised.value, Retryable) and raised.value.reason == "LeaseLost"
    assert "reports" in raised.value.message and "stopped before its next write" in raised.value.message
    assert raised.value.retry_after == 15
    with pytest.raises(LeaseLost):
        held.check(100.0)  # lost stays lost, even if the clock says otherwise


def test_a_lease_whose_renewal_was_refused_is_lost_at_once() -> None:
    held = HeldLease("reports", duration=60.0, renewed_at=100.0,
                     lost="renewal refused: LeaseIsBrokenAndCannotBeRenewed")
    with pytest.raises(LeaseLost, match="LeaseIsBrokenAndCannotBeRenewed"):
        held.check(101.0)
    assert held.lost is not None


def test_outside_a_lease_nothing_is_checked() -> None:
    async def outside() -> None:
        ensure_held()  # dry runs and reads hold no lease: never refused

    asyncio.run(outside())
