"""Effects of actions (`shared.core.effects`) and the key-credential edits the directory gateway sends."""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import hashlib

import pytest

from shared.adapters.directory import key_credential_entry, with_key_added, without_key
from shared.core.effects import Outcome, UnknownAction, apply, record_to_publish
from shared.core.model import key_id_for
from shared.core.planner import (
    Action,
    DeleteApplication,
    DeleteServicePrincipal,
    PublishConnectionRecord,
    RemoveRoleAssignment,
    RevokeConsent,
)
from shared.errors import NeedsOperator

from .factories import CONTEXT, SPEC, T0, ready, version

DAY = dt.timedelta(days=1)


def every_action() -> list[type[Action]]:
    return sorted(Action.__subclasses__(), key=lambda c: c.__name__)


def test_every_action_has_an_effect_and_a_handler() -> None:
    """A new action without an effect or an executor handler fails here, not in a tenant."""
    from shared.reconciler import _Executor

    executor = _Executor.__new__(_Executor)
    _Executor.__init__(executor, reconciler=None, spec=SPEC, observed=ready())  # type: ignore[arg-type]
    assert set(executor._handlers) == set(every_action())


def test_an_unknown_action_is_a_programming_error() -> None:
    class Unheard(Action):
        pass

    with pytest.raises(UnknownAction):
        apply(ready(), Unheard(), Outcome())


def test_decommission_effects_forget_what_was_removed() -> None:
    observed = ready()
    role, assignment = next(iter(observed.role_assignments.items()))
    published = apply(observed, PublishConnectionRecord("renewal"), Outcome(record=observed.record))
    assert published.record == observed.record
    after = apply(observed, RemoveRoleAssignment(assignment, role), Outcome())
    assert role not in after.role_assignments
    after = apply(after, RevokeConsent("grant"), Outcome())
    assert after.consent_assignment_id is None
    after = apply(observed, DeleteServicePrincipal(), Outcome())
    assert (after.service_principal_id, after.consent_assignment_id, dict(after.role_assignments)) == (None, None, {})
    assert apply(observed, DeleteApplication(), Outcome()).application is None


def test_a_published_record_keeps_the_previous_certificate_only_while_it_is_valid() -> None:
    v1, v2 = version(1), version(2, start=T0 + 240 * DAY)
    # v2 is current, v1 still published: what a renewal's publication sees.
    rotated = dataclasses.replace(ready(v2), record=ready(v1).record)
    record = record_to_publish(SPEC, rotated, CONTEXT, T0 + 241 * DAY, clear_previous=False)
    assert (record.thumbprint, record.previous_thumbprint) == (v2.thumbprint, v1.thumbprint)
    assert record_to_publish(SPEC, rotated, CONTEXT, T0 + 241 * DAY, clear_previous=True).previous_thumbprint is None
    expired = record_to_publish(SPEC, rotated, CONTEXT, T0 + 400 * DAY, clear_previous=False)
    assert expired.previous_thumbprint is None


# -- key credentials: Graph replaces the whole collection ------------------------------------------
DER = b"0\x82certificate"


def entry(key_id: str, start: dt.datetime, end: dt.datetime, key: bytes | None = None) -> dict[str, str]:
    e = {"keyId": key_id, "type": "AsymmetricX509Cert", "usage": "Verify",
         "startDateTime": start.strftime("%Y-%m-%dT%H:%M:%SZ"), "endDateTime": end.strftime("%Y-%m-%dT%H:%M:%SZ")}
    if key is not None:
        e["key"] = base64.b64encode(key).decode()
    return e


def ours(der: bytes, start: dt.datetime, end: dt.datetime) -> dict[str, str]:
    thumbprint = hashlib.sha1(der).hexdigest().upper()
    return entry(key_id_for(thumbprint), start, end, der)


def test_adding_keeps_every_valid_key_and_drops_our_expired_ones() -> None:
    v = version(2)
    foreign = entry("foreign", T0 - DAY, T0 + 900 * DAY, b"other")
    expired_ours = ours(b"old", T0 - 400 * DAY, T0 - DAY)
    added = key_credential_entry("reports", v, DER)
    result = with_key_added([foreign, expired_ours], added, T0)
    assert result is not None
    assert [e["keyId"] for e in result] == ["foreign", added["keyId"]]
    assert result[0]["key"] == foreign["key"], "every kept key goes back with its key material"


def test_adding_a_key_already_there_writes_nothing() -> None:
    added = key_credential_entry("reports", version(2), DER)
    assert with_key_added([added], added, T0) is None


def test_a_foreign_expired_key_needs_an_operator() -> None:
    foreign_expired = entry("foreign", T0 - 400 * DAY, T0 - DAY, b"other")
    with pytest.raises(NeedsOperator) as refused:
        with_key_added([foreign_expired], key_credential_entry("reports", version(2), DER), T0)
    assert refused.value.reason == "ForeignExpiredKey"


def test_removing_never_takes_the_last_valid_key() -> None:
    only = ours(DER, T0 - DAY, T0 + 300 * DAY)
    with pytest.raises(NeedsOperator) as refused:
        without_key([only], only["keyId"], T0)
    assert refused.value.reason == "LastValidKey"


def test_removing_keeps_foreign_keys_and_reports_an_absent_one() -> None:
    old, new = ours(b"old", T0 - 300 * DAY, T0 + 60 * DAY), ours(DER, T0 - DAY, T0 + 300 * DAY)
    foreign = entry("foreign", T0 - DAY, T0 + 900 * DAY, b"other")
    result = without_key([old, new, foreign], old["keyId"], T0)
    assert result is not None and [e["keyId"] for e in result] == [new["keyId"], "foreign"]
    assert without_key([new, foreign], old["keyId"], T0) is None
