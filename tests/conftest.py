"""Fixtures shared by the whole suite.

The stand-ins run in-process for the session (one CA, one set of ports); each test that asks for
`stack` gets the tenant reset to its seed, the clock back at zero and no faults left over.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack import Stack

# Nothing may reach a real endpoint by accident: these families are cleared for every test.
_CLEARED_PREFIXES = ("AZURE_", "MSI_", "IDENTITY_", "APPLICATIONINSIGHTS_", "KEY_VAULT_", "GRAPH_",
                     "EXO_", "DEVSTACK_")


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(_CLEARED_PREFIXES):
            monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="session")
def _session_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = Stack.start(Path(tmp_path_factory.mktemp("devstack")))
    yield stack
    stack.stop()


@pytest.fixture()
def stack(_session_stack: Stack, monkeypatch: pytest.MonkeyPatch) -> Stack:
    """The stand-ins, reset, with the environment pointing every SDK at them."""
    _session_stack.world.reset()
    for name, value in _session_stack.settings().items():
        monkeypatch.setenv(name, value)
    return _session_stack
