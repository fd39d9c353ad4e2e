"""The Broker interface: carry publications between nodes.

A node delivers its own publications to its local members at once and
publishes them so the *other* nodes deliver them to theirs. Every
publication is stamped with the publishing node's id; a node ignores its
own echo (python-socketio's ``host_id``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from ..exceptions import ConfigError

__all__ = ["Broker", "Handler", "Publication", "open_broker"]


@dataclass(frozen=True, slots=True)
class Publication:
    """A frame for a room's members (or a user's connections) on every node."""

    node_id: str
    room: str | None
    user: str | None
    frame: bytes
    skip_user: str | None = None
    #: The stored message's seq, when the frame carries one.
    seq: int | None = None


Handler = Callable[[Publication], None]


class Broker(Protocol):
    """Moves publications between the nodes of one service."""

    async def start(self, node_id: str, handler: Handler) -> None:
        """Begin delivering other nodes' publications to ``handler``."""

    def publish(self, publication: Publication) -> None:
        """Send ``publication`` to every other node; never blocks.

        The message is already stored when it is published, so a broker
        that cannot deliver it loses nothing: clients catch up from the
        store when they resume.
        """

    async def ping(self) -> None:
        """Raise :class:`~roomcast.exceptions.BrokerError` unless the broker answers."""

    async def close(self) -> None:
        """Stop delivering and release resources."""


def open_broker(url: str | None) -> Broker:
    """The broker for a ``--redis-url`` (``None`` for the in-process broker)."""
    from .memory import MemoryBroker

    if url is None or url == "memory:":
        return MemoryBroker()
    raise ConfigError(f"unsupported broker URL scheme: {url.split(':', 1)[0]!r}")
