// The single source of truth of the product (docs/reference.md): certificates and connection
// secrets. RBAC authorisation only (no access policies), soft delete with purge protection, so a
// decommissioned or deleted identity can be recovered and never silently purged.
//
// Network (docs/deploy.md, "Network isolation"): privateOnly turns public network access off (the
// vault is reached through its private endpoint); otherwise allowedIpRanges, when given, switch the
// firewall on: only those ranges, the Function App's subnet and (bypass) trusted Microsoft services
// get through. No range and not private: every network reaches the vault, RBAC is the only wall.

param name string
param location string
param tags object = {}
param tenantId string = subscription().tenantId
@minValue(7)
@maxValue(90)
param softDeleteRetentionInDays int = 90
@description('Public network access off: only the private endpoint reaches the vault.')
param privateOnly bool = false
@description('Public IP addresses or CIDR ranges let through the firewall (the job hosts). Empty and not privateOnly: no firewall.')
param allowedIpRanges array = []
@description('Subnets let through the firewall (service endpoint Microsoft.KeyVault): the Function App\'s.')
param allowedSubnetIds array = []
@description('Let trusted Microsoft services through the firewall.')
param bypassAzureServices bool = true

var firewall = privateOnly || !empty(allowedIpRanges)

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  // checkov:skip=CKV_AZURE_189: public access is off with networkIsolation (privateOnly); without it, jobs outside Azure reach the vault through the allowedIpRanges firewall (tests/infra/test_network.py proves both)
  // checkov:skip=CKV_AZURE_109: the firewall denies by default whenever privateOnly or allowedIpRanges is set; open only when neither is asked for (tests/infra/test_network.py)
  name: name
  location: location
  tags: tags
  properties: {
    tenantId: tenantId
    sku: {
      family: 'A'
      name: 'standard'
    }
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: softDeleteRetentionInDays
    enablePurgeProtection: true
    enabledForDeployment: false
    enabledForDiskEncryption: false
    enabledForTemplateDeployment: false
    publicNetworkAccess: privateOnly ? 'Disabled' : 'Enabled'
    networkAcls: {
      bypass: bypassAzureServices ? 'AzureServices' : 'None'
      defaultAction: firewall ? 'Deny' : 'Allow'
      ipRules: [for range in (privateOnly ? [] : allowedIpRanges): {
        value: range
      }]
      virtualNetworkRules: [for subnetId in (privateOnly ? [] : allowedSubnetIds): {
        id: subnetId
        ignoreMissingVnetServiceEndpoint: false
      }]
    }
  }
}

output id string = vault.id
output name string = vault.name
output uri string = vault.properties.vaultUri
