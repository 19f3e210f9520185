"""The README's first command, `make run` (`python -m devstack demo`), works end to end."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_demo_bootstraps_an_identity_and_a_job_runs_get_mailbox(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AZURE_", "IDENTITY_", "KEY_VAULT_", "GRAPH_",
                                                                     "EXO_", "AzureWebJobs"))}
    done = subprocess.run([sys.executable, "-m", "devstack", "demo", "--state-dir", str(tmp_path)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "adelev@contoso.onmicrosoft.com" in done.stdout
    assert "Connect-ExchangeOnline -AppId" in done.stdout
