"""GET /api/health: the doctor's document (shared/doctor.py), run as the platform identity.

200 when every check is ok or only warns, 503 when one fails, so a monitor can watch one URL. Behind
the same function key and app roles as the other reads; read-only, a bounded number of requests.
"""

from __future__ import annotations

from typing import Any

import azure.functions as func

bp = func.Blueprint()  # type: ignore[no-untyped-call]


@bp.route(route="health", methods=["GET", "POST", "PUT", "PATCH", "DELETE"], auth_level=func.AuthLevel.FUNCTION)
async def health(req: func.HttpRequest) -> func.HttpResponse:
    from shared.functions.http_api import _handle, _json, _method_not_allowed

    if req.method != "GET":
        return _method_not_allowed(req, ["GET"])

    async def examine(platform: Any, who: dict[str, Any]) -> func.HttpResponse:
        from shared.doctor import FAILING
        from shared.doctor_probes import run_doctor

        document = await run_doctor(credential=platform.credential)
        return _json(503 if document["status"] == FAILING else 200, document, headers={"Cache-Control": "no-store"})

    return await _handle(req, False, examine)
