"""Run product operations with the stand-ins' simulated clock as the product's clock."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from devstack import Stack
from shared.platform import Platform
from shared.settings import Settings

T = TypeVar("T")


def with_platform(stack: Stack, work: Callable[[Platform], Awaitable[T]]) -> T:
    async def run() -> T:
        platform = Platform.create(Settings.from_environment(), clock=stack.world.clock.now)
        try:
            return await work(platform)
        finally:
            await platform.aclose()

    return asyncio.run(run())


def bootstrap(stack: Stack, name: str, **spec: Any) -> Any:
    from shared import service

    return with_platform(stack, lambda p: service.bootstrap(p, {"name": name, **spec}))


def reconcile(stack: Stack, name: str) -> Any:
    from shared import service

    return with_platform(stack, lambda p: service.reconcile(p, name, operation="reconcile"))


def sweep(stack: Stack) -> Any:
    from shared.sweep import sweep as run_sweep

    return with_platform(stack, run_sweep)


def converge(stack: Stack, rounds: int = 4) -> dict[str, list[str]]:
    """Sweep and reconcile what it finds until a sweep finds nothing; returns what was found first."""
    first: dict[str, list[str]] | None = None
    for _ in range(rounds):
        result = sweep(stack)
        if first is None:
            first = dict(result.due)
        if not result.due:
            return first
        for name in result.due:
            outcome = reconcile(stack, name)
            assert outcome.error is None, (name, outcome.error)
    raise AssertionError(f"did not converge in {rounds} rounds: {sweep(stack).due}")
