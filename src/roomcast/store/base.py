"""The Store interface: append a room message, read a room's history.

A store assigns each room message its ``seq`` (1, 2, 3, ... per room, no
gaps) and ``message_id``, and returns only once the message is kept as
durably as the store can keep it: the node acks and broadcasts after that.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from ..exceptions import ConfigError
from ..protocol.messages import ChatMessage

__all__ = ["AppendResult", "Store", "open_store"]


@dataclass(frozen=True, slots=True)
class AppendResult:
    """A stored message, and whether the store already had it (a resend)."""

    message: ChatMessage
    duplicate: bool


class Store(Protocol):
    """Where room messages are kept."""

    async def open(self) -> None:
        """Connect, create or migrate the schema."""

    async def close(self) -> None:
        """Finish pending writes and release resources."""

    async def ping(self) -> None:
        """Raise :class:`~roomcast.exceptions.StoreError` unless the store answers."""

    async def append(
        self, room: str, sender: str, text: str, *, client_id: str | None = None
    ) -> AppendResult:
        """Store a message; a repeated ``(sender, client_id)`` returns the first one."""

    async def last_seq(self, room: str) -> int:
        """The highest ``seq`` in ``room`` (0 for an empty room)."""

    async def history(
        self, room: str, *, before: int | None = None, limit: int = 50
    ) -> tuple[list[ChatMessage], bool]:
        """Up to ``limit`` messages with seq < ``before``, oldest first, and ``has_more``."""

    async def since(self, room: str, seq: int, *, limit: int) -> list[ChatMessage]:
        """Up to ``limit`` messages with seq > ``seq``, oldest first."""


def open_store(url: str | None) -> Store:
    """The store for a ``--database-url`` (``None`` or ``memory:`` for memory)."""
    from .memory import MemoryStore

    if url is None or url == "memory:":
        return MemoryStore()
    raise ConfigError(f"unsupported database URL scheme: {url.split(':', 1)[0]!r}")
