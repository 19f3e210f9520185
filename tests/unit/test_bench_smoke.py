"""The benchmarks run and write sensible JSON (smallest variants). No timing thresholds: speed is
measured by `python -m bench`, not asserted here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import _common, bootstrap, coldstart
from bench.__main__ import available
from devstack import Stack


def _summary_ok(summary: dict, *, positive: bool = True) -> None:
    assert set(summary) == {"n", "min", "median", "max", "values"}
    assert summary["n"] == len(summary["values"]) >= 1
    assert summary["min"] <= summary["median"] <= summary["max"]
    if positive:
        assert summary["min"] > 0


def test_discovery_finds_the_benchmarks() -> None:
    assert {"bootstrap", "coldstart", "sweep"} <= set(available())


def test_helpers_split_requests_as_the_targets_count_them() -> None:
    tally = _common.RequestTally.of([
        {"service": "entra", "method": "GET", "route": "/msi/token", "count": 3},
        {"service": "keyvault", "method": "GET", "route": "/certificates/{name}/pending", "count": 2},
        {"service": "keyvault", "method": "GET", "route": "^/certificates/(?P<name>[^/]+)/(?P<version>[^/]*)$",
         "count": 4},
        {"service": "graph", "method": "PATCH", "route": "/v1.0/applications/{id}", "count": 1},
        {"service": "control", "method": "DELETE", "route": "/control/requests", "count": 1},
    ])
    assert (tally.service, tally.total("token"), tally.total("poll"), tally.writes) == (5, 3, 2, 1)
    assert "/certificates/{name}/{version}" in {r["route"] for r in tally.rows}
    assert _common.summarize([3, 1, 2], 0) == {"n": 3, "min": 1, "median": 2, "max": 3, "values": [3, 1, 2]}
    assert _common.target("x", 15, 17, "requests")["met"] is False


def test_bootstrap_benchmark_smallest_variant(stack: Stack, tmp_path: Path) -> None:
    result = bootstrap.main(iterations=1, results_dir=tmp_path, stack=stack, echo=False, realistic=False)
    written = json.loads((tmp_path / "bootstrap.json").read_text())
    assert written["benchmark"] == "bootstrap"
    assert {"timestamp", "machine", "targets", "bootstrap", "repeat"} <= set(written)
    assert written["machine"]["cpuCount"] >= 1 and written["machine"]["python"]
    first, repeat = written["bootstrap"], written["repeat"]
    _summary_ok(first["serviceRequests"])
    _summary_ok(first["wallSeconds"])
    _summary_ok(first["writes"])
    assert first["tokenRequests"]["min"] >= 1
    assert first["byRoute"] and all(row["counts"] == [row["counts"][0]] for row in first["byRoute"])
    assert sum(r["counts"][0] for r in first["byRoute"] if r["kind"] == "service") == first["serviceRequests"]["max"]
    _summary_ok(repeat["serviceRequests"])
    assert repeat["readOnly"] is True and repeat["inSync"] is True
    assert all(isinstance(t["met"], bool | None) and "target" in t for t in written["targets"])
    assert result["resultFile"] == str(tmp_path / "bootstrap.json")


@pytest.mark.slow
def test_coldstart_benchmark_smallest_variant(tmp_path: Path) -> None:
    coldstart.main(runs=1, breakdown_runs=1, model_runs=1, results_dir=tmp_path, echo=False, warmup=False)
    written = json.loads((tmp_path / "coldstart.json").read_text())
    assert {"timestamp", "machine", "targets", "importFunctionApp", "statusFromStart", "statusBreakdown",
            "graphModel"} <= set(written)
    _summary_ok(written["importFunctionApp"]["functionApp"]["seconds"])
    _summary_ok(written["importFunctionApp"]["azureFunctions"]["seconds"])
    status = written["statusFromStart"]
    _summary_ok(status["fromFirstLineSeconds"])
    _summary_ok(status["fromSpawnSeconds"])
    assert status["inSync"] is True
    assert status["requestsPerStatus"]["service"]["min"] > 0
    assert status["fromFirstLineSeconds"]["min"] > status["importFunctionAppSeconds"]["min"]
    _summary_ok(written["statusBreakdown"]["secondCallSeconds"])
    assert written["statusBreakdown"]["lazyImportsByPackageMs"]["packages"]["(total)"] > 0
    for design in ("typedModel", "rawJson"):
        _summary_ok(written["graphModel"][design]["totalSeconds"])
    assert written["graphModel"]["typedModel"]["modulesImportedByDeserialise"] > 0
    assert len(written["targets"]) == 3 and all(isinstance(t["met"], bool) for t in written["targets"])


def test_sweep_benchmark_smallest_variant(stack: Stack, tmp_path: Path) -> None:
    from bench import sweep

    sweep.main(sizes=(4, 10), repeats=1, due=2, concurrency=2, results_dir=tmp_path, stack=stack, echo=False,
               certless=2)
    written = json.loads((tmp_path / "sweep.json").read_text())
    assert written["benchmark"] == "sweep"
    assert {"timestamp", "machine", "setup", "targets", "rows", "growth", "byRoute", "dueSweep", "completeListing",
            "withoutCertificate", "seedFaithfulness", "productWarnings"} <= set(written)
    rows = written["rows"]
    assert [(r["identities"], r["latencyMs"]) for r in rows] == [(4, 0), (10, 0), (10, 25)]
    for row in rows:
        assert {"serviceRequests", "requestsPerIdentity", "target", "met", "wallSeconds", "tokenRequests",
                "byService", "firstSweepOfPlatform"} <= set(row)
        assert row["due"] == 0 and row["dueReasons"] == {}
        assert "entra" not in row["byService"]
        _summary_ok(row["wallSeconds"])
    assert rows[1]["serviceRequests"] < rows[1]["identities"], "an in-sync sweep lists, it does not read each"
    assert rows[1]["serviceRequests"] == rows[0]["serviceRequests"] == rows[2]["serviceRequests"]
    due = written["dueSweep"]
    assert due["due"] == 2 and due["dueReasons"] == {"ConsentMissing": 2}
    assert due["reconcileDue"]["failed"] == {} and due["reconcileDue"]["actions"] == {"GrantConsent": 2}
    assert due["sweepAfterReconcile"]["due"] == 0
    reconciled = written["seedFaithfulness"]["reconcileOfClone"]
    assert reconciled["succeeded"] is True and reconciled["changed"] is False
    assert written["seedFaithfulness"]["certificateTagsMatchClone"] is True
    throttled = written["throttledDue"]["rows"]
    assert [r["neighbourReadsPerMinute"] for r in throttled] == [0, 60]
    for row in throttled:
        assert row["due"] == row["succeeded"] == 10 and row["converged"] is True, row
        assert row["failed"] == {} and row["leftToNextSweep"] == 0 and row["sweepAfter"]["due"] == 0
        assert row["fanOut"]["messages"] == 10 and row["fanOut"]["deferred"] == 0
        assert row["standInLimit"]["reads"] == 150 and row["standInLimit"]["windowSeconds"] == 15.0
        assert row["keyCredentialReads"]["admitted"] >= 10 and row["wallSeconds"] > 0
        assert set(row["graph429"]) == {"product", "neighbour"}
    assert len(written["targets"]) == 8 and all(isinstance(t["met"], bool) for t in written["targets"])
    routes = written["byRoute"]["routes"]
    assert all(len(r["counts"]) == len(written["byRoute"]["runs"]) == 6 for r in routes)
    # The in-sync sweeps list the lease blobs (storage) and no secret; the complete listing lists every secret
    # once; so does the sweep with 2 identities without a certificate next to 10: one page (22 secrets) costs
    # less than 2 reads (at 1,000 they cost one read each; tests/integration/test_registry_index.py).
    assert all(r["byService"].get("storage") == 1 for r in rows), rows
    listing = [r["counts"] for r in routes if (r["service"], r["route"]) == ("keyvault", "/secrets")]
    assert listing == [[0, 0, 0, 1, 0, 1]], listing
    complete = written["completeListing"]
    assert complete["serviceRequests"] > complete["nextSweepServiceRequests"] == rows[1]["serviceRequests"]
    without = written["withoutCertificate"]
    assert without["identities"] == 12 and without["due"] == 0
    assert without["serviceRequests"] == rows[1]["serviceRequests"] + 2  # the page, and the marker of a complete one


def test_doctor_benchmark_smallest_variant(stack: Stack, tmp_path: Path) -> None:
    from bench import doctor

    doctor.main(sizes=(1, 30), repeats=1, results_dir=tmp_path, stack=stack, echo=False)
    written = json.loads((tmp_path / "doctor.json").read_text())
    assert written["benchmark"] == "doctor"
    assert [r["identities"] for r in written["rows"]] == [1, 30]
    assert all(t["met"] for t in written["targets"]), written["targets"]
    # Once a sweep has recorded a complete secret listing, the doctor lists no secret beyond its one probe page.
    one, thirty = written["rows"]
    assert thirty["afterSweep"]["serviceRequests"] - one["afterSweep"]["serviceRequests"] == 1  # a certificate page
    assert thirty["afterSweep"]["serviceRequests"] == thirty["serviceRequests"] - 3  # ceil(60 / 25) secret pages
