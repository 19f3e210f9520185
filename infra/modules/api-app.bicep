// requireAppRoles: the API's own app registration, with the Microsoft Graph Bicep extension. Callers
// get an Entra access token for it (v2 tokens) carrying one of its two app roles; the app checks the
// token itself against AUTH_AUDIENCE (App Service Authentication is not relied on: see docs/deploy.md,
// "Caller authentication"). Assign the roles to users, groups or service principals on the service
// principal created here; appRoleAssignmentRequired keeps everyone else from getting a token at all.
//
// The deploying user needs the rights to create app registrations (Application Developer, or
// Application Administrator where users may not register apps).

extension microsoftGraphV1

@description('uniqueName of the registration: a re-deployment updates the same application.')
param uniqueName string
param displayName string
param tenantId string

// api://<tenant id>/<name>: one of the identifier URI forms Entra accepts without a verified domain
// (api://<name> alone is refused by its identifier URI policy). The client id is accepted too.
var identifierUri = 'api://${tenantId}/${uniqueName}'
var roles = [
  {
    value: 'ExoIdentities.Read'
    displayName: 'Read automation identities'
    description: 'Read the status, registry and audit of automation identities.'
  }
  {
    value: 'ExoIdentities.ReadWrite'
    displayName: 'Manage automation identities'
    description: 'Bootstrap, rotate and decommission automation identities.'
  }
]

resource api 'Microsoft.Graph/applications@v1.0' = {
  uniqueName: uniqueName
  displayName: displayName
  signInAudience: 'AzureADMyOrg'
  identifierUris: [
    identifierUri
  ]
  api: {
    requestedAccessTokenVersion: 2
  }
  appRoles: [for role in roles: {
    id: guid(tenantId, uniqueName, role.value)
    value: role.value
    displayName: role.displayName
    description: role.description
    allowedMemberTypes: [
      'Application'
      'User'
    ]
    isEnabled: true
  }]
}

resource apiPrincipal 'Microsoft.Graph/servicePrincipals@v1.0' = {
  appId: api.appId
  appRoleAssignmentRequired: true
}

output appId string = api.appId
output identifierUri string = identifierUri
output servicePrincipalId string = apiPrincipal.id
@description('AUTH_AUDIENCE: the audiences a caller\'s token may carry (v2 tokens carry the client id).')
output audience string = '${api.appId},${identifierUri}'
