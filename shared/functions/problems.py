"""RFC 9457 problem documents and the status code each product error maps to."""

from __future__ import annotations

import json
import re
from typing import Any

from shared.core.operation import capped_retry_after
from shared.errors import ExoAutomationError, ForeignObject, IdentityNotFound, InvalidSpec, NeedsOperator, Retryable

PROBLEM_CONTENT_TYPE = "application/problem+json"

_TITLES = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
           405: "Method Not Allowed", 409: "Conflict", 413: "Content Too Large", 415: "Unsupported Media Type",
           500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable"}


def problem_type(reason: str) -> str:
    slug = re.sub(r"(?<!^)(?=[A-Z])", "-", reason).lower()
    return f"urn:exo-automation:problem:{slug}"


def problem(status: int, reason: str, detail: str, **extensions: Any) -> dict[str, Any]:
    document: dict[str, Any] = {"type": problem_type(reason), "title": _TITLES.get(status, "Error"),
                                "status": status, "detail": detail, "reason": reason}
    document.update({k: v for k, v in extensions.items() if v is not None})
    return document


# Needs-an-operator reasons that are a conflict with the state found, not a failure of a service.
_CONFLICTS = frozenset({"DeletedButRecoverable", "Decommissioning", "RoleRefused", "RoleNoLongerAllowed",
                        "RegistryTagsInvalid", "CredentialKindCannotChange", "ManagedIdentityRefused",
                        "ManagedIdentityNotFound", "GrantsUnconfirmed"})


def status_for(error: ExoAutomationError) -> int:
    if isinstance(error, InvalidSpec):
        return 400
    if isinstance(error, IdentityNotFound):
        return 404
    if isinstance(error, ForeignObject) or error.reason in _CONFLICTS:
        return 409
    if isinstance(error, Retryable):
        return 503
    if isinstance(error, NeedsOperator):
        return 502
    return 500


def problem_for(error: ExoAutomationError, **extensions: Any) -> tuple[int, dict[str, Any], dict[str, str]]:
    status = status_for(error)
    headers: dict[str, str] = {}
    if isinstance(error, Retryable):
        # Capped: a service asking for minutes is no reason to tell a caller to go away for long.
        headers["Retry-After"] = str(int(capped_retry_after(error.retry_after, default=30)))
    errors = error.errors if isinstance(error, InvalidSpec) and error.errors else None
    return status, problem(status, error.reason, error.message, errors=errors, **extensions), headers


def dumps(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, sort_keys=False)
