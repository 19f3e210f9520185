import importlib

import pytest

import shared


@pytest.mark.parametrize("name", shared.__all__)
def test_every_public_name_resolves(name: str) -> None:
    assert getattr(shared, name) is getattr(importlib.import_module(shared._EXPORTS[name]), name)


def test_unknown_names_are_attribute_errors() -> None:
    with pytest.raises(AttributeError):
        shared.not_a_thing  # noqa: B018


def test_the_public_surface_is_pinned() -> None:
    """What jobs and other functions may import from `shared` itself: changing it is an API change."""
    assert shared.__all__ == ["ExoAutomationError", "NeedsOperator", "Retryable", "Settings", "connection",
                              "connection_sync", "exchange_client", "exchange_job", "invoke_sync",
                              "refresh_connection"]


ADMIN_STACK = ("shared.reconciler", "shared.core.planner", "shared.core.checks", "shared.adapters.directory",
               "shared.adapters.graph", "shared.platform", "shared.sweep", "msgraph", "msgraph_core")


def test_a_job_process_does_not_import_the_admin_stack() -> None:
    """A job pays for what it uses: the connection record, the Exchange client, the job helper."""
    import subprocess
    import sys

    probe = ("import sys, json; import shared, shared.runtime.connection, shared.runtime.exchange, "
             "shared.runtime.jobs; shared.connection; "
             "shared.exchange_client; shared.connection_sync; shared.exchange_job; "
             "print(json.dumps(sorted(m for m in sys.modules if m.startswith(('shared', 'msgraph')))))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    loaded = set(__import__("json").loads(out))
    assert {"shared.runtime.connection", "shared.runtime.exchange", "shared.runtime.jobs"} <= loaded
    assert not loaded & set(ADMIN_STACK), sorted(loaded & set(ADMIN_STACK))
