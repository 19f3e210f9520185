"""Issue: bootstrap through the HTTP handler, end to end against the stand-ins."""

from __future__ import annotations

import base64
import datetime as dt
import json

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from devstack import Stack
from devstack.world import EXCHANGE_APP_ID, EXCHANGE_MANAGE_AS_APP
from tests.support.crash_points import BOOTSTRAP_CRASH_POINTS as CRASH_POINTS
from tests.support.tenant import ERA, only

from .helpers import get_identity, post_identity, run_job_get_mailbox, write_count


def test_bootstrap_creates_every_facet_as_documented(stack: Stack) -> None:
    response = post_identity({"name": "mailbox-reports", "description": "nightly report"})
    assert response.status == 201, response.body
    assert response.body["result"] == "Succeeded"
    w, d = stack.world, stack.world.directory

    app = only(list(d.applications.values()), uniqueName="exo-automation-mailbox-reports")
    assert app["signInAudience"] == "AzureADMyOrg"
    assert "exo-automation-identities" in app["tags"]
    assert {"resourceAppId": EXCHANGE_APP_ID, "resourceAccess": [{"id": EXCHANGE_MANAGE_AS_APP, "type": "Role"}]} \
        in app["requiredResourceAccess"]
    sp = only(list(d.service_principals.values()), appId=app["appId"])
    assert w.platform.object_id in d.owners[app["id"]]

    exchange_sp = w.resource_sp(EXCHANGE_APP_ID)
    only(list(d.app_role_assignments.values()), principalId=sp["id"], resourceId=exchange_sp["id"],
         appRoleId=EXCHANGE_MANAGE_AS_APP)
    only(list(d.role_assignments.values()), principalId=sp["id"], roleDefinitionId=ERA, directoryScopeId="/")

    (key,) = app["keyCredentials"]
    cert = x509.load_der_x509_certificate(base64.b64decode(key["key"]))
    assert key["type"] == "AsymmetricX509Cert" and key["usage"] == "Verify"
    thumbprint = cert.fingerprint(hashes.SHA1()).hex().upper()
    assert key["endDateTime"] == cert.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")

    status = get_identity("mailbox-reports")
    assert status.status == 200
    assert status.body["inSync"] is True
    assert status.body["certificate"]["thumbprint"] == thumbprint
    assert status.body["connectionRecord"]["thumbprint"] == thumbprint
    assert all(f["state"] == "ok" for f in status.body["facets"].values())
    assert status.body["appId"] == app["appId"]


def test_connection_record_is_the_documented_contract(stack: Stack) -> None:
    from azure.identity import ManagedIdentityCredential
    from azure.keyvault.certificates import CertificateClient
    from azure.keyvault.secrets import SecretClient

    assert post_identity({"name": "contract"}).status == 201
    settings = stack.settings()
    with ManagedIdentityCredential() as credential:
        secret = SecretClient(settings["KEY_VAULT_URL"], credential).get_secret("exo-contract-connection")
        cert = CertificateClient(settings["KEY_VAULT_URL"], credential).get_certificate("exo-contract-cert")
    record = json.loads(secret.value)
    assert set(record) >= {"schemaVersion", "appId", "tenantId", "organization", "certificateName",
                           "certificateVersion", "thumbprint", "notBefore", "notAfter", "previousThumbprint",
                           "updatedAt", "keyVaultUrl", "identity"}
    assert record["schemaVersion"] == 1
    assert record["tenantId"] == stack.world.tenant_id
    assert record["organization"] == "contoso.onmicrosoft.com"
    assert record["thumbprint"] == cert.properties.x509_thumbprint.hex().upper()
    assert record["certificateVersion"] == cert.properties.version
    assert record["previousThumbprint"] is None
    assert cert.policy.exportable is True and cert.policy.content_type == "application/x-pkcs12"
    assert secret.properties.content_type.startswith("application/vnd.exo-automation.connection+json")


def test_a_job_reading_only_key_vault_runs_get_mailbox(stack: Stack) -> None:
    assert post_identity({"name": "job-runner"}).status == 201
    mailboxes = run_job_get_mailbox(stack, "job-runner")
    assert {m["UserPrincipalName"] for m in mailboxes} == {m.user_principal_name for m in stack.world.mailboxes}


def test_repeated_post_changes_nothing(stack: Stack) -> None:
    assert post_identity({"name": "repeat"}).status == 201
    before = json.dumps(stack.world.directory.applications, sort_keys=True)
    stack.world.counter.reset()
    again = post_identity({"name": "repeat"})
    assert again.status == 200
    assert again.body["plan"]["actions"] == [] and again.body["executed"] == []
    assert write_count(stack) == 0
    assert json.dumps(stack.world.directory.applications, sort_keys=True) == before


def test_dry_run_returns_the_plan_and_writes_nothing(stack: Stack) -> None:
    stack.world.counter.reset()
    response = post_identity({"name": "dry"}, params={"dryRun": "true"})
    assert response.status == 200
    assert response.body["dryRun"] is True
    assert [a["action"] for a in response.body["plan"]["actions"]] == [
        "CreateCertificateVersion", "UpsertApplication", "CreateServicePrincipal", "GrantConsent",
        "AwaitCertificate", "AddKeyCredential", "AssignRole", "VerifySignIn", "PublishConnectionRecord"]
    assert write_count(stack) == 0
    assert stack.world.directory.applications == {}




@pytest.mark.parametrize("fault", [c[1] for c in CRASH_POINTS], ids=[c[0] for c in CRASH_POINTS])
def test_a_failed_bootstrap_is_completed_by_the_next_request(stack: Stack, fault: dict,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VERIFY_SIGN_IN_TIMEOUT_SECONDS", "2")
    stack.world.faults.add(__import__("devstack.faults", fromlist=["Fault"]).Fault.from_json(fault))
    first = post_identity({"name": "crashy"})
    stack.world.faults.clear()
    if fault["path"] != r"^/certificates/":  # failing to record the outcome does not fail the run
        assert first.status >= 400, first.body
        assert first.content_type == "application/problem+json"
    second = post_identity({"name": "crashy"})
    assert second.status in (200, 201), second.body
    assert second.body["result"] == "Succeeded"
    third = post_identity({"name": "crashy"})
    assert third.body["executed"] == [], "converged: nothing left to do"

    d = stack.world.directory
    app = only(list(d.applications.values()), uniqueName="exo-automation-crashy")
    sp = only(list(d.service_principals.values()), appId=app["appId"])
    only(list(d.app_role_assignments.values()), principalId=sp["id"], appRoleId=EXCHANGE_MANAGE_AS_APP)
    only(list(d.role_assignments.values()), principalId=sp["id"])
    assert len(app["keyCredentials"]) == 1
    versions = stack.world.services["keyvault"].snapshot()
    assert json.dumps(versions).count("exo-crashy-cert") >= 1
    assert run_job_get_mailbox(stack, "crashy")


def test_concurrent_bootstraps_of_one_name_create_one_of_everything(stack: Stack) -> None:
    import threading

    results: list[int] = []

    def go() -> None:
        results.append(post_identity({"name": "racer"}).status)

    threads = [threading.Thread(target=go) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(status in (200, 201) for status in results), results
    # Racers may each have added a certificate version; the next run retires the losers' keys.
    post_identity({"name": "racer"})
    final = post_identity({"name": "racer"})
    assert final.status == 200 and final.body["executed"] == []
    d = stack.world.directory
    app = only(list(d.applications.values()), uniqueName="exo-automation-racer")
    sp = only(list(d.service_principals.values()), appId=app["appId"])
    only(list(d.app_role_assignments.values()), principalId=sp["id"], appRoleId=EXCHANGE_MANAGE_AS_APP)
    only(list(d.role_assignments.values()), principalId=sp["id"])
    assert run_job_get_mailbox(stack, "racer")


def test_only_an_app_this_run_created_is_keyed_without_reading_its_keys_back(stack: Stack) -> None:
    def key_reads() -> int:  # GET /applications/{id}?$select=keyCredentials, the only read of `key`
        return sum(r["count"] for r in stack.world.counter.snapshot()
                   if r["service"] == "graph" and r["method"] == "GET" and r["route"].endswith("/applications/{id}"))

    stack.world.counter.reset()
    assert post_identity({"name": "fresh-keys"}).status == 201
    assert key_reads() == 0, "created by this run under its lease: its keys are the POST's answer (none)"
    app = only(list(stack.world.directory.applications.values()), uniqueName="exo-automation-fresh-keys")
    assert len(app["keyCredentials"]) == 1
    with stack.world.lock:
        app["keyCredentials"] = []  # removed by hand: the next run repairs an app it did not create
    stack.world.counter.reset()
    repaired = post_identity({"name": "fresh-keys"})
    assert repaired.status == 201 and "AddKeyCredential" in [e["action"] for e in repaired.body["executed"]]
    assert key_reads() == 1, "an app that was there before the run: its keys are read back before the PATCH"
    assert len(app["keyCredentials"]) == 1
    assert run_job_get_mailbox(stack, "fresh-keys")


def test_bootstrap_survives_replication_delay(stack: Stack) -> None:
    stack.world.replication_delay = 1.5
    response = post_identity({"name": "slow-tenant"})
    assert response.status == 201, response.body
    stack.world.replication_delay = 0
    assert run_job_get_mailbox(stack, "slow-tenant")


@pytest.mark.parametrize("refusal", ["403", "400", "mixed"])
def test_bootstrap_converges_through_either_service_principal_replication_refusal(stack: Stack,
                                                                                  refusal: str) -> None:
    # docs/reference.md "Service principals": 403 "... must be in the local tenant" or 400
    # NoBackingApplicationObject until the new app has replicated (seen); both are retried.
    stack.world.sp_replication_error = refusal
    stack.world.replication_delay = 1.5
    response = post_identity({"name": f"replicating-{refusal}"})
    assert response.status == 201, response.body
    stack.world.replication_delay = 0
    assert stack.world.sp_replication_refusals >= 1  # the refusal was really met, and survived
    assert run_job_get_mailbox(stack, f"replicating-{refusal}")


def test_status_of_unknown_identity_is_404(stack: Stack) -> None:
    response = get_identity("nobody")
    assert response.status == 404
    assert response.body["reason"] == "IdentityNotFound"


def test_record_expiry_is_in_the_future(stack: Stack) -> None:
    post_identity({"name": "dates", "validityMonths": 3})
    status = get_identity("dates").body
    not_after = dt.datetime.fromisoformat(status["certificate"]["notAfter"].replace("Z", "+00:00"))
    assert dt.timedelta(days=85) < not_after - stack.world.clock.now() < dt.timedelta(days=95)
