// The virtual network the Function App is integrated into: deployed for networkIsolation (then with the
// private DNS zones of Key Vault and Storage, linked to it) or for a Key Vault firewall (then the app
// reaches the vault through the app subnet's Key Vault service endpoint). docs/deploy.md, "Network
// isolation".

param name string
param location string
param tags object = {}
@description('Also create the private endpoint subnet and the private DNS zones (networkIsolation).')
param privateEndpoints bool

param addressPrefix string = '10.60.0.0/24'
@description('The Function App\'s integration subnet (Flex Consumption: delegated to Microsoft.App/environments).')
param appSubnetPrefix string = '10.60.0.0/26'
param privateEndpointSubnetPrefix string = '10.60.0.64/27'

var appSubnetName = 'app'
var privateEndpointSubnetName = 'private-endpoints'
// Zone names from the cloud's own suffixes (no hard-coded public-cloud host names): in the public cloud
// privatelink.vaultcore.azure.net, privatelink.blob.core.windows.net, privatelink.queue.core.windows.net.
var zoneNames = {
  vault: 'privatelink${replace(environment().suffixes.keyvaultDns, '.vault.', '.vaultcore.')}'
  blob: 'privatelink.blob.${environment().suffixes.storage}'
  queue: 'privatelink.queue.${environment().suffixes.storage}'
}

var appSubnet = {
  name: appSubnetName
  properties: {
    addressPrefix: appSubnetPrefix
    delegations: [
      {
        name: 'flex-consumption'
        properties: {
          serviceName: 'Microsoft.App/environments'
        }
      }
    ]
    // The vault firewall's virtual network rule names this subnet (without networkIsolation).
    serviceEndpoints: [
      {
        service: 'Microsoft.KeyVault'
      }
    ]
    networkSecurityGroup: {
      id: nsg.id
    }
  }
}
var privateEndpointSubnet = {
  name: privateEndpointSubnetName
  properties: {
    addressPrefix: privateEndpointSubnetPrefix
    privateEndpointNetworkPolicies: 'Enabled'
    networkSecurityGroup: {
      id: nsg.id
    }
  }
}

// No inbound rule of its own: the defaults allow only traffic from inside the virtual network.
resource nsg 'Microsoft.Network/networkSecurityGroups@2024-05-01' = {
  name: '${name}-nsg'
  location: location
  tags: tags
  properties: {
    securityRules: []
  }
}

resource vnet 'Microsoft.Network/virtualNetworks@2024-05-01' = {
  name: name
  location: location
  tags: tags
  properties: {
    addressSpace: {
      addressPrefixes: [
        addressPrefix
      ]
    }
    subnets: privateEndpoints ? [appSubnet, privateEndpointSubnet] : [appSubnet]
  }
}

resource vaultZone 'Microsoft.Network/privateDnsZones@2024-06-01' = if (privateEndpoints) {
  name: zoneNames.vault
  location: 'global'
  tags: tags
}

resource blobZone 'Microsoft.Network/privateDnsZones@2024-06-01' = if (privateEndpoints) {
  name: zoneNames.blob
  location: 'global'
  tags: tags
}

resource queueZone 'Microsoft.Network/privateDnsZones@2024-06-01' = if (privateEndpoints) {
  name: zoneNames.queue
  location: 'global'
  tags: tags
}

resource vaultZoneLink 'Microsoft.Network/privateDnsZones/virtualNetworkLinks@2024-06-01' = if (privateEndpoints) {
  parent: vaultZone
  name: name
  location: 'global'
  tags: tags
  properties: {
    registrationEnabled: false
    virtualNetwork: {
      id: vnet.id
    }
  }
}

resource blobZoneLink 'Microsoft.Network/privateDnsZones/virtualNetworkLinks@2024-06-01' = if (privateEndpoints) {
  parent: blobZone
  name: name
  location: 'global'
  tags: tags
  properties: {
    registrationEnabled: false
    virtualNetwork: {
      id: vnet.id
    }
  }
}

resource queueZoneLink 'Microsoft.Network/privateDnsZones/virtualNetworkLinks@2024-06-01' = if (privateEndpoints) {
  parent: queueZone
  name: name
  location: 'global'
  tags: tags
  properties: {
    registrationEnabled: false
    virtualNetwork: {
      id: vnet.id
    }
  }
}

output id string = vnet.id
output appSubnetId string = resourceId('Microsoft.Network/virtualNetworks/subnets', vnet.name, appSubnetName)
output privateEndpointSubnetId string = privateEndpoints ? resourceId('Microsoft.Network/virtualNetworks/subnets', vnet.name, privateEndpointSubnetName) : ''
output vaultZoneId string = privateEndpoints ? vaultZone.id : ''
output blobZoneId string = privateEndpoints ? blobZone.id : ''
output queueZoneId string = privateEndpoints ? queueZone.id : ''
