"""Certificate-based automation identities for Exchange Online.

The package behind the Functions app and the admin CLI. What jobs and other functions use:

    from shared.connection import connection             # async (the module shares the name)
    from shared import exchange_client                   # async
    from shared import connection_sync, invoke_sync      # plain scripts

Everything else (settings, the pure planner, the Key Vault and Graph gateways, the reconciler, the
sweep) is importable from its module. Names are resolved lazily so that importing the Functions
app stays fast (cold start is measured by bench/coldstart).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "connection_sync": "shared.connection",
    "refresh_connection": "shared.connection",
    "exchange_client": "shared.exchange",
    "invoke_sync": "shared.exchange",
    "exchange_job": "shared.jobs",
    "Settings": "shared.settings",
    "ExoAutomationError": "shared.errors",
    "NeedsOperator": "shared.errors",
    "Retryable": "shared.errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'shared' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
