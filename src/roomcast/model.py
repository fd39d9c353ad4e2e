"""The forms the server handles and stores, as plain types.

A room message, a direct message, a file, a user, a room and who may use it: what the core passes
around, what the store keeps and returns. They know nothing of the wire
(``protocol/messages.py`` encodes them into frames) or of storage (each
store maps them to its rows), so a new field on a room message is a field
here, a line in the encoder, and a column in the SQL.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

__all__ = [
    "CHANGE_KINDS",
    "FOREVER_MS",
    "AuditEntry",
    "Ban",
    "Mute",
    "RoomRules",
    "RoomSettings",
    "StoredSession",
    "Change",
    "ChatMessage",
    "DirectMessage",
    "FileInfo",
    "Mention",
    "QUOTE_CHARS",
    "Quote",
    "Reactions",
    "RoomAccess",
    "SearchHit",
    "StoredUser",
    "Unread",
    "UserInfo",
]

#: What a change does to a message: the ``kind`` of a :class:`Change`.
CHANGE_KINDS: Final = frozenset({"edit", "delete", "react", "unreact"})

#: Who reacted with what: each emoji, in the order first used, with the
#: names of those who reacted with it, in order.
Reactions = tuple[tuple[str, tuple[str, ...]], ...]


@dataclass(frozen=True, slots=True)
class UserInfo:
    """Who a connection is: a name, and whether it is a guest (or an admin)."""

    name: str
    guest: bool
    #: A server-wide admin (from the token's user at sign-in; a demotion
    #: revokes the user's sessions, so it never outlives one).
    admin: bool = False


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


#: Characters of the answered message a reply quotes.
QUOTE_CHARS: Final = 100


@dataclass(frozen=True, slots=True)
class Quote:
    """The start of the message a reply answers, as the reply shows it."""

    sender: str
    #: The first :data:`QUOTE_CHARS` characters of its text; empty when it was deleted.
    message: str
    deleted: bool = False

    @classmethod
    def of(cls, sender: str, text: str, deleted: bool) -> Quote:
        """The quote of a message by ``sender`` saying ``text`` (or deleted)."""
        return cls(sender, "", True) if deleted else cls(sender, text[:QUOTE_CHARS])


@dataclass(frozen=True, slots=True)
class ChatMessage:
    """A stored room message, in its current state.

    A file message has ``file`` set and an empty ``message``. A deleted
    message keeps its place (a tombstone) with its text and file erased.
    """

    room: str
    message: str
    sender: str
    #: The message's place in its room's stream: 1, 2, 3 ... with no gap.
    seq: int
    message_id: str
    ts_ms: int
    file: FileInfo | None = None
    #: The message this one answers (same room), and the root of its thread.
    reply_to: str | None = None
    thread: str | None = None
    #: The registered users the text names with ``@name`` who may read the room.
    mentions: tuple[str, ...] = ()
    #: When it was last edited (epoch ms), if ever.
    edited_ms: int | None = None
    deleted: bool = False
    reactions: Reactions = ()
    #: How many replies it has (a thread root); read with history.
    reply_count: int = 0
    #: The start of the message answered; read with history and sent live.
    quote: Quote | None = None


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
    mentions: tuple[str, ...] = ()
    edited_ms: int | None = None
    deleted: bool = False
    reactions: Reactions = ()


@dataclass(frozen=True, slots=True)
class Change:
    """An edit, a delete or a reaction: an event in its conversation's stream.

    It takes the next seq of the room (``room`` set) or of each side's direct
    stream (``peers`` set: the changed message's sender and recipient), like a
    message, so every member applies the changes once and in one order.
    """

    #: One of :data:`CHANGE_KINDS`.
    kind: str
    #: The id of the message changed.
    target: str
    #: Who made the change (the reacting user, for a reaction).
    by: str
    ts_ms: int
    #: Its seq in the stream; None when it changed nothing (a second delete,
    #: a reaction already there), so nothing was stored.
    seq: int | None
    room: str | None = None
    peers: tuple[str, str] | None = None
    #: The new text (an edit; empty once the message is deleted) or the emoji.
    text: str = ""


@dataclass(frozen=True, slots=True)
class Mention:
    """A user was named in a room message: an event in their direct stream."""

    room: str
    #: The id of the room message that names them.
    message_id: str
    sender: str
    #: Its seq in the mentioned user's direct stream.
    seq: int
    ts_ms: int


@dataclass(frozen=True, slots=True)
class StoredUser:
    """A registered user: the name as registered, and the password's argon2 hash."""

    name: str
    password_hash: str
    #: When the name was registered (epoch ms): what was said under it before
    #: was said by a guest of that name, not by this user.
    created_ms: int = 0
    #: The user keeps how far they have read to themselves: no receipts name them.
    hide_receipts: bool = False
    #: A server-wide admin: moderates every room, bans users everywhere.
    admin: bool = False
    #: Banned everywhere until then (epoch ms; :data:`FOREVER_MS` until lifted),
    #: or None. A ban past its end is no ban: readers compare with the clock.
    banned_until_ms: int | None = None
    #: Why, as the admin said (may be empty).
    ban_reason: str = ""

    def banned(self, now_ms: int) -> bool:
        """Whether a server-wide ban holds at ``now_ms``."""
        return self.banned_until_ms is not None and self.banned_until_ms > now_ms


@dataclass(frozen=True, slots=True)
class RoomAccess:
    """Who may use a room: anyone (public), or its owner and members (private)."""

    name: str
    private: bool
    owner: str | None
    members: frozenset[str]
    #: Whether members see how far the others have read (its owner may turn it off).
    receipts: bool = True

    def allows(self, user: str) -> bool:
        """Whether ``user`` may join, read and post in this room."""
        return not self.private or user == self.owner or user in self.members


@dataclass(frozen=True, slots=True)
class Unread:
    """How much of one conversation a user has not read yet.

    A room (``room``), a direct conversation (``peer``), or the whole direct
    stream (neither). Seqs are of the room's stream, or of the user's own
    direct stream.
    """

    #: Messages from others after the user's read marker, not deleted.
    unread: int
    #: Those of them that name the user.
    mentions: int
    #: The user's read marker.
    last_read: int
    #: The newest message's seq (0 when there is none) and time (epoch ms).
    last_seq: int
    last_ms: int | None
    room: str | None = None
    peer: str | None = None


@dataclass(frozen=True, slots=True)
class SearchHit:
    """A message a search found, as it is now.

    A direct message carries its seq in the reader's own stream, and
    ``peer``, the other side of the conversation.
    """

    message: ChatMessage | DirectMessage
    peer: str | None = None
    #: Part of the text around the first match, and the matched words'
    #: ``[start, end)`` in it (code points); set by the search, not the store.
    snippet: str = ""
    highlights: tuple[tuple[int, int], ...] = ()


#: A ban or mute with no end: stored as this ``until`` (year 146,140,482),
#: shown as ``"until": null``.
FOREVER_MS: Final = 2**62


@dataclass(frozen=True, slots=True)
class Ban:
    """A user kept out of a room: they may not join or read it until it ends."""

    name: str
    #: Epoch ms it ends; :data:`FOREVER_MS` until lifted.
    until_ms: int
    reason: str
    #: Who banned them.
    by: str
    at_ms: int


@dataclass(frozen=True, slots=True)
class Mute:
    """A member who may read a room but not send or react in it, until ``until_ms``."""

    name: str
    until_ms: int
    by: str
    at_ms: int


@dataclass(frozen=True, slots=True)
class RoomSettings:
    """A stored room as its settings page shows it: roles, topic, limits."""

    name: str
    private: bool
    #: Its owner; None for the lobby and rooms a guest made (admins look after them).
    owner: str | None
    moderators: frozenset[str]
    #: A line under the room's name (at most 500 characters).
    topic: str = ""
    #: The name shown for the room ("" shows :attr:`name`, which never changes).
    title: str = ""
    #: Seconds a member waits between two messages; 0 is off.
    slow_mode: int = 0
    receipts: bool = True


@dataclass(frozen=True, slots=True)
class RoomRules:
    """What joining, reading and sending in one room are held to, kept by each
    node for the rooms it uses, so the send path reads no store.

    Owners, moderators and admins are never slowed, muted or banned.
    """

    slow_mode: int = 0
    #: The owner and moderators.
    exempt: frozenset[str] = frozenset()
    #: Muted members and when each mute ends (epoch ms).
    mutes: Mapping[str, int] = field(default_factory=dict)
    #: Banned users (as registered, or a guest's name) and their bans.
    bans: Mapping[str, Ban] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One moderation action, as the room's audit log keeps it."""

    room: str
    at_ms: int
    #: Who did it.
    actor: str
    #: ``remove``, ``ban``, ``unban``, ``mute``, ``unmute``, ``moderator``,
    #: ``unmoderator``, ``owner``, ``settings``, ``delete_message`` or ``delete_room``.
    action: str
    #: The user (or message id) acted on, if any.
    target: str | None = None
    reason: str = ""
    #: What else the action says (``until``, changed settings), as JSON values.
    detail: Mapping[str, Any] = field(default_factory=dict)
    #: Assigned by the store: entries page by it, newest first.
    id: int = 0


@dataclass(frozen=True, slots=True)
class StoredSession:
    """A sign-in: what its tokens name in ``sid``, and its one-use refresh credential."""

    id: str
    name: str
    #: SHA-256 (hex) of the current refresh secret; the secret itself is never stored.
    refresh_hash: str
    created_ms: int
    #: When the refresh credential stops working (epoch ms).
    expires_ms: int
    #: When it was revoked (sign-out, password change, ban, deletion), or None.
    revoked_ms: int | None = None
    #: SHA-256 (hex) of the refresh secret the last refresh replaced: presented
    #: again, it was copied (theft); any other wrong secret is just wrong.
    previous_hash: str | None = None
