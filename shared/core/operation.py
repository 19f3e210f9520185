"""Long operations, pure: the operation document a `202 Accepted` points at, and the waits.

An operation document (`GET /api/operations/{id}`) is the state of one write request that
outlived its inline budget: the steps done, the step in progress and what it waits for, the last
error, and the final result. Its status follows the Azure REST API guidelines' long-running
operations: `NotStarted`, `Running`, `Succeeded`, `Failed`. The functions here only compute the
next document; `shared.operations` stores it.
"""

from __future__ import annotations

import copy
import datetime as dt
from typing import Any

from shared.core.record import format_time

NOT_STARTED, RUNNING, SUCCEEDED, FAILED = "NotStarted", "Running", "Succeeded", "Failed"
TERMINAL = frozenset({SUCCEEDED, FAILED})
KINDS = frozenset({"bootstrap", "rotate", "decommission"})

# What an action waits for, when it is the slow part of a run (docs/reference.md, "Replication").
_WAITS = {
    "CreateCertificateVersion": "certificate issuance",
    "AwaitCertificate": "certificate issuance",
    "CreateServicePrincipal": "directory replication",
    "GrantConsent": "directory replication",
    "AssignRole": "directory replication",
    "VerifySignIn": "key replication",
}

# The longest single wait on a service's Retry-After, and the longest a caller is told to wait.
MAX_RETRY_AFTER_SECONDS = 60.0
POLL_SECONDS = 5


def waiting_for(action_kind: str) -> str | None:
    return _WAITS.get(action_kind)


def capped_retry_after(retry_after: float | None, *, default: float, remaining: float | None = None) -> float:
    """How long to wait on a service's Retry-After: at most `MAX_RETRY_AFTER_SECONDS`, and never past
    the run's remaining waiting budget (`remaining`; 0 then means: do not wait, answer)."""
    wait = default if retry_after is None or retry_after < 0 else retry_after
    wait = min(wait, MAX_RETRY_AFTER_SECONDS)
    return max(0.0, min(wait, remaining)) if remaining is not None else wait


def new_operation(operation_id: str, kind: str, name: str, *, caller: str, now: dt.datetime,
                  spec: Any = None, force_rotate: bool = False) -> dict[str, Any]:
    if kind not in KINDS:
        raise ValueError(f"not a long operation: {kind}")
    document: dict[str, Any] = {
        "id": operation_id, "operation": kind, "name": name, "status": NOT_STARTED, "caller": caller,
        "createdAt": format_time(now), "updatedAt": format_time(now),
        "steps": [], "currentStep": None, "lastError": None, "result": None, "resourceLocation": None,
    }
    if spec is not None:
        document["spec"] = spec
    if force_rotate:
        document["forceRotate"] = True
    return document


def step_started(document: dict[str, Any], action: str, description: str, now: dt.datetime) -> dict[str, Any]:
    updated = copy.deepcopy(document)
    updated.update(status=RUNNING, updatedAt=format_time(now),
                   currentStep={"action": action, "description": description, "waitingFor": waiting_for(action),
                                "startedAt": format_time(now)})
    return updated


def step_finished(document: dict[str, Any], action: str, description: str, result: str, detail: str,
                  now: dt.datetime) -> dict[str, Any]:
    updated = copy.deepcopy(document)
    updated["steps"].append({"action": action, "description": description, "result": result, "detail": detail,
                             "at": format_time(now)})
    updated.update(updatedAt=format_time(now), currentStep=None)
    if result != "Succeeded":
        updated["lastError"] = {"reason": result, "message": detail, "at": format_time(now)}
    return updated


def handed_to_queue(document: dict[str, Any], now: dt.datetime, why: str) -> dict[str, Any]:
    """The request answered 202: the rest runs from the queue."""
    updated = copy.deepcopy(document)
    current = updated.get("currentStep")
    if current is not None:  # interrupted: the queued run starts that step again
        current["interrupted"] = True
    updated.update(status=RUNNING, updatedAt=format_time(now), continuesIn="queue", note=why)
    return updated


def retrying(document: dict[str, Any], reason: str, message: str, now: dt.datetime) -> dict[str, Any]:
    """A retryable failure: the operation goes on at the next delivery."""
    updated = copy.deepcopy(document)
    updated.update(status=RUNNING, updatedAt=format_time(now), currentStep=None,
                   lastError={"reason": reason, "message": message, "at": format_time(now)})
    return updated


def finished(document: dict[str, Any], run: dict[str, Any] | None, error: tuple[str, str] | None,
             now: dt.datetime, resource_location: str | None) -> dict[str, Any]:
    updated = copy.deepcopy(document)
    updated.update(status=FAILED if error else SUCCEEDED, updatedAt=format_time(now), currentStep=None,
                   result=run, resourceLocation=None if error else resource_location)
    updated.pop("continuesIn", None)
    updated.pop("note", None)
    if error is not None:
        updated["lastError"] = {"reason": error[0], "message": error[1], "at": format_time(now)}
    return updated


def steps_done(document: dict[str, Any]) -> set[str]:
    return {step["action"] for step in document.get("steps", []) if step.get("result") == "Succeeded"}


def resume_force_rotate(document: dict[str, Any]) -> bool:
    """A rotate resumed from the queue forces a new version only if none was created yet: a second
    run must finish the first rotation, not start another."""
    return bool(document.get("forceRotate")) and "CreateCertificateVersion" not in steps_done(document)


def retry_after_seconds(document: dict[str, Any]) -> int:
    """What a poller is told (Retry-After) while the operation runs."""
    current = document.get("currentStep") or {}
    return 10 if current.get("waitingFor") == "key replication" else POLL_SECONDS
