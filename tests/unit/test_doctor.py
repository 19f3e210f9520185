"""Issue #15: the doctor's decisions, without a network (shared/doctor.py)."""

from __future__ import annotations

import pytest

from shared import doctor
from shared.adapters import directory
from shared.core.permission_table import load_table
from shared.doctor import Deployment, Facts, Failure, RegistryEntry, SettingProblem
from shared.doctor_probes import load_settings
from shared.settings import Settings

TABLE = load_table()
ENV = {"KEY_VAULT_URL": "https://kv-contoso.vault.azure.net/",
       "AZURE_TENANT_ID": "0d1e6d58-9a3b-4b8c-9d6e-1f2a3b4c5d6e", "EXO_ORGANIZATION": "contoso.onmicrosoft.com"}
GRAPH_ROLES = {p.name: p.app_role_id for p in TABLE.permissions}
PLATFORM = "11111111-2222-3333-4444-555555555555"


def facts(mode: str = "assign", held: tuple[str, ...] | None = None, **changes: object) -> Facts:
    settings = Settings.from_environment({**ENV, "ROLE_MODE": mode})
    names = TABLE.names(mode) if held is None else held
    values: dict[str, object] = {"graph_app_roles": GRAPH_ROLES, "held": {GRAPH_ROLES[n]: f"a-{n}" for n in names},
                                 "graph_sp_id": "g-sp", "token_roles": frozenset(names), **changes}
    return Facts(settings, Deployment(principal_id=PLATFORM, vault_name="kv-contoso"), **values)  # type: ignore[arg-type]


def test_exactly_the_tables_permissions_are_ok() -> None:
    for mode in TABLE.modes:
        assert doctor.permissions_check(facts(mode), TABLE).status == doctor.OK


def test_a_missing_required_permission_fails_with_the_grant_filled_in() -> None:
    check = doctor.permissions_check(facts(held=tuple(n for n in TABLE.names("assign")
                                                      if n != "AppRoleAssignment.ReadWrite.All")), TABLE)
    assert check.status == doctor.FAILING and "missing AppRoleAssignment.ReadWrite.All" in check.observed
    assert f"/servicePrincipals/{PLATFORM}/appRoleAssignments" in check.fix
    assert GRAPH_ROLES["AppRoleAssignment.ReadWrite.All"] in check.fix and "\"resourceId\": \"g-sp\"" in check.fix


def test_a_missing_optional_permission_warns_with_its_effect() -> None:
    check = doctor.permissions_check(facts(held=tuple(p.name for p in TABLE.required("assign"))), TABLE)
    assert check.status == doctor.WARNING and "optional Policy.Read.All" in check.observed
    assert "certificates" in check.observed  # the row's why: what is lost without it


def test_switching_modes_finds_the_missing_and_the_excess() -> None:
    check = doctor.permissions_check(facts("verify", held=tuple(TABLE.names("assign"))), TABLE)
    assert check.status == doctor.FAILING
    assert "RoleManagement.Read.Directory" in check.observed and "RoleManagement.ReadWrite.Directory" in check.observed
    assert "--method DELETE" in check.fix


def test_granted_but_not_yet_in_the_token_warns_only_when_checked_as_itself() -> None:
    stale = facts(token_roles=frozenset(TABLE.names("assign")[:-1]))
    check = doctor.permissions_check(stale, TABLE)
    assert check.status == doctor.WARNING and "not yet in the platform's token" in check.observed
    stale.checked_as_self = False  # an admin's token says nothing about the platform's
    assert doctor.permissions_check(stale, TABLE).status == doctor.OK


def policy(*restrictions: dict[str, object]) -> dict[str, object]:
    return {"id": "p-1", "isEnabled": True, "applicationRestrictions": {"keyCredentials": list(restrictions)}}


def lifetime(value: str) -> dict[str, object]:
    return {"restrictionType": "asymmetricKeyLifetime", "maxLifetime": value, "state": "enabled"}


@pytest.mark.parametrize(("restrictions", "status", "text"), [
    ((), doctor.OK, "does not restrict"),
    ((lifetime("P400D"),), doctor.OK, "12 months fit"),
    ((lifetime("P90D"),), doctor.WARNING, "capped to 2"),
    ((lifetime("P20D"),), doctor.FAILING, "not even a one-month"),
    (({"restrictionType": "trustedCertificateAuthority", "state": "enabled",
       "certificateBasedApplicationConfigurationIds": ["c-1"]},), doctor.FAILING, "trusted certificate authorities"),
    (({"restrictionType": "trustedCertificateAuthority", "state": "disabled"},), doctor.OK, "does not restrict"),
    (({"restrictionType": "unknownFutureValue", "state": "enabled"},), doctor.WARNING, "does not know"),
])
def test_the_app_management_policy(restrictions: tuple[dict[str, object], ...], status: str, text: str) -> None:
    check = doctor.policy_check(facts(policy=policy(*restrictions)))
    assert check.status == status and text in check.observed, check


def test_an_unreadable_policy_only_warns() -> None:
    assert doctor.policy_check(facts(policy=Failure("Authorization_RequestDenied", "no", 403))).status == doctor.WARNING


def test_trusted_ca_is_judged_against_the_configured_issuer() -> None:
    restriction = [{"restrictionType": "trustedCertificateAuthority", "state": "enabled"}]
    assert directory.trusted_ca_problem(restriction, directory.SELF_ISSUER) is not None
    assert doctor.trusted_ca_problem(restriction, "DigiCert-issuer") is None  # a CA-backed issuer: not judged here


def test_the_recovery_level_against_the_deployment() -> None:
    listed = facts(certificates=[], recovery_level="Recoverable+Purgeable")
    check = doctor.key_vault_check(listed)
    assert check.status == doctor.WARNING
    assert "az keyvault update --name kv-contoso --enable-purge-protection" in check.fix
    listed.recovery_level = "CustomizedRecoverable"
    assert doctor.key_vault_check(listed).status == doctor.OK


def test_the_registry_lists_those_needing_an_operator() -> None:
    entries = [RegistryEntry("a-ok", "Succeeded"), RegistryEntry("b-new", None),
               RegistryEntry("c-bad", "ForeignObject", "taken"), RegistryEntry("d-going", "Succeeded", None,
                                                                              "decommissioning")]
    check = doctor.registry_check(facts(certificates=entries))
    assert check.status == doctor.WARNING
    assert check.observed == ("2 of 4 identities need an operator: c-bad: ForeignObject (taken); "
                              "d-going: decommission not finished")


def test_a_setting_problem_fails_the_check_that_owns_it_and_no_other() -> None:
    problem = SettingProblem("ALLOWED_ROLES", "SettingInvalid", "ALLOWED_ROLES: unknown role 'x'")
    checks = doctor.evaluate(facts(setting_problems=(problem,), tokens={"Microsoft Graph": None},
                                   exchange={"id": "x", "appRoles": [
                                       {"id": "dc50a0fb-09a3-484d-be87-e023b12c6440", "isEnabled": True,
                                        "allowedMemberTypes": ["Application"]}]},
                                   role_definitions={}, policy={}, certificates=[], storage={"queue": None}), TABLE)
    assert {c.name: c.status for c in checks if c.status != doctor.OK} == {"allowedRoles": doctor.FAILING}
    assert "ALLOWED_ROLES=Exchange Recipient Administrator" in next(c for c in checks if c.name == "allowedRoles").fix


def test_settings_are_loaded_with_harmless_problems_set_aside() -> None:
    settings, problems = load_settings({**ENV, "ALLOWED_ROLES": "nope", "NOTIFY_WEBHOOK_URL": "http://x"})
    assert settings is not None
    assert sorted(p.setting for p in problems) == ["ALLOWED_ROLES", "NOTIFY_WEBHOOK_URL"]
    # An endpoint is never swapped for its default: nothing can be checked then.
    settings, problems = load_settings({**ENV, "GRAPH_ENDPOINT": "http://graph.example"})
    assert settings is None and [p.setting for p in problems] == ["GRAPH_ENDPOINT"]
    settings, problems = load_settings({k: v for k, v in ENV.items() if k != "KEY_VAULT_URL"})
    assert settings is None and problems[0].reason == "SettingMissing"


def test_the_document_and_its_exit_code() -> None:
    checks = [doctor.Check("a", doctor.OK, "fine"), doctor.Check("b", doctor.WARNING, "meh", "do x")]
    document = doctor.document(checks)
    assert document["status"] == "warning" and doctor.exit_code(document) == 0
    assert doctor.summary(document) == "platform warning (warning: b)"
    assert "fix: do x" in doctor.render(document)
    failing = doctor.document([*checks, doctor.Check("c", doctor.FAILING, "bad", "fix it")])
    assert failing["status"] == "failing" and doctor.exit_code(failing) == 1


def test_without_a_graph_token_only_the_tokens_check_fails() -> None:
    no_graph = facts(tokens={"Microsoft Graph": Failure("PlatformTokenUnavailable", "AADSTS500011"), "Key Vault": None},
                     certificates=[], storage={"queue": None, "blob": None})
    statuses = {c.name: c.status for c in doctor.evaluate(no_graph, TABLE) if c.status != doctor.OK}
    assert statuses == {"platformTokens": doctor.FAILING, "graphPermissions": doctor.SKIPPED,
                        "exchangeServicePrincipal": doctor.SKIPPED, "allowedRoles": doctor.SKIPPED,
                        "appManagementPolicy": doctor.SKIPPED}
