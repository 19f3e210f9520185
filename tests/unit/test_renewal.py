from __future__ import annotations

import datetime as dt

import pytest

from shared.core.renewal import RenewalPolicy, jittered_renewal_time, next_attempt_after_failure, renewal_time

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
YEAR = T0 + dt.timedelta(days=360)
D = dt.timedelta(days=1)


@pytest.mark.parametrize(
    ("policy", "not_after", "expected"),
    [
        (RenewalPolicy(), YEAR, T0 + 240 * D),
        (RenewalPolicy(renew_before=30 * D), YEAR, YEAR - 30 * D),
        (RenewalPolicy(renew_before=400 * D), YEAR, T0 + 240 * D),
        (RenewalPolicy(renew_before=360 * D), YEAR, T0 + 240 * D),
        (RenewalPolicy(renew_at_fraction=0.5), YEAR, T0 + 180 * D),
        (RenewalPolicy(), T0 + dt.timedelta(seconds=3), T0 + dt.timedelta(seconds=2)),
    ],
    ids=["default two thirds", "explicit days win when shorter", "renewBefore longer than the lifetime falls back",
         "renewBefore equal to the lifetime falls back", "configured fraction", "tiny lifetime truncates to seconds"],
)
def test_renewal_time(policy: RenewalPolicy, not_after: dt.datetime, expected: dt.datetime) -> None:
    assert renewal_time(T0, not_after, policy) == expected


def test_jitter_only_moves_earlier_and_is_stable() -> None:
    policy = RenewalPolicy(jitter=dt.timedelta(hours=6))
    base = renewal_time(T0, YEAR, policy)
    times = {jittered_renewal_time(T0, YEAR, policy, f"thumb{i}") for i in range(50)}
    assert all(base - dt.timedelta(hours=6) <= t <= base for t in times)
    assert len(times) > 40, "different certificates spread out"
    assert jittered_renewal_time(T0, YEAR, policy, "x") == jittered_renewal_time(T0, YEAR, policy, "x")


def test_backoff_grows_and_never_passes_expiry() -> None:
    now = T0
    assert next_attempt_after_failure(now, 1, YEAR) == now + dt.timedelta(minutes=5)
    assert next_attempt_after_failure(now, 3, YEAR) == now + dt.timedelta(minutes=20)
    assert next_attempt_after_failure(now, 30, YEAR) == now + dt.timedelta(hours=6)
    near_expiry = now + dt.timedelta(hours=2)
    assert next_attempt_after_failure(now, 30, near_expiry) == near_expiry - dt.timedelta(hours=1)
    assert next_attempt_after_failure(now, 30, now) == now
