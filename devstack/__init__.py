"""Local stand-ins for Entra ID, Microsoft Graph, Key Vault and Exchange Online.

Test equipment, not the product: they speak the real wire protocols over HTTPS on loopback so that
azure-identity, azure-keyvault-* and msgraph-sdk run unmodified against them, and they refuse what
the real services refuse (docs/reference.md). `Stack.start()` runs them in-process;
`python -m devstack up` runs them as a process and writes the settings to use.
"""

from .stack import Stack
from .world import World

__all__ = ["Stack", "World"]
