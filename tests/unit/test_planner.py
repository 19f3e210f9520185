"""The planner: named scenarios, then docs/architecture.md's invariants as properties."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.core.checks import desired_certificate_tags
from shared.core.effects import Outcome, apply, record_to_publish
from shared.core.model import KeyCredential, Observed, ObservedApplication, ObservedCertificate
from shared.core.planner import (
    AddKeyCredential,
    AssignRole,
    AwaitCertificate,
    CreateCertificateVersion,
    CreateServicePrincipal,
    DeleteApplication,
    DeleteCertificate,
    GrantConsent,
    MarkDecommissioning,
    PublishConnectionRecord,
    RemoveRoleAssignment,
    RetireKeyCredential,
    UpsertApplication,
    VerifySignIn,
    plan_actions,
    plan_decommission,
)

from .factories import CONTEXT, SPEC, T0, key_for, ready, record_for, version

DAY = dt.timedelta(days=1)
V1 = version(1)
V2 = version(2, start=T0 + 240 * DAY)


def kinds(plan):
    return [a.kind for a in plan.actions]


# The version is waited for where it is first needed: the app, service principal and grant are made while
# Key Vault issues it.
FULL_BOOTSTRAP = ["CreateCertificateVersion", "UpsertApplication", "CreateServicePrincipal", "GrantConsent",
                  "AwaitCertificate", "AddKeyCredential", "AssignRole", "VerifySignIn", "PublishConnectionRecord"]
ROTATION = ["CreateCertificateVersion", "AwaitCertificate", "AddKeyCredential", "VerifySignIn",
            "PublishConnectionRecord"]

SCENARIOS = [
    ("nothing exists: all five steps, record last", Observed(), T0, FULL_BOOTSTRAP),
    ("ready and early in life: nothing to do", ready(), T0 + 10 * DAY, []),
    ("renewal due at two thirds of the lifetime", ready(), T0 + 250 * DAY, ROTATION),
    ("expired certificate is replaced", ready(), T0 + 400 * DAY, ROTATION),
    ("key removed behind our back is re-added, nothing else", ready(keys=()), T0 + DAY, ["AddKeyCredential"]),
    ("consent revoked is re-granted", dataclasses.replace(ready(), consent_assignment_id=None), T0 + DAY,
     ["GrantConsent"]),
    ("role removed is re-assigned", dataclasses.replace(ready(), role_assignments={}), T0 + DAY, ["AssignRole"]),
    ("record deleted is republished after proof", dataclasses.replace(ready(), record=None), T0 + DAY,
     ["VerifySignIn", "PublishConnectionRecord"]),
    ("app deleted: recreated with a new SP, grant, key, role and record",
     dataclasses.replace(ready(), application=None, service_principal_id=None, consent_assignment_id=None,
                         role_assignments={}), T0 + DAY,
     ["UpsertApplication", "CreateServicePrincipal", "GrantConsent", "AddKeyCredential", "AssignRole",
      "PublishConnectionRecord"]),
    ("previous key kept during the grace period",
     ready(V2, keys=(key_for(V1), key_for(V2)), versions=(V1, V2), previous=V1, updated=T0 + 240 * DAY),
     T0 + 240 * DAY + dt.timedelta(hours=1), []),
    ("previous key retired after the grace period",
     ready(V2, keys=(key_for(V1), key_for(V2)), versions=(V1, V2), previous=V1, updated=T0 + 240 * DAY),
     T0 + 242 * DAY, ["RetireKeyCredential", "PublishConnectionRecord"]),
    ("spec tags drifted: retagged", dataclasses.replace(
        ready(), certificate=dataclasses.replace(ready().certificate, tags={"managed-by": "exo-automation-identities",
                                                                           "identity": "reports"})),
     T0 + DAY, ["TagCertificate"]),
]


@pytest.mark.parametrize(("observed", "now", "expected"), [s[1:] for s in SCENARIOS], ids=[s[0] for s in SCENARIOS])
def test_plan_scenarios(observed: Observed, now: dt.datetime, expected: list[str]) -> None:
    assert kinds(plan_actions(SPEC, observed, now, CONTEXT)) == expected


def test_a_first_version_still_being_issued_is_awaited_after_the_app_is_made() -> None:
    """A run that finds its first version pending (a crash after the create request) does the Graph steps
    while Key Vault finishes, as the run that requested it would have."""
    pending = Observed(certificate=ObservedCertificate(owned=True, tags=desired_certificate_tags(SPEC), current=None,
                                                       pending=True))
    assert kinds(plan_actions(SPEC, pending, T0, CONTEXT)) == FULL_BOOTSTRAP[1:]


def test_rotation_requested_bypasses_the_policy() -> None:
    plan = plan_actions(SPEC, ready(), T0 + DAY, CONTEXT, force_rotate=True)
    assert kinds(plan)[:2] == ["CreateCertificateVersion", "AwaitCertificate"]
    assert plan.actions[2] == AddKeyCredential(None)


def test_foreign_certificate_blocks_everything() -> None:
    foreign = Observed(certificate=ObservedCertificate(owned=False, tags={}, current=V1))
    plan = plan_actions(SPEC, foreign, T0, CONTEXT)
    assert plan.actions == ()
    assert plan.blocked[0].reason == "ForeignObject"


def test_foreign_application_blocks_everything() -> None:
    app = ObservedApplication("o", "a", owned=False, tags=(), key_credentials=(), declares_exchange_permission=False)
    plan = plan_actions(SPEC, Observed(application=app), T0, CONTEXT)
    assert plan.actions == () and plan.blocked[0].facet.value == "application"


def test_foreign_key_credential_is_never_retired() -> None:
    foreign = KeyCredential(key_id="foreign-key", start=T0, end=T0 + 900 * DAY, thumbprint="F" * 40)
    observed = ready(V2, keys=(foreign, key_for(V1), key_for(V2)), versions=(V1, V2), previous=V1,
                     updated=T0 + 240 * DAY)
    plan = plan_actions(SPEC, observed, T0 + 300 * DAY, CONTEXT)
    retired = [a for a in plan.actions if isinstance(a, RetireKeyCredential)]
    assert [a.thumbprint for a in retired] == [V1.thumbprint]


def test_nothing_is_retired_while_the_published_key_is_missing() -> None:
    observed = ready(V2, keys=(key_for(V1),), versions=(V1, V2), previous=V1, updated=T0 + 240 * DAY)
    plan = plan_actions(SPEC, observed, T0 + 300 * DAY, CONTEXT)
    assert not any(isinstance(a, RetireKeyCredential) for a in plan.actions)
    assert AddKeyCredential(V2.thumbprint) in plan.actions


def test_decommission_removes_roles_and_grant_before_the_registry_entry() -> None:
    plan = plan_decommission(ready(), SPEC)
    assert [type(a) for a in plan.actions][:3] == [MarkDecommissioning, RemoveRoleAssignment,
                                                   type(plan.actions[2])]
    assert isinstance(plan.actions[-1], DeleteCertificate)
    assert kinds(plan).index("DeleteApplication") < kinds(plan).index("DeleteCertificate")


def test_decommission_leaves_roles_it_did_not_grant() -> None:
    observed = dataclasses.replace(ready(), role_assignments={**ready().role_assignments, "admin-added-role": "ra-x"})
    removed = [a.role_id for a in plan_decommission(observed, SPEC).actions if isinstance(a, RemoveRoleAssignment)]
    assert removed == [SPEC.roles[0].template_id]


def test_decommissioning_identity_cannot_be_reconciled() -> None:
    cert = dataclasses.replace(ready().certificate, tags={**ready().certificate.tags, "state": "decommissioning"})
    plan = plan_actions(SPEC, dataclasses.replace(ready(), certificate=cert), T0, CONTEXT)
    assert plan.blocked and plan.blocked[0].reason == "Decommissioning"


# -- properties --------------------------------------------------------------------------------------
@st.composite
def observed_states(draw: st.DrawFn) -> tuple[Observed, dt.datetime]:
    n_versions = draw(st.integers(1, 3))
    versions = tuple(version(i + 1, start=T0 + i * 200 * DAY) for i in range(n_versions))
    current = versions[-1]
    keys = tuple(key_for(v) for v in versions if draw(st.booleans()))
    foreign = draw(st.booleans())
    if foreign:
        keys = (*keys, KeyCredential("foreign", T0, T0 + 2000 * DAY, "E" * 40))
    published = draw(st.sampled_from(versions))
    previous = draw(st.sampled_from((None, *versions)))
    observed = ready(current, keys=keys, versions=versions, previous=previous,
                     updated=published.not_before + DAY)
    observed = dataclasses.replace(observed, record=record_for(published, previous=previous,
                                                               updated=published.not_before + DAY))
    if draw(st.booleans()):
        observed = dataclasses.replace(observed, consent_assignment_id=None)
    if draw(st.booleans()):
        observed = dataclasses.replace(observed, role_assignments={})
    if draw(st.booleans()):
        observed = dataclasses.replace(observed, record=None)
    now = T0 + draw(st.integers(0, 1200)) * DAY
    return observed, now


@settings(max_examples=300, deadline=None)
@given(observed_states(), st.booleans())
def test_invariants(state: tuple[Observed, dt.datetime], force: bool) -> None:
    observed, now = state
    plan = plan_actions(SPEC, observed, now, CONTEXT, force_rotate=force)
    actions = list(plan.actions)
    # Continuity: a new key is on the app before anything is published, and proof precedes publication.
    if any(isinstance(a, PublishConnectionRecord) for a in actions):
        publish_at = next(i for i, a in enumerate(actions) if isinstance(a, PublishConnectionRecord))
        adds = [i for i, a in enumerate(actions) if isinstance(a, AddKeyCredential)]
        assert all(i < publish_at for i in adds)
        if any(isinstance(a, CreateCertificateVersion) for a in actions):
            assert adds, "a new version is always added to the app"
            assert any(isinstance(a, VerifySignIn) for a in actions[:publish_at])
    # A version is requested before it is waited for, once, and waited for before anything uses it.
    if any(isinstance(a, CreateCertificateVersion | AwaitCertificate) for a in actions):
        waits = [i for i, a in enumerate(actions) if isinstance(a, AwaitCertificate)]
        assert len(waits) == 1
        assert all(i < waits[0] for i, a in enumerate(actions) if isinstance(a, CreateCertificateVersion))
        assert all(waits[0] < i for i, a in enumerate(actions)
                   if isinstance(a, AddKeyCredential | VerifySignIn | PublishConnectionRecord | RetireKeyCredential))
    # Nothing foreign touched; retirement never takes the published or the current key.
    for action in actions:
        if isinstance(action, RetireKeyCredential):
            assert action.key_id != "foreign"
            assert observed.record is not None and action.thumbprint != observed.record.thumbprint
            assert action.thumbprint != observed.certificate.current.thumbprint
        assert not isinstance(action, DeleteApplication | DeleteCertificate)
    # Retirement only happens once the record is current.
    if any(isinstance(a, RetireKeyCredential) for a in actions):
        assert not any(isinstance(a, CreateCertificateVersion | AddKeyCredential) for a in actions)


@settings(max_examples=200, deadline=None)
@given(observed_states())
def test_applying_the_plan_reaches_a_fixed_point(state: tuple[Observed, dt.datetime]) -> None:
    """Idempotence: after the plan's effects, planning again finds nothing to do."""
    observed, now = state
    after = _simulate(observed, plan_actions(SPEC, observed, now, CONTEXT), now)
    assert plan_actions(SPEC, after, now, CONTEXT).actions == ()


def _simulate(observed: Observed, plan, now: dt.datetime) -> Observed:
    """What a successful execution of `plan` leaves behind: the services' answers are made up here,
    their effects are the product's own (`shared.core.effects.apply`, which the executor uses)."""
    for action in plan.actions:
        observed = apply(observed, action, _answer(observed, action, now))
    # A second pass covers retirement that becomes possible only after publication.
    second = plan_actions(SPEC, observed, now, CONTEXT)
    if second.actions and all(isinstance(a, RetireKeyCredential | PublishConnectionRecord) for a in second.actions):
        return _simulate(observed, second, now)
    return observed


def _answer(observed: Observed, action, now: dt.datetime) -> Outcome:
    """What the services would answer for `action` (new versions, ids, the record as published)."""
    if isinstance(action, CreateCertificateVersion):
        return Outcome(tags=desired_certificate_tags(SPEC))  # requested: issued by the AwaitCertificate after it
    if isinstance(action, AwaitCertificate):
        return Outcome(version=version(99, start=now, days=365), tags=desired_certificate_tags(SPEC))
    if isinstance(action, UpsertApplication):
        app = observed.application or ObservedApplication("o-new", "app-new", owned=True, tags=(),
                                                          key_credentials=(), declares_exchange_permission=False)
        return Outcome(application=dataclasses.replace(app, declares_exchange_permission=True,
                                                       sign_in_audience="AzureADMyOrg"))
    if isinstance(action, CreateServicePrincipal | GrantConsent | AssignRole):
        return Outcome(created_id=f"id-{action.kind}")
    if isinstance(action, PublishConnectionRecord):
        return Outcome(record=record_to_publish(SPEC, observed, CONTEXT, now, clear_previous=action.clear_previous))
    return Outcome()
