"""Issue: the azd template's Bicep, parsed offline, has the security properties the design needs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from .bicep import (
    INFRA,
    app_settings,
    bicep_files,
    function_name,
    load_json,
    modules,
    only,
    parameters,
    parse,
    resources,
    text,
    variables,
    walk,
)

GRAPH_APP_ID = "00000003-0000-0000-c000-000000000000"
ROLE_IDS = {
    "Key Vault Certificates Officer": "a4417e6f-fecd-4de8-b567-7b0420556985",
    "Key Vault Secrets Officer": "b86a8fe4-44ce-4948-aee5-eccb2c155cd7",
    "Storage Blob Data Owner": "b7e6dc6d-f1e8-4753-8033-0f276bb0955b",
    "Storage Queue Data Contributor": "974c5e8b-45b9-4653-ba55-5f855dd0fb88",
    "Monitoring Metrics Publisher": "3913510d-42f4-4e42-8a64-420c390055eb",
}
BROAD_ROLES = {
    "8e3af657-a8ff-443c-a75c-2fe8c4bcb635": "Owner",
    "b24988ac-6180-42a0-ab88-20f7382dd24c": "Contributor",
    "18d7d88d-d35e-4fb5-a5c3-7773c20a72d9": "User Access Administrator",
    "00482a5a-887f-4fb3-b363-3b7fe8e74483": "Key Vault Administrator",
    "17d1049b-9a84-46fb-8f53-869881c3d3ab": "Storage Account Contributor",
}


@pytest.mark.parametrize("path", bicep_files(), ids=lambda p: str(p.relative_to(INFRA)))
def test_every_bicep_file_parses(path: Path) -> None:
    tree = parse(path)
    assert tree.get("resources") or tree.get("modules"), f"{path.name} declares nothing"


def test_the_template_has_the_expected_files() -> None:
    names = {str(p.relative_to(INFRA)) for p in bicep_files()}
    assert "main.bicep" in names
    assert {"modules/function-app.bicep", "modules/keyvault.bicep", "modules/storage.bicep",
            "modules/graph-permissions.bicep", "modules/alerts.bicep"} <= names
    for name in ("main.parameters.json", "abbreviations.json", "bicepconfig.json", "graph-permissions.json"):
        load_json(INFRA / name)  # valid JSON


# -- Key Vault ---------------------------------------------------------------------------------------
def test_key_vault_uses_rbac_soft_delete_and_purge_protection() -> None:
    vault = only("Microsoft.KeyVault/vaults")
    props = vault.properties
    assert props["enableRbacAuthorization"] is True
    assert props["enableSoftDelete"] is True
    assert props["enablePurgeProtection"] is True
    assert "accessPolicies" not in props, "RBAC only: no access policies"
    retention = parameters(vault.file)["softDeleteRetentionInDays"]
    assert retention["default"] == 90
    assert {d["type"] for d in retention["decorators"]} >= {"min_value", "max_value"}


# -- storage -----------------------------------------------------------------------------------------
def test_storage_has_no_shared_keys_and_https_tls12_only() -> None:
    props = only("Microsoft.Storage/storageAccounts").properties
    assert props["allowSharedKeyAccess"] is False
    assert props["defaultToOAuthAuthentication"] is True
    assert props["supportsHttpsTrafficOnly"] is True
    assert props["minimumTlsVersion"] == "TLS1_2"
    assert props["allowBlobPublicAccess"] is False


def test_operation_documents_expire_and_identity_leases_are_kept() -> None:
    from shared.lease import LEASE_CONTAINER
    from shared.operations import OPERATIONS_CONTAINER

    from .render import render

    (policy,) = render().of_type("Microsoft.Storage/storageAccounts/managementPolicies")
    assert policy.module == "storage" and policy.body["name"] == "default"  # an account has one policy
    (rule,) = policy.properties["policy"]["rules"]
    assert rule["enabled"] is True and rule["type"] == "Lifecycle"
    declared = parameters(INFRA / "modules" / "storage.bicep")
    assert declared["operationsContainerName"]["default"] == OPERATIONS_CONTAINER, "the container the code writes"
    # A prefix is `<container>/<blob prefix>`: the whole operations container, and nothing else.
    assert rule["definition"]["filters"] == {"blobTypes": ["blockBlob"], "prefixMatch": ["${operationsContainerName}/"]}
    assert rule["definition"]["actions"] == {"baseBlob": {"delete": {"daysAfterModificationGreaterThan": 30}}}
    assert LEASE_CONTAINER not in str(policy.body), "identity leases are kept (their metadata is a witness)"
    # The retention is a deployment parameter (OPERATION_RETENTION_DAYS), within bounds.
    (shorter,) = render(operationRetentionDays=7).of_type("Microsoft.Storage/storageAccounts/managementPolicies")
    assert shorter.properties["policy"]["rules"][0]["definition"]["actions"]["baseBlob"]["delete"] == {
        "daysAfterModificationGreaterThan": 7}
    bounds = {d["type"]: d["argument"] for d in parameters(INFRA / "main.bicep")["operationRetentionDays"]["decorators"]
              if d["type"] in ("min_value", "max_value")}
    assert bounds == {"min_value": 1, "max_value": 365}
    assert load_json(INFRA / "main.parameters.json")["parameters"]["operationRetentionDays"]["value"] == \
        "${OPERATION_RETENTION_DAYS=30}"


def test_no_template_reads_or_builds_a_key_or_connection_string() -> None:
    for path in bicep_files():
        source = text(path)
        for forbidden in ("listKeys(", "AccountKey=", "SharedAccessSignature", "listAccountSas(",
                          "InstrumentationKey="):
            assert forbidden not in source, f"{path.name} uses {forbidden}"


# -- Function App ------------------------------------------------------------------------------------
def test_function_app_is_flex_consumption_python_311_on_its_user_assigned_identity() -> None:
    plan = only("Microsoft.Web/serverfarms")
    assert plan.body["sku"] == {"name": "FC1", "tier": "FlexConsumption"}
    assert plan.properties["reserved"] is True  # Linux
    site = only("Microsoft.Web/sites")
    assert site.body["kind"] == "functionapp,linux"
    assert site.body["identity"]["type"] == "UserAssigned"
    config = site.properties["functionAppConfig"]
    assert config["runtime"] == {"name": "python", "version": "3.11"}
    storage = config["deployment"]["storage"]
    assert storage["type"] == "blobContainer"
    assert storage["authentication"]["type"] == "UserAssignedIdentity"
    assert "storageAccountConnectionStringName" not in storage["authentication"]


def test_function_app_is_https_only_tls12_and_ftps_off() -> None:
    site = only("Microsoft.Web/sites")
    assert site.properties["httpsOnly"] is True
    site_config = site.properties["siteConfig"]
    assert float(site_config["minTlsVersion"]) >= 1.2
    assert float(site_config["scmMinTlsVersion"]) >= 1.2
    assert site_config["ftpsState"] == "Disabled"
    assert site_config.get("remoteDebuggingEnabled") is False
    policies = {r.body["name"]: r.properties
                for r in resources("Microsoft.Web/sites/basicPublishingCredentialsPolicies")}
    assert policies == {"ftp": {"allow": False}, "scm": {"allow": False}}


def test_host_storage_and_telemetry_connections_are_identity_based() -> None:
    settings = app_settings()
    assert "AzureWebJobsStorage" not in settings, "a connection string; use AzureWebJobsStorage__* instead"
    assert settings["AzureWebJobsStorage__credential"] == "managedidentity"
    assert settings["AzureWebJobsStorage__accountName"] == "storageAccountName"  # the module's parameter
    assert settings["AzureWebJobsStorage__clientId"] == settings["AZURE_CLIENT_ID"] == "identityClientId"
    assert "Authorization=AAD" in settings["APPLICATIONINSIGHTS_AUTHENTICATION_STRING"]
    # Flex Consumption refuses it: the runtime comes from functionAppConfig.
    assert "FUNCTIONS_WORKER_RUNTIME" not in settings
    assert "FUNCTIONS_EXTENSION_VERSION" not in settings


def test_telemetry_has_local_authentication_off() -> None:
    assert only("Microsoft.Insights/components").properties["DisableLocalAuth"] is True
    workspace = only("Microsoft.OperationalInsights/workspaces").properties
    assert workspace["features"]["disableLocalAuth"] is True


# -- role assignments --------------------------------------------------------------------------------
def _role_assignments() -> list:
    return resources("Microsoft.Authorization/roleAssignments")


def test_role_assignment_names_come_from_guid_of_scope_principal_and_role() -> None:
    assignments = _role_assignments()
    assert assignments
    for ra in assignments:
        name = ra.body["name"]
        assert function_name(name) == "guid", f"{ra.symbol}: name must be guid(...), not {name!r}"
        arguments = list(name["function"]["parameters"].values())
        assert "principalId" in arguments, f"{ra.symbol}: the principal is part of the name"
        assert len([a for a in arguments if a is not None]) >= 3, f"{ra.symbol}: guid(scope, principal, role)"
        assert "scope" in ra.body, f"{ra.symbol}: scoped to one resource, not the resource group"
        role = ra.properties["roleDefinitionId"]
        assert function_name(role) == "subscription_resource_id"
        assert role["function"]["parameters"]["resource_type"] == "Microsoft.Authorization/roleDefinitions"


def test_platform_identity_gets_exactly_the_data_plane_roles_it_needs() -> None:
    assignments = _role_assignments()
    path = assignments[0].file
    names = variables(path)
    assigned = {names[ra.properties["roleDefinitionId"]["function"]["parameters"]["resource_name_1"]]: ra
                for ra in assignments}
    assert set(assigned) == set(ROLE_IDS.values())
    by_role = {v: k for k, v in ROLE_IDS.items()}
    scopes = {by_role[role]: ra.body["scope"] for role, ra in assigned.items()}
    assert scopes == {"Key Vault Certificates Officer": "vault", "Key Vault Secrets Officer": "vault",
                      "Storage Blob Data Owner": "storage", "Storage Queue Data Contributor": "storage",
                      "Monitoring Metrics Publisher": "appInsights"}
    for path in bicep_files():
        for broad, label in BROAD_ROLES.items():
            assert broad not in text(path), f"{path.name} assigns {label}"
    main = modules(INFRA / "main.bicep")
    assert main["platformRoles"]["params"]["principalType"] == "ServicePrincipal"
    assert main["platformRoles"]["condition"] is None  # always
    assert main["deployerRoles"]["condition"] is not None  # only when asked


# -- Microsoft Graph permissions ---------------------------------------------------------------------
def test_graph_permissions_use_the_microsoft_graph_extension_and_the_permission_table() -> None:
    path = INFRA / "modules" / "graph-permissions.bicep"
    tree = parse(path)
    assert "microsoftGraphV1" in tree["extensions"]
    config = load_json(INFRA / "bicepconfig.json")
    registry = "br:mcr.microsoft.com/bicep/extensions/microsoftgraph/v1.0:"
    assert config["extensions"]["microsoftGraphV1"].startswith(registry)
    graph = only("Microsoft.Graph/servicePrincipals", existing=True)
    assert graph.api_version == "v1.0"
    table = variables(path)["table"]
    assert table["function"]["type"] == "load_json_content"
    table_file = (path.parent / table["function"]["parameters"]["file_path"]).resolve()
    assert table_file == INFRA / "graph-permissions.json"
    assert load_json(table_file)["resourceAppId"] == GRAPH_APP_ID
    grants = only("Microsoft.Graph/appRoleAssignedTo")
    assert grants.loop == {"type": "array", "detail": {"item_name": "p", "array_name": "wanted"}}
    assert grants.body["principalId"] == "principalId"
    # Not a directory role assignment: the Graph extension cannot make those (docs/reference.md, Bicep).
    assert not resources("Microsoft.Graph/roleAssignments")


def test_graph_grants_follow_the_role_mode() -> None:
    main = modules(INFRA / "main.bicep")
    graph = main["graphPermissions"]
    assert graph["path"] == "modules/graph-permissions.bicep"
    assert graph["condition"] == "grantGraphPermissions"
    assert graph["params"]["roleMode"] == "roleMode"
    role_mode = parameters(INFRA / "main.bicep")["roleMode"]
    allowed = next(d["argument"] for d in role_mode["decorators"] if d["type"] == "allowed")
    assert allowed == ["assign", "verify"] and role_mode["default"] == "assign"


# -- alerts ------------------------------------------------------------------------------------------
def test_alert_rules_watch_rotation_failures_and_renewal_overdue() -> None:
    rules = {r.symbol: r for r in resources("Microsoft.Insights/scheduledQueryRules")}
    assert set(rules) == {"rotationFailures", "renewalOverdue"}
    alerts = variables(INFRA / "modules" / "alerts.bicep")
    for symbol, query_var in (("rotationFailures", "rotationFailureQuery"), ("renewalOverdue", "renewalOverdueQuery")):
        rule = rules[symbol]
        assert rule.body["kind"] == "LogAlert"
        assert rule.properties["scopes"] == ["applicationInsightsId"]
        criteria = rule.properties["criteria"]["allOf"][0]
        assert criteria["query"] == query_var
        assert criteria["operator"] == "GreaterThan" and criteria["threshold"] == 0
        assert criteria["dimensions"][0]["name"] == "identity"
        assert "traces" in alerts[query_var]


# -- the template hangs together ---------------------------------------------------------------------
def test_modules_exist_and_get_every_required_parameter_and_nothing_else() -> None:
    referenced = set()
    for path in bicep_files():
        for symbol, module in modules(path).items():
            target = (path.parent / module["path"]).resolve()
            assert target.exists(), f"{path.name}:{symbol} -> {module['path']}"
            referenced.add(target)
            declared = parameters(target)
            passed = set(module["params"])
            assert passed <= set(declared), f"{symbol}: unknown parameters {passed - set(declared)}"
            required = {name for name, p in declared.items() if p.get("default") is None}
            assert required <= passed, f"{symbol}: missing parameters {required - passed}"
    assert referenced == {p.resolve() for p in (INFRA / "modules").glob("*.bicep")}, "a module nobody uses"


def test_parameters_file_matches_main() -> None:
    declared = parameters(INFRA / "main.bicep")
    values = load_json(INFRA / "main.parameters.json")["parameters"]
    assert set(values) <= set(declared)
    required = {name for name, p in declared.items() if p.get("default") is None}
    assert required <= set(values), f"azd cannot fill {required - set(values)}"
    assert values["environmentName"]["value"] == "${AZURE_ENV_NAME}"
    assert values["location"]["value"] == "${AZURE_LOCATION}"


def test_abbreviations_and_loaded_files_exist() -> None:
    abbreviations = load_json(INFRA / "abbreviations.json")
    source = text(INFRA / "main.bicep")
    used = set(re.findall(r"abbrs\.(\w+)", source))
    assert used and used <= set(abbreviations), f"unknown abbreviations {used - set(abbreviations)}"
    for path in bicep_files():
        for value in walk(parse(path)):
            if function_name(value) == "load_json_content":
                assert (path.parent / value["function"]["parameters"]["file_path"]).exists()


def test_resources_use_released_api_versions() -> None:
    for resource in resources():
        if resource.type.startswith("Microsoft.Graph/"):
            assert resource.api_version == "v1.0", f"{resource.symbol}: Graph v1.0 types, not beta"
        else:
            assert re.fullmatch(r"20\d\d-\d\d-\d\d", resource.api_version), \
                f"{resource.file.name}:{resource.symbol} uses {resource.api_version}"


def test_function_app_carries_the_azd_service_tag_of_azure_yaml() -> None:
    import yaml

    azure = yaml.safe_load((INFRA.parent / "azure.yaml").read_text(encoding="utf-8"))
    (service_name, service), = azure["services"].items()
    assert service == {"project": ".", "language": "python", "host": "function"}
    assert parameters(INFRA / "modules" / "function-app.bicep")["serviceName"]["default"] == service_name
    assert "'azd-service-name': serviceName" in text(INFRA / "modules" / "function-app.bicep")
    assert azure["infra"] == {"provider": "bicep", "path": "infra", "module": "main"}
    for hook in azure["hooks"]["postprovision"].values():
        assert (INFRA.parent / hook["run"]).exists()
