"""The sample scheduled job: a daily mailbox report (Get-Mailbox → CSV in blob storage).

Settings: `MAILBOX_REPORT_IDENTITY` (the automation identity it runs as), `MAILBOX_REPORT_SCHEDULE`
(NCRONTAB, e.g. `0 0 6 * * *`), `REPORTS_CONTAINER` (default `mailbox-reports`). The report lands at
`<container>/mailbox-report/<yyyy-mm-dd>.csv` (UTC date of the run; a second run that day
overwrites it). Turn the job off with the host's `AzureWebJobs.mailbox_report.Disabled=true`.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections.abc import Iterable, Mapping
from typing import Any

import azure.functions as func

from shared.runtime.jobs import JobContext, exchange_job

bp = func.Blueprint()  # type: ignore[no-untyped-call]

REPORT_COLUMNS = ("Name", "UserPrincipalName", "RecipientTypeDetails", "ProhibitSendQuota")
CSV_CONTENT_TYPE = "text/csv; charset=utf-8"


def report_blob_name(day: dt.date) -> str:
    return f"mailbox-report/{day.isoformat()}.csv"


def mailbox_report_csv(mailboxes: Iterable[Mapping[str, Any]]) -> str:
    """The report's CSV (RFC 4180, header row first), one row per mailbox, sorted by UPN."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(REPORT_COLUMNS)
    rows = sorted(mailboxes, key=lambda m: str(m.get("UserPrincipalName", "")).lower())
    for mailbox in rows:
        writer.writerow(["" if mailbox.get(column) is None else str(mailbox.get(column)) for column in REPORT_COLUMNS])
    return out.getvalue()


@exchange_job(bp, name="mailbox_report", identity_setting="MAILBOX_REPORT_IDENTITY",
              schedule_setting="MAILBOX_REPORT_SCHEDULE")
async def mailbox_report(job: JobContext) -> None:
    """Every mailbox's name, UPN, type and send quota, as CSV in the reports container."""
    mailboxes = await job.exchange.invoke("Get-Mailbox", {"ResultSize": "Unlimited"})
    day = dt.datetime.now(dt.UTC).date()
    await job.write_blob(job.settings.reports_container, report_blob_name(day),
                         mailbox_report_csv(mailboxes).encode("utf-8"), CSV_CONTENT_TYPE)
