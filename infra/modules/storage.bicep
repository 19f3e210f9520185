// The Functions host's storage (timers, queues, deployment packages), reached with the platform
// identity only: shared-key access is off, so no connection string or account key exists to leak.
// privateOnly (networkIsolation): public network access off, reached through the blob and queue
// private endpoints only (docs/deploy.md, "Network isolation").

param name string
param location string
param tags object = {}
param deploymentContainerName string
param reconcileQueueName string
param reportsContainerName string
@description('Public network access off: only the private endpoints reach the account.')
param privateOnly bool = false
@description('The container of the operation documents (shared/operations.py OPERATIONS_CONTAINER).')
param operationsContainerName string = 'identity-operations'
@description('Days after its last change that an operation document (GET /api/operations/{id}) is deleted.')
@minValue(1)
@maxValue(365)
param operationRetentionDays int = 30

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  // checkov:skip=CKV_AZURE_35: the network rules deny by default with networkIsolation (privateOnly); without it the host's storage is reached with Entra identities only, shared keys off (tests/infra/test_network.py)
  // checkov:skip=CKV_AZURE_206: locally redundant on purpose: only the host's state (leases, queue messages, the package) and sample reports live here; the product's state is in Key Vault
  name: name
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: {
    name: 'Standard_LRS'
  }
  properties: {
    accessTier: 'Hot'
    allowBlobPublicAccess: false
    allowCrossTenantReplication: false
    allowSharedKeyAccess: false
    defaultToOAuthAuthentication: true
    minimumTlsVersion: 'TLS1_2'
    publicNetworkAccess: privateOnly ? 'Disabled' : 'Enabled'
    supportsHttpsTrafficOnly: true
    networkAcls: {
      bypass: 'AzureServices'
      defaultAction: privateOnly ? 'Deny' : 'Allow'
    }
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: storage
  name: 'default'
}

resource deploymentContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: deploymentContainerName
  properties: {
    publicAccess: 'None'
  }
}

resource reportsContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: reportsContainerName
  properties: {
    publicAccess: 'None'
  }
}

// Operation documents (one small JSON blob per write that answered 202) are history once their
// operation ended: deleted operationRetentionDays after their last change. The identity leases
// (identity-leases: one empty blob per identity name, the registry's index of names) are kept and no
// rule may cover them: their metadata is the witness of a managedIdentity identity's grants, which
// decommission needs; a completed decommission deletes its own, and a run recreates a missing one
// (docs/deploy.md, "Storage lifecycle").
resource lifecycle 'Microsoft.Storage/storageAccounts/managementPolicies@2023-05-01' = {
  parent: storage
  name: 'default'
  properties: {
    policy: {
      rules: [
        {
          name: 'expire-operation-documents'
          enabled: true
          type: 'Lifecycle'
          definition: {
            filters: {
              blobTypes: [
                'blockBlob'
              ]
              prefixMatch: [
                '${operationsContainerName}/'
              ]
            }
            actions: {
              baseBlob: {
                delete: {
                  daysAfterModificationGreaterThan: operationRetentionDays
                }
              }
            }
          }
        }
      ]
    }
  }
}

resource queueService 'Microsoft.Storage/storageAccounts/queueServices@2023-05-01' = {
  parent: storage
  name: 'default'
}

// The host creates queues on first use too; declaring them documents what the app relies on.
resource reconcileQueue 'Microsoft.Storage/storageAccounts/queueServices/queues@2023-05-01' = {
  parent: queueService
  name: reconcileQueueName
}

resource reconcilePoisonQueue 'Microsoft.Storage/storageAccounts/queueServices/queues@2023-05-01' = {
  parent: queueService
  name: '${reconcileQueueName}-poison'
}

output id string = storage.id
output name string = storage.name
output blobEndpoint string = storage.properties.primaryEndpoints.blob
