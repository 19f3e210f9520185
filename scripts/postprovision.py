"""azd post-provision hook: the platform identity's Microsoft Graph permissions, checked and completed.

The Bicep deployment grants them with the Microsoft Graph Bicep extension (infra/modules/
graph-permissions.bicep). This hook, using msgraph-sdk, covers what that cannot:

- it verifies the grants the platform will run with and prints them against the permission table
  (infra/graph-permissions.json, rendered in docs/deploy.md);
- where the deployment did not grant them (`GRANT_GRAPH_PERMISSIONS=false`: the cloud has no Graph
  Bicep extension, or the deploying user is not a Privileged Role Administrator), it grants exactly
  the table's permissions for the chosen ROLE_MODE (`--grant`; the default then), or, refused, says
  who must run it;
- Bicep only ever adds: permissions that the mode no longer needs (after switching `assign` to
  `verify`) or that someone added by hand are reported, and removed with `--revoke-excess`.

Right after the first deployment Entra ID may not have replicated the new platform identity yet: the
hook retries its reads and grants for about a minute while Graph answers 404 or "Not a valid
reference update" (REPLICATION_WAITS), then reports what is still missing (docs/deploy.md,
"Troubleshooting the deployment").

Then it runs the doctor (`python -m shared doctor`, read-only) and prints its table: every other
prerequisite of a first bootstrap, each with its fix (`--no-doctor` skips it).

Run by azd after `azd provision` / `azd up` with the deployment's outputs in the environment; by
hand: `python scripts/postprovision.py --help`. `--dry-run` prints the plan and writes nothing.
Exit status: 0 when the identity holds every permission its mode needs (or on --dry-run), 1 when
some are still missing, 2 on a usage or configuration error (the doctor's findings do not change it).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
# The table's code is the product's own (the doctor uses it in the Function App): run as a script,
# this file's directory is on sys.path, not the repository root.
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from shared.core.permission_table import (  # noqa: E402
    PERMISSION_TABLE,
    GrantPlan,
    Permission,
    PermissionTable,
    UnknownRoleMode,
    load_table,
    plan_grants,
)

__all__ = ["PERMISSION_TABLE", "GrantPlan", "Permission", "PermissionTable", "UnknownRoleMode", "load_table",
           "plan_grants"]

MODES = ("assign", "verify")
TABLE_START = "<!-- graph-permissions:start (generated from infra/graph-permissions.json) -->"
TABLE_END = "<!-- graph-permissions:end -->"


class HookError(Exception):
    """A configuration or usage problem: exit status 2 with the message."""


# -- the permission table (pure; shared/core/permission_table.py) ---------------------------------------
def render_table(table: PermissionTable) -> str:
    """The Markdown table of docs/deploy.md (and the README), between its generated-block markers."""
    modes = list(table.modes)
    header = "| Permission | " + " | ".join(f"`{m}` mode" for m in modes) + " | Graph calls that need it | Why |"
    rule = "|---|" + "---|" * len(modes) + "---|---|"
    rows = []
    for p in table.permissions:
        mark = "optional" if p.optional else "yes"
        marks = " | ".join(mark if m in p.modes else "—" for m in modes)
        calls = "<br>".join(f"`{c}`" for c in p.calls)
        rows.append(f"| `{p.name}` | {marks} | {calls} | {p.why} |")
    return "\n".join([TABLE_START, header, rule, *rows, TABLE_END])


# -- what to change (pure) -------------------------------------------------------------------------
def describe(plan: GrantPlan, mode: str, *, will_grant: bool, will_revoke: bool) -> list[str]:
    lines = [f"Microsoft Graph permissions of the platform identity (ROLE_MODE={mode}):"]
    lines += [f"  ok       {name}" for name in plan.present]
    lines += [f"  {'grant' if will_grant else 'MISSING'}    {name}" for name, _ in plan.grant]
    lines += [f"  UNKNOWN  {name} (Microsoft Graph's service principal does not offer it)" for name in plan.unknown]
    lines += [f"  {'revoke' if will_revoke else 'excess'}   {name} (not needed in this mode)"
              for name, _ in plan.excess]
    return lines


def next_steps(environ: Mapping[str, str], mode: str, complete: bool) -> list[str]:
    url = environ.get("FUNCTION_APP_URL", "https://<function app>")
    app = environ.get("AZURE_FUNCTION_APP_NAME", "<function app>")
    group = environ.get("AZURE_RESOURCE_GROUP", "<resource group>")
    lines = []
    if not complete:
        principal = environ.get("PLATFORM_IDENTITY_PRINCIPAL_ID", "<platform identity object id>")
        lines += [
            "",
            "A Privileged Role Administrator (or Global Administrator) must grant the missing permissions,",
            "signed in with `azd auth login` or `az login`:",
            f"  python scripts/postprovision.py --grant --mode {mode} --principal-id {principal}",
        ]
    if mode == "verify":
        lines += [
            "",
            "ROLE_MODE=verify: the platform never assigns Entra roles. After each bootstrap, an administrator",
            "assigns the requested role (default Exchange Recipient Administrator) to the identity's service",
            "principal; status reports it as needing an operator until then.",
        ]
    lines += [
        "",
        "First bootstrap (docs/deploy.md):",
        f"  key=$(az functionapp keys list -g {group} -n {app} --query functionKeys.default -o tsv)",
        f"  curl -sS -X POST '{url}/api/identities' -H \"x-functions-key: $key\" \\",
        "       -H 'Content-Type: application/json' -d '{\"name\": \"mailbox-reports\"}'",
        f"  curl -sS '{url}/api/identities/mailbox-reports' -H \"x-functions-key: $key\"",
    ]
    return lines


def truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes")


# -- Microsoft Graph (msgraph-sdk) -----------------------------------------------------------------
def make_credential(kind: str) -> Any:
    from azure.identity.aio import (
        AzureCliCredential,
        AzureDeveloperCliCredential,
        ChainedTokenCredential,
        DefaultAzureCredential,
    )

    if kind == "azd":
        return ChainedTokenCredential(AzureDeveloperCliCredential(), AzureCliCredential())
    if kind == "cli":
        return AzureCliCredential()
    if kind == "default":
        return DefaultAzureCredential(exclude_interactive_browser_credential=True)
    raise HookError(f"unknown credential {kind!r}")


class GraphSession:
    """msgraph-sdk's client for one Graph root, and the HTTP resources to close after it."""

    def __init__(self, credential: Any, endpoint: str) -> None:
        import httpx
        from kiota_authentication_azure.azure_identity_authentication_provider import (
            AzureIdentityAuthenticationProvider,
        )
        from msgraph import GraphRequestAdapter, GraphServiceClient
        from msgraph.graph_request_adapter import options
        from msgraph_core import GraphClientFactory

        endpoint = endpoint.rstrip("/")
        host = urlsplit(endpoint).hostname or ""
        provider = AzureIdentityAuthenticationProvider(credential, scopes=[f"{endpoint}/.default"],
                                                       allowed_hosts=[host])
        # msgraph-core's middleware wraps the transport without closing it: keep it to close.
        self._transport = httpx.AsyncHTTPTransport(retries=1)
        self._http = GraphClientFactory.create_with_default_middleware(
            client=httpx.AsyncClient(transport=self._transport, timeout=httpx.Timeout(60.0)), options=options)
        adapter = GraphRequestAdapter(provider, client=self._http)
        adapter.base_url = f"{endpoint}/v1.0"
        self.client = GraphServiceClient(request_adapter=adapter)

    async def aclose(self) -> None:
        await self._http.aclose()
        await self._transport.aclose()


class GraphGrants:
    """The few Graph calls the hook makes, through msgraph-sdk's typed client."""

    def __init__(self, client: Any, principal_id: str, resource_app_id: str) -> None:
        self.client = client
        self.principal_id = principal_id
        self.resource_app_id = resource_app_id
        self.resource_sp_id = ""

    async def read(self) -> tuple[dict[str, str], dict[str, str]]:
        """(Graph's application permissions: value -> app role id, held: app role id -> assignment id)."""
        resource = await self.client.service_principals_with_app_id(self.resource_app_id).get()
        if resource is None or resource.id is None:
            raise HookError(f"the service principal of {self.resource_app_id} was not found in this tenant")
        self.resource_sp_id = str(resource.id)
        roles = {str(r.value): str(r.id).lower() for r in resource.app_roles or []
                 if r.value and "Application" in (r.allowed_member_types or [])}
        held: dict[str, str] = {}
        builder = self.client.service_principals.by_service_principal_id(self.principal_id).app_role_assignments
        page = await builder.get()
        while page is not None:
            for assignment in page.value or []:
                if str(assignment.resource_id).lower() == self.resource_sp_id.lower():
                    held[str(assignment.app_role_id).lower()] = str(assignment.id)
            if not page.odata_next_link:
                break
            page = await builder.with_url(page.odata_next_link).get()
        return roles, held

    async def grant(self, app_role_id: str) -> None:
        import uuid

        from msgraph.generated.models.app_role_assignment import AppRoleAssignment

        body = AppRoleAssignment(principal_id=uuid.UUID(self.principal_id), resource_id=uuid.UUID(self.resource_sp_id),
                                 app_role_id=uuid.UUID(app_role_id))
        await self.client.service_principals.by_service_principal_id(self.principal_id).app_role_assignments.post(body)

    async def revoke(self, assignment_id: str) -> None:
        builder = self.client.service_principals.by_service_principal_id(self.principal_id).app_role_assignments
        await builder.by_app_role_assignment_id(assignment_id).delete()


def _graph_refusal(exc: BaseException) -> str | None:
    """The message of a Graph error response (msgraph-sdk's ODataError), None for anything else."""
    from kiota_abstractions.api_error import APIError

    if not isinstance(exc, APIError):
        return None
    error = getattr(exc, "error", None)
    code = getattr(error, "code", None) or "Error"
    return f"{getattr(exc, 'response_status_code', '?')} {code}: {getattr(error, 'message', None) or exc}"


# Waits between attempts while Entra ID has not replicated the brand-new platform identity (about a minute
# in all; docs/reference.md "Replication": seconds to minutes).
REPLICATION_WAITS = (2.0, 4.0, 8.0, 15.0, 30.0)


def _replicating(exc: BaseException) -> bool:
    """Whether a Graph refusal looks like a principal not replicated yet: 404, or 400 "Not a valid
    reference update" (docs/reference.md "Replication", "Admin consent"). Anything else is a real answer."""
    from kiota_abstractions.api_error import APIError

    if not isinstance(exc, APIError):
        return False
    status = getattr(exc, "response_status_code", None)
    message = str(getattr(getattr(exc, "error", None), "message", None) or "").lower()
    return status == 404 or (status == 400 and "not a valid reference update" in message)


async def _while_replicating(call: Any, what: str, out: Any) -> Any:
    """`await call()`, again after a wait while Graph answers as for a principal not replicated yet."""
    for wait in (*REPLICATION_WAITS, None):
        try:
            return await call()
        except Exception as exc:
            if wait is None or not _replicating(exc):
                raise
            print(f"{what}: Entra ID has not replicated the platform identity yet ({_graph_refusal(exc)}); "
                  f"retrying in {wait:g} s", file=out)
            await asyncio.sleep(wait)
    raise AssertionError("unreachable")


async def _attempt(write: Any) -> str | None:
    """Run one Graph write; the refusal message instead of an exception when Graph says no."""
    try:
        await write
    except Exception as exc:
        message = _graph_refusal(exc)
        if message is None:
            raise
        return message
    return None


# -- the hook --------------------------------------------------------------------------------------
def parse_args(argv: Sequence[str], environ: Mapping[str, str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="postprovision.py", description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=MODES, default=environ.get("ROLE_MODE") or "assign",
                        help="ROLE_MODE whose permissions the identity must hold (default: $ROLE_MODE or assign)")
    parser.add_argument("--principal-id", default=environ.get("PLATFORM_IDENTITY_PRINCIPAL_ID", ""),
                        help="object id of the platform identity (default: $PLATFORM_IDENTITY_PRINCIPAL_ID)")
    parser.add_argument("--graph-endpoint", default=environ.get("GRAPH_ENDPOINT") or "https://graph.microsoft.com",
                        help="Microsoft Graph root (default: $GRAPH_ENDPOINT or https://graph.microsoft.com)")
    in_bicep = environ.get("GRAPH_PERMISSIONS_IN_BICEP")
    parser.add_argument("--grant", action="store_true", default=in_bicep is not None and not truthy(in_bicep),
                        help="grant the missing permissions (needs a Privileged Role Administrator); the default "
                             "when the deployment did not grant them ($GRAPH_PERMISSIONS_IN_BICEP=false)")
    parser.add_argument("--revoke-excess", action="store_true",
                        help="remove Graph permissions of the identity that its mode does not need")
    parser.add_argument("--dry-run", action="store_true", help="print the plan; change nothing")
    parser.add_argument("--credential", choices=("azd", "cli", "default"), default="azd",
                        help="who signs in: azd's or az's login (default), or DefaultAzureCredential")
    parser.add_argument("--print-table", action="store_true",
                        help="print the permission table (Markdown) and exit")
    parser.add_argument("--no-doctor", action="store_true",
                        help="do not run the doctor (python -m shared doctor) after the permissions")
    return parser.parse_args(list(argv))


async def run(args: argparse.Namespace, environ: Mapping[str, str], table: PermissionTable,
              credential: Any = None, out: Any = None) -> int:
    out = out or sys.stdout
    if not args.principal_id:
        raise HookError("the platform identity is unknown: set PLATFORM_IDENTITY_PRINCIPAL_ID or --principal-id")
    owned_credential = credential is None
    credential = credential or make_credential(args.credential)
    try:
        with warnings.catch_warnings():
            # msgraph-sdk's generated request builders warn about their own deprecated classes as they
            # are imported (lazily, on first use): nothing a user of this hook can act on.
            warnings.simplefilter("ignore", DeprecationWarning)
            plan = await converge(args, table, credential, out)
    except Exception as exc:
        message = _graph_refusal(exc)
        if message is None:
            raise
        raise HookError(f"Microsoft Graph refused to read the permissions: {message}") from exc
    finally:
        if owned_credential:
            await credential.close()
    for line in next_steps(environ, args.mode, plan.complete):
        print(line, file=out)
    if args.dry_run:
        return 0
    return 0 if plan.complete else 1


async def converge(args: argparse.Namespace, table: PermissionTable, credential: Any, out: Any) -> GrantPlan:
    """Read, report, and (unless --dry-run) grant and revoke as asked; the plan as it ends."""
    session = GraphSession(credential, args.graph_endpoint)
    try:
        return await _converge(GraphGrants(session.client, args.principal_id, table.resource_app_id), args, table, out)
    finally:
        await session.aclose()


async def _converge(graph: GraphGrants, args: argparse.Namespace, table: PermissionTable, out: Any) -> GrantPlan:
    roles, held = await _while_replicating(graph.read, "reading the grants", out)
    plan = plan_grants(table.for_mode(args.mode), roles, held)
    for line in describe(plan, args.mode, will_grant=args.grant, will_revoke=args.revoke_excess):
        print(line, file=out)
    if args.dry_run:
        return plan
    if args.grant:
        for name, role_id in list(plan.grant):
            refused = await _attempt(_while_replicating(lambda role_id=role_id: graph.grant(role_id),
                                                        f"granting {name}", out))
            if refused and "already exists" in refused.lower():
                refused = None  # an earlier attempt that Graph took after all
            print(f"could not grant {name}: {refused}" if refused else f"granted {name}", file=out)
            if not refused:
                plan.grant.remove((name, role_id))
                plan.present.append(name)
    if args.revoke_excess:
        for name, assignment_id in list(plan.excess):
            refused = await _attempt(graph.revoke(assignment_id))
            print(f"could not revoke {name}: {refused}" if refused else f"revoked {name}", file=out)
            if not refused:
                plan.excess.remove((name, assignment_id))
    return plan


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    environ = os.environ if environ is None else environ
    args = parse_args(sys.argv[1:] if argv is None else argv, environ)
    try:
        table = load_table()
        if args.print_table:
            print(render_table(table))
            return 0
        code = asyncio.run(run(args, environ, table))
    except HookError as exc:
        print(f"postprovision: {exc}", file=sys.stderr)
        return 2
    if not args.no_doctor and not args.dry_run:
        run_doctor(args, environ)
    return code


def run_doctor(args: argparse.Namespace, environ: Mapping[str, str], out: Any = None) -> int:
    """Every other prerequisite of a first bootstrap, checked read-only, as a table (docs/deploy.md,
    "Troubleshooting"). Informational: the hook's exit status stays the permissions' own."""
    from shared.cli import main as shared_cli

    out = out or sys.stdout
    print("\nDoctor (python -m shared doctor; from the deployed app: GET /api/health):", file=out)
    print("From this machine it signs in as you, so Key Vault and storage are checked with your roles;\n"
          "/api/health checks them as the platform identity once the app is deployed.", file=out)
    argv = ["doctor", "--principal-id", args.principal_id]
    for flag, name in (("--app-name", "AZURE_FUNCTION_APP_NAME"), ("--resource-group", "AZURE_RESOURCE_GROUP")):
        if environ.get(name):
            argv += [flag, environ[name]]
    try:
        return shared_cli(argv)
    except Exception as exc:  # the doctor must never turn a finished provision into a failure
        print(f"the doctor could not run: {type(exc).__name__}: {exc}", file=out)
        return 1


if __name__ == "__main__":
    sys.exit(main())
