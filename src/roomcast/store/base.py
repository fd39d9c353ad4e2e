"""The Store interface: append a room message, read a room's history.

A store assigns each room message its ``seq`` (1, 2, 3, ... per room, no
gaps) and ``message_id``, and resolves the future :meth:`Store.append`
returns only once the message is kept as durably as the store can keep it:
the node acks and broadcasts after that. Appends are queued, not awaited one
by one, so a sender's messages can be stored together in one transaction;
their futures resolve in the order they were appended, which is seq order
within a room, and the node broadcasts in that order.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Final, Protocol

from ..protocol.messages import ChatMessage, DirectMessage, FileInfo

__all__ = [
    "DEDUPE_SECONDS",
    "AppendResult",
    "DirectResult",
    "RoomAccess",
    "Store",
    "StoredUser",
]

#: How long a resent frame ``id`` from the same sender is recognised (24 h).
DEDUPE_SECONDS: Final = 24 * 3600


@dataclass(frozen=True, slots=True)
class AppendResult:
    """A stored message, and whether the store already had it (a resend)."""

    message: ChatMessage
    duplicate: bool


@dataclass(frozen=True, slots=True)
class DirectResult:
    """A stored direct message, its seq in each side's inbox, and whether it is a resend."""

    message: DirectMessage
    sender_seq: int
    recipient_seq: int
    duplicate: bool


@dataclass(frozen=True, slots=True)
class StoredUser:
    """A registered user: the name as registered, and the password's argon2 hash."""

    name: str
    password_hash: str


@dataclass(frozen=True, slots=True)
class RoomAccess:
    """Who may use a room: anyone (public), or its owner and members (private)."""

    name: str
    private: bool
    owner: str | None
    members: frozenset[str]

    def allows(self, user: str) -> bool:
        """Whether ``user`` may join, read and post in this room."""
        return not self.private or user == self.owner or user in self.members


class Store(Protocol):
    """Where room messages, direct messages, users and rooms are kept.

    User names are unique regardless of case; methods taking a name accept
    any case and return the name as registered.
    """

    async def open(self) -> None:
        """Connect, create or migrate the schema."""

    async def close(self) -> None:
        """Finish pending writes and release resources."""

    async def ping(self) -> None:
        """Raise :class:`~roomcast.exceptions.StoreError` unless the store answers."""

    def append(
        self,
        room: str,
        sender: str,
        text: str,
        *,
        client_id: str | None = None,
        file: FileInfo | None = None,
    ) -> asyncio.Future[AppendResult]:
        """Queue a message; the future resolves once it is stored.

        A file message has ``file`` set (and ``text`` empty); it takes the
        room's next seq like any message, and the stored message keeps the
        file's metadata (never its ``url``).

        A repeated ``(sender, client_id)`` within :data:`DEDUPE_SECONDS`
        resolves to the first message with ``duplicate`` set. A failure is a
        :class:`~roomcast.exceptions.StoreError` on the future.
        """

    async def flush(self) -> None:
        """Wait until every append queued so far has been stored or has failed."""

    async def last_seq(self, room: str) -> int:
        """The highest ``seq`` in ``room`` (0 for an empty room)."""

    async def first_seq(self, room: str) -> int:
        """The lowest ``seq`` still kept in ``room`` (``last_seq + 1`` when none is)."""

    async def history(
        self, room: str, *, before: int | None = None, limit: int = 50
    ) -> tuple[list[ChatMessage], bool]:
        """Up to ``limit`` messages with seq < ``before``, oldest first, and ``has_more``."""

    async def since(self, room: str, seq: int, *, limit: int) -> list[ChatMessage]:
        """Up to ``limit`` messages with seq > ``seq``, oldest first."""

    # -- direct messages -------------------------------------------------------

    def append_direct(
        self,
        sender: str,
        recipient: str,
        text: str,
        *,
        client_id: str | None = None,
        file: FileInfo | None = None,
    ) -> asyncio.Future[DirectResult]:
        """Queue a direct message between two registered users (names as registered).

        Queued with the room messages, in one order; a resend resolves to the
        first copy like :meth:`append`, and ``file`` makes it a file message
        likewise.
        """

    async def direct_last_seq(self, owner: str) -> int:
        """The newest seq in ``owner``'s inbox (0 when empty)."""

    async def direct_history(
        self, owner: str, *, before: int | None = None, limit: int = 50
    ) -> tuple[list[DirectMessage], bool]:
        """``owner``'s direct messages with seq < ``before``, oldest first, and ``has_more``."""

    async def direct_since(
        self, owner: str, seq: int, *, limit: int
    ) -> tuple[list[DirectMessage], bool]:
        """``owner``'s direct messages with seq > ``seq``, oldest first, and ``has_more``."""

    async def message_by_id(self, message_id: str) -> ChatMessage | DirectMessage | None:
        """The room or direct message with ``message_id``, or None (unknown or pruned).

        A direct message comes without a seq: it has one per inbox.
        """

    async def file_bytes_since(self, sender: str, since_ms: int) -> int:
        """The bytes of the files ``sender`` sent at ``since_ms`` or later (upload quota)."""

    async def file_digests(self) -> set[str]:
        """The SHA-256 digests of every file a kept message names (for sweeping files)."""

    # -- users and rooms ---------------------------------------------------------

    async def create_user(self, name: str, password_hash: str) -> bool:
        """Register ``name``; False when the name (in any case) is taken."""

    async def get_user(self, name: str) -> StoredUser | None:
        """The user called ``name`` in any case, or None."""

    async def create_room(
        self, name: str, *, owner: str, private: bool, members: frozenset[str]
    ) -> bool:
        """Create a room owned by ``owner``; False when it exists already."""

    async def room_access(self, name: str) -> RoomAccess | None:
        """The room's access rules, or None for a room never created or used."""

    async def known_rooms(self, names: list[str]) -> set[str]:
        """Which of ``names`` the store has rules for (created, or with a message): one read."""

    async def add_room_members(self, name: str, members: frozenset[str]) -> None:
        """Add users to a room's members."""

    async def list_rooms(self, user: str | None) -> list[RoomAccess]:
        """Every room ``user`` may see (public rooms, and private ones it belongs to)."""
