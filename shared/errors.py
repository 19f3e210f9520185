"""Errors the product raises, and how callers should treat them.

    ExoAutomationError                 base of everything below
    ├── SettingsError                  a setting is missing or malformed; names it (operator)
    ├── InvalidSpec                    a request is wrong; HTTP 400 / CLI exit 2 (caller)
    ├── IdentityNotFound               no identity of that name; HTTP 404
    ├── NeedsOperator                  the service refused, or state we must not touch (operator)
    │   └── ForeignObject              a name is taken by an object this product does not own
    └── Retryable                      throttling, 5xx, replication delay: try again later

Every error carries a stable `reason` (a named constant that shows up in status and logs) so that
alerts and scripts never have to parse messages. `first_line` is how a foreign error's text (an
SDK's, often several lines) goes into one of these messages or a log line.
"""

from __future__ import annotations


class ExoAutomationError(Exception):
    reason = "Error"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason


class SettingsError(ExoAutomationError):
    reason = "SettingInvalid"

    def __init__(self, message: str, *, reason: str | None = None, setting: str | None = None) -> None:
        super().__init__(message, reason=reason)
        self.setting = setting  # the app setting at fault, so a report can attribute it (shared/doctor.py)


class InvalidSpec(ExoAutomationError):
    reason = "InvalidRequest"

    def __init__(self, message: str, *, reason: str | None = None, errors: list[dict[str, str]] | None = None) -> None:
        super().__init__(message, reason=reason)
        self.errors = errors or []


class IdentityNotFound(ExoAutomationError):
    reason = "IdentityNotFound"


class NeedsOperator(ExoAutomationError):
    reason = "NeedsOperator"


class ForeignObject(NeedsOperator):
    reason = "ForeignObject"


class Retryable(ExoAutomationError):
    reason = "Retryable"

    def __init__(self, message: str, *, reason: str | None = None, retry_after: float | None = None) -> None:
        super().__init__(message, reason=reason)
        self.retry_after = retry_after


def first_line(error: BaseException | str, limit: int = 300) -> str:
    """The first line of an error's text, at most `limit` characters, for one-line messages and logs.

    An exception without text gives its type's name; an empty string gives "".
    """
    text = (error if isinstance(error, str) else str(error)).strip()
    if text:
        return text.splitlines()[0][:limit]
    return "" if isinstance(error, str) else type(error).__name__
