"""The registry entry a run leaves fits Key Vault's 15 tags, for the fullest spec and outcome there is."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
from typing import Any

import pytest

from shared.core.registry import MAX_TAG_VALUE, MAX_TAGS, LastRun
from shared.core.spec import FederatedTrust
from shared.errors import NeedsOperator
from shared.reconciler import RunResult, _Executor

from .factories import CONTEXT, SPEC, T0, ready, version

FULLEST = dataclasses.replace(
    SPEC, contacts=("ops@contoso.example",), description="mailbox reports",
    federated=(FederatedTrust("https://token.actions.githubusercontent.com", "repo:contoso/jobs:environment:prod"),))


class TagSink:
    """Stands in for the vault gateway (and the witness): keeps the tags (and the witness) a run writes."""

    def __init__(self) -> None:
        self.written: dict[str, str] = {}
        self.witnessed: dict[str, str] = {}

    async def write(self, name: str, metadata: dict[str, str]) -> None:
        self.witnessed = metadata

    async def update_certificate_tags(self, name: str, version: str, tags: dict[str, str]) -> None:
        self.written = tags

    async def update_record_tags(self, name: str, tags: dict[str, str]) -> None:
        self.written = tags


def executor_for(spec: Any, observed: Any, sink: TagSink) -> _Executor:
    reconciler = type("R", (), {"vault": sink, "witness": sink,
                                "clock": staticmethod(lambda: T0 + dt.timedelta(days=300)), "context": CONTEXT})()
    return _Executor(reconciler, spec, observed)  # type: ignore[arg-type]


def failed_result(spec: Any) -> RunResult:
    result = RunResult(spec.name, "reconcile", plan=None, previous=LastRun(T0, "SignInNotYetPossible", 2))  # type: ignore[arg-type]
    result.error = NeedsOperator("x" * 1000, reason="RoleRefused")
    return result


def test_a_certificate_identitys_fullest_entry_fits() -> None:
    sink = TagSink()
    observed = ready(version(2), previous=version(1))  # a previous certificate: retireAfter is written too
    asyncio.run(executor_for(FULLEST, observed, sink).record_outcome(failed_result(FULLEST)))
    assert len(sink.written) <= MAX_TAGS, sorted(sink.written)
    assert all(len(v) <= MAX_TAG_VALUE for v in sink.written.values())
    assert {"retireAfter", "publishedThumbprint", "failures", "lastError", "credentials", "notes"} <= set(sink.written)


@pytest.mark.parametrize("with_error", [True, False])
def test_a_managed_identitys_fullest_entry_fits(with_error: bool) -> None:
    from shared.core.model import ObservedManagedIdentity

    spec = dataclasses.replace(FULLEST, certificate=False, federated=(), managed_identity="mi-principal")
    observed = dataclasses.replace(ready(), certificate=None, application=None,
                                   managed_identity=ObservedManagedIdentity("mi-principal", "mi-client", True),
                                   service_principal_id="mi-principal", record=ready().record)
    sink = TagSink()
    result = failed_result(spec) if with_error else RunResult(spec.name, "reconcile", plan=None)  # type: ignore[arg-type]
    asyncio.run(executor_for(spec, observed, sink).record_outcome(result))
    assert len(sink.written) <= MAX_TAGS, sorted(sink.written)
    assert sink.written["lastResult"] == ("RoleRefused" if with_error else "Succeeded")
    assert sink.witnessed == {"principalid": "mi-principal"}  # bound to its managed identity; no grant recorded
