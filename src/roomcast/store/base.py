"""The store's ports: small interfaces, one per concern, and ``Store``, all of them.

A caller names the port it needs (:class:`MessageLog`, :class:`DirectInbox`,
:class:`Users`, :class:`Rooms`, :class:`Files`, :class:`Lifecycle`), so a
fake for a test implements only that; :class:`Store` combines them for the
node, which uses every one.

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
import base64
import binascii
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

import orjson

from ..exceptions import InvalidRequest, StoreError
from ..model import (
    AuditEntry,
    Ban,
    Change,
    ChatMessage,
    DirectMessage,
    FileInfo,
    Mention,
    Mute,
    RoomAccess,
    RoomRules,
    RoomSettings,
    SearchHit,
    StoredSession,
    StoredUser,
)
from ..query import Query

__all__ = [
    "DEDUPE_SECONDS",
    "MAX_RELEVANCE_RESULTS",
    "AppendResult",
    "DirectInbox",
    "DirectResult",
    "Draft",
    "Thread",
    "Files",
    "Lifecycle",
    "Marker",
    "MessageLog",
    "Moderation",
    "Notifications",
    "Outgoing",
    "ReadMarkers",
    "RoomAccess",
    "Rooms",
    "Search",
    "SearchFilter",
    "Sessions",
    "read_cursor",
    "write_cursor",
    "Store",
    "StoredUser",
    "Users",
    "unstorable",
]

#: How long a resent frame ``id`` from the same sender is recognised (24 h).
DEDUPE_SECONDS: Final = 24 * 3600
#: How deep best-first search results page: each page ranks every match up
#: to its end again, so the depth bounds the work.
MAX_RELEVANCE_RESULTS: Final = 500


def unstorable(text: str, client_id: str | None) -> StoreError | None:
    """Why a message cannot be stored by every store, or None when it can.

    PostgreSQL's text cannot hold U+0000. Every store refuses it, so a
    message is kept or refused the same whatever the database; the protocol
    refuses it first, and this keeps a store's promise when a caller does
    not. The message is refused alone rather than failing the batch, and
    with it everyone else's messages.
    """
    if "\x00" in text or (client_id is not None and "\x00" in client_id):
        return StoreError("the message was not stored: a store cannot hold U+0000")
    for value in (text, client_id):
        if value is not None and not value.isascii():
            try:
                value.encode()
            except UnicodeEncodeError:  # a lone surrogate: not UTF-8, no database keeps it
                return StoreError("the message was not stored: it is not valid Unicode")
    return None


@dataclass(frozen=True, slots=True)
class Draft:
    """What a sender asks the store to keep: a message, or a change of one.

    For a room (``room``) or a direct conversation (``to``: the other side).
    A change (``kind`` one of :data:`~roomcast.model.CHANGE_KINDS`) names
    the message it changes in ``target``, and carries the new text of an
    edit or the emoji of a reaction in ``text``. The caller has checked who
    may make it; the store decides, in the transaction that stores it,
    what the message's state allows (no edit of a deleted message, one
    reaction per emoji and name, at most :data:`~.batch.MAX_REACTIONS`
    emoji), so two nodes changing one message at once agree.
    """

    sender: str
    room: str | None = None
    to: str | None = None
    text: str = ""
    client_id: str | None = None
    file: FileInfo | None = None
    kind: str = "chat"
    target: str | None = None
    #: A chat's answer: the message answered, and its thread's root.
    reply_to: str | None = None
    thread: str | None = None
    #: The registered users it names who may read it (resolved by the caller).
    mentions: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class AppendResult:
    """A stored room message or change, and whether the store already had it (a resend).

    A change that changed nothing has no seq (``message.seq`` None).
    """

    message: ChatMessage | Change
    duplicate: bool
    #: Each user the message mentions, with the mention's seq in their direct stream.
    mentioned: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True, slots=True)
class DirectResult:
    """A stored direct message or change, its seq in each side's inbox, and whether a resend.

    A change that changed nothing has seqs 0.
    """

    message: DirectMessage | Change
    sender_seq: int
    recipient_seq: int
    duplicate: bool


@dataclass(frozen=True, slots=True)
class SearchFilter:
    """One search: the query, where it looks, and which page.

    Without ``room`` or ``direct`` it looks in every room ``reader`` may read
    now and, for a registered reader, in their direct conversations.
    """

    query: Query
    #: The registered user searching, or None for a guest (public rooms only).
    reader: str | None
    #: Only this room (the caller has checked the reader may read it).
    room: str | None = None
    #: Only the reader's direct conversations; with ``peer``, the one with them.
    direct: bool = False
    peer: str | None = None
    #: Only messages from this sender.
    sender: str | None = None
    #: Only messages stored after / before these times (epoch ms, both excluded).
    after_ms: int | None = None
    before_ms: int | None = None
    #: Results in a page (the edges pass theirs; 20 is the protocol's default).
    limit: int = 20
    #: Where the previous page ended (the store's own form), or None for the first.
    cursor: str | None = None
    #: Best matches first instead of newest first.
    relevance: bool = False

    def key(self) -> str:
        """What a cursor is valid for: this search, whatever page."""
        return repr(
            (
                self.query.text,
                self.reader,
                self.room,
                self.direct,
                self.peer,
                self.sender,
                self.after_ms,
                self.before_ms,
                self.relevance,
            )
        )


def write_cursor(search: SearchFilter, position: Any) -> str:
    """The cursor of the page after this one: ``position`` (the store's own, as JSON),
    bound to ``search`` so it is not taken for another search's."""
    data = orjson.dumps([_cursor_key(search), position])
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def read_cursor(search: SearchFilter) -> Any:
    """The position in ``search.cursor`` (None for a first page).

    Raises:
        InvalidRequest: the cursor is not one this search gave.
    """
    if search.cursor is None:
        return None
    try:
        text = search.cursor + "=" * (-len(search.cursor) % 4)
        key, position = orjson.loads(base64.urlsafe_b64decode(text.encode("ascii")))
    except (ValueError, TypeError, UnicodeEncodeError, binascii.Error):
        raise InvalidRequest("cursor is not one a search gave") from None
    if key != _cursor_key(search):
        raise InvalidRequest("cursor belongs to another search: repeat the same query")
    return position


def _cursor_key(search: SearchFilter) -> str:
    return hashlib.blake2b(search.key().encode(), digest_size=8).hexdigest()


#: Where a history page reads: the whole room (None), or one thread (its root's id).
Thread = str | None


class Lifecycle(Protocol):
    """A store's life: connected before use, closed after, asked whether it works."""

    async def open(self) -> None:
        """Connect, create or migrate the schema."""

    async def close(self) -> None:
        """Finish pending writes and release resources."""

    async def ping(self) -> None:
        """Raise :class:`~roomcast.exceptions.StoreError` unless the store answers."""


class MessageLog(Protocol):
    """Room messages: appended with the room's next seq, read back by seq."""

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

        A repeated ``(sender, client_id)`` to the same room within
        :data:`DEDUPE_SECONDS` resolves to the first message with
        ``duplicate`` set. A failure is a
        :class:`~roomcast.exceptions.StoreError` on the future.
        """

    def submit(self, draft: Draft) -> asyncio.Future[AppendResult | DirectResult]:
        """Queue any draft (a room's to :class:`AppendResult`, a direct one's to
        :class:`DirectResult`); :meth:`append` and :meth:`append_direct` are its
        shorthands for plain messages.

        A change the message's state refuses fails its future with a
        :class:`~roomcast.exceptions.DomainError` (``NotFound``,
        ``InvalidRequest``); nothing is stored for it.
        """

    async def flush(self) -> None:
        """Wait until every append queued so far has been stored or has failed."""

    async def last_seq(self, room: str) -> int:
        """The highest ``seq`` in ``room`` (0 for an empty room)."""

    async def first_seq(self, room: str) -> int:
        """The lowest ``seq`` still kept in ``room`` (``last_seq + 1`` when none is)."""

    async def history(
        self, room: str, *, before: int | None = None, limit: int = 50, thread: Thread = None
    ) -> tuple[list[ChatMessage], bool]:
        """Up to ``limit`` messages with seq < ``before``, oldest first, and ``has_more``.

        Messages only (changes are skipped), each in its current state with
        its reactions, reply count and the quote of what it answers. With
        ``thread``, only that root and its replies.
        """

    async def around(
        self, room: str, seq: int, *, limit: int
    ) -> tuple[list[ChatMessage], bool, bool]:
        """Messages before ``seq`` (half of ``limit``) and from it on, as :meth:`history`.

        Returns the page, whether older messages exist, and whether newer ones do.
        """

    async def since(self, room: str, seq: int, *, limit: int) -> list[ChatMessage | Change]:
        """Up to ``limit`` events with seq > ``seq``, oldest first: messages and changes."""

    async def message_by_id(self, message_id: str) -> ChatMessage | DirectMessage | None:
        """The room or direct message with ``message_id`` as it is now, or None.

        None too for an unknown, pruned or change event's id. A direct
        message comes without a seq: it has one per inbox.
        """


class DirectInbox(Protocol):
    """Direct messages: stored once, listed in both sides' inboxes, each with its own seqs."""

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
        first copy like :meth:`MessageLog.append`, and ``file`` makes it a
        file message likewise.
        """

    async def direct_last_seq(self, owner: str) -> int:
        """The newest seq in ``owner``'s inbox (0 when empty)."""

    async def direct_history(
        self, owner: str, *, before: int | None = None, limit: int = 50, peer: str | None = None
    ) -> tuple[list[DirectMessage], bool]:
        """``owner``'s direct messages with seq < ``before``, oldest first, and ``has_more``;
        with ``peer``, only those of the conversation with them.

        Messages only, in their current state, with their reactions.
        """

    async def direct_since(
        self, owner: str, seq: int, *, limit: int
    ) -> tuple[list[DirectMessage | Change | Mention], bool]:
        """``owner``'s direct-stream events with seq > ``seq``, oldest first, and ``has_more``."""

    async def direct_around(
        self, owner: str, seq: int, *, limit: int, peer: str | None = None
    ) -> tuple[list[DirectMessage], bool, bool]:
        """``owner``'s direct messages before ``seq`` (half of ``limit``) and from it on,
        as :meth:`direct_history` (``peer`` too); whether older ones exist, and whether
        newer ones do."""


class Users(Protocol):
    """Registered users.

    Names are unique regardless of case; methods taking a name accept any
    case and return the name as registered.
    """

    async def create_user(self, name: str, password_hash: str) -> bool:
        """Register ``name``; False when the name (in any case) is taken."""

    async def get_user(self, name: str) -> StoredUser | None:
        """The user called ``name`` in any case, or None."""


class Rooms(Protocol):
    """Who may use which room: public rooms, and private ones with owners and members."""

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


class Files(Protocol):
    """What the stored file messages say about the files kept on disk."""

    async def file_bytes_since(self, sender: str, since_ms: int) -> int:
        """The bytes of the files ``sender`` sent at ``since_ms`` or later (upload quota)."""

    async def file_digests(self) -> set[str]:
        """The SHA-256 digests of every file a kept message names (for sweeping files)."""


#: A user's read marker: (name, stream, seq). The stream is a room's name,
#: ``@`` (the whole direct stream) or ``@name`` (one direct conversation).
Marker = tuple[str, str, int]


class ReadMarkers(Protocol):
    """How far each user has read, and the reads that count and receipts need."""

    async def save_markers(self, markers: Sequence[Marker]) -> None:
        """Move each marker to its seq, never back (a lower seq changes nothing)."""

    async def markers(self, name: str) -> dict[str, int]:
        """Every marker of user ``name``, by stream."""

    async def marker(self, name: str, stream: str) -> int | None:
        """One marker of user ``name``, or None when it has none there."""

    async def unread_in_room(self, room: str, name: str, after: int, upto: int) -> tuple[int, int]:
        """Messages in ``room`` with ``after < seq <= upto`` from others, not deleted,
        and how many of them mention ``name``."""

    async def last_message(self, room: str) -> tuple[int, int] | None:
        """The seq and time (epoch ms) of ``room``'s newest message not deleted, or None."""

    async def unread_direct(self, name: str, after: int) -> list[tuple[str, int, bool]]:
        """``name``'s direct messages from others after seq ``after``, not deleted:
        (sender, seq in ``name``'s stream, whether it mentions ``name``), in seq order."""

    async def last_direct(self, name: str, peer: str | None) -> tuple[int, int] | None:
        """The seq (in ``name``'s stream) and time of the newest direct message not
        deleted, between ``name`` and ``peer`` (or anyone), or None."""

    async def readers(self, room: str, *, at_least: int = 0, limit: int) -> list[tuple[str, int]]:
        """Up to ``limit`` markers in ``room`` at ``at_least`` or past it, of users who
        do not hide their receipts: (name, seq), furthest first."""

    async def reader_count(self, room: str) -> int:
        """How many users have a marker in ``room``."""

    async def direct_seq_for(self, reader: str, peer: str, upto: int) -> int | None:
        """The seq in ``peer``'s stream of the newest message between the two that is
        at seq ``upto`` or before in ``reader``'s stream, or None."""

    async def direct_peers(self, name: str, after: int, upto: int) -> list[str]:
        """Whom ``name`` exchanged the direct messages at ``after < seq <= upto`` with."""

    async def set_hide_receipts(self, name: str, hidden: bool) -> None:
        """Hide (or show) user ``name``'s receipts."""

    async def set_room_receipts(self, room: str, on: bool) -> None:
        """Turn receipts in ``room`` on or off."""


#: A notification waiting to be delivered: (id, body, attempts so far).
Outgoing = tuple[str, bytes, int]


class Notifications(Protocol):
    """The durable outbox of webhook notifications (at least once, across restarts)."""

    async def add_notification(self, notification_id: str, message_id: str, body: bytes) -> None:
        """Keep a notification of message ``message_id``, due at once.

        Deleting the message (or retention) forgets it, and the text in it.
        """

    async def due_notifications(self, limit: int) -> list[Outgoing]:
        """Up to ``limit`` notifications due now, the longest due first."""

    async def claim_notification(self, notification_id: str, attempts: int, lease: float) -> bool:
        """Take a due notification for one attempt: False when another node took it
        (its attempts moved on). It is due again after ``lease`` seconds unless
        :meth:`finish_notification` or :meth:`retry_notification` says otherwise."""

    async def retry_notification(self, notification_id: str, delay: float) -> None:
        """The attempt failed: due again in ``delay`` seconds."""

    async def finish_notification(self, notification_id: str) -> None:
        """Delivered, or given up: forget it."""

    async def notification_count(self) -> int:
        """How many notifications wait."""


class Moderation(Protocol):
    """Roles, bans, mutes, room settings and the audit log.

    Every change takes the :class:`AuditEntry` that records it and writes
    both in one transaction: an action is in the log once, or not done.
    """

    async def room_settings(self, room: str) -> RoomSettings | None:
        """The stored room's settings and roles, or None when it is not stored."""

    async def room_rules(self, room: str, now_ms: int) -> RoomRules:
        """What ``room`` holds its users to, in one read: slow mode, who is exempt
        (owner, moderators), the mutes and bans that have not ended."""

    async def claim_room(self, room: str, owner: str, now_ms: int) -> bool:
        """Store the public room ``room`` owned by ``owner``: True unless it is stored
        already or has messages (then it keeps what it has)."""

    async def set_moderator(self, room: str, name: str, on: bool, audit: AuditEntry) -> bool:
        """Make ``name`` a moderator of ``room`` (or not); False when nothing changed
        (then nothing is logged)."""

    async def set_owner(self, room: str, name: str, audit: AuditEntry) -> None:
        """Hand ``room`` to ``name`` (who stops being a moderator); the old owner
        becomes a moderator. A private room makes ``name`` a member too; a public
        room not stored yet is stored now."""

    async def remove_member(self, room: str, name: str, audit: AuditEntry) -> bool:
        """Take ``name`` out of ``room``'s members and moderators; False when they
        were neither (the audit entry is written either way: the removal of the
        connections happened)."""

    async def set_ban(self, room: str, ban: Ban, audit: AuditEntry) -> None:
        """Ban ``ban.name`` from ``room`` (replacing a ban they have); a moderator
        banned stops being one."""

    async def lift_ban(self, room: str, name: str, audit: AuditEntry) -> bool:
        """End ``name``'s ban in ``room``; False when there was none (nothing logged)."""

    async def set_mute(self, room: str, mute: Mute, audit: AuditEntry) -> None:
        """Mute ``mute.name`` in ``room`` until ``mute.until_ms`` (replacing a mute)."""

    async def lift_mute(self, room: str, name: str, audit: AuditEntry) -> bool:
        """End ``name``'s mute in ``room``; False when there was none (nothing logged)."""

    async def bans(self, room: str, now_ms: int) -> list[Ban]:
        """The bans of ``room`` that have not ended, by name."""

    async def mutes(self, room: str, now_ms: int) -> list[Mute]:
        """The mutes of ``room`` that have not ended, by name."""

    async def update_room(
        self,
        room: str,
        audit: AuditEntry,
        *,
        topic: str | None = None,
        title: str | None = None,
        slow_mode: int | None = None,
    ) -> bool:
        """Change what is given (None keeps it). A public room not stored yet (the
        lobby, a room a guest made) is stored now, with no owner. Always True."""

    async def delete_room(self, room: str, audit: AuditEntry) -> bool:
        """Erase ``room``: its messages (the newest stays as an empty tombstone so
        its seqs keep counting if the name is used again), reactions, files'
        rows, read markers, members, roles, bans and mutes, and its row. The
        audit log stays. False when there was nothing to erase."""

    async def add_audit(self, audit: AuditEntry) -> None:
        """Log an action stored elsewhere (a moderator's delete of a message)."""

    async def audit_log(self, room: str, *, before: int | None, limit: int) -> list[AuditEntry]:
        """``room``'s entries with id below ``before`` (all when None), newest first."""

    async def all_rooms(self) -> list[RoomSettings]:
        """Every stored room, public and private, by name (for admins)."""


class Sessions(Protocol):
    """Sign-ins: refresh credentials, and revocation that every node can see."""

    async def create_session(self, session: StoredSession) -> None:
        """Store a new sign-in."""

    async def session_user(self, session_id: str) -> tuple[StoredSession, StoredUser] | None:
        """The session and its user in one read, or None (either is gone)."""

    async def rotate_session(
        self, session_id: str, old_hash: str, new_hash: str, expires_ms: int, now_ms: int
    ) -> bool:
        """Replace the refresh hash if it is still ``old_hash`` and the session is
        neither revoked nor expired; False otherwise (nothing changes)."""

    async def revoke_sessions(
        self, name: str, now_ms: int, *, only: str | None = None, keep: str | None = None
    ) -> list[str]:
        """Revoke ``name``'s live sessions (only the session ``only``, or all but
        ``keep``); the ids revoked."""

    async def revoked_since(self, since_ms: int) -> list[tuple[str, str]]:
        """``(session id, user)`` of every session revoked at or after ``since_ms``."""

    async def set_password(
        self, name: str, password_hash: str, now_ms: int, *, keep: str | None = None
    ) -> list[str]:
        """Change ``name``'s password and, in the same transaction, revoke every
        session but ``keep``; the ids revoked (empty, and nothing done, when
        there is no such user)."""

    async def set_admin(self, name: str, on: bool) -> bool:
        """Make ``name`` an admin (or not); False when there is no such user."""

    async def set_user_ban(
        self, name: str, until_ms: int | None, reason: str, now_ms: int
    ) -> list[str] | None:
        """Ban ``name`` everywhere until ``until_ms`` (None lifts the ban); a ban
        revokes every session in the same transaction. The ids revoked, or
        None when there is no such user."""

    async def delete_user(self, name: str, now_ms: int) -> list[str] | None:
        """Erase ``name``: the account and its password hash, its sessions, read
        markers, reactions, memberships, roles, notifications, and the text and
        files of every message it sent (rooms and direct: each stays as an
        empty tombstone marked deleted, so seqs keep counting). Rooms it owned
        are left to admins. The session ids revoked, or None when there is no
        such user."""


class Search(Protocol):
    """Full-text search over the messages a reader may read now."""

    async def search(self, search: SearchFilter) -> tuple[list[SearchHit], str | None]:
        """Up to ``search.limit`` messages matching ``search.query``, newest first (or
        best first), and the cursor of the next page (None on the last).

        Only chat messages not deleted, by their current text; only in rooms
        the reader may read as the store says now (public ones, and private
        ones they own or belong to) and in the reader's own direct
        conversations. A message is found from the moment it is stored.

        Raises:
            InvalidRequest: a cursor that is not this search's, or a query
                the engine refuses.
        """


class Store(
    Lifecycle,
    MessageLog,
    DirectInbox,
    Users,
    Rooms,
    Files,
    ReadMarkers,
    Notifications,
    Search,
    Moderation,
    Sessions,
    Protocol,
):
    """Where room messages, direct messages, users and rooms are kept: every port at once."""
