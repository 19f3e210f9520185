"""Placeholder: the entra stand-in is being written."""

from __future__ import annotations

from .web import Service
from .world import World


class EntraService(Service):
    name = "entra"

    def __init__(self, world: World) -> None:
        super().__init__()
        self.world = world
