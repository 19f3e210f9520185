// Log alerts on the lines the app writes (the contract is documented in docs/deploy.md, "Alerts"):
//   reconciler: identity=<name> action=<kind> result=<Succeeded|reason> detail=<text>
//   sweep:      identity=<name> daysToExpiry=<n> renewalDue=<True|False> renewalTime=<iso>
// tests/infra/test_alerts.py runs these patterns against the code's own format strings.

param namePrefix string
param location string
param tags object = {}
param applicationInsightsId string
@description('E-mail address that receives the alerts; empty: the rules fire without notifying anyone.')
param alertEmail string = ''
@description('How often the rotation-failure rule looks back (ISO 8601 duration).')
param failureWindow string = 'PT1H'
@description('Window over which an identity must stay past its renewal point before the renewal alert fires; at least two sweeps long.')
param renewalWindow string = 'P1D'

resource actionGroup 'Microsoft.Insights/actionGroups@2023-01-01' = if (!empty(alertEmail)) {
  name: '${namePrefix}-ops'
  location: 'global'
  tags: tags
  properties: {
    groupShortName: 'exo-ops'
    enabled: true
    emailReceivers: [
      {
        name: 'operators'
        emailAddress: alertEmail
        useCommonAlertSchema: true
      }
    ]
  }
}

var actionGroupId = resourceId('Microsoft.Insights/actionGroups', '${namePrefix}-ops')
var actions = empty(alertEmail) ? [] : [actionGroupId]

var rotationFailureQuery = '''
traces
| where message startswith "identity=" and message contains " action=" and message contains " result="
| extend identity = extract(@"^identity=(\S+)", 1, message),
         action = extract(@" action=(\S+)", 1, message),
         result = extract(@" result=(\S+)", 1, message)
| where isnotempty(identity) and isnotempty(result)
| summarize arg_max(timestamp, result) by identity, action
| where result != "Succeeded"
| summarize failures = count(), reasons = make_set(result, 10), actions = make_set(action, 10), lastFailure = max(timestamp) by identity
'''

var renewalOverdueQuery = '''
traces
| where message startswith "identity=" and message contains " renewalDue="
| extend identity = extract(@"^identity=(\S+)", 1, message),
         daysToExpiry = todouble(extract(@" daysToExpiry=(-?[0-9.]+)", 1, message)),
         renewalDue = tolower(extract(@" renewalDue=(\w+)", 1, message)) == "true"
| summarize arg_max(timestamp, daysToExpiry, renewalDue), dueSweeps = countif(renewalDue) by identity
| where renewalDue and dueSweeps >= 2
| project identity, daysToExpiry, dueSweeps, lastSeen = timestamp
'''

resource rotationFailures 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = {
  name: '${namePrefix}-rotation-failures'
  location: location
  tags: tags
  kind: 'LogAlert'
  properties: {
    displayName: 'Exchange automation identities: rotation or reconcile failures'
    description: 'The latest outcome of a reconcile action (bootstrap, rotation, drift repair, decommission) of an identity is a failure: a transient failure that a retry fixed does not count. `reasons` carries the product\'s reason codes.'
    severity: 2
    enabled: true
    scopes: [
      applicationInsightsId
    ]
    evaluationFrequency: 'PT15M'
    windowSize: failureWindow
    autoMitigate: true
    criteria: {
      allOf: [
        {
          query: rotationFailureQuery
          timeAggregation: 'Count'
          dimensions: [
            {
              name: 'identity'
              operator: 'Include'
              values: ['*']
            }
          ]
          operator: 'GreaterThan'
          threshold: 0
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    actions: {
      actionGroups: actions
    }
  }
}

resource renewalOverdue 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = {
  name: '${namePrefix}-renewal-overdue'
  location: location
  tags: tags
  kind: 'LogAlert'
  properties: {
    displayName: 'Exchange automation identities: past their renewal point'
    description: 'An identity has stayed closer to expiry than its renewal point for at least two sweeps: its rotation is not happening. `daysToExpiry` tells how much time is left.'
    severity: 1
    enabled: true
    scopes: [
      applicationInsightsId
    ]
    evaluationFrequency: 'PT1H'
    windowSize: renewalWindow
    autoMitigate: true
    criteria: {
      allOf: [
        {
          query: renewalOverdueQuery
          timeAggregation: 'Count'
          dimensions: [
            {
              name: 'identity'
              operator: 'Include'
              values: ['*']
            }
          ]
          operator: 'GreaterThan'
          threshold: 0
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    actions: {
      actionGroups: actions
    }
  }
}

output ruleIds array = [
  rotationFailures.id
  renewalOverdue.id
]
