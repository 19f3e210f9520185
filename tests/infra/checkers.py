"""Running the outside checkers: checkov on infra/ (from .venv-checkers, `make setup`) and
azure-functions-doctor on the app (from .venv), each on a scratch copy, several at once.

checkov's Bicep parser (it pins pycep-parser 0.5.1) predates Bicep's `extension` statement and
cannot parse a file that has one (the modules using the Microsoft Graph extension). The statement
only names the extension (infra/bicepconfig.json) and declares nothing, so the copy checkov reads
has it commented out; every resource stays. tests/infra parses the real files with pycep-parser 0.7.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .bicep import INFRA, ROOT

CHECKERS_VENV = ROOT / ".venv-checkers"
EXTENSION_STATEMENT = re.compile(r"^(extension\s)", re.MULTILINE)
# Nothing reaches a real endpoint, and checkov does not try to fetch its guideline mappings.
CLEAN_ENV = {k: v for k, v in os.environ.items()
             if not k.startswith(("AZURE_", "APPLICATIONINSIGHTS_", "MSI_", "IDENTITY_", "BC_", "CKV_", "PRISMA_"))}


def checkov_executable() -> Path:
    path = Path(os.environ.get("CHECKOV", CHECKERS_VENV / "bin" / "checkov"))
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run `make setup` (creates {CHECKERS_VENV.name} from "
                                "requirements-checkers.txt)")
    return path


def copy_infra(destination: Path) -> Path:
    """infra/ as checkov can parse it: `extension` statements commented out, nothing else changed."""
    shutil.copytree(INFRA, destination)
    for path in destination.rglob("*.bicep"):
        source = path.read_text(encoding="utf-8")
        path.write_text(EXTENSION_STATEMENT.sub(r"// \1", source), encoding="utf-8")
    return destination


def copy_app(destination: Path) -> Path:
    """The repository as it is committed: no virtual environments, caches or local settings."""
    shutil.copytree(ROOT, destination, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv*", "node_modules", "__pycache__", ".*_cache", ".hypothesis", ".devstack", ".azure",
        "test-artifacts", "local.settings.json", "__azurite*", "__blobstorage__", "__queuestorage__"))
    return destination


@dataclass
class Run:
    args: list[str]
    process: subprocess.Popen[str]

    def wait(self, timeout: float = 240) -> tuple[int, str, str]:
        out, err = self.process.communicate(timeout=timeout)
        return self.process.returncode, out, err


def start(args: list[str], cwd: Path) -> Run:
    process = subprocess.Popen(args, cwd=cwd, env=CLEAN_ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, stdin=subprocess.DEVNULL)
    return Run(args, process)


def start_checkov(directory: Path) -> Run:
    return start([str(checkov_executable()), "--directory", str(directory), "--framework", "bicep",
                  "--output", "json", "--skip-download"], cwd=directory)


def start_doctor(directory: Path, output: Path) -> Run:
    doctor = Path(sys.executable).with_name("azure-functions-doctor")
    return start([str(doctor), "doctor", "--path", str(directory), "--format", "json", "--output", str(output),
                  "--hosting-plan", "flex-consumption", "--target-python", "3.11"], cwd=directory)


@dataclass(frozen=True)
class CheckovReport:
    returncode: int
    failed: list[dict[str, Any]]
    skipped: list[dict[str, Any]]
    passed: list[dict[str, Any]]
    parsing_errors: list[str]

    @classmethod
    def of(cls, run: Run) -> CheckovReport:
        code, out, err = run.wait()
        try:
            report = json.loads(out)
        except json.JSONDecodeError as error:
            raise AssertionError(f"checkov printed no JSON (exit {code}):\n{out[-2000:]}\n{err[-2000:]}") from error
        if isinstance(report, list):  # one report per framework; only bicep here
            (report,) = report
        results = report.get("results", {})
        return cls(code, results.get("failed_checks", []), results.get("skipped_checks", []),
                   results.get("passed_checks", []), results.get("parsing_errors", []))
