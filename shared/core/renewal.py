"""When a certificate must be renewed: one pure function, like cert-manager's renewal time."""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass

DEFAULT_RENEWAL_FRACTION = 2 / 3  # of the lifetime, i.e. renew when a third is left


@dataclass(frozen=True)
class RenewalPolicy:
    """`renew_before` wins when it is shorter than the lifetime; else `renew_at_fraction` of it."""

    renew_before: dt.timedelta | None = None
    renew_at_fraction: float = DEFAULT_RENEWAL_FRACTION
    jitter: dt.timedelta = dt.timedelta(hours=6)


def renewal_time(not_before: dt.datetime, not_after: dt.datetime, policy: RenewalPolicy) -> dt.datetime:
    lifetime = not_after - not_before
    if policy.renew_before is not None and dt.timedelta(0) < policy.renew_before < lifetime:
        return not_after - policy.renew_before
    # Truncate to whole seconds so the same certificate always yields the same instant.
    return not_before + dt.timedelta(seconds=int(lifetime.total_seconds() * policy.renew_at_fraction))


def jittered_renewal_time(not_before: dt.datetime, not_after: dt.datetime, policy: RenewalPolicy,
                          seed: str) -> dt.datetime:
    """The renewal time moved earlier by a stable per-certificate jitter.

    A fleet bootstrapped in one afternoon would otherwise renew in the same minute. The jitter is
    derived from `seed` (the thumbprint), so every sweep agrees on it, and it only ever moves the
    time earlier, never past expiry.
    """
    base = renewal_time(not_before, not_after, policy)
    if policy.jitter <= dt.timedelta(0):
        return base
    span = min(policy.jitter, (base - not_before) / 4)
    fraction = int.from_bytes(hashlib.sha256(seed.encode()).digest()[:4], "big") / 2**32
    return base - span * fraction


def renewal_due(now: dt.datetime, not_before: dt.datetime, not_after: dt.datetime, policy: RenewalPolicy,
                seed: str = "") -> bool:
    return now >= jittered_renewal_time(not_before, not_after, policy, seed)


def next_attempt_after_failure(now: dt.datetime, failures: int, not_after: dt.datetime,
                               base: dt.timedelta = dt.timedelta(minutes=5),
                               cap: dt.timedelta = dt.timedelta(hours=6)) -> dt.datetime:
    """Exponential back-off after failed attempts, never later than an hour before expiry."""
    delay = min(cap, base * (2 ** max(0, failures - 1)))
    latest = not_after - dt.timedelta(hours=1)
    earliest: dt.datetime = min(now + delay, latest)
    return max(now, earliest)
