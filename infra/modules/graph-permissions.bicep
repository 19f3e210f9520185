// The platform identity's Microsoft Graph application permissions, granted with the Microsoft Graph
// Bicep extension (app-role assignments on Microsoft Graph's service principal). Exactly the rows of
// ../graph-permissions.json for the chosen ROLE_MODE: the table in docs/deploy.md is rendered from the
// same file, and tests/integration/test_permissions.py proves it is both sufficient and minimal.
//
// The deploying user needs the rights to grant Graph application permissions (Privileged Role
// Administrator, or Global Administrator). Where that is not available, deploy with
// grantGraphPermissions=false and have an administrator run scripts/postprovision.py --grant.
// Bicep deployments only add: a permission that a later mode no longer needs (switching assign ->
// verify) is removed by scripts/postprovision.py --revoke-excess.

extension microsoftGraphV1

@description('Object id of the platform identity\'s service principal.')
param principalId string

@allowed(['assign', 'verify'])
param roleMode string

var table = loadJsonContent('../graph-permissions.json')
var wanted = filter(table.permissions, p => contains(p.modes, roleMode))

resource microsoftGraph 'Microsoft.Graph/servicePrincipals@v1.0' existing = {
  appId: table.resourceAppId
}

// The app role is looked up by its value on Graph's own service principal, so a wrong id in the
// table cannot grant the wrong permission; it fails the deployment instead.
resource grants 'Microsoft.Graph/appRoleAssignedTo@v1.0' = [for p in wanted: {
  principalId: principalId
  resourceId: microsoftGraph.id
  appRoleId: filter(microsoftGraph.appRoles, r => r.value == p.permission)[0].id
}]

output granted array = [for p in wanted: p.permission]
