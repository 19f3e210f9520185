"""The registry: each identity's current certificate version in Key Vault, and its tags.

One paged certificate listing gives the sweep every identity (README, "Key Vault tags"), so the
tags carry the spec, the ids the last run saw, what it published and how it ended. Key Vault
allows 15 tags of at most 256 characters per object; the spec takes five, the rest below.

The tags are a registry, not a trust store: anyone with Key Vault Certificates Officer can edit
them, so what they say is checked before it is acted on (docs/architecture.md, "Trust
boundaries"): the spec by `registry_spec` and the planner's policy checks, ids never used to find
Graph objects, and a version counts as the product's only if `started_by_us`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass

from shared.core.model import OWNER_TAG, OWNER_TAG_VALUE
from shared.core.record import format_time, parse_time

MAX_TAGS = 15
MAX_TAG_VALUE = 256

IDENTITY = "identity"
APP_ID = "appId"
SERVICE_PRINCIPAL_ID = "servicePrincipalId"
PUBLISHED_THUMBPRINT = "publishedThumbprint"
RETIRE_AFTER = "retireAfter"
LAST_RUN = "lastRun"
LAST_RESULT = "lastResult"
LAST_ERROR = "lastError"
FAILURES = "failures"  # "<count>" or "<count>;notified=<time>" while a failure lasts
STATE = "state"
DECOMMISSIONING = "decommissioning"
SUCCEEDED = "Succeeded"

# A failure already notified is repeated to operators at most this often while it lasts.
REMINDER_INTERVAL = dt.timedelta(days=1)


def started_by_us(tags: Mapping[str, str], certificate_name: str) -> bool:
    """Whether a certificate version was created by this product: our create requests carry our
    owner tag and the identity's name from the start (an outside creation has neither)."""
    identity = tags.get(IDENTITY)
    return tags.get(OWNER_TAG) == OWNER_TAG_VALUE and identity is not None \
        and certificate_name == f"exo-{identity}-cert"


@dataclass(frozen=True)
class LastRun:
    """How the identity's last recorded run ended, and the failure streak it belongs to."""

    at: dt.datetime | None
    result: str | None
    failures: int = 0
    notified_at: dt.datetime | None = None

    @property
    def failed(self) -> bool:
        return self.at is not None and self.result not in (None, "", SUCCEEDED)

    @classmethod
    def from_tags(cls, tags: Mapping[str, str]) -> LastRun:
        at = _time(tags.get(LAST_RUN))
        count, _, rest = (tags.get(FAILURES) or "").partition(";")
        notified = _time(rest.removeprefix("notified=")) if rest.startswith("notified=") else None
        return cls(at, tags.get(LAST_RESULT), int(count) if count.isdigit() else 0, notified)

    def repeats(self, reason: str, now: dt.datetime) -> bool:
        """Whether a failure with `reason` now is the one operators were told about less than a
        reminder interval ago (then it is not notified again)."""
        return self.failed and self.result == reason and self.notified_at is not None \
            and now - self.notified_at < REMINDER_INTERVAL

    def next_streak(self, reason: str, now: dt.datetime, *, notified: bool) -> str:
        """The `failures` tag after a failed run with `reason`."""
        count = self.failures + 1 if self.failed else 1
        notified_at = now if notified else (self.notified_at if self.failed and self.result == reason else None)
        return f"{count};notified={format_time(notified_at)}" if notified_at else str(count)


def _time(text: str | None) -> dt.datetime | None:
    if not text:
        return None
    try:
        return parse_time(text)
    except ValueError:
        return None


__all__ = ["LastRun", "started_by_us"]
