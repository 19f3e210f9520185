"""Issue #16 in the pure core: `managedIdentity` identities — the spec, the grants the registry records, the
checks, the plan (publication before the grants, no pruning of the managed identity's own roles), the kind
kept, decommission of exactly what was recorded, and the sweep's view agreeing with the plan."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest

from shared.core.checks import Facet, Reason, State, desired_certificate_tags
from shared.core.model import OWNER_TAG, OWNER_TAG_VALUE, Observed, ObservedManagedIdentity
from shared.core.planner import (
    AssignRole,
    DeleteConnectionSecret,
    GrantConsent,
    MarkDecommissioning,
    PublishConnectionRecord,
    RemoveRoleAssignment,
    RevokeConsent,
    plan_actions,
    plan_decommission,
)
from shared.core.record import ConnectionRecord, format_time
from shared.core.registry import RecordedGrants
from shared.core.roles import EXCHANGE_RECIPIENT_ADMINISTRATOR
from shared.core.spec import IdentitySpec, parse_spec, registry_spec
from shared.errors import InvalidSpec
from shared.settings import Settings
from shared.sweep import RegistryEntry, TenantSnapshot, needs_work

from .factories import CONTEXT, SPEC, T0, TENANT, VAULT, ready

MI = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
CLIENT = "9a8b7c6d-5e4f-4a3b-2c1d-0e9f8a7b6c5d"
ERA = EXCHANGE_RECIPIENT_ADMINISTRATOR.template_id
GLOBAL_ADMINISTRATOR = "62e90394-69f5-4237-9190-012177145e10"
SETTINGS = Settings(key_vault_url=VAULT, tenant_id=TENANT, organization="contoso.onmicrosoft.com",
                    allowed_managed_identities=frozenset({MI}))
CONTEXT_MI = dataclasses.replace(CONTEXT, allowed_managed_identities=frozenset({MI}))
SPEC_MI = dataclasses.replace(SPEC, certificate=False, managed_identity=MI)
NOW = T0 + dt.timedelta(days=1)
DAY = dt.timedelta(days=1)


def record() -> ConnectionRecord:
    return ConnectionRecord(identity=SPEC.name, app_id=CLIENT, tenant_id=TENANT, organization=SPEC.organization,
                            key_vault_url=VAULT, certificate_name="", certificate_version="", thumbprint="",
                            not_before=None, not_after=None, previous_thumbprint=None,
                            previous_certificate_version=None, updated_at=T0, credential_type="managedIdentity",
                            managed_identity_client_id=CLIENT)


OURS = RecordedGrants("grant-1", ("ra-1",))


def registry(grants: RecordedGrants = OURS, **extra: str) -> dict[str, str]:
    return {**desired_certificate_tags(SPEC_MI), **grants.to_tags(), **extra}


def observed(*, consent: str | None = "grant-1", roles: dict[str, str] | None = None, found: bool = True,
             is_mi: bool = True, published: bool = True, tags: dict[str, str] | None = None) -> Observed:
    principal = ObservedManagedIdentity(MI, CLIENT, is_mi) if found else None
    grants_seen = found and is_mi
    return Observed(
        service_principal_id=MI if grants_seen else None, consent_assignment_id=consent if grants_seen else None,
        role_assignments=(roles if roles is not None else {ERA: "ra-1"}) if grants_seen else {},
        record=record() if published else None, registry_tags=(tags if tags is not None else registry())
        if published else {}, managed_identity=principal, managed_identity_looked_up=True)


# -- the spec -----------------------------------------------------------------------------------------------
def test_a_managed_identity_alone_is_accepted_when_allowed_and_round_trips_through_its_tags() -> None:
    spec = parse_spec({"name": "reports", "credentials": [{"type": "managedIdentity", "principalId": MI.upper()}]},
                      SETTINGS)
    assert spec.managed_identity == MI and not spec.certificate and spec.credential_type == "managedIdentity"
    assert registry_spec(spec.to_tags(), "reports", spec.organization) == spec


def test_the_record_carries_the_kind_and_the_client_id() -> None:
    data = record().to_json()
    assert data["credentialType"] == "managedIdentity" and data["managedIdentityClientId"] == CLIENT
    assert data["appId"] == CLIENT and data["thumbprint"] is None
    assert ConnectionRecord.loads(record().dumps()) == record()


# -- the recorded grants ------------------------------------------------------------------------------------
def test_an_intent_becomes_the_grants_id_and_a_removed_grant_is_no_longer_ours() -> None:
    intended = RecordedGrants().intending(True, [ERA])
    assert intended.to_tags() == {"consentAssignment": "?", "roleAssignments": f"?{ERA}"}
    assert RecordedGrants.from_tags(intended.to_tags()) == intended
    assert intended.owns_consent("anything") and intended.owns_role(ERA, "ra-9")
    assert not intended.owns_role(GLOBAL_ADMINISTRATOR, "ra-9")
    made = intended.resolved("grant-2", {ERA: "ra-2", GLOBAL_ADMINISTRATOR: "ra-3"})
    assert made == RecordedGrants("grant-2", ("ra-2",))
    assert made.resolved(None, {GLOBAL_ADMINISTRATOR: "ra-3"}) == RecordedGrants()  # removed behind our back
    # A grant repaired after a removal replaces the old id.
    assert made.intending(True, []).resolved("grant-3", {ERA: "ra-2"}) == RecordedGrants("grant-3", ("ra-2",))


# -- the plan -----------------------------------------------------------------------------------------------
def test_a_new_managed_identity_identity_publishes_its_record_before_the_grants() -> None:
    fresh = observed(consent=None, roles={}, published=False)
    plan = plan_actions(SPEC_MI, fresh, NOW, CONTEXT_MI)
    assert [type(a) for a in plan.actions] == [PublishConnectionRecord, GrantConsent, AssignRole]
    assert not any(f.facet in (Facet.CERTIFICATE, Facet.APPLICATION, Facet.KEY_CREDENTIAL) for f in plan.findings)


def test_in_sync_and_the_managed_identitys_own_roles_are_never_judged_or_pruned() -> None:
    holding = observed(roles={ERA: "ra-1", GLOBAL_ADMINISTRATOR: "ra-theirs"})
    plan = plan_actions(SPEC_MI, holding, NOW, CONTEXT_MI, prune_roles=True)
    assert plan.in_sync, plan.findings
    assert plan_actions(SPEC_MI, observed(), NOW, CONTEXT_MI).in_sync


@pytest.mark.parametrize(("context", "seen", "reason"), [
    (CONTEXT, observed(consent=None, roles={}), Reason.MANAGED_IDENTITY_REFUSED),
    (CONTEXT_MI, observed(found=False, consent=None), Reason.MANAGED_IDENTITY_NOT_FOUND),
    (CONTEXT_MI, observed(is_mi=False), Reason.MANAGED_IDENTITY_NOT_FOUND),
])
def test_a_principal_refused_or_not_a_managed_identity_gets_nothing(context: object, seen: Observed,
                                                                     reason: Reason) -> None:
    plan = plan_actions(SPEC_MI, seen, NOW, context)  # type: ignore[arg-type]
    assert plan.actions == () and [f.reason for f in plan.needs_operator] == [reason]
    assert plan.findings[0].facet is Facet.MANAGED_IDENTITY and plan.findings[0].state is not State.OK


def test_an_identity_keeps_its_kind_and_its_managed_identity() -> None:
    other = "11111111-1111-1111-1111-111111111111"
    for spec in (SPEC, dataclasses.replace(SPEC_MI, managed_identity=other)):
        plan = plan_actions(spec, observed(), NOW, dataclasses.replace(CONTEXT_MI, allowed_managed_identities=frozenset(
            {MI, other})))
        assert plan.actions == () and plan.blocked[0].reason == "CredentialKindCannotChange"
    with_app = dataclasses.replace(observed(), application=ready().application)
    assert plan_actions(SPEC_MI, with_app, NOW, CONTEXT_MI).blocked[0].reason == "CredentialKindCannotChange"


def test_decommission_removes_exactly_the_recorded_grants_and_never_the_principal() -> None:
    theirs = observed(consent="grant-theirs", roles={ERA: "ra-1", GLOBAL_ADMINISTRATOR: "ra-theirs"})
    plan = plan_decommission(theirs, SPEC_MI)
    assert plan.actions == (MarkDecommissioning(), RemoveRoleAssignment("ra-1", ERA), DeleteConnectionSecret())
    ours = plan_decommission(observed(), SPEC_MI)
    assert RevokeConsent("grant-1") in ours.actions
    intended = observed(tags=registry(RecordedGrants("?", (f"?{ERA}",)), state="decommissioning"))
    again = plan_decommission(intended, SPEC_MI)  # a run that stopped before recording the ids
    assert again.actions == (RemoveRoleAssignment("ra-1", ERA), RevokeConsent("grant-1"), DeleteConnectionSecret())


# -- the sweep agrees ---------------------------------------------------------------------------------------
def listing(grant: bool = True, role: bool = True,
            last_run: dt.datetime = NOW) -> tuple[RegistryEntry, TenantSnapshot]:
    tags = {**registry(), OWNER_TAG: OWNER_TAG_VALUE, "appId": CLIENT, "lastRun": format_time(last_run),
            "lastResult": "Succeeded"}
    entry = RegistryEntry(SPEC.name, tags, None, None, None, True, updated_on=last_run)
    snapshot = TenantSnapshot({}, frozenset({MI}) if grant else frozenset(),
                              {ERA: frozenset({MI}) if role else frozenset()}, frozenset())
    return entry, snapshot


def test_the_sweep_sees_a_managed_identitys_grants_and_nothing_when_in_sync() -> None:
    assert needs_work(*listing(), NOW, CONTEXT_MI, DAY) == []
    assert needs_work(*listing(grant=False), NOW, CONTEXT_MI, DAY) == [Reason.CONSENT_MISSING]
    assert needs_work(*listing(role=False), NOW, CONTEXT_MI, DAY) == [Reason.ROLE_MISSING]
    assert needs_work(*listing(), NOW, CONTEXT, DAY) == [Reason.MANAGED_IDENTITY_REFUSED]
    assert needs_work(*listing(), NOW + 2 * DAY, CONTEXT_MI, DAY) == ["DeepCheckDue"]


def test_a_managed_identitys_spec_is_not_a_certificate_spec() -> None:
    assert IdentitySpec.from_tags(registry()).managed_identity == MI


def test_the_cli_asks_for_a_managed_identity_alone_and_passes_a_mix_on_to_be_refused() -> None:
    from shared.cli import build_parser, spec_body

    def body(*argv: str) -> dict[str, object]:
        return spec_body(build_parser().parse_args(["bootstrap", "reports", *argv]))

    assert body("--managed-identity", MI)["credentials"] == [{"type": "managedIdentity", "principalId": MI}]
    mixed = body("--managed-identity", MI, "--federated", "https://issuer.example", "repo:a/b:ref:main")
    assert [c["type"] for c in mixed["credentials"]] == ["managedIdentity", "federated"]  # type: ignore[union-attr]
    with pytest.raises(InvalidSpec) as refused:
        parse_spec(mixed, SETTINGS)
    assert any("must be the only one" in e["detail"] for e in refused.value.errors)
    assert "credentials" not in body()
