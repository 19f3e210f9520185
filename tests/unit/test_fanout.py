"""The sweep's fan-out keeps key-credential reads below Graph's per-tenant limit (shared/core/fanout.py)."""

from __future__ import annotations

import pytest

from shared.core.fanout import (
    FAN_OUT_HORIZON_SECONDS,
    GRAPH_KEY_CREDENTIAL_READ_LIMIT_PER_MINUTE,
    KEY_CREDENTIAL_READS_PER_MINUTE,
    MAX_THROTTLED_REQUEUE_SECONDS,
    MAX_THROTTLED_REQUEUES,
    fan_out,
    key_credential_reads,
    throttled_requeue_delay,
)


def reads_per_window(scheduled: list[tuple[str, int]], reads: dict[str, int], window: float) -> int:
    """The most planned reads whose messages become visible within any `window` seconds."""
    delays = sorted({delay for _, delay in scheduled})
    return max(sum(reads[name] for name, delay in scheduled if start <= delay < start + window) for start in delays)


def test_the_plan_stays_below_graphs_limit_with_headroom() -> None:
    assert KEY_CREDENTIAL_READS_PER_MINUTE <= GRAPH_KEY_CREDENTIAL_READ_LIMIT_PER_MINUTE * 0.7


def test_a_thousand_deep_checks_due_at_once_become_visible_at_the_planned_rate() -> None:
    due = [(f"fleet-{i:04d}", ["DeepCheckDue"]) for i in range(1000)]
    scheduled, deferred = fan_out(due)
    assert deferred == [] and len(scheduled) == 1000
    delays = [delay for _, delay in scheduled]
    assert delays == sorted(delays) and delays[0] == 0
    assert delays[-1] == 999 * 60 // KEY_CREDENTIAL_READS_PER_MINUTE  # 599 s: ten minutes for 1,000
    reads = {name: 1 for name, _ in due}
    assert reads_per_window(scheduled, reads, 60) <= KEY_CREDENTIAL_READS_PER_MINUTE
    # Without the spread, all 1,000 reads would be visible in the first second.
    assert sum(1 for delay in delays if delay == 0) <= 2


def test_reconciles_that_write_keys_count_their_extra_reads() -> None:
    assert key_credential_reads(["DeepCheckDue"]) == 1
    assert key_credential_reads(["ConsentMissing", "RoleMissing"]) == 1
    assert key_credential_reads(["RenewalDue"]) == 2
    assert key_credential_reads(["KeyMissing", "ApplicationMissing"]) == 2
    assert key_credential_reads(["RetirementDue"]) == 2
    assert key_credential_reads(["RenewalDue", "RetirementDue"]) == 3
    assert key_credential_reads(["RetryAfterFailure"]) == 2  # the failed step is unknown: assume a key write
    due = [(f"renew-{i:03d}", ["RenewalDue"]) for i in range(300)]
    scheduled, _ = fan_out(due)
    assert scheduled[-1][1] == 299 * 2 * 60 // KEY_CREDENTIAL_READS_PER_MINUTE
    assert reads_per_window(scheduled, {name: 2 for name, _ in due}, 60) <= KEY_CREDENTIAL_READS_PER_MINUTE + 1


def test_something_wrong_goes_before_the_routine_deep_checks() -> None:
    due = [("aaa", ["DeepCheckDue"]), ("bbb", ["DeepCheckDue"]), ("zzz", ["KeyMissing"]), ("mmm", ["ConsentMissing"])]
    scheduled, _ = fan_out(due, per_minute=1)
    assert [name for name, _ in scheduled] == ["mmm", "zzz", "aaa", "bbb"]
    assert [delay for _, delay in scheduled] == [0, 60, 180, 240]  # zzz reads twice


def test_what_does_not_fit_before_the_next_sweep_is_left_for_it() -> None:
    due = [(f"fleet-{i:05d}", ["DeepCheckDue"]) for i in range(3000)]
    scheduled, deferred = fan_out(due)
    assert len(scheduled) == 2502  # floor(i * 0.6) <= 1,500 s for i up to 2,501
    assert scheduled[-1][1] == FAN_OUT_HORIZON_SECONDS
    assert deferred == [name for name, _ in due[len(scheduled):]]


def test_a_scaled_window_scales_the_delays() -> None:
    due = [(f"fleet-{i:04d}", ["DeepCheckDue"]) for i in range(1000)]
    scheduled, _ = fan_out(due, window_seconds=6.0)
    assert scheduled[-1][1] == 59
    with pytest.raises(ValueError):
        fan_out(due, per_minute=0)


def test_a_throttled_message_comes_back_after_retry_after_doubling_with_jitter_then_stops() -> None:
    assert throttled_requeue_delay(10, 0, 0.0) == 10
    assert throttled_requeue_delay(10, 0, 1.0) == 15
    assert throttled_requeue_delay(10, 2, 0.0) == 40
    assert throttled_requeue_delay(None, 0, 0.0) == 60  # no Retry-After: a minute
    assert throttled_requeue_delay(0.2, 0, 0.0) == 1
    assert throttled_requeue_delay(60, 5, 1.0) == MAX_THROTTLED_REQUEUE_SECONDS
    assert throttled_requeue_delay(10, MAX_THROTTLED_REQUEUES, 0.0) is None
