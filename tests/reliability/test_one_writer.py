"""Issue #14: one writer per identity across processes, and a killed writer's lease runs out."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from azure.storage.blob import BlobClient, BlobLeaseClient

from devstack import Stack
from tests.integration.helpers import run_job_get_mailbox
from tests.integration.platform_helpers import bootstrap, with_platform

from . import leakscan
from .common import app_named, cert_versions, one_of_everything

ROOT = Path(__file__).resolve().parents[2]


def _cli(*args: str) -> subprocess.Popen[str]:
    """`python -m shared` in a process of its own, with this test's environment (the stand-ins, Azurite)."""
    return subprocess.Popen([sys.executable, "-m", "shared", *args], cwd=ROOT, env=dict(os.environ),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_twenty_processes_bootstrapping_one_name_make_one_version_and_one_key(stack: Stack) -> None:
    processes = [_cli("--json", "bootstrap", "flock") for _ in range(20)]
    outcomes = [(p.wait(timeout=600), *p.communicate()) for p in processes]
    failed = [(code, err[-800:]) for code, _, err in outcomes if code != 0]
    assert not failed, failed
    waited = sum("waiting for another run of flock" in err for _, _, err in outcomes)
    assert waited >= 1, "racers were told what they wait for"
    versions = len(cert_versions(stack, "flock"))
    app = one_of_everything(stack, "flock")
    assert versions == 1 and len(app["keyCredentials"]) == 1, (versions, app["keyCredentials"])
    assert run_job_get_mailbox(stack, "flock")
    leakscan.RELIABILITY["concurrency"].append({"case": "20 bootstraps of one name (20 processes, CLI)",
                                                "exitCodes": {"0": 20}, "apps": 1, "certificateVersions": versions,
                                                "keyCredentials": len(app["keyCredentials"]), "toldToWait": waited})


def test_a_killed_runs_lease_expires_and_the_next_run_completes(stack: Stack, azurite: str,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from shared.cli import main
    from shared.lease import LEASE_CONTAINER

    monkeypatch.setenv("IDENTITY_LEASE_SECONDS", "15")
    stack.world.services["keyvault"].creation_delay = 8.0  # the victim is mid-run when it dies
    victim = _cli("bootstrap", "phoenix")
    lease = BlobClient.from_connection_string(azurite, LEASE_CONTAINER, "phoenix")
    deadline = time.monotonic() + 60
    while True:
        assert time.monotonic() < deadline and victim.poll() is None, ("the victim never took its lease",
                                                                        victim.poll())
        try:
            if lease.get_blob_properties().lease.state == "leased":
                break
        except Exception:
            pass
        time.sleep(0.2)
    time.sleep(2.0)
    victim.kill()  # SIGKILL: no release, no cleanup
    victim.communicate()
    assert lease.get_blob_properties().lease.state == "leased", "the dead run's lease is still held..."
    started = time.monotonic()
    assert main(["bootstrap", "phoenix"]) == 0
    waited = time.monotonic() - started
    assert waited < 15 + 20, "...until it expires by itself (15 s), then the next run completes"
    assert len(cert_versions(stack, "phoenix")) == 1
    app = one_of_everything(stack, "phoenix")
    assert len(app["keyCredentials"]) == 1
    assert run_job_get_mailbox(stack, "phoenix")
    lease.close()


def _leased(blob: BlobClient) -> bool:
    try:
        return bool(blob.get_blob_properties().lease.state == "leased")
    except Exception:
        return False  # not created yet


def test_a_run_whose_lease_is_broken_stops_before_its_next_write(stack: Stack, azurite: str,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from shared import service
    from shared.lease import LEASE_CONTAINER, LeaseLost

    monkeypatch.setenv("IDENTITY_LEASE_SECONDS", "15")  # renewed every 5 s
    stack.world.services["keyvault"].creation_delay = 8.0  # the run waits for issuance past a renewal
    blob = BlobClient.from_connection_string(azurite, LEASE_CONTAINER, "severed")

    async def scenario(platform: Any) -> BaseException | None:
        run = asyncio.create_task(service.bootstrap(platform, {"name": "severed"}))
        while not await asyncio.to_thread(_leased, blob):
            assert not run.done(), run
            await asyncio.sleep(0.1)
        # Someone outside breaks the lease (as `az storage blob lease break` would): the run's next
        # renewal is refused, and another run could take the identity now.
        await asyncio.to_thread(lambda: BlobLeaseClient(blob).break_lease(lease_break_period=0))
        return (await asyncio.gather(run, return_exceptions=True))[0]

    outcome = with_platform(stack, scenario)
    assert isinstance(outcome, LeaseLost), outcome
    assert outcome.reason == "LeaseLost" and outcome.retry_after
    versions = cert_versions(stack, "severed")
    assert len(versions) == 1, "the certificate requested before the break was issued..."
    # The app was made while Key Vault issued the certificate (before the refused renewal); the writes
    # after the wait for the certificate, its key first, never started.
    (app,) = app_named(stack, "severed")
    assert app["keyCredentials"] == [], "...and the first write after the lease was lost (the key) never started"
    assert "lastRun" not in versions[0]["tags"], "no outcome recorded without the lease either"
    blob.close()

    stack.world.services["keyvault"].creation_delay = 0.0
    result = bootstrap(stack, "severed")  # the next run takes a fresh lease and completes the identity
    assert result.error is None, result.error
    assert len(cert_versions(stack, "severed")) == 1
    app = one_of_everything(stack, "severed")
    assert len(app["keyCredentials"]) == 1
    assert run_job_get_mailbox(stack, "severed")
