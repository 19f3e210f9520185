"""How the sweep's queue messages are spread out in time: pure functions.

Graph limits reads of application key credentials with `$select=keyCredentials` to 150 requests per
minute per tenant, shared by every app in the tenant (docs/reference.md "Throttling"). Every reconcile
reads its app that way at least once (the observation), and once more to add or retire a key. A sweep
that finds 1,000 identities due at once (a lost deep-check window, a fleet bootstrapped in one day)
must not let 1,000 reconciles loose together: each message is sent with a visibility delay, so that
the reads they will make become visible at a steady rate below the limit.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

# The key-credential reads per minute the sweep's fan-out plans for: two thirds of Graph's 150. The
# rest is headroom for what the plan does not see: other apps of the tenant reading key credentials
# (the limit is the tenant's), the sweep's own owned-apps listing, status reads over HTTP, and
# reconciles that read more than estimated. What still gets a 429 waits out its Retry-After.
KEY_CREDENTIAL_READS_PER_MINUTE = 100
GRAPH_KEY_CREDENTIAL_READ_LIMIT_PER_MINUTE = 150  # Graph's (doc); the constant above stays below it
# A sweep schedules at most this far ahead; the rest stays due and the next sweep (SWEEP_SCHEDULE,
# every 30 minutes by default) takes it, so a message is never still waiting when that sweep finds
# its identity due again. A reconcile that is done updates lastRun, and is not due any more.
FAN_OUT_HORIZON_SECONDS = 25 * 60
MAX_VISIBILITY_DELAY_SECONDS = 7 * 24 * 3600  # Azure Queue Storage's limit (docs/reference.md)

# Reasons after which a reconcile also writes key credentials, which reads them once more.
_ADDS_KEY = frozenset({"CertificateMissing", "CertificateNotValid", "RenewalDue", "RotationRequested",
                       "ApplicationMissing", "KeyMissing", "RetryAfterFailure", "ChangedSinceFailure"})
_RETIRES_KEY = frozenset({"RetirementDue"})
# Only the periodic full check, or a run to put the identity's name in the index (shared/sweep.py):
# nothing is known to be wrong, so it waits behind the rest.
_ROUTINE = frozenset({"DeepCheckDue", "NotIndexed"})


def key_credential_reads(reasons: Iterable[str]) -> int:
    """The reads of key credentials a reconcile for these reasons is expected to make: the observation,
    plus one to add a key, plus one to retire one. After a failure the cause is unknown: a key write
    is assumed."""
    found = set(reasons)
    return 1 + (1 if found & _ADDS_KEY else 0) + (1 if found & _RETIRES_KEY else 0)


def fan_out(due: Sequence[tuple[str, Sequence[str]]], *, per_minute: int = KEY_CREDENTIAL_READS_PER_MINUTE,
            window_seconds: float = 60.0, horizon_seconds: float = FAN_OUT_HORIZON_SECONDS,
            ) -> tuple[list[tuple[str, int]], list[str]]:
    """When each due identity's message becomes visible: ([(name, delay in whole seconds)], deferred names).

    Identities with something wrong come first, the routine deep checks after them, by name within
    each group. A message's delay is the reads planned before it at `per_minute` reads per
    `window_seconds` (rounded down), so in any window at most about `per_minute` planned reads become
    visible. Messages that would wait longer than `horizon_seconds` are deferred to the next sweep.
    `window_seconds` is 60 in production; the benchmark scales time with it (bench/sweep.py).
    """
    if per_minute < 1 or window_seconds <= 0:
        raise ValueError("per_minute must be at least 1 and window_seconds above 0")
    ordered = sorted(due, key=lambda item: (set(item[1]) <= _ROUTINE, item[0]))
    scheduled: list[tuple[str, int]] = []
    deferred: list[str] = []
    planned = 0
    for name, reasons in ordered:
        delay = math.floor(planned * window_seconds / per_minute)
        if delay > min(horizon_seconds, MAX_VISIBILITY_DELAY_SECONDS):
            deferred.append(name)
            continue
        scheduled.append((name, delay))
        planned += key_credential_reads(reasons)
    return scheduled, deferred


# A queued reconcile still throttled after its waiting budget is sent again this much later, at most
# this many times; after that the message completes and the sweep (its back-off after a failure, or the
# identity still being due) brings the identity back.
MAX_THROTTLED_REQUEUES = 6
MAX_THROTTLED_REQUEUE_SECONDS = 15 * 60


def throttled_requeue_delay(retry_after: float | None, attempt: int, jitter: float) -> int | None:
    """Seconds before a throttled reconcile message is delivered again, or None to stop requeueing.

    At least Graph's Retry-After (60 s when it gave none), doubled with each earlier attempt, plus up
    to half as much again (`jitter`, 0 to 1) so that messages throttled together do not come back
    together, capped at MAX_THROTTLED_REQUEUE_SECONDS.
    """
    if attempt >= MAX_THROTTLED_REQUEUES:
        return None
    base = retry_after if retry_after is not None and retry_after > 0 else 60.0
    delay = base * 2.0 ** max(0, attempt) * (1 + 0.5 * min(max(jitter, 0.0), 1.0))
    return max(1, min(MAX_THROTTLED_REQUEUE_SECONDS, math.ceil(delay)))
