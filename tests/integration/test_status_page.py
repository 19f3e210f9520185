"""Issue: the status page renders every identity and its state, most urgent first, in a real
headless browser (Debian's Chromium), behind the same auth as the reads; the run leaves a
screenshot in test-artifacts/status-page.png."""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import azure.functions as func
import pytest

from devstack import Stack
from devstack.faults import Fault
from shared.functions.status_page import Row, render, sort_by_urgency
from shared.platform import close_platforms

from .helpers import handler, post_identity, principal_header, rotate

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"


class _Handler(BaseHTTPRequestHandler):
    """Serves GET /api/status through the function handler, as the Functions host would."""

    headers_to_add: dict[str, str] = {}

    def do_GET(self) -> None:
        request = func.HttpRequest(method="GET", url=f"http://127.0.0.1{self.path}",
                                   headers={**dict(self.headers), **self.headers_to_add}, params={},
                                   route_params={}, body=b"")

        async def run() -> func.HttpResponse:
            try:
                response: func.HttpResponse = await handler("status_page")(request)
                return response
            finally:
                await close_platforms()

        response = asyncio.run(run())
        body = response.get_body()
        self.send_response(response.status_code)
        headers = dict(response.headers)
        headers.setdefault("Content-Type", f"{response.mimetype}; charset={response.charset}")
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        return


@pytest.fixture()
def page_server(stack: Stack) -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/api/status"
    server.shutdown()
    server.server_close()


def chromium(*args: str, user_data: Path) -> subprocess.CompletedProcess[str]:
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        pytest.fail("Chromium is required for the status page test: run `bash .ci/run` (it installs it) or "
                    "`apt-get update && apt-get install -y chromium`")
    command = [CHROMIUM if Path(CHROMIUM).exists() else str(shutil.which("chromium")), "--headless",
               "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
               f"--user-data-dir={user_data}", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


def test_the_status_page_in_a_headless_browser(stack: Stack, page_server: str, tmp_path: Path) -> None:
    for name in ("alpha-reports", "beta-calendar", "gamma-licences"):
        assert post_identity({"name": name}).status == 201
    stack.world.faults.add(Fault.from_json({"service": "graph", "method": "PATCH", "path": "/applications/",
                                            "status": 403}))
    assert rotate("gamma-licences", headers=principal_header(["ExoIdentities.ReadWrite"])).status == 502

    dom = chromium("--dump-dom", page_server, user_data=tmp_path / "dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    rows = re.findall(r'<tr class="identity[^"]*" data-identity="([^"]+)" data-condition="([^"]+)"', html)
    assert next(name for name, _ in rows) == "gamma-licences", "the failure sorts first"
    assert dict(rows) == {"gamma-licences": "failed", "alpha-reports": "ok", "beta-calendar": "ok"}
    assert "GraphPermissionMissing" in html and "keyCredential: ok" in html
    assert "renewal" in html and "notAfter" in html

    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / "status-page.png"
    screenshot.unlink(missing_ok=True)
    shot = chromium(f"--screenshot={screenshot}", "--window-size=1280,900", page_server,
                    user_data=tmp_path / "shot")
    assert shot.returncode == 0, shot.stderr[-2000:]
    data = screenshot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000, "a real rendering, not a blank page"


def test_the_status_page_needs_the_read_role(stack: Stack, page_server: str,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import httpx

    monkeypatch.setenv("AUTH_REQUIRE_APP_ROLES", "true")
    monkeypatch.setenv("WEBSITE_AUTH_ENABLED", "true")
    monkeypatch.setattr(_Handler, "headers_to_add", {})
    assert httpx.get(page_server).status_code == 401
    monkeypatch.setattr(_Handler, "headers_to_add", principal_header(["SomethingElse"]))
    assert httpx.get(page_server).status_code == 403
    monkeypatch.setattr(_Handler, "headers_to_add", principal_header(["ExoIdentities.Read"]))
    answer = httpx.get(page_server)
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in answer.headers["content-security-policy"]


NOW = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)


def row(name: str, *, days_left: float, renewal_in: float = 30.0, last: str | None = "Succeeded",
        facets: dict[str, Any] | None = None) -> Row:
    not_after = NOW + dt.timedelta(days=days_left)
    return Row(name, "active", "AB" * 20, not_after - dt.timedelta(days=365), not_after,
               NOW + dt.timedelta(days=renewal_in), None, last, None, None, facets)


def test_urgency_order() -> None:
    rows = [row("calm", days_left=300), row("soon", days_left=100), row("overdue", days_left=90, renewal_in=-2),
            row("drifting", days_left=250, facets={"consent": {"state": "missing"}}),
            row("broken", days_left=200, last="GraphPermissionMissing"), row("expired", days_left=-1)]
    assert [r.name for r in sort_by_urgency(rows, NOW)] == ["expired", "broken", "overdue", "drifting", "soon",
                                                             "calm"]


def test_everything_shown_is_escaped() -> None:
    evil = row("x", days_left=100, last="<img src=x onerror=alert(1)>",
               facets={"<b>facet</b>": {"state": "<script>", "message": '"><script>alert(1)</script>'}})
    page = render([evil], NOW, "<instance>", "https://kv.vault.azure.net/")
    assert "<script>" not in page and "<img" not in page and "<b>facet" not in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page and "&lt;instance&gt;" in page


def test_every_identity_has_facets_from_the_listings_without_a_read_per_identity(stack: Stack) -> None:
    """The facets are the sweep's checks over one snapshot of the tenant: a drifted facet shows, and the page
    reads nothing per identity (no app, service principal or key read by name), however many there are."""
    from shared.functions.status_page import collect
    from tests.support.tenant import remove_consent

    from .platform_helpers import bootstrap, with_platform

    names = [f"fleet-{i}" for i in range(4)]
    for name in names:
        assert bootstrap(stack, name).error is None
    remove_consent(stack, "fleet-2")
    stack.world.counter.reset()

    rows = {row.name: row for row in with_platform(stack, collect)}
    assert set(rows) == set(names)
    assert all(row.facets is not None for row in rows.values())
    assert rows["fleet-2"].facets["consent"]["state"] == "missing"  # type: ignore[index]
    assert rows["fleet-2"].condition(stack.world.clock.now()) == "drift"
    assert all(rows[n].facets["consent"]["state"] == "ok" for n in names if n != "fleet-2")  # type: ignore[index]
    by_key = {c["route"]: c["count"] for c in stack.world.counter.snapshot()
              if c["service"] == "graph" and "(" in c["route"]}
    # Only Exchange's own service principal is read by key (once per process, for its grant listing).
    assert by_key == {"/v1.0/servicePrincipals(appId='{key}')": 1}, by_key


def test_graph_trouble_leaves_the_rows_without_facets_and_says_why(stack: Stack) -> None:
    from shared.functions.status_page import collect

    from .platform_helpers import bootstrap, with_platform

    assert bootstrap(stack, "shown-anyway").error is None
    stack.world.faults.add(Fault.from_json({"service": "graph", "method": "GET", "path": "ownedObjects",
                                            "status": 403, "count": None}))
    (row,) = with_platform(stack, collect)
    assert row.name == "shown-anyway" and row.facets is None
    assert row.notes and row.notes[0].startswith("facets unavailable: ")
