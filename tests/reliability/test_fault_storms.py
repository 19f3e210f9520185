"""Fault storms through the stand-ins' fault table: a bootstrap under each storm either succeeds
or fails with a retryable 503 problem, a later request converges, and the product's request volume
under the storm stays within a bound of the fault-free run (no retry storms of its own)."""

from __future__ import annotations

import time
from typing import Any

import pytest

from devstack import Stack
from tests.integration.helpers import post_identity, requests_by_service, run_job_get_mailbox

from . import leakscan
from .common import fault, one_of_everything

BOUND = 4  # requests under a storm <= BOUND x the fault-free bootstrap's
_baseline: dict[str, int] = {}

# (storm, faults, replication delay, may the first request fail?)
STORMS: list[tuple[str, list[dict[str, Any]], float]] = [
    ("graph 429 + Retry-After", [{"service": "graph", "status": 429, "retryAfter": 1, "count": 6}], 0.0),
    ("graph 429 sustained", [{"service": "graph", "status": 429, "retryAfter": 1, "count": None}], 0.0),
    ("key vault 429 + Retry-After", [{"service": "keyvault", "status": 429, "retryAfter": 1, "count": 4}], 0.0),
    ("503 everywhere", [{"service": "*", "status": 503, "retryAfter": 1, "count": 6}], 0.0),
    ("graph 500/502/504", [{"service": "graph", "status": s, "count": 1} for s in (500, 502, 504)], 0.0),
    ("dropped connections", [{"service": "graph", "drop": True, "count": 3},
                             {"service": "keyvault", "drop": True, "count": 3}], 0.0),
    ("latency 2 s", [{"service": "graph", "latency": 2.0, "count": 2},
                     {"service": "keyvault", "latency": 2.0, "count": 1}], 0.0),
    ("replication delay", [], 2.0),
]


def _total(stack: Stack) -> int:
    return sum(requests_by_service(stack).values())


def _fault_free(stack: Stack) -> int:
    if "requests" not in _baseline:
        stack.world.counter.reset()
        assert post_identity({"name": "calm"}).status == 201
        _baseline["requests"] = _total(stack)
    return _baseline["requests"]


@pytest.mark.parametrize("storm", STORMS, ids=[s[0] for s in STORMS])
def test_a_bootstrap_under_a_storm_is_bounded_and_converges(
        faults_counted: Stack, storm: tuple[str, list[dict[str, Any]], float],
        monkeypatch: pytest.MonkeyPatch) -> None:
    stack = faults_counted
    label, faults, delay = storm
    monkeypatch.setenv("VERIFY_SIGN_IN_TIMEOUT_SECONDS", "20")
    baseline = _fault_free(stack)

    stack.world.counter.reset()
    for spec in faults:
        fault(stack, spec)
    stack.world.replication_delay = delay
    started = time.monotonic()
    first = post_identity({"name": "stormy"})
    elapsed = time.monotonic() - started
    during = _total(stack)
    stack.world.faults.clear()
    stack.world.replication_delay = 0.0

    assert first.status in (200, 201, 503), (label, first.status, first.body)
    if first.status == 503:
        assert first.content_type == "application/problem+json"
        assert first.body["reason"] and first.body["status"] == 503, first.body
    assert during <= BOUND * baseline, f"{label}: {during} requests under the storm vs {baseline} without"

    second = post_identity({"name": "stormy"})
    assert second.status in (200, 201), (label, second.body)
    third = post_identity({"name": "stormy"})
    assert third.status == 200 and third.body["executed"] == [], third.body["executed"]
    one_of_everything(stack, "stormy")
    assert run_job_get_mailbox(stack, "stormy")
    leakscan.RELIABILITY["storms"].append({
        "storm": label, "firstStatus": first.status, "requestsUnderStorm": during, "faultFreeRequests": baseline,
        "seconds": round(elapsed, 1), "converged": True})
