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
def stack(_session_stack: Stack, azurite: str, monkeypatch: pytest.MonkeyPatch) -> Stack:
    """The stand-ins, reset, with the environment pointing every SDK at them, and the Functions
    storage account (identity leases, operations, the reconcile queue) at the session's Azurite."""
    _session_stack.world.reset()
    for name, value in _session_stack.settings().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AzureWebJobsStorage", azurite)
    # Bindings name the queue by app setting (`%RECONCILE_QUEUE%`), which the host must resolve; the value
    # of local.settings.sample.json (the product's default).
    monkeypatch.setenv("RECONCILE_QUEUE", "identity-reconcile")
    for name in ("AzureWebJobsStorage__blobServiceUri", "AzureWebJobsStorage__queueServiceUri",
                 "AzureWebJobsStorage__accountName"):
        monkeypatch.delenv(name, raising=False)
    _empty_lease_container(azurite)
    return _session_stack


def _empty_lease_container(connection_string: str) -> None:
    """The lease blobs name the identities that had a run, an index the registry's readers use (shared/lease.py):
    reset with the tenant, so one test's identities are not another's index."""
    from azure.storage.blob import BlobLeaseClient, ContainerClient

    from shared.lease import LEASE_CONTAINER

    with ContainerClient.from_connection_string(connection_string, LEASE_CONTAINER) as container:
        if not container.exists():
            return
        for blob in container.list_blobs():
            client = container.get_blob_client(blob.name)
            if blob.lease.state == "leased":  # a run a previous test left holding it
                BlobLeaseClient(client).break_lease(lease_break_period=0)
            client.delete_blob()


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The connection string of an in-memory Azurite shared by the session (queues, blobs, tables).

    Its contents persist across tests: use unique queue / container names.
    """
    emulator = Azurite.start(Path(tmp_path_factory.mktemp("azurite")))
    yield emulator.connection_string
    emulator.stop()


# -- session-wide leak scan and reliability summary (tests/reliability/leakscan.py) ---------------
@pytest.fixture(scope="session", autouse=True)
def _leak_scan() -> Iterator[None]:
    """Scan every product log record and every handler response of the session for key material."""
    from tests.integration.helpers import RESPONSE_HOOKS
    from tests.reliability.leakscan import SCAN

    SCAN.install()
    RESPONSE_HOOKS.append(SCAN.response)
    yield
    RESPONSE_HOOKS.remove(SCAN.response)
    SCAN.uninstall()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Write test-artifacts/reliability-summary.json; any leak fails the session."""
    from tests.reliability import leakscan

    if leakscan.SCAN.records == 0 and leakscan.SCAN.responses == 0:
        return  # nothing ran that the scan covers (e.g. --collect-only, or only pure unit tests)
    stack = _session_stack_started[0] if _session_stack_started else None
    document = leakscan.write_summary(stack.world.faults.injected_total if stack is not None else None)
    session.config.stash[_SUMMARY_KEY] = document
    if document["leakScan"]["leaksFound"] and session.exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Counts the rows of the bootstrap and decommission crash tables into the reliability summary."""
    if report.when == "call":
        from tests.reliability.leakscan import external_report

        external_report(report.nodeid, report.passed)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    import json

    document = terminalreporter.config.stash.get(_SUMMARY_KEY, None)
    if document is not None:
        terminalreporter.section("reliability summary (test-artifacts/reliability-summary.json)")
        brief = {k: v for k, v in document.items() if k != "crashPoints"}
        brief["crashPoints"] = {k: v for k, v in document["crashPoints"].items() if k != "points"}
        brief["leakScan"] = {k: v for k, v in document["leakScan"].items() if k not in ("scope", "patterns")}
        terminalreporter.write_line(json.dumps(brief, indent=1))


_SUMMARY_KEY = pytest.StashKey[dict]()
_session_stack_started: list[Stack] = []


@pytest.fixture(autouse=True)
def _note_session_stack(request: pytest.FixtureRequest) -> None:
    """Lets the session summary read the stand-ins' fault counter without starting them itself."""
    if "_session_stack" in request.fixturenames and not _session_stack_started:
        _session_stack_started.append(request.getfixturevalue("_session_stack"))
