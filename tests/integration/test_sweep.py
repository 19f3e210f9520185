"""Issue: rotation and drift repair by the sweep, each facet on its own, through the stand-ins."""

from __future__ import annotations

import base64
import datetime as dt
import json

import pytest
from cryptography.hazmat.primitives import serialization

from devstack import Stack
from devstack.pki import new_rsa_key, self_signed_certificate
from devstack.world import EXCHANGE_APP_ID, EXCHANGE_MANAGE_AS_APP
from shared.core.model import key_id_for

from .helpers import call, call_trigger, run_job_get_mailbox
from .platform_helpers import bootstrap, converge, reconcile, sweep, with_platform
from .queue_helpers import queue_client, use_fresh_queue

DAY = 86400.0


def app_of(stack: Stack, name: str) -> dict:
    return next(a for a in stack.world.directory.applications.values()
                if a.get("uniqueName") == f"exo-automation-{name}")


def sp_of(stack: Stack, name: str) -> dict:
    app_id = app_of(stack, name)["appId"]
    return next(s for s in stack.world.directory.service_principals.values() if s["appId"] == app_id)


def record_of(stack: Stack, name: str) -> dict:
    from azure.identity import ManagedIdentityCredential
    from azure.keyvault.secrets import SecretClient

    with ManagedIdentityCredential() as credential:
        client = SecretClient(stack.settings()["KEY_VAULT_URL"], credential)
        record = json.loads(client.get_secret(f"exo-{name}-connection").value or "{}")
        client.close()
    return record


def add_foreign_key(stack: Stack, name: str) -> str:
    now = stack.world.clock.now()
    cert = self_signed_certificate(new_rsa_key(), "CN=admin-added", now - dt.timedelta(days=1),
                                   now + dt.timedelta(days=900))

    der = cert.public_bytes(serialization.Encoding.DER)
    key_id = "0f0f0f0f-1111-2222-3333-444444444444"
    with stack.world.lock:
        app_of(stack, name)["keyCredentials"].append({
            "keyId": key_id, "type": "AsymmetricX509Cert", "usage": "Verify", "key": base64.b64encode(der).decode(),
            "startDateTime": (now - dt.timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "endDateTime": (now + dt.timedelta(days=900)).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "displayName": "added by an admin", "customKeyIdentifier": None,
        })
    return key_id


def test_in_sync_identities_are_not_enqueued(stack: Stack) -> None:
    for name in ("alpha", "bravo", "charlie"):
        assert bootstrap(stack, name).error is None
    result = sweep(stack)
    assert result.identities == 3
    assert result.due == {}


def test_each_facet_removed_behind_our_back_is_reported_and_repaired(stack: Stack) -> None:
    names = ["key-gone", "grant-gone", "role-gone", "record-gone", "app-gone", "untouched"]
    for name in names:
        assert bootstrap(stack, name).error is None
    foreign_key = add_foreign_key(stack, "key-gone")
    d = stack.world.directory
    with stack.world.lock:
        app = app_of(stack, "key-gone")
        app["keyCredentials"] = [k for k in app["keyCredentials"] if k["keyId"] == foreign_key]
        grant_sp = sp_of(stack, "grant-gone")["id"]
        for key in [k for k, a in d.app_role_assignments.items() if a["principalId"] == grant_sp]:
            del d.app_role_assignments[key]
        role_sp = sp_of(stack, "role-gone")["id"]
        for key in [k for k, a in d.role_assignments.items() if a["principalId"] == role_sp]:
            del d.role_assignments[key]
        gone = app_of(stack, "app-gone")
        gone_sp = sp_of(stack, "app-gone")["id"]
        del d.applications[gone["id"]]
        del d.service_principals[gone_sp]
        for key in [k for k, a in d.app_role_assignments.items() if a["principalId"] == gone_sp]:
            del d.app_role_assignments[key]
        for key in [k for k, a in d.role_assignments.items() if a["principalId"] == gone_sp]:
            del d.role_assignments[key]
    from azure.identity import ManagedIdentityCredential
    from azure.keyvault.secrets import SecretClient

    with ManagedIdentityCredential() as credential:
        client = SecretClient(stack.settings()["KEY_VAULT_URL"], credential)
        # Deleted and purged: only the deep check can notice a secret that vanished without a trace.
        client.begin_delete_secret("exo-record-gone-connection", _polling_interval=0).wait()
        client.purge_deleted_secret("exo-record-gone-connection")
        client.close()

    found = converge(stack)
    assert found["key-gone"] == ["KeyMissing"]
    assert found["grant-gone"] == ["ConsentMissing"]
    assert found["role-gone"] == ["RoleMissing"]
    assert "ApplicationMissing" in found["app-gone"]
    assert "record-gone" not in found, "a purged secret is invisible to the listings..."
    assert "untouched" not in found
    stack.world.clock.advance(25 * 3600)
    assert "record-gone" in converge(stack), "...until the deep check reconciles every identity"
    # The foreign key survived the repair, next to the re-added one.
    key_ids = {k["keyId"] for k in app_of(stack, "key-gone")["keyCredentials"]}
    assert foreign_key in key_ids and len(key_ids) == 2
    for name in names:
        assert run_job_get_mailbox(stack, name), name


def test_deleted_connection_secret_is_found_by_the_listing(stack: Stack) -> None:
    from azure.identity import ManagedIdentityCredential
    from azure.keyvault.secrets import SecretClient

    assert bootstrap(stack, "soft-deleted").error is None
    with ManagedIdentityCredential() as credential:
        client = SecretClient(stack.settings()["KEY_VAULT_URL"], credential)
        client.begin_delete_secret("exo-soft-deleted-connection", _polling_interval=0).wait()
        client.close()
    due = sweep(stack).due
    assert due == {"soft-deleted": ["RecordDeleted"]}
    outcome = reconcile(stack, "soft-deleted")
    # The live identity's record is recovered (purge protection forbids purging) and republished.
    assert outcome.error is None, outcome.error
    assert [o.action.kind for o in outcome.executed] == ["VerifySignIn", "PublishConnectionRecord"]
    assert sweep(stack).due == {}
    assert run_job_get_mailbox(stack, "soft-deleted")


def test_a_certificate_deleted_by_hand_is_recovered_not_replaced(stack: Stack) -> None:
    from azure.identity import ManagedIdentityCredential
    from azure.keyvault.certificates import CertificateClient

    assert bootstrap(stack, "undeleted").error is None
    before = record_of(stack, "undeleted")
    with ManagedIdentityCredential() as credential:
        client = CertificateClient(stack.settings()["KEY_VAULT_URL"], credential)
        client.begin_delete_certificate("exo-undeleted-cert", _polling_interval=0).wait()
        client.close()
    assert sweep(stack).due == {"undeleted": ["CertificateDeleted"]}
    outcome = reconcile(stack, "undeleted")
    assert outcome.error is None, outcome.error
    assert not [o for o in outcome.executed if o.action.kind == "CreateCertificateVersion"]
    after = record_of(stack, "undeleted")
    assert after["thumbprint"] == before["thumbprint"] and after["appId"] == before["appId"]
    assert run_job_get_mailbox(stack, "undeleted")


def test_renewal_rotates_keeps_the_old_key_through_the_grace_period_then_retires_it(
        stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROTATION_GRACE_HOURS", "24")
    assert bootstrap(stack, "rotating", validityMonths=3).error is None
    first = record_of(stack, "rotating")
    foreign_key = add_foreign_key(stack, "rotating")
    stack.world.clock.advance(70 * DAY)  # past two thirds of ~92 days
    found = converge(stack)
    assert "RenewalDue" in found["rotating"]
    second = record_of(stack, "rotating")
    assert second["thumbprint"] != first["thumbprint"]
    assert second["previousThumbprint"] == first["thumbprint"]
    keys = {k["keyId"] for k in app_of(stack, "rotating")["keyCredentials"]}
    assert {key_id_for(first["thumbprint"]), key_id_for(second["thumbprint"]), foreign_key} == keys
    assert run_job_get_mailbox(stack, "rotating")

    stack.world.clock.advance(2 * DAY)
    found = converge(stack)
    assert found["rotating"] == ["RetirementDue"]
    third = record_of(stack, "rotating")
    assert third["previousThumbprint"] is None and third["thumbprint"] == second["thumbprint"]
    keys = {k["keyId"] for k in app_of(stack, "rotating")["keyCredentials"]}
    assert keys == {key_id_for(second["thumbprint"]), foreign_key}


def test_a_version_created_outside_the_product_is_adopted(stack: Stack) -> None:
    from azure.identity import ManagedIdentityCredential
    from azure.keyvault.certificates import CertificateClient

    assert bootstrap(stack, "adopter").error is None
    before = record_of(stack, "adopter")
    with ManagedIdentityCredential() as credential:
        client = CertificateClient(stack.settings()["KEY_VAULT_URL"], credential)
        policy = client.get_certificate_policy("exo-adopter-cert")
        client.begin_create_certificate("exo-adopter-cert", policy, _polling_interval=0).result()
        client.close()
    found = converge(stack)
    assert "RecordStale" in found["adopter"] and "KeyMissing" in found["adopter"]
    after = record_of(stack, "adopter")
    assert after["thumbprint"] != before["thumbprint"] and after["previousThumbprint"] == before["thumbprint"]
    assert run_job_get_mailbox(stack, "adopter")


def sweep_requests(stack: Stack) -> dict[tuple[str, str, str], int]:
    """A sweep's requests to Graph and Key Vault, by (service, method, route); the sweep finds nothing due."""
    stack.world.counter.reset()
    assert sweep(stack).due == {}
    return {(row["service"], row["method"], row["route"]): row["count"] for row in stack.world.counter.snapshot()
            if row["service"] != "entra"}


def test_sweep_cost_does_not_grow_with_identities(stack: Stack) -> None:
    for i in range(3):
        bootstrap(stack, f"fleet-{i}")
    first = sweep_requests(stack)
    assert ("keyvault", "GET", "/secrets") in first, "the first sweep lists every secret (no marker yet)"
    small = sweep_requests(stack)
    for i in range(3, 12):
        bootstrap(stack, f"fleet-{i}")
    large = sweep_requests(stack)
    # A page holds 25 certificates; every name in the index has a certificate, so no secret is read or listed.
    assert large == small, "4x the identities, same requests (one page each)"
    assert not any(route.startswith("/secrets") for _, _, route in large), large
    # One page each of certificates, deleted certificates and deleted secrets; owned apps, Exchange's service
    # principal (once per platform) and its grants, one role's assignments.
    assert sum(large.values()) <= 7, large


def test_failed_identities_are_retried_with_backoff(stack: Stack) -> None:
    assert bootstrap(stack, "flaky").error is None
    with stack.world.lock:
        app = app_of(stack, "flaky")
        app["keyCredentials"] = []
    stack.world.faults.add(__import__("devstack.faults", fromlist=["Fault"]).Fault.from_json(
        {"service": "graph", "method": "PATCH", "path": r"/applications/[^/(]+$", "status": 500, "count": 1}))
    assert sweep(stack).due == {"flaky": ["KeyMissing"]}
    assert reconcile(stack, "flaky").error is not None
    # Still broken, but the failure's back-off gates the re-queue: no run (and no notification)
    # on every sweep while nothing it depends on changed.
    assert sweep(stack).due == {}
    stack.world.clock.advance(600)
    assert sweep(stack).due["flaky"] == ["KeyMissing", "RetryAfterFailure"]
    assert reconcile(stack, "flaky").error is None
    assert sweep(stack).due == {}


def test_timer_and_queue_handlers_round_trip_through_azurite(stack: Stack, azurite: str,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import azure.functions as func

    queue_name = use_fresh_queue(monkeypatch)
    assert bootstrap(stack, "queued").error is None
    with stack.world.lock:
        sp = sp_of(stack, "queued")["id"]
        for key in [k for k, a in stack.world.directory.app_role_assignments.items()
                    if a["principalId"] == sp and a["appRoleId"] == EXCHANGE_MANAGE_AS_APP]:
            del stack.world.directory.app_role_assignments[key]

    class Timer:  # the host's TimerRequest: only past_due is read
        past_due = False

    # The sweep sends its messages itself (visibility delays), base64-encoded as the host reads them.
    call_trigger("sweep_identities", timer=Timer())
    queue = queue_client(azurite, queue_name)
    (received,) = list(queue.receive_messages())
    body = json.loads(received.content)
    assert body["name"] == "queued" and body["reasons"] == ["ConsentMissing"] and body["sweepId"]
    message = func.QueueMessage(id=received.id, body=received.content.encode())
    call_trigger("reconcile_identity", message=message)
    queue.delete_message(received)
    queue.close()
    assert sweep(stack).due == {}
    status = call("identity", "GET", "http://localhost/api/identities/queued", route_params={"name": "queued"})
    assert status.body["facets"]["consent"]["state"] == "ok"


def test_poison_message_shows_in_status(stack: Stack) -> None:
    import azure.functions as func

    assert bootstrap(stack, "poisoned").error is None
    body = json.dumps({"name": "poisoned", "reasons": ["KeyMissing"], "sweepId": "x"})
    call_trigger("record_poisoned_reconcile", message=func.QueueMessage(id="1", body=body.encode()))
    status = call("identity", "GET", "http://localhost/api/identities/poisoned", route_params={"name": "poisoned"})
    assert status.body["lastResult"]["result"] == "PoisonMessage"


def test_a_poisoned_message_is_recorded_under_the_lease_and_never_over_a_run_in_progress(
        stack: Stack, azurite: str) -> None:
    from azure.storage.blob import BlobClient

    from shared import service
    from shared.lease import LEASE_CONTAINER

    assert bootstrap(stack, "contended").error is None
    certificate = "exo-contended-cert"

    def tags() -> dict[str, str]:
        (cert,) = [c for c in stack.world.services["keyvault"].snapshot()["certificates"] if c["name"] == certificate]
        return dict(cert["versions"][-1]["tags"])

    before = tags()
    blob = BlobClient.from_connection_string(azurite, LEASE_CONTAINER, "contended")
    holder = blob.acquire_lease(lease_duration=15)  # another run is changing the identity
    try:
        recorded = with_platform(stack, lambda p: service.record_poison(p, "contended", lease_wait=0.5))
        assert recorded is False
        assert tags() == before, "the registry tags are the holder's to write: nothing changed"
    finally:
        holder.release()
    assert with_platform(stack, lambda p: service.record_poison(p, "contended")) is True
    assert tags()["lastResult"] == "PoisonMessage"
    assert blob.get_blob_properties().lease.state == "available", "the lease was taken and handed back"
    blob.close()


def test_application_drift_is_repaired_without_undoing_an_admins_changes(stack: Stack) -> None:
    assert bootstrap(stack, "renamed").error is None
    graph_read = {"resourceAppId": "00000003-0000-0000-c000-000000000000",
                  "resourceAccess": [{"id": "9a5d68dd-52b0-4cc2-bd40-abcf44ac3a30", "type": "Role"}]}
    with stack.world.lock:
        app = app_of(stack, "renamed")
        app["displayName"] = "Mailbox reports (owned by the messaging team)"
        app["requiredResourceAccess"] = [graph_read]  # Exchange.ManageAsApp dropped, another permission added
        app["tags"] = ["cost-centre-42"]
    # Without our tag the app is still in the platform's owned-apps listing: ownership, not the tag, makes it ours.
    assert sweep(stack).due == {"renamed": ["ApplicationDrift"]}
    outcome = reconcile(stack, "renamed")
    assert outcome.error is None
    assert [o.action.kind for o in outcome.executed] == ["UpsertApplication"]
    app = app_of(stack, "renamed")
    assert app["displayName"] == "Mailbox reports (owned by the messaging team)"
    assert graph_read in app["requiredResourceAccess"]
    assert {"resourceAppId": EXCHANGE_APP_ID, "resourceAccess": [{"id": EXCHANGE_MANAGE_AS_APP, "type": "Role"}]} \
        in app["requiredResourceAccess"]
    assert set(app["tags"]) == {"cost-centre-42", "exo-automation-identities"}
    assert sweep(stack).due == {}
