"""Placeholder: the exchange stand-in is being written."""

from __future__ import annotations

from .web import Service
from .world import World


class ExchangeService(Service):
    name = "exchange"

    def __init__(self, world: World) -> None:
        super().__init__()
        self.world = world
