"""Issue #17: the network-isolated variant and the Key Vault firewall, each rendered offline from
infra/main.bicep with the parameters azd would pass (render.py decides every condition)."""

from __future__ import annotations

import pytest

from .bicep import INFRA, load_json, parameters, parse, text
from .render import Deployment, Opaque, Rendered, render

ISOLATED = {"networkIsolation": True}
FIREWALL = {"keyVaultAllowedIpRanges": "203.0.113.0/24, 198.51.100.7", "keyVaultBypassAzureServices": False}
# What stays reachable from public networks in every variant, and why (docs/deploy.md, "Network isolation").
PUBLIC_BY_DESIGN = {
    ("functionApp", "site"): "the HTTP API: function keys, and Entra app roles with requireAppRoles",
    # Private telemetry needs an Azure Monitor Private Link Scope, which takes over Azure Monitor's DNS for
    # the whole network: out of scope. Ingestion takes Entra tokens only (local auth off); queries Azure RBAC.
    ("monitoring", "appInsights"): "telemetry ingestion and queries: Entra ID only, local authentication off",
    ("monitoring", "workspace"): "telemetry ingestion and queries: Entra ID only, local authentication off",
}
ZONE_OF_GROUP = {"vault": "vaultZoneId", "blob": "blobZoneId", "queue": "queueZoneId"}


def _public_network_access(resource: Rendered) -> dict[str, object]:
    return {key: value for key, value in resource.properties.items() if key.lower().startswith("publicnetworkaccess")}


# -- networkIsolation=true -----------------------------------------------------------------------
def test_isolation_leaves_no_resource_open_to_public_networks_but_the_api() -> None:
    deployment = render(**ISOLATED)
    public = {}
    for resource in deployment.resources:
        settings = _public_network_access(resource)
        if any(value != "Disabled" for value in settings.values()):
            public[(resource.module, resource.symbol)] = settings
    assert set(public) == set(PUBLIC_BY_DESIGN), f"open to public networks: {public}"
    for type_ in ("Microsoft.KeyVault/vaults", "Microsoft.Storage/storageAccounts"):
        resource = deployment.one(type_)
        assert resource.properties["publicNetworkAccess"] == "Disabled", type_
        assert resource.properties["networkAcls"]["defaultAction"] == "Deny", type_
    assert deployment.one("Microsoft.KeyVault/vaults").properties["networkAcls"]["ipRules"] == []


def test_isolation_gives_vault_blob_and_queue_a_private_endpoint_each_with_its_dns_zone_group() -> None:
    deployment = render(**ISOLATED)
    endpoints = deployment.of_type("Microsoft.Network/privateEndpoints")
    zone_groups = deployment.of_type("Microsoft.Network/privateEndpoints/privateDnsZoneGroups")
    groups = {r.body["parent"]: r for r in zone_groups}
    params = deployment.modules["privateEndpoints"]
    seen = {}
    for endpoint in endpoints:
        (connection,) = endpoint.properties["privateLinkServiceConnections"]
        (group_id,) = connection["properties"]["groupIds"]
        seen[group_id] = connection["properties"]["privateLinkServiceId"]
        assert endpoint.properties["subnet"]["id"] == "network.outputs.privateEndpointSubnetId"
        group = groups.get(endpoint.symbol)
        assert group is not None, f"private endpoint {endpoint.symbol} has no DNS zone group"
        (zone,) = group.properties["privateDnsZoneConfigs"]
        # The zone group registers in the zone of its own service, made and linked by network.bicep.
        assert zone["properties"]["privateDnsZoneId"] == f"network.outputs.{ZONE_OF_GROUP[group_id]}"
    assert len(groups) == len(endpoints)
    assert seen == {"vault": "vault.outputs.id", "blob": "storage.outputs.id", "queue": "storage.outputs.id"}
    assert params["subnetId"] == "network.outputs.privateEndpointSubnetId"


def test_isolation_creates_and_links_the_three_private_dns_zones() -> None:
    deployment = render(**ISOLATED)
    zones = {r.symbol: r for r in deployment.of_type("Microsoft.Network/privateDnsZones")}
    assert set(zones) == {"vaultZone", "blobZone", "queueZone"}
    links = {r.body["parent"]: r for r in deployment.of_type("Microsoft.Network/privateDnsZones/virtualNetworkLinks")}
    assert set(links) == set(zones)
    for link in links.values():
        assert link.properties["virtualNetwork"]["id"] == "vnet.id"
        assert link.properties["registrationEnabled"] is False
    # Names from the cloud's suffixes, never a hard-coded public-cloud host (bicepconfig's linter).
    network = text(INFRA / "modules" / "network.bicep")
    assert "environment().suffixes.keyvaultDns" in network and "environment().suffixes.storage" in network
    assert "core.windows.net'" not in network and "vaultcore.azure.net'" not in network


def test_isolation_integrates_the_function_app_into_the_delegated_subnet() -> None:
    deployment = render(**ISOLATED)
    assert deployment.one("Microsoft.Web/sites").properties["virtualNetworkSubnetId"] == "network.outputs.appSubnetId"
    vnet = deployment.one("Microsoft.Network/virtualNetworks")
    subnets = {s["name"]: s["properties"] for s in vnet.properties["subnets"]}
    assert set(subnets) == {"app", "private-endpoints"}
    delegations = [d["properties"]["serviceName"] for d in subnets["app"]["delegations"]]
    assert delegations == ["Microsoft.App/environments"]  # what Flex Consumption requires
    assert subnets["private-endpoints"].get("delegations") in (None, [])
    # The app waits for the endpoints: its host must find storage privately from the first start.
    assert "privateEndpoints" in parse(INFRA / "main.bicep")["modules"]["functionApp"]["config"]["dependsOn"]


def test_isolation_ignores_ip_ranges_the_private_vault_would_not_use() -> None:
    deployment = render(**ISOLATED, **FIREWALL)
    acls = deployment.one("Microsoft.KeyVault/vaults").properties["networkAcls"]
    assert acls["ipRules"] == [] and acls["virtualNetworkRules"] == []
    assert deployment.one("Microsoft.KeyVault/vaults").properties["publicNetworkAccess"] == "Disabled"


# -- networkIsolation=false ----------------------------------------------------------------------
def test_the_default_deploys_no_network_and_keeps_the_vault_reachable_by_rbac_alone() -> None:
    deployment = render()
    assert not {"network", "privateEndpoints"} & set(deployment.modules)
    assert not [r for r in deployment.resources if r.type.startswith("Microsoft.Network/")]
    vault = deployment.one("Microsoft.KeyVault/vaults").properties
    assert vault["publicNetworkAccess"] == "Enabled"
    assert vault["networkAcls"]["defaultAction"] == "Allow"
    assert deployment.one("Microsoft.Web/sites").properties["virtualNetworkSubnetId"] is None
    declared = parameters(INFRA / "main.bicep")
    assert declared["networkIsolation"]["default"] is False
    assert declared["keyVaultAllowedIpRanges"]["default"] == ""


def test_the_vault_firewall_parameters_are_applied() -> None:
    deployment = render(**FIREWALL)
    vault = deployment.one("Microsoft.KeyVault/vaults").properties
    assert vault["publicNetworkAccess"] == "Enabled"  # the job hosts' ranges come through the firewall
    acls = vault["networkAcls"]
    assert acls["defaultAction"] == "Deny"
    assert acls["ipRules"] == [{"value": "203.0.113.0/24"}, {"value": "198.51.100.7"}]
    assert acls["bypass"] == "None"  # keyVaultBypassAzureServices=false
    # The Function App has no fixed outbound address: it passes through its subnet's service endpoint.
    rule = {"id": "network.outputs.appSubnetId", "ignoreMissingVnetServiceEndpoint": False}
    assert acls["virtualNetworkRules"] == [rule]
    assert deployment.one("Microsoft.Web/sites").properties["virtualNetworkSubnetId"] == "network.outputs.appSubnetId"
    vnet = deployment.one("Microsoft.Network/virtualNetworks")
    (app,) = vnet.properties["subnets"]
    assert app["name"] == "app"
    assert {"service": "Microsoft.KeyVault"} in app["properties"]["serviceEndpoints"]
    # A firewall is not isolation: no private endpoint, no DNS zone, storage unchanged.
    assert "privateEndpoints" not in deployment.modules
    assert not deployment.of_type("Microsoft.Network/privateDnsZones")
    assert deployment.one("Microsoft.Storage/storageAccounts").properties["publicNetworkAccess"] == "Enabled"


@pytest.mark.parametrize("bypass, expected", [(True, "AzureServices"), (False, "None")])
def test_trusted_services_bypass_follows_its_parameter(bypass: bool, expected: str) -> None:
    deployment = render(keyVaultAllowedIpRanges="203.0.113.7", keyVaultBypassAzureServices=bypass)
    assert deployment.one("Microsoft.KeyVault/vaults").properties["networkAcls"]["bypass"] == expected


def test_blank_ip_range_entries_are_dropped() -> None:
    deployment = render(keyVaultAllowedIpRanges=" , 203.0.113.7 ,")
    acls = deployment.one("Microsoft.KeyVault/vaults").properties["networkAcls"]
    assert acls["ipRules"] == [{"value": "203.0.113.7"}]


# -- azd -----------------------------------------------------------------------------------------
def test_azd_environment_values_reach_the_network_parameters() -> None:
    values = load_json(INFRA / "main.parameters.json")["parameters"]
    assert values["networkIsolation"]["value"] == "${NETWORK_ISOLATION=false}"
    assert values["keyVaultAllowedIpRanges"]["value"] == "${KEY_VAULT_ALLOWED_IP_RANGES=}"
    assert values["keyVaultBypassAzureServices"]["value"] == "${KEY_VAULT_BYPASS_AZURE_SERVICES=true}"
    declared = parameters(INFRA / "main.bicep")
    for name in ("vnetAddressPrefix", "appSubnetPrefix", "privateEndpointSubnetPrefix"):
        assert values[name]["value"].endswith(f"={declared[name]['default']}}}"), name


def test_renderer_refuses_to_guess() -> None:
    # A module output is opaque, yet a deployment never leaves it empty; a bare Opaque condition fails.
    from .render import Undecidable, evaluate

    assert evaluate({"function": {"type": "empty", "parameters": {"item_to_test": "x"}}},
                    {"x": Opaque("network.outputs.appSubnetId")}) is False
    conditional = {"operator": {"type": "conditional",
                                "operands": {"condition": "c", "true_value": 1, "false_value": 2}}}
    with pytest.raises(Undecidable):
        evaluate(conditional, {"c": Opaque("resourceToken")})


def test_every_variant_renders() -> None:
    for params in ({}, ISOLATED, FIREWALL, {**ISOLATED, "requireAppRoles": True}):
        assert isinstance(render(**params), Deployment)
