"""Credential continuity (docs/architecture.md invariant 1) across three rotations, under faults.

A probe job connects every simulated hour exactly as a real job does: it reads the published
connection record, signs in with that certificate (a new token each hour, as a job whose token
expired would), and runs Get-Mailbox. The sweep runs every six simulated hours and the queue
work it fans out is reconciled at once. Faults are injected around every rotation: throttling
storms with Retry-After, 5xx, replication delay, and one failure at each step of the rotation.
The probe must never fail.
"""

from __future__ import annotations

from collections import Counter

import pytest

from devstack import Stack
from devstack.faults import Fault
from tests.support.probe import Probe

from .platform_helpers import bootstrap, reconcile, sweep

HOUR = 3600.0

# One failure at each step of a rotation, in order; a later sweep must finish what was left.
ROTATION_STEP_FAULTS = [
    {"service": "keyvault", "method": "POST", "path": "/create$", "status": 403},
    {"service": "graph", "method": "PATCH", "path": r"/applications/[^/(]+$", "status": 500},
    {"service": "entra", "method": "POST", "path": r"/oauth2/v2.0/token$", "status": 400, "count": 12},
    {"service": "keyvault", "method": "PUT", "path": r"^/secrets/", "status": 403},
]
STORMS = [
    {"service": "graph", "status": 429, "retryAfter": 1, "count": 3},
    {"service": "keyvault", "status": 429, "retryAfter": 1, "count": 3},
    {"service": "graph", "status": 503, "retryAfter": 1, "count": 2},
    {"service": "keyvault", "status": 500, "count": 1},
]


@pytest.mark.slow
def test_jobs_never_fail_across_three_rotations_under_faults(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROTATION_GRACE_HOURS", "24")
    # One-month certificates renewed 25 days before expiry: a rotation every ~5 simulated days.
    monkeypatch.setenv("RENEW_BEFORE_DAYS", "25")
    monkeypatch.setenv("VERIFY_SIGN_IN_TIMEOUT_SECONDS", "6")
    assert bootstrap(stack, "probe", validityMonths=1).error is None
    probe = Probe(stack, "probe")
    outcomes: Counter[str] = Counter()
    step_faults = iter(ROTATION_STEP_FAULTS * 3)
    storms = iter(STORMS * 6)
    try:
        hour = 0
        while len(probe.thumbprints) < 4 and hour < 24 * 30:
            assert probe.run() == len(stack.world.mailboxes), f"probe failed at simulated hour {hour}"
            if hour % 6 == 0:
                due = sweep(stack).due
                if due:
                    if "RenewalDue" in due.get("probe", []):
                        # A rotation starts: fail one of its steps, throttle, and slow replication.
                        for extra in (next(step_faults, None), next(storms, None)):
                            if extra is not None:
                                stack.world.faults.add(Fault.from_json(extra))
                        stack.world.replication_delay = 1.0
                    for name in due:
                        result = reconcile(stack, name)
                        outcomes["failed" if result.error else "succeeded"] += 1
                    # Whatever step failed, the state left behind still works for jobs (the faults
                    # themselves are cleared first: an Entra outage would stop any job).
                    stack.world.faults.clear()
                    stack.world.replication_delay = 0.0
                    assert probe.run() == len(stack.world.mailboxes), f"probe failed mid-rotation, hour {hour}"
            stack.world.clock.advance(HOUR)
            hour += 1
        assert len(probe.thumbprints) == 4, f"three rotations expected, saw {probe.thumbprints}"
        assert stack.world.faults.injected > 0
        assert outcomes["failed"] > 0, "the faults made some runs fail, and later runs finished the work"
    finally:
        probe.close()
    app = next(a for a in stack.world.directory.applications.values() if a["uniqueName"] == "exo-automation-probe")
    assert len(app["keyCredentials"]) <= 2, "retired keys are removed after the grace period"
