"""The in-process broker: nodes in one process share a :class:`MemoryBus`.

One ``roomcast serve`` has one node, so its broker has nobody to tell; tests
put several nodes on one bus to check the cross-node path without Redis.
"""

from __future__ import annotations

from .base import Handler, Publication

__all__ = ["MemoryBroker", "MemoryBus"]


class MemoryBus:
    """Connects the memory brokers of the nodes in one process."""

    def __init__(self) -> None:
        self.handlers: dict[str, Handler] = {}


class MemoryBroker:
    """A broker whose other nodes live in the same process."""

    def __init__(self, bus: MemoryBus | None = None) -> None:
        self._bus = bus if bus is not None else MemoryBus()
        self._node_id: str | None = None

    async def start(self, node_id: str, handler: Handler) -> None:
        self._node_id = node_id
        self._bus.handlers[node_id] = handler

    def publish(self, publication: Publication) -> None:
        for node_id, handler in self._bus.handlers.items():
            if node_id != publication.node_id:
                handler(publication)

    async def ping(self) -> None:
        pass

    async def close(self) -> None:
        if self._node_id is not None:
            self._bus.handlers.pop(self._node_id, None)
