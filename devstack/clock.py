"""The simulated clock all stand-ins share.

It governs what a tenant would judge by the calendar: certificate validity, key credential
windows, object timestamps. Access tokens and client assertions live in real time, because the
SDKs under test (MSAL, azure-identity) stamp and cache them with the real clock.
"""

from __future__ import annotations

import datetime as dt
import threading


class SimulatedClock:
    def __init__(self) -> None:
        self._offset = dt.timedelta()
        self._lock = threading.Lock()

    def now(self) -> dt.datetime:
        with self._lock:
            return dt.datetime.now(dt.UTC) + self._offset

    def advance(self, seconds: float) -> dt.datetime:
        if seconds < 0:
            raise ValueError("the clock only moves forward")
        with self._lock:
            self._offset += dt.timedelta(seconds=seconds)
        return self.now()

    @property
    def offset_seconds(self) -> float:
        with self._lock:
            return self._offset.total_seconds()

    def reset(self) -> None:
        with self._lock:
            self._offset = dt.timedelta()
