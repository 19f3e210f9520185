"""`make run`: the product's main job, end to end, against the local stand-ins.

Starts the stand-ins in this process (and Azurite, the Functions storage where each write takes
its identity's lease), bootstraps one automation identity through the admin CLI
(the same code the HTTP API and the timer run), then acts as an unattended job: reads the
published connection record and certificate from Key Vault, signs in as the identity and runs
Get-Mailbox. Finally prints how a PowerShell job would connect with the same record.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--name", default="mailbox-reports", help="identity to bootstrap (default: %(default)s)")
    parser.add_argument("--state-dir", type=Path, help="where the stand-ins keep their CA (default: a temp dir)")
    args = parser.parse_args(argv)

    from .azurite import Azurite
    from .pki import CertificateAuthority
    from .stack import Stack

    state_dir = args.state_dir or Path(tempfile.mkdtemp(prefix="devstack-demo-"))
    state_dir.mkdir(parents=True, exist_ok=True)
    ca = CertificateAuthority.create()
    # Trust the stand-ins' CA before any HTTP stack loads (aiohttp reads SSL_CERT_FILE once).
    (state_dir / "ca.pem").write_bytes(ca.pem)
    os.environ["SSL_CERT_FILE"] = os.environ["REQUESTS_CA_BUNDLE"] = str(state_dir / "ca.pem")
    stack = Stack.start(state_dir, ca=ca)
    # The Functions storage account: every write takes the identity's lease there (one writer).
    azurite = Azurite.start(state_dir / "azurite")
    try:
        os.environ.update(stack.settings())
        os.environ["AzureWebJobsStorage"] = azurite.connection_string  # noqa: SIM112 - the Functions name
        env_file = state_dir / "devstack.env"
        stack.write_env_file(env_file, {"AzureWebJobsStorage": azurite.connection_string})
        print(f"stand-ins up: Entra {stack.url('entra')}, Graph {stack.url('graph')}, "
              f"Key Vault {stack.url('keyvault')}, Exchange {stack.url('exchange')}")
        print(f"settings written to {env_file}\n")

        from shared.cli import main as cli

        print(f"$ python -m shared bootstrap {args.name}")
        code = cli(["bootstrap", args.name, "--description", "demo identity"])
        if code != 0:
            return code
        print(f"\n$ python -m shared status {args.name}")
        cli(["status", args.name])

        from shared.runtime.connection import close_sync_connections, connection_sync
        from shared.runtime.exchange import invoke_sync

        print("\nA job connects with the published record (Key Vault only) and runs Get-Mailbox:")
        mailboxes = invoke_sync(args.name, "Get-Mailbox", {"ResultSize": "Unlimited"})
        for mailbox in mailboxes:
            print(f"  {mailbox['UserPrincipalName']:<40} {mailbox['RecipientTypeDetails']}")
        record = connection_sync(args.name).record
        close_sync_connections()
        print("\nThe connection record jobs read (Key Vault secret "
              f"exo-{args.name}-connection):\n{json.dumps(record.to_json(), indent=2)}")
        print("\nA Windows scheduled task connects the same way (see docs/jobs.md for the import):")
        print(f"  Connect-ExchangeOnline -AppId {record.app_id} -CertificateThumbprint {record.thumbprint} "
              f"-Organization {record.organization}")
        return 0
    finally:
        azurite.stop()
        stack.stop()


if __name__ == "__main__":
    sys.exit(main())
