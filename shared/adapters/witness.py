"""The witness of a managedIdentity identity's grants: its lease blob's metadata in the Functions storage account.

The registry records the grants the product made to a managed identity in the tags of the connection secret,
which a Key Vault secret writer can edit. The same record is kept here too, where only writers of the Functions
storage account can reach it, and written only under the identity's lease (`shared.lease`), by the run that
holds it. Decommission removes a grant only if both records say the product made it
(`shared.core.registry.judge_grants`). The format (and the comparison) is pure; this module only reads and
writes the metadata.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping

from shared.adapters.storage import storage_client
from shared.lease import LEASE_CONTAINER, LeaseLost, StorageUnavailable, held_lease
from shared.settings import Settings


class GrantWitness:
    """Reads and writes the metadata of `identity-leases/<name>`."""

    def __init__(self, settings: Settings, environ: Mapping[str, str] | None = None) -> None:
        self.settings = settings
        self.env = os.environ if environ is None else environ

    async def read(self, name: str) -> dict[str, str] | None:
        """The lease blob's metadata (empty: none written yet); None: there is no lease blob."""
        from azure.core.exceptions import AzureError, ResourceNotFoundError

        held = held_lease(name)
        try:
            if held is not None:  # the run's own client: no second connection
                properties = await held.blob.get_blob_properties()
            else:  # a dry run holds no lease; reading needs none
                service, credential = storage_client("blob", self.settings, self.env, quick=True)
                try:
                    async with service:
                        properties = await service.get_blob_client(LEASE_CONTAINER, name).get_blob_properties()
                finally:
                    if credential is not None:
                        await credential.close()
        except ResourceNotFoundError:
            return None
        except AzureError as exc:
            raise StorageUnavailable(f"the witness of identity {name!r} could not be read from the Functions storage "
                                     f"account ({type(exc).__name__})", retry_after=10) from exc
        return dict(properties.metadata or {})

    async def write(self, name: str, metadata: Mapping[str, str]) -> None:
        """Replace the lease blob's metadata, under the lease this run holds (Blob storage refuses a write to a
        leased blob without its lease id: a run that lost its lease cannot write the witness)."""
        from azure.core.exceptions import AzureError, HttpResponseError

        held = held_lease(name)
        if held is None or held.blob is None:
            raise LeaseLost(f"the witness of identity {name!r} is written only under the identity's lease, which "
                            "this run does not hold", retry_after=15)
        try:
            await held.blob.set_blob_metadata(dict(metadata), lease=held.lease)
        except HttpResponseError as exc:
            if exc.status_code == 412:  # the lease is broken, or expired and taken by another run
                held.lost = f"witness write refused: {getattr(exc, 'error_code', None) or exc.status_code}"
                held.check(asyncio.get_running_loop().time())  # raises LeaseLost, as before any other write
            raise StorageUnavailable(f"the Functions storage account refused the witness of identity {name!r} "
                                     f"({exc.status_code} {getattr(exc, 'error_code', None)})",
                                     retry_after=10) from exc
        except AzureError as exc:
            raise StorageUnavailable(f"the witness of identity {name!r} could not be written "
                                     f"({type(exc).__name__})", retry_after=10) from exc


__all__ = ["GrantWitness"]
