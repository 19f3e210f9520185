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
from collections.abc import Iterable, Mapping
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

# A managedIdentity identity's grants this product made (registry tags of its connection secret): the
# Exchange.ManageAsApp assignment id, and the directory role assignment ids (comma-separated). An entry
# `?` (consent) or `?<role template id>` records the intent, written before the grant is made, so a run
# that stops between the grant and recording its id still knows the grant is ours.
CONSENT_ASSIGNMENT = "consentAssignment"
ROLE_ASSIGNMENTS = "roleAssignments"
INTENDED = "?"

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


@dataclass(frozen=True)
class RecordedGrants:
    """The grants to a managed identity this product recorded making; decommission removes exactly these.

    Read from tags a Key Vault secret writer can edit: an entry only ever selects among the grants the
    managed identity holds (read from Graph), and only for removal; grants are authorised by the spec
    and today's allow-lists, never by these tags."""

    consent: str | None = None  # the assignment id, INTENDED, or None
    roles: tuple[str, ...] = ()  # assignment ids, or INTENDED + role template id

    @classmethod
    def from_tags(cls, tags: Mapping[str, str]) -> RecordedGrants:
        consent = tags.get(CONSENT_ASSIGNMENT) or None
        roles = tuple(r for r in (tags.get(ROLE_ASSIGNMENTS) or "").split(",") if r)
        return cls(consent, roles)

    def to_tags(self) -> dict[str, str]:
        tags = {CONSENT_ASSIGNMENT: self.consent or "", ROLE_ASSIGNMENTS: ",".join(self.roles)}
        return {k: v for k, v in tags.items() if v}

    def owns_consent(self, assignment_id: str) -> bool:
        return self.consent in (assignment_id, INTENDED)

    def owns_role(self, role_id: str, assignment_id: str) -> bool:
        return assignment_id in self.roles or f"{INTENDED}{role_id}" in self.roles

    def intending(self, consent: bool, role_ids: Iterable[str]) -> RecordedGrants:
        """With the intent to make these grants recorded (before they are made)."""
        roles = [*self.roles, *(f"{INTENDED}{r}" for r in role_ids if f"{INTENDED}{r}" not in self.roles)]
        return RecordedGrants(INTENDED if consent else self.consent, tuple(roles))

    def resolved(self, consent_id: str | None, role_assignments: Mapping[str, str]) -> RecordedGrants:
        """What is still ours after a run that observed the managed identity's grants: intents whose grant
        exists become its id; ids no longer held are dropped (a removed grant is no longer ours)."""
        consent = consent_id if consent_id is not None and self.owns_consent(consent_id) else None
        roles = tuple(assignment for role_id, assignment in sorted(role_assignments.items())
                      if self.owns_role(role_id, assignment))
        return RecordedGrants(consent, roles)


def outcome_tags(spec_tags: Mapping[str, str], facts: Mapping[str, str], now: dt.datetime,
                 error: tuple[str, str] | None) -> dict[str, str]:
    """The registry entry a run leaves: the spec's tags, the facts it saw (ids, publication, state, failure
    streak; empty ones left out, as Key Vault allows at most MAX_TAGS tags), when it ran and how it ended.
    `error`: the failure's (reason, message), or None for a success."""
    # Facts are not cut to fit: a cut id list would misrecord what is ours (Key Vault refuses a value
    # over MAX_TAG_VALUE instead, and the run logs it); only the free-text error is shortened.
    tags = {**spec_tags, **{k: v for k, v in facts.items() if v}, LAST_RUN: format_time(now),
            LAST_RESULT: SUCCEEDED if error is None else error[0]}
    if error is not None:
        tags[LAST_ERROR] = error[1][:MAX_TAG_VALUE]
    return tags


def _time(text: str | None) -> dt.datetime | None:
    if not text:
        return None
    try:
        return parse_time(text)
    except ValueError:
        return None


__all__ = ["LastRun", "RecordedGrants", "started_by_us"]
