"""`python -m devstack up`: run the stand-ins and Azurite for a local run of the function app.

Writes the settings that point the app (and any SDK) at them, then runs until Ctrl-C / SIGTERM.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .azurite import REPO_ROOT, Azurite, AzuriteNotInstalled, AzuriteStartError
from .process import ENV_FILE_NAME
from .stack import Stack

DEFAULT_STATE_DIR = REPO_ROOT / ".devstack"
DEFAULT_LOCAL_SETTINGS = REPO_ROOT / "local.settings.json"
# With --no-azurite the app is pointed at an emulator the user runs on the default ports.
DEVELOPMENT_STORAGE = "UseDevelopmentStorage=true"

# local.settings.json carries this value when devstack wrote it: a digest of the other values as
# written. The file is rewritten only while it still matches, i.e. nobody has edited it since.
MARKER = "DEVSTACK_MANAGED"
MARKER_NOTE = ("written by `python -m devstack up`, which rewrites it on each start; "
               "remove this line to keep the file")

DESCRIPTION = """\
Local stand-ins for Entra ID, Microsoft Graph, Key Vault and Exchange Online (HTTPS on loopback, own
CA), plus Azurite for Azure Storage: test equipment for running the function app and its jobs with
no tenant and no internet."""

UP_EPILOG = """\
what it writes:
  STATE_DIR/ca.pem           the CA that signed the stand-ins' certificate (SSL_CERT_FILE)
  STATE_DIR/devstack.env     KEY=VALUE lines: every setting, AzureWebJobsStorage included
                             (removed again on a clean stop)
  local.settings.json        the same values for `func start`, in the repository root. Written only
                             if absent or written by devstack before and not edited since: a file of
                             your own is never overwritten (the output says when it was left alone).

examples:
  python -m devstack up                          # or: make run
  python -m devstack up --state-dir /tmp/ds --no-azurite
  python -m devstack up --no-local-settings      # only the env file

The stand-ins' control API (clock, faults, request counters, state) is at DEVSTACK_CONTROL_URL."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m devstack", description=DESCRIPTION,
                                     epilog="`python -m devstack up --help` tells what `up` writes. From "
                                            "code: devstack.Stack (in-process), devstack.azurite.Azurite, "
                                            "devstack.process.start_stack_process (a background process).",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    up = commands.add_parser("up", help="start everything, write the settings, run until Ctrl-C",
                             description="Start the stand-ins and Azurite, write the settings that point "
                                         "at them, and run until Ctrl-C or SIGTERM.",
                             epilog=UP_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    up.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR, metavar="DIR",
                    help="where the CA, certificates and devstack.env go (default: %(default)s)")
    up.add_argument("--no-azurite", action="store_true",
                    help=f"do not start Azurite; AzureWebJobsStorage is then {DEVELOPMENT_STORAGE} "
                         "(an emulator you run yourself on the default ports)")
    up.add_argument("--local-settings", type=Path, default=DEFAULT_LOCAL_SETTINGS, metavar="FILE",
                    help="the local.settings.json to maintain (default: %(default)s)")
    up.add_argument("--no-local-settings", action="store_true", help="do not write local.settings.json")
    # For devstack.process: the parent holds our stdin open and closing it (even by dying) stops us.
    up.add_argument("--stop-on-stdin-eof", action="store_true", help=argparse.SUPPRESS)
    commands.add_parser("demo", help="bootstrap an identity end to end and run a job with it (make run)",
                        add_help=False)
    return parser


# --- local.settings.json ---------------------------------------------------------------------------

def _digest(values: dict[str, Any]) -> str:
    canonical = json.dumps({k: v for k, v in values.items() if k != MARKER}, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def local_settings_owner(path: Path) -> str | None:
    """None if devstack may (re)write `path`; otherwise why it must be left alone."""
    if not path.exists():
        return None
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        return f"it is not readable JSON ({exc})"
    values = document.get("Values") if isinstance(document, dict) else None
    if not isinstance(values, dict) or not isinstance(values.get(MARKER), str):
        return "it was not written by devstack"
    if set(document) - {"IsEncrypted", "Values"}:
        return "it has sections devstack does not write"
    if not values[MARKER].startswith(f"sha256:{_digest(values)} "):
        return "it was edited since devstack wrote it"
    return None


def write_local_settings(stack: Stack, path: Path, extra: dict[str, str]) -> str | None:
    """Write `path` if it is devstack's to write; returns None, or the reason it was left alone."""
    reason = local_settings_owner(path)
    if reason is not None:
        return reason
    scratch = path.with_name(f".{path.name}.devstack-tmp")
    stack.write_local_settings(scratch, extra)
    document = json.loads(scratch.read_text())
    values = document["Values"]
    values[MARKER] = f"sha256:{_digest(values)} {MARKER_NOTE}"
    scratch.write_text(json.dumps(document, indent=2) + "\n")
    os.replace(scratch, path)
    return None


# --- up ---------------------------------------------------------------------------------------------

def _write_env_file(stack: Stack, path: Path, extra: dict[str, str]) -> None:
    scratch = path.with_name(f".{path.name}.tmp")
    stack.write_env_file(scratch, extra)
    os.replace(scratch, path)  # readers (devstack.process) never see half a file


def _watch_stdin(stop: threading.Event) -> None:
    def watch() -> None:
        try:
            while sys.stdin.buffer.read(4096):
                pass
        except (OSError, ValueError):
            pass
        stop.set()

    threading.Thread(target=watch, name="stdin-eof", daemon=True).start()


def up(args: argparse.Namespace) -> int:
    state_dir: Path = args.state_dir.resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    env_file = state_dir / ENV_FILE_NAME
    env_file.unlink(missing_ok=True)  # never leave a stale one pointing at dead ports

    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    if args.stop_on_stdin_eof:
        _watch_stdin(stop)

    azurite: Azurite | None = None
    stack: Stack | None = None
    try:
        if not args.no_azurite:
            try:
                azurite = Azurite.start(state_dir / "azurite")
            except (AzuriteNotInstalled, AzuriteStartError) as exc:
                print(f"devstack: {exc}", file=sys.stderr)
                print("devstack: (or run with --no-azurite)", file=sys.stderr)
                return 1
        storage = azurite.connection_string if azurite else DEVELOPMENT_STORAGE
        stack = Stack.start(state_dir)
        extra = {"AzureWebJobsStorage": storage}

        lines = [f"devstack is up (state in {state_dir})"]
        for name in stack.servers:
            lines.append(f"  {name:<10} {stack.url(name)}")
        if azurite:
            lines += [f"  azurite    {service:<5} {azurite.endpoint(service)}" for service in azurite.ports]
        else:
            lines.append(f"  azurite    not started: AzureWebJobsStorage={DEVELOPMENT_STORAGE}")
        lines.append(f"  CA bundle  {stack.ca_file}")
        if args.no_local_settings:
            lines.append("  local.settings.json not written (--no-local-settings)")
        else:
            path = args.local_settings.resolve()
            reason = write_local_settings(stack, path, extra)
            lines.append(f"  local.settings.json written: {path}" if reason is None else
                         f"  local.settings.json LEFT UNTOUCHED: {path}: {reason}. Use the values in the "
                         f"env file, or delete it to let devstack write it.")
        _write_env_file(stack, env_file, extra)
        lines.append(f"  env file   {env_file}")
        lines.append("Press Ctrl-C to stop.")
        print("\n".join(lines), flush=True)

        while not stop.wait(1.0):
            if azurite and not azurite.running():
                if stop.wait(0.5):  # Ctrl-C at the terminal reaches Azurite too
                    break
                print("devstack: Azurite exited unexpectedly:\n" + "\n".join(azurite.output[-20:]),
                      file=sys.stderr, flush=True)
                return 1
        return 0
    finally:
        env_file.unlink(missing_ok=True)
        if stack is not None:
            stack.stop()
        if azurite is not None:
            azurite.stop()
        print("devstack stopped.", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["demo"]:
        from .demo import main as demo

        return demo(argv[1:])
    args = parser.parse_args(argv)
    if args.command == "up":
        return up(args)
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
