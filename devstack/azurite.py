"""Azurite, the official Azure Storage emulator (npm package `azurite`), as a child process.

Azurite stands in for the Functions storage account (`AzureWebJobsStorage`): queues for the
one-message-per-identity fan-out, blobs and tables for the host's own bookkeeping. It is not one of
our stand-ins: it is installed from npm (`npm ci`, pinned in package.json / package-lock.json) and
run unmodified.

Each `Azurite.start()` runs its own instance, in memory, on ports the OS picks (`--blobPort 0` etc.;
Azurite prints the ports it bound), so parallel runs never collide and nothing is written to disk.
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

REPO_ROOT = Path(__file__).resolve().parent.parent

# The emulator's fixed, publicly documented development account. Not a secret.
ACCOUNT_NAME = "devstoreaccount1"
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="

HOST = "127.0.0.1"
SERVICES = ("blob", "queue", "table")

# --inMemoryPersistence: nothing on disk (it refuses to be combined with --location);
# --skipApiVersionCheck: newer azure-storage-* SDKs may speak an API version this Azurite predates;
# --loose: ignore headers/parameters Azurite does not implement instead of failing the request;
# --silent: no access log; --disableTelemetry: Azurite otherwise collects telemetry by default,
# and the machines here have no route to send it.
FLAGS = ("--inMemoryPersistence", "--skipApiVersionCheck", "--loose", "--silent", "--disableTelemetry")

_LISTENING = re.compile(r"Azurite (Blob|Queue|Table) service is successfully listening at https?://[^\s:]+:(\d+)")

INSTALL_HINT = ("Azurite is not installed: run `npm ci` in {root} (or `make setup`, which also creates the "
                "Python environment). It comes from npm as a dev dependency pinned in package.json.")


class AzuriteNotInstalled(RuntimeError):
    """Neither node_modules/.bin/azurite nor an `azurite` on PATH (nor `node` to run it) was found."""


class AzuriteStartError(RuntimeError):
    """Azurite was found but did not come up."""


def find_azurite(root: Path = REPO_ROOT, search_path: str | None = None) -> list[str]:
    """The command that runs Azurite: the project's pinned copy first, then one on PATH."""
    search_path = os.environ.get("PATH", os.defpath) if search_path is None else search_path
    local = root / "node_modules" / ".bin" / "azurite"
    if local.is_file():
        # The npm shim starts with `#!/usr/bin/env node`: say so clearly if node itself is missing.
        if shutil.which("node", path=search_path) is None:
            raise AzuriteNotInstalled(f"Azurite is installed at {local} but `node` is not on PATH.")
        return [str(local)]
    on_path = shutil.which("azurite", path=search_path)
    if on_path:
        return [on_path]
    raise AzuriteNotInstalled(INSTALL_HINT.format(root=root))


def connection_string(ports: dict[str, int], host: str = HOST) -> str:
    """The storage connection string for an Azurite listening on `ports` (service -> port)."""
    parts = ["DefaultEndpointsProtocol=http", f"AccountName={ACCOUNT_NAME}", f"AccountKey={ACCOUNT_KEY}"]
    for service in SERVICES:
        parts.append(f"{service.capitalize()}Endpoint=http://{host}:{ports[service]}/{ACCOUNT_NAME}")
    return ";".join(parts) + ";"


def _wait_for_port(port: int, deadline: float) -> None:
    while True:
        try:
            with socket.create_connection((HOST, port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@dataclass
class Azurite:
    process: subprocess.Popen[str]
    workdir: Path
    ports: dict[str, int]
    _output: deque[str] = field(default_factory=lambda: deque(maxlen=200), repr=False)
    _reader: threading.Thread | None = field(default=None, repr=False)
    _own_workdir: bool = field(default=False, repr=False)

    @classmethod
    def start(cls, workdir: Path | None = None, *, timeout: float = 60.0, root: Path = REPO_ROOT,
              extra_args: tuple[str, ...] = ()) -> Azurite:
        """Start a fresh in-memory Azurite; returns once all three services accept connections."""
        command = find_azurite(root)
        own_workdir = workdir is None
        workdir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="azurite-"))
        workdir.mkdir(parents=True, exist_ok=True)
        args = [*command, *FLAGS, *extra_args]
        for service in SERVICES:
            args += [f"--{service}Host", HOST, f"--{service}Port", "0"]
        # Its working directory is a scratch folder: --inMemoryPersistence writes nothing, but any
        # debug log or stray file lands there rather than in the repository.
        process = subprocess.Popen(args, cwd=workdir, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, errors="replace")
        output: deque[str] = deque(maxlen=200)
        ports: dict[str, int] = {}
        all_bound = threading.Event()

        def read() -> None:
            assert process.stdout is not None
            for line in process.stdout:
                output.append(line.rstrip("\n"))
                match = _LISTENING.search(line)
                if match:
                    ports[match.group(1).lower()] = int(match.group(2))
                    if len(ports) == len(SERVICES):
                        all_bound.set()
            all_bound.set()  # EOF: the process ended; let start() report it

        reader = threading.Thread(target=read, name="azurite-output", daemon=True)
        reader.start()
        azurite = cls(process, workdir, ports, output, reader, own_workdir)
        atexit.register(azurite.stop)
        try:
            deadline = time.monotonic() + timeout
            if not all_bound.wait(timeout) or len(ports) < len(SERVICES):
                code = process.poll()
                state = (f"exited with code {code}" if code is not None
                         else f"did not report its ports within {timeout:.0f} s")
                raise AzuriteStartError(f"Azurite ({' '.join(args)}) {state}. Its output:\n"
                                        + "\n".join(output))
            for port in ports.values():
                _wait_for_port(port, deadline)
        except BaseException:
            azurite.stop()
            raise
        return azurite

    @property
    def connection_string(self) -> str:
        return connection_string(self.ports)

    def endpoint(self, service: str) -> str:
        return f"http://{HOST}:{self.ports[service]}/{ACCOUNT_NAME}"

    @property
    def output(self) -> list[str]:
        """Azurite's recent console output (startup lines, errors)."""
        return list(self._output)

    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the process (SIGTERM, then SIGKILL) and remove its scratch folder. Idempotent."""
        atexit.unregister(self.stop)
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)
        if self._reader is not None:
            self._reader.join(timeout)
        if self.process.stdout is not None:
            self.process.stdout.close()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Azurite:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

