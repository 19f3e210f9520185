"""Drive the Functions handlers without a host, and act as a job would."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import azure.functions as func
import httpx

from devstack import Stack
from shared.platform import close_platforms

WRITE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}
SYSTEM_MAILBOX = "bb558c35-97f1-4cb9-8ff7-d53741dc928c"


@dataclass
class HttpResult:
    status: int
    headers: dict[str, str]
    body: Any

    @property
    def content_type(self) -> str:
        return self.headers.get("Content-Type", self.headers.get("content-type", ""))


_FUNCTIONS: list[Any] = []

# Called with (function, method, url, status, headers, body text) for every response `call`
# produces: the session's leak scan (tests/reliability/leakscan.py) hooks in here.
RESPONSE_HOOKS: list[Any] = []


def registered_functions() -> list[Any]:
    """`function_app.app.get_functions()`, built once: a second build of one app raises on duplicates."""
    if not _FUNCTIONS:
        import function_app

        _FUNCTIONS.extend(function_app.app.get_functions())
    return _FUNCTIONS


def registered(name: str) -> Any:
    return next(fn for fn in registered_functions() if fn.get_function_name() == name)


def run_function(name: str, argument: Any, outputs: Mapping[str, Any]) -> Any:
    """Run one function with its trigger's `argument` and output bindings, closing the platforms after."""
    async def run() -> Any:
        try:
            return await registered(name).get_user_function()(argument, **outputs)
        finally:
            await close_platforms()

    return asyncio.run(run())


def handler(name: str) -> Any:
    return {fn.get_function_name(): fn.get_user_function() for fn in registered_functions()}[name]


def call(function: str, method: str, url: str, *, body: Any = None, raw: bytes | None = None,
         params: dict[str, str] | None = None, route_params: dict[str, str] | None = None,
         headers: dict[str, str] | None = None) -> HttpResult:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else b"")
    all_headers = {"Content-Type": "application/json"} if data else {}
    all_headers.update(headers or {})
    status, response_headers, raw_body = invoke(function, method, url, data, params or {}, route_params or {},
                                                all_headers)
    text = raw_body.decode()
    return HttpResult(status, response_headers, json.loads(text) if text else None)


def invoke(function: str, method: str, url: str, body: bytes, params: dict[str, str],
           route_params: dict[str, str], headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    """Run one HTTP handler as the worker and host would (queue output bindings sent after it returns);
    any body comes back raw. Response hooks run."""
    from devstack.host import queue_outputs, send_outputs

    request = func.HttpRequest(method=method, url=url, headers=headers, params=params, route_params=route_params,
                               body=body)
    outputs = queue_outputs(registered(function))
    response: func.HttpResponse = run_function(function, request, outputs)
    send_outputs(outputs)
    raw = response.get_body()
    response_headers = dict(response.headers)
    if not any(name.lower() == "content-type" for name in response_headers):
        # The worker sends `mimetype` as Content-Type when the headers do not set one.
        response_headers["Content-Type"] = response.mimetype
    for hook in RESPONSE_HOOKS:
        hook(function, method, url, response.status_code, response_headers, raw.decode("utf-8", "replace"))
    return response.status_code, response_headers, raw


def post_identity(body: Any, **kwargs: Any) -> HttpResult:
    return call("identities", "POST", "http://localhost/api/identities", body=body, **kwargs)


def get_identity(name: str) -> HttpResult:
    return call("identity", "GET", f"http://localhost/api/identities/{name}", route_params={"name": name})


def rotate(name: str, **kwargs: Any) -> HttpResult:
    return call("rotate_identity", "POST", f"http://localhost/api/identities/{name}/rotate",
                route_params={"name": name}, **kwargs)


def delete_identity(name: str, **kwargs: Any) -> HttpResult:
    return call("identity", "DELETE", f"http://localhost/api/identities/{name}", route_params={"name": name},
                **kwargs)


def principal_header(roles: list[str]) -> dict[str, str]:
    claims = [{"typ": "roles", "val": r} for r in roles] + [{"typ": "name", "val": "admin@contoso"}]
    return {"X-MS-CLIENT-PRINCIPAL": base64.b64encode(json.dumps({"claims": claims}).encode()).decode()}


def connection_secret(stack: Stack, name: str) -> tuple[dict[str, Any], dict[str, str]]:
    """The identity's connection record and its secret's tags, read as the platform reads them."""
    from azure.identity import ManagedIdentityCredential
    from azure.keyvault.secrets import SecretClient

    with ManagedIdentityCredential() as credential, \
            SecretClient(stack.settings()["KEY_VAULT_URL"], credential) as secrets:
        secret = secrets.get_secret(f"exo-{name}-connection")
        return dict(json.loads(secret.value or "")), dict(secret.properties.tags or {})


def write_count(stack: Stack) -> int:
    """Writes the product made to Graph and Key Vault (token requests are not writes)."""
    return sum(row["count"] for row in stack.world.counter.snapshot()
               if row["service"] in ("graph", "keyvault") and row["method"] in WRITE_METHODS)


def requests_by_service(stack: Stack) -> dict[str, int]:
    totals: dict[str, int] = {}
    for row in stack.world.counter.snapshot():
        totals[row["service"]] = totals.get(row["service"], 0) + row["count"]
    return totals


def run_job_get_mailbox(stack: Stack, identity: str) -> list[dict[str, Any]]:
    """What an unattended job does: read only the connection secret and the PFX, connect, Get-Mailbox. A
    managedIdentity identity's job reads only the record and signs in as the managed identity it names."""
    from azure.identity import CertificateCredential, ManagedIdentityCredential
    from azure.keyvault.secrets import SecretClient

    settings = stack.settings()
    with ManagedIdentityCredential() as platform_identity:
        secrets = SecretClient(settings["KEY_VAULT_URL"], platform_identity)
        record = json.loads(secrets.get_secret(f"exo-{identity}-connection").value or "")
        if record.get("credentialType") != "managedIdentity":
            backing = secrets.get_secret(record["certificateName"], record["certificateVersion"])
            pfx = base64.b64decode(backing.value or "")
        secrets.close()
    credential: Any = ManagedIdentityCredential(client_id=record["managedIdentityClientId"]) \
        if record.get("credentialType") == "managedIdentity" else \
        CertificateCredential(record["tenantId"], record["appId"], certificate_data=pfx,
                              authority=settings["AZURE_AUTHORITY_HOST"], disable_instance_discovery=True)
    token = credential.get_token(f"{settings['EXO_ENDPOINT']}/.default").token
    credential.close()
    response = httpx.post(
        f"{settings['EXO_ENDPOINT']}/adminapi/beta/{record['tenantId']}/InvokeCommand",
        json={"CmdletInput": {"CmdletName": "Get-Mailbox", "Parameters": {"ResultSize": "Unlimited"}}},
        headers={"Authorization": f"Bearer {token}", "X-ResponseFormat": "json",
                 "X-AnchorMailbox": f"UPN:SystemMailbox{{{SYSTEM_MAILBOX}}}@{record['organization']}"},
        verify=True,  # trust comes from SSL_CERT_FILE, as in production
    )
    response.raise_for_status()
    return list(response.json()["value"])


def call_trigger(name: str, **kwargs: object) -> None:
    """Run a non-HTTP trigger (timer, queue) as the worker would, closing the platforms after."""

    async def run() -> None:
        try:
            await handler(name)(**kwargs)
        finally:
            await close_platforms()

    asyncio.run(run())
