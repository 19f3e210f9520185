"""A job as the continuity tests run it, against the stand-ins."""

from __future__ import annotations

import base64
import json

import httpx

from devstack import Stack
from tests.integration.helpers import SYSTEM_MAILBOX


class Probe:
    """A job: published record → PFX (re-read only when the version changes) → token → Get-Mailbox."""

    def __init__(self, stack: Stack, name: str) -> None:
        from azure.identity import ManagedIdentityCredential
        from azure.keyvault.secrets import SecretClient

        self.settings = stack.settings()
        self.name = name
        self.platform_identity = ManagedIdentityCredential()
        self.secrets = SecretClient(self.settings["KEY_VAULT_URL"], self.platform_identity)
        self.pfx: dict[str, bytes] = {}
        self.http = httpx.Client()
        self.thumbprints: list[str] = []

    def run(self) -> int:
        from azure.identity import CertificateCredential

        record = json.loads(self.secrets.get_secret(f"exo-{self.name}-connection").value or "")
        version = record["certificateVersion"]
        if version not in self.pfx:
            backing = self.secrets.get_secret(record["certificateName"], version)
            self.pfx[version] = base64.b64decode(backing.value or "")
        if not self.thumbprints or self.thumbprints[-1] != record["thumbprint"]:
            self.thumbprints.append(record["thumbprint"])
        with CertificateCredential(record["tenantId"], record["appId"], certificate_data=self.pfx[version],
                                   authority=self.settings["AZURE_AUTHORITY_HOST"],
                                   disable_instance_discovery=True) as credential:
            token = credential.get_token(f"{self.settings['EXO_ENDPOINT']}/.default").token
        response = self.http.post(
            f"{self.settings['EXO_ENDPOINT']}/adminapi/beta/{record['tenantId']}/InvokeCommand",
            json={"CmdletInput": {"CmdletName": "Get-Mailbox", "Parameters": {}}},
            headers={"Authorization": f"Bearer {token}", "X-ResponseFormat": "json",
                     "X-AnchorMailbox": f"UPN:SystemMailbox{{{SYSTEM_MAILBOX}}}@{record['organization']}"},
        )
        response.raise_for_status()
        return len(response.json()["value"])

    def close(self) -> None:
        self.http.close()
        self.secrets.close()
        self.platform_identity.close()
