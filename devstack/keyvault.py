"""Placeholder: the keyvault stand-in is being written."""

from __future__ import annotations

from .web import Service
from .world import World


class KeyVaultService(Service):
    name = "keyvault"

    def __init__(self, world: World) -> None:
        super().__init__()
        self.world = world
