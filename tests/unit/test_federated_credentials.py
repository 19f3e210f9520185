"""Issue #16 in the pure core: the `credentials` field, its registry tag, and the federatedCredentials check."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest

from shared.core.checks import Facet, Reason, State, desired_certificate_tags, run_checks, view_of_observed
from shared.core.model import ObservedFederatedCredential
from shared.core.planner import AddFederatedCredential, RemoveFederatedCredential, plan_actions
from shared.core.record import ConnectionRecord
from shared.core.spec import FederatedTrust, IdentitySpec, parse_spec, registry_spec
from shared.errors import InvalidSpec, NeedsOperator
from shared.settings import Settings

from .factories import CONTEXT, SPEC, T0, ready

MI = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
ENTRA = "https://login.microsoftonline.com/11111111-2222-3333-4444-555555555555/v2.0"
GITHUB = "https://token.actions.githubusercontent.com"
SETTINGS = Settings(key_vault_url="https://kv.vault.azure.net/", tenant_id="11111111-2222-3333-4444-555555555555",
                    organization="contoso.onmicrosoft.com", allowed_managed_identities=frozenset({MI}))
TRUST = FederatedTrust(ENTRA, MI)
FEDERATED_CONTEXT = dataclasses.replace(CONTEXT, federation_issuers=SETTINGS.federation_issuers,
                                        entra_issuer=ENTRA, allowed_managed_identities=frozenset({MI}))
NOW = T0 + dt.timedelta(days=1)


def federated(body_credentials: list[dict[str, str]], settings: Settings = SETTINGS) -> IdentitySpec:
    return parse_spec({"name": "cloud-job", "credentials": body_credentials}, settings)


def test_the_default_is_a_certificate_and_leaves_the_tags_as_they_were() -> None:
    spec = parse_spec({"name": "plain"}, SETTINGS)
    assert spec.certificate and not spec.federated and spec.managed_identity is None
    assert "credentials" not in spec.to_tags()
    assert spec.to_json()["credentials"] == [{"type": "certificate"}]


def test_a_federated_trust_round_trips_through_one_compact_tag() -> None:
    spec = federated([{"type": "certificate"}, {"type": "federated", "issuer": ENTRA, "subject": MI.upper()}])
    assert spec.federated == (TRUST,)  # a managed identity's subject is its (lower-case) principal id
    tags = spec.to_tags()
    assert len(tags["credentials"]) <= 256 and "AzureADTokenExchange" not in tags["credentials"]
    assert registry_spec(tags, "cloud-job", "contoso.onmicrosoft.com") == spec


def test_this_tenants_issuer_is_the_default_allow_list() -> None:
    assert SETTINGS.federation_issuers == frozenset({"https://login.microsoftonline.com/"
                                                     "11111111-2222-3333-4444-555555555555/v2.0"})


@pytest.mark.parametrize(("credentials", "reason", "pointer"), [
    ([{"type": "certificate"}, {"type": "federated", "issuer": GITHUB, "subject": "repo:a/b:ref:refs/heads/main"}],
     "IssuerNotAllowed", "/credentials/1"),
    ([{"type": "certificate"},
      {"type": "federated", "issuer": ENTRA, "subject": "11111111-1111-1111-1111-111111111111"}],
     "ManagedIdentityNotAllowed", "/credentials/1"),
    ([{"type": "certificate"}, {"type": "federated", "issuer": ENTRA, "subject": "not-a-principal-id"}],
     "InvalidRequest", "/credentials/1/subject"),
    ([{"type": "certificate"}, {"type": "federated", "issuer": ENTRA, "subject": MI, "audience": "api://other"}],
     "InvalidRequest", "/credentials/1/audience"),
    ([{"type": "certificate"}, {"type": "federated", "issuer": "http://insecure", "subject": "x"}],
     "InvalidRequest", "/credentials/1/issuer"),
    ([{"type": "certificate"}, {"type": "certificate"}], "InvalidRequest", "/credentials"),
    ([{"type": "password"}], "InvalidRequest", "/credentials/0/type"),
    ([], "InvalidRequest", "/credentials"),
    ([{"type": "managedIdentity", "principalId": "11111111-1111-1111-1111-111111111111"}],
     "ManagedIdentityNotAllowed", "/credentials/0"),
    ([{"type": "managedIdentity", "principalId": MI}, {"type": "certificate"}], "InvalidRequest", "/credentials"),
])
def test_every_refusal_is_a_problem_with_a_pointer(credentials: list[dict[str, str]], reason: str,
                                                   pointer: str) -> None:
    with pytest.raises(InvalidSpec) as refused:
        federated(credentials)
    assert refused.value.reason == reason
    assert pointer in [e["pointer"] for e in refused.value.errors]
    assert all(set(e) == {"pointer", "detail"} for e in refused.value.errors)


def test_more_trusts_than_one_tag_holds_are_refused() -> None:
    many = [{"type": "federated", "issuer": ENTRA, "subject": MI}] + [
        {"type": "federated", "issuer": GITHUB, "subject": f"repo:contoso/job-{i}:environment:production"}
        for i in range(5)]
    settings = dataclasses.replace(SETTINGS, allowed_federation_issuers=(ENTRA, GITHUB))
    with pytest.raises(InvalidSpec) as refused:
        federated([{"type": "certificate"}, *many], settings)
    assert any("256" in e["detail"] for e in refused.value.errors)


def test_edited_credentials_tags_are_refused_as_registry_drift() -> None:
    tags = {**SPEC.to_tags(), "credentials": '{"c":1,"f":[["https://x"]]}'}
    with pytest.raises(NeedsOperator):
        registry_spec(tags, SPEC.name, SPEC.organization)


# -- the check and the plan ---------------------------------------------------------------------------
SPEC_F = dataclasses.replace(SPEC, federated=(TRUST,))


def ours(trust: FederatedTrust = TRUST, credential_id: str = "fic-1") -> ObservedFederatedCredential:
    return ObservedFederatedCredential(credential_id, trust.credential_name(SPEC.name), trust.issuer, trust.subject,
                                       (trust.audience,))


FOREIGN = ObservedFederatedCredential("fic-9", "exo-automation-reports-hand-made", ENTRA, MI,
                                      ("api://AzureADTokenExchange",))


def observed(credentials: tuple[ObservedFederatedCredential, ...] | None, spec: IdentitySpec = SPEC_F) -> object:
    base = ready()
    cert = dataclasses.replace(base.certificate, tags=desired_certificate_tags(spec))  # type: ignore[arg-type]
    record = dataclasses.replace(base.record, federated=tuple(t for t in spec.federated))  # type: ignore[arg-type]
    return dataclasses.replace(base, certificate=cert, record=record, federated_credentials=credentials)


def finding(spec: IdentitySpec, credentials: tuple[ObservedFederatedCredential, ...] | None) -> object:
    view = view_of_observed(spec, observed(credentials, spec), FEDERATED_CONTEXT)  # type: ignore[arg-type]
    found = [f for f in run_checks(view, NOW, FEDERATED_CONTEXT).findings if f.facet is Facet.FEDERATED_CREDENTIALS]
    return found[0] if found else None


def test_the_check_finds_a_missing_trust_and_ignores_a_foreign_credential_that_looks_alike() -> None:
    missing = finding(SPEC_F, (FOREIGN,))
    assert missing.reason == Reason.FEDERATED_CREDENTIAL_MISSING  # type: ignore[attr-defined]
    plan = plan_actions(SPEC_F, observed((FOREIGN,)), NOW, FEDERATED_CONTEXT)  # type: ignore[arg-type]
    assert plan.actions == (AddFederatedCredential(TRUST.credential_name(SPEC.name), ENTRA, MI,
                                                   "api://AzureADTokenExchange"),)


def test_in_sync_with_ours_present_and_no_finding_without_trusts() -> None:
    assert finding(SPEC_F, (ours(), FOREIGN)).state is State.OK  # type: ignore[attr-defined]
    assert finding(SPEC, (FOREIGN,)) is None
    assert finding(SPEC_F, None) is None  # the sweep cannot see them: deep check only
    assert plan_actions(SPEC_F, observed((ours(), FOREIGN)), NOW, FEDERATED_CONTEXT).in_sync  # type: ignore[arg-type]


def test_a_trust_the_spec_dropped_is_removed_and_only_ours() -> None:
    plan = plan_actions(SPEC, observed((ours(), FOREIGN), SPEC), NOW, FEDERATED_CONTEXT)  # type: ignore[arg-type]
    assert RemoveFederatedCredential("fic-1", ours().name) in plan.actions
    assert not any(getattr(a, "credential_id", None) == "fic-9" for a in plan.actions)


def test_a_trust_todays_allow_list_refuses_needs_an_operator_and_ours_is_removed() -> None:
    strict = dataclasses.replace(FEDERATED_CONTEXT, allowed_managed_identities=frozenset())
    view = view_of_observed(SPEC_F, observed((ours(),)), strict)  # type: ignore[arg-type]
    found = next(f for f in run_checks(view, NOW, strict).findings if f.facet is Facet.FEDERATED_CREDENTIALS)
    assert found.reason == Reason.FEDERATION_REFUSED and "ALLOWED_MANAGED_IDENTITIES" in found.message
    plan = plan_actions(SPEC_F, observed((ours(),)), NOW, strict)  # type: ignore[arg-type]
    assert plan.needs_operator and RemoveFederatedCredential("fic-1", ours().name) in plan.actions


def test_the_record_names_the_trusts_and_old_readers_fields_stay() -> None:
    record = dataclasses.replace(ready().record, federated=(TRUST,))  # type: ignore[arg-type]
    data = record.to_json()
    assert data["credentialType"] == "certificate"
    assert data["federatedCredentials"] == [{"issuer": ENTRA, "subject": MI, "audience": "api://AzureADTokenExchange"}]
    assert ConnectionRecord.loads(record.dumps()) == record
    legacy = {k: v for k, v in data.items() if k not in ("credentialType", "federatedCredentials")}
    import json
    assert ConnectionRecord.loads(json.dumps(legacy)).credential_type == "certificate"


def test_an_identity_without_a_certificate_is_judged_without_certificate_facets() -> None:
    spec = federated([{"type": "federated", "issuer": ENTRA, "subject": MI}])
    assert not spec.certificate and registry_spec(spec.to_tags(), "cloud-job", spec.organization) == spec
    base = ready()
    record = dataclasses.replace(base.record, credential_type="federated", federated=(TRUST,),  # type: ignore[arg-type]
                                 certificate_name="", certificate_version="", thumbprint="", not_before=None,
                                 not_after=None, identity="cloud-job")
    observed = dataclasses.replace(base, certificate=None, record=record, federated_credentials=(
        ObservedFederatedCredential("fic-1", TRUST.credential_name("cloud-job"), ENTRA, MI, (TRUST.audience,)),),
        application=dataclasses.replace(base.application, key_credentials=()))  # type: ignore[arg-type]
    plan = plan_actions(spec, observed, NOW, FEDERATED_CONTEXT)
    assert plan.in_sync, plan.findings
    assert {f.facet for f in plan.findings}.isdisjoint({Facet.CERTIFICATE, Facet.KEY_CREDENTIAL})
    assert ConnectionRecord.loads(record.dumps()) == record
    assert record.to_json()["thumbprint"] is None and record.to_json()["credentialType"] == "federated"


def test_an_identity_with_a_certificate_cannot_drop_it() -> None:
    spec = dataclasses.replace(SPEC_F, certificate=False)
    plan = plan_actions(spec, observed((ours(),)), NOW, FEDERATED_CONTEXT)  # type: ignore[arg-type]
    assert not plan.actions and plan.blocked[0].reason == "CertificateCannotBeRemoved"


@pytest.mark.parametrize("credentials", [
    "certificate", {"type": "certificate"}, [None], ["certificate"], [1], [{"type": []}], [{"type": {}}],
    [{"type": "federated", "issuer": [], "subject": {}}], [{"type": "federated", "issuer": ENTRA, "subject": MI,
                                                           "audience": ["x"]}],
    [{"type": "managedIdentity", "principalId": []}], [{"type": "certificate", "extra": {}}],
])
def test_hostile_credentials_are_a_400_never_a_crash(credentials: object) -> None:
    with pytest.raises(InvalidSpec):
        parse_spec({"name": "hostile", "credentials": credentials}, SETTINGS)
