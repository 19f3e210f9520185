"""The read-only status page: GET /api/status, HTML for people, behind the same auth as the reads.

Every identity with its timeline (notBefore, renewal point, notAfter, retirement of the previous
key), its facets and its last result, most urgent first: failures and expired certificates, then
overdue renewals and drift, then by days to expiry. The registry gives the rows (certificates, and the
connection secrets of identities without a certificate: they have no timeline, only facets); the
facets are the sweep's checks over its listings of the tenant (one snapshot for every identity, the
same definition of drift as a plan's), so every identity has them at a cost that grows with pages, not
identities (docs/operations.md, "Status page"). Everything shown is escaped; the page loads nothing from
elsewhere (inline CSS, no script).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import html
from dataclasses import dataclass, field
from typing import Any

import azure.functions as func

bp = func.Blueprint()  # type: ignore[no-untyped-call]

_STYLE = "\n".join([
    'body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#1b1b1b;background:#fafafa}',
    'h1{font-size:20px;margin:0 0 4px} .muted{color:#666;font-size:12px}',
    '.error{color:#a4262c;font-size:12px} table{border-collapse:collapse;width:100%;background:#fff}',
    'th,td{border-bottom:1px solid #e1e1e1;padding:8px;vertical-align:top;text-align:left}',
    'th{background:#f0f0f0;font-weight:600} td.num{text-align:right;font-variant-numeric:tabular-nums}',
    'code{font-size:11px}',
    '.badge{display:inline-block;padding:2px 8px;border-radius:10px;color:#fff;font-weight:600;font-size:12px}',
    '.b-failed,.b-expired{background:#a4262c} .b-overdue{background:#ca5010}',
    '.b-drift,.b-pending{background:#8a6d00} .b-ok{background:#107c10} .timeline{min-width:320px}',
    '.bar{position:relative;height:12px;background:#e6f2e6;border-radius:6px;overflow:hidden}',
    '.used{position:absolute;left:0;top:0;bottom:0;background:#9fd39f}',
    '.mark{position:absolute;top:0;bottom:0;width:3px} .mark.now{background:#1b1b1b}',
    '.mark.renew{background:#ca5010} .mark.retire{background:#5c2e91}',
    '.legend{display:flex;flex-wrap:wrap;gap:4px 12px;font-size:11px;color:#555;margin-top:4px}',
    '.facets{list-style:none;margin:0;padding:0;font-size:12px;white-space:nowrap}',
    '.facet::before{content:"● "} .f-ok::before{color:#107c10} .f-blocked::before{color:#a4262c}',
    '.f-missing::before,.f-drift::before,.f-due::before,.f-pending::before{color:#ca5010}',
])
_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src 'none'; base-uri 'none'; form-action 'none'"


@dataclass
class Row:
    name: str
    state: str
    thumbprint: str | None
    not_before: dt.datetime | None
    not_after: dt.datetime | None
    renewal: dt.datetime | None
    retire_after: dt.datetime | None
    last_result: str | None
    last_run: str | None
    last_error: str | None
    facets: dict[str, dict[str, Any]] | None = None
    notes: list[str] = field(default_factory=list)
    credential_type: str = "certificate"  # federated or managedIdentity: no certificate to expire

    def days_to_expiry(self, now: dt.datetime) -> float | None:
        return None if self.not_after is None else (self.not_after - now) / dt.timedelta(days=1)

    def condition(self, now: dt.datetime) -> str:
        """failed | expired | overdue | drift | pending | ok — the badge, and the first sort key."""
        if self.last_result not in (None, "Succeeded"):
            return "failed"
        if self.credential_type != "certificate":
            return self._facet_condition() or "ok"
        if self.not_after is None:
            return "pending"
        if not (self.not_before or self.not_after) <= now < self.not_after:
            return "expired"
        if self.facets and any(f.get("state") == "blocked" for f in self.facets.values()):
            return "failed"
        if self.renewal is not None and now >= self.renewal:
            return "overdue"
        return self._facet_condition() or "ok"

    def _facet_condition(self) -> str | None:
        if self.facets and any(f.get("state") == "blocked" for f in self.facets.values()):
            return "failed"
        if self.facets and any(f.get("state") not in ("ok", None) for f in self.facets.values()):
            return "drift"
        return None


URGENCY = {"failed": 0, "expired": 0, "overdue": 1, "drift": 2, "pending": 2, "ok": 3}


def sort_by_urgency(rows: list[Row], now: dt.datetime) -> list[Row]:
    def key(row: Row) -> tuple[int, float, str]:
        days = row.days_to_expiry(now)
        return URGENCY[row.condition(now)], days if days is not None else float("-inf"), row.name

    return sorted(rows, key=key)


async def collect(platform: Any) -> list[Row]:
    from shared.core import registry
    from shared.core.checks import run_checks
    from shared.core.record import parse_time
    from shared.core.renewal import jittered_renewal_time
    from shared.errors import ExoAutomationError
    from shared.service import facets_document
    from shared.sweep import read_registry, tenant_of, view_of_listings

    context = platform.reconciler.context
    policy = context.policy
    entries = await read_registry(platform)
    snapshot, notes = None, []
    try:
        snapshot = await tenant_of(platform, entries)
    except ExoAutomationError as exc:  # Graph's trouble must not blank the page: the rows stand without facets
        notes = [f"facets unavailable: {exc.reason}"]
    now = platform.reconciler.clock()
    rows = []
    for entry in entries:
        tags = entry.tags
        renewal = None
        if entry.not_after is not None:
            renewal = jittered_renewal_time(entry.not_before or entry.not_after, entry.not_after, policy,
                                            entry.thumbprint or entry.name)
        rows.append(Row(
            name=entry.name, state=tags.get(registry.STATE, "active"), thumbprint=entry.thumbprint,
            not_before=entry.not_before, not_after=entry.not_after, renewal=renewal,
            retire_after=parse_time(tags[registry.RETIRE_AFTER]) if tags.get(registry.RETIRE_AFTER) else None,
            last_result=tags.get(registry.LAST_RESULT), last_run=tags.get(registry.LAST_RUN),
            last_error=tags.get(registry.LAST_ERROR),
            credential_type=entry.spec.credential_type,
            facets=facets_document(run_checks(view_of_listings(entry, snapshot), now, context).findings)
            if snapshot is not None else None,
            notes=list(notes),
        ))
    return rows


def _when(value: dt.datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M UTC") if value else "—"


def _timeline(row: Row, now: dt.datetime) -> str:
    if row.credential_type != "certificate":
        return f'<div class="timeline empty">no certificate: {html.escape(row.credential_type)}</div>'
    if row.not_before is None or row.not_after is None or row.not_after <= row.not_before:
        return '<div class="timeline empty">no certificate yet</div>'
    span = (row.not_after - row.not_before).total_seconds()

    def at(moment: dt.datetime) -> float:
        return max(0.0, min(100.0, (moment - row.not_before).total_seconds() / span * 100))  # type: ignore[operator]

    marks = [f'<span class="mark now" style="left:{at(now):.2f}%" title="now"></span>']
    if row.renewal is not None:
        marks.append(f'<span class="mark renew" style="left:{at(row.renewal):.2f}%" '
                     f'title="renewal point {html.escape(_when(row.renewal))}"></span>')
    if row.retire_after is not None:
        marks.append(f'<span class="mark retire" style="left:{at(row.retire_after):.2f}%" '
                     f'title="previous key retires {html.escape(_when(row.retire_after))}"></span>')
    legend = (f'<div class="legend"><span>notBefore {html.escape(_when(row.not_before))}</span>'
              f'<span>renewal {html.escape(_when(row.renewal))}</span>'
              + (f'<span>previous key retires {html.escape(_when(row.retire_after))}</span>'
                 if row.retire_after else "")
              + f'<span>notAfter {html.escape(_when(row.not_after))}</span></div>')
    used = at(now)
    return (f'<div class="timeline"><div class="bar"><span class="used" style="width:{used:.2f}%"></span>'
            + "".join(marks) + "</div>" + legend + "</div>")


def _facets(row: Row) -> str:
    if row.facets is None:
        return f'<span class="muted">{html.escape("; ".join(row.notes) or "not checked")}</span>'
    items = []
    for facet, finding in row.facets.items():
        state = str(finding.get("state") or "unknown")
        tip = " ".join(str(finding.get(k) or "") for k in ("reason", "message")).strip()
        items.append(f'<li class="facet f-{html.escape(state)}" title="{html.escape(tip)}">'
                     f'{html.escape(facet)}: {html.escape(state)}</li>')
    return '<ul class="facets">' + "".join(items) + "</ul>"


def render(rows: list[Row], now: dt.datetime, instance: str, vault: str, health: str = "") -> str:
    body = []
    for row in sort_by_urgency(rows, now):
        condition = row.condition(now)
        days = row.days_to_expiry(now)
        last = html.escape(row.last_result or "never run")
        if row.last_run:
            last += f'<br><span class="muted">{html.escape(row.last_run)}</span>'
        if row.last_error:
            last += f'<br><span class="error">{html.escape(row.last_error)}</span>'
        body.append(
            f'<tr class="identity c-{condition}" data-identity="{html.escape(row.name)}" data-condition="{condition}">'
            f'<td><strong>{html.escape(row.name)}</strong><br><span class="muted">{html.escape(row.state)}</span>'
            f'<br><code>{html.escape(row.thumbprint or "—")}</code></td>'
            f'<td><span class="badge b-{condition}">{condition}</span></td>'
            f'<td class="num">{"—" if days is None else f"{days:.1f}"}</td>'
            f"<td>{_timeline(row, now)}</td><td>{_facets(row)}</td><td>{last}</td></tr>")
    table = ("<table><thead><tr><th>identity</th><th>condition</th><th>days to expiry</th><th>timeline</th>"
             "<th>facets</th><th>last result</th></tr></thead><tbody>" + "".join(body) + "</tbody></table>"
             if body else '<p class="muted">No automation identities yet.</p>')
    counts = {c: sum(1 for r in rows if r.condition(now) == c) for c in URGENCY}
    summary = " · ".join(f"{n} {c}" for c, n in counts.items() if n)
    heading = " · ".join(p for p in (f"instance {instance}", f"vault {vault}", f"{len(rows)} identities", summary,
                                      f"as of {_when(now)}") if p)
    # The doctor's one-line verdict; its checks and fixes are at GET /api/health.
    health_line = f'<p class="muted health">{html.escape(health)} (details: /api/health)</p>' if health else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Exchange automation identities — {html.escape(instance)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
{_STYLE}
</style></head>
<body><h1>Exchange automation identities</h1>
<p class="muted">{html.escape(heading)}</p>
{health_line}
{table}
</body></html>
"""


@bp.route(route="status", methods=["GET", "POST", "PUT", "PATCH", "DELETE"], auth_level=func.AuthLevel.FUNCTION)
async def status_page(req: func.HttpRequest) -> func.HttpResponse:
    from shared.functions.http_api import _handle, _method_not_allowed

    if req.method != "GET":
        return _method_not_allowed(req, ["GET"])

    async def page(platform: Any, who: dict[str, Any]) -> func.HttpResponse:
        from urllib.parse import urlsplit

        from shared.doctor_probes import health_verdict

        rows, health = await asyncio.gather(collect(platform), health_verdict(credential=platform.credential))
        settings = platform.settings
        instance = settings.instance_name or urlsplit(settings.key_vault_url).hostname or ""
        document = render(rows, platform.reconciler.clock(), instance, settings.key_vault_url, health)
        return func.HttpResponse(document, status_code=200, mimetype="text/html", charset="utf-8", headers={
            "Content-Security-Policy": _CSP, "X-Content-Type-Options": "nosniff", "Cache-Control": "no-store",
            "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY"})

    return await _handle(req, False, page)
