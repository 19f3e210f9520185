"""Key Vault: the identity's certificate versions and its connection secret.

Key Vault is the registry (docs/architecture.md): certificates carry the identity's spec in their tags. The
certificate create call goes through the client's public `send_request` and is then polled with
`get_certificate_operation`, so completion is seen within a second instead of after the SDK
poller's fixed 5-second first sleep, without touching private SDK arguments.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from azure.core.exceptions import AzureError, ClientAuthenticationError, HttpResponseError, ResourceNotFoundError
from azure.core.rest import HttpRequest

from shared.core.model import OWNER_TAG, OWNER_TAG_VALUE, CertificateVersion, ObservedCertificate
from shared.core.operation import MAX_RETRY_AFTER_SECONDS
from shared.core.record import CONTENT_TYPE, ConnectionRecord
from shared.core.registry import started_by_us
from shared.core.spec import IdentitySpec
from shared.errors import ExoAutomationError, ForeignObject, NeedsOperator, Retryable, first_line
from shared.retry import Backoff, NotYet, retry
from shared.settings import Settings

# Polls a certificate being created: four times a second for the first 15 s, while a self-issued
# certificate is usually done, then doubling up to 5 s apart for a CA that takes minutes; 5 minutes in
# all. Cheap next to the vault's limits (4,000 transactions per 10 s): its RSA creations (20 per 10 s)
# bound how many creations poll at once.
CREATE_POLL = Backoff(first=0.25, steady=15.0, max_delay=5.0, budget=300.0)
# A failed run whose requested version is not awaited yet looks a few seconds more, so its outcome can
# be recorded on the version (usually issued by then); a CA's longer issuance is left to the next run.
SETTLE_POLL = Backoff(first=0.25, max_delay=1.0, budget=5.0)


@dataclass(frozen=True)
class TaggedSecret:
    """A secret as Key Vault's secret listing shows it: name, tags and when it last changed (no value)."""

    name: str
    tags: dict[str, str]
    updated_on: dt.datetime | None


@dataclass(frozen=True)
class ListedCertificate:
    """A certificate as Key Vault's certificate listing shows its current version (no key material).
    `tags`: the current version's, or for a name whose newest version was made outside the product,
    the newest version of ours (`VaultGateway.adopted_tags`)."""

    name: str
    tags: dict[str, str]
    thumbprint: str | None
    not_before: dt.datetime | None
    not_after: dt.datetime | None
    enabled: bool
    version: str | None
    updated_on: dt.datetime | None


# Certificate names this product gives identities: only these are looked at for adoption.
_ADOPTABLE = re.compile(r"^exo-[a-z0-9-]+-cert$")


def _timestamp(value: dt.datetime | None) -> dt.datetime:
    assert value is not None
    return value.astimezone(dt.UTC)


def vault_error(exc: AzureError, what: str) -> ExoAutomationError:
    """A Key Vault failure as retryable or needs-an-operator.

    Covers answers (HttpResponseError) and no answer at all (connection refused or dropped,
    timeouts: ServiceRequestError / ServiceResponseError), and a platform identity that cannot get
    a token (ClientAuthenticationError without a status).
    """
    if isinstance(exc, ClientAuthenticationError) and not exc.status_code:
        # No status: the token itself failed (see graph.GraphClient._token for why this is retryable).
        return Retryable(f"the platform identity could not get a Key Vault token while {what}: "
                         f"{first_line(exc)}", reason="PlatformTokenUnavailable")
    if not isinstance(exc, HttpResponseError):
        return Retryable(f"Key Vault did not answer while {what} ({type(exc).__name__})", reason="VaultUnreachable")
    status = exc.status_code or 0
    inner = _inner_code(exc)
    code = exc.error.code if exc.error is not None else ""
    if status == 429 or status >= 500 or status == 0:
        return Retryable(f"Key Vault is unavailable or throttling while {what} ({status})", reason="VaultUnavailable")
    if status == 403:
        return NeedsOperator(f"Key Vault refused the platform identity while {what}: {code} {inner}".strip()
                             + " (it needs Key Vault Certificates Officer and Secrets Officer)",
                             reason="VaultPermissionMissing")
    if status == 409 and inner == "ObjectIsDeletedButRecoverable":
        return NeedsOperator(f"a soft-deleted Key Vault object blocks {what}. " + _DELETED_ADVICE,
                             reason="DeletedButRecoverable")
    said = (exc.error.message or "") if exc.error is not None else ""
    return NeedsOperator(f"Key Vault refused {what}: {status} {code} {inner}".strip()
                         + (f": {said[:300]}" if said else ""), reason="VaultRequestRefused")


def _inner_code(exc: HttpResponseError) -> str:
    if exc.error is not None and isinstance(getattr(exc.error, "innererror", None), dict):
        return str(exc.error.innererror.get("code", ""))
    return ""


# Never "purge": our vault has purge protection (nobody can purge), and a purge of a live identity's
# certificate would destroy it. Recovering, or choosing another name, always works.
_DELETED_ADVICE = ("Key Vault keeps deleted objects for their retention period (90 days by default). To use the "
                   "name again, recover the deleted objects (`az keyvault certificate recover --vault-name <vault> "
                   "--name exo-<name>-cert` and `az keyvault secret recover --vault-name <vault> --name "
                   "exo-<name>-connection`: a recovered decommissioned identity can then be bootstrapped again), "
                   "or choose another name.")


def deleted_name_message(certificate_name: str) -> str:
    return (f"the certificate {certificate_name} belongs to a decommissioned identity and is soft-deleted, so its "
            "name cannot be used yet. " + _DELETED_ADVICE)


@dataclass(frozen=True)
class StartedCertificate:
    """A create request this run made: the CSR Key Vault answered with (the new version's public key),
    or the version a recovery brought back instead. Empty: the run joined a creation already running."""

    csr: bytes | None = None
    recovered: CertificateVersion | None = None


@dataclass(frozen=True)
class IssuedCertificate:
    """A version that finished issuing; `pfx` (its private key) when the read that proved it returned it."""

    version: CertificateVersion
    pfx: bytes | None = field(default=None, repr=False)


def version_from_pfx(pfx: bytes, version: str, csr: bytes, *, enabled: bool = True) -> CertificateVersion | None:
    """The version a PKCS#12 holds, if its certificate carries the CSR's public key; else None."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, pkcs12

    try:
        _key, certificate, _chain = pkcs12.load_key_and_certificates(pfx, None)
        requested = x509.load_der_x509_csr(csr).public_key()
    except ValueError:
        return None
    if certificate is None:
        return None
    spki = (Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    if certificate.public_key().public_bytes(*spki) != requested.public_bytes(*spki):
        return None
    # The thumbprint Exchange and Key Vault's x5t name a certificate by is SHA-1: an identifier, not a signature.
    thumbprint = certificate.fingerprint(hashes.SHA1()).hex().upper()  # noqa: S303
    return CertificateVersion(
        version=version, thumbprint=thumbprint,
        not_before=certificate.not_valid_before_utc, not_after=certificate.not_valid_after_utc, enabled=enabled,
        der=certificate.public_bytes(Encoding.DER))


def version_from_properties(props: Any, der: bytes | None = None) -> CertificateVersion:
    return CertificateVersion(
        version=str(props.version),
        thumbprint=bytes(props.x509_thumbprint).hex().upper(),
        not_before=_timestamp(props.not_before),
        not_after=_timestamp(props.expires_on),
        enabled=bool(props.enabled),
        der=der,
    )


def certificate_policy_body(spec: IdentitySpec, issuer: str = "Self") -> dict[str, Any]:
    return {
        "key_props": {"exportable": True, "kty": "RSA", "key_size": spec.key_size, "reuse_key": False},
        # PKCS#12 so a Windows job host can import it (with a CSP key) for Connect-ExchangeOnline.
        "secret_props": {"contentType": "application/x-pkcs12"},
        "x509_props": {
            "subject": f"CN={spec.names.unique_name}",
            "ekus": ["1.3.6.1.5.5.7.3.2"],  # client authentication
            "key_usage": ["digitalSignature", "keyEncipherment"],
            "validity_months": spec.validity_months,
        },
        "issuer": {"name": issuer},
        # Renewal is the product's job (it must add the key to the app before publishing), so the
        # vault only e-mails contacts near expiry as a last line of defence.
        "lifetime_actions": [{"trigger": {"days_before_expiry": 7}, "action": {"action_type": "EmailContacts"}}],
    }


def _capped_retry_policy() -> Any:
    """azure-core's retry policy, but no single wait on a Retry-After longer than MAX_RETRY_AFTER_SECONDS."""
    from azure.core.pipeline.policies import AsyncRetryPolicy

    class CappedRetryPolicy(AsyncRetryPolicy):  # type: ignore[type-arg]
        def get_retry_after(self, response: Any) -> float | None:
            retry_after = super().get_retry_after(response)
            return None if retry_after is None else min(retry_after, MAX_RETRY_AFTER_SECONDS)

    return CappedRetryPolicy()


def _share_challenge(vault_url: str) -> bool:
    """Give the secrets client the vault's challenge the certificates client learned; True if it has one.

    Key Vault's challenge authentication learns a vault's challenge from one unauthenticated request
    (answered 401), cached per process, but each SDK package keeps its own cache: a fresh process
    would pay that request twice for one vault. The SDK still checks the challenge's resource against
    the vault's URL on every request (`verify_challenge_resource`). If the SDK's layout changes this
    does nothing, and the secrets client learns the challenge itself as before.
    """
    try:
        from azure.keyvault.certificates._shared import http_challenge_cache as certificates_cache
        from azure.keyvault.secrets._shared import http_challenge_cache as secrets_cache

        if secrets_cache.get_challenge_for_url(vault_url) is not None:
            return True
        challenge = certificates_cache.get_challenge_for_url(vault_url)
        if challenge is None:
            return False
        secrets_cache.set_challenge_for_url(vault_url, challenge)  # type: ignore[arg-type]  # same class, copied per package
        return True
    except (ImportError, AttributeError, ValueError):
        return False


class VaultGateway:
    def __init__(self, settings: Settings, credential: Any) -> None:
        from azure.keyvault.certificates.aio import CertificateClient
        from azure.keyvault.secrets.aio import SecretClient

        options = {"verify_challenge_resource": settings.verify_challenge_resource,
                   "retry_policy": _capped_retry_policy()}
        self.vault_url = settings.key_vault_url
        self.issuer = settings.certificate_issuer
        self.certificates = CertificateClient(settings.key_vault_url, credential, **options)
        self.secrets = SecretClient(settings.key_vault_url, credential, **options)
        self._challenge_learned: asyncio.Event | None = None

    async def aclose(self) -> None:
        await self.certificates.close()
        await self.secrets.close()

    # -- certificates -----------------------------------------------------------------------------
    async def observe_certificate(self, name: str, *, reread: bool = True) -> ObservedCertificate | None:
        learning = self._challenge_learned is None and not _share_challenge(self.vault_url)
        if learning:
            self._challenge_learned = asyncio.Event()
        try:
            cert = await self.certificates.get_certificate(name)
        except ResourceNotFoundError:
            return await self._pending_only(name, reread=reread)
        except AzureError as exc:
            raise vault_error(exc, f"reading certificate {name}") from exc
        finally:
            if learning and self._challenge_learned is not None:
                self._challenge_learned.set()
        assert cert.properties is not None
        tags = dict(cert.properties.tags or {})
        if not cert.properties.x509_thumbprint:
            # The first version is still being created: Key Vault shows it disabled, without a certificate.
            # Ours only if our create request tagged it: a creation someone else started is never adopted.
            return ObservedCertificate(owned=started_by_us(tags, name), tags=tags, current=None, pending=True)
        if tags.get(OWNER_TAG) != OWNER_TAG_VALUE:
            tags = await self.adopted_tags(name) or tags
        return ObservedCertificate(
            owned=tags.get(OWNER_TAG) == OWNER_TAG_VALUE, tags=tags,
            current=version_from_properties(cert.properties, bytes(cert.cer) if cert.cer else None),
        )

    async def adopted_tags(self, name: str) -> dict[str, str] | None:
        """The tags of the newest version this product made, when the newest version is not ours.

        Key Vault's auto-renew or an admin may add a version without our tags (whether tags carry
        over is undocumented); the certificate is still ours, and that version gets adopted.
        """
        try:
            versions = [p async for p in self.certificates.list_properties_of_certificate_versions(
                name, max_page_size=25)]
        except AzureError as exc:
            raise vault_error(exc, f"listing versions of {name}") from exc
        ours = [p for p in versions if (p.tags or {}).get(OWNER_TAG) == OWNER_TAG_VALUE and p.created_on]
        if not ours:
            return None
        newest = max(ours, key=lambda p: p.created_on)  # type: ignore[arg-type, return-value]
        return dict(newest.tags or {})

    async def _pending_only(self, name: str, *, reread: bool) -> ObservedCertificate | None:
        """A first create that has not completed: the name has an operation but no version."""
        try:
            operation = await self.certificates.get_certificate_operation(name)
        except ResourceNotFoundError:
            return None
        except AzureError as exc:
            raise vault_error(exc, f"reading the pending operation of {name}") from exc
        if operation.status and operation.status.lower() == "inprogress":
            if reread:
                # The create began between our two reads (a concurrent run, maybe ours): its version
                # and tags are readable now, and they say whether our run started it.
                return await self.observe_certificate(name, reread=False)
            # No version to read tags from, so nothing shows that our run started it: not adopted.
            return ObservedCertificate(owned=False, tags={}, current=None, pending=True)
        return None

    async def _deleted_certificate_tags(self, name: str) -> dict[str, str] | None:
        """The tags of a soft-deleted certificate of this name, or None if there is none (or we may not look)."""
        try:
            deleted = await self.certificates.get_deleted_certificate(name)
        except ResourceNotFoundError:
            return None
        except AzureError as exc:
            if isinstance(exc, HttpResponseError) and exc.status_code == 403:
                return None  # without list/get on deleted objects the create's own 409 will tell
            raise vault_error(exc, f"checking for a deleted certificate {name}") from exc
        return dict((deleted.properties.tags if deleted.properties else None) or {})

    async def recover_deleted_identity(self, name: str) -> bool:
        """Recover a live identity's certificate that was deleted by hand (ours by our create tags, not
        being decommissioned); True if it did. A decommissioned identity's certificate stays deleted."""
        tags = await self._deleted_certificate_tags(name)
        if tags is None or not started_by_us(tags, name) or tags.get("state") == "decommissioning":
            return False
        try:
            await self.certificates.recover_deleted_certificate(name)  # returns once it is recovered
        except AzureError as exc:
            raise vault_error(exc, f"recovering the deleted certificate {name}") from exc
        return True

    async def refuse_if_deleted(self, name: str) -> None:
        """A soft-deleted certificate blocks its name (409 on create): say so before anything is written."""
        if await self._deleted_certificate_tags(name) is not None:
            raise NeedsOperator(deleted_name_message(name), reason="DeletedButRecoverable")

    async def certificate_versions(self, name: str) -> tuple[CertificateVersion, ...]:
        try:
            return tuple([version_from_properties(p) async for p in
                          self.certificates.list_properties_of_certificate_versions(name, max_page_size=25)
                          if p.x509_thumbprint])
        except AzureError as exc:
            raise vault_error(exc, f"listing versions of {name}") from exc

    async def start_certificate_version(self, name: str, spec: IdentitySpec,
                                        tags: Mapping[str, str]) -> StartedCertificate:
        """Ask Key Vault for a new version; `await_certificate` waits for it (the run goes on meanwhile)."""
        body = {"policy": certificate_policy_body(spec, self.issuer), "attributes": {"enabled": True},
                "tags": dict(tags)}
        request = HttpRequest("POST", f"{self.vault_url}certificates/{name}/create",
                              params={"api-version": self.certificates.api_version}, json=body)
        response = await self.certificates.send_request(request)
        if response.status_code == 409 and b"ObjectIsDeletedButRecoverable" not in await response.read():
            # Another create is in progress for this name (a concurrent run): wait for it instead;
            # await_certificate adopts the result only if that create carried our tags.
            return StartedCertificate()
        if response.status_code == 409 and await self.recover_deleted_identity(name):
            # A live identity's certificate deleted by hand: recovered, its current version serves.
            cert = await self.certificates.get_certificate(name)
            assert cert.properties is not None
            return StartedCertificate(
                recovered=version_from_properties(cert.properties, bytes(cert.cer) if cert.cer else None))
        if response.status_code >= 400:
            await response.read()
            raise vault_error(HttpResponseError(response=response), f"creating certificate {name}")
        csr = response.json().get("csr")
        return StartedCertificate(csr=base64.b64decode(csr) if isinstance(csr, str) and csr else None)

    async def await_certificate(self, name: str, started: StartedCertificate | None = None, *,
                                patience: Backoff = CREATE_POLL) -> IssuedCertificate:
        """Wait for the name's pending creation and return its version, if it is ours.

        The version a creation this run `started` made is recognised by its key: its certificate carries
        the public key of the CSR Key Vault answered our create with. Reading it from the backing secret
        also gives the private key the sign-in proof needs, so the new version costs one read. Anything
        else (a creation found pending or joined after a 409, or a newer version than ours by the time it
        is read) is ours only if its create carried our tags, as before.
        """
        if started is not None and started.recovered is not None:
            return IssuedCertificate(started.recovered)

        async def completed() -> None:
            try:
                operation = await self.certificates.get_certificate_operation(name)
            except AzureError as exc:
                raise vault_error(exc, f"polling the creation of {name}") from exc
            status = (operation.status or "").lower()
            if status in ("inprogress", ""):
                raise NotYet(f"certificate {name} is still being created")
            if status != "completed":
                raise NeedsOperator(f"Key Vault could not create certificate {name}: {operation.status} "
                                    f"{operation.error.message if operation.error else ''}".strip(),
                                    reason="CertificateCreationFailed")

        try:
            await retry(completed, patience)
        except NotYet as exc:
            raise Retryable(str(exc), reason="CertificatePending") from exc
        if started is not None and started.csr is not None:
            issued = await self._issued_from_csr(name, started.csr)
            if issued is not None:
                return issued
        cert = await self.certificates.get_certificate(name)
        if cert.properties is None or not started_by_us(cert.properties.tags or {}, name):
            raise ForeignObject(f"the certificate version of {name} that was being created was not started by this "
                                "product (its create request did not carry this product's tags); it is not used")
        return IssuedCertificate(version_from_properties(cert.properties, bytes(cert.cer) if cert.cer else None))

    async def _issued_from_csr(self, name: str, csr: bytes) -> IssuedCertificate | None:
        """The newest version with its private key, if its key is the CSR's; None if it is not (a newer
        version came in between) or the backing secret cannot be read: then tags decide, as for others."""
        try:
            secret = await self.secrets.get_secret(name)
        except AzureError as exc:
            if isinstance(exc, HttpResponseError) and exc.status_code in (403, 404):
                return None
            raise vault_error(exc, f"reading the new version of {name}") from exc
        if not secret.value or secret.properties.version is None:
            return None
        pfx = base64.b64decode(secret.value)
        version = version_from_pfx(pfx, secret.properties.version, csr, enabled=secret.properties.enabled is not False)
        return IssuedCertificate(version, pfx) if version is not None else None

    async def certificate_der(self, name: str, version: str) -> bytes:
        try:
            cert = await self.certificates.get_certificate_version(name, version)
        except AzureError as exc:
            raise vault_error(exc, f"reading certificate {name}/{version}") from exc
        assert cert.cer is not None
        return bytes(cert.cer)

    async def update_certificate_tags(self, name: str, version: str, tags: Mapping[str, str]) -> None:
        try:
            await self.certificates.update_certificate_properties(name, version, tags=dict(tags))
        except AzureError as exc:
            raise vault_error(exc, f"tagging certificate {name}") from exc

    async def delete_certificate(self, name: str) -> None:
        try:
            await self.certificates.delete_certificate(name)
        except ResourceNotFoundError:
            return
        except AzureError as exc:
            raise vault_error(exc, f"deleting certificate {name}") from exc

    async def pfx(self, name: str, version: str) -> bytes:
        """The PKCS#12 (private key included) of one version: the backing secret's value."""
        try:
            secret = await self.secrets.get_secret(name, version)
        except AzureError as exc:
            raise vault_error(exc, f"reading the private key of {name}/{version}") from exc
        assert secret.value is not None
        return base64.b64decode(secret.value)

    # -- connection secret ------------------------------------------------------------------------
    async def read_record(self, name: str) -> tuple[ConnectionRecord | None, bool, bool]:
        """(record, unreadable, owned) of the connection secret `name`."""
        record, unreadable, owned, _ = await self.read_record_entry(name)
        return record, unreadable, owned

    async def read_record_entry(self, name: str) -> tuple[ConnectionRecord | None, bool, bool, dict[str, str]]:
        """(record, unreadable, owned, tags) of the connection secret `name`: for an identity without a
        certificate its tags are the registry entry (issue #16)."""
        if self._challenge_learned is not None and not _share_challenge(self.vault_url):
            # A certificate request is learning the vault's challenge: reuse it instead of learning it again.
            await self._challenge_learned.wait()
            _share_challenge(self.vault_url)
        try:
            secret = await self.secrets.get_secret(name)
        except ResourceNotFoundError:
            return None, False, True, {}
        except AzureError as exc:
            raise vault_error(exc, f"reading secret {name}") from exc
        tags = dict(secret.properties.tags or {})
        owned = tags.get(OWNER_TAG) == OWNER_TAG_VALUE
        try:
            return ConnectionRecord.loads(secret.value or ""), False, owned, tags
        except ValueError:
            return None, True, owned, tags

    async def update_record_tags(self, name: str, tags: Mapping[str, str]) -> None:
        try:
            await self.secrets.update_secret_properties(name, tags=dict(tags))
        except AzureError as exc:
            raise vault_error(exc, f"updating the tags of secret {name}") from exc

    async def publish_record(self, name: str, record: ConnectionRecord,
                             registry: Mapping[str, str] | None = None) -> None:
        """`registry`: the registry tags of an identity without a certificate, kept on its record."""
        tags = {**(registry or {}), OWNER_TAG: OWNER_TAG_VALUE, "identity": record.identity}
        if record.has_certificate:
            tags.update(thumbprint=record.thumbprint, certificateVersion=record.certificate_version)
        for attempt in (1, 2):
            try:
                await self.secrets.set_secret(name, record.dumps(), content_type=CONTENT_TYPE, tags=tags,
                                              not_before=None, expires_on=None)
                return
            except HttpResponseError as exc:
                if attempt == 1 and exc.status_code == 409 and _inner_code(exc) == "ObjectIsDeletedButRecoverable":
                    # Someone deleted the live identity's record: bring it (and its versions) back, then
                    # publish over it. Secrets Officer may recover; purge protection forbids purging.
                    await self._recover_secret(name)
                    continue
                raise vault_error(exc, f"publishing connection secret {name}") from exc
            except AzureError as exc:
                raise vault_error(exc, f"publishing connection secret {name}") from exc

    async def _recover_secret(self, name: str) -> None:
        try:
            await self.secrets.recover_deleted_secret(name)  # returns once it is recovered
        except AzureError as exc:
            raise vault_error(exc, f"recovering the deleted connection secret {name}") from exc

    async def owned_certificates(self) -> list[ListedCertificate]:
        """Every certificate carrying this product's owner tag (or an adoptable newest version), from one
        paged listing: Key Vault's list items carry the tags, thumbprint and dates."""
        listed = []
        try:
            async for props in self.certificates.list_properties_of_certificates(max_page_size=25):
                tags = dict(props.tags or {})
                if tags.get(OWNER_TAG) != OWNER_TAG_VALUE and props.name and _ADOPTABLE.match(props.name):
                    # A version made outside the product: one versions listing, only for such names.
                    tags = await self.adopted_tags(props.name) or tags
                if tags.get(OWNER_TAG) != OWNER_TAG_VALUE or not props.name:
                    continue
                listed.append(ListedCertificate(
                    name=props.name, tags=tags,
                    thumbprint=bytes(props.x509_thumbprint).hex().upper() if props.x509_thumbprint else None,
                    not_before=props.not_before, not_after=props.expires_on, enabled=bool(props.enabled),
                    version=props.version, updated_on=props.updated_on))
        except AzureError as exc:
            raise vault_error(exc, "listing certificates") from exc
        return listed

    async def deleted_certificates(self) -> list[tuple[str, dict[str, str]]]:
        """Soft-deleted certificates and their tags (one paged listing)."""
        try:
            return [(deleted.name, dict(deleted.properties.tags or {}))
                    async for deleted in self.certificates.list_deleted_certificates(max_page_size=25)
                    if deleted.name and deleted.properties is not None]
        except AzureError as exc:
            raise vault_error(exc, "listing deleted certificates") from exc

    async def deleted_secret_names(self) -> frozenset[str]:
        """The names of soft-deleted secrets (one paged listing)."""
        try:
            return frozenset([s.name async for s in self.secrets.list_deleted_secrets(max_page_size=25) if s.name])
        except AzureError as exc:
            raise vault_error(exc, "listing deleted secrets") from exc

    async def owned_secrets(self) -> list[TaggedSecret]:
        """Every secret carrying this product's owner tag, from one paged listing: Key Vault's list items carry
        the tags, so the registry entries of identities without a certificate come without a read each.
        (The listing also holds certificates' backing secrets; they carry no owner tag of ours.)"""
        try:
            return [TaggedSecret(str(props.name), dict(props.tags or {}), props.updated_on)
                    async for props in self.secrets.list_properties_of_secrets(max_page_size=25)
                    if props.name and (props.tags or {}).get(OWNER_TAG) == OWNER_TAG_VALUE]
        except AzureError as exc:
            raise vault_error(exc, "listing secrets") from exc

    async def owned_secrets_named(self, names: list[str], *, concurrency: int = 8) -> list[TaggedSecret]:
        """The secrets of these names that exist and carry this product's owner tag, one read each (`concurrency`
        at a time): the registry entries of identities without a certificate, when the names are known
        (`shared.sweep.load_registry`), for less than listing every secret."""
        _share_challenge(self.vault_url)  # the certificate listing before this learned the vault's challenge
        gate = asyncio.Semaphore(concurrency)

        async def read(name: str) -> TaggedSecret | None:
            async with gate:
                try:
                    secret = await self.secrets.get_secret(name)
                except ResourceNotFoundError:
                    return None
                except AzureError as exc:
                    raise vault_error(exc, f"reading secret {name}") from exc
            tags = dict(secret.properties.tags or {})
            if tags.get(OWNER_TAG) != OWNER_TAG_VALUE:
                return None
            return TaggedSecret(name, tags, secret.properties.updated_on)

        found = await asyncio.gather(*(read(name) for name in names), return_exceptions=True)
        for outcome in found:
            if isinstance(outcome, BaseException):
                raise outcome
        return [secret for secret in found if isinstance(secret, TaggedSecret)]

    async def delete_secret(self, name: str) -> None:
        try:
            await self.secrets.delete_secret(name)
        except ResourceNotFoundError:
            return
        except AzureError as exc:
            raise vault_error(exc, f"deleting secret {name}") from exc

