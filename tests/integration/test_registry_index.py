"""Identities without a certificate, found through the lease blobs' names (shared/lease.py `LeaseStore.index`,
shared/sweep.py `load_registry`): the sweep, `GET /api/identities` and the doctor read only the connection
secrets of names the index holds without a certificate, instead of listing every secret of the vault; every
secret is still listed without an index, when that is cheaper, and at least once every DEEP_CHECK_HOURS, so an
identity whose lease blob is missing is found and indexed again. A name in the index is only a hint
(tests/integration/test_trust_boundaries.py plays someone who writes the blobs)."""

from __future__ import annotations

import pytest
from azure.storage.blob import BlobClient, ContainerClient

from devstack import Stack
from shared.lease import LEASE_CONTAINER, SECRETS_LISTED_MARKER

from .helpers import delete_identity, post_identity
from .platform_helpers import bootstrap, reconcile, sweep, with_platform
from .test_federated import app_of, trusting_platform

HOUR = 3600.0


def secret_requests(stack: Stack) -> dict[str, int]:
    """The Key Vault secret requests counted since the last reset: "list" (every secret, a page each) and "read"
    (one secret by name)."""
    counts: dict[str, int] = {}
    for row in stack.world.counter.snapshot():
        if row["service"] == "keyvault" and row["method"] == "GET" and row["route"].startswith("^/secrets/(?P<name>"):
            counts["read"] = counts.get("read", 0) + row["count"]
        elif row["service"] == "keyvault" and row["route"] == "/secrets":
            counts["list"] = counts.get("list", 0) + row["count"]
    return counts


def counted_sweep(stack: Stack) -> tuple[dict[str, list[str]], int, dict[str, int]]:
    stack.world.counter.reset()
    result = sweep(stack)
    return result.due, result.identities, secret_requests(stack)


def lease_blobs(azurite: str) -> set[str]:
    with ContainerClient.from_connection_string(azurite, LEASE_CONTAINER) as container:
        return {blob.name for blob in container.list_blobs()}


def remove_lease_blob(azurite: str, name: str) -> None:
    """What a storage account contributor, or an operator tidying up, can do to a blob nobody leases."""
    with BlobClient.from_connection_string(azurite, LEASE_CONTAINER, name) as blob:
        blob.delete_blob()


def listed_names(stack: Stack) -> set[str]:
    from shared.service import list_identities

    return {item["name"] for item in with_platform(stack, list_identities)}


def test_the_sweep_reads_only_the_connection_secrets_the_index_names(
        stack: Stack, azurite: str, monkeypatch: pytest.MonkeyPatch) -> None:
    trust = trusting_platform(stack, monkeypatch)
    assert bootstrap(stack, "certless", credentials=[trust]).error is None
    for name in ("with-cert-1", "with-cert-2"):
        assert bootstrap(stack, name).error is None
    assert {"certless", "with-cert-1", "with-cert-2"} <= lease_blobs(azurite)

    due, identities, first = counted_sweep(stack)
    assert (due, identities) == ({}, 3)
    assert first.get("list") == 1, "no marker yet: the first sweep lists every secret"
    assert SECRETS_LISTED_MARKER in lease_blobs(azurite)

    due, identities, warm = counted_sweep(stack)
    assert (due, identities) == ({}, 3)
    assert warm == {"read": 1}, "one read: the one name of the index without a certificate"
    assert "certless" in listed_names(stack)  # GET /api/identities reads the registry the same way

    # Drift the listings see, on the identity found through the index.
    sp = stack.world.directory.sp_by_app_id(app_of(stack, "certless")["appId"])
    assert sp is not None
    with stack.world.lock:
        for key in [k for k, a in stack.world.directory.app_role_assignments.items() if a["principalId"] == sp["id"]]:
            del stack.world.directory.app_role_assignments[key]
    due, _, requests = counted_sweep(stack)
    assert due == {"certless": ["ConsentMissing"]} and requests == {"read": 1}


def test_an_identity_missing_from_the_index_is_found_by_the_periodic_listing_and_indexed_again(
        stack: Stack, azurite: str, monkeypatch: pytest.MonkeyPatch) -> None:
    trust = trusting_platform(stack, monkeypatch)
    assert bootstrap(stack, "unindexed", credentials=[trust]).error is None
    assert bootstrap(stack, "with-cert").error is None
    assert sweep(stack).due == {}  # lists every secret, records when
    stack.world.clock.advance(12 * HOUR)
    assert reconcile(stack, "unindexed").error is None  # its last run: 12 h before the next listing is due
    remove_lease_blob(azurite, "unindexed")

    # Within DEEP_CHECK_HOURS of the last complete listing, the index is trusted: the identity is not seen.
    due, identities, requests = counted_sweep(stack)
    assert (due, identities, requests) == ({}, 1, {})
    assert "unindexed" not in listed_names(stack)

    # The next sweep after DEEP_CHECK_HOURS lists every secret: found, queued so its run's lease indexes it.
    stack.world.clock.advance(12 * HOUR + 60)
    due, identities, requests = counted_sweep(stack)
    assert due == {"unindexed": ["NotIndexed"], "with-cert": ["DeepCheckDue"]}
    assert identities == 2 and requests == {"list": 1}
    for name in due:
        assert reconcile(stack, name).error is None
    assert "unindexed" in lease_blobs(azurite)
    # The marker was not renewed while the index missed an identity: this sweep lists again, finds it indexed...
    due, identities, requests = counted_sweep(stack)
    assert (due, identities, requests) == ({}, 2, {"list": 1})
    # ... and records it, so the next one reads by name.
    due, identities, requests = counted_sweep(stack)
    assert (due, identities, requests) == ({}, 2, {"read": 1})


def test_without_the_index_every_secret_is_listed(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    trust = trusting_platform(stack, monkeypatch)
    assert bootstrap(stack, "certless", credentials=[trust]).error is None
    assert sweep(stack).due == {}
    # The CLI on an admin's machine without the Functions storage's settings, or storage unreachable.
    monkeypatch.delenv("AzureWebJobsStorage")
    stack.world.counter.reset()
    assert listed_names(stack) == {"certless"}
    assert secret_requests(stack) == {"list": 1}


def test_a_disabled_connection_secret_is_still_listed(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    """Key Vault refuses to read a disabled secret (403 SecretDisabled) but lists it: the reader falls back to
    the listing rather than lose the identity."""
    from azure.identity import ManagedIdentityCredential
    from azure.keyvault.secrets import SecretClient

    trust = trusting_platform(stack, monkeypatch)
    assert bootstrap(stack, "disabled-record", credentials=[trust]).error is None
    assert sweep(stack).due == {}
    with ManagedIdentityCredential() as credential, \
            SecretClient(stack.settings()["KEY_VAULT_URL"], credential) as secrets:
        secrets.update_secret_properties("exo-disabled-record-connection", enabled=False)
    stack.world.counter.reset()
    assert listed_names(stack) == {"disabled-record"}
    assert secret_requests(stack) == {"read": 1, "list": 1}


def test_decommission_removes_the_name_from_the_index(
        stack: Stack, azurite: str, monkeypatch: pytest.MonkeyPatch) -> None:
    trust = trusting_platform(stack, monkeypatch)
    assert post_identity({"name": "short-lived", "credentials": [trust]}).status == 201
    assert "short-lived" in lease_blobs(azurite)
    assert delete_identity("short-lived", params={"dryRun": "true"}).status == 200
    assert "short-lived" in lease_blobs(azurite), "a dry run removes nothing"
    assert delete_identity("short-lived").status == 200
    assert "short-lived" not in lease_blobs(azurite)
    assert sweep(stack).due == {}
    due, identities, requests = counted_sweep(stack)
    assert (due, identities, requests) == ({}, 0, {}), "nothing left to read"
