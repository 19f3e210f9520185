"""The control API tests use: clock, faults, replication delay, throttling, counters, state, reset."""

from __future__ import annotations

from typing import Any

from .faults import Fault
from .web import HttpError, Request, Response, Service
from .world import World


class ControlService(Service):
    name = "control"
    faultable = False  # see Service.faultable

    def __init__(self, world: World) -> None:
        super().__init__()
        self.world = world
        self.route("GET", "/control/clock", self.get_clock)
        self.route("POST", "/control/clock/advance", self.advance_clock)
        self.route("GET", "/control/faults", self.list_faults)
        self.route("POST", "/control/faults", self.add_fault)
        self.route("DELETE", "/control/faults", self.clear_faults)
        self.route("GET", "/control/requests", self.get_requests)
        self.route("DELETE", "/control/requests", self.reset_requests)
        self.route("POST", "/control/replication", self.set_replication)
        self.route("GET", "/control/throttling/key-credential-reads", self.get_key_credential_reads)
        self.route("POST", "/control/throttling/key-credential-reads", self.set_key_credential_reads)
        self.route("POST", "/control/platform/graph-roles", self.set_graph_roles)
        self.route("POST", "/control/platform/vault-roles", self.set_vault_roles)
        self.route("GET", "/control/state", self.get_state)
        self.route("POST", "/control/reset", self.reset_world)

    def _body(self, request: Request) -> dict[str, Any]:
        body = request.json()
        if not isinstance(body, dict):
            raise HttpError(400, "BadRequest", "Expected a JSON object.")
        return body

    def get_clock(self, request: Request) -> Response:
        return Response.json(200, {"now": self.world.clock.now().isoformat(),
                                   "offsetSeconds": self.world.clock.offset_seconds})

    def advance_clock(self, request: Request) -> Response:
        try:
            self.world.clock.advance(float(self._body(request)["seconds"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise HttpError(400, "BadRequest", f"Expected {{\"seconds\": <non-negative number>}}: {exc}") from exc
        return self.get_clock(request)

    def list_faults(self, request: Request) -> Response:
        return Response.json(200, {"value": [f.to_json() for f in self.world.faults.list()],
                                   "injected": self.world.faults.injected})

    def add_fault(self, request: Request) -> Response:
        try:
            fault = self.world.faults.add(Fault.from_json(self._body(request)))
        except ValueError as exc:
            raise HttpError(400, "BadRequest", str(exc)) from exc
        return Response.json(201, fault.to_json())

    def clear_faults(self, request: Request) -> Response:
        self.world.faults.clear()
        return Response.empty()

    def get_requests(self, request: Request) -> Response:
        return Response.json(200, {"value": self.world.counter.snapshot()})

    def reset_requests(self, request: Request) -> Response:
        self.world.counter.reset()
        return Response.empty()

    def set_replication(self, request: Request) -> Response:
        body = self._body(request)
        refusal = body.get("servicePrincipalError", self.world.sp_replication_error)
        if refusal not in ("mixed", "400", "403"):
            raise HttpError(400, "BadRequest", 'servicePrincipalError must be "mixed", "400" or "403".')
        try:
            delay = float(body["delaySeconds"])
            key_delay = body.get("keyDelaySeconds")
            key_replication_delay = None if key_delay is None else float(key_delay)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise HttpError(400, "BadRequest",
                            "Expected {\"delaySeconds\": <number>, \"keyDelaySeconds\": <number, optional>}.") from exc
        with self.world.lock:
            self.world.replication_delay = delay
            self.world.key_replication_delay = key_replication_delay
            self.world.sp_replication_error = refusal
        return Response.empty()

    def get_key_credential_reads(self, request: Request) -> Response:
        return Response.json(200, self.world.key_credential_reads.to_json())

    def set_key_credential_reads(self, request: Request) -> Response:
        body = self._body(request)
        throttle = self.world.key_credential_reads
        try:
            if set(body) - {"limit", "windowSeconds"}:
                raise ValueError(f"unknown fields {sorted(set(body) - {'limit', 'windowSeconds'})}")
            throttle.configure(body.get("limit", throttle.limit), float(body.get("windowSeconds", throttle.window)))
        except (TypeError, ValueError) as exc:
            raise HttpError(400, "BadRequest", 'Expected {"limit": <whole number >= 1>, "windowSeconds": '
                                               f"<number above 0>}}: {exc}") from exc
        return self.get_key_credential_reads(request)

    def set_graph_roles(self, request: Request) -> Response:
        try:
            body = self._body(request)
            self.world.set_platform_graph_roles(list(body["roles"]),
                                                effective_after=float(body.get("effectiveAfterSeconds", 0)))
        except (KeyError, TypeError, ValueError) as exc:
            raise HttpError(400, "BadRequest", str(exc)) from exc
        return Response.empty()

    def set_vault_roles(self, request: Request) -> Response:
        body = self._body(request)
        with self.world.lock:
            self.world.vault_roles[self.world.platform.object_id] = set(body.get("roles", []))
        return Response.empty()

    def get_state(self, request: Request) -> Response:
        with self.world.lock:
            d = self.world.directory
            state: dict[str, Any] = {
                "tenantId": self.world.tenant_id,
                "clock": self.world.clock.now().isoformat(),
                "platform": {"objectId": self.world.platform.object_id, "appId": self.world.platform.app_id},
                "applications": list(d.applications.values()),
                "servicePrincipals": list(d.service_principals.values()),
                "appRoleAssignments": list(d.app_role_assignments.values()),
                "roleAssignments": list(d.role_assignments.values()),
                "owners": d.owners,
            }
            vault = self.world.services.get("keyvault")
            if vault is not None and hasattr(vault, "snapshot"):
                state["keyVault"] = vault.snapshot()
        return Response.json(200, state)

    def reset_world(self, request: Request) -> Response:
        self.world.reset()
        return Response.empty()
