"""`python -m devstack up` and devstack.process: settings written, user files respected, clean stop."""

from __future__ import annotations

import json
import ssl
from pathlib import Path

import httpx
import pytest
from azure.storage.queue import QueueClient

from devstack import Stack
from devstack.__main__ import MARKER, local_settings_owner, main, write_local_settings
from devstack.process import read_env_file, start_stack_process

EXTRA = {"AzureWebJobsStorage": "UseDevelopmentStorage=true"}


def test_help_describes_up(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["up", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for text in ("--state-dir", "--no-azurite", "local.settings.json", "devstack.env"):
        assert text in out
    assert main([]) == 2  # no command: the overview, and a usage exit code


# These only need a Stack to take the settings from, not a reset tenant: the session's, as it is.
@pytest.fixture()
def stack(_session_stack: Stack) -> Stack:
    return _session_stack


def test_local_settings_written_when_absent_and_rewritten_while_untouched(stack: Stack,
                                                                          tmp_path: Path) -> None:
    path = tmp_path / "local.settings.json"
    assert write_local_settings(stack, path, EXTRA) is None
    values = json.loads(path.read_text())["Values"]
    assert values["FUNCTIONS_WORKER_RUNTIME"] == "python"
    assert values["AzureWebJobsStorage"] == "UseDevelopmentStorage=true"
    assert values["KEY_VAULT_URL"] == stack.settings()["KEY_VAULT_URL"]
    assert values[MARKER].startswith("sha256:")
    assert local_settings_owner(path) is None
    changed = {"AzureWebJobsStorage": "UseDevelopmentStorage=true;x=1"}
    assert write_local_settings(stack, path, changed) is None
    assert json.loads(path.read_text())["Values"]["AzureWebJobsStorage"].endswith("x=1")


def test_an_edited_devstack_file_is_left_alone(stack: Stack, tmp_path: Path) -> None:
    path = tmp_path / "local.settings.json"
    write_local_settings(stack, path, EXTRA)
    document = json.loads(path.read_text())
    document["Values"]["SWEEP_SCHEDULE"] = "0 */5 * * * *"
    path.write_text(json.dumps(document))
    before = path.read_text()
    assert write_local_settings(stack, path, EXTRA) == "it was edited since devstack wrote it"
    assert path.read_text() == before


@pytest.mark.parametrize("content, reason", [
    ('{"IsEncrypted": false, "Values": {"AzureWebJobsStorage": "mine"}}', "not written by devstack"),
    ("{not json", "not readable JSON"),
])
def test_a_users_own_file_is_never_overwritten(stack: Stack, tmp_path: Path, content: str,
                                               reason: str) -> None:
    path = tmp_path / "local.settings.json"
    path.write_text(content)
    assert reason in (write_local_settings(stack, path, EXTRA) or "")
    assert path.read_text() == content


def test_stack_in_a_background_process(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    env, stop = start_stack_process(state_dir)
    try:
        assert read_env_file(state_dir / "devstack.env") == env
        for name in ("AZURE_AUTHORITY_HOST", "KEY_VAULT_URL", "GRAPH_ENDPOINT", "EXO_ENDPOINT",
                     "SSL_CERT_FILE", "DEVSTACK_CONTROL_URL", "AzureWebJobsStorage"):
            assert env[name], name
        trust = ssl.create_default_context(cafile=env["SSL_CERT_FILE"])
        clock = httpx.get(f"{env['DEVSTACK_CONTROL_URL']}/control/clock", verify=trust)
        assert clock.status_code == 200
        with QueueClient.from_connection_string(env["AzureWebJobsStorage"], "background") as queue:
            queue.create_queue()
            queue.send_message("hello")
            assert [m.content for m in queue.receive_messages()] == ["hello"]
    finally:
        assert stop() == 0
    assert not (state_dir / "devstack.env").exists()
    assert "devstack is up" in (state_dir / "devstack.log").read_text()
    assert stop() == 0  # idempotent
