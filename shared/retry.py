"""Retrying with back-off: one policy, one `Retry-After` parser, one runner, for every adapter.

A `Backoff` is pure policy. Attempt *n* failed: the wait before the next is the server's
`Retry-After` when it gave one (at most `max_retry_after`), else `first * factor**(n-1)` (at most
`max_delay`) times a random factor drawn from `jitter`; no wait is shorter than `first` times the
low end of `jitter`, so a server answering `Retry-After: 0` is not asked again in a tight loop and
the attempts are bounded by the budget. There is no next attempt when `attempts` are spent, or when
the wait would end past `budget` seconds after the first attempt began: the last error goes back to
the caller then, so nothing waits past its budget.

`retry()` runs an operation under a policy with an injected clock and sleep (tests pass fakes and
never sleep); the operation raises `NotYet` ("not done, ask again": a poll) or an error that its
`retry_on` accepts. The Graph replication, Key Vault creation, Exchange, lease, webhook and sign-in
loops all run here; the SDK pipelines' own retries (azure-core, kiota) keep theirs, capped at the
same `MAX_RETRY_AFTER_SECONDS`.

Imports nothing of the product but the pure core, so the job runtime may use it
(tests/unit/test_public_surface.py).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import email.utils
import math
import random
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from shared.core.operation import MAX_RETRY_AFTER_SECONDS

T = TypeVar("T")

_SECONDS = re.compile(r"\d+(\.\d+)?")
_MAX_EXPONENT = 64  # 2**64 times any first delay is past any cap: no overflow however many attempts


@dataclass(frozen=True)
class Backoff:
    """How often and how long to wait between attempts (all times in seconds)."""

    first: float = 0.5
    factor: float = 2.0
    max_delay: float = 15.0  # cap on a computed delay
    budget: float = 180.0  # no wait ends later than this after the first attempt began
    attempts: int | None = None  # at most this many attempts; None: as many as the budget allows
    jitter: tuple[float, float] = (1.0, 1.0)  # a computed delay is multiplied by a factor drawn from this range
    max_retry_after: float = MAX_RETRY_AFTER_SECONDS  # cap on a server's Retry-After
    # A fast phase: for this many seconds from the first attempt every computed wait is `first` (for
    # what is usually done within seconds, where a growing delay would only add latency); after it
    # the delay grows from `first` as usual.
    steady: float = 0.0

    def __post_init__(self) -> None:
        low, high = self.jitter
        if not (self.first > 0 and self.factor >= 1 and self.max_delay >= self.first and 0 < low <= high
                and self.budget >= 0 and self.steady >= 0 and (self.attempts is None or self.attempts >= 1)):
            raise ValueError(f"not a back-off policy: {self}")

    @property
    def shortest(self) -> float:
        """No wait is shorter than this."""
        return self.first * self.jitter[0]

    def delay(self, attempt: int, retry_after: float | None = None, draw: float = 0.5) -> float:
        """The wait after failed attempt `attempt` (1 for the first), before the budget is considered.
        `draw` is a random number in [0, 1) that picks the jitter factor."""
        if retry_after is not None:
            return max(min(retry_after, self.max_retry_after), self.shortest)
        computed = min(self.first * self.factor ** min(max(attempt, 1) - 1, _MAX_EXPONENT), self.max_delay)
        low, high = self.jitter
        return computed * (low + (high - low) * draw)

    def wait(self, attempt: int, elapsed: float, retry_after: float | None = None, draw: float = 0.5) -> float | None:
        """The wait after failed attempt `attempt`, `elapsed` seconds after the first began; None: stop."""
        if self.attempts is not None and attempt >= self.attempts:
            return None
        if retry_after is None and elapsed < self.steady:
            wait = self.delay(1, None, draw)
        else:
            # Attempts made in the fast phase do not count towards the growth after it.
            wait = self.delay(attempt - math.ceil(self.steady / self.first), retry_after, draw)
        return wait if elapsed + wait <= self.budget else None


def parse_retry_after(value: str | None, now: dt.datetime) -> float | None:
    """An HTTP `Retry-After` value in seconds from `now`: delay-seconds or an HTTP-date in any of its
    three forms (RFC 9110, sections 10.2.3 and 5.6.7), a date in the past as 0. Fractional seconds are
    accepted (the stand-ins send them); anything else (negative, not a number, no date) is None: no
    advice."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    if _SECONDS.fullmatch(text):
        seconds = float(text)
        return seconds if math.isfinite(seconds) else None
    try:
        moment = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:  # "-0000": the date is in UTC (RFC 5322), as an HTTP-date always is
        moment = moment.replace(tzinfo=dt.UTC)
    return max(0.0, (moment - now).total_seconds())


class NotYet(Exception):
    """What an operation raises when it is not done yet and should be asked again (a poll).

    `retry_after` is the wait the other side asked for, if any.
    """

    def __init__(self, message: str = "not yet", *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def _not_yet(exc: Exception) -> bool:
    return isinstance(exc, NotYet)


def _asked(exc: Exception) -> float | None:
    value = getattr(exc, "retry_after", None)
    return float(value) if isinstance(value, int | float) else None


async def retry(operation: Callable[[], Awaitable[T]], policy: Backoff, *,
                retry_on: Callable[[Exception], bool] = _not_yet,
                retry_after: Callable[[Exception], float | None] = _asked,
                on_retry: Callable[[Exception, int, float], None] | None = None,
                clock: Callable[[], float] = time.monotonic,
                sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                draw: Callable[[], float] = random.random) -> T:
    """`operation()`'s result, calling it again after a wait while it raises an error `retry_on`
    accepts (by default `NotYet`) and `policy` allows another attempt; otherwise its error is raised.

    `retry_after(error)` is the server's advice (by default the error's `retry_after` attribute);
    `on_retry(error, attempt, wait)` is told before each wait.
    """
    started = clock()
    attempt = 0
    while True:
        attempt += 1
        try:
            return await operation()
        except Exception as exc:
            if not retry_on(exc):
                raise
            wait = policy.wait(attempt, clock() - started, retry_after(exc), draw())
            if wait is None:
                raise
            if on_retry is not None:
                on_retry(exc, attempt, wait)
        await sleep(wait)


__all__ = ["Backoff", "NotYet", "parse_retry_after", "retry"]
