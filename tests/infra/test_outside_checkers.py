"""Issue #17: outside checkers with a reviewed baseline, so that a new finding fails the build.

- checkov (Bicep): no failed check at all. Every finding that does not apply is skipped in the Bicep
  itself, inside the resource, as `// checkov:skip=CKV_ID: why`, with a justification a reader can
  check; a skip without one fails here. A copy of infra/ with a known-bad resource must fail.
  checkov cannot evaluate parameters: properties that depend on networkIsolation or the firewall
  parameters are proven per variant by test_network.py, which is what those skips point to.
- azure-functions-doctor (the Functions app): no failed check; each warning is one reviewed below.

The three runs start together (two cores) in one module fixture: about 20 s of wall time.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from .bicep import INFRA
from .checkers import CheckovReport, copy_app, copy_infra, start_checkov, start_doctor

# Reviewed warnings of azure-functions-doctor 0.23.1 (requirements-dev.txt pins it): rule -> why it stays.
DOCTOR_REVIEWED_WARNINGS = {
    "check_programming_model_v2": "v2 model: the decorators live in blueprints under shared/ "
                                  "(registered in function_app.py), where the rule does not look",
    "check_venv": "the checked copy has no virtual environment by design; Azure builds from requirements.txt",
    "check_native_dependency_risk": "cryptography: manylinux wheels, installed by the remote (Linux) build",
    "check_binding_connection_resolution": "AzureWebJobsStorage: identity-based AzureWebJobsStorage__* in infra/, "
                                           "UseDevelopmentStorage=true in local.settings.sample.json",
    "check_local_settings": "local.settings.json is git-ignored; local.settings.sample.json is committed",
    "check_func_cli": "Core Tools are optional here: tests and devstack run without the host, azd deploys",
    "check_func_core_tools_version": "as check_func_cli",
    "check_app_insights": "set in Azure by infra/modules/function-app.bicep; never in a test's environment",
}
MIN_JUSTIFICATION = 25  # characters: a reason, not a placeholder

KNOWN_BAD = """
// A vault open to every network, and a storage account skipped without a reason: both must fail.
resource leakyVault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  name: 'kv-known-bad'
  location: 'westeurope'
  properties: {
    tenantId: subscription().tenantId
    sku: {
      family: 'A'
      name: 'standard'
    }
    enableRbacAuthorization: true
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      bypass: 'AzureServices'
      defaultAction: 'Allow'
    }
  }
}

resource unjustified 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  // checkov:skip=CKV_AZURE_59
  name: 'stknownbad'
  location: 'westeurope'
  kind: 'StorageV2'
  sku: {
    name: 'Standard_LRS'
  }
  properties: {
    publicNetworkAccess: 'Enabled'
  }
}
"""


@dataclass(frozen=True)
class Reports:
    checkov: CheckovReport
    checkov_known_bad: CheckovReport
    doctor: dict[str, Any]
    doctor_exit: int


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Reports]:
    base = tmp_path_factory.mktemp("checkers")
    clean = copy_infra(base / "infra")
    bad = copy_infra(base / "infra-known-bad")
    (bad / "modules" / "known-bad.bicep").write_text(KNOWN_BAD, encoding="utf-8")
    app = copy_app(base / "app")
    doctor_json = base / "doctor.json"
    runs = [start_checkov(clean), start_checkov(bad), start_doctor(app, doctor_json)]
    try:
        checkov, known_bad = CheckovReport.of(runs[0]), CheckovReport.of(runs[1])
        doctor_exit, out, err = runs[2].wait()
        assert doctor_json.exists(), f"azure-functions-doctor wrote no report (exit {doctor_exit}):\n{out}\n{err}"
        yield Reports(checkov, known_bad, json.loads(doctor_json.read_text(encoding="utf-8")), doctor_exit)
    finally:
        for run in runs:
            if run.process.poll() is None:
                run.process.kill()


def _unjustified(skipped: list[dict[str, Any]]) -> list[str]:
    bad = []
    for check in skipped:
        reason = (check["check_result"].get("suppress_comment") or "").strip()
        if reason == "No comment provided" or len(reason) < MIN_JUSTIFICATION:
            bad.append(f"{check['check_id']} on {check['resource']} ({check['file_path']}): {reason!r}")
    return bad


def _findings(report: CheckovReport) -> list[str]:
    return [f"{c['check_id']} {c['check_name']!r} on {c['resource']} ({c['file_path']}:"
            f"{'-'.join(map(str, c['file_line_range']))})" for c in report.failed]


# -- checkov -------------------------------------------------------------------------------------
def test_checkov_parses_every_bicep_file(reports: Reports) -> None:
    assert reports.checkov.parsing_errors == []
    checked = {c["file_path"] for c in reports.checkov.passed + reports.checkov.skipped}
    assert {"/modules/keyvault.bicep", "/modules/storage.bicep", "/modules/function-app.bicep"} <= checked


def test_checkov_finds_nothing_unjustified(reports: Reports) -> None:
    findings = _findings(reports.checkov)
    assert not findings, ("checkov findings: fix them, or skip each inside its resource with "
                          "`// checkov:skip=CKV_ID: <why, checkably>`:\n" + "\n".join(findings))
    assert reports.checkov.returncode == 0


def test_every_checkov_skip_says_why(reports: Reports) -> None:
    assert reports.checkov.skipped, "no skip at all: the baseline was not read"
    assert _unjustified(reports.checkov.skipped) == []


def test_the_network_skips_point_to_the_per_variant_proof(reports: Reports) -> None:
    network_checks = {"CKV_AZURE_35", "CKV_AZURE_109", "CKV_AZURE_189"}
    for check in reports.checkov.skipped:
        if check["check_id"] in network_checks:
            assert "test_network.py" in check["check_result"]["suppress_comment"], check["check_id"]


def test_checkov_fails_on_a_new_unjustified_finding(reports: Reports) -> None:
    bad = reports.checkov_known_bad
    assert bad.returncode != 0
    failed = {(c["check_id"], c["resource"]) for c in bad.failed}
    assert {("CKV_AZURE_189", "Microsoft.KeyVault/vaults.leakyVault"),
            ("CKV_AZURE_109", "Microsoft.KeyVault/vaults.leakyVault")} <= failed
    assert {c["resource"] for c in bad.failed} == {"Microsoft.KeyVault/vaults.leakyVault",
                                                   "Microsoft.Storage/storageAccounts.unjustified"}
    # A skip with no reason is not a justification: this suite refuses it.
    (unjustified,) = _unjustified(bad.skipped)
    assert unjustified.startswith("CKV_AZURE_59 on Microsoft.Storage/storageAccounts.unjustified")


def test_the_checkov_copy_differs_only_in_extension_statements(tmp_path: Path) -> None:
    copy = copy_infra(tmp_path / "infra")
    changed = 0
    for original in INFRA.rglob("*.bicep"):
        before = original.read_text(encoding="utf-8").splitlines()
        after = (copy / original.relative_to(INFRA)).read_text(encoding="utf-8").splitlines()
        assert len(before) == len(after)
        for old, new in zip(before, after, strict=True):
            if old != new:
                assert old.startswith("extension ") and new == f"// {old}"
                changed += 1
    assert changed == 2  # graph-permissions.bicep and api-app.bicep


# -- azure-functions-doctor ----------------------------------------------------------------------
def _doctor_items(report: dict[str, Any]) -> list[dict[str, Any]]:
    return [item for group in report["results"] for item in group["items"]]


def test_doctor_checked_the_flex_consumption_python_311_app(reports: Reports) -> None:
    metadata = reports.doctor["metadata"]
    assert metadata["programming_model"] == "v2"
    assert (metadata["hosting_plan"], metadata["target_python"]) == ("flex-consumption", "3.11")
    assert reports.doctor_exit == 0


def test_doctor_fails_nothing(reports: Reports) -> None:
    failed = [f"{i['rule_id']}: {i['value']}" for i in _doctor_items(reports.doctor)
              if i["status"] not in ("pass", "warn", "skip", "info")]
    assert not failed, "\n".join(failed)


def test_doctor_warns_only_what_was_reviewed(reports: Reports) -> None:
    items = _doctor_items(reports.doctor)
    warnings = {i["rule_id"]: i["value"] for i in items if i["status"] == "warn"}
    new = {rule: value for rule, value in warnings.items() if rule not in DOCTOR_REVIEWED_WARNINGS}
    assert not new, f"new azure-functions-doctor warnings: fix them or review them here: {new}"
    ran = {i["rule_id"] for i in items}
    stale = set(DOCTOR_REVIEWED_WARNINGS) - ran
    assert not stale, f"reviewed warnings of rules the doctor no longer has: {stale}"
