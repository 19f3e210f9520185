"""Issue: jobs run as automation identities — connection(), the Exchange client, the scheduled sample job.

The sample job's timer handler runs as the Functions host would call it (from the function list of
an app that registers `shared.functions.sample_jobs.bp`), against the stand-ins and Azurite. A scenario that
must show in-process caching keeps one event loop for all its runs, as the host does; bootstrap
and rotation go through the HTTP handlers on their own loops (in a thread).
"""

from __future__ import annotations

import asyncio
import base64
import csv
import gc
import io
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import azure.functions as func
import pytest
from azure.storage.blob import BlobServiceClient
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from devstack import Stack
from devstack.faults import Fault
from devstack.world import EXCHANGE_APP_ID, EXCHANGE_MANAGE_AS_APP
from shared.errors import IdentityNotFound, SettingsError
from shared.functions import sample_jobs
from shared.runtime.connection import close_connections, close_sync_connections, connection, connection_sync
from shared.runtime.exchange import (
    ExchangeCmdletNotPermitted,
    ExchangeConsentMissing,
    ExchangeNotFound,
    ExchangeRoleMissing,
)
from shared.runtime.jobs import JobContext, run_job

from .helpers import post_identity, rotate

ERA = "31392ffb-586c-42d1-9346-e59415a2cc4e"
SEEDED_UPNS = ["adams", "adelev", "alexw", "meganb", "sales"]

_FUNCTIONS: dict[str, Any] = {}


def functions() -> dict[str, Any]:
    """The app's functions as the host indexes them (built once: a second build of one app raises)."""
    if not _FUNCTIONS:
        app = func.FunctionApp()
        app.register_functions(sample_jobs.bp)
        _FUNCTIONS.update({fn.get_function_name(): fn for fn in app.get_functions()})
    return _FUNCTIONS


def mailbox_report() -> Callable[[func.TimerRequest], Awaitable[None]]:
    handler: Callable[[func.TimerRequest], Awaitable[None]] = functions()["mailbox_report"].get_user_function()
    return handler


def timer() -> func.TimerRequest:
    from azure.functions.timer import TimerRequest

    return TimerRequest(past_due=False)


@pytest.fixture()
def job_env(stack: Stack, azurite: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    container = f"reports-{uuid.uuid4().hex[:12]}"
    values = {"AzureWebJobsStorage": azurite, "REPORTS_CONTAINER": container,
              "MAILBOX_REPORT_SCHEDULE": "0 0 6 * * *", "CONNECTION_CACHE_SECONDS": "300"}
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AzureWebJobsStorage__blobServiceUri", raising=False)
    return values


def bootstrap(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    response = post_identity({"name": name})
    assert response.status == 201, response.body
    monkeypatch.setenv("MAILBOX_REPORT_IDENTITY", name)


def read_report(connection_string: str, container: str) -> list[dict[str, str]]:
    service = BlobServiceClient.from_connection_string(connection_string)
    with service:
        names = [b.name for b in service.get_container_client(container).list_blobs()]
        assert len(names) == 1 and names[0].startswith("mailbox-report/") and names[0].endswith(".csv"), names
        blob = service.get_blob_client(container, names[0])
        assert blob.get_blob_properties().content_settings.content_type == "text/csv; charset=utf-8"
        text = blob.download_blob().readall().decode("utf-8")
    return list(csv.DictReader(io.StringIO(text)))


def audit_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "shared.jobs" and r.getMessage().startswith("job=")]


def audit_field(line: str, name: str) -> str:
    fields = dict(part.split("=", 1) for part in line.split(" ") if "=" in part)
    return fields[name]


def app_of(stack: Stack, name: str) -> dict[str, Any]:
    (app,) = [a for a in stack.world.directory.applications.values() if a["uniqueName"] == f"exo-automation-{name}"]
    return app


def sp_of(stack: Stack, name: str) -> dict[str, Any]:
    sp = stack.world.directory.sp_by_app_id(app_of(stack, name)["appId"])
    assert sp is not None
    return sp


def key_thumbprints(stack: Stack, name: str) -> set[str]:
    return {x509.load_der_x509_certificate(base64.b64decode(k["key"])).fingerprint(hashes.SHA1()).hex().upper()
            for k in app_of(stack, name)["keyCredentials"]}


def retire_key(stack: Stack, name: str, thumbprint: str) -> None:
    """What the reconciler does once the grace period is over: the old key leaves the app."""
    with stack.world.lock:
        app = app_of(stack, name)
        app["keyCredentials"] = [
            k for k in app["keyCredentials"]
            if x509.load_der_x509_certificate(base64.b64decode(k["key"])).fingerprint(hashes.SHA1()).hex().upper()
            != thumbprint]
    assert thumbprint not in key_thumbprints(stack, name)


def keyvault_requests(stack: Stack) -> int:
    return sum(row["count"] for row in stack.world.counter.snapshot() if row["service"] == "keyvault")


def rotate_after(stack: Stack, name: str, days: float) -> str:
    """Move the simulated clock, rotate through the HTTP handler, return the new thumbprint."""
    stack.world.clock.advance(days * 86400)
    response = rotate(name)
    assert response.status == 200, response.body
    return published_thumbprint(name)


def published_thumbprint(name: str) -> str:
    async def read() -> str:
        try:
            return (await connection(name)).record.thumbprint
        finally:
            await close_connections()

    return asyncio.run(read())


# -- the function as the host sees it -------------------------------------------------------------
def test_sample_job_is_a_timer_function_on_an_app_setting_schedule() -> None:
    fn = functions()["mailbox_report"]
    (binding,) = fn.get_bindings()
    assert binding.get_dict_repr()["type"] == "timerTrigger"
    assert '"schedule": "%MAILBOX_REPORT_SCHEDULE%"' in fn.get_function_json()
    assert '"runOnStartup": false' in fn.get_function_json()
    assert '"useMonitor": true' in fn.get_function_json()


# -- end to end -----------------------------------------------------------------------------------
def test_sample_job_writes_the_csv_and_follows_a_rotation_without_restart(
        stack: Stack, job_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Cache TTL 0: every run re-reads the record (1 read) and fetches a PFX only when it changed."""
    caplog.set_level(logging.INFO, logger="shared.runtime.jobs")
    monkeypatch.setenv("CONNECTION_CACHE_SECONDS", "0")
    bootstrap("report-ttl", monkeypatch)
    old = published_thumbprint("report-ttl")

    async def scenario() -> tuple[int, int, str]:
        try:
            stack.world.counter.reset()
            await mailbox_report()(timer())
            first_reads = keyvault_requests(stack)
            assert [r["UserPrincipalName"].split("@")[0] for r in read_report(job_env["AzureWebJobsStorage"],
                                                                               job_env["REPORTS_CONTAINER"])] \
                == SEEDED_UPNS

            # Eight months on the renewal is due: rotate, let the grace period pass, retire the old key.
            new = await asyncio.to_thread(rotate_after, stack, "report-ttl", 250)
            stack.world.clock.advance(25 * 3600)
            retire_key(stack, "report-ttl", old)

            stack.world.counter.reset()
            await mailbox_report()(timer())  # same process, same loop: no restart
            second_reads = keyvault_requests(stack)
            return first_reads, second_reads, new
        finally:
            await close_connections()

    first_reads, second_reads, new = asyncio.run(scenario())
    assert new != old
    first, second = audit_lines(caplog)
    assert audit_field(first, "thumbprint") == old and audit_field(first, "result") == "Succeeded"
    assert audit_field(second, "thumbprint") == new and audit_field(second, "result") == "Succeeded"
    assert first.startswith("job=mailbox_report identity=report-ttl cmdlet=Get-Mailbox items=5 durationMs=")
    assert first_reads == 2  # cold: the connection secret and the PFX
    assert second_reads == 2  # the record again, and the new version's PFX
    rows = read_report(job_env["AzureWebJobsStorage"], job_env["REPORTS_CONTAINER"])
    assert {r["RecipientTypeDetails"] for r in rows} == {"UserMailbox", "RoomMailbox", "SharedMailbox"}
    assert all(r["ProhibitSendQuota"] and r["Name"] for r in rows)


def test_cached_certificate_refused_by_entra_is_refreshed_once(
        stack: Stack, job_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Default TTL: the cached (old) certificate cannot sign in any more; the job refreshes and succeeds."""
    caplog.set_level(logging.INFO, logger="shared")
    bootstrap("report-refresh", monkeypatch)

    async def scenario() -> tuple[str, str, int]:
        try:
            old = (await connection("report-refresh")).thumbprint  # cached, no token yet
            new = await asyncio.to_thread(rotate_after, stack, "report-refresh", 250)
            stack.world.clock.advance(25 * 3600)
            retire_key(stack, "report-refresh", old)
            assert (await connection("report-refresh")).thumbprint == old  # still cached

            stack.world.counter.reset()
            await mailbox_report()(timer())
            reads = keyvault_requests(stack)
            assert (await connection("report-refresh")).thumbprint == new
            return old, new, reads
        finally:
            await close_connections()

    old, new, reads = asyncio.run(scenario())
    (line,) = audit_lines(caplog)
    assert audit_field(line, "result") == "Succeeded" and audit_field(line, "thumbprint") == new != old
    assert reads == 2
    refreshes = [r.getMessage() for r in caplog.records if "refreshing the connection once" in r.getMessage()]
    assert len(refreshes) == 1 and f"Entra ID refused certificate {old}" in refreshes[0]
    assert len(read_report(job_env["AzureWebJobsStorage"], job_env["REPORTS_CONTAINER"])) == 5


def test_overlap_keeps_the_cached_certificate_working_and_a_401_refreshes_it_once(
        stack: Stack, job_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="shared")
    bootstrap("report-401", monkeypatch)

    async def scenario() -> tuple[str, str]:
        try:
            await mailbox_report()(timer())  # the old certificate and its token are now cached
            old = (await connection("report-401")).thumbprint
            new = await asyncio.to_thread(rotate_after, stack, "report-401", 250)
            assert {old, new} <= key_thumbprints(stack, "report-401")  # the overlap window
            await mailbox_report()(timer())  # cached: still the old certificate, and it still works

            stack.world.clock.advance(25 * 3600)
            retire_key(stack, "report-401", old)
            # Exchange stops honouring the cached token (expired, revoked): one 401.
            stack.world.faults.add(Fault(service="exchange", path="InvokeCommand", status=401, count=1))
            await mailbox_report()(timer())
            return old, new
        finally:
            await close_connections()

    old, new = asyncio.run(scenario())
    first, during_overlap, after = audit_lines(caplog)
    assert audit_field(first, "thumbprint") == old
    assert audit_field(during_overlap, "thumbprint") == old and audit_field(during_overlap, "result") == "Succeeded"
    assert audit_field(after, "thumbprint") == new and audit_field(after, "result") == "Succeeded"
    refreshes = [r.getMessage() for r in caplog.records if "refreshing the connection once" in r.getMessage()]
    assert len(refreshes) == 1 and "answered 401" in refreshes[0]


# -- what a job is told when its identity lost something -------------------------------------------
def test_job_whose_identity_lost_its_role_names_the_role(
        stack: Stack, job_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="shared.runtime.jobs")
    bootstrap("report-norole", monkeypatch)
    sp_id = sp_of(stack, "report-norole")["id"]
    with stack.world.lock:
        d = stack.world.directory
        for key in [k for k, a in d.role_assignments.items() if a["principalId"] == sp_id]:
            del d.role_assignments[key]

    async def scenario() -> None:
        try:
            await mailbox_report()(timer())
        finally:
            await close_connections()

    with pytest.raises(ExchangeRoleMissing) as info:
        asyncio.run(scenario())
    assert "Exchange Recipient Administrator" in str(info.value)
    assert "report-norole" in str(info.value)
    (line,) = audit_lines(caplog)
    assert audit_field(line, "result") == "ExchangeRoleMissing"
    assert "Exchange Recipient Administrator" in line
    with BlobServiceClient.from_connection_string(job_env["AzureWebJobsStorage"]) as service:
        assert not service.get_container_client(job_env["REPORTS_CONTAINER"]).exists()


def test_job_whose_identity_lost_its_consent_names_the_consent(
        stack: Stack, job_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="shared.runtime.jobs")
    bootstrap("report-noconsent", monkeypatch)
    sp_id = sp_of(stack, "report-noconsent")["id"]
    exchange_sp = stack.world.resource_sp(EXCHANGE_APP_ID)
    with stack.world.lock:
        d = stack.world.directory
        for key in [k for k, a in d.app_role_assignments.items()
                    if a["principalId"] == sp_id and a["resourceId"] == exchange_sp["id"]
                    and a["appRoleId"] == EXCHANGE_MANAGE_AS_APP]:
            del d.app_role_assignments[key]

    async def scenario() -> None:
        try:
            await mailbox_report()(timer())
        finally:
            await close_connections()

    with pytest.raises(ExchangeConsentMissing) as info:
        asyncio.run(scenario())
    assert "consent" in str(info.value) and "Exchange.ManageAsApp" in str(info.value)
    (line,) = audit_lines(caplog)
    assert audit_field(line, "result") == "ExchangeConsentMissing"


GLOBAL_READER = "f2ef992c-3afb-46b9-b7cf-a126ee74c451"


def swap_role(stack: Stack, name: str, role: str) -> None:
    sp_id = sp_of(stack, name)["id"]
    with stack.world.lock:
        assignments = stack.world.directory.role_assignments.values()
        for assignment in [a for a in assignments if a["principalId"] == sp_id]:
            assignment["roleDefinitionId"] = role


def run_body(name: str, body: Callable[[JobContext], Awaitable[None]]) -> Any:
    async def scenario() -> Any:
        try:
            return await run_job(name, "MAILBOX_REPORT_IDENTITY", body)
        finally:
            await close_connections()

    return asyncio.run(scenario())


def test_job_cmdlet_errors_carry_the_server_reason_and_a_typo_is_not_a_missing_role(
        stack: Stack, job_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="shared.jobs")
    caplog.set_level(logging.INFO, logger="shared.exchange")
    bootstrap("report-errors", monkeypatch)

    async def unknown_mailbox(job: JobContext) -> None:
        await job.exchange.invoke("Get-Mailbox", {"Identity": "nobody"})

    with pytest.raises(ExchangeNotFound) as not_found:
        run_body("lookup", unknown_mailbox)
    assert "couldn't be found" in str(not_found.value) and "Invalid Operation" not in str(not_found.value)

    async def typo(job: JobContext) -> None:
        await job.exchange.invoke("Get-Mailboxx")

    with pytest.raises(ExchangeCmdletNotPermitted) as refused:
        run_body("typo", typo)
    assert not isinstance(refused.value, ExchangeRoleMissing)
    assert "unknown cmdlet or not permitted for this identity's role (it holds 'Exchange Recipient " \
           "Administrator')" in str(refused.value)

    async def no_change(job: JobContext) -> None:
        await job.exchange.invoke("Set-Mailbox", {"Identity": "adelev", "DisplayName": "Adele Vance"})

    assert run_body("rename", no_change).calls[0].warnings
    lookup, typo_line, rename = audit_lines(caplog)
    assert audit_field(lookup, "result") == "ExchangeNotFound" and "couldn't be found" in lookup
    assert audit_field(typo_line, "result") == "ExchangeCmdletNotPermitted"
    assert audit_field(rename, "result") == "Succeeded"
    assert any("no settings of 'Adele Vance' have been modified" in r.getMessage() for r in caplog.records
               if r.name == "shared.exchange")


def test_job_whose_role_does_not_allow_a_cmdlet_names_the_role_it_holds(
        stack: Stack, job_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="shared.jobs")
    bootstrap("report-reader", monkeypatch)
    swap_role(stack, "report-reader", GLOBAL_READER)  # an administrator made it read-only

    async def read_then_write(job: JobContext) -> None:
        assert len(await job.exchange.invoke("Get-Recipient")) == len(SEEDED_UPNS)
        await job.exchange.invoke("Set-Mailbox", {"Identity": "adelev", "CustomAttribute1": "x"})

    with pytest.raises(ExchangeCmdletNotPermitted) as info:
        run_body("tagger", read_then_write)
    assert info.value.roles == ("Global Reader",) and "Set-Mailbox" in str(info.value)
    assert "report-reader" in str(info.value)
    (line,) = audit_lines(caplog)
    assert audit_field(line, "result") == "ExchangeCmdletNotPermitted" and "Global Reader" in line
    assert stack.world.mailboxes[0].custom_attribute1 == ""


def test_job_without_its_identity_setting_names_the_setting(
        stack: Stack, job_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="shared.runtime.jobs")
    monkeypatch.delenv("MAILBOX_REPORT_IDENTITY", raising=False)
    with pytest.raises(SettingsError, match="MAILBOX_REPORT_IDENTITY"):
        asyncio.run(mailbox_report()(timer()))
    monkeypatch.setenv("MAILBOX_REPORT_IDENTITY", "nobody-here")

    async def unknown() -> None:
        try:
            await mailbox_report()(timer())
        finally:
            await close_connections()

    with pytest.raises(IdentityNotFound, match="nobody-here"):
        asyncio.run(unknown())
    missing, not_found = audit_lines(caplog)
    assert audit_field(missing, "result") == "SettingMissing" and audit_field(missing, "identity") == "-"
    assert audit_field(not_found, "result") == "IdentityNotFound" and audit_field(not_found, "cmdlet") == "Get-Mailbox"


# -- connection() itself --------------------------------------------------------------------------
def test_connection_is_cached_costs_two_reads_cold_and_never_shows_the_key(
        stack: Stack, job_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    bootstrap("conn-cache", monkeypatch)

    async def scenario() -> None:
        try:
            stack.world.counter.reset()
            first = await connection("conn-cache")
            assert keyvault_requests(stack) == 2
            again = await connection("conn-cache")
            assert again is first and keyvault_requests(stack) == 2  # from memory
            assert first.record.thumbprint == first.thumbprint == first.certificate.thumbprint
            assert first.certificate.private_key.key_size == 2048
            for scope in (first.exchange_scope, first.graph_scope):
                token = await first.credential.get_token(scope)
                assert token.token
            shown = repr(first) + repr(first.certificate) + str(first)
            assert first.thumbprint in shown
            pfx_b64 = base64.b64encode(first.certificate.pfx).decode()
            assert pfx_b64[:40] not in shown and "PRIVATE" not in shown
        finally:
            await close_connections()

    asyncio.run(scenario())


def open_clients() -> list[Any]:
    """Every aiohttp session (Key Vault, azure-identity) and httpx async client (Exchange) not closed yet."""
    import aiohttp
    import httpx

    gc.collect()
    return [o for o in gc.get_objects() if (isinstance(o, aiohttp.ClientSession) and not o.closed)
            or (isinstance(o, httpx.AsyncClient) and not o.is_closed)]


def test_a_script_that_owns_its_loop_closes_every_session_it_opened(
        stack: Stack, job_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/jobs.md: a script that runs its own loop calls close_connections() before the loop ends;
    then the Key Vault client, the credentials and the Exchange HTTP client are closed, none left to
    warn "Unclosed client session" at exit."""
    from shared.runtime.exchange import exchange_client

    bootstrap("conn-closed", monkeypatch)
    before = open_clients()  # kept alive, so that no new client can take an id of theirs

    async def script() -> list[dict[str, Any]]:
        try:
            conn = await connection("conn-closed")
            assert (await conn.credential.get_token(conn.graph_scope)).token
            return await exchange_client("conn-closed").invoke("Get-Mailbox", {"ResultSize": "1"})
        finally:
            await close_connections()

    assert len(asyncio.run(script())) == 1
    known = {id(o) for o in before}
    assert [o for o in open_clients() if id(o) not in known] == []


def test_connection_sync_serves_a_plain_script(stack: Stack, job_env: dict[str, str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from shared.runtime.exchange import invoke_sync

    bootstrap("conn-sync", monkeypatch)
    try:
        first = connection_sync("conn-sync")
        assert connection_sync("conn-sync").credential is first.credential
        assert first.credential.get_token(first.exchange_scope).token
        mailboxes = invoke_sync("conn-sync", "Get-Mailbox", {"RecipientTypeDetails": "SharedMailbox"})
        assert [m["Name"] for m in mailboxes] == ["Sales"]
        assert "PRIVATE" not in repr(first)
    finally:
        close_sync_connections()


def test_connection_names_the_key_vault_role_a_job_lacks(stack: Stack, job_env: dict[str, str],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from shared.errors import NeedsOperator

    bootstrap("conn-denied", monkeypatch)
    stack.world.vault_roles[stack.world.platform.object_id] = set()

    async def scenario() -> None:
        try:
            await connection("conn-denied")
        finally:
            await close_connections()

    with pytest.raises(NeedsOperator, match="Key Vault Secrets User") as info:
        asyncio.run(scenario())
    assert info.value.reason == "VaultPermissionMissing"


def test_key_vault_outage_serves_the_cached_connection_and_fails_a_cold_one(
        stack: Stack, job_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from shared.errors import Retryable

    monkeypatch.setenv("CONNECTION_CACHE_SECONDS", "0")
    bootstrap("conn-outage", monkeypatch)

    async def scenario() -> None:
        try:
            cached = await connection("conn-outage")
            stack.world.faults.add(Fault(service="keyvault", status=503, retry_after=0.01, count=None))
            assert await connection("conn-outage") is cached  # stale, with a warning
            await close_connections()
            with pytest.raises(Retryable) as info:
                await connection("conn-outage")  # nothing cached: nothing to fall back on
            assert info.value.reason == "VaultUnavailable"
        finally:
            stack.world.faults.clear()
            await close_connections()

    asyncio.run(scenario())
    assert any("could not be re-read" in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)


def test_concurrent_refreshes_after_one_failure_share_one_new_credential(
        stack: Stack, job_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    from shared.runtime.connection import refresh_connection

    bootstrap("conn-shared", monkeypatch)

    async def scenario() -> None:
        try:
            failed = await connection("conn-shared")
            stack.world.counter.reset()
            first, second = await asyncio.gather(refresh_connection(failed), refresh_connection(failed))
            assert first is second and first.credential is not failed.credential
            assert first.certificate is failed.certificate  # same version: the PFX is not read again
            assert keyvault_requests(stack) == 1
            assert await connection("conn-shared") is first
        finally:
            await close_connections()

    asyncio.run(scenario())
