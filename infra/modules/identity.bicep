// The platform identity: one user-assigned managed identity that the Function App runs as. It
// reaches storage, Key Vault, Application Insights and Microsoft Graph; nothing uses a key or secret.

param name string
param location string
param tags object = {}

resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: name
  location: location
  tags: tags
}

output id string = identity.id
output name string = identity.name
output clientId string = identity.properties.clientId
output principalId string = identity.properties.principalId
