"""Runs last in tests/reliability: no product log record or handler response of the session so far
carried key material or tokens (tests/conftest.py repeats the check over the whole session at its
end and fails the session on a leak), and the scan itself finds what it looks for."""

from __future__ import annotations

import base64
import json
import logging

from . import leakscan


def test_the_scanner_finds_each_kind_of_leak() -> None:
    scan = leakscan.LeakScan()
    product = logging.getLogger("exo_automation.leak-selftest")
    planted = [
        "-----BEGIN PRIVATE KEY-----\nMIIE...",
        "pfx=" + "MII" + base64.b64encode(b"\x30\x82" * 400).decode(),
        "Authorization: Bearer eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl",
        "grant_type=client_credentials&client_assertion=abc",
    ]
    for text in planted:
        scan.handle(product.makeRecord(product.name, logging.INFO, __file__, 1, "%s", (text,), None))
    scan.handle(logging.getLogger("devstack.selftest").makeRecord("devstack.x", logging.INFO, __file__, 1,
                                                                   "-----BEGIN", (), None))
    scan.response("identity", "GET", "http://localhost/api/identities/x", 200, {}, json.dumps({"t": planted[2]}))
    assert sorted(leak["kind"] for leak in scan.leaks) == sorted(
        ["pem", "pkcs12-or-der-base64", "jwt", "client-assertion", "jwt"]), scan.leaks
    assert all("devstack" not in leak["where"] for leak in scan.leaks), "stand-ins are out of scope"
    assert all(len(leak["excerpt"]) < 80 for leak in scan.leaks), "the report never repeats a secret whole"


def test_no_leaks_in_any_product_log_or_response_so_far() -> None:
    document = leakscan.write_summary()
    print(json.dumps(document, indent=1))
    assert leakscan.SCAN.records > 0 or leakscan.SCAN.responses > 0, "the scan saw nothing: is it installed?"
    assert document["leakScan"]["leaksFound"] == 0, document["leakScan"]["leaks"]
    assert document["hostileInputs"]["5xx"] == 0, document["hostileInputs"]
    points = document["crashPoints"]
    assert points["covered"] == points["converged"], [p for p in leakscan.RELIABILITY["crashPoints"]
                                                      if not p["converged"]]
