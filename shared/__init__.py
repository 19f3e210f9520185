"""Certificate-based automation identities for Exchange Online.

The package behind the Functions app and the admin CLI. What jobs and other functions use:

    from shared import connection, exchange_client       # async
    from shared import connection_sync, invoke_sync      # plain scripts

The rooms: `shared.functions` (the Functions blueprints), `shared.core` (the pure core: specs,
checks, planner, renewal, record and registry formats), `shared.adapters` (Graph, Key Vault, the
platform credential), `shared.runtime` (what jobs import: connection record, Exchange client, job
helper); at the top, the application layer (reconciler, sweep, service, platform, CLI, settings,
errors, audit, notifications, telemetry). Names are resolved lazily so that importing the Functions
app stays fast (cold start is measured by bench/coldstart).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "connection": "shared.runtime.connection",
    "connection_sync": "shared.runtime.connection",
    "refresh_connection": "shared.runtime.connection",
    "exchange_client": "shared.runtime.exchange",
    "invoke_sync": "shared.runtime.exchange",
    "exchange_job": "shared.runtime.jobs",
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
