"""Clients of the Functions storage account (`AzureWebJobsStorage`), as the host itself connects.

A connection string (`UseDevelopmentStorage=true` with Azurite), or the identity-based form:
`AzureWebJobsStorage__blobServiceUri` / `__queueServiceUri`, or `__accountName` for both, with
`AzureWebJobsStorage__clientId` naming a user-assigned managed identity.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Literal

from shared.errors import SettingsError
from shared.settings import Settings

STORAGE_CONNECTION = "AzureWebJobsStorage"

Service = Literal["blob", "queue"]


def storage_client(service: Service, settings: Settings, env: Mapping[str, str], *,
                   quick: bool = False) -> tuple[Any, Any]:
    """(BlobServiceClient or QueueServiceClient, credential it owns or None) for the host's storage.

    `quick`: for a request an HTTP caller waits on (leases, operations): two retries a second or
    two apart and short timeouts, instead of the SDK's default of about a minute of retries, so an
    unreachable storage account is answered with a 503 in seconds."""
    if service == "blob":
        from azure.storage.blob.aio import BlobServiceClient as Client
    else:
        from azure.storage.queue.aio import QueueServiceClient as Client  # type: ignore[assignment]
    # The clients pass these to their (async) ExponentialRetry.
    options: dict[str, Any] = {"initial_backoff": 1, "increment_base": 2, "retry_total": 2,
                               "connection_timeout": 5, "read_timeout": 20} if quick else {}

    connection_string = (env.get(STORAGE_CONNECTION) or "").strip()
    if connection_string:
        return Client.from_connection_string(connection_string, **options), None
    uri_setting = f"{STORAGE_CONNECTION}__{service}ServiceUri"
    uri = (env.get(uri_setting) or "").strip()
    account = (env.get(f"{STORAGE_CONNECTION}__accountName") or "").strip()
    if not uri and account:
        uri = f"https://{account}.{service}.core.windows.net"
    if not uri:
        raise SettingsError(f"setting {STORAGE_CONNECTION} is missing: expected a storage connection string, or "
                            f"{uri_setting} (or __accountName) for an identity-based connection",
                            reason="SettingMissing")
    if not uri.startswith("https://"):
        raise SettingsError(f"setting {uri_setting} is malformed ({uri!r}): expected an https:// URL")
    from shared.adapters.credentials import platform_credential

    client_id = (env.get(f"{STORAGE_CONNECTION}__clientId") or "").strip()
    storage_settings = dataclasses.replace(settings, managed_identity_client_id=client_id) if client_id else settings
    credential = platform_credential(storage_settings)
    return Client(uri, credential=credential, **options), credential
