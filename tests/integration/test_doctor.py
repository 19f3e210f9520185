"""Issue #15: the doctor checks every prerequisite, read-only, and says how to fix each.

A healthy stand-in tenant (as infra/ deploys it: purge protection on, Azurite as the Functions
storage) gives every check ok. Each later test removes one prerequisite in the stand-ins and sees
that check, and only that check, fail with its fix; the others stay ok (a check that could not run
because of it says `skipped`). The doctor makes no writes, and its cost does not grow with the
number of identities except for the one registry listing.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from devstack import Stack
from devstack.world import EXCHANGE_APP_ID, STORAGE_APP_ID
from shared.doctor_probes import run_doctor

from .helpers import call, requests_by_service, write_count
from .platform_helpers import bootstrap, with_platform

ROOT = Path(__file__).resolve().parents[2]
ALL_CHECKS = ["settings", "platformTokens", "graphPermissions", "exchangeServicePrincipal", "allowedRoles",
              "appManagementPolicy", "keyVault", "functionsStorage", "callerAuth", "registry"]


@pytest.fixture()
def healthy(stack: Stack, azurite: str, monkeypatch: pytest.MonkeyPatch) -> Stack:
    monkeypatch.setenv("AzureWebJobsStorage", azurite)
    stack.world.services["keyvault"].purge_protection = True  # as infra/ deploys the vault
    return stack


def doctor(**kwargs: Any) -> dict[str, Any]:
    document: dict[str, Any] = asyncio.run(run_doctor(**kwargs))
    return document


def by_name(document: dict[str, Any]) -> dict[str, dict[str, str]]:
    return {check["name"]: check for check in document["checks"]}


def not_ok(document: dict[str, Any]) -> dict[str, str]:
    return {check["name"]: check["status"] for check in document["checks"] if check["status"] != "ok"}


def only_failing(document: dict[str, Any], name: str, *fix_text: str) -> dict[str, str]:
    """Asserts that `name` is the one failing check and its fix names `fix_text`; returns that check."""
    failing = [check["name"] for check in document["checks"] if check["status"] == "failing"]
    assert failing == [name], document
    assert document["status"] == "failing"
    check = by_name(document)[name]
    for text in fix_text:
        assert text in check["fix"], check
    return check


def test_a_healthy_stack_is_all_ok_and_the_doctor_writes_nothing(healthy: Stack) -> None:
    bootstrap(healthy, "doctor-ok")
    healthy.world.counter.reset()
    document = doctor()
    assert [check["name"] for check in document["checks"]] == ALL_CHECKS
    assert not_ok(document) == {}, document
    assert document["status"] == "ok"
    assert "1 identities" in by_name(document)["registry"]["observed"]
    assert "Recoverable" in by_name(document)["keyVault"]["observed"]
    assert write_count(healthy) == 0


@pytest.mark.parametrize("removed", ["RoleManagement.ReadWrite.Directory", "AppRoleAssignment.ReadWrite.All"])
def test_a_missing_graph_permission_fails_graph_permissions(healthy: Stack, removed: str) -> None:
    held = [r for r in ("Application.ReadWrite.OwnedBy", "Application.Read.All", "AppRoleAssignment.ReadWrite.All",
                        "RoleManagement.ReadWrite.Directory", "Policy.Read.All") if r != removed]
    healthy.world.set_platform_graph_roles(held)
    document = doctor()
    platform = healthy.world.platform.object_id
    check = only_failing(document, "graphPermissions", f"servicePrincipals/{platform}/appRoleAssignments",
                         "--grant --mode assign")
    assert removed in check["observed"]
    # Reading the role definitions needs the removed RoleManagement permission: not a second failure.
    assert set(not_ok(document)) <= {"graphPermissions", "allowedRoles"}
    assert write_count(healthy) == 0


def test_a_missing_optional_permission_only_warns(healthy: Stack) -> None:
    healthy.world.set_platform_graph_roles(["Application.ReadWrite.OwnedBy", "Application.Read.All",
                                            "AppRoleAssignment.ReadWrite.All", "RoleManagement.ReadWrite.Directory"])
    document = doctor()
    assert document["status"] == "warning"
    assert not_ok(document) == {"graphPermissions": "warning", "appManagementPolicy": "warning"}
    assert "Policy.Read.All" in by_name(document)["graphPermissions"]["observed"]


def test_more_graph_permissions_than_the_mode_needs_warns(healthy: Stack) -> None:
    healthy.world.set_platform_graph_roles(["Application.ReadWrite.OwnedBy", "Application.Read.All",
                                            "AppRoleAssignment.ReadWrite.All", "RoleManagement.ReadWrite.Directory",
                                            "Policy.Read.All", "Application.ReadWrite.All"])
    document = doctor()
    assert not_ok(document) == {"graphPermissions": "warning"}
    check = by_name(document)["graphPermissions"]
    assert "Application.ReadWrite.All" in check["observed"] and "--method DELETE" in check["fix"]


def test_a_missing_key_vault_role_fails_key_vault(healthy: Stack) -> None:
    healthy.world.vault_roles[healthy.world.platform.object_id] = {"Key Vault Certificates Officer"}
    document = doctor()
    check = only_failing(document, "keyVault", "Key Vault Secrets Officer", "az role assignment create",
                         healthy.world.platform.object_id)
    assert "ForbiddenByRbac" in check["observed"] or "VaultPermissionMissing" in check["observed"]
    assert not_ok(document) == {"keyVault": "failing"}


def test_without_certificate_access_the_registry_is_skipped_not_failed(healthy: Stack) -> None:
    healthy.world.vault_roles[healthy.world.platform.object_id] = {"Key Vault Secrets Officer"}
    document = doctor()
    only_failing(document, "keyVault", "Key Vault Certificates Officer")
    assert not_ok(document) == {"keyVault": "failing", "registry": "skipped"}


def test_a_tenant_without_exchange_online_fails_its_check(healthy: Stack) -> None:
    exchange = healthy.world.resource_sp(EXCHANGE_APP_ID)
    with healthy.world.lock:
        del healthy.world.directory.service_principals[exchange["id"]]
    document = doctor()
    only_failing(document, "exchangeServicePrincipal", f"az ad sp create --id {EXCHANGE_APP_ID}")
    assert not_ok(document) == {"exchangeServicePrincipal": "failing"}
    assert "Exchange Online not asked" in by_name(document)["platformTokens"]["observed"]


@pytest.mark.parametrize(("max_lifetime", "status"), [("P20D", "failing"), ("P90D", "warning")])
def test_a_restrictive_key_lifetime_policy(healthy: Stack, max_lifetime: str, status: str) -> None:
    healthy.world.set_key_lifetime_policy(max_lifetime)
    document = doctor()
    assert not_ok(document) == {"appManagementPolicy": status}
    check = by_name(document)["appManagementPolicy"]
    assert max_lifetime in check["observed"]
    assert ("maxLifetime" if status == "failing" else "CERTIFICATE_VALIDITY_MONTHS=2") in check["fix"]


def test_a_trusted_ca_restriction_fails_with_self_issued_certificates(healthy: Stack) -> None:
    healthy.world.set_trusted_ca_restriction(["7e0c4b1c-54b5-4a4c-bb07-1a0c9f5e3c11"])
    document = doctor()
    check = only_failing(document, "appManagementPolicy", "configure a Key Vault issuer from a trusted CA")
    assert "7e0c4b1c-54b5-4a4c-bb07-1a0c9f5e3c11" in check["observed"] and "'Self'" in check["observed"]


def test_an_unknown_role_in_allowed_roles_is_a_setting_invalid(healthy: Stack,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALLOWED_ROLES", "Exchange Recipient Administrator,Made Up Role")
    document = doctor()
    check = only_failing(document, "allowedRoles", "ALLOWED_ROLES=")
    assert check["observed"].startswith("SettingInvalid: ALLOWED_ROLES")
    assert not_ok(document) == {"allowedRoles": "failing"}


def test_an_allowed_role_the_tenant_does_not_define_fails(healthy: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALLOWED_ROLES", "Exchange Recipient Administrator,Global Reader")
    with healthy.world.lock:
        del healthy.world.directory.role_definitions["f2ef992c-3afb-46b9-b7cf-a126ee74c451"]
    document = doctor()
    check = only_failing(document, "allowedRoles", "ALLOWED_ROLES=Exchange Recipient Administrator")
    assert "Global Reader" in check["observed"]


def test_storage_without_access_fails_functions_storage(healthy: Stack, azurite: str,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    wrong_key = "AccountKey=" + "A" * 86 + "==;"
    broken = ";".join(part if not part.startswith("AccountKey=") else wrong_key.rstrip(";")
                      for part in azurite.split(";"))
    monkeypatch.setenv("AzureWebJobsStorage", broken)
    document = doctor()
    check = only_failing(document, "functionsStorage", "Storage Queue Data Contributor")
    assert "queue" in check["observed"] and "blob" in check["observed"]
    assert not_ok(document) == {"functionsStorage": "failing"}


def test_a_resource_the_platform_gets_no_token_for_fails_platform_tokens(healthy: Stack) -> None:
    storage = healthy.world.resource_sp(STORAGE_APP_ID)
    with healthy.world.lock:
        del healthy.world.directory.service_principals[storage["id"]]
    document = doctor()
    check = only_failing(document, "platformTokens", "AZURE_CLIENT_ID")
    assert "no token for Storage" in check["observed"]
    assert not_ok(document) == {"platformTokens": "failing"}


def test_required_app_roles_without_a_caller_identity_fail_caller_auth(healthy: Stack,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTH_REQUIRE_APP_ROLES", "true")
    document = doctor()
    only_failing(document, "callerAuth", "AUTH_AUDIENCE", "az webapp auth update")
    monkeypatch.setenv("AUTH_AUDIENCE", "api://exo-automation")
    assert not_ok(doctor()) == {}


def test_identities_that_need_an_operator_are_listed_with_their_reasons(healthy: Stack) -> None:
    bootstrap(healthy, "doctor-fine")
    bootstrap(healthy, "doctor-broken")

    async def fail_last_run(platform: Any) -> None:
        cert = await platform.vault.observe_certificate("exo-doctor-broken-cert")
        tags = {**cert.tags, "lastResult": "GraphPermissionMissing", "lastError": "Graph refused the platform"}
        await platform.vault.update_certificate_tags("exo-doctor-broken-cert", cert.current.version, tags)

    with_platform(healthy, fail_last_run)
    document = doctor()
    assert not_ok(document) == {"registry": "warning"}
    check = by_name(document)["registry"]
    assert "doctor-broken: GraphPermissionMissing (Graph refused the platform)" in check["observed"]
    assert "doctor-fine" not in check["observed"]
    assert "python -m shared status doctor-broken" in check["fix"]


@pytest.mark.parametrize("setting", ["KEY_VAULT_URL", "GRAPH_ENDPOINT", "NOTIFY_WEBHOOK_URL"])
def test_a_malformed_url_setting_is_reported_by_name(healthy: Stack, monkeypatch: pytest.MonkeyPatch,
                                                     setting: str) -> None:
    monkeypatch.setenv(setting, "https://[kv.vault.azure.net/?sig=s3kr1t-9f8e")
    healthy.world.counter.reset()
    document = doctor()
    owner = "keyVault" if setting == "KEY_VAULT_URL" else "settings"
    check = only_failing(document, owner, setting)
    assert check["observed"].startswith(f"SettingInvalid: setting {setting} is malformed")
    if setting == "NOTIFY_WEBHOOK_URL":
        assert "s3kr1t" not in str(document)  # a webhook URL may carry its signature
        assert not_ok(document) == {"settings": "failing"}  # set aside: everything else still checked
    else:
        # An endpoint is never replaced by a default: nothing else can be checked, and nothing is asked.
        assert set(not_ok(document).values()) == {"failing", "skipped"}
        assert requests_by_service(healthy) == {}


def forget_complete_listing(azurite: str) -> None:
    from azure.storage.blob import BlobClient

    from shared.lease import LEASE_CONTAINER, SECRETS_LISTED_MARKER

    with BlobClient.from_connection_string(azurite, LEASE_CONTAINER, SECRETS_LISTED_MARKER) as marker:
        marker.delete_blob()


def test_the_cost_is_bounded_whatever_the_number_of_identities(healthy: Stack, azurite: str) -> None:
    from bench import seed

    from .platform_helpers import sweep

    bootstrap(healthy, "fleet-0000")
    template = seed.template_of(healthy, "fleet-0000")
    costs, indexed = {}, {}
    for size in (1, 30):
        seed.clone(healthy, template, [f"fleet-{i:04d}" for i in range(1, size)])
        for measured in (costs, indexed):
            healthy.world.counter.reset()
            assert doctor()["status"] == "ok"
            measured[size] = requests_by_service(healthy)
            assert write_count(healthy) == 0
            assert sweep(healthy).due == {}  # lists every secret and records it: the index is trusted after
        forget_complete_listing(azurite)  # the next size starts without a recent one
    one, thirty = costs[1], costs[30]
    assert one["graph"] == thirty["graph"] and one["entra"] == thirty["entra"]
    # Only the registry listings grow, a Key Vault page per 25 items: the certificates, and, without a recent
    # complete listing (identities without a certificate keep their entry on their connection secret), every
    # secret (each certificate identity has two: the certificate's backing secret and its connection record).
    pages = math.ceil(30 / 25) - math.ceil(1 / 25) + math.ceil(60 / 25) - math.ceil(2 / 25)
    assert thirty["keyvault"] - one["keyvault"] == pages
    assert sum(one.values()) <= 15, one
    # After one (the sweep's), the lease blobs name the identities: only the certificate pages grow, and
    # no secret is listed or read (every name in the index has a certificate).
    assert indexed[30]["keyvault"] - indexed[1]["keyvault"] == math.ceil(30 / 25) - math.ceil(1 / 25)
    assert indexed[30]["keyvault"] == thirty["keyvault"] - math.ceil(60 / 25)


def test_get_api_health_answers_the_document_as_openapi_describes_it(healthy: Stack) -> None:
    from .test_openapi import DOCUMENT_PATH, conforms

    with DOCUMENT_PATH.open(encoding="utf-8") as stream:
        api = yaml.safe_load(stream)
    response = call("health", "GET", "http://localhost/api/health")
    assert response.status == 200 and response.body["status"] == "ok"
    assert [check["name"] for check in response.body["checks"]] == ALL_CHECKS
    conforms(api, "GET", "/api/health", response)
    healthy.world.vault_roles[healthy.world.platform.object_id] = set()
    response = call("health", "GET", "http://localhost/api/health")
    assert response.status == 503 and response.body["status"] == "failing"
    conforms(api, "GET", "/api/health", response)
    assert call("health", "POST", "http://localhost/api/health").status == 405


def test_the_status_page_shows_the_doctors_verdict(healthy: Stack) -> None:
    from .helpers import invoke

    healthy.world.set_key_lifetime_policy("P20D")
    status, _, body = invoke("status_page", "GET", "http://localhost/api/status", b"", {}, {}, {})
    assert status == 200
    assert "platform failing (failing: appManagementPolicy)" in body.decode()


# -- a malformed URL setting in the handlers and the CLI ----------------------------------------------
@pytest.mark.parametrize("setting", ["KEY_VAULT_URL", "GRAPH_ENDPOINT", "NOTIFY_WEBHOOK_URL"])
def test_a_malformed_url_setting_is_a_problem_naming_it_in_handlers_and_the_cli(
        stack: Stack, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], setting: str) -> None:
    from shared.cli import main

    monkeypatch.setenv(setting, "https://[kv.vault.azure.net/")
    for function, url in (("identities", "http://localhost/api/identities"),
                          ("status_page", "http://localhost/api/status"),
                          ("health", "http://localhost/api/health")):
        response = call(function, "GET", url)
        assert response.status == 500, (function, response.body)
        assert response.body["reason"] == "SettingInvalid" and setting in response.body["detail"]
    assert main(["list"]) == 2
    assert f"setting {setting} is malformed" in capsys.readouterr().err
    assert main(["doctor"]) == 1
    assert setting in capsys.readouterr().out


# -- the CLI with --env-file, in a fresh process --------------------------------------------------------
def test_the_cli_takes_its_settings_and_trust_from_the_env_file(tmp_path: Path) -> None:
    """As the README shows it: nothing exported, and a shell that trusts only the public CAs (as many
    set SSL_CERT_FILE); the stand-ins' CA comes from devstack.env alone."""
    import certifi

    from devstack.process import ENV_FILE_NAME, start_stack_process

    settings, stop = start_stack_process(tmp_path / "devstack")
    try:
        env_file = tmp_path / "devstack" / ENV_FILE_NAME
        shell = {k: v for k, v in os.environ.items() if k not in settings}
        shell["SSL_CERT_FILE"] = shell["REQUESTS_CA_BUNDLE"] = certifi.where()

        def cli(*argv: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([sys.executable, "-m", "shared", "--env-file", str(env_file), *argv], cwd=ROOT,
                                  env=shell, capture_output=True, text=True, timeout=180, check=False)

        boot = cli("bootstrap", "cli-env-file", "--role", "Exchange Recipient Administrator")
        assert boot.returncode == 0, boot.stdout + boot.stderr
        listed = cli("--json", "list")
        assert listed.returncode == 0 and json.loads(listed.stdout)["value"][0]["name"] == "cli-env-file"
        checked = cli("--json", "doctor")
        document = json.loads(checked.stdout)
        assert checked.returncode == 0 and document["status"] in ("ok", "warning"), checked.stdout
        assert by_name(document)["platformTokens"]["status"] == "ok"
    finally:
        stop()


def test_the_postprovision_hook_prints_the_doctors_table(healthy: Stack, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    from tests.infra.hook import load_hook

    hook = load_hook()
    args = hook.parse_args(["--principal-id", healthy.world.platform.object_id], {})
    environ = {"AZURE_FUNCTION_APP_NAME": "func-contoso", "AZURE_RESOURCE_GROUP": "rg-contoso"}
    assert hook.run_doctor(args, environ) == 0
    out = capsys.readouterr().out
    assert "doctor: ok" in out and "OK       graphPermissions" in out
    monkeypatch.setenv("AUTH_REQUIRE_APP_ROLES", "true")
    assert hook.run_doctor(args, environ) == 1
    out = capsys.readouterr().out
    assert "FAILING  callerAuth" in out and "--name func-contoso --resource-group rg-contoso" in out


def test_an_identity_without_a_certificate_that_needs_an_operator_is_listed(
        healthy: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    """Its registry entry is on its connection secret, not on a certificate: the doctor reads it too."""
    from .helpers import post_identity

    monkeypatch.setenv("ALLOWED_MANAGED_IDENTITIES", healthy.world.platform.object_id)
    issuer = f"{healthy.settings()['AZURE_AUTHORITY_HOST']}/{healthy.world.tenant_id}/v2.0"
    trust = {"type": "federated", "issuer": issuer, "subject": healthy.world.platform.object_id}
    assert post_identity({"name": "doctor-certless", "credentials": [trust]}).status == 201

    async def fail_last_run(platform: Any) -> None:
        _, _, _, tags = await platform.vault.read_record_entry("exo-doctor-certless-connection")
        await platform.vault.update_record_tags("exo-doctor-certless-connection",
                                                {**tags, "lastResult": "RoleRefused", "lastError": "not allowed"})

    with_platform(healthy, fail_last_run)
    document = doctor()
    assert not_ok(document) == {"registry": "warning"}
    assert "doctor-certless: RoleRefused (not allowed)" in by_name(document)["registry"]["observed"]
    # Found through the lease blobs' names once the sweep has recorded a complete listing: one read, and the
    # secret listing's first page only (which shows the role works).
    from .platform_helpers import sweep

    sweep(healthy)
    healthy.world.counter.reset()
    assert by_name(doctor())["registry"] == by_name(document)["registry"]
    secrets = {row["route"]: row["count"] for row in healthy.world.counter.snapshot()
               if row["service"] == "keyvault" and "secrets" in row["route"] and "deleted" not in row["route"]}
    assert sorted(secrets.values()) == [1, 1] and secrets.get("/secrets") == 1, secrets
