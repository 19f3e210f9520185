"""Run `python -m devstack up` as a background process, from code (benchmarks, end-to-end runs).

In-process `Stack.start()` is what the test suite uses; a separate process is for when the stand-ins
must not share the caller's interpreter (GIL, signals, a Functions host started beside them):

    env, stop = start_stack_process(tmp_path / "devstack")
    try:
        subprocess.run([...], env={**os.environ, **env})
    finally:
        stop()
"""

from __future__ import annotations

import contextlib
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

from .azurite import REPO_ROOT

ENV_FILE_NAME = "devstack.env"
LOG_FILE_NAME = "devstack.log"


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines as written by Stack.write_env_file.

    Values are taken verbatim (they may contain '=' and ';'), or unquoted if shell-quoted.
    """
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            if value[:1] in ("'", '"'):
                value = "".join(shlex.split(value))
            values[key.strip()] = value
    return values


class StackProcess:
    """A running `python -m devstack up`; `stop()` ends it (also if the caller dies: its stdin closes)."""

    def __init__(self, state_dir: Path, *, azurite: bool = True, timeout: float = 120.0) -> None:
        self.state_dir = Path(state_dir).resolve()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.env_file = self.state_dir / ENV_FILE_NAME
        self.log_file = self.state_dir / LOG_FILE_NAME
        self.env_file.unlink(missing_ok=True)
        command = [sys.executable, "-m", "devstack", "up", "--state-dir", str(self.state_dir),
                   "--no-local-settings", "--stop-on-stdin-eof"]
        if not azurite:
            command.append("--no-azurite")
        child_env = dict(os.environ)
        child_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), child_env.get("PYTHONPATH")]))
        child_env["PYTHONUNBUFFERED"] = "1"
        self._log: IO[bytes] = self.log_file.open("wb")
        self.process = subprocess.Popen(command, cwd=REPO_ROOT, env=child_env, stdin=subprocess.PIPE,
                                        stdout=self._log, stderr=subprocess.STDOUT)
        try:
            self.env = self._wait_for_env_file(timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_for_env_file(self, timeout: float) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while not self.env_file.exists():
            code = self.process.poll()
            if code is not None:
                raise RuntimeError(f"`python -m devstack up` exited with code {code} before writing "
                                   f"{self.env_file}:\n{self.log()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"`python -m devstack up` did not write {self.env_file} within "
                                   f"{timeout:.0f} s:\n{self.log()}")
            time.sleep(0.05)
        return read_env_file(self.env_file)  # written by rename: complete once it exists

    def log(self) -> str:
        """What the process printed so far."""
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 30.0) -> int | None:
        """Ask it to stop (close its stdin), then SIGTERM, then SIGKILL. Idempotent; returns the exit code."""
        if self.process.stdin is not None and not self.process.stdin.closed:
            with contextlib.suppress(OSError):
                self.process.stdin.close()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode


def start_stack_process(state_dir: Path, *, azurite: bool = True,
                        timeout: float = 120.0) -> tuple[dict[str, str], Callable[[], int | None]]:
    """Start the stand-ins (and Azurite) in a background process; wait until its env file is written.

    Returns the settings (as in devstack.env: the SDK endpoints, SSL_CERT_FILE, AzureWebJobsStorage, …)
    and a function that stops the process. local.settings.json is not touched.
    """
    process = StackProcess(state_dir, azurite=azurite, timeout=timeout)
    return process.env, process.stop
