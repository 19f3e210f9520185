"""Issue 4: where the tenant's app management policy caps key credential lifetimes, the certificate is capped.

Through the HTTP handler and the real SDKs against the stand-ins: Graph refuses a key credential
longer than the policy's asymmetricKeyLifetime maxLifetime (400 CredentialInvalidLifetimeAsPerAppPolicy),
so the product reads the policy (optional Policy.Read.All) before it creates a certificate version
and makes the certificate short enough, in whole months.
"""

from __future__ import annotations

import base64
import datetime as dt
import logging

import pytest
from azure.core.exceptions import ResourceNotFoundError
from cryptography import x509

from devstack import Stack
from devstack.world import DEFAULT_PLATFORM_GRAPH_ROLES

from .helpers import get_identity, post_identity, rotate, run_job_get_mailbox

POLICY_LOGGER = "exo_automation.directory"


def certificate_exists(stack: Stack, name: str) -> bool:
    from azure.identity import ManagedIdentityCredential
    from azure.keyvault.certificates import CertificateClient

    with ManagedIdentityCredential() as credential:
        client = CertificateClient(stack.settings()["KEY_VAULT_URL"], credential)
        try:
            client.get_certificate(name)
        except ResourceNotFoundError:
            return False
    return True


def the_app(stack: Stack, name: str) -> dict | None:
    found = [a for a in stack.world.directory.applications.values()
             if a.get("uniqueName") == f"exo-automation-{name}"]
    return found[0] if found else None


def test_a_90_day_policy_caps_a_12_month_certificate_and_the_key_is_accepted(stack: Stack) -> None:
    stack.world.set_key_lifetime_policy("P90D")
    response = post_identity({"name": "capped", "validityMonths": 12})
    assert response.status == 201, response.body
    created = next(e for e in response.body["executed"] if e["action"] == "CreateCertificateVersion")
    assert "validity capped to 2 months by the tenant policy (maxLifetime P90D)" in created["detail"]

    app = the_app(stack, "capped")
    assert app is not None
    (key,) = app["keyCredentials"]
    cert = x509.load_der_x509_certificate(base64.b64decode(key["key"]))
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert dt.timedelta(days=55) < lifetime <= dt.timedelta(days=90)
    assert key["endDateTime"] == cert.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")

    status = get_identity("capped")
    assert status.status == 200 and status.body["inSync"] is True
    assert run_job_get_mailbox(stack, "capped"), "the capped certificate signs in"

    # The spec keeps what was asked: a rotation is capped again, and accepted again.
    rotated = rotate("capped")
    assert rotated.status == 200, rotated.body
    assert any("capped to 2 months" in e["detail"] for e in rotated.body["executed"])


def test_a_policy_shorter_than_a_month_needs_an_operator_and_creates_nothing(stack: Stack) -> None:
    stack.world.set_key_lifetime_policy("P20D")
    writes_before = [r for r in stack.world.counter.snapshot() if r["method"] != "GET"]
    response = post_identity({"name": "too-short", "validityMonths": 12})
    assert response.status == 502, response.body
    assert response.body["reason"] == "KeyLifetimePolicyTooShort"
    assert "at most P20D" in response.body["detail"] and "at least one month" in response.body["detail"]
    assert the_app(stack, "too-short") is None
    assert not certificate_exists(stack, "exo-too-short-cert"), "checked before the certificate is created"
    graph_writes = [r for r in stack.world.counter.snapshot() if r["method"] != "GET" and r["service"] == "graph"]
    assert graph_writes == [r for r in writes_before if r["service"] == "graph"]

    # Once the policy allows a month, the same request completes.
    stack.world.set_key_lifetime_policy("P40D")
    again = post_identity({"name": "too-short", "validityMonths": 12})
    assert again.status == 201, again.body
    assert any("capped to 1 months" in e["detail"] for e in again.body["executed"])


def test_without_policy_read_all_it_works_as_before_with_a_warning(stack: Stack,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    stack.world.set_platform_graph_roles([r for r in DEFAULT_PLATFORM_GRAPH_ROLES if r != "Policy.Read.All"])
    with caplog.at_level(logging.WARNING, logger=POLICY_LOGGER):
        response = post_identity({"name": "uncapped", "validityMonths": 12})
    assert response.status == 201, response.body
    assert not any("capped" in e["detail"] for e in response.body["executed"])
    (key,) = the_app(stack, "uncapped")["keyCredentials"]
    cert = x509.load_der_x509_certificate(base64.b64decode(key["key"]))
    assert cert.not_valid_after_utc - cert.not_valid_before_utc > dt.timedelta(days=360)
    warnings = [r for r in caplog.records if r.name == POLICY_LOGGER and "Policy.Read.All" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in caplog.records]


def test_without_policy_read_all_an_enforced_policy_is_graphs_refusal(stack: Stack) -> None:
    # Why the permission is worth granting: unread, the policy surfaces as Graph's refusal of the key.
    stack.world.set_platform_graph_roles([r for r in DEFAULT_PLATFORM_GRAPH_ROLES if r != "Policy.Read.All"])
    stack.world.set_key_lifetime_policy("P90D")
    response = post_identity({"name": "refused-key", "validityMonths": 12})
    assert response.status == 502, response.body
    assert "CredentialInvalidLifetimeAsPerAppPolicy" in response.body["detail"]
    failed = next(e for e in response.body["run"]["executed"] if e["result"] != "Succeeded")
    assert failed["action"] == "AddKeyCredential"


# -- trusted certificate authorities (issue: survive a real tenant, item 8) ---------------------------------
def test_a_policy_that_refuses_self_signed_certificates_is_named_before_anything_is_created(stack: Stack) -> None:
    stack.world.set_trusted_ca_restriction(["9f0c8d2e-0000-4000-8000-00000000ca01"])
    stack.world.counter.reset()
    answer = post_identity({"name": "trusted-only"})
    assert answer.status == 502, answer.body
    assert answer.body["reason"] == "CertificateIssuerNotTrusted"
    assert "CERTIFICATE_ISSUER" in answer.body["detail"] and "trusted certificate authorities" in answer.body["detail"]
    assert not certificate_exists(stack, "trusted-only")
    assert the_app(stack, "trusted-only") is None
    writes = [r for r in stack.world.counter.snapshot()
              if r["service"] in ("graph", "keyvault") and r["method"] in ("POST", "PUT", "PATCH", "DELETE")]
    assert writes == []


def test_a_configured_issuer_is_the_one_key_vault_is_asked_for(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    """With a CA-backed issuer named, the policy of new certificates names it; the stand-in vault has no
    issuer providers, so it refuses the create as a real vault without that issuer would, and the run
    says so (no half-made identity: nothing else was created)."""
    monkeypatch.setenv("CERTIFICATE_ISSUER", "contoso-private-ca")
    answer = post_identity({"name": "ca-issued"})
    assert answer.status == 502, answer.body
    assert "contoso-private-ca" in answer.body["detail"]
    assert the_app(stack, "ca-issued") is None
    monkeypatch.setenv("CERTIFICATE_ISSUER", "self")
    assert post_identity({"name": "ca-issued"}).status == 201
