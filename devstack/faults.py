"""Fault injection and request counting, shared by every stand-in."""

from __future__ import annotations

import re
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Fault:
    """One injected fault: matches requests of a service, applies `count` times (None = forever).

    `status` answers with that status (and `retry_after` seconds if given) instead of the real
    handler; `latency` delays the request (seconds) and then lets it through unless `status` or
    `drop` is set; `drop` closes the connection without an answer. `after` lets that many matching
    requests through first, which is how a test fails the N-th call of a route.
    """

    service: str
    method: str | None = None
    path: str | None = None
    status: int | None = None
    retry_after: float | None = None
    latency: float = 0.0
    drop: bool = False
    count: int | None = 1
    after: int = 0
    code: str | None = None
    id: int = 0
    hits: int = 0
    _path_re: re.Pattern[str] | None = field(default=None, repr=False)

    def matches(self, service: str, method: str, path: str) -> bool:
        if self.service not in ("*", service):
            return False
        if self.method and self.method.upper() != method.upper():
            return False
        if self.path:
            if self._path_re is None:
                self._path_re = re.compile(self.path)
            if not self._path_re.search(path):
                return False
        return True

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "service": self.service, "method": self.method, "path": self.path,
            "status": self.status, "retryAfter": self.retry_after, "latency": self.latency,
            "drop": self.drop, "count": self.count, "after": self.after, "hits": self.hits,
            "code": self.code,
        }

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Fault:
        allowed = {"service", "method", "path", "status", "retryAfter", "latency", "drop", "count",
                   "after", "code"}
        unknown = set(body) - allowed
        if unknown:
            raise ValueError(f"unknown fault fields: {sorted(unknown)}")
        if "service" not in body:
            raise ValueError("a fault needs 'service' (entra, graph, keyvault, exchange or *)")
        return cls(
            service=body["service"], method=body.get("method"), path=body.get("path"),
            status=body.get("status"), retry_after=body.get("retryAfter"),
            latency=float(body.get("latency", 0.0)), drop=bool(body.get("drop", False)),
            count=body.get("count", 1), after=int(body.get("after", 0)), code=body.get("code"),
        )


class FaultTable:
    """The faults in force. `injected` counts the faults applied since the last reset (what
    `GET /control/faults` reports); `injected_total` those applied since the stand-ins started."""

    def __init__(self) -> None:
        self._faults: list[Fault] = []
        self._next_id = 1
        self._lock = threading.Lock()
        self.injected = 0
        self.injected_total = 0

    def add(self, fault: Fault) -> Fault:
        with self._lock:
            fault.id = self._next_id
            self._next_id += 1
            self._faults.append(fault)
        return fault

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def reset(self) -> None:
        """No faults, and none counted as injected (the total since the start stays)."""
        with self._lock:
            self._faults.clear()
            self.injected = 0

    def list(self) -> list[Fault]:
        with self._lock:
            return list(self._faults)

    def take(self, service: str, method: str, path: str) -> Fault | None:
        """The fault that applies to this request, consuming one of its uses."""
        with self._lock:
            for fault in self._faults:
                if not fault.matches(service, method, path):
                    continue
                if fault.after > 0:
                    fault.after -= 1
                    continue
                fault.hits += 1
                self.injected += 1
                self.injected_total += 1
                if fault.count is not None:
                    fault.count -= 1
                    if fault.count <= 0:
                        self._faults.remove(fault)
                return fault
        return None


class RequestCounter:
    """Counts requests per service and route; routes are templates, not concrete paths."""

    def __init__(self) -> None:
        self._counts: Counter[tuple[str, str, str]] = Counter()
        self._lock = threading.Lock()

    def record(self, service: str, method: str, route: str) -> None:
        with self._lock:
            self._counts[(service, method, route)] += 1

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return [
                {"service": s, "method": m, "route": r, "count": c}
                for (s, m, r), c in sorted(self._counts.items())
            ]

    def reset(self) -> None:
        with self._lock:
            self._counts.clear()
