"""Issue: the post-provision hook's pure parts, offline (its Graph calls: tests/integration/test_permissions.py),
and the permission table it renders, which docs/deploy.md and the README carry."""

from __future__ import annotations

import os
import re
import subprocess

import pytest

from .bicep import ROOT
from .hook import HOOK, load_hook

hook = load_hook()
TABLE = hook.load_table()
GRAPH_ROLES = {p.name: p.app_role_id for p in TABLE.permissions} | {
    "Application.ReadWrite.All": "1bfefb4e-e0b5-418b-a88f-73c46d2cc8e9"}


def held(*names: str) -> dict[str, str]:
    return {GRAPH_ROLES[name].upper(): f"assignment-{name}" for name in names}  # Graph's case may differ


@pytest.mark.parametrize(("holding", "mode", "grant", "excess"), [
    ((), "assign", TABLE.names("assign"), []),
    (tuple(TABLE.names("assign")), "assign", [], []),
    (tuple(TABLE.names("assign")), "verify", ["RoleManagement.Read.Directory"], ["RoleManagement.ReadWrite.Directory"]),
    (("Application.ReadWrite.All", "Application.ReadWrite.OwnedBy"), "verify",
     ["Application.Read.All", "AppRoleAssignment.ReadWrite.All", "RoleManagement.Read.Directory",
      "Policy.Read.All"],
     ["Application.ReadWrite.All"]),
], ids=["nothing-held", "exactly-held", "switch-to-verify", "too-broad-by-hand"])
def test_plan_grants_what_is_missing_and_names_what_is_excess(holding: tuple[str, ...], mode: str,
                                                              grant: list[str], excess: list[str]) -> None:
    plan = hook.plan_grants(TABLE.for_mode(mode), GRAPH_ROLES, held(*holding))
    assert [name for name, _ in plan.grant] == grant
    assert all(role_id == GRAPH_ROLES[name] for name, role_id in plan.grant)
    assert sorted(name for name, _ in plan.excess) == sorted(excess)
    assert sorted(plan.present) == sorted(set(TABLE.names(mode)) - set(grant))
    assert plan.complete == (not grant)


def test_a_permission_graph_does_not_offer_is_reported_not_guessed() -> None:
    roles = {k: v for k, v in GRAPH_ROLES.items() if k != "RoleManagement.Read.Directory"}
    plan = hook.plan_grants(TABLE.for_mode("verify"), roles, held(*TABLE.names("assign")))
    assert plan.unknown == ["RoleManagement.Read.Directory"] and not plan.complete
    # A held role Graph no longer lists stays visible by its id.
    plan = hook.plan_grants(TABLE.for_mode("assign"), {}, {"0000aaaa-0000-0000-0000-000000000000": "a1"})
    assert plan.excess == [("0000aaaa-0000-0000-0000-000000000000", "a1")]


def test_modes_and_their_permissions() -> None:
    assert set(TABLE.modes) == {"assign", "verify"}
    assert TABLE.names("assign") == ["Application.ReadWrite.OwnedBy", "Application.Read.All",
                                     "AppRoleAssignment.ReadWrite.All", "RoleManagement.ReadWrite.Directory",
                                     "Policy.Read.All"]
    assert TABLE.names("verify") == ["Application.ReadWrite.OwnedBy", "Application.Read.All",
                                     "AppRoleAssignment.ReadWrite.All", "RoleManagement.Read.Directory",
                                     "Policy.Read.All"]
    # Optional rows are granted too, but the product works without them (test_permissions.py).
    assert [p.name for p in TABLE.permissions if p.optional] == ["Policy.Read.All"]
    assert [p.name for p in TABLE.required("assign")] == TABLE.names("assign")[:-1]
    with pytest.raises(hook.UnknownRoleMode, match="unknown ROLE_MODE"):
        TABLE.for_mode("sometimes")


@pytest.mark.parametrize(("environ", "grant"), [
    ({}, False),
    ({"GRAPH_PERMISSIONS_IN_BICEP": "true"}, False),
    ({"GRAPH_PERMISSIONS_IN_BICEP": "false"}, True),
], ids=["by-hand", "bicep-granted", "bicep-did-not"])
def test_the_hook_grants_by_default_only_where_the_deployment_did_not(environ: dict[str, str], grant: bool) -> None:
    args = hook.parse_args([], {"ROLE_MODE": "verify", "PLATFORM_IDENTITY_PRINCIPAL_ID": "p-1", **environ})
    assert args.grant is grant
    assert (args.mode, args.principal_id, args.graph_endpoint) == ("verify", "p-1", "https://graph.microsoft.com")
    assert args.dry_run is False and args.revoke_excess is False


def test_report_and_next_steps() -> None:
    plan = hook.plan_grants(TABLE.for_mode("verify"), GRAPH_ROLES, held(*TABLE.names("assign")))
    lines = hook.describe(plan, "verify", will_grant=False, will_revoke=False)
    assert any(re.search(r"MISSING\s+RoleManagement\.Read\.Directory", line) for line in lines)
    assert any(re.search(r"excess\s+RoleManagement\.ReadWrite\.Directory", line) for line in lines)
    steps = "\n".join(hook.next_steps({"FUNCTION_APP_URL": "https://func-x.azurewebsites.net",
                                       "PLATFORM_IDENTITY_PRINCIPAL_ID": "p-1"}, "verify", complete=False))
    assert "--grant --mode verify --principal-id p-1" in steps
    assert "administrator" in steps and "assigns the requested role" in steps
    assert "https://func-x.azurewebsites.net/api/identities" in steps


def test_command_line_without_the_platform_identity_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert hook.main(["--dry-run"], {}) == 2
    assert "PLATFORM_IDENTITY_PRINCIPAL_ID" in capsys.readouterr().err
    assert hook.main(["--print-table"], {}) == 0
    assert capsys.readouterr().out.strip() == hook.render_table(TABLE)


def test_the_shell_wrappers_run_the_hook() -> None:
    sh = ROOT / "scripts" / "postprovision.sh"
    assert os.access(sh, os.X_OK)
    subprocess.run(["sh", "-n", str(sh)], check=True)
    assert 'scripts/postprovision.py "$@"' in sh.read_text(encoding="utf-8")
    assert "scripts/postprovision.py @args" in (ROOT / "scripts" / "postprovision.ps1").read_text(encoding="utf-8")
    assert HOOK.exists()


# -- the rendered table in the documents ---------------------------------------------------------------
def generated_block(document: str) -> str | None:
    path = ROOT / document
    source = path.read_text(encoding="utf-8") if path.exists() else ""
    if hook.TABLE_START not in source:
        return None
    start = source.index(hook.TABLE_START)
    return source[start:source.index(hook.TABLE_END, start) + len(hook.TABLE_END)]


def test_the_table_lists_every_permission_with_calls_and_reason() -> None:
    table = hook.render_table(TABLE)
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    assert [re.match(r"\| `([^`]+)`", r).group(1) for r in rows] == [p.name for p in TABLE.permissions]
    for row, permission in zip(rows, TABLE.permissions, strict=True):
        assert all(f"`{call}`" in row for call in permission.calls)
        assert row.rstrip().endswith(f"{permission.why} |")


@pytest.mark.parametrize("document", ["docs/deploy.md", "README.md"])
def test_the_documented_permission_table_matches_the_data(document: str) -> None:
    block = generated_block(document)
    assert block is not None, (f"{document} lacks the permission table: paste `python scripts/postprovision.py "
                               "--print-table` there")
    assert block == hook.render_table(TABLE), \
        f"{document}: regenerate the block with python scripts/postprovision.py --print-table"
