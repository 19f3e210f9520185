"""Act as the Functions host for the reconcile queue: deliver its messages to the queue trigger."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import azure.functions as func
import pytest
from azure.storage.queue import QueueClient, TextBase64DecodePolicy, TextBase64EncodePolicy

from shared.platform import close_platforms

from .helpers import call, handler


def use_fresh_queue(monkeypatch: pytest.MonkeyPatch) -> str:
    """A reconcile queue of this test's own (Azurite's contents outlive tests)."""
    name = f"reconcile-{uuid.uuid4().hex[:12]}"
    monkeypatch.setenv("RECONCILE_QUEUE", name)
    return name


def queue_client(connection: str, name: str) -> QueueClient:
    return QueueClient.from_connection_string(connection, name, message_encode_policy=TextBase64EncodePolicy(),
                                              message_decode_policy=TextBase64DecodePolicy())


def deliver_one(connection: str, name: str, *, visibility: int = 3) -> bool:
    """Hand one visible message to `reconcile_identity`, as the host does; False if none is visible.

    A message the handler raises on stays in the queue (visible again after `visibility` seconds),
    like the host's redelivery."""
    with queue_client(connection, name) as queue:
        try:
            received = next(iter(queue.receive_messages(visibility_timeout=visibility, max_messages=1)), None)
        except Exception:  # the queue does not exist yet
            return False
        if received is None:
            return False
        message = func.QueueMessage(id=received.id, body=received.content.encode())

        async def run() -> None:
            try:
                await handler("reconcile_identity")(message)
            finally:
                await close_platforms()

        try:
            asyncio.run(run())
        except Exception:
            return True
        queue.delete_message(received)
        return True


def approximate_count(connection: str, name: str) -> int:
    with queue_client(connection, name) as queue:
        try:
            return int(queue.get_queue_properties().approximate_message_count or 0)
        except Exception:
            return 0


def drain(connection: str, name: str, *, timeout: float = 180.0) -> int:
    """Deliver messages until the queue is empty (including delayed ones); returns deliveries."""
    deadline = time.monotonic() + timeout
    deliveries = 0
    while time.monotonic() < deadline:
        if deliver_one(connection, name):
            deliveries += 1
            continue
        if approximate_count(connection, name) == 0:
            return deliveries
        time.sleep(0.5)  # delayed (re-queued) or invisible (being redelivered) messages
    raise AssertionError(f"queue {name} not drained within {timeout} s")


def operation(location: str) -> Any:
    operation_id = location.rsplit("/", 1)[-1]
    return call("operation_status", "GET", f"http://localhost{location}", route_params={"operationId": operation_id})
