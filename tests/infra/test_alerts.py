"""Issue: the alert rules' KQL reads the log lines the code really writes (docs/deploy.md, "Alerts")."""

from __future__ import annotations

import ast
import re

import pytest

from .bicep import INFRA, KQL_EXTRACT, ROOT, variables

ALERTS = INFRA / "modules" / "alerts.bicep"


def kql_patterns(query_variable: str) -> dict[str, re.Pattern[str]]:
    """column -> the regex its `extract(@"...", 1, message)` uses (RE2 and Python agree on these)."""
    query = variables(ALERTS)[query_variable]
    patterns = {}
    for line in query.splitlines():
        match = re.search(r"(\w+)\s*=\s*(?:\w+\()*extract\(", line)
        extract = KQL_EXTRACT.search(line)
        if match and extract:
            patterns[match.group(1)] = re.compile(extract.group(1).replace('""', '"'))
    return patterns


def log_formats(marker: str) -> list[tuple[str, str]]:
    """(file, format string) of every logging call in shared/ whose message starts with identity= and has `marker`."""
    found = []
    for path in sorted((ROOT / "shared").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in ("debug", "info", "warning", "error", "exception", "critical")
                    and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
                    and node.args[0].value.startswith("identity=") and marker in node.args[0].value):
                found.append((path.name, node.args[0].value))
    return found


def render(fmt: str, **values: str) -> str:
    """A format string with sample arguments; `values` overrides by the key in front of each %."""
    def sample(match: re.Match[str]) -> str:
        key = re.search(r"(\w+)=$", fmt[:match.start()])
        if key and key.group(1) in values:
            return values[key.group(1)]
        return {"s": "sample", "d": "3", "f": "12.50"}.get(match.group(2), "sample")

    return re.sub(r"%(\.\d+)?([sdf])", sample, fmt)


def test_rotation_failure_rule_reads_the_reconciler_lines() -> None:
    patterns = kql_patterns("rotationFailureQuery")
    assert set(patterns) == {"identity", "action", "result"}
    formats = log_formats(" result=")
    assert any(name == "reconciler.py" for name, _ in formats), "the reconciler's result line is the contract"
    for _, fmt in formats:
        line = render(fmt, identity="mailbox-reports", action="AddKeyCredential", result="GraphPermissionMissing",
                      detail="free text that says result=Succeeded")
        expected = "GraphPermissionMissing" if "result=%s" in fmt else re.search(r"result=(\S+)", fmt).group(1)
        assert line.startswith("identity=") and " action=" in line and " result=" in line
        assert patterns["identity"].search(line).group(1) == "mailbox-reports"
        assert patterns["action"].search(line).group(1) == "AddKeyCredential"
        # The detail is free text: the first result= (the real one) must win.
        assert patterns["result"].search(line).group(1) == expected


def test_renewal_rule_reads_the_sweep_lines() -> None:
    patterns = kql_patterns("renewalOverdueQuery")
    assert set(patterns) == {"identity", "daysToExpiry", "renewalDue"}
    formats = log_formats(" renewalDue=")
    if not formats:
        pytest.fail("no log line `identity=<name> daysToExpiry=<n> renewalDue=<bool>` in shared/: the renewal "
                    "alert has nothing to read")
    for _, fmt in formats:
        for due, days in (("True", "-1.25"), ("False", "120.00")):
            line = render(fmt, identity="mailbox-reports", daysToExpiry=days, renewalDue=due)
            assert patterns["identity"].search(line).group(1) == "mailbox-reports"
            assert float(patterns["daysToExpiry"].search(line).group(1)) == float(days)
            assert patterns["renewalDue"].search(line).group(1).lower() == due.lower()


def test_queries_keep_only_the_contract_lines() -> None:
    failures = variables(ALERTS)["rotationFailureQuery"]
    assert 'result != "Succeeded"' in failures
    assert "arg_max(timestamp, result) by identity, action" in failures, "a retry that succeeded clears it"
    overdue = variables(ALERTS)["renewalOverdueQuery"]
    assert "dueSweeps >= 2" in overdue, "one sweep past the renewal point is normal: it enqueues the rotation"
