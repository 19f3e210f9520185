"""Start every stand-in on loopback HTTPS and describe the settings that point at them."""

from __future__ import annotations

import importlib
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from .control import ControlService
from .pki import CertificateAuthority
from .web import Service, StandInServer
from .world import EXCHANGE_APP_ID, GRAPH_APP_ID, KEY_VAULT_APP_ID, World

SERVICE_MODULES = {
    "entra": ("devstack.entra", "EntraService"),
    "graph": ("devstack.graph", "GraphService"),
    "keyvault": ("devstack.keyvault", "KeyVaultService"),
    "exchange": ("devstack.exchange", "ExchangeService"),
    "oidc": ("devstack.oidc", "OidcIssuerService"),
}


def key_vault_resource(vault_url: str) -> str:
    """The challenge resource for a vault at https://127.0.0.1:PORT.

    azure-keyvault's challenge check wants the vault host (with port) to end with "." plus the
    resource host: "127.0.0.1:PORT" ends with ".0.0.1:PORT", so verification can stay on.
    """
    host = vault_url.split("://", 1)[1].rstrip("/")
    _, _, rest = host.partition(".")
    return f"https://{rest}"


@dataclass
class Stack:
    world: World
    state_dir: Path
    ca_file: Path
    servers: dict[str, StandInServer] = field(default_factory=dict)

    @classmethod
    def start(cls, state_dir: Path | None = None, world: World | None = None,
              ca: CertificateAuthority | None = None) -> Stack:
        """Start every stand-in. Pass `ca` when the trust file must exist before the stack does
        (aiohttp reads SSL_CERT_FILE once, when it is first imported)."""
        state_dir = Path(state_dir or tempfile.mkdtemp(prefix="devstack-"))
        state_dir.mkdir(parents=True, exist_ok=True)
        ca = ca or CertificateAuthority.create()
        ca_file = state_dir / "ca.pem"
        ca_file.write_bytes(ca.pem)
        cert_file, key_file = ca.issue_server_certificate(state_dir)
        world = world or World()
        stack = cls(world, state_dir, ca_file)
        services: dict[str, Service] = {"control": ControlService(world)}
        for name, (module_name, class_name) in SERVICE_MODULES.items():
            module = importlib.import_module(module_name)
            services[name] = getattr(module, class_name)(world)
        for name, service in services.items():
            server = StandInServer(service, world.faults, world.counter, cert_file, key_file)
            stack.servers[name] = server
            world.services[name] = service
        world.register_resource("graph", [stack.url("graph"), GRAPH_APP_ID], GRAPH_APP_ID)
        world.register_resource("exchange", [stack.url("exchange"), EXCHANGE_APP_ID], EXCHANGE_APP_ID)
        world.register_resource("keyvault", [key_vault_resource(stack.url("keyvault")), KEY_VAULT_APP_ID],
                                KEY_VAULT_APP_ID)
        # Entra ID trusts the GitHub-like issuer's keys as it would after reading its JWKS.
        oidc = services["oidc"]
        world.external_issuers[stack.url("oidc")] = oidc.signing_keys()  # type: ignore[attr-defined]
        for server in stack.servers.values():
            server.start()
        return stack

    def url(self, service: str) -> str:
        return self.servers[service].service.base_url

    def settings(self) -> dict[str, str]:
        """The app settings / environment that point the product and the SDKs at the stand-ins."""
        return {
            "AZURE_TENANT_ID": self.world.tenant_id,
            "AZURE_AUTHORITY_HOST": self.url("entra"),
            "IDENTITY_ENDPOINT": f"{self.url('entra')}/msi/token",
            "IDENTITY_HEADER": self.world.platform.identity_header,
            "KEY_VAULT_URL": self.url("keyvault") + "/",
            "KEY_VAULT_VERIFY_CHALLENGE_RESOURCE": "true",
            "GRAPH_ENDPOINT": self.url("graph"),
            "EXO_ENDPOINT": self.url("exchange"),
            "EXO_ORGANIZATION": self.world.organization,
            "SSL_CERT_FILE": str(self.ca_file),
            "REQUESTS_CA_BUNDLE": str(self.ca_file),
            "DEVSTACK_CONTROL_URL": self.url("control"),
            "DEVSTACK_OIDC_ISSUER": self.url("oidc"),
        }

    def write_env_file(self, path: Path, extra: dict[str, str] | None = None) -> None:
        values = {**self.settings(), **(extra or {})}
        path.write_text("".join(f"{k}={v}\n" for k, v in values.items()))

    def write_local_settings(self, path: Path, extra: dict[str, str] | None = None) -> None:
        values = {"FUNCTIONS_WORKER_RUNTIME": "python", **self.settings(), **(extra or {})}
        path.write_text(json.dumps({"IsEncrypted": False, "Values": values}, indent=2) + "\n")

    def stop(self) -> None:
        for server in self.servers.values():
            server.stop()
