"""Admin CLI: the HTTP API's operations for any configured environment.

    python -m shared [--env-file FILE] [--json] COMMAND ...

Settings come from the environment (or --env-file, e.g. the stand-ins' .devstack/devstack.env);
the platform identity is whatever DefaultAzureCredential finds (az login for an admin).
bootstrap, rotate and decommission hold the identity's lease (waiting for another run of it, and
saying so), print a line per step on stderr, and with --json print the operation document;
--no-wait queues the operation for the function app instead (it needs AzureWebJobsStorage).
Exit codes: 0 done, 1 failed (see the message: retry later or fix what it names), 2 bad input,
3 no such identity, 4 blocked by an object this product does not own. `doctor` exits 0 when every
check is ok or only warns, 1 when one fails.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from shared.errors import ExoAutomationError, ForeignObject, IdentityNotFound, InvalidSpec, SettingsError

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_BLOCKED = 0, 1, 2, 3, 4


def load_env_file(path: Path) -> None:
    """KEY=VALUE lines into the environment; the file's values win over the shell's.

    The file is named on the command line, so it is the more specific choice: a shell that already
    sets SSL_CERT_FILE (many do, for the system's CAs) must not keep the file's CA bundle out.
    Applied before anything that reads those variables is imported: aiohttp builds its SSL context
    from SSL_CERT_FILE once, when it is first imported.
    """
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        os.environ[key.strip()] = value.strip()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m shared", description=__doc__.split("\n\n")[0])
    parser.add_argument("--env-file", type=Path, help="read settings from this KEY=VALUE file first")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    sub = parser.add_subparsers(dest="command", required=True)

    boot = sub.add_parser("bootstrap", help="create or converge an automation identity (idempotent)")
    boot.add_argument("name")
    boot.add_argument("--role", action="append", dest="roles", help="Entra role name or template id (repeatable)")
    boot.add_argument("--validity-months", type=int)
    boot.add_argument("--key-size", type=int, choices=(2048, 3072, 4096))
    boot.add_argument("--contact", action="append", dest="contacts")
    boot.add_argument("--description")
    boot.add_argument("--federated", nargs=2, action="append", metavar=("ISSUER", "SUBJECT"),
                      help="trust a workload's token (repeatable); the identity keeps its certificate")
    boot.add_argument("--no-certificate", action="store_true",
                      help="with --federated: no certificate at all (jobs sign in with their workload's token only)")
    boot.add_argument("--managed-identity", metavar="PRINCIPAL_ID",
                      help="grant Exchange access to an existing managed identity itself, its principal (object) id "
                           "on ALLOWED_MANAGED_IDENTITIES: no app, no certificate; alone")
    boot.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    _wait_option(boot)

    sub.add_parser("list", help="list identities (Key Vault's certificate listing, and the connection secrets of "
                               "identities without a certificate)")
    for command, text in (("status", "show an identity's facets and dates"),
                          ("plan", "show what a reconcile would do now")):
        sub.add_parser(command, help=text).add_argument("name")
    rotate = sub.add_parser("rotate", help="rotate the certificate now")
    rotate.add_argument("name")
    rotate.add_argument("--dry-run", action="store_true")
    _wait_option(rotate)
    reconcile = sub.add_parser("reconcile", help="repair drift and rotate if due")
    reconcile.add_argument("name")
    decommission = sub.add_parser("decommission", help="remove the identity's roles, grant, app and vault objects")
    decommission.add_argument("name")
    decommission.add_argument("--dry-run", action="store_true")
    decommission.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    _wait_option(decommission)
    doctor = sub.add_parser("doctor", help="check every prerequisite, read-only, and say how to fix each")
    doctor.add_argument("--principal-id", help="object id of the platform identity whose Graph permissions to "
                                               "check (default: the identity signed in)")
    doctor.add_argument("--app-name", help="the Function App's name, for the fix commands")
    doctor.add_argument("--resource-group", help="its resource group, for the fix commands")
    return parser


def _wait_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-wait", action="store_true",
                        help="queue the operation for the function app and return at once (prints the operation)")


def spec_body(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {"name": args.name}
    for key, value in (("roles", args.roles), ("validityMonths", args.validity_months), ("keySize", args.key_size),
                       ("contacts", args.contacts), ("description", args.description)):
        if value is not None:
            body[key] = value
    credentials: list[dict[str, str]] = []
    if args.managed_identity is not None:  # alone: with anything else the request is refused (exit 2)
        credentials.append({"type": "managedIdentity", "principalId": args.managed_identity})
    elif args.federated and not args.no_certificate:
        credentials.append({"type": "certificate"})
    credentials += [{"type": "federated", "issuer": issuer, "subject": subject}
                    for issuer, subject in args.federated or ()]
    if credentials:
        body["credentials"] = credentials
    return body


# An admin at a terminal can wait for another run of the identity longer than an HTTP caller.
CLI_LEASE_WAIT_SECONDS = 600.0
OPERATIONS = {"bootstrap": "bootstrap", "rotate": "rotate", "decommission": "decommission"}


def _progress_line(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


async def run_operation(platform: Any, args: argparse.Namespace, caller: str) -> tuple[int, Any]:
    """bootstrap / rotate / decommission: in this process with a line per step, or queued (--no-wait)."""
    from shared import operations
    from shared.core.spec import parse_spec
    from shared.service import run_document

    kind = OPERATIONS[args.command]
    spec = spec_body(args) if kind == "bootstrap" else None
    name = parse_spec(spec, platform.settings).name if spec is not None else args.name
    document = operations.new_document(platform, kind, name, caller=caller, spec=spec,
                                       force_rotate=kind == "rotate")
    if args.no_wait:
        store = operations.OperationStore(platform.settings)
        await store.save(document)
        await store.enqueue({"name": name, "operationId": document["id"]})
        return EXIT_OK, document
    _progress_line(f"{kind} {name}: operation {document['id']}")
    result, document = await operations.run_and_track(platform, document, lease_wait=CLI_LEASE_WAIT_SECONDS,
                                                      printer=_progress_line)
    output = document if args.json else run_document(result)
    return (_exit_code(result.error) if result.error is not None else EXIT_OK), output


async def run(args: argparse.Namespace) -> tuple[int, Any]:
    import shared.service as service
    from shared.platform import Platform
    from shared.settings import Settings

    platform = Platform.create(Settings.from_environment())
    who: dict[str, Any] = {"caller": f"cli:{getpass.getuser()}"}
    try:
        if args.command in OPERATIONS and not args.dry_run:
            return await run_operation(platform, args, who["caller"])
        if args.command == "bootstrap":
            result = await service.bootstrap(platform, spec_body(args), dry_run=args.dry_run, **who)
        elif args.command == "list":
            return EXIT_OK, {"value": await service.list_identities(platform)}
        elif args.command == "status":
            return EXIT_OK, await service.status(platform, args.name)
        elif args.command == "plan":
            result = await service.reconcile(platform, args.name, dry_run=True, operation="plan")
        elif args.command == "rotate":
            result = await service.reconcile(platform, args.name, force_rotate=True, dry_run=args.dry_run, **who,
                                             operation="rotate")
        elif args.command == "reconcile":
            result = await service.reconcile(platform, args.name, lease_wait=CLI_LEASE_WAIT_SECONDS,
                                             on_wait=_progress_line, **who)
        else:
            result = await service.decommission(platform, args.name, dry_run=args.dry_run, **who)
        document = service.run_document(result)
        if result.error is not None:
            return _exit_code(result.error), document
        return EXIT_OK, document
    finally:
        await platform.aclose()


def _exit_code(error: ExoAutomationError) -> int:
    if isinstance(error, InvalidSpec):
        return EXIT_USAGE
    if isinstance(error, IdentityNotFound):
        return EXIT_NOT_FOUND
    if isinstance(error, ForeignObject):
        return EXIT_BLOCKED
    return EXIT_FAILED


def render(document: Any) -> str:
    """Human-readable output: runs as their actions, status as facets, lists as a table."""
    if isinstance(document, dict) and "value" in document:
        rows = document["value"]
        if not rows:
            return "no identities"
        lines = [f"{'NAME':<28} {'APP ID':<38} {'NOT AFTER':<22} LAST RESULT"]
        lines += [f"{r['name']:<28} {r.get('appId') or '-':<38} {r.get('notAfter') or '-':<22} "
                  f"{r.get('lastResult') or '-'}" for r in rows]
        return "\n".join(lines)
    if isinstance(document, dict) and "steps" in document and "status" in document:  # an operation
        lines = [f"{document['operation']} {document['name']}: {document['status']} (operation {document['id']})"]
        lines += [f"  - {step['action']}: {step['result']} {step['detail']}".rstrip() for step in document["steps"]]
        if document["status"] not in ("Succeeded", "Failed"):
            lines.append(f"  follow it: GET /api/operations/{document['id']}")
        return "\n".join(lines)
    if isinstance(document, dict) and "operation" in document:
        lines = [f"{document['operation']} {document['name']}: {document['result']}"
                 + (" (dry run)" if document["dryRun"] else "")]
        for facet, finding in document["plan"]["facets"].items():
            lines.append(f"  {facet:<18} {finding['state']:<8} {finding['message']}")
        shown = document["executed"] or [{"action": a["description"], "result": "planned", "detail": ""}
                                         for a in document["plan"]["actions"]]
        for step in shown:
            lines.append(f"  - {step['action']}: {step['result']} {step['detail']}".rstrip())
        if "error" in document:
            lines.append(f"error: {document['error']['reason']}: {document['error']['message']}")
        return "\n".join(lines)
    if isinstance(document, dict) and "facets" in document:
        cert = document.get("certificate") or {}
        lines = [f"{document['name']}: {'in sync' if document['inSync'] else 'needs work'}",
                 f"  appId        {document.get('appId')}",
                 f"  thumbprint   {cert.get('thumbprint')}  (not after {cert.get('notAfter')}, "
                 f"renewal {cert.get('renewalTime')})"]
        for facet, finding in document["facets"].items():
            lines.append(f"  {facet:<18} {finding['state']:<8} {finding['message']}")
        return "\n".join(lines)
    return json.dumps(document, indent=2)


def run_doctor(args: argparse.Namespace) -> int:
    """The doctor's table (or document with --json); exit 0 when nothing fails, 1 otherwise."""
    from shared.doctor import exit_code
    from shared.doctor import render as render_doctor
    from shared.doctor_probes import run_doctor as examine

    document = asyncio.run(examine(principal_id=args.principal_id, app_name=args.app_name,
                                   resource_group=args.resource_group))
    print(json.dumps(document, indent=2) if args.json else render_doctor(document))
    return exit_code(document)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.env_file is not None:
        if not args.env_file.is_file():
            parser.error(f"--env-file {args.env_file} does not exist")
        load_env_file(args.env_file)
    if args.command == "decommission" and not args.dry_run and not args.yes:
        if not sys.stdin.isatty():
            print("decommission removes the identity for good; pass --yes to confirm", file=sys.stderr)
            return EXIT_USAGE
        if input(f"decommission {args.name}? type its name to confirm: ").strip() != args.name:
            print("not confirmed", file=sys.stderr)
            return EXIT_USAGE
    if args.command == "doctor":
        return run_doctor(args)
    try:
        code, document = asyncio.run(run(args))
    except SettingsError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return EXIT_USAGE
    except ExoAutomationError as exc:
        if args.json:
            print(json.dumps({"error": {"reason": exc.reason, "message": exc.message,
                                        "errors": getattr(exc, "errors", [])}}, indent=2))
        else:
            print(f"error: {exc.reason}: {exc.message}", file=sys.stderr)
            for item in getattr(exc, "errors", []):
                print(f"  {item['pointer']}: {item['detail']}", file=sys.stderr)
        return _exit_code(exc)
    print(json.dumps(document, indent=2) if args.json else render(document))
    return code
