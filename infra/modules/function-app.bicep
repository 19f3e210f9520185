// The Function App on the Flex Consumption plan (Linux, Python 3.11), running as the platform
// identity. Every app setting the code reads is set here, and nothing else: tests/infra checks both
// directions against the code, local.settings.sample.json and the README.

param name string
param planName string
param location string
param tags object = {}
param serviceName string = 'api'

param identityId string
param identityClientId string
param storageAccountName string
param storageBlobEndpoint string
param deploymentContainerName string
param applicationInsightsConnectionString string

@allowed([2048, 4096])
param instanceMemoryMB int = 2048
@minValue(1)
@maxValue(1000)
param maximumInstanceCount int = 40
@description('Virtual network integration: the delegated subnet (networkIsolation or a Key Vault firewall); empty: none.')
param virtualNetworkSubnetId string = ''

// -- product settings (shared/settings.py); defaults are the code's own ----------------------------
param keyVaultUrl string
param tenantId string
param exoOrganization string
param graphEndpoint string
param exoEndpoint string
param authorityHost string
param allowedRoles string
param allowedManagedIdentities string
param allowedFederationIssuers string
@allowed(['assign', 'verify'])
param roleMode string
param certificateValidityMonths int
param certificateIssuer string
@description('Whole days before expiry to renew; empty: use the fraction or the default (a third of the lifetime).')
param renewBeforeDays string
@description('Fraction of the lifetime before expiry to renew, e.g. 0.33; empty: the default.')
param renewBeforeFraction string
param rotationGraceHours int
param verifySignIn bool
param verifySignInTimeoutSeconds int
param requireAppRoles bool
@description('Accepted audiences of callers\' Entra access tokens, comma-separated (client id and/or application ID URI of the API app registration); used with requireAppRoles.')
param authAudience string = ''
param reconcileQueueName string
param sweepSchedule string
param deepCheckHours int
param connectionCacheSeconds int
param reportsContainerName string
// -- the sample job (shared/functions/sample_jobs.py) ----------------------------------------------
param mailboxReportIdentity string
param mailboxReportSchedule string
@description('Webhook for operator notifications (Teams, Slack or generic JSON); a secret: prefer a Key Vault reference, @Microsoft.KeyVault(SecretUri=...). Empty: no notifications.')
@secure()
param notifyWebhookUrl string = ''
@allowed(['json', 'teams', 'slack'])
param notifyWebhookFormat string = 'json'
@description('Notify when a certificate expires in fewer days than this and has not been renewed.')
param notifyNearExpiryDays int = 14
@description('Hours after deployedAt during which a 403 from Microsoft Graph is retried as a permission not yet in effect.')
param permissionPropagationHours int = 6
@description('When this deployment ran (it grants the platform\'s Graph permissions): utcNow() of main.bicep.')
param deployedAt string

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  // checkov:skip=CKV_AZURE_225: zone redundancy is a property of the Flex Consumption platform, not of this plan resource
  name: planName
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    name: 'FC1'
    tier: 'FlexConsumption'
  }
  properties: {
    reserved: true
  }
}

resource site 'Microsoft.Web/sites@2024-04-01' = {
  name: name
  location: location
  tags: union(tags, { 'azd-service-name': serviceName })
  kind: 'functionapp,linux'
  // checkov:skip=CKV_AZURE_213: Flex Consumption has no Health check (learn.microsoft.com/azure/azure-functions/configure-monitoring#monitor-function-apps-using-health-check); GET /api/health is probed from outside (docs/deploy.md)
  // checkov:skip=CKV_AZURE_212: Flex Consumption scales per function from zero; instance counts live in functionAppConfig.scaleAndConcurrency
  // checkov:skip=CKV_AZURE_222: the HTTP API is the product's interface (function keys, and Entra app roles with requireAppRoles); networkIsolation makes the vault and storage private, not the API
  // checkov:skip=CKV_AZURE_17: callers authenticate with function keys or Entra access tokens (AUTH_REQUIRE_APP_ROLES), not client certificates
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identityId}': {}
    }
  }
  properties: {
    serverFarmId: plan.id
    virtualNetworkSubnetId: empty(virtualNetworkSubnetId) ? null : virtualNetworkSubnetId
    httpsOnly: true
    clientAffinityEnabled: false
    publicNetworkAccess: 'Enabled'
    siteConfig: {
      minTlsVersion: '1.2'
      scmMinTlsVersion: '1.2'
      ftpsState: 'Disabled'
      http20Enabled: true
      remoteDebuggingEnabled: false
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${storageBlobEndpoint}${deploymentContainerName}'
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identityId
          }
        }
      }
      runtime: {
        name: 'python'
        version: '3.11'
      }
      scaleAndConcurrency: {
        instanceMemoryMB: instanceMemoryMB
        maximumInstanceCount: maximumInstanceCount
      }
    }
  }
}

// No basic-auth publishing: deployments authenticate with Entra ID.
resource ftpPublishing 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: site
  name: 'ftp'
  properties: {
    allow: false
  }
}

resource scmPublishing 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: site
  name: 'scm'
  properties: {
    allow: false
  }
}

resource appSettings 'Microsoft.Web/sites/config@2024-04-01' = {
  // checkov reads every sites/config resource as site configuration; these findings are about other things:
  // checkov:skip=CKV_AZURE_13: App Service Authentication is not established on Flex Consumption; with AUTH_REQUIRE_APP_ROLES the app validates callers' Entra tokens itself against AUTH_AUDIENCE
  // checkov:skip=CKV_AZURE_63: web server (IIS) logs do not exist here; the host and the app log to Application Insights (APPLICATIONINSIGHTS_CONNECTION_STRING)
  // checkov:skip=CKV_AZURE_65: detailed error pages are IIS web server logs; the host and the app log to Application Insights
  // checkov:skip=CKV_AZURE_66: failed request tracing is an IIS web server log; requests and failures are in Application Insights
  // checkov:skip=CKV_AZURE_80: .NET Framework version: this is a Python app (functionAppConfig.runtime)
  // checkov:skip=CKV_AZURE_88: Flex Consumption has no content share: the package comes from a blob container (functionAppConfig.deployment)
  // checkov:skip=CKV_AZURE_222: app settings carry no network setting; the site's public access is justified on the site
  parent: site
  name: 'appsettings'
  properties: {
    // Functions host: identity-based storage (no connection string, no key) and Entra-authenticated
    // telemetry. FUNCTIONS_WORKER_RUNTIME is not set: Flex Consumption takes the runtime from
    // functionAppConfig and refuses that setting.
    AzureWebJobsStorage__accountName: storageAccountName
    AzureWebJobsStorage__credential: 'managedidentity'
    AzureWebJobsStorage__clientId: identityClientId
    APPLICATIONINSIGHTS_CONNECTION_STRING: applicationInsightsConnectionString
    APPLICATIONINSIGHTS_AUTHENTICATION_STRING: 'ClientId=${identityClientId};Authorization=AAD'
    // host.json has telemetryMode OpenTelemetry: the Python worker must then send its logs the same
    // way, or host-level entries are duplicated (docs/reference.md "Azure Functions").
    PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY: 'true'
    // The product (shared/settings.py).
    AZURE_CLIENT_ID: identityClientId
    AZURE_TENANT_ID: tenantId
    AZURE_AUTHORITY_HOST: authorityHost
    KEY_VAULT_URL: keyVaultUrl
    KEY_VAULT_VERIFY_CHALLENGE_RESOURCE: 'true'
    EXO_ORGANIZATION: exoOrganization
    GRAPH_ENDPOINT: graphEndpoint
    EXO_ENDPOINT: exoEndpoint
    ALLOWED_ROLES: allowedRoles
    ALLOWED_MANAGED_IDENTITIES: allowedManagedIdentities
    ALLOWED_FEDERATION_ISSUERS: allowedFederationIssuers
    ROLE_MODE: roleMode
    CERTIFICATE_VALIDITY_MONTHS: string(certificateValidityMonths)
    CERTIFICATE_ISSUER: certificateIssuer
    RENEW_BEFORE_DAYS: renewBeforeDays
    RENEW_BEFORE_FRACTION: renewBeforeFraction
    ROTATION_GRACE_HOURS: string(rotationGraceHours)
    VERIFY_SIGN_IN: verifySignIn ? 'true' : 'false'
    VERIFY_SIGN_IN_TIMEOUT_SECONDS: string(verifySignInTimeoutSeconds)
    // Long operations (docs/architecture.md): inline budget of write requests, per-identity lease.
    HTTP_INLINE_BUDGET_SECONDS: '20'
    IDENTITY_LEASE_SECONDS: '30'
    AUTH_REQUIRE_APP_ROLES: requireAppRoles ? 'true' : 'false'
    AUTH_AUDIENCE: authAudience
    RECONCILE_QUEUE: reconcileQueueName
    SWEEP_SCHEDULE: sweepSchedule
    DEEP_CHECK_HOURS: string(deepCheckHours)
    CONNECTION_CACHE_SECONDS: string(connectionCacheSeconds)
    CONNECTION_CREDENTIAL: 'auto'
    REPORTS_CONTAINER: reportsContainerName
    // The sample job: the identity it runs as, and when (NCRONTAB).
    MAILBOX_REPORT_IDENTITY: mailboxReportIdentity
    MAILBOX_REPORT_SCHEDULE: mailboxReportSchedule
    // Notifications (docs/operations.md): the payloads name this instance and the vault.
    NOTIFY_WEBHOOK_URL: notifyWebhookUrl
    NOTIFY_WEBHOOK_FORMAT: notifyWebhookFormat
    NOTIFY_NEAR_EXPIRY_DAYS: string(notifyNearExpiryDays)
    PLATFORM_INSTANCE_NAME: name
    // A 403 from Graph within PERMISSION_PROPAGATION_HOURS of this deployment is retried: the permissions
    // it granted can take hours to reach the platform identity's tokens (docs/reference.md).
    PLATFORM_DEPLOYED_AT: deployedAt
    PERMISSION_PROPAGATION_HOURS: string(permissionPropagationHours)
  }
}

output id string = site.id
output name string = site.name
output defaultHostName string = site.properties.defaultHostName
