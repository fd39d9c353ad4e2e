"""The forms the server handles and stores, as plain types.

A room message, a direct message, a file, a user, a room and who may use it: what the core passes
around, what the store keeps and returns. They know nothing of the wire
(``protocol/messages.py`` encodes them into frames) or of storage (each
store maps them to its rows), so a new field on a room message is a field
here, a line in the encoder, and a column in the SQL.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ChatMessage", "DirectMessage", "FileInfo", "RoomAccess", "StoredUser", "UserInfo"]


@dataclass(frozen=True, slots=True)
class UserInfo:
    """Who a connection is: a name, and whether it is a guest."""

    name: str
    guest: bool


@dataclass(frozen=True, slots=True)
class FileInfo:
    """A kept file's metadata, as a file message carries it."""

    name: str
    mime: str
    size: int
    #: Hex SHA-256 digest of the bytes, under which the file store keeps them.
    sha256: str
    #: A signed URL, set just before sending (``files.with_link``); never stored.
    url: str | None = None


@dataclass(frozen=True, slots=True)
class ChatMessage:
    """A stored room message.

    A file message has ``file`` set and an empty ``message``.
    """

    room: str
    message: str
    sender: str
    #: The message's place in its room's stream: 1, 2, 3 ... with no gap.
    seq: int
    message_id: str
    ts_ms: int
    file: FileInfo | None = None


@dataclass(frozen=True, slots=True)
class DirectMessage:
    """A direct message between two users (a file message when ``file`` is set)."""

    sender: str
    to: str
    message: str
    message_id: str
    ts_ms: int
    #: The seq in the direct-message stream of the user receiving this copy.
    seq: int | None = None
    file: FileInfo | None = None


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
