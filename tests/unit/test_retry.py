"""The one retry helper: its policy, Retry-After parsing, the runner (on a fake clock, never sleeping),
the policies each adapter runs with, and `first_line`."""

from __future__ import annotations

import asyncio
import datetime as dt
from email.utils import format_datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.adapters.graph import REPLICATION_BACKOFF
from shared.adapters.vault import CREATE_POLL
from shared.core.operation import MAX_RETRY_AFTER_SECONDS
from shared.errors import first_line
from shared.lease import LEASE_POLL
from shared.retry import Backoff, NotYet, parse_retry_after, retry
from shared.runtime.exchange import RetryPolicy

NOW = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)


class FakeTime:
    """A monotonic clock that moves only when slept on, or when an attempt takes `work` seconds."""

    def __init__(self) -> None:
        self.started = self.now = 1000.0
        self.sleeps: list[float] = []
        self.ends: list[float] = []  # when each wait ended, in seconds since the start

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        self.ends.append(self.now - self.started)


def run_retry(policy: Backoff, outcomes: list[Exception | str], time: FakeTime, *, work: float = 0.0,
              draw: float = 0.5, **options: object) -> tuple[str | None, Exception | None, int]:
    """Run `retry` over an operation that raises or returns each outcome in turn (the last one forever):
    (result, error raised, calls made)."""
    calls = 0

    async def operation() -> str:
        nonlocal calls
        outcome = outcomes[min(calls, len(outcomes) - 1)]
        calls += 1
        time.now += work
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    try:
        result = asyncio.run(retry(operation, policy, clock=time.clock, sleep=time.sleep, draw=lambda: draw,
                                   **options))  # type: ignore[arg-type]
    except Exception as exc:
        return None, exc, calls
    return result, None, calls


@st.composite
def policies(draw: st.DrawFn) -> Backoff:
    first = draw(st.floats(0.05, 10.0))
    return Backoff(first=first, factor=draw(st.floats(1.0, 4.0)), max_delay=draw(st.floats(first, 30.0)),
                   budget=draw(st.floats(0.0, 300.0)), attempts=draw(st.none() | st.integers(1, 12)),
                   jitter=(draw(st.floats(0.2, 1.0)), draw(st.floats(1.0, 2.0))),
                   max_retry_after=draw(st.floats(0.0, 120.0)))


advice = st.none() | st.floats(0.0, 1000.0)


# -- the policy -----------------------------------------------------------------------------------
@settings(max_examples=300, deadline=None)  # up to thousands of attempts on the fake clock: no time limit
@given(policy=policies(), asked=st.lists(advice, min_size=1, max_size=40), work=st.floats(0.0, 20.0),
       draw=st.floats(0.0, 0.999))
def test_no_wait_ends_past_the_budget_and_attempts_are_bounded(policy: Backoff, asked: list[float | None],
                                                               work: float, draw: float) -> None:
    time = FakeTime()
    outcomes: list[Exception | str] = [NotYet(retry_after=a) for a in asked]
    _, error, calls = run_retry(policy, outcomes, time, work=work, draw=draw)
    assert isinstance(error, NotYet), "the last error goes back when the policy stops"
    assert all(end <= policy.budget + 1e-9 for end in time.ends)
    assert policy.attempts is None or calls <= policy.attempts
    assert calls <= 1 + policy.budget / policy.shortest + 1e-6, "every wait takes some time: no tight loop"
    assert len(time.sleeps) == calls - 1


@settings(deadline=None)
@given(policy=policies(), asked=st.floats(0.0, 1000.0))
def test_retry_after_is_honoured_up_to_its_cap(policy: Backoff, asked: float) -> None:
    wait = policy.wait(1, 0.0, asked)
    expected = max(min(asked, policy.max_retry_after), policy.shortest)
    if (policy.attempts is None or policy.attempts > 1) and expected <= policy.budget:
        assert wait == expected
    else:
        assert wait is None


@settings(deadline=None)
@given(policy=policies(), attempt=st.integers(1, 10_000), draw=st.floats(0.0, 0.999))
def test_a_computed_delay_grows_to_its_cap_within_the_jitter(policy: Backoff, attempt: int, draw: float) -> None:
    plain = Backoff(first=policy.first, factor=policy.factor, max_delay=policy.max_delay)
    base = plain.delay(attempt)
    assert base <= policy.max_delay
    assert plain.delay(attempt + 1) >= base
    low, high = policy.jitter
    assert base * low - 1e-9 <= policy.delay(attempt, None, draw) <= base * high + 1e-9


def test_a_retry_after_of_zero_waits_the_shortest_wait() -> None:
    assert Backoff(first=0.5).delay(1, 0.0) == 0.5
    assert Backoff(first=1.0, jitter=(0.5, 1.0)).delay(4, -5.0) == 0.5


@pytest.mark.parametrize("fields", [{"first": 0.0}, {"factor": 0.5}, {"first": 2.0, "max_delay": 1.0},
                                    {"jitter": (0.0, 1.0)}, {"jitter": (1.2, 1.0)}, {"attempts": 0}, {"budget": -1}])
def test_a_policy_that_could_loop_without_waiting_is_refused(fields: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="not a back-off policy"):
        Backoff(**fields)  # type: ignore[arg-type]


# -- the runner -----------------------------------------------------------------------------------
def test_success_after_failures_returns_the_result_after_each_wait() -> None:
    time = FakeTime()
    result, error, calls = run_retry(Backoff(first=1.0, max_delay=3.0), [NotYet(), NotYet(), NotYet(), "done"], time)
    assert (result, error, calls) == ("done", None, 4)
    assert time.sleeps == [1.0, 2.0, 3.0]


def test_an_error_it_does_not_retry_goes_back_at_once() -> None:
    time = FakeTime()
    boom = ValueError("no")
    _, error, calls = run_retry(Backoff(), [boom], time)
    assert error is boom and calls == 1 and time.sleeps == []


def test_retry_on_and_retry_after_choose_what_is_retried_and_how_long() -> None:
    class Throttled(Exception):
        seconds = 7.0

    time = FakeTime()
    result, _, _ = run_retry(Backoff(), [Throttled(), "ok"], time, retry_on=lambda e: isinstance(e, Throttled),
                             retry_after=lambda e: e.seconds)
    assert result == "ok" and time.sleeps == [7.0]


def test_a_server_asking_for_longer_than_the_cap_is_waited_for_the_cap() -> None:
    time = FakeTime()
    result, _, _ = run_retry(Backoff(max_retry_after=60.0), [NotYet(retry_after=3600), "ok"], time)
    assert result == "ok" and time.sleeps == [60.0]


def test_time_spent_in_attempts_counts_against_the_budget() -> None:
    time = FakeTime()
    _, error, calls = run_retry(Backoff(first=1.0, factor=1.0, budget=10.0), [NotYet()], time, work=4.0)
    # 4 s work, 1 s wait, 4 s work (9 s): a wait would end at 10 s, allowed; then 14 s is past it.
    assert isinstance(error, NotYet) and calls == 3 and time.sleeps == [1.0, 1.0]


def test_on_retry_is_told_before_each_wait() -> None:
    told: list[tuple[str, int, float]] = []
    time = FakeTime()
    run_retry(Backoff(first=1.0, attempts=3), [NotYet("held")], time,
              on_retry=lambda e, n, w: told.append((str(e), n, w)))
    assert told == [("held", 1, 1.0), ("held", 2, 2.0)]


def test_a_cancelled_run_is_not_retried() -> None:
    async def scenario() -> None:
        calls = 0

        async def operation() -> None:
            nonlocal calls
            calls += 1
            raise asyncio.CancelledError

        with pytest.raises(asyncio.CancelledError):
            await retry(operation, Backoff())
        assert calls == 1

    asyncio.run(scenario())


# -- Retry-After ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("header", "expected"), [
    ("2", 2.0), (" 120 ", 120.0), ("0.5", 0.5), ("0", 0.0), ("-3", None), ("soon", None), ("", None),
    (None, None), ("inf", None), ("nan", None), ("1e3", None),
    ("Sun, 01 Mar 2026 12:02:00 GMT", 120.0),  # IMF-fixdate
    ("Sun, 01 Mar 2026 11:00:00 GMT", 0.0),  # in the past: now
    ("Sunday, 01-Mar-26 12:00:30 GMT", 30.0),  # the obsolete forms a recipient must still accept (RFC 9110)
    ("Sun Mar  1 12:00:45 2026", 45.0),
    ("Sun, 01 Mar 2026 12:01:00 -0000", 60.0),
], ids=["seconds", "spaces", "fraction", "zero", "negative", "garbage", "empty", "absent", "inf", "nan",
        "exponent", "date", "past-date", "rfc850", "asctime", "unknown-zone"])
def test_retry_after_forms(header: str | None, expected: float | None) -> None:
    assert parse_retry_after(header, NOW) == expected


@settings(deadline=None)
@given(seconds=st.integers(0, 10**9))
def test_retry_after_delay_seconds_and_dates_agree(seconds: int) -> None:
    assert parse_retry_after(str(seconds), NOW) == seconds
    date = format_datetime(NOW + dt.timedelta(seconds=seconds), usegmt=True)
    assert parse_retry_after(date, NOW) == seconds


# -- the policies the adapters run with (as before the helper, except where noted) -------------------
def test_replication_waits_double_from_half_a_second_to_15_seconds_jittered_by_a_quarter() -> None:
    assert [REPLICATION_BACKOFF.delay(n) for n in range(1, 8)] == [0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 15.0]
    assert REPLICATION_BACKOFF.delay(3, None, 0.0) == 1.5 and REPLICATION_BACKOFF.delay(3, None, 1.0) == 2.5
    assert REPLICATION_BACKOFF.budget == 180.0


def test_a_steady_phase_waits_the_first_delay_then_grows_from_it() -> None:
    policy = Backoff(first=0.5, steady=2.0, max_delay=4.0, budget=30.0)
    assert [policy.wait(n, elapsed) for n, elapsed in [(1, 0.0), (2, 0.5), (3, 1.0), (4, 1.9)]] == [0.5] * 4
    assert [policy.wait(n, 2.0 + n) for n in range(5, 9)] == [0.5, 1.0, 2.0, 4.0], "growth counts from the phase's end"
    assert policy.wait(5, 2.0, retry_after=3.0) == 3.0, "a server's Retry-After still wins after the phase"
    assert CREATE_POLL.steady == 15.0 and CREATE_POLL.budget == 300.0


def test_a_held_lease_is_polled_from_a_quarter_second_to_2_within_the_wait() -> None:
    assert [LEASE_POLL.delay(n) for n in range(1, 7)] == [0.25, 0.5, 1.0, 2.0, 2.0, 2.0]
    assert Backoff(first=0.25, max_delay=2.0, budget=0.1).wait(1, 0.0) is None


def test_the_exchange_policy_keeps_its_public_shape() -> None:
    backoff = RetryPolicy().backoff
    assert (backoff.attempts, backoff.budget, backoff.max_delay, backoff.max_retry_after) == (5, 180.0, 60.0, 60.0)
    assert [backoff.delay(n, None, 1.0) for n in range(1, 5)] == [1.0, 2.0, 4.0, 8.0]
    assert backoff.delay(1, None, 0.0) == 0.5, "jittered down to half"
    assert backoff.wait(5, 0.0) is None, "five attempts"
    assert MAX_RETRY_AFTER_SECONDS == 60.0


# -- first_line -----------------------------------------------------------------------------------
@pytest.mark.parametrize(("error", "expected"), [
    (ValueError("bad\nsecond line"), "bad"), (ValueError("  \n padded \n"), "padded"), (ValueError(), "ValueError"),
    ("text\nmore", "text"), ("", ""), (ValueError("x" * 400), "x" * 300),
])
def test_first_line(error: BaseException | str, expected: str) -> None:
    assert first_line(error) == expected


def test_first_line_takes_a_limit() -> None:
    assert first_line("abcdef", limit=3) == "abc"


def test_an_exchange_policy_that_could_retry_without_waiting_is_refused_when_made() -> None:
    with pytest.raises(ValueError, match="backoff_seconds must be above 0"):
        RetryPolicy(backoff_seconds=0)
