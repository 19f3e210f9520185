"""Helpers shared by the benchmarks: the stand-ins, fresh processes, request counts, result files.

Trust must be in place before anything imports aiohttp (azure-core's async transport): aiohttp
builds its default SSL context from SSL_CERT_FILE once, on import. `in_process_stack()` therefore
creates one CA per process, points SSL_CERT_FILE / REQUESTS_CA_BUNDLE at it first, and reuses it for
every stack the process starts. Import the product (`shared`, `function_app`) only after that.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from devstack import Stack
    from devstack.pki import CertificateAuthority

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO_ROOT / "bench" / "results"

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
TOKEN_SERVICE = "entra"  # managed-identity and v2.0 token endpoints
NON_PRODUCT_SERVICES = frozenset({"control"})  # the stand-ins' control API (the benchmark's own calls)


# --------------------------------------------------------------------------- results


def timestamp() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def machine_facts() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "executable": sys.executable,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpuCount": os.cpu_count(),
        "usableCpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
    }


def summarize(values: Iterable[float], digits: int = 4) -> dict[str, Any]:
    """min / median / max (and the raw values) of a series of measurements."""
    series = list(values)

    def rounded(v: float) -> float:
        return round(v) if digits == 0 else round(v, digits)

    if not series:
        return {"n": 0, "min": None, "median": None, "max": None, "values": []}
    return {
        "n": len(series),
        "min": rounded(min(series)),
        "median": rounded(statistics.median(series)),
        "max": rounded(max(series)),
        "values": [rounded(v) for v in series],
    }


def target(description: str, limit: float, measured: float | None, unit: str) -> dict[str, Any]:
    """A target and whether the measurement meets it (a fact for the report, never an assertion)."""
    return {"description": description, "target": limit, "unit": unit,
            "measured": None if measured is None else round(measured, 4),
            "met": None if measured is None else measured <= limit}


def dumps(value: Any, indent: int = 0, width: int = 150) -> str:
    """JSON, indented, with each container on one line when it fits (route rows, value series)."""
    flat = json.dumps(value)
    if not isinstance(value, dict | list) or len(flat) + indent <= width or not value:
        return flat
    pad, inner = " " * indent, " " * (indent + 2)
    if isinstance(value, dict):
        items = [f"{inner}{json.dumps(str(k))}: {dumps(v, indent + 2, width)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + f"\n{pad}}}"
    items = [f"{inner}{dumps(v, indent + 2, width)}" for v in value]
    return "[\n" + ",\n".join(items) + f"\n{pad}]"


def write_result(name: str, document: Mapping[str, Any], results_dir: Path | None = None,
                 *, echo: bool = True) -> dict[str, Any]:
    """Write `<results_dir>/<name>.json` (default bench/results), print it, and return what was written."""
    full = {"benchmark": name, "timestamp": timestamp(), "machine": machine_facts(), **document}
    directory = Path(results_dir) if results_dir is not None else RESULTS_DIR
    directory.mkdir(parents=True, exist_ok=True)
    text = dumps(full) + "\n"
    path = directory / f"{name}.json"
    path.write_text(text)
    if echo:
        sys.stdout.write(text)
        sys.stdout.flush()
    full["resultFile"] = str(path)
    return full


# --------------------------------------------------------------------------- the stand-ins


_PROCESS_CA: CertificateAuthority | None = None
_PROCESS_CA_FILE: Path | None = None


def trust_process_ca() -> tuple[CertificateAuthority, Path]:
    """One CA for this process, trusted through SSL_CERT_FILE / REQUESTS_CA_BUNDLE (set before aiohttp loads)."""
    global _PROCESS_CA, _PROCESS_CA_FILE
    if _PROCESS_CA is None or _PROCESS_CA_FILE is None:
        if "aiohttp" in sys.modules:
            raise RuntimeError(
                "aiohttp is already imported, so a new CA can no longer be trusted in this process: "
                "start the benchmark in a fresh process (python -m bench) or pass a running stack")
        from devstack.pki import CertificateAuthority

        ca = CertificateAuthority.create()
        ca_file = Path(tempfile.mkdtemp(prefix="bench-ca-")) / "ca.pem"
        ca_file.write_bytes(ca.pem)
        _PROCESS_CA, _PROCESS_CA_FILE = ca, ca_file
    os.environ["SSL_CERT_FILE"] = str(_PROCESS_CA_FILE)
    os.environ["REQUESTS_CA_BUNDLE"] = str(_PROCESS_CA_FILE)
    return _PROCESS_CA, _PROCESS_CA_FILE


@contextlib.contextmanager
def patched_environ(values: Mapping[str, str]) -> Iterator[None]:
    """Set environment variables for the duration; restore the previous values after."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def in_process_stack(stack: Stack | None = None) -> Iterator[Stack]:
    """The stand-ins in this process, with os.environ pointing the product and SDKs at them.

    With `stack` (e.g. the test suite's session stack), that one is used as it is: its world is not
    reset here (nor AzureWebJobsStorage set: the suite's `stack` fixture points it at Azurite).
    Otherwise a new stack and an Azurite start (on the process CA) and are stopped on exit.
    """
    if stack is not None:
        with patched_environ(stack.settings()):
            yield stack
        return
    ca, _ = trust_process_ca()
    from devstack import Stack
    from devstack.azurite import Azurite

    with tempfile.TemporaryDirectory(prefix="bench-devstack-") as state_dir:
        started = Stack.start(Path(state_dir), ca=ca)
        # The Functions storage account: every mutating run holds its identity's lease there.
        storage = Azurite.start(Path(state_dir) / "azurite")
        try:
            with patched_environ({**started.settings(), "AzureWebJobsStorage": storage.connection_string}):
                yield started
        finally:
            storage.stop()
            started.stop()


# --------------------------------------------------------------------------- request counts


_NAMED_GROUP = re.compile(r"\(\?P<(\w+)>[^)]*\)")


def pretty_route(route: str) -> str:
    """Route templates as the counter records them, regex routes turned into `{name}` templates."""
    return _NAMED_GROUP.sub(lambda m: "{" + m.group(1) + "}", route).removeprefix("^").removesuffix("$")


def request_kind(row: Mapping[str, Any]) -> str:
    """'token' (Entra), 'poll' (Key Vault pending-operation polls), 'control', or 'service'."""
    if row["service"] in NON_PRODUCT_SERVICES:
        return "control"
    if row["service"] == TOKEN_SERVICE:
        return "token"
    if row["service"] == "keyvault" and "/pending" in row["route"]:
        return "poll"
    return "service"


@dataclass
class RequestTally:
    """One counter snapshot, split as the targets count requests."""

    rows: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def of(cls, snapshot: Iterable[Mapping[str, Any]]) -> RequestTally:
        rows = [{"service": r["service"], "method": r["method"], "route": pretty_route(r["route"]),
                 "kind": request_kind(r), "count": int(r["count"])} for r in snapshot]
        return cls([r for r in rows if r["kind"] != "control"])

    def total(self, kind: str | None = None) -> int:
        return sum(r["count"] for r in self.rows if kind is None or r["kind"] == kind)

    @property
    def service(self) -> int:
        """Requests to Graph / Key Vault / Exchange (and the Functions storage where a `StorageCounter` counts
        it), token requests and Key Vault polls apart."""
        return self.total("service")

    @property
    def writes(self) -> int:
        return sum(r["count"] for r in self.rows if r["kind"] == "service" and r["method"] in WRITE_METHODS)

    def by_service(self) -> dict[str, int]:
        totals: dict[str, int] = {}
        for r in self.rows:
            key = r["service"] if r["kind"] == "service" else f"{r['service']} ({r['kind']})"
            totals[key] = totals.get(key, 0) + r["count"]
        return dict(sorted(totals.items()))


def routes_table(tallies: list[RequestTally]) -> list[dict[str, Any]]:
    """Per route, its count in each run (same order as `tallies`)."""
    keys: dict[tuple[str, str, str, str], None] = {}
    for tally in tallies:
        for r in tally.rows:
            keys[(r["kind"], r["service"], r["route"], r["method"])] = None
    table = []
    for kind, service, route, method in sorted(keys, key=lambda k: ({"service": 0, "poll": 1, "token": 2}.get(k[0], 3),
                                                                   k[1], k[2], k[3])):
        counts = [sum(r["count"] for r in t.rows
                      if (r["kind"], r["service"], r["route"], r["method"]) == (kind, service, route, method))
                  for t in tallies]
        table.append({"service": service, "method": method, "route": route, "kind": kind, "counts": counts})
    return table


class StorageCounter:
    """The product's requests to the Functions storage account (Azurite), which, unlike the stand-ins, counts
    nothing for us: azure-core's aiohttp transport (the storage SDK's, as the other SDKs') is wrapped while
    installed, and requests to the storage endpoints of `connection_string` are counted by method and route
    (container, `{blob}`, and the `comp` of the query). Rows as the stand-ins' counter gives them (service
    "storage"), so `RequestTally` counts them as service requests."""

    def __init__(self, connection_string: str) -> None:
        parts = dict(p.split("=", 1) for p in connection_string.split(";") if "=" in p)
        self.endpoints = tuple(parts[k].rstrip("/") for k in ("BlobEndpoint", "QueueEndpoint") if parts.get(k))
        self.counts: dict[tuple[str, str], int] = {}
        self._original: Any = None

    def route(self, method: str, url: str) -> tuple[str, str] | None:
        from urllib.parse import parse_qs, urlsplit

        endpoint = next((e for e in self.endpoints if url.startswith(e + "/") or url == e), None)
        if endpoint is None:
            return None
        split = urlsplit(url)
        container, _, blob = split.path.removeprefix(urlsplit(endpoint).path).strip("/").partition("/")
        comp = parse_qs(split.query).get("comp")
        return method, "/" + container + ("/{blob}" if blob else "") + (f"?comp={comp[0]}" if comp else "")

    def __enter__(self) -> StorageCounter:
        from azure.core.pipeline.transport import AioHttpTransport

        counter, original = self, AioHttpTransport.send
        self._original = original

        async def send(transport: Any, request: Any, **config: Any) -> Any:
            key = counter.route(request.method, request.url)
            if key is not None:
                counter.counts[key] = counter.counts.get(key, 0) + 1
            return await original(transport, request, **config)

        AioHttpTransport.send = send  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        from azure.core.pipeline.transport import AioHttpTransport

        AioHttpTransport.send = self._original  # type: ignore[method-assign]

    def reset(self) -> None:
        self.counts.clear()

    def snapshot(self) -> list[dict[str, Any]]:
        return [{"service": "storage", "method": method, "route": route, "count": count}
                for (method, route), count in sorted(self.counts.items())]


# --------------------------------------------------------------------------- fresh processes


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a fresh Python process that imports the repository's packages."""
    env = dict(os.environ)
    env.update(extra or {})
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env.pop("PYTHONSTARTUP", None)
    env.setdefault("PYTHONHASHSEED", "0")
    return env


@dataclass
class ChildRun:
    stdout: str
    wall_seconds: float
    stderr: str = ""

    def last_json(self) -> Any:
        """The last stdout line that is a JSON document (what the child printed as its result)."""
        for line in reversed(self.stdout.splitlines()):
            line = line.strip()
            if line.startswith(("{", "[")) or re.fullmatch(r"[0-9.eE+-]+", line or "x"):
                return json.loads(line)
        raise ValueError(f"the child printed no JSON result:\n{self.stdout}")


def run_python(code: str, *, env: Mapping[str, str] | None = None, args: Iterable[str] = (),
               timeout: float = 120.0) -> ChildRun:
    """Run `python -c code` in a fresh interpreter in the repository root; fail loudly on an error."""
    started = time.perf_counter()
    completed = subprocess.run([sys.executable, "-c", code, *args], cwd=REPO_ROOT,
                               env=dict(env) if env is not None else child_env(),
                               capture_output=True, text=True, timeout=timeout, check=False)
    wall = time.perf_counter() - started
    if completed.returncode != 0:
        raise RuntimeError(f"benchmark child process failed (exit {completed.returncode}):\n"
                           f"{completed.stdout}\n{completed.stderr}")
    return ChildRun(completed.stdout, wall, completed.stderr)


# --------------------------------------------------------------------------- logs


class WarningLog(logging.Handler):
    """Collects WARNING+ records of the product's loggers during a measurement (they explain odd figures)."""

    def __init__(self, logger_name: str = "exo_automation", limit: int = 20) -> None:
        super().__init__(logging.WARNING)
        self.logger = logging.getLogger(logger_name)
        self.limit = limit
        self.messages: list[str] = []
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1
        if len(self.messages) < self.limit:
            self.messages.append(f"{record.levelname} {record.name}: {record.getMessage()}")

    def __enter__(self) -> WarningLog:
        self.logger.addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        self.logger.removeHandler(self)

    def to_json(self) -> dict[str, Any]:
        return {"count": self.count, "messages": self.messages}
