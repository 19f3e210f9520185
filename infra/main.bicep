// Azure Developer CLI entry point (`azd up`): one resource group with the Function App (Flex
// Consumption, Python 3.11), its user-assigned platform identity, identity-only storage, the Key
// Vault that holds every automation identity, monitoring with alerts, the data-plane roles and the
// platform identity's Microsoft Graph permissions. See docs/deploy.md.

targetScope = 'subscription'

@minLength(1)
@maxLength(64)
@description('azd environment name; names and tags every resource.')
param environmentName string

@minLength(1)
@description('Region of every resource; it must offer the Flex Consumption plan.')
@metadata({
  azd: {
    type: 'location'
  }
})
param location string

@description('Object id of the user running azd (AZURE_PRINCIPAL_ID); with grantDeployerVaultAccess it may use the admin CLI.')
param principalId string = ''

@description('Give the deploying user Key Vault Certificates Officer and Secrets Officer, for the admin CLI (python -m shared).')
param grantDeployerVaultAccess bool = false

@description('The tenant\'s primary onmicrosoft domain, e.g. contoso.onmicrosoft.com (EXO_ORGANIZATION).')
param exoOrganization string

@allowed(['assign', 'verify'])
@description('assign: the product assigns the Entra roles of the automation identities; verify: an administrator does, the product only reports.')
param roleMode string = 'assign'

@description('Grant the platform identity its Microsoft Graph permissions in this deployment (Microsoft Graph Bicep extension). Needs a Privileged Role Administrator to deploy; false leaves it to scripts/postprovision.py --grant.')
param grantGraphPermissions bool = true

@description('Entra roles an identity may request: names or template ids, comma-separated (ALLOWED_ROLES).')
param allowedRoles string = 'Exchange Recipient Administrator'

@description('Principal (object) ids of managed identities an identity may trust or be, comma-separated (ALLOWED_MANAGED_IDENTITIES). Empty: none.')
param allowedManagedIdentities string = ''

@description('Issuer URLs an identity\'s federated credentials may trust, comma-separated (ALLOWED_FEDERATION_ISSUERS). Empty: this tenant\'s Entra ID issuer only.')
param allowedFederationIssuers string = ''

@minValue(1)
@maxValue(24)
param certificateValidityMonths int = 12
@description('Key Vault issuer of new certificates: Self, or an issuer configured in the vault for a CA the tenant trusts (CERTIFICATE_ISSUER).')
param certificateIssuer string = 'Self'
param renewBeforeDays string = ''
param renewBeforeFraction string = ''
@minValue(0)
@maxValue(720)
param rotationGraceHours int = 24
param verifySignIn bool = true
@minValue(0)
@maxValue(600)
param verifySignInTimeoutSeconds int = 120
@description('Require the caller\'s app roles (ExoIdentities.Read / ExoIdentities.ReadWrite) on every HTTP call: the app validates the caller\'s Entra access token itself (AUTH_AUDIENCE).')
param requireAppRoles bool = false
@description('With requireAppRoles: the accepted token audiences, comma-separated (an existing API app registration\'s client id and/or application ID URI). Empty: this deployment creates the API app registration (Microsoft Graph Bicep extension) and uses its.')
param authAudience string = ''
@description('Webhook for operator notifications (Teams, Slack or generic JSON). A secret: prefer a Key Vault reference. Empty: no notifications.')
@secure()
param notifyWebhookUrl string = ''
@allowed(['json', 'teams', 'slack'])
param notifyWebhookFormat string = 'json'
param reconcileQueueName string = 'identity-reconcile'
@description('Days an operation document (GET /api/operations/{id}) is kept after its last change (OPERATION_RETENTION_DAYS).')
@minValue(1)
@maxValue(365)
param operationRetentionDays int = 30
@description('NCRONTAB (six fields, seconds first) of the sweep that finds identities due for work.')
param sweepSchedule string = '0 */30 * * * *'
@minValue(1)
@maxValue(720)
param deepCheckHours int = 24
@minValue(0)
@maxValue(3600)
param connectionCacheSeconds int = 300
@description('How long after a deployment a 403 from Microsoft Graph is taken for a permission not yet in the platform identity\'s tokens (retried), rather than a missing one (needs an operator).')
@minValue(0)
@maxValue(72)
param permissionPropagationHours int = 6
@description('The deployment time: the platform\'s Graph permissions are granted by this deployment. Leave the default.')
param deployedAt string = utcNow()
param reportsContainerName string = 'mailbox-reports'
@description('The sample mailbox-report job: the automation identity it runs as (bootstrap it first).')
param mailboxReportIdentity string = 'mailbox-reports'
@description('NCRONTAB of the sample mailbox-report job.')
param mailboxReportSchedule string = '0 0 6 * * *'

@description('Microsoft Graph root for this cloud (GRAPH_ENDPOINT).')
param graphEndpoint string = 'https://graph.microsoft.com'
@description('Exchange Online root for this cloud (EXO_ENDPOINT).')
param exoEndpoint string = 'https://outlook.office365.com'

@description('E-mail address for the alerts; empty: alerts fire without notification.')
param alertEmail string = ''

// -- network (docs/deploy.md, "Network isolation") ------------------------------------------------
@description('The private variant: a virtual network with the Function App integrated, private endpoints and private DNS zones for Key Vault (vault) and Storage (blob, queue), public network access off on both.')
param networkIsolation bool = false
@description('Without networkIsolation: public IP addresses or CIDR ranges (comma-separated) let through the Key Vault firewall, e.g. the job hosts\' egress addresses; the Function App gets in through its subnet. Empty: no firewall (every network, RBAC only).')
param keyVaultAllowedIpRanges string = ''
@description('Let trusted Microsoft services through the Key Vault firewall.')
param keyVaultBypassAzureServices bool = true
@description('Address space of the virtual network; pick one that does not overlap a network you peer it with.')
param vnetAddressPrefix string = '10.60.0.0/24'
@description('The Function App\'s integration subnet, inside vnetAddressPrefix.')
param appSubnetPrefix string = '10.60.0.0/26'
@description('The private endpoints\' subnet, inside vnetAddressPrefix (networkIsolation).')
param privateEndpointSubnetPrefix string = '10.60.0.64/27'

var abbrs = loadJsonContent('abbreviations.json')
var resourceToken = toLower(uniqueString(subscription().id, environmentName, location))
var tags = {
  'azd-env-name': environmentName
  workload: 'exo-automation-identities'
}
var functionAppName = '${abbrs.webSitesFunctions}${resourceToken}'
var deploymentContainerName = 'app-package-${take(functionAppName, 32)}'
var keyVaultIpRanges = networkIsolation ? [] : filter(split(replace(keyVaultAllowedIpRanges, ' ', ''), ','), r => !empty(r))
// A virtual network for the private variant, or so that the app passes the vault's firewall.
var virtualNetwork = networkIsolation || !empty(keyVaultIpRanges)
var createApiApp = requireAppRoles && empty(authAudience)

resource rg 'Microsoft.Resources/resourceGroups@2024-03-01' = {
  name: '${abbrs.resourcesResourceGroups}${environmentName}'
  location: location
  tags: tags
}

module identity 'modules/identity.bicep' = {
  name: 'identity'
  scope: rg
  params: {
    name: '${abbrs.managedIdentityUserAssignedIdentities}${resourceToken}'
    location: location
    tags: tags
  }
}

module monitoring 'modules/monitoring.bicep' = {
  name: 'monitoring'
  scope: rg
  params: {
    logAnalyticsName: '${abbrs.operationalInsightsWorkspaces}${resourceToken}'
    applicationInsightsName: '${abbrs.insightsComponents}${resourceToken}'
    location: location
    tags: tags
  }
}

module network 'modules/network.bicep' = if (virtualNetwork) {
  name: 'network'
  scope: rg
  params: {
    name: '${abbrs.networkVirtualNetworks}${resourceToken}'
    location: location
    tags: tags
    privateEndpoints: networkIsolation
    addressPrefix: vnetAddressPrefix
    appSubnetPrefix: appSubnetPrefix
    privateEndpointSubnetPrefix: privateEndpointSubnetPrefix
  }
}

module storage 'modules/storage.bicep' = {
  name: 'storage'
  scope: rg
  params: {
    name: '${abbrs.storageStorageAccounts}${resourceToken}'
    location: location
    tags: tags
    deploymentContainerName: deploymentContainerName
    reconcileQueueName: reconcileQueueName
    reportsContainerName: reportsContainerName
    privateOnly: networkIsolation
    operationRetentionDays: operationRetentionDays
  }
}

module vault 'modules/keyvault.bicep' = {
  name: 'keyvault'
  scope: rg
  params: {
    name: '${abbrs.keyVaultVaults}${resourceToken}'
    location: location
    tags: tags
    privateOnly: networkIsolation
    allowedIpRanges: keyVaultIpRanges
    allowedSubnetIds: empty(keyVaultIpRanges) ? [] : [network.outputs.appSubnetId]
    bypassAzureServices: keyVaultBypassAzureServices
  }
}

module privateEndpoints 'modules/private-endpoints.bicep' = if (networkIsolation) {
  name: 'private-endpoints'
  scope: rg
  params: {
    namePrefix: '${abbrs.networkPrivateEndpoints}${resourceToken}'
    location: location
    tags: tags
    subnetId: network.outputs.privateEndpointSubnetId
    keyVaultId: vault.outputs.id
    storageAccountId: storage.outputs.id
    vaultZoneId: network.outputs.vaultZoneId
    blobZoneId: network.outputs.blobZoneId
    queueZoneId: network.outputs.queueZoneId
  }
}

// requireAppRoles without an existing registration: the API's app registration and its app roles.
module apiApp 'modules/api-app.bicep' = if (createApiApp) {
  name: 'api-app'
  scope: rg
  params: {
    uniqueName: 'exo-automation-identities-api-${resourceToken}'
    displayName: 'Exchange Online automation identities API (${environmentName})'
    tenantId: tenant().tenantId
  }
}

module platformRoles 'modules/role-assignments.bicep' = {
  name: 'platform-roles'
  scope: rg
  params: {
    principalId: identity.outputs.principalId
    principalType: 'ServicePrincipal'
    keyVaultName: vault.outputs.name
    storageAccountName: storage.outputs.name
    applicationInsightsName: monitoring.outputs.applicationInsightsName
  }
}

module deployerRoles 'modules/role-assignments.bicep' = if (grantDeployerVaultAccess && !empty(principalId)) {
  name: 'deployer-roles'
  scope: rg
  params: {
    principalId: principalId
    principalType: 'User'
    keyVaultName: vault.outputs.name
    storageAccountName: storage.outputs.name
    applicationInsightsName: monitoring.outputs.applicationInsightsName
    includeHostRoles: false
  }
}

// After the Function App, so that Entra ID has replicated the new identity's service principal:
// granting to it moments after its creation can fail with "Not a valid reference update".
module graphPermissions 'modules/graph-permissions.bicep' = if (grantGraphPermissions) {
  name: 'graph-permissions'
  scope: rg
  dependsOn: [
    functionApp
  ]
  params: {
    principalId: identity.outputs.principalId
    roleMode: roleMode
  }
}

module functionApp 'modules/function-app.bicep' = {
  name: 'function-app'
  scope: rg
  dependsOn: [
    platformRoles
    privateEndpoints
  ]
  params: {
    name: functionAppName
    planName: '${abbrs.webServerFarms}${resourceToken}'
    location: location
    tags: tags
    identityId: identity.outputs.id
    identityClientId: identity.outputs.clientId
    storageAccountName: storage.outputs.name
    storageBlobEndpoint: storage.outputs.blobEndpoint
    deploymentContainerName: deploymentContainerName
    applicationInsightsConnectionString: monitoring.outputs.connectionString
    keyVaultUrl: vault.outputs.uri
    tenantId: tenant().tenantId
    exoOrganization: exoOrganization
    graphEndpoint: graphEndpoint
    exoEndpoint: exoEndpoint
    authorityHost: environment().authentication.loginEndpoint
    allowedRoles: allowedRoles
    allowedManagedIdentities: allowedManagedIdentities
    allowedFederationIssuers: allowedFederationIssuers
    roleMode: roleMode
    certificateValidityMonths: certificateValidityMonths
    certificateIssuer: certificateIssuer
    renewBeforeDays: renewBeforeDays
    renewBeforeFraction: renewBeforeFraction
    rotationGraceHours: rotationGraceHours
    verifySignIn: verifySignIn
    verifySignInTimeoutSeconds: verifySignInTimeoutSeconds
    requireAppRoles: requireAppRoles
    authAudience: createApiApp ? apiApp.outputs.audience : authAudience
    virtualNetworkSubnetId: virtualNetwork ? network.outputs.appSubnetId : ''
    reconcileQueueName: reconcileQueueName
    sweepSchedule: sweepSchedule
    deepCheckHours: deepCheckHours
    connectionCacheSeconds: connectionCacheSeconds
    permissionPropagationHours: permissionPropagationHours
    deployedAt: deployedAt
    reportsContainerName: reportsContainerName
    mailboxReportIdentity: mailboxReportIdentity
    mailboxReportSchedule: mailboxReportSchedule
    notifyWebhookUrl: notifyWebhookUrl
    notifyWebhookFormat: notifyWebhookFormat
  }
}

module alerts 'modules/alerts.bicep' = {
  name: 'alerts'
  scope: rg
  params: {
    namePrefix: '${abbrs.insightsScheduledQueryRules}${resourceToken}'
    location: location
    tags: tags
    applicationInsightsId: monitoring.outputs.applicationInsightsId
    alertEmail: alertEmail
  }
}

// azd stores these in the environment (.azure/<env>/.env); the post-provision hook reads them.
output AZURE_LOCATION string = location
output AZURE_TENANT_ID string = tenant().tenantId
output AZURE_RESOURCE_GROUP string = rg.name
output AZURE_FUNCTION_APP_NAME string = functionApp.outputs.name
output FUNCTION_APP_URL string = 'https://${functionApp.outputs.defaultHostName}'
output AZURE_KEY_VAULT_NAME string = vault.outputs.name
output KEY_VAULT_URL string = vault.outputs.uri
output PLATFORM_IDENTITY_CLIENT_ID string = identity.outputs.clientId
output PLATFORM_IDENTITY_PRINCIPAL_ID string = identity.outputs.principalId
output ROLE_MODE string = roleMode
output GRAPH_ENDPOINT string = graphEndpoint
output GRAPH_PERMISSIONS_IN_BICEP bool = grantGraphPermissions
output NETWORK_ISOLATION bool = networkIsolation
output AUTH_AUDIENCE string = createApiApp ? apiApp.outputs.audience : authAudience
