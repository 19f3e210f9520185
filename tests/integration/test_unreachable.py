"""No answer at all (dropped connections, an unreachable token service) is retryable, never a 500."""

from __future__ import annotations

import pytest

from devstack import Stack
from devstack.faults import Fault

from .helpers import get_identity, post_identity, run_job_get_mailbox, write_count


@pytest.mark.parametrize("service", ["keyvault", "graph"])
def test_dropped_connections_answer_503_and_the_next_request_completes(stack: Stack, service: str) -> None:
    stack.world.faults.add(Fault.from_json({"service": service, "drop": True, "count": None}))
    first = post_identity({"name": "dropped"})
    assert first.status == 503, first.body
    assert first.content_type == "application/problem+json" and "Retry-After" in first.headers
    assert first.body["reason"] in ("VaultUnreachable", "GraphUnreachable")
    stack.world.faults.clear()
    assert post_identity({"name": "dropped"}).status == 201
    assert run_job_get_mailbox(stack, "dropped")


def test_an_unreachable_key_vault_is_503_for_status_too(stack: Stack) -> None:
    assert post_identity({"name": "statusless"}).status == 201
    stack.world.faults.add(Fault.from_json({"service": "keyvault", "drop": True, "count": None}))
    status = get_identity("statusless")
    assert status.status == 503 and status.body["reason"] == "VaultUnreachable"


def test_a_token_service_outage_is_retryable_and_changes_nothing(stack: Stack) -> None:
    stack.world.faults.add(Fault.from_json({"service": "entra", "path": "/msi/token", "status": 503, "count": None}))
    stack.world.counter.reset()
    response = post_identity({"name": "tokenless"})
    assert response.status == 503, response.body
    assert write_count(stack) == 0
