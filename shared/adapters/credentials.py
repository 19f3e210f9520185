"""The platform's own token credential, without the admin stack.

Kept apart from `shared.platform` (which wires the reconciler, planner and Graph/Key Vault gateways)
so a job that only needs its connection record imports none of those.
"""

from __future__ import annotations

from typing import Any

from shared.settings import Settings


def platform_credential(settings: Settings) -> Any:
    """The platform's own identity: the Function App's managed identity in Azure; az login for an
    admin running the CLI; the stand-ins' managed-identity endpoint locally."""
    from azure.identity.aio import DefaultAzureCredential

    return DefaultAzureCredential(
        managed_identity_client_id=settings.managed_identity_client_id,
        authority=settings.authority_host,
        exclude_interactive_browser_credential=True,
    )
