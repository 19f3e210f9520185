"""The pure parts of jobs: the audit line, the report CSV, the storage and job settings."""

from __future__ import annotations

import asyncio
import csv
import io

import pytest

from shared.errors import SettingsError
from shared.functions.sample_jobs import REPORT_COLUMNS, mailbox_report_csv, report_blob_name
from shared.runtime.exchange import CmdletCall
from shared.runtime.jobs import JobRun, _blob_service, audit_line, exchange_job, run_job
from shared.settings import Settings

BASE = {
    "KEY_VAULT_URL": "https://kv-contoso.vault.azure.net",
    "AZURE_TENANT_ID": "11111111-2222-3333-4444-555555555555",
    "EXO_ORGANIZATION": "contoso.onmicrosoft.com",
}


def test_audit_line_has_every_field_in_order() -> None:
    run = JobRun("mailbox_report", "reports", [CmdletCall("Get-Mailbox", 3, 1, 10, "AB"),
                                               CmdletCall("Get-Mailbox", 2, 1, 5, "CD")], 5, 42)
    assert audit_line(run) == ("job=mailbox_report identity=reports cmdlet=Get-Mailbox items=5 durationMs=42 "
                               "result=Succeeded thumbprint=CD")


def test_audit_line_of_a_failure_quotes_the_message() -> None:
    run = JobRun("j", "", [], 0, 1, "SettingMissing", 'setting X is "missing"')
    assert audit_line(run) == ('job=j identity=- cmdlet=- items=0 durationMs=1 result=SettingMissing thumbprint=- '
                               'message="setting X is \\"missing\\""')


def test_report_csv_has_the_columns_sorted_by_upn_and_quotes_commas() -> None:
    text = mailbox_report_csv([
        {"Name": "Zed, Z", "UserPrincipalName": "zed@contoso.onmicrosoft.com", "RecipientTypeDetails": "UserMailbox",
         "ProhibitSendQuota": "99 GB (106,300,440,576 bytes)", "Alias": "ignored"},
        {"Name": "Amy", "UserPrincipalName": "amy@contoso.onmicrosoft.com", "RecipientTypeDetails": "SharedMailbox",
         "ProhibitSendQuota": None},
    ])
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == list(REPORT_COLUMNS)
    assert [r[0] for r in rows[1:]] == ["Amy", "Zed, Z"]
    assert rows[1][3] == "" and rows[2][3] == "99 GB (106,300,440,576 bytes)"
    assert text.endswith("\r\n")


def test_report_blob_name_is_dated() -> None:
    import datetime as dt

    assert report_blob_name(dt.date(2026, 3, 4)) == "mailbox-report/2026-03-04.csv"


@pytest.mark.parametrize(("name", "value", "fragment"), [
    ("CONNECTION_CACHE_SECONDS", "-1", "CONNECTION_CACHE_SECONDS"),
    ("CONNECTION_CACHE_SECONDS", "soon", "number from 0"),
    ("REPORTS_CONTAINER", "Mailbox_Reports", "blob container name"),
], ids=["negative-ttl", "ttl-not-a-number", "container-uppercase"])
def test_job_settings_name_the_setting(name: str, value: str, fragment: str) -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_environment({**BASE, name: value})
    assert name in str(info.value) and fragment in str(info.value)


def test_job_settings_defaults() -> None:
    settings = Settings.from_environment(BASE)
    assert settings.connection_cache_seconds == 300.0
    assert settings.reports_container == "mailbox-reports"


def test_storage_needs_a_connection_string_or_an_identity_based_uri() -> None:
    settings = Settings.from_environment(BASE)
    with pytest.raises(SettingsError, match="AzureWebJobsStorage__blobServiceUri"):
        _blob_service(settings, {})
    with pytest.raises(SettingsError, match="https"):
        _blob_service(settings, {"AzureWebJobsStorage__blobServiceUri": "http://acct.blob.core.windows.net"})


def test_storage_identity_based_forms() -> None:
    async def scenario() -> list[str]:
        settings = Settings.from_environment(BASE)
        urls = []
        for env in ({"AzureWebJobsStorage__blobServiceUri": "https://acct.blob.core.windows.net"},
                    {"AzureWebJobsStorage__accountName": "acct2",
                     "AzureWebJobsStorage__clientId": "99999999-2222-3333-4444-555555555555"}):
            service, credential = _blob_service(settings, env)
            urls.append(service.url)
            await service.close()
            await credential.close()
        return urls

    assert asyncio.run(scenario()) == ["https://acct.blob.core.windows.net/", "https://acct2.blob.core.windows.net/"]


def test_a_malformed_identity_setting_is_named() -> None:
    async def body(job: object) -> None:
        raise AssertionError("must not run")

    with pytest.raises(SettingsError, match="REPORT_IDENTITY is malformed"):
        asyncio.run(run_job("j", "REPORT_IDENTITY", body, environ={**BASE, "REPORT_IDENTITY": "Not A Name"}))


def test_exchange_job_refuses_bad_setting_names() -> None:
    import azure.functions as func

    with pytest.raises(ValueError, match="app setting"):
        exchange_job(func.Blueprint(), name="j", identity_setting="%BAD%", schedule_setting="S")
