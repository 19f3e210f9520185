"""Crash-point matrix of a rotation (and of its later retirement), plus the bootstrap and
decommission tables of tests/integration counted into the same matrix.

Each row fails one action boundary of a rotation at the stand-in. After the failed run, and after
every later run, a probe job (published record → PFX → token → Get-Mailbox) must still work; the
re-run (the queued reconcile a sweep would send, and a second rotate-now where the first never got
as far as a new version) must converge: one new certificate version, its key on the app, the
record published, the old key kept for the grace period and then retired — and an admin's own key
on the app survives every step.
"""

from __future__ import annotations

from typing import Any

import pytest

from devstack import Stack
from tests.integration.platform_helpers import bootstrap
from tests.support.crash_points import BOOTSTRAP_CRASH_POINTS, DECOMMISSION_CRASH_POINTS
from tests.support.probe import Probe
from tests.support.tenant import add_foreign_key

from . import leakscan
from .common import app_named, cert_versions, executed, fault, record, run

ROTATE_PHASE = "rotate"
RETIRE_PHASE = "retire"

# (name, phase, fault, does the faulted run fail?)
ROTATION_CRASH_POINTS: list[tuple[str, str, dict[str, Any], bool]] = [
    ("CreateCertificateVersion", ROTATE_PHASE,
     {"service": "keyvault", "method": "POST", "path": "/create$", "status": 403}, True),
    ("AddKeyCredential", ROTATE_PHASE,
     {"service": "graph", "method": "PATCH", "path": r"/applications/[^/(]+$", "status": 500}, True),
    ("AddKeyCredential (dropped connection)", ROTATE_PHASE,
     {"service": "graph", "method": "PATCH", "path": r"/applications/[^/(]+$", "drop": True, "count": 20}, True),
    ("VerifySignIn", ROTATE_PHASE,
     {"service": "entra", "method": "POST", "path": r"/oauth2/v2.0/token$", "status": 400, "count": 50}, True),
    ("PublishConnectionRecord", ROTATE_PHASE,
     {"service": "keyvault", "method": "PUT", "path": r"^/secrets/", "status": 403}, True),
    ("outcome tags", ROTATE_PHASE,
     {"service": "keyvault", "method": "PATCH", "path": r"^/certificates/", "status": 403}, False),
    ("RetireKeyCredential", RETIRE_PHASE,
     {"service": "graph", "method": "PATCH", "path": r"/applications/[^/(]+$", "status": 500}, True),
    ("clearing PublishConnectionRecord", RETIRE_PHASE,
     {"service": "keyvault", "method": "PUT", "path": r"^/secrets/", "status": 403}, True),
]


def _managed_thumbprints(stack: Stack, name: str) -> set[str]:
    return {v["thumbprint"] for v in cert_versions(stack, name)}


def _app(stack: Stack, name: str) -> dict[str, Any]:
    (app,) = app_named(stack, name)
    return app


@pytest.mark.parametrize("point", ROTATION_CRASH_POINTS, ids=[p[0] for p in ROTATION_CRASH_POINTS])
def test_a_rotation_failed_at_any_step_converges_and_jobs_keep_working(
        faults_counted: Stack, point: tuple[str, str, dict[str, Any], bool], monkeypatch: pytest.MonkeyPatch) -> None:
    stack = faults_counted
    label, phase, spec, fails = point
    monkeypatch.setenv("VERIFY_SIGN_IN_TIMEOUT_SECONDS", "2")
    monkeypatch.setenv("ROTATION_GRACE_HOURS", "1")
    name = "rotor"
    assert bootstrap(stack, name).error is None
    foreign_key = add_foreign_key(stack, _app(stack, name))
    old = record(stack, name)
    probe = Probe(stack, name)
    converged = False
    try:
        assert probe.run() == len(stack.world.mailboxes)

        def keys() -> set[str]:
            return {k["keyId"] for k in _app(stack, name)["keyCredentials"]}

        # -- the rotation ------------------------------------------------------------------------
        if phase == ROTATE_PHASE:
            fault(stack, spec)
        first = run(stack, name, rotate=True)
        stack.world.faults.clear()
        if phase == ROTATE_PHASE:
            assert (first.error is not None) == fails, (label, first.error, executed(first))
            if fails:
                assert first.error.reason, first.error
        else:
            assert first.error is None, first.error
        assert foreign_key in keys(), "an admin's key survives a failed rotation"
        assert probe.run() == len(stack.world.mailboxes), f"probe failed after the crash at {label}"

        # The re-run: a queued reconcile (what the next sweep sends); if the crash came before a new
        # version existed, nothing is due any more and the operator repeats the rotate-now.
        again = run(stack, name)
        assert again.error is None, again.error
        assert probe.run() == len(stack.world.mailboxes)
        if record(stack, name)["thumbprint"] == old["thumbprint"]:
            assert "CreateCertificateVersion" not in executed(first) or first.error is not None
            again = run(stack, name, rotate=True)
            assert again.error is None, again.error
            assert probe.run() == len(stack.world.mailboxes)
        new = record(stack, name)
        assert new["thumbprint"] != old["thumbprint"] and new["previousThumbprint"] == old["thumbprint"]
        assert len(cert_versions(stack, name)) == 2, "one rotation, one new version: nothing duplicated"
        assert _managed_thumbprints(stack, name) == {old["thumbprint"], new["thumbprint"]}
        assert len(_app(stack, name)["keyCredentials"]) == 3, "old + new + the admin's key"
        settled = run(stack, name)
        assert settled.error is None and executed(settled) == [], executed(settled)

        # -- the retirement, after the grace period ---------------------------------------------
        stack.world.clock.advance(2 * 3600)
        if phase == RETIRE_PHASE:
            fault(stack, spec)
            failed = run(stack, name)
            stack.world.faults.clear()
            assert (failed.error is not None) == fails, (label, failed.error, executed(failed))
            assert foreign_key in keys()
            assert probe.run() == len(stack.world.mailboxes), f"probe failed after the crash at {label}"
        retire = run(stack, name)
        assert retire.error is None, retire.error
        assert probe.run() == len(stack.world.mailboxes)
        final = record(stack, name)
        assert final["thumbprint"] == new["thumbprint"] and final["previousThumbprint"] is None
        app = _app(stack, name)
        assert foreign_key in keys(), "the admin's key is never retired"
        assert len(app["keyCredentials"]) == 2, "the new key and the admin's"
        assert len(cert_versions(stack, name)) == 2
        settled = run(stack, name)
        assert settled.error is None and executed(settled) == [], executed(settled)
        converged = True
    finally:
        probe.close()
        leakscan.crash_point("rotation", label, converged)



def test_the_matrix_covers_every_action_boundary() -> None:
    """Bootstrap and decommission rows run in tests/integration (their tables, imported here, are
    counted by tests/conftest.py as their tests pass); rotation rows run above."""
    bootstrap_rows = {c[0] for c in BOOTSTRAP_CRASH_POINTS}
    decommission_rows = {c[0] for c in DECOMMISSION_CRASH_POINTS}
    assert len(bootstrap_rows) == 10 and len(decommission_rows) == 6
    assert {p[0].split(" (")[0] for p in ROTATION_CRASH_POINTS} >= {
        "CreateCertificateVersion", "AddKeyCredential", "VerifySignIn", "PublishConnectionRecord",
        "outcome tags", "RetireKeyCredential", "clearing PublishConnectionRecord"}
