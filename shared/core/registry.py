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

# The witness of those grants: the same record, kept as metadata of the identity's lease blob in the Functions
# storage account (`shared.adapters.witness`), which a Key Vault writer cannot write. Blob metadata names are
# case-insensitive identifiers: these are lower-case; the principal binds the record to one managed identity.
WITNESS_PRINCIPAL = "principalid"
WITNESS_CONSENT = "consentassignment"
WITNESS_ROLES = "roleassignments"

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
    """The grants to a managed identity this product recorded making, in the registry (tags) and the witness
    (lease blob metadata); decommission removes exactly those both records claim (`judge_grants`).

    The tags are editable by a Key Vault secret writer: an entry only ever selects among the grants the
    managed identity holds (read from Graph), only for removal, and only with the witness's agreement;
    grants are authorised by the spec and today's allow-lists, never by these records."""

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

    def to_witness(self, principal_id: str) -> dict[str, str]:
        """The witness's blob metadata: this record, for that managed identity."""
        tags = self.to_tags()
        witness = {WITNESS_PRINCIPAL: principal_id, WITNESS_CONSENT: tags.get(CONSENT_ASSIGNMENT, ""),
                   WITNESS_ROLES: tags.get(ROLE_ASSIGNMENTS, "")}
        return {k: v for k, v in witness.items() if v}

    @classmethod
    def from_witness(cls, metadata: Mapping[str, str] | None, principal_id: str | None) -> RecordedGrants | None:
        """The record a witness holds for that managed identity; None: no witness, or one of another principal
        (a name decommissioned and bootstrapped again for another managed identity)."""
        found = {k.lower(): v for k, v in (metadata or {}).items()}
        if principal_id is None or found.get(WITNESS_PRINCIPAL, "").lower() != principal_id.lower():
            return None
        return cls.from_tags({CONSENT_ASSIGNMENT: found.get(WITNESS_CONSENT, ""),
                              ROLE_ASSIGNMENTS: found.get(WITNESS_ROLES, "")})


@dataclass(frozen=True)
class HeldGrant:
    """A grant the managed identity holds now, and which of the two records says the product made it."""

    assignment_id: str
    role_id: str | None  # None: the Exchange.ManageAsApp grant (consent)
    recorded: bool  # the registry (Key Vault tags) says ours
    witnessed: bool  # the witness (lease blob metadata) says ours


@dataclass(frozen=True)
class GrantVerdict:
    """What decommission may remove of a managed identity's grants, and what it must leave to an operator."""

    removable: tuple[HeldGrant, ...] = ()
    unconfirmed: tuple[HeldGrant, ...] = ()  # claimed by one record only, or by either when they disagree


def judge_grants(recorded: RecordedGrants, witnessed: RecordedGrants | None, consent_id: str | None,
                 role_assignments: Mapping[str, str]) -> GrantVerdict:
    """Which held grants decommission may remove: only those both the registry and the witness say are ours.

    The registry is writable by a Key Vault secret writer, the witness is not. When they agree on every held
    grant, the grants both claim are removed. When they disagree on any (one claims a grant the other does not,
    or there is no witness at all for this managed identity), the registry was edited or lost its record:
    nothing is removed, and every grant either claims is for an operator to check."""
    witness = witnessed or RecordedGrants()
    held = [HeldGrant(a, role_id, recorded.owns_role(role_id, a), witness.owns_role(role_id, a))
            for role_id, a in sorted(role_assignments.items())]
    if consent_id is not None:
        held.append(HeldGrant(consent_id, None, recorded.owns_consent(consent_id), witness.owns_consent(consent_id)))
    claimed = tuple(g for g in held if g.recorded or g.witnessed)
    if any(g.recorded != g.witnessed for g in claimed):
        return GrantVerdict(unconfirmed=claimed)
    return GrantVerdict(removable=claimed)


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


__all__ = ["GrantVerdict", "HeldGrant", "LastRun", "RecordedGrants", "judge_grants", "started_by_us"]
