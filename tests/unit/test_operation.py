"""The pure parts of long operations: the operation document, capped waits, races as retryable, and
how often a pending certificate is polled."""

from __future__ import annotations

import datetime as dt

import pytest

from shared.adapters.graph import GraphError
from shared.adapters.vault import CREATE_POLL
from shared.core import operation as ops
from shared.errors import NeedsOperator, Retryable

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def test_an_operation_walks_through_its_steps() -> None:
    document = ops.new_operation("a" * 32, "bootstrap", "reports", caller="admin", now=NOW, spec={"name": "reports"})
    assert document["status"] == ops.NOT_STARTED and document["steps"] == []
    document = ops.step_started(document, "VerifySignIn", "prove the key signs in", NOW)
    assert document["status"] == ops.RUNNING
    assert document["currentStep"]["waitingFor"] == "key replication"
    assert ops.retry_after_seconds(document) == 10
    queued = ops.handed_to_queue(document, NOW, "the run outlived the request's inline budget")
    assert queued["currentStep"]["interrupted"] is True and queued["continuesIn"] == "queue"
    document = ops.step_finished(queued, "VerifySignIn", "prove the key signs in", "Succeeded", "ok", NOW)
    assert document["currentStep"] is None and [s["action"] for s in document["steps"]] == ["VerifySignIn"]
    done = ops.finished(document, {"result": "Succeeded"}, None, NOW, "/api/identities/reports")
    assert done["status"] == ops.SUCCEEDED and done["resourceLocation"] == "/api/identities/reports"
    assert "continuesIn" not in done and "note" not in done


def test_a_failed_step_is_the_last_error_and_a_failed_operation_points_nowhere() -> None:
    document = ops.new_operation("b" * 32, "rotate", "reports", caller="admin", now=NOW, force_rotate=True)
    document = ops.step_finished(document, "AddKeyCredential", "add the key", "GraphUnavailable", "503", NOW)
    assert document["lastError"]["reason"] == "GraphUnavailable"
    failed = ops.finished(document, None, ("NeedsOperator", "fix it"), NOW, "/api/identities/reports")
    assert failed["status"] == ops.FAILED and failed["resourceLocation"] is None


def test_a_resumed_rotation_never_starts_a_second_one() -> None:
    document = ops.new_operation("c" * 32, "rotate", "reports", caller="admin", now=NOW, force_rotate=True)
    assert ops.resume_force_rotate(document)
    document = ops.step_finished(document, "CreateCertificateVersion", "new version", "Succeeded", "v2", NOW)
    assert not ops.resume_force_rotate(document)


def test_only_long_operations_have_documents() -> None:
    with pytest.raises(ValueError):
        ops.new_operation("d" * 32, "status", "reports", caller="admin", now=NOW)


@pytest.mark.parametrize(("retry_after", "remaining", "expected"), [
    (None, None, 30.0), (5.0, None, 5.0), (600.0, None, ops.MAX_RETRY_AFTER_SECONDS), (-1.0, None, 30.0),
    (20.0, 3.0, 3.0), (20.0, -1.0, 0.0),
])
def test_every_wait_on_retry_after_is_capped(retry_after: float | None, remaining: float | None,
                                             expected: float) -> None:
    assert ops.capped_retry_after(retry_after, default=30.0, remaining=remaining) == expected



@pytest.mark.parametrize(("status", "code", "kind", "reason"), [
    (409, "Request_MultipleObjectsWithSameKeyValue", Retryable, "DirectoryConflict"),
    (412, "Request_PreconditionFailed", Retryable, "DirectoryConflict"),
    (429, "TooManyRequests", Retryable, "GraphThrottled"),
    (503, "ServiceUnavailable", Retryable, "GraphUnavailable"),
    (409, "Request_BadRequest", NeedsOperator, "GraphRequestRefused"),
    (403, "Authorization_RequestDenied", NeedsOperator, "GraphPermissionMissing"),
])
def test_graph_races_are_retryable(status: int, code: str, kind: type, reason: str) -> None:
    error = GraphError(status, code, "message").classified()
    assert isinstance(error, kind) and error.reason == reason


def test_a_pending_certificate_is_polled_often_at_first_then_less() -> None:
    """Four times a second while a self-issued certificate is usually done (15 s), then doubling to 5 s."""
    elapsed, attempt, waits = 0.0, 0, []
    while (wait := CREATE_POLL.wait(attempt + 1, elapsed)) is not None:
        attempt += 1
        waits.append((elapsed, wait))
        elapsed += wait
    assert all(wait == 0.25 for at, wait in waits if at < 15.0)
    after = [wait for at, wait in waits if at >= 15.0]
    assert after[:5] == [0.25, 0.5, 1.0, 2.0, 4.0] and set(after[5:]) == {5.0}
    assert elapsed <= 300.0 and elapsed > 295.0, "polled for the whole five minutes, and not past them"
