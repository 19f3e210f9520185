"""Graph's per-tenant limit on reading applications' key credentials (docs/reference.md "Throttling").

Reading `keyCredentials` with `$select` is limited to 150 requests per minute for every tenant,
shared by every app in it (doc: List applications). Graph's guidance adds that all requests accrue
against the usage limits, refused ones included, which is why immediate retries are to be avoided
(doc: Throttling guidance). How Graph counts the minute is not documented: the stand-in keeps a
sliding window (**unverified** pick; a sliding window is never more lenient than a fixed one of the
same length) of every such request, admitted or refused, and refuses one while the window already
holds `limit` of them. `Retry-After` is the whole seconds until a request would be admitted again,
if nobody else asked meanwhile.

Which reads count: every GET of applications (the collection, one application by id or alternate
key, a service principal's owned objects) whose `$select` names `keyCredentials`, also inside
`$batch`. That a single-object read counts like the documented list is **unverified**; counting it
is the stricter pick. Reads without `$select=keyCredentials` are not limited here (their key
credentials come without `key`).
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from typing import Any

DEFAULT_LIMIT = 150
DEFAULT_WINDOW_SECONDS = 60.0


class KeyCredentialReadThrottle:
    """A sliding-window counter of one tenant's keyCredentials reads, on the real (monotonic) clock.

    Real time, not the simulated clock: the SDKs wait out `Retry-After` in real seconds.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self.limit = DEFAULT_LIMIT
        self.window = DEFAULT_WINDOW_SECONDS
        self._log: deque[float] = deque()
        self.admitted = 0
        self.refused: Counter[str] = Counter()  # by caller (object id), so a test tells apps apart
        self.peak = 0  # the most requests the window ever held (admitted or refused)

    def configure(self, limit: int, window_seconds: float) -> None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError("limit must be a whole number of at least 1")
        if not window_seconds > 0:
            raise ValueError("windowSeconds must be above 0")
        with self._lock:
            self.limit = limit
            self.window = float(window_seconds)

    def reset(self) -> None:
        """Back to Graph's limit, with an empty window and counters."""
        with self._lock:
            self.limit = DEFAULT_LIMIT
            self.window = DEFAULT_WINDOW_SECONDS
            self._log.clear()
            self.admitted = 0
            self.refused.clear()
            self.peak = 0

    def take(self, caller: str = "") -> int | None:
        """Count one read now: None if admitted, else the seconds to tell the caller (Retry-After)."""
        with self._lock:
            now = self._clock()
            while self._log and self._log[0] <= now - self.window:
                self._log.popleft()
            refused = len(self._log) >= self.limit
            self._log.append(now)  # refused requests accrue too (doc: Throttling guidance)
            self.peak = max(self.peak, len(self._log))
            if not refused:
                self.admitted += 1
                return None
            self.refused[caller] += 1
            # Admitted again once no more than limit - 1 of the window's requests remain in it.
            oldest_to_expire = self._log[len(self._log) - self.limit]
            return max(1, math.ceil(oldest_to_expire + self.window - now))

    def to_json(self) -> dict[str, Any]:
        with self._lock:
            now = self._clock()
            in_window = sum(1 for moment in self._log if moment > now - self.window)
            return {"limit": self.limit, "windowSeconds": self.window, "inWindow": in_window,
                    "admitted": self.admitted, "refused": sum(self.refused.values()), "peakInWindow": self.peak}
