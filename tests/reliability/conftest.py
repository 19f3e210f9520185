"""Fixtures of the reliability suite: fault accounting per test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from devstack import Stack

from . import leakscan


@pytest.fixture()
def faults_counted(stack: Stack, request: pytest.FixtureRequest) -> Iterator[Stack]:
    """`stack`, with the faults this test made the stand-ins inject added to the summary."""
    before = stack.world.faults.injected_total
    yield stack
    kind = request.node.originalname if hasattr(request.node, "originalname") else request.node.name
    leakscan.faults(kind, stack.world.faults.injected_total - before)
