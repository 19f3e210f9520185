"""Session-wide leak scan (docs/architecture.md invariant 4) and the reliability summary.

Scope, precisely:
  * log records of the loggers the product's code and its SDK calls emit: ``exo_automation.*`` and
    ``shared.*`` (the product), ``azure.*`` (azure-core pipeline, azure-identity, Key Vault SDKs),
    ``msal``, ``httpx``, ``msgraph*`` and ``kiota*``; captured at DEBUG for the whole session.
    The stand-ins (``devstack``, ``aiohttp``) are test equipment and are not scanned. The SDK
    loggers are process-wide, so records the test code's own job probes emit through azure-identity
    and msal are scanned too (stricter than needed, never looser);
  * every HTTP response (status, headers and body) the Functions handlers produced through
    ``tests/integration/helpers.call`` (and so through the schemathesis WSGI adapter).
Test code that handles PFX bytes itself (job probes reading Key Vault) is outside the scan: it is a
job entitled to the key, not the product.

Patterns: a PEM armour line, base64 DER/PKCS#12 (``MII`` + 500 base64 characters), a JWT
(``eyJ…​.eyJ…​.``) and an OAuth ``client_assertion=`` form field.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections import Counter
from pathlib import Path
from typing import Any

PATTERNS = {
    "pem": re.compile(r"-----BEGIN"),
    "pkcs12-or-der-base64": re.compile(r"MII[A-Za-z0-9+/=\\]{500,}"),
    "jwt": re.compile(r"eyJ[A-Za-z0-9_-]+\.eyJ[A-Za-z0-9_-]+\."),
    "client-assertion": re.compile(r"client_assertion="),
    # A function key travels as `?code=` (or `&code=`): no URL with its query may reach a log.
    # (Entra's error URIs carry numeric AADSTS codes as `?code=700027`: those are not keys.)
    "function-key-query": re.compile(r"[?&]code=(?![0-9]+\b)"),
}
SCANNED_LOGGERS = ("exo_automation", "shared", "azure", "msal", "httpx", "msgraph", "kiota")
SUMMARY_PATH = Path(__file__).resolve().parents[2] / "test-artifacts" / "reliability-summary.json"


def find_leaks(text: str) -> list[str]:
    return [kind for kind, pattern in PATTERNS.items() if pattern.search(text)]


class LeakScan(logging.Handler):
    """A root handler that scans every in-scope record as it is emitted (nothing is retained but hits)."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self._guard = threading.Lock()
        self.records = 0
        self.records_by_logger: Counter[str] = Counter()
        self.responses = 0
        self.statuses: Counter[str] = Counter()
        self.leaks: list[dict[str, Any]] = []
        self._saved_levels: dict[str, int] = {}

    # -- logs -------------------------------------------------------------------------------------
    def install(self) -> None:
        logging.getLogger().addHandler(self)
        for name in SCANNED_LOGGERS:
            logger = logging.getLogger(name)
            self._saved_levels[name] = logger.level
            logger.setLevel(logging.DEBUG)

    def uninstall(self) -> None:
        logging.getLogger().removeHandler(self)
        for name, level in self._saved_levels.items():
            logging.getLogger(name).setLevel(level)

    def emit(self, record: logging.LogRecord) -> None:
        if not record.name.startswith(SCANNED_LOGGERS):
            return
        try:
            text = record.getMessage()
        except Exception:  # a record whose arguments do not format: scan what there is
            text = f"{record.msg} {record.args}"
        if record.exc_info and record.exc_info[1] is not None:
            text += " " + repr(record.exc_info[1])
        kinds = find_leaks(text)
        with self._guard:
            self.records += 1
            self.records_by_logger[record.name.split(".")[0]] += 1
            for kind in kinds:
                self.leaks.append({"where": f"log:{record.name}", "kind": kind, "excerpt": _excerpt(text, kind)})

    # -- HTTP responses ---------------------------------------------------------------------------
    def response(self, function: str, method: str, url: str, status: int, headers: dict[str, str],
                 text: str) -> None:
        whole = json.dumps(headers) + "\n" + text
        kinds = find_leaks(whole)
        with self._guard:
            self.responses += 1
            self.statuses[f"{status // 100}xx"] += 1
            for kind in kinds:
                self.leaks.append({"where": f"http:{method} {url} -> {status}", "kind": kind,
                                   "excerpt": _excerpt(whole, kind)})


def _excerpt(text: str, kind: str) -> str:
    match = PATTERNS[kind].search(text)
    start = match.start() if match else 0
    return text[max(0, start - 40):start + 24] + "…"  # enough to find it, never the whole secret


SCAN = LeakScan()

# What the reliability tests add: crash points covered, faults injected, hostile inputs tried.
RELIABILITY: dict[str, Any] = {
    "crashPoints": [],
    "faultsInjected": 0,
    "faultsByKind": Counter(),
    "storms": [],
    "hostileInputs": {"tried": 0, "byStatus": Counter()},
    "concurrency": [],
}
_lock = threading.Lock()

# Crash matrices that run in tests/integration: a passing row counts as a converged crash point.
EXTERNAL_MATRICES = {
    "tests/integration/test_bootstrap.py::test_a_failed_bootstrap_is_completed_by_the_next_request[": "bootstrap",
    "tests/integration/test_decommission.py::test_an_interrupted_decommission_is_finished_by_the_next_delete[":
        "decommission",
}


def external_report(nodeid: str, passed: bool) -> None:
    for prefix, matrix in EXTERNAL_MATRICES.items():
        if nodeid.startswith(prefix):
            crash_point(matrix, nodeid[len(prefix):-1], passed)


def crash_point(matrix: str, name: str, converged: bool) -> None:
    with _lock:
        RELIABILITY["crashPoints"].append({"matrix": matrix, "point": name, "converged": converged})


def faults(kind: str, injected: int) -> None:
    with _lock:
        RELIABILITY["faultsInjected"] += injected
        RELIABILITY["faultsByKind"][kind] += injected


def hostile(status: int) -> None:
    with _lock:
        RELIABILITY["hostileInputs"]["tried"] += 1
        RELIABILITY["hostileInputs"]["byStatus"][str(status)] += 1


def summary(session_faults_injected: int | None = None) -> dict[str, Any]:
    hostile_by_status = RELIABILITY["hostileInputs"]["byStatus"]
    points = RELIABILITY["crashPoints"]
    return {
        "faultsInjected": {"reliabilityTests": RELIABILITY["faultsInjected"],
                           "byKind": dict(sorted(RELIABILITY["faultsByKind"].items())),
                           "wholeSession": session_faults_injected},
        "crashPoints": {"covered": len(points), "converged": sum(1 for p in points if p["converged"]),
                        "byMatrix": dict(Counter(p["matrix"] for p in points)),
                        "points": [f"{p['matrix']}: {p['point']}" for p in points]},
        "storms": RELIABILITY["storms"],
        "concurrency": RELIABILITY["concurrency"],
        "hostileInputs": {"tried": RELIABILITY["hostileInputs"]["tried"],
                          "4xx": sum(c for s, c in hostile_by_status.items() if s.startswith("4")),
                          "5xx": sum(c for s, c in hostile_by_status.items() if s.startswith("5")),
                          "byStatus": dict(sorted(hostile_by_status.items()))},
        "wholeSessionHttpResponses": {"total": SCAN.responses, **dict(sorted(SCAN.statuses.items()))},
        "leakScan": {"logRecordsScanned": SCAN.records, "byLogger": dict(sorted(SCAN.records_by_logger.items())),
                     "httpResponsesScanned": SCAN.responses, "leaksFound": len(SCAN.leaks),
                     "leaks": SCAN.leaks[:20], "patterns": {k: p.pattern for k, p in PATTERNS.items()},
                     "scope": (__doc__ or "").split("Scope, precisely:")[1].split("Patterns:")[0].split()},
    }


def write_summary(session_faults_injected: int | None = None) -> dict[str, Any]:
    document = summary(session_faults_injected)
    document["leakScan"]["scope"] = " ".join(document["leakScan"]["scope"])
    SUMMARY_PATH.parent.mkdir(parents=True, exist_ok=True)
    SUMMARY_PATH.write_text(json.dumps(document, indent=2) + "\n")
    return document
