"""Principals with less than tenant-admin rights, as the trust-boundary tests play them.

Each attacker is a real Entra principal of the stand-in tenant (an app registration with its own
certificate) that reaches the services through the real SDKs with only the rights it was given:
a Key Vault data-plane role, or ownership of its own app registration in Graph.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx

from devstack import Stack
from devstack.world import GRAPH_APP_ID
from tests.devstack.entra_helpers import JobApp, create_app, grant_app_role

GLOBAL_ADMINISTRATOR = "62e90394-69f5-4237-9190-012177145e10"
PRIVILEGED_ROLE_ADMINISTRATOR = "e8611ab8-c189-46e8-94e1-60213ab1f814"
EXCHANGE_ADMINISTRATOR = "29232cdf-9323-42fd-ade2-1d097af3e4de"


@dataclass
class Attacker:
    stack: Stack
    principal: JobApp

    @property
    def object_id(self) -> str:
        assert self.principal.sp is not None
        return str(self.principal.sp["id"])

    def credential(self) -> Any:
        from azure.identity import CertificateCredential

        settings = self.stack.settings()
        return CertificateCredential(settings["AZURE_TENANT_ID"], self.principal.app_id,
                                     certificate_data=self.principal.certificates[0].pem,
                                     authority=settings["AZURE_AUTHORITY_HOST"], disable_instance_discovery=True)

    # -- Key Vault ---------------------------------------------------------------------------------
    def certificates(self) -> Any:
        from azure.keyvault.certificates import CertificateClient

        return CertificateClient(self.stack.settings()["KEY_VAULT_URL"], self.credential())

    def set_certificate_tags(self, name: str, **changes: str) -> dict[str, str]:
        """Rewrite tags of the newest version (Certificates Officer may); returns the tags written."""
        with self.certificates() as client:
            current = client.get_certificate(name)
            tags = {**(current.properties.tags or {}), **changes}
            client.update_certificate_properties(name, current.properties.version, tags=tags)
        return tags

    def set_secret_tags(self, name: str, **changes: str) -> dict[str, str]:
        """Rewrite a secret's tags (Secrets Officer may); returns the tags written."""
        from azure.keyvault.secrets import SecretClient

        with SecretClient(self.stack.settings()["KEY_VAULT_URL"], self.credential()) as client:
            tags = {**(client.get_secret(name).properties.tags or {}), **changes}
            client.update_secret_properties(name, tags=tags)
        return tags

    # -- Graph -------------------------------------------------------------------------------------
    def graph(self, method: str, path: str, body: Any = None) -> httpx.Response:
        settings = self.stack.settings()
        with self.credential() as credential:
            token = credential.get_token(f"{settings['GRAPH_ENDPOINT']}/.default").token
        return httpx.request(method, f"{settings['GRAPH_ENDPOINT']}/v1.0{path}", json=body,
                             headers={"Authorization": f"Bearer {token}"}, verify=True)


def vault_certificate_writer(stack: Stack) -> Attacker:
    """Someone granted Key Vault Certificates Officer on the vault, and nothing else."""
    attacker = Attacker(stack, create_app(stack.world, "kv-certificate-writer"))
    with stack.world.lock:
        stack.world.vault_roles[attacker.object_id] = {"Key Vault Certificates Officer"}
    return attacker


def vault_secret_writer(stack: Stack) -> Attacker:
    """Someone granted Key Vault Secrets Officer on the vault, and nothing else."""
    attacker = Attacker(stack, create_app(stack.world, "kv-secret-writer"))
    with stack.world.lock:
        stack.world.vault_roles[attacker.object_id] = {"Key Vault Secrets Officer"}
    return attacker


def app_owner(stack: Stack) -> Attacker:
    """A principal that may create and fully manage its own app registrations (OwnedBy), as any
    user can in a tenant whose users may register applications, and nothing tenant-wide."""
    attacker = Attacker(stack, create_app(stack.world, "app-owner"))
    grant_app_role(stack.world, attacker.object_id, GRAPH_APP_ID, "Application.ReadWrite.OwnedBy")
    return attacker


def foreign_app(attacker: Attacker, unique_name: str, *, tags: list[str] | None = None,
                with_sp: bool = True) -> dict[str, Any]:
    """An app registration the attacker creates and owns, holding `unique_name` and any tags it likes."""
    response = attacker.graph("POST", "/applications", {
        "displayName": f"not ours: {unique_name}", "uniqueName": unique_name, "signInAudience": "AzureADMyOrg",
        "tags": tags or []})
    assert response.status_code == 201, response.text
    app: dict[str, Any] = response.json()
    if with_sp:
        sp = attacker.graph("POST", "/servicePrincipals", {"appId": app["appId"]})
        assert sp.status_code == 201, sp.text
        app["servicePrincipal"] = sp.json()
    return app


def principal_roles(stack: Stack, principal_id: str) -> set[str]:
    with stack.world.lock:
        return {a["roleDefinitionId"] for a in stack.world.directory.role_assignments.values()
                if a["principalId"] == principal_id}


def exchange_grants(stack: Stack, principal_id: str) -> list[str]:
    from devstack.world import EXCHANGE_APP_ID, EXCHANGE_MANAGE_AS_APP

    with stack.world.lock:
        exchange = stack.world.resource_sp(EXCHANGE_APP_ID)
        return [a["id"] for a in stack.world.directory.app_role_assignments.values()
                if a["principalId"] == principal_id and a["resourceId"] == exchange["id"]
                and a["appRoleId"] == EXCHANGE_MANAGE_AS_APP]


__all__ = ["Attacker", "app_owner", "exchange_grants", "foreign_app", "principal_roles", "vault_certificate_writer",
           "vault_secret_writer"]
