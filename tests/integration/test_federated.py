"""Issue #16: identities whose jobs sign in without a certificate — federated identity credentials.

End to end through the stand-ins: the platform bootstraps an identity whose app trusts a workload (a
managed identity, or a GitHub-like OIDC issuer); the job's `connection()` signs in with the workload's
own token as the client assertion and runs Get-Mailbox. Drift repair restores a removed federated
credential and leaves a foreign one alone; decommission leaves nothing of ours; refusals write nothing.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import httpx
import pytest

from devstack import Stack
from shared.runtime.connection import close_connections, connection
from shared.runtime.exchange import exchange_client

from .helpers import connection_secret, delete_identity, get_identity, post_identity, write_count

AUDIENCE = "api://AzureADTokenExchange"


def entra_issuer(stack: Stack) -> str:
    return f"{stack.settings()['AZURE_AUTHORITY_HOST']}/{stack.world.tenant_id}/v2.0"


def trusting_platform(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """A federated credential trusting the stand-ins' managed identity (the job's own)."""
    monkeypatch.setenv("ALLOWED_MANAGED_IDENTITIES", stack.world.platform.object_id)
    return {"type": "federated", "issuer": entra_issuer(stack), "subject": stack.world.platform.object_id}


def app_of(stack: Stack, name: str) -> dict[str, Any]:
    return next(a for a in stack.world.directory.applications.values()
                if a.get("uniqueName") == f"exo-automation-{name}")


def federated_of(stack: Stack, name: str) -> list[dict[str, Any]]:
    return stack.world.directory.federated_credentials.get(app_of(stack, name)["id"], [])


def read_record(stack: Stack, name: str) -> dict[str, Any]:
    return connection_secret(stack, name)[0]


def job_get_mailbox(name: str) -> tuple[list[dict[str, Any]], str]:
    async def run() -> tuple[list[dict[str, Any]], str]:
        try:
            found = await connection(name)
            mailboxes = await exchange_client(name).invoke("Get-Mailbox", {"ResultSize": "Unlimited"})
            return mailboxes, found.thumbprint
        finally:
            await close_connections()

    return asyncio.run(run())


def no_certificate_anywhere(stack: Stack, name: str) -> None:
    assert not app_of(stack, name).get("keyCredentials")
    listed = [r for r in stack.world.counter.snapshot() if r["service"] == "keyvault"
              and r["method"] == "POST" and "certificates" in r["route"]]
    assert not listed, listed  # no certificate was ever created


def test_a_job_signs_in_with_its_managed_identity_token_and_runs_get_mailbox(
        stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    trust = trusting_platform(stack, monkeypatch)
    answer = post_identity({"name": "cloud-job", "credentials": [trust]})
    assert answer.status == 201, answer.body
    credentials = federated_of(stack, "cloud-job")
    assert [(c["issuer"], c["subject"], c["audiences"]) for c in credentials] == \
        [(trust["issuer"], trust["subject"], [AUDIENCE])]
    assert credentials[0]["name"].startswith("exo-automation-cloud-job-")

    status = get_identity("cloud-job").body
    assert status["facets"]["federatedCredentials"]["state"] == "ok", status["facets"]
    no_certificate_anywhere(stack, "cloud-job")
    record = read_record(stack, "cloud-job")
    assert record["credentialType"] == "federated" and record["thumbprint"] is None
    assert record["federatedCredentials"] == [{"issuer": trust["issuer"], "subject": trust["subject"],
                                               "audience": AUDIENCE}]

    before = stack.world.counter.snapshot()
    mailboxes, thumbprint = job_get_mailbox("cloud-job")  # CONNECTION_CREDENTIAL=auto: the record decides
    assert len(mailboxes) == 5
    assert thumbprint == ""  # no certificate was read or used
    after = stack.world.counter.snapshot()
    pfx_reads = [r for r in after if r["service"] == "keyvault" and "certificate" in r["route"].lower()
                 and r not in before]
    assert not pfx_reads

    # Drift repair through the queue path (the spec read back from the record secret's tags).
    from .platform_helpers import reconcile

    with stack.world.lock:
        federated_of(stack, "cloud-job").clear()
    assert reconcile(stack, "cloud-job").error is None
    assert len(federated_of(stack, "cloud-job")) == 1
    assert reconcile(stack, "cloud-job").executed == []  # in sync now

    app_id = app_of(stack, "cloud-job")["id"]
    assert delete_identity("cloud-job").status == 200
    assert app_id not in stack.world.directory.applications
    assert get_identity("cloud-job").status == 404


def test_drift_repair_restores_ours_and_leaves_a_foreign_federated_credential(
        stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    trust = trusting_platform(stack, monkeypatch)
    assert post_identity({"name": "drifty", "credentials": [{"type": "certificate"}, trust]}).status == 201
    ours = federated_of(stack, "drifty")
    foreign = {"id": str(uuid.uuid4()), "name": "someone-elses", "issuer": "https://token.actions.githubusercontent.com",
               "subject": "repo:contoso/other:environment:prod", "audiences": [AUDIENCE], "description": None}
    with stack.world.lock:
        ours.clear()
        ours.append(foreign)

    answer = post_identity({"name": "drifty", "credentials": [{"type": "certificate"}, trust]})
    assert answer.status in (200, 201), answer.body
    names = sorted(c["name"] for c in federated_of(stack, "drifty"))
    assert "someone-elses" in names and len(names) == 2
    assert foreign in federated_of(stack, "drifty")

    # Dropping the trust removes ours only.
    assert post_identity({"name": "drifty"}).status in (200, 201)
    assert federated_of(stack, "drifty") == [foreign]

    app_id = app_of(stack, "drifty")["id"]
    assert delete_identity("drifty").status in (200, 204)
    assert app_id not in stack.world.directory.applications


@pytest.mark.parametrize(("subject_of", "setting", "reason"), [
    (lambda stack: str(uuid.uuid4()), "ALLOWED_MANAGED_IDENTITIES", "ManagedIdentityNotAllowed"),
])
def test_a_managed_identity_not_on_the_allow_list_is_refused_before_any_write(
        stack: Stack, monkeypatch: pytest.MonkeyPatch, subject_of: Any, setting: str, reason: str) -> None:
    monkeypatch.setenv("ALLOWED_MANAGED_IDENTITIES", stack.world.platform.object_id)
    writes = write_count(stack)
    answer = post_identity({"name": "refused", "credentials": [
        {"type": "certificate"}, {"type": "federated", "issuer": entra_issuer(stack), "subject": subject_of(stack)}]})
    assert answer.status == 400, answer.body
    assert answer.body["reason"] == reason
    assert setting in json.dumps(answer.body)
    assert write_count(stack) == writes


def test_an_issuer_not_on_the_allow_list_is_refused_before_any_write(stack: Stack) -> None:
    writes = write_count(stack)
    answer = post_identity({"name": "refused", "credentials": [
        {"type": "certificate"},
        {"type": "federated", "issuer": "https://token.actions.githubusercontent.com", "subject": "repo:a/b:ref:x"}]})
    assert answer.status == 400, answer.body
    assert answer.body["reason"] == "IssuerNotAllowed"
    assert "ALLOWED_FEDERATION_ISSUERS" in json.dumps(answer.body)
    assert write_count(stack) == writes


def test_the_token_endpoint_refuses_a_wrong_subject_or_audience(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    trust = trusting_platform(stack, monkeypatch)
    assert post_identity({"name": "strict", "credentials": [{"type": "certificate"}, trust]}).status == 201
    app = app_of(stack, "strict")
    settings = stack.settings()
    token_url = f"{settings['AZURE_AUTHORITY_HOST']}/{stack.world.tenant_id}/oauth2/v2.0/token"

    def exchange(assertion: str) -> httpx.Response:
        return httpx.post(token_url, data={
            "grant_type": "client_credentials", "client_id": app["appId"],
            "scope": f"{settings['EXO_ENDPOINT']}/.default",
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": assertion})

    issuer = entra_issuer(stack)
    good, _ = stack.world.issuer.issue(audience=AUDIENCE, object_id=stack.world.platform.object_id,
                                       app_id=stack.world.platform.app_id, roles=[], wids=[], issuer=issuer)
    assert exchange(good).status_code == 200
    other_subject, _ = stack.world.issuer.issue(audience=AUDIENCE, object_id=str(uuid.uuid4()),
                                                app_id=stack.world.platform.app_id, roles=[], wids=[], issuer=issuer)
    other_audience, _ = stack.world.issuer.issue(audience="api://SomethingElse",
                                                 object_id=stack.world.platform.object_id,
                                                 app_id=stack.world.platform.app_id, roles=[], wids=[], issuer=issuer)
    for assertion in (other_subject, other_audience):
        refused = exchange(assertion)
        assert refused.status_code == 400
        assert "AADSTS70021" in refused.json()["error_description"]


def test_a_github_like_workload_signs_in_with_its_token_file_and_runs_get_mailbox(
        stack: Stack, monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    oidc = stack.world.services["oidc"]
    subject = "repo:contoso/exo-jobs:environment:production"
    monkeypatch.setenv("ALLOWED_FEDERATION_ISSUERS", oidc.issuer)
    answer = post_identity({"name": "gh-job", "credentials": [
        {"type": "federated", "issuer": oidc.issuer, "subject": subject}]})
    assert answer.status == 201, answer.body
    no_certificate_anywhere(stack, "gh-job")

    # As a workflow step does: ask the runner's token service for a token with Entra's audience.
    url, request_token = oidc.workload(subject)
    token = httpx.get(f"{url}&audience={AUDIENCE}",
                      headers={"Authorization": f"bearer {request_token}"}).json()["value"]
    token_file = tmp_path / "token"
    token_file.write_text(token)
    monkeypatch.setenv("AZURE_FEDERATED_TOKEN_FILE", str(token_file))
    mailboxes, thumbprint = job_get_mailbox("gh-job")
    assert len(mailboxes) == 5 and thumbprint == ""

    # Another repository's token is refused by the token endpoint.
    other_url, other_request = oidc.workload("repo:contoso/other:environment:production")
    token_file.write_text(httpx.get(f"{other_url}&audience={AUDIENCE}",
                                    headers={"Authorization": f"bearer {other_request}"}).json()["value"])
    from shared.runtime.exchange import ExchangeSignInFailed

    with pytest.raises(ExchangeSignInFailed, match=r"trusts no workload with this token's issuer.*AADSTS70021"):
        job_get_mailbox("gh-job")


def test_a_trust_written_into_the_tags_is_judged_by_todays_allow_lists(stack: Stack) -> None:
    """A Key Vault certificate writer cannot make the app trust their own workload by editing tags."""
    from tests.integration.attackers import vault_certificate_writer

    from .platform_helpers import reconcile

    assert post_identity({"name": "tagged"}).status == 201
    forged = json.dumps({"c": 1, "f": [["https://token.actions.githubusercontent.com", "repo:evil/x:ref:main"]]})
    vault_certificate_writer(stack).set_certificate_tags("exo-tagged-cert", credentials=forged)
    stack.world.counter.reset()
    outcome = reconcile(stack, "tagged")
    assert outcome.error is not None and outcome.error.reason == "FederationRefused", outcome.error
    assert federated_of(stack, "tagged") == []
    graph_writes = [r for r in stack.world.counter.snapshot() if r["service"] == "graph"
                    and r["method"] in ("POST", "PATCH", "DELETE")]
    assert not graph_writes, graph_writes  # Key Vault: only the outcome in the registry tags


def test_decommission_leaves_a_foreign_app_trusting_the_same_workload(stack: Stack,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.devstack.entra_helpers import create_app

    trust = trusting_platform(stack, monkeypatch)
    foreign = create_app(stack.world, "someone-elses-app")
    foreign_credential = {"id": str(uuid.uuid4()), "name": "theirs", "issuer": trust["issuer"],
                          "subject": trust["subject"], "audiences": [AUDIENCE], "description": None}
    with stack.world.lock:
        stack.world.directory.federated_credentials[foreign.app["id"]] = [foreign_credential]
    assert post_identity({"name": "leaving", "credentials": [{"type": "certificate"}, trust]}).status == 201
    assert delete_identity("leaving").status == 200
    assert not any(a.get("uniqueName") == "exo-automation-leaving"
                   for a in stack.world.directory.applications.values())
    assert stack.world.directory.federated_credentials[foreign.app["id"]] == [foreign_credential]
    assert stack.world.platform.object_id in stack.world.directory.service_principals


def test_an_identity_without_a_certificate_is_listed_and_the_sweep_repairs_it_on_schedule(
        stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    from .helpers import call, invoke
    from .platform_helpers import converge, sweep

    trust = trusting_platform(stack, monkeypatch)
    assert post_identity({"name": "listed-job", "credentials": [trust]}).status == 201
    assert post_identity({"name": "with-cert"}).status == 201

    listed = {i["name"]: i for i in call("identities", "GET", "http://localhost/api/identities").body["value"]}
    assert set(listed) == {"listed-job", "with-cert"}
    assert listed["listed-job"]["credentialType"] == "federated" and listed["listed-job"]["thumbprint"] is None
    assert listed["listed-job"]["appId"] == app_of(stack, "listed-job")["appId"]
    assert listed["listed-job"]["lastResult"] == "Succeeded"
    _, _, page = invoke("status_page", "GET", "http://localhost/api/status", b"", {}, {}, {})
    assert 'data-identity="listed-job" data-condition="ok"' in page.decode()
    assert sweep(stack).due == {}

    # Drift the listings cannot see (a federated credential removed): the deep check finds it on schedule.
    with stack.world.lock:
        federated_of(stack, "listed-job").clear()
    assert sweep(stack).due == {}
    stack.world.clock.advance(25 * 3600)
    found = converge(stack)
    assert found.get("listed-job") == ["DeepCheckDue"], found
    assert len(federated_of(stack, "listed-job")) == 1

    # Drift the listings see (the app's grant removed) is found by the next sweep.
    sp = stack.world.directory.sp_by_app_id(app_of(stack, "listed-job")["appId"])
    assert sp is not None
    with stack.world.lock:
        for key in [k for k, a in stack.world.directory.app_role_assignments.items() if a["principalId"] == sp["id"]]:
            del stack.world.directory.app_role_assignments[key]
    assert converge(stack) == {"listed-job": ["ConsentMissing"]}
    assert len(job_get_mailbox("listed-job")[0]) == 5
