"""Scheduled Exchange jobs in a few lines: a timer trigger, a ready Exchange client, one audit line per run.

    bp = func.Blueprint()

    @exchange_job(bp, name="mailbox_report", identity_setting="MAILBOX_REPORT_IDENTITY",
                  schedule_setting="MAILBOX_REPORT_SCHEDULE")
    async def mailbox_report(job: JobContext) -> None:
        mailboxes = await job.exchange.invoke("Get-Mailbox", {"ResultSize": "Unlimited"})
        ...

The identity and the schedule are app settings, so one build serves every environment: the host
resolves `%MAILBOX_REPORT_SCHEDULE%` (NCRONTAB, six fields); the job reads the identity name at each
run. `run_on_startup` stays off (it fires on every start and scale-out) and `use_monitor` on.

Each run logs exactly one audit line (logger `shared.runtime.jobs`), success or not:

    job=mailbox_report identity=reports cmdlet=Get-Mailbox items=5 durationMs=412 result=Succeeded thumbprint=AB12…

`result` is `Succeeded` or the failure's reason (`ExchangeRoleMissing`, `ExchangeCmdletNotPermitted`,
`ExchangeConsentMissing`, `SettingMissing`, …; a `message="…"` field then says what to fix). The
failure is re-raised so the host marks the invocation failed. Only names, counts and thumbprints are
logged: no tokens, no keys.

Job output goes to the Functions storage account (`write_blob`), through the same connection the
host uses: `AzureWebJobsStorage` (a connection string; `UseDevelopmentStorage=true` with Azurite) or
the identity-based form `AzureWebJobsStorage__blobServiceUri` / `AzureWebJobsStorage__accountName`
(with `AzureWebJobsStorage__clientId` for a user-assigned identity).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import azure.functions as func

from shared.adapters.storage import STORAGE_CONNECTION as STORAGE_CONNECTION
from shared.core.spec import NAME_PATTERN
from shared.errors import ExoAutomationError, SettingsError, first_line
from shared.runtime.connection import Connection
from shared.runtime.exchange import CmdletCall, ExchangeClient
from shared.settings import Settings

__all__ = ["JobContext", "JobRun", "audit_line", "exchange_job", "run_job", "write_blob"]

# The logger keeps its name from before the runtime moved into a sub-package: log queries rely on it.
logger = logging.getLogger("shared.jobs")

_SETTING_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_FUNCTION_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,127}$")


@dataclass
class JobContext:
    """What a job body gets: its identity, the settings, and an Exchange client acting as the identity."""

    name: str
    identity: str
    settings: Settings
    exchange: ExchangeClient
    timer: Any = None
    items: int | None = None  # set to report a count other than the objects the cmdlets returned

    async def connection(self) -> Connection:
        """The identity's connection (record, certificate, credential), e.g. for Graph calls."""
        return await self.exchange.cache.get(self.identity)

    async def write_blob(self, container: str, blob_name: str, data: bytes, content_type: str) -> str:
        """Store job output in the Functions storage account; returns the blob URL."""
        return await write_blob(self.settings, container, blob_name, data, content_type)


JobBody = Callable[[JobContext], Awaitable[None]]


@dataclass
class JobRun:
    """The outcome of one run, as the audit line reports it."""

    job: str
    identity: str
    calls: list[CmdletCall] = field(default_factory=list)
    items: int = 0
    duration_ms: int = 0
    result: str = "Succeeded"
    message: str = ""

    @property
    def cmdlets(self) -> str:
        names = list(dict.fromkeys(call.cmdlet for call in self.calls))
        return ",".join(names) or "-"

    @property
    def thumbprint(self) -> str:
        used = [call.thumbprint for call in self.calls if call.thumbprint]
        return used[-1] if used else "-"


def audit_line(run: JobRun) -> str:
    line = (f"job={run.job} identity={run.identity or '-'} cmdlet={run.cmdlets} items={run.items} "
            f"durationMs={run.duration_ms} result={run.result} thumbprint={run.thumbprint}")
    if run.message:
        line += f" message={json.dumps(run.message[:500])}"
    return line


def _identity_from(setting: str, job: str, environ: Mapping[str, str]) -> str:
    value = (environ.get(setting) or "").strip()
    if not value:
        raise SettingsError(f"setting {setting} is missing: expected the name of the automation identity the "
                            f"{job} job runs as", reason="SettingMissing")
    if not NAME_PATTERN.fullmatch(value):
        raise SettingsError(f"setting {setting} is malformed ({value!r}): expected an identity name (lower-case "
                            "letters, digits, single hyphens)")
    return value


async def run_job(name: str, identity_setting: str, body: JobBody, *, timer: Any = None,
                  settings: Settings | None = None, environ: Mapping[str, str] | None = None) -> JobRun:
    """Run a job body once as the identity named by `identity_setting`, logging its audit line."""
    env = os.environ if environ is None else environ
    started = time.perf_counter()
    run = JobRun(name, (env.get(identity_setting) or "").strip())
    try:
        run.identity = _identity_from(identity_setting, name, env)
        settings = settings or Settings.from_environment(env)
        client = ExchangeClient(run.identity, settings=settings)
        run.calls = client.calls
        context = JobContext(name, run.identity, settings, client, timer)
        await body(context)
        run.items = context.items if context.items is not None else sum(call.items for call in run.calls)
    except Exception as exc:
        run.items = sum(call.items for call in run.calls)
        run.result = exc.reason if isinstance(exc, ExoAutomationError) else type(exc).__name__
        run.message = exc.message if isinstance(exc, ExoAutomationError) else first_line(str(exc))
        run.duration_ms = int((time.perf_counter() - started) * 1000)
        logger.error(audit_line(run))
        raise
    run.duration_ms = int((time.perf_counter() - started) * 1000)
    logger.info(audit_line(run))
    return run


def exchange_job(bp: func.Blueprint, *, name: str, identity_setting: str, schedule_setting: str
                 ) -> Callable[[JobBody], Any]:
    """Register `body` as timer function `name` on `bp`; returns the Functions builder (tests:
    `.build().get_user_function()`)."""
    for setting in (identity_setting, schedule_setting):
        if not _SETTING_NAME.match(setting):
            raise ValueError(f"{setting!r} is not an app setting name")
    if not _FUNCTION_NAME.fullmatch(name):
        raise ValueError(f"{name!r} is not a function name")

    def register(body: JobBody) -> Any:
        async def handler(timer: func.TimerRequest) -> None:
            await run_job(name, identity_setting, body, timer=timer)

        handler.__name__ = handler.__qualname__ = name
        handler.__doc__ = body.__doc__
        trigger = bp.timer_trigger(arg_name="timer", schedule=f"%{schedule_setting}%", run_on_startup=False,
                                   use_monitor=True)
        return bp.function_name(name)(trigger(handler))

    return register


# -- job output -----------------------------------------------------------------------------------
async def write_blob(settings: Settings, container: str, blob_name: str, data: bytes, content_type: str,
                     environ: Mapping[str, str] | None = None) -> str:
    """Upload (overwrite) one blob in the Functions storage account, creating the container if needed."""
    from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
    from azure.storage.blob import ContentSettings

    service, credential = _blob_service(settings, os.environ if environ is None else environ)
    try:
        async with service:
            blob = service.get_blob_client(container, blob_name)
            upload = {"overwrite": True, "content_settings": ContentSettings(content_type=content_type)}
            try:
                await blob.upload_blob(data, **upload)
            except ResourceNotFoundError:
                with contextlib.suppress(ResourceExistsError):  # created concurrently
                    await service.create_container(container)
                await blob.upload_blob(data, **upload)
            url: str = blob.url
            return url
    finally:
        if credential is not None:
            await credential.close()


def _blob_service(settings: Settings, env: Mapping[str, str]) -> tuple[Any, Any]:
    """(BlobServiceClient, credential it owns or None) from the host's AzureWebJobsStorage settings."""
    from shared.adapters.storage import storage_client

    return storage_client("blob", settings, env)
