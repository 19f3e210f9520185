"""The doctor's decisions: facts about a deployment in, one check per prerequisite out (pure).

`python -m shared doctor`, `GET /api/health` and the status page show the same document:

    {"status": "ok" | "warning" | "failing",
     "checks": [{"name", "status", "observed", "fix"}, ...]}

Each check is ok, warning (works, with less, or needs attention soon) or failing (a bootstrap or
rotation will fail); `skipped` marks a check that could not run because another one failed (that
one names the cause, so a single missing prerequisite fails a single check). `fix` is the exact
step to take, with the deployment's ids filled in. The facts are gathered, read-only, by
shared/doctor_probes.py; nothing here does I/O, so every rule is unit-tested without a network.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from shared.adapters.directory import capped_validity_months, key_lifetime_limit, trusted_ca_problem
from shared.core.model import EXCHANGE_MANAGE_AS_APP_ROLE_ID, EXCHANGE_RESOURCE_APP_ID
from shared.core.permission_table import PermissionTable, plan_grants
from shared.core.roles import EXCHANGE_SUPPORTED_ROLES, PRIVILEGED_ROLES, role_name
from shared.settings import Settings

OK, WARNING, FAILING, SKIPPED = "ok", "warning", "failing", "skipped"

TOKENS = "platformTokens"
GRAPH_PERMISSIONS = "graphPermissions"
EXCHANGE = "exchangeServicePrincipal"
ALLOWED_ROLES = "allowedRoles"
POLICY = "appManagementPolicy"
KEY_VAULT = "keyVault"
STORAGE = "functionsStorage"
CALLER_AUTH = "callerAuth"
REGISTRY = "registry"
SETTINGS = "settings"
GRAPH_CHECKS = frozenset({GRAPH_PERMISSIONS, EXCHANGE, ALLOWED_ROLES, POLICY})  # they read Microsoft Graph
CHECK_ORDER = (SETTINGS, TOKENS, GRAPH_PERMISSIONS, EXCHANGE, ALLOWED_ROLES, POLICY, KEY_VAULT, STORAGE,
               CALLER_AUTH, REGISTRY)

# A malformed setting is reported by the check it belongs to, so that check (and only it) fails
# with SettingInvalid; settings without an owner here are reported by the `settings` check.
SETTING_OWNERS = {
    "ALLOWED_ROLES": ALLOWED_ROLES, "ROLE_MODE": GRAPH_PERMISSIONS, "CERTIFICATE_VALIDITY_MONTHS": POLICY,
    "KEY_VAULT_URL": KEY_VAULT, "KEY_VAULT_VERIFY_CHALLENGE_RESOURCE": KEY_VAULT,
    "AUTH_REQUIRE_APP_ROLES": CALLER_AUTH, "AUTH_AUDIENCE": CALLER_AUTH, "WEBSITE_AUTH_ENABLED": CALLER_AUTH,
}

# Settings the doctor's own reads depend on: a malformed one is never replaced by its default (that
# could send the doctor to another endpoint or tenant), so with one of them unusable only the
# settings are reported. Any other malformed setting is set aside and reported by its check.
NEEDED_AS_IS = frozenset({"KEY_VAULT_URL", "AZURE_TENANT_ID", "AZURE_CLIENT_ID", "AZURE_AUTHORITY_HOST",
                          "EXO_ORGANIZATION", "GRAPH_ENDPOINT", "EXO_ENDPOINT"})

# What the deployment (infra/) sets up: soft delete with purge protection. Key Vault states it as the
# recovery level of every object (`Recoverable`, or `CustomizedRecoverable` under 90 days' retention);
# `+Purgeable` means purge protection is off, `Purgeable` alone that soft delete is off.
DEPLOYED_RECOVERY_LEVELS = frozenset({"Recoverable", "CustomizedRecoverable"})
VAULT_ROLE_FOR = {"certificates": "Key Vault Certificates Officer", "secrets": "Key Vault Secrets Officer"}
STORAGE_ROLE_FOR = {"queue": "Storage Queue Data Contributor", "blob": "Storage Blob Data Owner"}
# What ALLOWED_ROLES may name: roles Exchange honours that are not on the never-grant list.
GRANTABLE_ROLES = ",".join(r.name for r in EXCHANGE_SUPPORTED_ROLES if r not in PRIVILEGED_ROLES)
# The issuer every certificate is created with today (shared/adapters/vault.py certificate_policy_body).


@dataclass(frozen=True)
class Check:
    name: str
    status: str
    observed: str
    fix: str = ""

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "status": self.status, "observed": self.observed, "fix": self.fix}


@dataclass(frozen=True)
class Failure:
    """A read that did not work: the product's reason (or the HTTP status) and a message without secrets."""

    reason: str
    message: str
    status: int | None = None


@dataclass(frozen=True)
class SettingProblem:
    setting: str
    reason: str
    message: str


@dataclass(frozen=True)
class Deployment:
    """Ids the fix texts name; placeholders where the running process cannot know them."""

    app_name: str = "<function-app>"
    resource_group: str = "<resource-group>"
    vault_name: str = "<key-vault>"
    graph_endpoint: str = "https://graph.microsoft.com"
    principal_id: str = "<platform-identity-object-id>"
    client_id: str = "<platform-identity-client-id>"


@dataclass(frozen=True)
class RegistryEntry:
    name: str
    last_result: str | None
    last_error: str | None = None
    state: str = "active"


@dataclass
class Facts:
    """What the probes observed. A field left None was not observed (its check says why)."""

    settings: Settings | None
    deployment: Deployment
    setting_problems: tuple[SettingProblem, ...] = ()
    # "Microsoft Graph" | "Key Vault" | "Storage" | "Exchange Online" -> None (a token) or why not
    tokens: dict[str, Failure | None] = field(default_factory=dict)
    # Whether the checked principal is the one whose tokens these are (not so for an admin's CLI run
    # naming the platform with --principal-id): only then do the token's roles say what is in effect.
    checked_as_self: bool = True
    graph_app_roles: dict[str, str] | Failure | None = None  # Graph's permissions: value -> app role id
    held: dict[str, str] | Failure | None = None  # app role id -> assignment id, on Microsoft Graph
    graph_sp_id: str = "<microsoft-graph-sp-id>"
    token_roles: frozenset[str] | None = None  # the `roles` of the platform's current Graph token
    exchange: dict[str, Any] | Failure | None = None  # Exchange Online's SP ({} when it does not exist)
    role_definitions: dict[str, dict[str, Any]] | Failure | None = None  # by template id
    policy: dict[str, Any] | Failure | None = None
    certificates: list[RegistryEntry] | Failure | None = None  # the registry listing
    secrets: Failure | None = None  # None: the secret listing worked (when certificates is set)
    recovery_level: str | None = None
    storage: dict[str, Failure | None] | None = None  # "queue"/"blob" -> None ok; None: not configured


# -- the document ------------------------------------------------------------------------------------
def overall(checks: Sequence[Check]) -> str:
    statuses = {check.status for check in checks}
    if FAILING in statuses:
        return FAILING
    return WARNING if WARNING in statuses else OK


def document(checks: Sequence[Check]) -> dict[str, Any]:
    return {"status": overall(checks), "checks": [check.to_json() for check in checks]}


def exit_code(doc: Mapping[str, Any]) -> int:
    """0 when everything is ok or only warns, 1 when something fails."""
    return 1 if doc["status"] == FAILING else 0


def summary(doc: Mapping[str, Any]) -> str:
    """One line for the status page: the overall status and the checks that are not ok."""
    counts: dict[str, list[str]] = {}
    for check in doc["checks"]:
        counts.setdefault(check["status"], []).append(check["name"])
    parts = [f"{status}: {', '.join(counts[status])}" for status in (FAILING, WARNING, SKIPPED) if status in counts]
    return f"platform {doc['status']}" + (f" ({'; '.join(parts)})" if parts else "")


def render(doc: Mapping[str, Any]) -> str:
    """The table the CLI and the post-provision hook print."""
    lines = [f"doctor: {doc['status']}"]
    for check in doc["checks"]:
        lines.append(f"  {check['status'].upper():<8} {check['name']:<25} {check['observed']}")
        if check["fix"]:
            lines.extend(f"  {'':<8} {'':<25} fix: {line}" if i == 0 else f"  {'':<8} {'':<25}      {line}"
                         for i, line in enumerate(check["fix"].splitlines()))
    return "\n".join(lines)


# -- all checks --------------------------------------------------------------------------------------
def evaluate(facts: Facts, table: PermissionTable) -> list[Check]:
    """Every check, in CHECK_ORDER."""
    owned: dict[str, list[SettingProblem]] = {}
    for problem in facts.setting_problems:
        owned.setdefault(SETTING_OWNERS.get(problem.setting, SETTINGS), []).append(problem)
    rules = {
        SETTINGS: lambda: settings_check(facts),
        TOKENS: lambda: tokens_check(facts),
        GRAPH_PERMISSIONS: lambda: permissions_check(facts, table),
        EXCHANGE: lambda: exchange_check(facts),
        ALLOWED_ROLES: lambda: allowed_roles_check(facts),
        POLICY: lambda: policy_check(facts),
        KEY_VAULT: lambda: key_vault_check(facts),
        STORAGE: lambda: storage_check(facts),
        CALLER_AUTH: lambda: caller_auth_check(facts),
        REGISTRY: lambda: registry_check(facts),
    }
    checks = []
    for name in CHECK_ORDER:
        if name != SETTINGS and name in owned:
            checks.append(setting_check(name, owned[name], facts.deployment))
        elif name != SETTINGS and facts.settings is None:
            checks.append(Check(name, SKIPPED, "not checked: the settings cannot be loaded (see the failing check "
                                               "that names the setting)"))
        elif name in GRAPH_CHECKS and facts.tokens.get("Microsoft Graph") is not None:
            checks.append(Check(name, SKIPPED, f"not checked: no Microsoft Graph token (see {TOKENS})"))
        else:
            checks.append(rules[name]())
    # A read refused because a permission is missing says so in graphPermissions: not twice.
    if any(c.name == GRAPH_PERMISSIONS and c.status == FAILING for c in checks):
        checks = [Check(c.name, SKIPPED, f"not checked: {c.observed} (see {GRAPH_PERMISSIONS})")
                  if c.status == FAILING and c.name in (EXCHANGE, ALLOWED_ROLES) and _refused(facts, c.name) else c
                  for c in checks]
    return checks


def _refused(facts: Facts, name: str) -> bool:
    value = facts.exchange if name == EXCHANGE else facts.role_definitions
    return isinstance(value, Failure) and value.status == 403


def _set_setting(deployment: Deployment, setting: str, value: str) -> str:
    return (f"az functionapp config appsettings set --name {deployment.app_name} "
            f"--resource-group {deployment.resource_group} --settings \"{setting}={value}\"")


def setting_check(name: str, problems: Sequence[SettingProblem], deployment: Deployment) -> Check:
    observed = "; ".join(f"{p.reason}: {p.message}" for p in problems)
    fixes = []
    for problem in problems:
        choices = f" (roles it may name: {GRANTABLE_ROLES})" if problem.setting == "ALLOWED_ROLES" else ""
        value = "Exchange Recipient Administrator" if choices else "<value>"
        fixes.append(f"correct the app setting {problem.setting}{choices}: "
                     + _set_setting(deployment, problem.setting, value))
    return Check(name, FAILING, observed, "\n".join(fixes))


def settings_check(facts: Facts) -> Check:
    unowned = [p for p in facts.setting_problems if p.setting not in SETTING_OWNERS]
    if unowned:
        return setting_check(SETTINGS, unowned, facts.deployment)
    if facts.setting_problems:
        return Check(SETTINGS, OK, "the other settings are well-formed (the checks that own the failing ones "
                                   "name them)")
    return Check(SETTINGS, OK, "every setting the product reads is well-formed")


# -- tokens ------------------------------------------------------------------------------------------
def tokens_check(facts: Facts) -> Check:
    got = [resource for resource, failure in facts.tokens.items() if failure is None]
    failed = {resource: failure for resource, failure in facts.tokens.items() if failure is not None}
    d = facts.deployment
    observed = f"tokens for {', '.join(got) or 'nothing'}"
    if isinstance(facts.exchange, dict) and not facts.exchange and "Exchange Online" not in facts.tokens:
        observed += f"; Exchange Online not asked (no service principal: see {EXCHANGE})"
    if not failed:
        return Check(TOKENS, OK, observed)
    observed += "; no token for " + "; ".join(f"{resource}: {f.message}" for resource, f in failed.items())
    fix = (f"The Function App runs as its user-assigned managed identity: `az functionapp identity show --name "
           f"{d.app_name} --resource-group {d.resource_group}` must list it, and AZURE_CLIENT_ID must be its client "
           f"id ({d.client_id}). AADSTS500011 (resource not found) means the tenant has no service principal for "
           "that resource. From an admin machine, `az login` first.")
    return Check(TOKENS, FAILING, observed, fix)


def _read_failed(name: str, what: str, failure: Failure, fix: str) -> Check:
    return Check(name, FAILING, f"could not read {what}: {failure.reason}: {failure.message}", fix)


# -- Graph permissions -------------------------------------------------------------------------------
def permissions_check(facts: Facts, table: PermissionTable) -> Check:
    assert facts.settings is not None
    mode = facts.settings.role_mode
    d = facts.deployment
    grant_by_hook = f"python scripts/postprovision.py --grant --mode {mode} --principal-id {d.principal_id}"
    for what, value in (("Microsoft Graph's app roles", facts.graph_app_roles),
                        (f"the app-role assignments of {d.principal_id}", facts.held)):
        if isinstance(value, Failure):
            return _read_failed(GRAPH_PERMISSIONS, what, value, "the platform needs Application.Read.All (or "
                                "Application.ReadWrite.OwnedBy) to read them; as a Privileged Role Administrator: "
                                + grant_by_hook)
    assert isinstance(facts.graph_app_roles, dict) and isinstance(facts.held, dict)
    wanted = table.for_mode(mode)
    plan = plan_grants(wanted, facts.graph_app_roles, facts.held)
    optional = {p.name: p for p in wanted if p.optional}
    missing = [(name, role_id) for name, role_id in plan.grant if name not in optional]
    missing_optional = [(name, role_id) for name, role_id in plan.grant if name in optional]
    stale = sorted(name for name in plan.present
                   if facts.checked_as_self and facts.token_roles is not None and name not in facts.token_roles)
    observed = [f"ROLE_MODE={mode}; holds {', '.join(sorted(plan.present)) or 'none of the table'}"]
    fixes: list[str] = []
    status = OK

    def grant(name: str, role_id: str) -> str:
        return (f"{name}: az rest --method POST --uri {d.graph_endpoint}/v1.0/servicePrincipals/{d.principal_id}/"
                f"appRoleAssignments --body '{{\"principalId\": \"{d.principal_id}\", \"resourceId\": "
                f"\"{facts.graph_sp_id}\", \"appRoleId\": \"{role_id}\"}}'")

    if missing or plan.unknown:
        status = FAILING
        observed.append("missing " + ", ".join([n for n, _ in missing] + plan.unknown))
        fixes.append("as a Privileged Role Administrator, grant the missing permissions: " + grant_by_hook
                     + ", or one by one:")
        fixes += [grant(name, role_id) for name, role_id in missing]
    if missing_optional:
        status = status if status == FAILING else WARNING
        for name, role_id in missing_optional:
            observed.append(f"optional {name} not held: {optional[name].why}")
            fixes.append(grant(name, role_id))
    if plan.excess:
        status = status if status == FAILING else WARNING
        observed.append(f"holds more than ROLE_MODE={mode} needs: " + ", ".join(n for n, _ in plan.excess))
        fixes += [f"remove {name}: az rest --method DELETE --uri {d.graph_endpoint}/v1.0/servicePrincipals/"
                  f"{d.principal_id}/appRoleAssignments/{assignment}" for name, assignment in plan.excess]
    if stale:
        status = status if status == FAILING else WARNING
        observed.append("granted but not yet in the platform's token (tokens are cached for up to 24 hours): "
                        + ", ".join(stale))
        fixes.append(f"wait, or restart the app for new tokens: az functionapp restart --name {d.app_name} "
                     f"--resource-group {d.resource_group}")
    return Check(GRAPH_PERMISSIONS, status, "; ".join(observed), "\n".join(fixes))


# -- Exchange Online ---------------------------------------------------------------------------------
def exchange_check(facts: Facts) -> Check:
    if isinstance(facts.exchange, Failure):
        return _read_failed(EXCHANGE, "the Office 365 Exchange Online service principal", facts.exchange,
                            "the platform needs Application.Read.All (see graphPermissions)")
    sp = facts.exchange or {}
    if not sp:
        return Check(EXCHANGE, FAILING, f"the tenant has no Office 365 Exchange Online service principal (appId "
                                        f"{EXCHANGE_RESOURCE_APP_ID}): Exchange Online is not provisioned",
                     "license Exchange Online for the tenant (any plan that includes it), or create its service "
                     f"principal as an Application Administrator: az ad sp create --id {EXCHANGE_RESOURCE_APP_ID}")
    role = next((r for r in sp.get("appRoles") or [] if str(r.get("id", "")).lower() == EXCHANGE_MANAGE_AS_APP_ROLE_ID),
                None)
    if role is None or not role.get("isEnabled", True) or "Application" not in role.get("allowedMemberTypes", []):
        return Check(EXCHANGE, FAILING, f"the Exchange Online service principal {sp.get('id')} does not offer the "
                                        "application permission Exchange.ManageAsApp "
                                        f"({EXCHANGE_MANAGE_AS_APP_ROLE_ID})",
                     "Exchange Online in this tenant cannot grant app-only access; open a support case with "
                     "Microsoft (the permission is part of every Exchange Online tenant)")
    return Check(EXCHANGE, OK, f"service principal {sp.get('id')} offers Exchange.ManageAsApp")


# -- ALLOWED_ROLES -----------------------------------------------------------------------------------
def allowed_roles_check(facts: Facts) -> Check:
    assert facts.settings is not None
    definitions = facts.role_definitions
    if isinstance(definitions, Failure):
        return _read_failed(ALLOWED_ROLES, "the tenant's role definitions", definitions,
                            "the platform needs RoleManagement.Read.Directory (verify mode) or "
                            "RoleManagement.ReadWrite.Directory (assign mode): see graphPermissions")
    definitions = definitions or {}
    found, absent = [], []
    for template_id in sorted(facts.settings.allowed_roles):
        definition = definitions.get(template_id)
        if definition is not None and definition.get("isEnabled", True):
            found.append(str(definition.get("displayName") or role_name(template_id)))
        else:
            absent.append(f"{role_name(template_id)} ({template_id})")
    if absent:
        keep = ",".join(found) or "Exchange Recipient Administrator"
        return Check(ALLOWED_ROLES, FAILING, "ALLOWED_ROLES names roles with no enabled role definition in this "
                                             "tenant: " + ", ".join(absent),
                     "remove them from ALLOWED_ROLES: " + _set_setting(facts.deployment, "ALLOWED_ROLES", keep))
    return Check(ALLOWED_ROLES, OK, "every allowed role exists in the tenant and Exchange honours it: "
                                    + ", ".join(found))


# -- the tenant's app management policy --------------------------------------------------------------
def configured_issuer(settings: Settings) -> str:
    """The Key Vault issuer new certificates get (CERTIFICATE_ISSUER; default Key Vault's self-issuer)."""
    return settings.certificate_issuer


def policy_check(facts: Facts) -> Check:
    assert facts.settings is not None
    d = facts.deployment
    policy = facts.policy
    if isinstance(policy, Failure):
        if policy.status == 403:
            return Check(POLICY, WARNING, "the tenant's app management policy is not readable without the optional "
                                          "Policy.Read.All: certificate lifetimes are not capped to it",
                         f"see {GRAPH_PERMISSIONS} for the grant of Policy.Read.All")
        return _read_failed(POLICY, "the tenant's app management policy", policy, "retry later")
    if not policy or not policy.get("isEnabled"):
        return Check(POLICY, OK, "the tenant's default app management policy is not enabled")
    months = facts.settings.default_validity_months
    restrictions = (policy.get("applicationRestrictions") or {}).get("keyCredentials") or []
    observed, fixes = [], []
    status = OK
    problem = trusted_ca_problem(restrictions, configured_issuer(facts.settings))
    if problem is not None:
        status = FAILING
        observed.append(problem)
        fixes.append("configure a Key Vault issuer from a trusted CA (az keyvault certificate issuer create "
                     f"--vault-name {d.vault_name} ...) whose root is among the tenant's trusted certificate "
                     "authorities, or exempt the platform's apps from the restriction")
    unknown = [r for r in restrictions if r.get("restrictionType") == "unknownFutureValue"]
    if unknown:
        status = status if status == FAILING else WARNING
        observed.append(f"{len(unknown)} key credential restriction(s) of a type this product does not know")
        fixes.append(f"read the policy: az rest --uri {d.graph_endpoint}/beta/policies/defaultAppManagementPolicy")
    limit = key_lifetime_limit(policy)
    if limit is not None:
        fits = capped_validity_months(months, limit.max_lifetime)
        if fits == 0:
            status = FAILING
            observed.append(f"certificates may live at most {limit.text}: not even a one-month certificate fits")
            fixes.append(f"raise the policy's asymmetricKeyLifetime maxLifetime to at least P32D (policy "
                         f"{limit.policy_id}), e.g. az rest --method PATCH --uri {d.graph_endpoint}/v1.0/policies/"
                         "defaultAppManagementPolicy --body '{...}'")
        elif fits < months:
            status = status if status == FAILING else WARNING
            observed.append(f"certificates may live at most {limit.text}: CERTIFICATE_VALIDITY_MONTHS={months} is "
                            f"capped to {fits}, so rotations come more often")
            fixes.append(_set_setting(d, "CERTIFICATE_VALIDITY_MONTHS", str(fits)))
        else:
            observed.append(f"certificates may live at most {limit.text}: {months} months fit")
    return Check(POLICY, status, "; ".join(observed) or "the policy does not restrict certificates", "\n".join(fixes))


# -- Key Vault ---------------------------------------------------------------------------------------
def _assign_vault_role(d: Deployment, role: str) -> str:
    return (f"az role assignment create --assignee-object-id {d.principal_id} --assignee-principal-type "
            f"ServicePrincipal --role \"{role}\" --scope $(az keyvault show --name {d.vault_name} --query id -o tsv)")


def _vault_failure(d: Deployment, listing: str, failure: Failure) -> tuple[str, str]:
    observed = f"listing {listing} failed: {failure.reason}: {failure.message}"
    if failure.reason == "VaultPermissionMissing":
        return observed, f"allow the platform: {_assign_vault_role(d, VAULT_ROLE_FOR[listing])}"
    if failure.reason in ("VaultUnreachable", "VaultUnavailable"):
        return observed, (f"check KEY_VAULT_URL and the network path to the vault {d.vault_name} (firewall, private "
                          "endpoint, DNS), then retry")
    return observed, "see the message"


def key_vault_check(facts: Facts) -> Check:
    d = facts.deployment
    token = facts.tokens.get("Key Vault")
    if token is not None:
        return Check(KEY_VAULT, SKIPPED, f"not checked: no Key Vault token (see {TOKENS})")
    failures = []
    if isinstance(facts.certificates, Failure):
        failures.append(_vault_failure(d, "certificates", facts.certificates))
    if facts.secrets is not None:
        failures.append(_vault_failure(d, "secrets", facts.secrets))
    if failures:
        return Check(KEY_VAULT, FAILING, "; ".join(o for o, _ in failures), "\n".join(f for _, f in failures))
    count = len(facts.certificates) if isinstance(facts.certificates, list) else 0
    observed = f"certificates and secrets listed ({count} identities)"
    level = facts.recovery_level
    if level is None:
        return Check(KEY_VAULT, OK, observed + "; soft delete and purge protection not readable until the vault "
                                               "holds an object")
    if level not in DEPLOYED_RECOVERY_LEVELS:
        return Check(KEY_VAULT, WARNING, observed + f"; recovery level {level}: soft delete with purge protection is "
                                                    "not on, as the deployment sets it",
                     f"az keyvault update --name {d.vault_name} --enable-purge-protection true")
    return Check(KEY_VAULT, OK, observed + f"; soft delete and purge protection on ({level})")


# -- Functions storage -------------------------------------------------------------------------------
def storage_check(facts: Facts) -> Check:
    d = facts.deployment
    if facts.storage is None:
        return Check(STORAGE, WARNING, "AzureWebJobsStorage is not configured in this environment, so the queue and "
                                       "blob endpoints were not checked",
                     "run the doctor where the app's settings are (GET /api/health checks them as the platform)")
    failed = {service: f for service, f in facts.storage.items() if f is not None}
    if not failed:
        return Check(STORAGE, OK, "queue and blob endpoints answer: " + ", ".join(sorted(facts.storage)))
    observed = "; ".join(f"{service}: {f.reason}: {f.message}" for service, f in failed.items())
    fixes = [f"allow the platform: az role assignment create --assignee-object-id {d.principal_id} "
             f"--assignee-principal-type ServicePrincipal --role \"{STORAGE_ROLE_FOR[service]}\" --scope <storage "
             "account id>; with a connection string, check AzureWebJobsStorage's account key"
             if f.status in (401, 403) else f"check AzureWebJobsStorage and the network path to the {service} endpoint"
             for service, f in failed.items()]
    return Check(STORAGE, FAILING, observed, "\n".join(fixes))


# -- caller authentication ---------------------------------------------------------------------------
def caller_auth_check(facts: Facts) -> Check:
    settings = facts.settings
    assert settings is not None
    d = facts.deployment
    if not settings.require_app_roles:
        return Check(CALLER_AUTH, OK, "AUTH_REQUIRE_APP_ROLES=false: the HTTP API needs a function key only")
    if settings.app_service_auth_enabled:
        return Check(CALLER_AUTH, OK, "AUTH_REQUIRE_APP_ROLES=true and App Service Authentication is on")
    if settings.auth_audiences:
        return Check(CALLER_AUTH, OK, "AUTH_REQUIRE_APP_ROLES=true and callers' Entra tokens are validated for "
                                      + ", ".join(settings.auth_audiences))
    return Check(CALLER_AUTH, FAILING, "AUTH_REQUIRE_APP_ROLES=true but neither App Service Authentication "
                                       "(WEBSITE_AUTH_ENABLED) nor AUTH_AUDIENCE is set: every HTTP request is refused",
                 "set AUTH_AUDIENCE to the API app registration: " + _set_setting(
                     d, "AUTH_AUDIENCE", "<client id>,<application ID URI>")
                 + f"\nor turn on App Service Authentication: az webapp auth update --name {d.app_name} "
                   f"--resource-group {d.resource_group} --enabled true")


# -- the registry ------------------------------------------------------------------------------------
def registry_check(facts: Facts) -> Check:
    if not isinstance(facts.certificates, list):
        return Check(REGISTRY, SKIPPED, f"not checked: the certificates could not be listed (see {KEY_VAULT})")
    attention = [e for e in facts.certificates
                 if (e.last_result is not None and e.last_result != "Succeeded") or e.state == "decommissioning"]
    if not attention:
        return Check(REGISTRY, OK, f"{len(facts.certificates)} identities, none needs an operator")
    described = []
    for entry in sorted(attention, key=lambda e: e.name):
        reason = "decommission not finished" if entry.state == "decommissioning" else entry.last_result
        described.append(f"{entry.name}: {reason}" + (f" ({entry.last_error})" if entry.last_error else ""))
    names = " ".join(e.name for e in attention[:1])
    return Check(REGISTRY, WARNING, f"{len(attention)} of {len(facts.certificates)} identities need an operator: "
                                    + "; ".join(described),
                 f"read each one's status (python -m shared status {names}), fix what it names, then reconcile it "
                 f"(python -m shared reconcile {names})")
