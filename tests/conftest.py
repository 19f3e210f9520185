"""Fixtures shared by the whole suite.

The stand-ins run in-process for the session (one CA, one set of ports); each test that asks for
`stack` gets the tenant reset to its seed, the clock back at zero and no faults left over.
Azurite (npm, `npm ci`) runs as a child process for the session when a test asks for `azurite`.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack import Stack
from devstack.azurite import Azurite
from devstack.pki import CertificateAuthority

# Nothing may reach a real endpoint by accident: these families are cleared for every test.
_CLEARED_PREFIXES = ("AZURE_", "MSI_", "IDENTITY_", "APPLICATIONINSIGHTS_", "KEY_VAULT_", "GRAPH_",
                     "EXO_", "DEVSTACK_")


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(_CLEARED_PREFIXES):
            monkeypatch.delenv(name, raising=False)


_SESSION_CA: CertificateAuthority | None = None
_SESSION_DIR = Path(tempfile.mkdtemp(prefix="devstack-tests-"))


def pytest_configure(config: pytest.Config) -> None:
    """Trust the session's CA before anything imports aiohttp, which reads SSL_CERT_FILE once."""
    global _SESSION_CA
    _SESSION_CA = CertificateAuthority.create()
    ca_file = _SESSION_DIR / "ca.pem"
    ca_file.write_bytes(_SESSION_CA.pem)
    os.environ["SSL_CERT_FILE"] = str(ca_file)
    os.environ["REQUESTS_CA_BUNDLE"] = str(ca_file)


@pytest.fixture(scope="session")
def _session_stack() -> Iterator[Stack]:
    stack = Stack.start(_SESSION_DIR, ca=_SESSION_CA)
    yield stack
    stack.stop()


@pytest.fixture()
def stack(_session_stack: Stack, monkeypatch: pytest.MonkeyPatch) -> Stack:
    """The stand-ins, reset, with the environment pointing every SDK at them."""
    _session_stack.world.reset()
    for name, value in _session_stack.settings().items():
        monkeypatch.setenv(name, value)
    return _session_stack


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The connection string of an in-memory Azurite shared by the session (queues, blobs, tables).

    Its contents persist across tests: use unique queue / container names.
    """
    emulator = Azurite.start(Path(tmp_path_factory.mktemp("azurite")))
    yield emulator.connection_string
    emulator.stop()
