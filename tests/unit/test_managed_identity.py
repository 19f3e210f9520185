"""Issue #16 in the pure core: `managedIdentity` identities — the spec, the grants the registry records, the
checks, the plan (publication before the grants, no pruning of the managed identity's own roles), the kind
kept, decommission of exactly what was recorded, and the sweep's view agreeing with the plan."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

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
from shared.core.registry import GrantVerdict, HeldGrant, RecordedGrants, judge_grants
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


AGREEING = "the registry's own grants"


def observed(*, consent: str | None = "grant-1", roles: dict[str, str] | None = None, found: bool = True,
             is_mi: bool = True, published: bool = True, tags: dict[str, str] | None = None,
             witness: RecordedGrants | dict[str, str] | str | None = AGREEING) -> Observed:
    """`witness`: the grants its lease blob's metadata records (by default what the registry records), raw
    metadata, or None for none."""
    principal = ObservedManagedIdentity(MI, CLIENT, is_mi) if found else None
    grants_seen = found and is_mi
    registry_tags = (tags if tags is not None else registry()) if published else {}
    if witness == AGREEING:
        witness = RecordedGrants.from_tags(registry_tags)
    return Observed(
        service_principal_id=MI if grants_seen else None, consent_assignment_id=consent if grants_seen else None,
        role_assignments=(roles if roles is not None else {ERA: "ra-1"}) if grants_seen else {},
        record=record() if published else None, registry_tags=registry_tags, managed_identity=principal,
        managed_identity_looked_up=True,
        grant_witness=witness.to_witness(MI) if isinstance(witness, RecordedGrants) else witness)  # type: ignore[arg-type]


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


# -- the witness: the same record where a Key Vault writer cannot write -----------------------------------------
def test_the_witness_holds_the_record_for_one_managed_identity() -> None:
    intended = RecordedGrants("?", (f"?{ERA}", "ra-1"))
    metadata = intended.to_witness(MI)
    assert metadata == {"principalid": MI, "consentassignment": "?", "roleassignments": f"?{ERA},ra-1"}
    assert RecordedGrants.from_witness(metadata, MI) == intended
    shouted = {k.upper(): v for k, v in metadata.items()} | {"PRINCIPALID": MI.upper()}
    assert RecordedGrants.from_witness(shouted, MI) == intended  # metadata names and ids are case-insensitive
    assert RecordedGrants().to_witness(MI) == {"principalid": MI}  # binds the principal, claims nothing
    assert RecordedGrants.from_witness({"principalid": MI}, MI) == RecordedGrants()
    for missing in (None, {}, RecordedGrants("grant-1").to_witness(CLIENT)):
        assert RecordedGrants.from_witness(missing, MI) is None  # none, or another principal's (a reused name)
    assert RecordedGrants.from_witness(metadata, None) is None


THEIR_CONSENT, THEIR_ROLE = "grant-theirs", "ra-theirs"
HELD_ROLES = {ERA: "ra-1", GLOBAL_ADMINISTRATOR: THEIR_ROLE}


def judge(registry_record: RecordedGrants, witness_record: RecordedGrants | None,
          consent_id: str | None = "grant-1") -> GrantVerdict:
    """The verdict on a managed identity holding our consent (or another), our role and a role of its own."""
    return judge_grants(registry_record, witness_record, consent_id, HELD_ROLES)


def ours(*, recorded: bool = True, witnessed: bool = True) -> tuple[HeldGrant, ...]:
    return (HeldGrant("ra-1", ERA, recorded, witnessed), HeldGrant("grant-1", None, recorded, witnessed))


@pytest.mark.parametrize(("registry_record", "witness_record"), [
    (OURS, OURS),
    (RecordedGrants("?", (f"?{ERA}",)), RecordedGrants("?", (f"?{ERA}",))),  # stopped before the ids were recorded
    (RecordedGrants("?", (f"?{ERA}",)), OURS),  # stopped between the witness's outcome and the registry's
    (OURS, RecordedGrants("?", (f"?{ERA}",))),
])
def test_grants_both_records_claim_are_removed_whatever_form_the_claim_takes(
        registry_record: RecordedGrants, witness_record: RecordedGrants) -> None:
    assert judge(registry_record, witness_record) == GrantVerdict(removable=ours())


@pytest.mark.parametrize(("label", "registry_record", "witness_record", "unconfirmed"), [
    ("(a) the consent id rewritten to a grant it had before", RecordedGrants(THEIR_CONSENT, ("ra-1",)),
     RecordedGrants(None, ("ra-1",)),
     (HeldGrant("ra-1", ERA, True, True), HeldGrant(THEIR_CONSENT, None, True, False))),
    ("(b) an intent for consent", RecordedGrants("?", ("ra-1",)), RecordedGrants(None, ("ra-1",)),
     (HeldGrant("ra-1", ERA, True, True), HeldGrant(THEIR_CONSENT, None, True, False))),
    ("(b) an intent for a role", RecordedGrants(None, ("ra-1", f"?{GLOBAL_ADMINISTRATOR}")),
     RecordedGrants(None, ("ra-1",)), (HeldGrant("ra-1", ERA, True, True), HeldGrant(THEIR_ROLE, GLOBAL_ADMINISTRATOR,
                                                                                    True, False))),
    ("(c) a role assignment it had before", RecordedGrants(None, ("ra-1", THEIR_ROLE)), RecordedGrants(None, ("ra-1",)),
     (HeldGrant("ra-1", ERA, True, True), HeldGrant(THEIR_ROLE, GLOBAL_ADMINISTRATOR, True, False))),
    ("ours erased from the registry", RecordedGrants(), RecordedGrants(None, ("ra-1",)),
     (HeldGrant("ra-1", ERA, False, True),)),
    ("no witness (its lease blob deleted)", RecordedGrants(None, ("ra-1",)), None,
     (HeldGrant("ra-1", ERA, True, False),)),
])
def test_when_the_records_disagree_nothing_is_removed_and_every_claimed_grant_is_named(
        label: str, registry_record: RecordedGrants, witness_record: RecordedGrants | None,
        unconfirmed: tuple[HeldGrant, ...]) -> None:
    assert judge(registry_record, witness_record, THEIR_CONSENT) == GrantVerdict(unconfirmed=unconfirmed), label


def test_grants_neither_record_claims_are_not_judged_at_all() -> None:
    assert judge(RecordedGrants(), None) == GrantVerdict()
    assert judge(RecordedGrants(None, ("ra-gone",)), RecordedGrants(None, ("ra-gone",))) == GrantVerdict()


_ENTRIES = st.sampled_from(["ra-1", THEIR_ROLE, f"?{ERA}", f"?{GLOBAL_ADMINISTRATOR}", "ra-gone"])
_RECORDS = st.builds(RecordedGrants, st.sampled_from([None, "?", "grant-1", THEIR_CONSENT]),
                     st.lists(_ENTRIES, max_size=3, unique=True).map(tuple))


@given(_RECORDS, st.none() | _RECORDS, st.sampled_from([None, "grant-1", THEIR_CONSENT]))
def test_only_grants_the_witness_claims_are_ever_removed(registry_record: RecordedGrants,
                                                         witness_record: RecordedGrants | None,
                                                         consent_id: str | None) -> None:
    """Whatever the registry says (a secret writer may have written it), a removal needs the witness's claim."""
    verdict = judge(registry_record, witness_record, consent_id)
    for grant in verdict.removable:
        assert witness_record is not None and grant.recorded and grant.witnessed
        assert witness_record.owns_consent(grant.assignment_id) if grant.role_id is None \
            else witness_record.owns_role(grant.role_id, grant.assignment_id)
    assert not (verdict.removable and verdict.unconfirmed)
    if witness_record == registry_record:
        assert verdict.unconfirmed == ()  # honest records never stop a decommission


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
    assert ours.needs_operator == again.needs_operator == ()


@pytest.mark.parametrize("witness", [None, {"principalid": CLIENT, "consentassignment": "grant-1"},
                                     RecordedGrants(None, ("ra-1",))])
def test_decommission_removes_none_of_its_grants_when_the_witness_disagrees_and_names_them(
        witness: RecordedGrants | dict[str, str] | None) -> None:
    plan = plan_decommission(observed(witness=witness), SPEC_MI)
    assert plan.actions == (MarkDecommissioning(), DeleteConnectionSecret())  # the rest of the decommission
    (finding,) = plan.needs_operator
    assert plan.findings == plan.needs_operator
    assert (finding.facet, finding.state, finding.reason) == (Facet.MANAGED_IDENTITY, State.REFUSED,
                                                              "GrantsUnconfirmed")
    assert "grant-1" in finding.message and "Exchange.ManageAsApp" in finding.message
    if not isinstance(witness, RecordedGrants):  # no witness for this managed identity: the registry claims both
        assert "ra-1" in finding.message and "Exchange Recipient Administrator" in finding.message


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
