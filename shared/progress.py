"""Step-by-step progress of a run, for whoever follows it (an operation document, the CLI).

The reconciler announces each action before and after it runs; a listener set for the current
task (a context variable, so concurrent runs never see each other's) records it. A failing
listener is logged and ignored: progress reporting never changes a run's outcome.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterator
from contextvars import ContextVar
from typing import Any

log = logging.getLogger("exo_automation.progress")

# (action, outcome): outcome None when the action starts, else its ActionOutcome.
StepListener = Callable[[Any, Any], Awaitable[None]]

_listener: ContextVar[StepListener | None] = ContextVar("exo_automation_step_listener", default=None)


@contextlib.contextmanager
def listening(listener: StepListener) -> Iterator[None]:
    token = _listener.set(listener)
    try:
        yield
    finally:
        _listener.reset(token)


async def step(action: Any, outcome: Any = None) -> None:
    listener = _listener.get()
    if listener is None:
        return
    try:
        await listener(action, outcome)
    except Exception as exc:
        log.warning("progress of %s not recorded: %s", getattr(action, "kind", action), type(exc).__name__)
