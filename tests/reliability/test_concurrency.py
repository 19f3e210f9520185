"""Concurrency through the HTTP handler: racers on one name, many names at once, and a sweep that
runs while a bootstrap and a rotate-now are in flight."""

from __future__ import annotations

import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from devstack import Stack
from tests.integration.helpers import post_identity, registered_functions, rotate, run_job_get_mailbox
from tests.integration.platform_helpers import converge
from tests.integration.queue_helpers import drain, operation, use_fresh_queue

from . import leakscan
from .common import cert_versions, one_of_everything, record


def _threads(n: int, work: Any) -> list[Any]:
    registered_functions()  # built once, before the racers (building it is not thread-safe)
    results: list[Any] = [None] * n
    barrier = threading.Barrier(n)

    def go(i: int) -> None:
        barrier.wait()
        try:
            results[i] = work(i)
        except BaseException as exc:
            import traceback

            results[i] = f"{type(exc).__name__}: {exc} {traceback.format_exc()[-1500:]}"

    threads = [threading.Thread(target=go, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_twenty_concurrent_bootstraps_of_one_name_make_one_identity(stack: Stack, azurite: str,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """One writer at a time (the identity's lease): the racers that cannot finish within the inline
    budget answer 202 and complete from the queue; none adds a certificate version or a key."""
    queue = use_fresh_queue(monkeypatch)
    monkeypatch.setenv("HTTP_INLINE_BUDGET_SECONDS", "6")
    answers = _threads(20, lambda _: post_identity({"name": "herd"}))
    counts = Counter(a.status for a in answers)
    assert set(counts) <= {200, 201, 202, 503}, [(a.status, a.body) for a in answers if a.status >= 300]
    drain(azurite, queue)
    for answer in answers:  # every caller eventually sees success
        if answer.status == 202:
            assert operation(answer.headers["Location"]).body["status"] == "Succeeded"
        elif answer.status == 503:
            assert post_identity({"name": "herd"}).status in (200, 201)
    final = post_identity({"name": "herd"})
    assert final.status == 200 and final.body["plan"]["actions"] == [], final.body
    versions = len(cert_versions(stack, "herd"))
    app = one_of_everything(stack, "herd")
    assert versions == 1 and len(app["keyCredentials"]) == 1, (versions, app["keyCredentials"])
    assert run_job_get_mailbox(stack, "herd")
    leakscan.RELIABILITY["concurrency"].append({"case": "20 bootstraps of one name", "statuses": dict(counts),
                                                "apps": 1, "certificateVersions": versions,
                                                "keyCredentials": len(app["keyCredentials"]),
                                                "completedFromQueue": counts[202]})


def test_fifty_distinct_bootstraps_make_fifty_identities(stack: Stack) -> None:
    names = [f"fleet-{i:02d}" for i in range(50)]
    registered_functions()
    with ThreadPoolExecutor(max_workers=10) as pool:
        statuses = list(pool.map(lambda n: post_identity({"name": n}).status, names))
    counts = Counter(statuses)
    retry = [n for n, s in zip(names, statuses, strict=True) if s != 201]
    for name in retry:  # a throttled or raced request is completed by the next one
        assert post_identity({"name": name}).status in (200, 201)
    apps = [a for a in stack.world.directory.applications.values()
            if a.get("uniqueName", "").startswith("exo-automation-fleet-")]
    assert len(apps) == 50 and len({a["uniqueName"] for a in apps}) == 50
    assert len({a["appId"] for a in apps}) == 50
    state = stack.world.services["keyvault"].snapshot()
    certs = [c for c in state["certificates"] if c["name"].startswith("exo-fleet-")]
    assert len(certs) == 50 and all(len(c["versions"]) == 1 for c in certs), "one certificate, one version each"
    for name in names:
        one_of_everything(stack, name)
    assert run_job_get_mailbox(stack, names[0]) and run_job_get_mailbox(stack, names[-1])
    leakscan.RELIABILITY["concurrency"].append({"case": "50 distinct bootstraps (10 threads)",
                                                "statuses": dict(counts), "retried": len(retry), "apps": len(apps)})


def test_a_sweep_during_a_bootstrap_and_a_rotate_now_converges(stack: Stack) -> None:
    assert post_identity({"name": "steady"}).status == 201
    old = record(stack, "steady")["thumbprint"]

    def work(i: int) -> Any:
        if i == 0:
            return post_identity({"name": "newcomer"}).status
        if i == 1:
            return rotate("steady").status
        return converge(stack, rounds=6)

    statuses = _threads(3, work)
    assert statuses[0] in (200, 201, 503) and statuses[1] in (200, 503), statuses
    # Whatever interleaving happened, one more request each and a sweep leave everything settled.
    assert post_identity({"name": "newcomer"}).status in (200, 201)
    if record(stack, "steady")["thumbprint"] == old:
        assert rotate("steady").status == 200
    converge(stack, rounds=6)
    for name in ("steady", "newcomer"):
        one_of_everything(stack, name)
        again = post_identity({"name": name})
        assert again.status == 200 and again.body["plan"]["actions"] == [], (name, again.body["plan"])
        assert run_job_get_mailbox(stack, name)
    assert record(stack, "steady")["thumbprint"] != old
    assert len(cert_versions(stack, "steady")) == 2
    leakscan.RELIABILITY["concurrency"].append({"case": "sweep during bootstrap and rotate-now",
                                                "statuses": statuses[:2], "converged": True})


def test_racing_bootstraps_share_one_certificate_version_when_creation_takes_time(
        stack: Stack, azurite: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Key Vault refuses a create while one is pending (409; azure-sdk-for-python#13289) and real
    creations take seconds: racers then wait for the same version instead of adding their own."""
    monkeypatch.setenv("VERIFY_SIGN_IN_TIMEOUT_SECONDS", "5")
    queue = use_fresh_queue(monkeypatch)
    stack.world.services["keyvault"].creation_delay = 1.5
    answers = _threads(10, lambda _: post_identity({"name": "patient"}))
    statuses = [a.status for a in answers]
    # One at a time (the lease): those that did not get their turn within the budget went on from the queue.
    assert set(statuses) <= {200, 201, 202}, [(a.status, a.body.get("reason"), a.body.get("detail")) for a in answers]
    drain(azurite, queue)
    assert all(operation(a.headers["Location"]).body["status"] == "Succeeded" for a in answers if a.status == 202)
    assert len(cert_versions(stack, "patient")) == 1
    final = post_identity({"name": "patient"})
    assert final.status == 200 and final.body["plan"]["actions"] == []
    app = one_of_everything(stack, "patient")
    assert len(app["keyCredentials"]) == 1
    assert run_job_get_mailbox(stack, "patient")
