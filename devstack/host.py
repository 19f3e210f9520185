"""What the Azure Functions host does around a Python function, for tools that call handlers directly.

Tests and benchmarks run the product's functions without `func start` (Core Tools cannot be installed
everywhere): they call the user function themselves, so they also do the host's part for its queue
output bindings. The host passes the function a `func.Out` per binding and, once the function has
returned, sends what was set to the binding's queue (`%SETTING%` names resolved from the app
settings), base64-encoded as host.json's `messageEncoding` says. A message added through a binding
also wakes the same host's listener on that queue at once.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
from typing import Any

STORAGE_CONNECTION = "AzureWebJobsStorage"


class QueueOutput:
    """A `func.Out[str]` for one invocation: holds what the function set."""

    def __init__(self, queue: str) -> None:
        self.queue = queue
        self.value: str | None = None

    def set(self, val: str) -> None:
        self.value = val

    def get(self) -> str | None:
        return self.value


def queue_outputs(function: Any) -> dict[str, QueueOutput]:
    """A `QueueOutput` per queue output binding of a registered function (`app.get_functions()`)."""
    outputs = {}
    for binding in function.get_bindings():
        if binding.type == "queue" and binding.name != "$return":
            outputs[binding.name] = QueueOutput(re.sub(r"%([^%]+)%", _app_setting, binding.queue_name))
    return outputs


def _app_setting(match: re.Match[str]) -> str:
    name = match.group(1)
    if not os.environ.get(name):
        raise LookupError(f"the binding names app setting {name}, which is not set (the host refuses such a "
                          "function); set it as local.settings.sample.json does")
    return os.environ[name]


def send_outputs(outputs: dict[str, QueueOutput]) -> list[str]:
    """Send what the function set, as the host does after it returned (creating the queue if it is
    missing, as the binding does); returns the queues written to."""
    from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
    from azure.storage.queue import QueueClient

    written = []
    for output in outputs.values():
        if output.value is None:
            continue
        content = base64.b64encode(output.value.encode("utf-8")).decode("ascii")
        with QueueClient.from_connection_string(os.environ[STORAGE_CONNECTION], output.queue) as client:
            try:
                client.send_message(content)
            except ResourceNotFoundError:
                with contextlib.suppress(ResourceExistsError):
                    client.create_queue()
                client.send_message(content)
        written.append(output.queue)
    return written
