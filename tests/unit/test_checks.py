"""One definition of drift: the checks, the sweep's decision built on them, and their agreement
with the planner on equivalent inputs."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.core.checks import Reason, desired_certificate_tags
from shared.core.model import Observed
from shared.core.planner import PlanContext, plan_actions
from shared.core.record import format_time
from shared.core.roles import EXCHANGE_RECIPIENT_ADMINISTRATOR
from shared.core.spec import IdentitySpec
from shared.sweep import RegistryEntry, TenantSnapshot, needs_work

from .factories import CONTEXT, SPEC, T0, key_for, ready, version

DAY = dt.timedelta(days=1)
DEEP_CHECK = dt.timedelta(hours=24)
ERA = EXCHANGE_RECIPIENT_ADMINISTRATOR.template_id
EXCHANGE_ADMINISTRATOR = "29232cdf-9323-42fd-ade2-1d097af3e4de"


def listings_of(observed: Observed, now: dt.datetime, context: PlanContext = CONTEXT, *,
                tags: dict[str, str] | None = None, deleted_record: bool = False,
                updated_on: dt.datetime | None = None) -> tuple[RegistryEntry, TenantSnapshot]:
    """What the sweep's listings show of `observed`, with the tags a successful run at `now` wrote."""
    cert = observed.certificate
    assert cert is not None and cert.current is not None
    app, record, sp = observed.application, observed.record, observed.service_principal_id
    registry = {**(tags if tags is not None else desired_certificate_tags(SPEC)),
                "appId": "app-1", "servicePrincipalId": "sp-1", "lastRun": format_time(now),
                "lastResult": "Succeeded"}
    if record is not None:
        registry["publishedThumbprint"] = record.thumbprint
        if record.previous_thumbprint:
            registry["retireAfter"] = format_time(record.updated_at + context.grace)
    current = cert.current
    entry = RegistryEntry(SPEC.name, registry, current.thumbprint, current.not_before, current.not_after,
                          current.enabled, current.version, updated_on or now)
    snapshot = TenantSnapshot(
        applications={app.app_id: app} if app is not None else {},
        consented_principals=frozenset({sp}) if sp and observed.consent_assignment_id else frozenset(),
        role_holders={role: frozenset({sp}) for role in observed.role_assignments} if sp else {},
        deleted_secrets=frozenset({SPEC.names.connection_secret}) if deleted_record else frozenset(),
    )
    return entry, snapshot


def sweep_reasons(observed: Observed, now: dt.datetime, context: PlanContext = CONTEXT, **kwargs: object) -> list[str]:
    entry, snapshot = listings_of(observed, now, context, **kwargs)  # type: ignore[arg-type]
    return needs_work(entry, snapshot, now, context, DEEP_CHECK)


# -- the sweep's decision, scenario by scenario ---------------------------------------------------------
SCENARIOS = [
    ("in sync", ready(), T0 + DAY, {}, []),
    ("renewal due", ready(), T0 + 250 * DAY, {}, [Reason.RENEWAL_DUE]),
    ("expired", ready(), T0 + 400 * DAY, {}, [Reason.CERTIFICATE_NOT_VALID]),
    ("key removed", ready(keys=()), T0 + DAY, {}, [Reason.KEY_MISSING]),
    ("consent revoked", dataclasses.replace(ready(), consent_assignment_id=None), T0 + DAY, {},
     [Reason.CONSENT_MISSING]),
    ("role removed", dataclasses.replace(ready(), role_assignments={}), T0 + DAY, {}, [Reason.ROLE_MISSING]),
    ("app deleted", dataclasses.replace(ready(), application=None), T0 + DAY, {},
     [Reason.APPLICATION_MISSING, Reason.KEY_MISSING]),
    ("record deleted", ready(), T0 + DAY, {"deleted_record": True}, [Reason.RECORD_DELETED]),
    ("tags edited", ready(), T0 + DAY, {"tags": {**desired_certificate_tags(SPEC), "roles": ERA.upper()}},
     [Reason.TAGS_DRIFT]),
]


@pytest.mark.parametrize(("observed", "now", "kwargs", "expected"), [s[1:] for s in SCENARIOS],
                         ids=[s[0] for s in SCENARIOS])
def test_the_sweep_reports_what_the_checks_find(observed: Observed, now: dt.datetime, kwargs: dict,
                                                expected: list[str]) -> None:
    assert sweep_reasons(observed, now, **kwargs) == expected


def test_a_refused_role_is_reported_not_missing() -> None:
    context = dataclasses.replace(CONTEXT, allowed_roles=frozenset({EXCHANGE_ADMINISTRATOR}))
    assert sweep_reasons(ready(), T0 + DAY, context) == [Reason.ROLE_REFUSED]


def test_verify_mode_reports_a_role_an_administrator_must_assign() -> None:
    context = dataclasses.replace(CONTEXT, assign_roles=False)
    assert sweep_reasons(dataclasses.replace(ready(), role_assignments={}), T0 + DAY, context) == \
        [Reason.ROLE_NOT_ASSIGNED]
    assert sweep_reasons(ready(), T0 + DAY, context) == []


def test_a_deep_check_is_due_a_day_after_the_last_run() -> None:
    entry, snapshot = listings_of(ready(), T0 + DAY)
    assert needs_work(entry, snapshot, T0 + DAY + DEEP_CHECK, CONTEXT, DEEP_CHECK) == ["DeepCheckDue"]


# -- the back-off gates the re-queue -------------------------------------------------------------------
def failed(entry: RegistryEntry, at: dt.datetime, failures: int = 1, reason: str = "RoleRefused") -> RegistryEntry:
    tags = {**entry.tags, "lastResult": reason, "lastRun": format_time(at), "failures": str(failures)}
    return dataclasses.replace(entry, tags=tags, updated_on=at)


def test_an_identity_that_needs_an_operator_waits_for_its_back_off() -> None:
    context = dataclasses.replace(CONTEXT, allowed_roles=frozenset({EXCHANGE_ADMINISTRATOR}))
    entry, snapshot = listings_of(ready(), T0 + DAY, context)
    entry = failed(entry, T0 + DAY)
    assert needs_work(entry, snapshot, T0 + DAY + dt.timedelta(minutes=1), context, DEEP_CHECK) == []
    assert needs_work(entry, snapshot, T0 + DAY + dt.timedelta(minutes=5), context, DEEP_CHECK) == \
        [Reason.ROLE_REFUSED, "RetryAfterFailure"]
    # The back-off doubles with each failure.
    third = failed(entry, T0 + DAY, failures=3)
    assert needs_work(third, snapshot, T0 + DAY + dt.timedelta(minutes=15), context, DEEP_CHECK) == []
    assert needs_work(third, snapshot, T0 + DAY + dt.timedelta(minutes=20), context, DEEP_CHECK) != []


def test_a_change_after_the_failure_ends_the_back_off_early() -> None:
    entry, snapshot = listings_of(ready(keys=()), T0 + DAY)
    entry = failed(entry, T0 + DAY, failures=3, reason="GraphUnavailable")  # retried after 20 minutes
    later = T0 + DAY + dt.timedelta(minutes=2)
    assert needs_work(entry, snapshot, later, CONTEXT, DEEP_CHECK) == []
    edited = dataclasses.replace(entry, updated_on=T0 + DAY + dt.timedelta(minutes=10))
    assert needs_work(edited, snapshot, T0 + DAY + dt.timedelta(minutes=11), CONTEXT, DEEP_CHECK) == \
        [Reason.KEY_MISSING, "ChangedSinceFailure"]


def test_the_back_off_never_outlasts_the_certificate() -> None:
    entry, snapshot = listings_of(ready(), T0 + 364 * DAY)
    entry = failed(entry, T0 + 364 * DAY, failures=20, reason="GraphUnavailable")
    assert needs_work(entry, snapshot, T0 + 365 * DAY - dt.timedelta(minutes=59), CONTEXT, DEEP_CHECK) != []


# -- the planner's mode branches ----------------------------------------------------------------------
def test_verify_only_role_mode_plans_no_role_write_and_needs_an_operator() -> None:
    context = dataclasses.replace(CONTEXT, assign_roles=False)
    plan = plan_actions(SPEC, dataclasses.replace(ready(), role_assignments={}), T0 + DAY, context)
    assert [a.kind for a in plan.actions] == []
    assert [f.reason for f in plan.needs_operator] == [Reason.ROLE_NOT_ASSIGNED]
    assert not plan.in_sync


def test_without_sign_in_verification_a_rotation_publishes_without_proof() -> None:
    context = dataclasses.replace(CONTEXT, verify_sign_in=False)
    plan = plan_actions(SPEC, ready(), T0 + 250 * DAY, context)
    assert [a.kind for a in plan.actions] == ["CreateCertificateVersion", "AwaitCertificate", "AddKeyCredential",
                                              "PublishConnectionRecord"]


# -- the sweep and the planner agree ---------------------------------------------------------------------
@st.composite
def equivalent_inputs(draw: st.DrawFn) -> tuple[Observed, dt.datetime, PlanContext, dict[str, object]]:
    v1 = version(1)
    in_overlap = draw(st.booleans())
    if in_overlap:
        v2 = version(2, start=T0 + 240 * DAY)
        observed = ready(v2, keys=(key_for(v1), key_for(v2)), versions=(v1, v2), previous=v1,
                         updated=T0 + 240 * DAY)
        now = T0 + 240 * DAY + dt.timedelta(hours=draw(st.integers(0, 60)))
    else:
        observed = ready()
        now = T0 + dt.timedelta(days=draw(st.integers(0, 420)))
    current = observed.certificate.current if observed.certificate else None
    assert current is not None
    if draw(st.booleans()):
        observed = dataclasses.replace(observed, application=None)
    elif draw(st.booleans()) and observed.application is not None:
        observed = dataclasses.replace(observed, application=dataclasses.replace(
            observed.application, declares_exchange_permission=draw(st.booleans()),
            key_credentials=tuple(k for k in observed.application.key_credentials
                                  if draw(st.booleans()) or not k.matches(current.thumbprint))))
    if draw(st.booleans()):
        observed = dataclasses.replace(observed, service_principal_id=None, consent_assignment_id=None,
                                       role_assignments={})
    if draw(st.booleans()):
        observed = dataclasses.replace(observed, consent_assignment_id=None)
    if draw(st.booleans()):
        observed = dataclasses.replace(observed, role_assignments={})
    deleted_record = False
    if draw(st.booleans()):
        observed = dataclasses.replace(observed, record=None)
        deleted_record = draw(st.booleans())
    tags = desired_certificate_tags(SPEC)
    if draw(st.booleans()):
        tags = {**tags, "roles": tags["roles"].upper()}  # the same roles, not as this product writes them
    context = dataclasses.replace(
        CONTEXT, assign_roles=draw(st.booleans()),
        allowed_roles=draw(st.sampled_from([CONTEXT.allowed_roles, frozenset({EXCHANGE_ADMINISTRATOR})])))
    return observed, now, context, {"tags": tags, "deleted_record": deleted_record}


@settings(max_examples=300, deadline=None)
@given(equivalent_inputs())
def test_the_sweep_finds_nothing_exactly_when_the_plan_is_empty(
        inputs: tuple[Observed, dt.datetime, PlanContext, dict[str, object]]) -> None:
    observed, now, context, listing = inputs
    assert observed.certificate is not None
    observed = dataclasses.replace(observed, certificate=dataclasses.replace(
        observed.certificate, tags=listing["tags"]))  # type: ignore[arg-type]
    # A reconcile plans with the spec recorded in the tags, as the sweep reads it.
    plan = plan_actions(IdentitySpec.from_tags(listing["tags"]), observed, now, context)  # type: ignore[arg-type]
    reasons = sweep_reasons(observed, now, context, **listing)
    assert (reasons == []) == plan.in_sync, (reasons, [a.kind for a in plan.actions], plan.needs_operator)
