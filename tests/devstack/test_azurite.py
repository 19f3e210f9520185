"""Azurite (npm) through the real azure-storage-queue / azure-storage-blob SDKs."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import uuid
from pathlib import Path

import pytest
from azure.core.exceptions import ResourceExistsError
from azure.storage.blob import BlobServiceClient
from azure.storage.queue import BinaryBase64DecodePolicy, QueueClient, TextBase64EncodePolicy
from azure.storage.queue.aio import QueueClient as AsyncQueueClient

from devstack.azurite import ACCOUNT_KEY, ACCOUNT_NAME, FLAGS, Azurite, AzuriteNotInstalled, find_azurite


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def test_connection_string_points_at_loopback_with_the_development_account(azurite: str) -> None:
    parts = dict(part.split("=", 1) for part in azurite.rstrip(";").split(";"))
    assert parts["DefaultEndpointsProtocol"] == "http"
    assert parts["AccountName"] == ACCOUNT_NAME
    assert parts["AccountKey"] == ACCOUNT_KEY
    for service in ("Blob", "Queue", "Table"):
        assert parts[f"{service}Endpoint"].startswith("http://127.0.0.1:")
        assert parts[f"{service}Endpoint"].endswith(f"/{ACCOUNT_NAME}")


def test_queue_send_receive_delete(azurite: str) -> None:
    with QueueClient.from_connection_string(azurite, _name("identities")) as queue:
        queue.create_queue()
        sent = queue.send_message('{"identity": "mailbox-report"}')
        received = list(queue.receive_messages(max_messages=32, visibility_timeout=30))
        assert [m.id for m in received] == [sent.id]
        assert received[0].content == '{"identity": "mailbox-report"}'
        assert received[0].dequeue_count == 1
        queue.delete_message(received[0])
        assert list(queue.receive_messages()) == []


def test_queue_messages_in_the_functions_base64_encoding(azurite: str) -> None:
    # The queue trigger decodes base64 by default (host.json extensions.queues.messageEncoding), while
    # azure-storage-queue sends text as-is unless told to encode.
    name = _name("fanout")
    encode, decode = TextBase64EncodePolicy(), BinaryBase64DecodePolicy()
    with QueueClient.from_connection_string(azurite, name, message_encode_policy=encode) as q:
        q.create_queue()
        q.send_message("reconcile: ops-mailboxes")
    with QueueClient.from_connection_string(azurite, name, message_decode_policy=decode) as q:
        [message] = q.peek_messages()
        assert message.content == b"reconcile: ops-mailboxes"


def test_queue_through_the_async_client(azurite: str) -> None:
    async def roundtrip() -> list[str]:
        async with AsyncQueueClient.from_connection_string(azurite, _name("async")) as queue:
            await queue.create_queue()
            for i in range(3):
                await queue.send_message(f"message {i}")
            return [m.content async for m in queue.receive_messages(max_messages=10)]

    assert sorted(asyncio.run(roundtrip())) == ["message 0", "message 1", "message 2"]


def test_blob_upload_download(azurite: str) -> None:
    with BlobServiceClient.from_connection_string(azurite) as service:
        container = service.create_container(_name("state"))
        payload = bytes(range(256)) * 64
        container.upload_blob("leases/sweep.json", payload, metadata={"owner": "sweep"})
        blob = container.get_blob_client("leases/sweep.json")
        assert blob.download_blob().readall() == payload
        assert blob.get_blob_properties().metadata == {"owner": "sweep"}
        assert [b.name for b in container.list_blobs(name_starts_with="leases/")] == ["leases/sweep.json"]
        with pytest.raises(ResourceExistsError):
            container.upload_blob("leases/sweep.json", b"again")


def test_installed_azurite_knows_every_flag_we_pass() -> None:
    result = subprocess.run([*find_azurite(), "--help"], capture_output=True, text=True, timeout=60,
                            check=True)
    for flag in (*FLAGS, "--blobPort", "--queuePort", "--tablePort", "--blobHost"):
        assert flag in result.stdout, flag


def test_a_missing_azurite_says_how_to_install_it(tmp_path: Path) -> None:
    with pytest.raises(AzuriteNotInstalled, match="npm ci"):
        find_azurite(root=tmp_path, search_path=str(tmp_path))


def test_stop_ends_the_process_and_frees_its_ports(tmp_path: Path) -> None:
    emulator = Azurite.start(tmp_path)
    ports = dict(emulator.ports)
    assert set(ports) == {"blob", "queue", "table"}
    assert emulator.running()
    emulator.stop()
    emulator.stop()  # idempotent
    assert emulator.process.returncode is not None
    for port in ports.values():
        with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            pass
