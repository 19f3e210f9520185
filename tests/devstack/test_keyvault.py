"""The Key Vault stand-in, driven only through the real azure-keyvault SDK clients (and raw HTTP
where the point is what the wire looks like before any SDK handling)."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import json
import ssl
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError
from azure.keyvault.certificates import (
    CertificateClient,
    CertificateContentType,
    CertificatePolicy,
    CertificatePolicyAction,
    KeyVaultCertificate,
    LifetimeAction,
)
from azure.keyvault.certificates.aio import CertificateClient as AsyncCertificateClient
from azure.keyvault.secrets import SecretClient
from azure.keyvault.secrets.aio import SecretClient as AsyncSecretClient
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from devstack import Stack
from devstack.keyvault import KeyVaultService, add_months
from devstack.pki import new_rsa_key, private_key_pem, self_signed_certificate

from .kv_helpers import make_async_credential, make_credential

DAY = 86400.0


@pytest.fixture()
def kv_credential(stack: Stack) -> Iterator[Any]:
    credential = make_credential(stack)
    yield credential
    credential.close()


@pytest.fixture()
def kv_async_credential(stack: Stack) -> Any:
    return make_async_credential(stack)


@pytest.fixture()
def vault_url(stack: Stack) -> str:
    return stack.settings()["KEY_VAULT_URL"]


@pytest.fixture()
def certs(vault_url: str, kv_credential: Any) -> Iterator[CertificateClient]:
    with CertificateClient(vault_url, kv_credential) as client:
        yield client


@pytest.fixture()
def secrets(vault_url: str, kv_credential: Any) -> Iterator[SecretClient]:
    with SecretClient(vault_url, kv_credential) as client:
        yield client


@pytest.fixture()
def vault(stack: Stack) -> KeyVaultService:
    service = stack.world.services["keyvault"]
    assert isinstance(service, KeyVaultService)
    return service


def policy(subject: str, **kwargs: Any) -> CertificatePolicy:
    kwargs.setdefault("validity_in_months", 12)
    return CertificatePolicy(issuer_name="Self", subject=subject, **kwargs)


def create(client: CertificateClient, name: str, **kwargs: Any) -> KeyVaultCertificate:
    tags = kwargs.pop("tags", None)
    result = client.begin_create_certificate(name, policy(f"CN={name}", **kwargs), tags=tags,
                                             _polling_interval=0).result()
    assert isinstance(result, KeyVaultCertificate), result
    return result


def wire_error(exc: HttpResponseError) -> dict[str, Any]:
    assert exc.response is not None
    error: dict[str, Any] = exc.response.json()["error"]
    return error


def loaded(certificate: KeyVaultCertificate) -> x509.Certificate:
    assert certificate.cer is not None
    return x509.load_der_x509_certificate(bytes(certificate.cer))


def approx(moment: dt.datetime, expected: dt.datetime, seconds: float = 5.0) -> bool:
    return abs((moment - expected).total_seconds()) <= seconds


# -- certificates ---------------------------------------------------------------------------------------


def test_create_issues_a_real_certificate_per_policy_on_the_simulated_clock(
        stack: Stack, certs: CertificateClient) -> None:
    stack.world.clock.advance(40 * DAY)
    created_at = stack.world.clock.now()
    cert = create(certs, "exo-app-one", key_size=3072, enhanced_key_usage=["1.3.6.1.5.5.7.3.2"],
                  key_usage=["digitalSignature"], validity_in_months=6)

    der = bytes(cert.cer or b"")
    assert cert.properties.x509_thumbprint == hashlib.sha1(der).digest()
    parsed = loaded(cert)
    assert parsed.subject.rfc4514_string() == "CN=exo-app-one"
    assert parsed.public_key().key_size == 3072  # type: ignore[union-attr]
    assert parsed.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value[0].dotted_string == \
        "1.3.6.1.5.5.7.3.2"
    usage = parsed.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and not usage.key_encipherment
    # Key Vault backdates self-signed certificates by 10 minutes; validity counts from creation.
    assert approx(parsed.not_valid_before_utc, created_at - dt.timedelta(minutes=10))
    assert approx(parsed.not_valid_after_utc, add_months(created_at, 6))
    assert cert.properties.not_before == parsed.not_valid_before_utc.replace(microsecond=0)
    assert cert.properties.enabled is True
    assert cert.properties.recovery_level == "Recoverable+Purgeable"
    assert cert.secret_id == f"{certs.vault_url}/secrets/exo-app-one/{cert.properties.version}"
    assert cert.policy is not None
    assert cert.policy.lifetime_actions is not None
    assert [(a.action, a.lifetime_percentage) for a in cert.policy.lifetime_actions] == [
        (CertificatePolicyAction.auto_renew, 80)]
    operation = certs.get_certificate_operation("exo-app-one")
    assert operation.status == "completed"
    assert operation.target == f"{certs.vault_url}/certificates/exo-app-one"
    assert operation.csr is not None
    csr = x509.load_der_x509_csr(bytes(operation.csr))
    assert csr.public_key().public_numbers() == parsed.public_key().public_numbers()  # type: ignore[union-attr]


def test_backing_secret_holds_the_pfx_with_the_matching_private_key(
        certs: CertificateClient, secrets: SecretClient) -> None:
    cert = create(certs, "exo-app-pfx")
    secret = secrets.get_secret("exo-app-pfx", cert.properties.version)

    assert secret.properties.content_type == "application/x-pkcs12"
    assert secret.properties.managed is True
    assert secret.properties.key_id == cert.key_id
    assert secret.value is not None
    key, pfx_cert, extra = pkcs12.load_key_and_certificates(base64.b64decode(secret.value), None)
    assert key is not None and pfx_cert is not None and not extra
    assert pfx_cert.public_bytes(serialization.Encoding.DER) == bytes(cert.cer or b"")
    assert key.public_key().public_numbers() == pfx_cert.public_key().public_numbers()  # type: ignore[union-attr]
    # The secret's latest version is the certificate's.
    assert secrets.get_secret("exo-app-pfx").properties.version == cert.properties.version


def test_pem_and_non_exportable_policies_shape_the_secret(certs: CertificateClient, secrets: SecretClient) -> None:
    pem = create(certs, "exo-app-pem", content_type=CertificateContentType.pem)
    value = secrets.get_secret("exo-app-pem").value or ""
    assert value.startswith("-----BEGIN PRIVATE KEY-----")
    key = serialization.load_pem_private_key(value.encode(), None)
    pem_cert = x509.load_pem_x509_certificate(value.encode())
    assert pem_cert.public_bytes(serialization.Encoding.DER) == bytes(pem.cer or b"")
    assert key.public_key().public_numbers() == pem_cert.public_key().public_numbers()  # type: ignore[union-attr]

    locked_cert = create(certs, "exo-app-locked", exportable=False, key_type="RSA")
    locked = pkcs12.load_pkcs12(base64.b64decode(secrets.get_secret("exo-app-locked").value or ""), None)
    assert locked.key is None
    certificates = [c.certificate for c in ([locked.cert] if locked.cert else []) + locked.additional_certs]
    assert [c.public_bytes(serialization.Encoding.DER) for c in certificates] == [bytes(locked_cert.cer or b"")]


def test_versions_accumulate_and_stay_addressable(certs: CertificateClient) -> None:
    first = create(certs, "exo-app-versions")
    second = create(certs, "exo-app-versions")

    assert first.properties.version != second.properties.version
    assert first.properties.x509_thumbprint != second.properties.x509_thumbprint
    assert certs.get_certificate("exo-app-versions").properties.version == second.properties.version
    again = certs.get_certificate_version("exo-app-versions", first.properties.version or "")
    assert again.cer == first.cer
    listed = [p.version for p in certs.list_properties_of_certificate_versions("exo-app-versions")]
    assert sorted(listed) == sorted([first.properties.version, second.properties.version])


def test_listing_pages_with_next_links_and_includes_backing_secrets(
        certs: CertificateClient, secrets: SecretClient) -> None:
    names = [f"paged-{i:02d}" for i in range(27)]
    pollers = [certs.begin_create_certificate(n, policy(f"CN={n}"), _polling_interval=0) for n in names]
    for poller in pollers:
        assert isinstance(poller.result(), KeyVaultCertificate)

    default_pages = [list(page) for page in certs.list_properties_of_certificates().by_page()]
    assert [len(p) for p in default_pages] == [25, 2]
    assert sorted(p.name for page in default_pages for p in page) == names
    small_pages = [list(page) for page in certs.list_properties_of_certificates(max_page_size=10).by_page()]
    assert [len(p) for p in small_pages] == [10, 10, 7]
    item = small_pages[0][0]
    assert item.x509_thumbprint is not None and item.version is None  # list items are versionless

    listed_secrets = list(secrets.list_properties_of_secrets())
    assert sorted(s.name for s in listed_secrets) == names
    assert all(s.managed and s.content_type == "application/x-pkcs12" for s in listed_secrets)


def test_maxresults_above_25_is_refused(certs: CertificateClient, secrets: SecretClient) -> None:
    create(certs, "exo-app-max")
    assert len(list(certs.list_properties_of_certificates(max_page_size=25))) == 1
    with pytest.raises(HttpResponseError) as caught:
        list(certs.list_properties_of_certificates(max_page_size=26))
    assert caught.value.status_code == 400
    assert wire_error(caught.value)["code"] == "BadParameter"
    with pytest.raises(HttpResponseError) as caught:
        list(secrets.list_properties_of_secrets(max_page_size=100))
    assert caught.value.status_code == 400


def test_tags_round_trip_and_patch_without_a_new_version(certs: CertificateClient, secrets: SecretClient) -> None:
    cert = create(certs, "exo-app-tags", tags={"owner": "exo-automation", "app": "one"})
    assert cert.properties.tags == {"owner": "exo-automation", "app": "one"}

    updated = certs.update_certificate_properties("exo-app-tags", tags={"owner": "exo-automation",
                                                                       "state": "retired"}, enabled=False)
    assert updated.properties.tags == {"owner": "exo-automation", "state": "retired"}
    assert updated.properties.enabled is False
    assert updated.properties.version == cert.properties.version
    fetched = certs.get_certificate("exo-app-tags")
    assert fetched.properties.tags == {"owner": "exo-automation", "state": "retired"}
    assert len(list(certs.list_properties_of_certificate_versions("exo-app-tags"))) == 1
    # A disabled certificate's secret cannot be read.
    with pytest.raises(HttpResponseError) as caught:
        secrets.get_secret("exo-app-tags")
    assert caught.value.status_code == 403
    assert wire_error(caught.value)["innererror"]["code"] == "SecretDisabled"


def test_invalid_policies_and_names_are_bad_parameters(certs: CertificateClient) -> None:
    with pytest.raises(HttpResponseError) as caught:
        certs.begin_create_certificate("exo-app-weak", policy("CN=weak", key_size=1024), _polling_interval=0)
    assert caught.value.status_code == 400
    assert wire_error(caught.value)["code"] == "BadParameter"
    with pytest.raises(HttpResponseError) as caught:
        certs.begin_create_certificate("bad_name", policy("CN=bad"), _polling_interval=0)
    assert caught.value.status_code == 400
    with pytest.raises(HttpResponseError) as caught:
        certs.begin_create_certificate("exo-app-trigger", policy("CN=t", lifetime_actions=[
            LifetimeAction(CertificatePolicyAction.auto_renew, days_before_expiry=400)]), _polling_interval=0)
    assert caught.value.status_code == 400
    with pytest.raises(ResourceNotFoundError):
        certs.get_certificate("exo-app-weak")


def test_a_pending_creation_shows_as_a_disabled_version_until_it_completes(
        vault: KeyVaultService, certs: CertificateClient) -> None:
    vault.creation_delay = 1.5
    poller = certs.begin_create_certificate("exo-app-slow", policy("CN=slow"), _polling_interval=0.2)
    operation = certs.get_certificate_operation("exo-app-slow")
    assert operation.status == "inProgress"
    placeholder = certs.get_certificate("exo-app-slow")
    assert placeholder.cer is None and placeholder.properties.enabled is False
    assert list(certs.list_properties_of_certificates()) == []
    assert [p.name for p in certs.list_properties_of_certificates(include_pending=True)] == ["exo-app-slow"]

    done = poller.result()
    assert isinstance(done, KeyVaultCertificate)
    assert done.cer is not None and done.properties.enabled is True
    assert done.properties.version == placeholder.properties.version


def test_import_keeps_the_certificate_and_its_key(certs: CertificateClient, secrets: SecretClient,
                                                  stack: Stack) -> None:
    key = new_rsa_key()
    now = stack.world.clock.now()
    own = self_signed_certificate(key, "CN=imported", now, now + dt.timedelta(days=90))
    pfx = pkcs12.serialize_key_and_certificates(b"imported", key, own, None, serialization.NoEncryption())

    imported = certs.import_certificate("exo-app-imported", pfx, tags={"source": "import"})
    assert bytes(imported.cer or b"") == own.public_bytes(serialization.Encoding.DER)
    assert imported.properties.tags == {"source": "import"}
    assert imported.policy is not None and imported.policy.issuer_name == "Unknown"
    assert imported.properties.x509_thumbprint == hashlib.sha1(bytes(imported.cer or b"")).digest()
    back = pkcs12.load_key_and_certificates(base64.b64decode(secrets.get_secret("exo-app-imported").value or ""), None)
    assert back[0] is not None and back[0].private_numbers() == key.private_numbers()  # type: ignore[union-attr]

    pem = private_key_pem(key) + own.public_bytes(serialization.Encoding.PEM)
    as_pem = certs.import_certificate("exo-app-imported-pem", pem,
                                      policy=CertificatePolicy(content_type=CertificateContentType.pem))
    assert as_pem.cer == imported.cer
    assert (secrets.get_secret("exo-app-imported-pem").value or "").startswith("-----BEGIN PRIVATE KEY-----")
    with pytest.raises(HttpResponseError) as caught:
        certs.import_certificate("exo-app-no-key", own.public_bytes(serialization.Encoding.PEM),
                                 policy=CertificatePolicy(content_type=CertificateContentType.pem))
    assert caught.value.status_code == 400


def test_policy_updates_apply_to_the_next_version(certs: CertificateClient) -> None:
    create(certs, "exo-app-policy")
    current = certs.get_certificate_policy("exo-app-policy")
    assert current.validity_in_months == 12 and current.key_size == 2048
    certs.update_certificate_policy("exo-app-policy", CertificatePolicy(validity_in_months=3))
    changed = certs.get_certificate_policy("exo-app-policy")
    assert changed.validity_in_months == 3 and changed.subject == "CN=exo-app-policy"
    next_version = certs.begin_create_certificate("exo-app-policy", changed, _polling_interval=0).result()
    assert isinstance(next_version, KeyVaultCertificate)
    parsed = loaded(next_version)
    assert 88 <= (parsed.not_valid_after_utc - parsed.not_valid_before_utc).days <= 93


# -- challenge and RBAC -----------------------------------------------------------------------------------


def _tls(stack: Stack) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(stack.ca_file))


def test_a_request_without_token_gets_the_challenge(stack: Stack, vault_url: str) -> None:
    response = httpx.post(f"{vault_url}certificates/any/create?api-version=7.5", verify=_tls(stack))
    assert response.status_code == 401
    resource = stack.world.resources["keyvault"][0]
    assert resource.startswith("https://0.0.1:")
    assert response.headers["WWW-Authenticate"] == (
        f'Bearer authorization="{stack.url("entra")}/{stack.world.tenant_id}", resource="{resource}"')
    assert response.json() == {"error": {"code": "Unauthorized",
                                         "message": "AKV10000: Request is missing a Bearer or PoP token."}}


def test_a_token_for_another_audience_is_refused(stack: Stack, vault_url: str) -> None:
    platform = stack.world.platform
    token, _ = stack.world.issuer.issue(audience="https://graph.microsoft.com", object_id=platform.object_id,
                                        app_id=platform.app_id, roles=[], wids=[])
    response = httpx.get(f"{vault_url}secrets?api-version=7.5", headers={"Authorization": f"Bearer {token}"},
                         verify=_tls(stack))
    assert response.status_code == 401
    assert response.json()["error"]["message"].startswith("AKV10022: Invalid audience.")
    assert "WWW-Authenticate" in response.headers


def test_the_sdk_follows_the_challenge_to_the_vault_resource(
        stack: Stack, kv_credential: Any, secrets: SecretClient) -> None:
    secrets.set_secret("plain", "value")
    if hasattr(kv_credential, "requested_scopes"):
        assert kv_credential.requested_scopes == [f"{stack.world.resources['keyvault'][0]}/.default"]


def test_certificates_officer_cannot_read_the_backing_secret(
        stack: Stack, certs: CertificateClient, secrets: SecretClient) -> None:
    oid = stack.world.platform.object_id
    stack.world.vault_roles[oid] = {"Key Vault Certificates Officer"}
    cert = create(certs, "exo-app-rbac")
    with pytest.raises(HttpResponseError) as caught:
        secrets.get_secret("exo-app-rbac", cert.properties.version)
    assert caught.value.status_code == 403
    error = wire_error(caught.value)
    assert error["code"] == "Forbidden"
    assert error["innererror"]["code"] == "ForbiddenByRbac"
    assert "Microsoft.KeyVault/vaults/secrets/getSecret/action" in error["message"]

    stack.world.vault_roles[oid] = {"Key Vault Secrets User"}
    assert secrets.get_secret("exo-app-rbac").value
    with pytest.raises(HttpResponseError) as caught:
        certs.get_certificate("exo-app-rbac")
    assert caught.value.status_code == 403

    stack.world.vault_roles[oid] = {"Key Vault Reader"}
    assert certs.get_certificate("exo-app-rbac").cer == cert.cer
    with pytest.raises(HttpResponseError) as caught:
        secrets.get_secret("exo-app-rbac")
    assert caught.value.status_code == 403


# -- soft delete --------------------------------------------------------------------------------------------


def test_soft_delete_blocks_the_name_until_recovered_or_purged(
        stack: Stack, certs: CertificateClient, secrets: SecretClient) -> None:
    cert = create(certs, "exo-app-deleted")
    deleted = certs.begin_delete_certificate("exo-app-deleted", _polling_interval=0).result()
    assert deleted.recovery_id == f"{certs.vault_url}/deletedcertificates/exo-app-deleted"
    assert deleted.deleted_on is not None and deleted.scheduled_purge_date is not None
    assert (deleted.scheduled_purge_date - deleted.deleted_on).days == 90
    with pytest.raises(ResourceNotFoundError):
        certs.get_certificate("exo-app-deleted")
    assert [d.name for d in secrets.list_deleted_secrets()] == ["exo-app-deleted"]

    with pytest.raises(ResourceExistsError) as caught:
        certs.begin_create_certificate("exo-app-deleted", policy("CN=again"), _polling_interval=0)
    assert caught.value.status_code == 409
    assert wire_error(caught.value)["code"] == "Conflict"
    assert wire_error(caught.value)["innererror"]["code"] == "ObjectIsDeletedButRecoverable"
    with pytest.raises(HttpResponseError) as caught:
        secrets.set_secret("exo-app-deleted", "x")
    assert wire_error(caught.value)["innererror"]["code"] == "ObjectIsDeletedButRecoverable"

    recovered = certs.begin_recover_deleted_certificate("exo-app-deleted", _polling_interval=0).result()
    assert recovered.properties.version == cert.properties.version
    assert certs.get_certificate("exo-app-deleted").cer == cert.cer
    with pytest.raises(ResourceNotFoundError):
        certs.get_deleted_certificate("exo-app-deleted")

    certs.begin_delete_certificate("exo-app-deleted", _polling_interval=0).wait()
    certs.purge_deleted_certificate("exo-app-deleted")
    with pytest.raises(ResourceNotFoundError):
        certs.get_deleted_certificate("exo-app-deleted")
    fresh = create(certs, "exo-app-deleted")
    assert fresh.properties.version != cert.properties.version
    assert len(list(certs.list_properties_of_certificate_versions("exo-app-deleted"))) == 1


def test_purge_protection_refuses_purge(vault: KeyVaultService, certs: CertificateClient) -> None:
    vault.purge_protection = True
    create(certs, "exo-app-protected")
    deleted = certs.begin_delete_certificate("exo-app-protected", _polling_interval=0).result()
    assert deleted.properties.recovery_level == "Recoverable"
    with pytest.raises(HttpResponseError) as caught:
        certs.purge_deleted_certificate("exo-app-protected")
    assert caught.value.status_code == 403
    assert certs.get_deleted_certificate("exo-app-protected").name == "exo-app-protected"


def test_deleted_objects_are_purged_when_retention_ends(stack: Stack, certs: CertificateClient) -> None:
    create(certs, "exo-app-retention")
    certs.begin_delete_certificate("exo-app-retention", _polling_interval=0).wait()
    stack.world.clock.advance(89 * DAY)
    assert certs.get_deleted_certificate("exo-app-retention").name == "exo-app-retention"
    stack.world.clock.advance(2 * DAY)
    with pytest.raises(ResourceNotFoundError):
        certs.get_deleted_certificate("exo-app-retention")


# -- autorenew ----------------------------------------------------------------------------------------------


def test_autorenew_adds_a_version_when_the_clock_passes_the_trigger(
        stack: Stack, certs: CertificateClient, secrets: SecretClient) -> None:
    by_percentage = create(certs, "renew-percent")  # default policy: AutoRenew at 80 %
    by_days = create(certs, "renew-days", lifetime_actions=[
        LifetimeAction(CertificatePolicyAction.auto_renew, days_before_expiry=100)])

    def versions(name: str) -> int:
        return len(list(certs.list_properties_of_certificate_versions(name)))

    stack.world.clock.advance(250 * DAY)
    assert (versions("renew-percent"), versions("renew-days")) == (1, 1)

    stack.world.clock.advance(30 * DAY)  # day 280: past exp - 100 days, before 80 % (~day 292)
    renewed = certs.get_certificate("renew-days")
    assert renewed.properties.version != by_days.properties.version
    assert approx(loaded(renewed).not_valid_before_utc, stack.world.clock.now() - dt.timedelta(minutes=10))
    assert loaded(renewed).public_key().public_numbers() != loaded(by_days).public_key().public_numbers()  # type: ignore[union-attr]
    assert (versions("renew-percent"), versions("renew-days")) == (1, 2)
    assert secrets.get_secret("renew-days").properties.version == renewed.properties.version

    stack.world.clock.advance(20 * DAY)  # day 300
    assert certs.get_certificate("renew-percent").properties.version != by_percentage.properties.version
    assert (versions("renew-percent"), versions("renew-days")) == (2, 2)
    assert certs.get_certificate_operation("renew-percent").status == "completed"


# -- secrets ------------------------------------------------------------------------------------------------


def test_secrets_versions_update_delete_and_managed_refusals(
        certs: CertificateClient, secrets: SecretClient) -> None:
    first = secrets.set_secret("plain-secret", "one", content_type="text/plain", tags={"k": "v"})
    second = secrets.set_secret("plain-secret", "two")
    assert secrets.get_secret("plain-secret").value == "two"
    assert secrets.get_secret("plain-secret", first.properties.version).value == "one"
    assert len(list(secrets.list_properties_of_secret_versions("plain-secret"))) == 2
    updated = secrets.update_secret_properties("plain-secret", second.properties.version, tags={"state": "x"})
    assert updated.tags == {"state": "x"}

    secrets.begin_delete_secret("plain-secret", _polling_interval=0).wait()
    with pytest.raises(ResourceNotFoundError):
        secrets.get_secret("plain-secret")
    with pytest.raises(HttpResponseError) as caught:
        secrets.set_secret("plain-secret", "three")
    assert caught.value.status_code == 409
    secrets.begin_recover_deleted_secret("plain-secret", _polling_interval=0).wait()
    assert secrets.get_secret("plain-secret").value == "two"

    create(certs, "exo-app-managed")
    for attempt in (lambda: secrets.set_secret("exo-app-managed", "overwrite"),
                    lambda: secrets.begin_delete_secret("exo-app-managed", _polling_interval=0)):
        with pytest.raises(HttpResponseError) as caught:
            attempt()
        assert caught.value.status_code == 403
        assert wire_error(caught.value)["innererror"]["code"] == "SecretManagedByKeyVault"


def test_snapshot_is_json_without_key_material(stack: Stack, vault: KeyVaultService, certs: CertificateClient,
                                               secrets: SecretClient) -> None:
    cert = create(certs, "exo-app-snap")
    secrets.set_secret("plain-snap", "very-secret-value")
    text = json.dumps(vault.snapshot())
    state = json.loads(text)
    assert "PRIVATE KEY" not in text and "very-secret-value" not in text
    assert state["certificates"][0]["versions"][0]["thumbprint"] == \
        hashlib.sha1(bytes(cert.cer or b"")).hexdigest().upper()
    assert state["secrets"][0]["name"] == "plain-snap"
    stack.world.reset()
    assert vault.snapshot()["certificates"] == []


# -- async clients ------------------------------------------------------------------------------------------


def test_async_clients_create_and_read_the_pfx(vault_url: str, kv_async_credential: Any) -> None:
    async def scenario() -> tuple[KeyVaultCertificate, str | None, list[str]]:
        async with kv_async_credential, AsyncCertificateClient(vault_url, kv_async_credential) as certs, \
                AsyncSecretClient(vault_url, kv_async_credential) as secrets:
            cert = await certs.create_certificate("exo-app-async", policy("CN=exo-app-async"),
                                                  _polling_interval=0)
            assert isinstance(cert, KeyVaultCertificate), cert
            secret = await secrets.get_secret("exo-app-async")
            names = [p.name async for p in certs.list_properties_of_certificates()]
            return cert, secret.value, [n for n in names if n]

    cert, value, names = asyncio.run(scenario())
    assert names == ["exo-app-async"]
    key, pfx_cert, _ = pkcs12.load_key_and_certificates(base64.b64decode(value or ""), None)
    assert key is not None and pfx_cert is not None
    assert pfx_cert.public_bytes(serialization.Encoding.DER) == bytes(cert.cer or b"")
