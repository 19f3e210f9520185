// Log Analytics + workspace-based Application Insights, both with local (key) authentication off:
// telemetry is ingested with the platform identity (Monitoring Metrics Publisher, see
// role-assignments.bicep) and read with Entra ID.

param logAnalyticsName string
param applicationInsightsName string
param location string
param tags object = {}
@minValue(30)
@maxValue(730)
param retentionInDays int = 30

resource workspace 'Microsoft.OperationalInsights/workspaces@2023-09-01' = {
  name: logAnalyticsName
  location: location
  tags: tags
  properties: {
    sku: {
      name: 'PerGB2018'
    }
    retentionInDays: retentionInDays
    features: {
      disableLocalAuth: true
    }
    publicNetworkAccessForIngestion: 'Enabled'
    publicNetworkAccessForQuery: 'Enabled'
  }
}

resource appInsights 'Microsoft.Insights/components@2020-02-02' = {
  name: applicationInsightsName
  location: location
  tags: tags
  kind: 'web'
  properties: {
    Application_Type: 'web'
    WorkspaceResourceId: workspace.id
    DisableLocalAuth: true
    IngestionMode: 'LogAnalytics'
    publicNetworkAccessForIngestion: 'Enabled'
    publicNetworkAccessForQuery: 'Enabled'
  }
}

output applicationInsightsId string = appInsights.id
output applicationInsightsName string = appInsights.name
// The connection string names the ingestion endpoint and instrumentation key; with local
// authentication off it admits nothing without an Entra token, so it is not a secret.
output connectionString string = appInsights.properties.ConnectionString
output workspaceId string = workspace.id
