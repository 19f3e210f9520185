"""Time from `POST /api/identities` to a job's first successful Exchange call, under a realistic profile.

Profile: 25 ms latency on every request to Graph, Key Vault, Entra and Exchange; 2 s certificate
issuance (Key Vault's pending creation); 20 s before a new key credential is accepted at sign-in
(key replication). The request goes through the real HTTP handler with the default inline budget:
when it answers 202 the queue trigger carries it on, driven here as the host would, through Azurite.
The continuation goes through the HTTP function's queue output binding, which wakes the same host's
listener on that queue at once (the Storage Queues extension's shared queue watcher); a message that
came any other way waits for the listener's next poll of the idle queue, taken here at the worst
moment: host.json's maxPollingInterval after it was queued. A job then calls `Get-Mailbox` as the new
identity until it succeeds.
Target: the key replication delay + 3 s (what the product adds to the wait it cannot avoid).

Used by bench/bootstrap (the `firstExchangeCall` section).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
import uuid
from typing import TYPE_CHECKING, Any

from bench._common import REPO_ROOT

if TYPE_CHECKING:
    from devstack import Stack

LATENCY_SECONDS = 0.025
ISSUANCE_SECONDS = 2.0
KEY_REPLICATION_SECONDS = 20.0
TARGET_OVERHEAD_SECONDS = 3.0
SERVICES = ("graph", "keyvault", "entra", "exchange")


def _handlers() -> dict[str, Any]:
    import function_app

    return {fn.get_function_name(): fn for fn in function_app.app.get_functions()}


def _call(function: Any, argument: Any) -> tuple[Any, list[str]]:
    """Run a registered function as the host does: its answer, and the queues its output bindings wrote."""
    from devstack.host import queue_outputs, send_outputs
    from shared.platform import close_platforms

    outputs = queue_outputs(function)

    async def run() -> Any:
        try:
            return await function.get_user_function()(argument, **outputs)
        finally:
            await close_platforms()

    answer = asyncio.run(run())
    return answer, send_outputs(outputs)


def host_queue_seconds(setting: str) -> float:
    """A queue trigger setting of host.json (`hh:mm:ss`) in seconds: maxPollingInterval, the longest
    pause between polls of an empty queue; visibilityTimeout, the pause before a failed message is
    delivered again."""
    queues = json.loads((REPO_ROOT / "host.json").read_text())["extensions"]["queues"]
    hours, minutes, seconds = (float(part) for part in queues[setting].split(":"))
    return hours * 3600 + minutes * 60 + seconds


def _drain_until_done(handlers: dict[str, Any], queue_name: str, operation_id: str, deadline: float,
                      idle_poll: float, first_poll: float) -> str:
    """Deliver reconcile messages as the host does until the operation is over; returns its status.

    The host polls an empty queue less and less often, up to `idle_poll` (maxPollingInterval), and
    soon again after it found a message; the first poll comes `first_poll` seconds from now (0 when
    a binding of the host itself queued the message). A failed delivery comes back after host.json's
    visibilityTimeout.
    """
    import azure.functions as func
    from azure.storage.queue import QueueClient

    from shared.adapters.storage import STORAGE_CONNECTION
    from shared.operations import OperationStore
    from shared.settings import Settings

    store = OperationStore(Settings.current())
    retry_after_failure = int(host_queue_seconds("visibilityTimeout"))
    next_poll = time.monotonic() + first_poll
    with QueueClient.from_connection_string(os.environ[STORAGE_CONNECTION], queue_name) as queue:
        while time.monotonic() < deadline:
            time.sleep(max(0.0, next_poll - time.monotonic()))
            found = False
            for received in queue.receive_messages(visibility_timeout=retry_after_failure, max_messages=1):
                found = True
                body = base64.b64decode(received.content)
                try:
                    _call(handlers["reconcile_identity"], func.QueueMessage(id=received.id, body=body))
                    queue.delete_message(received)
                except Exception:
                    pass
            document = asyncio.run(store.load(operation_id))
            if document is not None and document["status"] in ("Succeeded", "Failed"):
                return str(document["status"])
            next_poll = time.monotonic() + (0.1 if found else idle_poll)
    return "TimedOut"


def _first_exchange_call(name: str, deadline: float) -> int:
    """Call Get-Mailbox as the identity until it succeeds; returns the attempts it took.

    Each attempt is a script that owns its loop, so it closes the loop's connections before the loop
    ends (docs/jobs.md), as a job's process would.
    """
    from shared.runtime.connection import close_connections
    from shared.runtime.exchange import exchange_client

    async def call() -> None:
        try:
            await exchange_client(name).invoke("Get-Mailbox", {"ResultSize": "1"})
        finally:
            await close_connections()

    attempts = 0
    while True:
        attempts += 1
        try:
            asyncio.run(call())
            return attempts
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.25)


def measure(stack: Stack) -> dict[str, Any]:
    import azure.functions as func

    from devstack.faults import Fault

    handlers = _handlers()
    idle_poll = host_queue_seconds("maxPollingInterval")
    name = f"first-call-{uuid.uuid4().hex[:6]}"
    queue_name = f"bench-{uuid.uuid4().hex[:12]}"
    keyvault = stack.world.services["keyvault"]
    saved_queue = os.environ.get("RECONCILE_QUEUE")
    os.environ["RECONCILE_QUEUE"] = queue_name
    for service in SERVICES:
        stack.world.faults.add(Fault.from_json({"service": service, "latency": LATENCY_SECONDS, "count": None}))
    keyvault.creation_delay = ISSUANCE_SECONDS
    stack.world.key_replication_delay = KEY_REPLICATION_SECONDS
    try:
        request = func.HttpRequest(method="POST", url="http://localhost/api/identities",
                                   headers={"Content-Type": "application/json"}, params={}, route_params={},
                                   body=json.dumps({"name": name}).encode())
        started = time.monotonic()
        deadline = started + 180
        response, written = _call(handlers["identities"], request)
        answered = time.monotonic() - started
        status = "Succeeded" if response.status_code in (200, 201) else "Failed"
        woken = queue_name in written  # the host's own binding queued the continuation: its listener polls now
        if response.status_code == 202:
            operation_id = json.loads(response.get_body())["id"]
            status = _drain_until_done(handlers, queue_name, operation_id, deadline, idle_poll,
                                       first_poll=0.0 if woken else idle_poll)
        completed = time.monotonic() - started
        attempts = _first_exchange_call(name, deadline) if status == "Succeeded" else 0
        first_call = time.monotonic() - started
    finally:
        stack.world.faults.clear()
        keyvault.creation_delay = 0.0
        stack.world.key_replication_delay = None
        if saved_queue is None:
            os.environ.pop("RECONCILE_QUEUE", None)
        else:
            os.environ["RECONCILE_QUEUE"] = saved_queue
    target_seconds = KEY_REPLICATION_SECONDS + TARGET_OVERHEAD_SECONDS
    return {
        "profile": {"latencyMsPerRequest": round(LATENCY_SECONDS * 1000),
                    "certificateIssuanceSeconds": ISSUANCE_SECONDS, "keyReplicationSeconds": KEY_REPLICATION_SECONDS},
        "hostQueuePollSeconds": idle_poll,
        "continuationThroughBinding": woken,
        "httpStatus": response.status_code,
        "answeredSeconds": round(answered, 2),
        "operationStatus": status,
        "operationDoneSeconds": round(completed, 2),
        "exchangeAttempts": attempts,
        "postToFirstExchangeCallSeconds": round(first_call, 2),
        "targetSeconds": target_seconds,
        "target": f"key replication delay + {TARGET_OVERHEAD_SECONDS:g} s = {target_seconds:g} s",
    }
