"""What a :class:`~roomcast.client.Client` hands the application: small frozen events.

Server frames are parsed here, in one place (:func:`parse_server_frame`),
into a tagged union of frozen classes; nothing else in the client reads the
JSON. Pure: no I/O.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any, Final

import orjson

__all__ = [
    "Change",
    "ConnectionState",
    "DirectMessage",
    "Event",
    "FileRef",
    "Mention",
    "MessageDeleted",
    "MessageEdited",
    "Presence",
    "Quote",
    "Reaction",
    "ReadMarker",
    "Receipt",
    "Removed",
    "Reply",
    "RoomMessage",
    "RoomUpdated",
    "SearchPage",
    "SearchResult",
    "ServerError",
    "SessionTokens",
    "StateChange",
    "Typing",
    "Unread",
    "UnreadCounts",
    "parse_server_frame",
]

#: The reactions of a message without any.
NO_REACTIONS: Final[Mapping[str, tuple[str, ...]]] = MappingProxyType({})


class ConnectionState(enum.Enum):
    """Where a client's connection is."""

    DISCONNECTED = "disconnected"  #: not started yet
    CONNECTING = "connecting"  #: the first connection is being made
    CONNECTED = "connected"  #: signed in, rooms resumed, sending
    RECONNECTING = "reconnecting"  #: lost; waiting out the backoff or trying again
    CLOSED = "closed"  #: closed by the application, or an error that cannot heal


@dataclass(frozen=True, slots=True)
class FileRef:
    """A file carried by a message: fetch it with :meth:`Client.download`."""

    name: str
    mime: str
    size: int
    url: str


@dataclass(frozen=True, slots=True)
class Quote:
    """The start of the message a reply answers (``text`` None once it was deleted)."""

    sender: str
    text: str | None
    deleted: bool = False


@dataclass(frozen=True, slots=True)
class RoomMessage:
    """A chat (or file) message in a room, delivered once and in seq order.

    A reply names the message it answers (``reply_to``), its thread's root
    (``thread``) and quotes the start of the answered message (``quote``).
    ``mentions`` lists the users named with ``@name``. A message read from
    history shows its current state: ``edited_at``, ``deleted`` (then no
    text and no file), ``reactions`` (``{emoji: (user, ...)}``) and, on a
    thread's root, ``reply_count``.
    """

    room: str
    sender: str
    text: str
    seq: int
    message_id: str
    timestamp: datetime | None
    file: FileRef | None = None
    reply_to: str | None = None
    thread: str | None = None
    quote: Quote | None = None
    mentions: tuple[str, ...] = ()
    edited_at: datetime | None = None
    deleted: bool = False
    reactions: Mapping[str, tuple[str, ...]] = field(
        default_factory=lambda: NO_REACTIONS, hash=False
    )
    reply_count: int = 0


@dataclass(frozen=True, slots=True)
class DirectMessage:
    """A direct message (or file) to or from this user; ``seq`` is this user's stream.

    The optional fields are those of :class:`RoomMessage`.
    """

    sender: str
    to: str
    text: str
    seq: int
    message_id: str
    timestamp: datetime | None
    file: FileRef | None = None
    reply_to: str | None = None
    thread: str | None = None
    quote: Quote | None = None
    mentions: tuple[str, ...] = ()
    edited_at: datetime | None = None
    deleted: bool = False
    reactions: Mapping[str, tuple[str, ...]] = field(
        default_factory=lambda: NO_REACTIONS, hash=False
    )
    reply_count: int = 0


@dataclass(frozen=True, slots=True)
class MessageEdited:
    """``by`` changed the text of the message ``message_id`` to ``text``.

    ``text`` is empty in a replay when the message was deleted since (a
    delete erases the texts of its edits too).

    In a room (``room`` set) ``seq`` is the room's; for a direct message
    (``room`` None) it is this user's stream and ``sender``/``to`` are the
    changed message's. Delivered once, in seq order, like messages.
    """

    message_id: str
    text: str
    by: str
    seq: int
    edited_at: datetime | None
    room: str | None = None
    sender: str | None = None
    to: str | None = None


@dataclass(frozen=True, slots=True)
class MessageDeleted:
    """``by`` deleted the message ``message_id`` (its text and file are gone).

    ``room``, ``seq``, ``sender`` and ``to`` as in :class:`MessageEdited`.
    """

    message_id: str
    by: str
    seq: int
    room: str | None = None
    sender: str | None = None
    to: str | None = None
    timestamp: datetime | None = None


@dataclass(frozen=True, slots=True)
class Reaction:
    """``user`` added (``added``) or took back an ``emoji`` on the message ``message_id``.

    ``room``, ``seq``, ``sender`` and ``to`` as in :class:`MessageEdited`.
    """

    message_id: str
    emoji: str
    user: str
    added: bool
    seq: int
    room: str | None = None
    sender: str | None = None
    to: str | None = None
    timestamp: datetime | None = None


@dataclass(frozen=True, slots=True)
class Mention:
    """``sender`` named this user (``@name``) in the message ``message_id`` of ``room``.

    It comes on this user's direct stream (``seq``), in rooms they are not in too.
    """

    room: str
    message_id: str
    sender: str
    seq: int
    timestamp: datetime | None = None


@dataclass(frozen=True, slots=True)
class ReadMarker:
    """This user's read marker moved, from this client or another device of the same user.

    In ``room`` (``room`` None: the direct stream; ``with_`` names the one
    conversation when only that one was read, else the whole stream moved).
    ``seq`` is the marker (a seq of the room, or of this user's direct
    stream); ``unread`` and ``mentions`` the counts after the move (of the
    conversation with ``with_``, else of the whole direct stream). Two
    devices may race: the client keeps the highest marker, and a frame
    older than what it knows is not delivered.
    """

    seq: int
    unread: int
    mentions: int
    room: str | None = None
    with_: str | None = None


@dataclass(frozen=True, slots=True)
class Receipt:
    """``user`` has read up to ``seq``, so a "seen by" can be shown.

    In ``room`` (only in rooms with receipts on and at most 100 readers;
    the server sends at most one a second per user and room), or, with
    ``room`` None, the conversation with ``user`` up to ``seq`` of **this**
    user's direct stream (the newest message between the two that they read).
    Users who hide their receipts send none.
    """

    user: str
    seq: int
    room: str | None = None


@dataclass(frozen=True, slots=True)
class Unread:
    """What this user has not read in one conversation (a room, the direct stream, one peer).

    ``unread`` counts messages from others after the marker ``last_read``
    (deleted ones not counted), ``mentions`` those of them naming this
    user. ``last_seq`` and ``last_at``: the newest message there (None when
    not known, or when there is none), so that a list can sort by activity.
    """

    unread: int
    mentions: int
    last_read: int
    last_seq: int | None = None
    last_at: datetime | None = None


#: Nothing unread: no conversations known.
_NONE: Final[Mapping[str, Unread]] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class UnreadCounts:
    """Unread counts: per room, the whole direct stream, and per direct conversation.

    ``direct`` is None while the client does not know it (a guest, or a
    client that has not asked with :meth:`Client.unread_counts` nor seen a
    direct ``read`` yet). Read-only mappings, by room name and by peer.
    """

    rooms: Mapping[str, Unread] = field(default_factory=lambda: _NONE, hash=False)
    direct: Unread | None = None
    conversations: Mapping[str, Unread] = field(default_factory=lambda: _NONE, hash=False)

    @property
    def total(self) -> int:
        """Messages unread in every room and direct conversation (for a badge)."""
        rooms = sum(u.unread for u in self.rooms.values())
        return rooms + (self.direct.unread if self.direct is not None else 0)


@dataclass(frozen=True, slots=True)
class SearchResult:
    """One message a search found, as it is now (:meth:`Client.search`).

    In ``room``, or (``room`` None) one of this user's direct conversations,
    with ``with_`` (this user, for a note to self); ``seq`` is then a seq of
    this user's own direct stream, the one :meth:`Client.direct_history_page`
    takes as ``around``. ``message`` is the whole text; ``snippet`` about 200
    characters of it around the first match (``…`` where cut), and
    ``highlights`` the ``[start, end)`` of each matched word in the snippet,
    in code points, so ``snippet[start:end]`` is the word. A reply in a room
    names its thread's root (``thread``); an edited message was found by
    its current text (``edited_at``).
    """

    seq: int
    message_id: str
    sender: str
    at: datetime | None
    message: str
    snippet: str
    highlights: tuple[tuple[int, int], ...] = ()
    room: str | None = None
    with_: str | None = None
    thread: str | None = None
    edited_at: datetime | None = None

    @property
    def direct(self) -> bool:
        """Whether the message is a direct one (then ``with_`` names the conversation)."""
        return self.room is None


@dataclass(frozen=True, slots=True)
class SearchPage:
    """A page of search results, newest (or best) first.

    ``cursor``: pass it back to :meth:`Client.search` with the same query and
    filters for the next page; None on the last page.
    """

    results: list[SearchResult]
    cursor: str | None = None


@dataclass(frozen=True, slots=True)
class Presence:
    """Someone joined or left a room."""

    room: str
    user: str
    event: str


@dataclass(frozen=True, slots=True)
class Typing:
    """Someone is typing in a room."""

    room: str
    user: str


@dataclass(frozen=True, slots=True)
class ServerError:
    """An ``error`` frame that answers nothing this client is waiting for.

    A refusal because of a ban or a mute (``code`` ``banned`` or ``muted``)
    says until when (``until``; None: no end) and, for a ban, why (``reason``).
    """

    code: str
    message: str
    id: str | None = None
    until: datetime | None = None
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class Removed:
    """This user is out of ``room`` now, and the client stops following it.

    A moderator (or the owner, or an admin) ``by`` removed them (in a public
    room, a kick: they may join again), banned them (``banned``, until
    ``until``; None: until lifted), or deleted the room (``reason`` says so).
    Every connection of the user gets it. The room is not joined again on
    the next reconnect. ``by`` is empty when the client found out on a
    reconnect (its resume ``join`` was refused; ``reason`` is the server's
    message then).
    """

    room: str
    by: str
    reason: str | None = None
    banned: bool = False
    until: datetime | None = None


@dataclass(frozen=True, slots=True)
class RoomUpdated:
    """A room's settings or roles changed (the ``room`` frame): all of them, as they are now.

    ``title`` is the name shown (the room's name when none was set);
    ``slow_mode``: seconds a member waits between two messages (0: off).
    """

    room: str
    private: bool
    owner: str | None
    moderators: tuple[str, ...]
    topic: str
    title: str
    slow_mode: int
    receipts: bool


@dataclass(frozen=True, slots=True)
class SessionTokens:
    """The client signed in or refreshed its session: the tokens it holds now.

    An application that keeps the refresh token (to sign in without the
    password next time) stores ``refresh_token`` on every one of these: a
    refresh token works once, and presenting a used one again ends the
    whole session on the server. Times are when each token stops working.
    """

    user: str
    admin: bool
    token: str = field(repr=False)
    refresh_token: str | None = field(repr=False)
    expires_at: datetime | None = None
    refresh_expires_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class StateChange:
    """The connection state changed; ``reason`` says why when it was lost or closed."""

    old: ConnectionState
    new: ConnectionState
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class Reply:
    """Any other server frame: ``type``, its payload and the ``id`` it answers."""

    type: str
    payload: dict[str, Any]
    id: str | None


#: A change to a message: in a room's stream, or (``room`` None) in the direct stream.
Change = MessageEdited | MessageDeleted | Reaction

Event = (
    RoomMessage
    | DirectMessage
    | MessageEdited
    | MessageDeleted
    | Reaction
    | Mention
    | ReadMarker
    | Receipt
    | Presence
    | Typing
    | ServerError
    | Removed
    | RoomUpdated
    | SessionTokens
    | StateChange
    | Reply
)


def _time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def parse_time(value: object) -> datetime | None:
    """A wire time (ISO 8601, ``Z`` or an offset) as an aware datetime; None if absent or bad."""
    return _time(value)


def _file(payload: dict[str, Any]) -> FileRef:
    return FileRef(
        str(payload.get("name", "")),
        str(payload.get("mime", "")),
        int(payload.get("size", 0)),
        str(payload.get("url", "")),
    )


def _optional_str(value: object) -> str | None:
    return None if value is None else str(value)


def _quote(value: object) -> Quote | None:
    if type(value) is not dict:
        return None
    deleted = value.get("deleted") is True
    text = value.get("message")
    return Quote(
        str(value.get("from", "")), None if deleted or text is None else str(text), deleted
    )


def _names(value: object) -> tuple[str, ...]:
    if not isinstance(value, list):
        return ()
    return tuple(str(name) for name in value)


def _reactions(value: object) -> Mapping[str, tuple[str, ...]]:
    if type(value) is not dict or not value:
        return NO_REACTIONS
    return MappingProxyType({str(emoji): _names(users) for emoji, users in value.items()})


def _state(item: dict[str, Any]) -> dict[str, Any]:
    """The fields of a message beyond its text: reply, thread, mentions, current state."""
    return {
        "reply_to": _optional_str(item.get("reply_to")),
        "thread": _optional_str(item.get("thread")),
        "quote": _quote(item.get("quote")),
        "mentions": _names(item.get("mentions")),
        "edited_at": _time(item.get("edited_at")),
        "deleted": item.get("deleted") is True,
        "reactions": _reactions(item.get("reactions")),
        "reply_count": int(item.get("reply_count") or 0),
    }


def _content(item: dict[str, Any]) -> tuple[str, FileRef | None]:
    """A message's text and file (neither once it was deleted)."""
    if item.get("deleted") is True:
        return "", None
    if item.get("type") == "file" or "mime" in item:
        return "", _file(item)
    return str(item.get("message", "")), None


def room_message(item: dict[str, Any], timestamp: object = None) -> RoomMessage:
    """A room message from a ``chat`` or ``file`` payload (or history item)."""
    text, file = _content(item)
    return RoomMessage(
        room=str(item["room"]),
        sender=str(item.get("from", "")),
        text=text,
        seq=int(item["seq"]),
        message_id=str(item.get("message_id", "")),
        timestamp=_time(item.get("timestamp", timestamp)),
        file=file,
        **_state(item),
    )


def direct_message(item: dict[str, Any], timestamp: object = None) -> DirectMessage:
    """A direct message from a ``direct`` or ``file`` payload (or history item)."""
    text, file = _content(item)
    return DirectMessage(
        sender=str(item.get("from", "")),
        to=str(item.get("to", "")),
        text=text,
        seq=int(item.get("seq", 0)),
        message_id=str(item.get("message_id", "")),
        timestamp=_time(item.get("timestamp", timestamp)),
        file=file,
        **_state(item),
    )


def _where(payload: dict[str, Any]) -> dict[str, Any]:
    """A change's conversation: its room, or the direct message's sender and recipient."""
    if "room" in payload:
        return {"room": str(payload["room"])}
    return {"sender": str(payload["from"]), "to": str(payload["to"])}


def change_event(kind: str, payload: dict[str, Any], timestamp: object = None) -> Event | None:
    """The event of a change (``edit``, ``delete``, ``reaction``) or ``mention`` payload.

    None for another type. Raises KeyError, TypeError or ValueError for a
    payload without the fields its type needs.
    """
    stamp = _time(payload.get("timestamp", timestamp))
    if kind == "edit":
        return MessageEdited(
            message_id=str(payload["message_id"]),
            # Empty in a replay once the message was deleted: its edits' texts are erased.
            text=str(payload.get("message", "")),
            by=str(payload["by"]),
            seq=int(payload["seq"]),
            edited_at=_time(payload.get("edited_at")) or stamp,
            **_where(payload),
        )
    if kind == "delete":
        return MessageDeleted(
            message_id=str(payload["message_id"]),
            by=str(payload["by"]),
            seq=int(payload["seq"]),
            timestamp=stamp,
            **_where(payload),
        )
    if kind == "reaction":
        added = payload["added"]
        if not isinstance(added, bool):
            raise TypeError("added is true or false")
        return Reaction(
            message_id=str(payload["message_id"]),
            emoji=str(payload["emoji"]),
            user=str(payload["user"]),
            added=added,
            seq=int(payload["seq"]),
            timestamp=stamp,
            **_where(payload),
        )
    if kind == "mention":
        return Mention(
            room=str(payload["room"]),
            message_id=str(payload["message_id"]),
            sender=str(payload["from"]),
            seq=int(payload["seq"]),
            timestamp=stamp,
        )
    return None


def read_marker(payload: dict[str, Any]) -> ReadMarker:
    """The :class:`ReadMarker` of a ``read`` frame (room, whole direct stream, or ``with``).

    Raises KeyError, TypeError or ValueError for a payload without a seq or a room.
    """
    direct = payload.get("direct") is True
    return ReadMarker(
        seq=int(payload["seq"]),
        # A guest's answer may carry no counts: nothing is stored for it.
        unread=int(payload.get("unread") or 0),
        mentions=int(payload.get("mentions") or 0),
        room=None if direct else str(payload["room"]),
        with_=_optional_str(payload.get("with")) if direct else None,
    )


def receipt(payload: dict[str, Any]) -> Receipt:
    """The :class:`Receipt` of a ``receipt`` frame (in a room, or ``direct``)."""
    room = None if payload.get("direct") is True else str(payload["room"])
    return Receipt(str(payload["user"]), int(payload["seq"]), room)


def unread_entry(item: dict[str, Any]) -> Unread:
    """One conversation of an ``unread`` reply (a room, the direct stream, a peer)."""
    last_seq = item.get("last_seq")
    return Unread(
        unread=int(item.get("unread") or 0),
        mentions=int(item.get("mentions") or 0),
        last_read=int(item.get("last_read") or 0),
        last_seq=None if last_seq is None else int(last_seq),
        last_at=_time(item.get("last_at")),
    )


def unread_counts(payload: dict[str, Any]) -> UnreadCounts:
    """The :class:`UnreadCounts` of an ``unread`` reply (or ``GET /api/unread``).

    Raises:
        ValueError: an entry lacks its room or peer, or a count is not a number.
    """
    try:
        rooms = payload.get("rooms") or []
        direct = payload.get("direct")
        conversations = direct.get("conversations") or [] if type(direct) is dict else []
        return UnreadCounts(
            rooms=MappingProxyType(
                {str(item["room"]): unread_entry(item) for item in rooms if type(item) is dict}
            ),
            direct=unread_entry(direct) if type(direct) is dict else None,
            conversations=MappingProxyType(
                {
                    str(item["with"]): unread_entry(item)
                    for item in conversations
                    if type(item) is dict
                }
            ),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ValueError(f"malformed unread reply: {exc!r}") from None


def _span(value: object) -> tuple[int, int]:
    if not isinstance(value, list) or len(value) != 2:
        raise ValueError(f"a highlight is [start, end], not {value!r}")
    start, end = value
    if type(start) is not int or type(end) is not int:
        raise ValueError(f"a highlight is two numbers, not {value!r}")
    return start, end


def search_result(item: dict[str, Any]) -> SearchResult:
    """One result of a ``search`` answer: in a room, or ``direct`` with ``with``.

    Raises KeyError, TypeError or ValueError for a result without its seq,
    its message id or its conversation.
    """
    direct = item.get("direct") is True
    highlights = item.get("highlights") or []
    if not isinstance(highlights, list):
        raise TypeError("highlights is a list")
    return SearchResult(
        seq=int(item["seq"]),
        message_id=str(item["message_id"]),
        sender=str(item.get("from", "")),
        at=_time(item.get("at")),
        message=str(item.get("message", "")),
        snippet=str(item.get("snippet", "")),
        highlights=tuple(_span(span) for span in highlights),
        room=None if direct else str(item["room"]),
        with_=str(item["with"]) if direct else None,
        thread=_optional_str(item.get("thread")),
        edited_at=_time(item.get("edited_at")),
    )


def search_page(payload: dict[str, Any]) -> SearchPage:
    """The :class:`SearchPage` of a ``search`` answer (or ``GET /api/search``).

    Raises:
        ValueError: a result lacks its seq, message id or conversation, or
            the results or a highlight are not lists.
    """
    try:
        results = payload.get("results")
        if not isinstance(results, list):
            raise TypeError("results is a list")
        cursor = payload.get("cursor")
        return SearchPage(
            [search_result(item) for item in results],
            str(cursor) if cursor else None,
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ValueError(f"malformed search reply: {exc!r}") from None


def server_error(payload: dict[str, Any], fid: str | None = None) -> ServerError:
    """The :class:`ServerError` of an ``error`` payload (``until``, ``reason`` when given)."""
    reason = payload.get("reason")
    return ServerError(
        str(payload.get("code", "")),
        str(payload.get("message", "")),
        fid,
        _time(payload.get("until")),
        reason if isinstance(reason, str) and reason else None,
    )


def removed(payload: dict[str, Any]) -> Removed:
    """The :class:`Removed` of a ``removed`` frame.

    Raises KeyError or TypeError for a payload without its room.
    """
    room = payload["room"]
    if not isinstance(room, str):
        raise TypeError("room is a string")
    reason = payload.get("reason")
    return Removed(
        room,
        str(payload.get("by") or ""),
        reason if isinstance(reason, str) and reason else None,
        payload.get("banned") is True,
        _time(payload.get("until")),
    )


def room_updated(payload: dict[str, Any]) -> RoomUpdated:
    """The :class:`RoomUpdated` of a ``room`` frame.

    Raises KeyError, TypeError or ValueError for a payload without its room
    or with a slow mode that is not a number.
    """
    room = payload["room"]
    if not isinstance(room, str):
        raise TypeError("room is a string")
    owner = payload.get("owner")
    slow = payload.get("slow_mode") or 0
    if type(slow) is not int:
        raise TypeError("slow_mode is a number of seconds")
    return RoomUpdated(
        room=room,
        private=payload.get("private") is True,
        owner=owner if isinstance(owner, str) and owner else None,
        moderators=_names(payload.get("moderators")),
        topic=str(payload.get("topic") or ""),
        title=str(payload.get("title") or room),
        slow_mode=slow,
        receipts=payload.get("receipts") is not False,
    )


#: The server frames that change a message, and ``mention``.
CHANGE_TYPES: Final = frozenset({"edit", "delete", "reaction", "mention"})


def direct_item(item: dict[str, Any]) -> Event:
    """One item of ``direct_history`` (its ``type`` says which): a message or a change.

    An item of a type this client does not know is a :class:`Reply` (with
    the item as payload), so that its seq still takes its place in the stream.

    Raises:
        ValueError: the item lacks the fields its type needs.
    """
    kind = str(item.get("type", "direct"))
    try:
        if kind in ("direct", "file"):
            return direct_message(item)
        event = change_event(kind, item)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"malformed {kind} item: {exc!r}") from None
    return event if event is not None else Reply(kind, item, None)


def parse_server_frame(data: str | bytes) -> Event:
    """One text frame from the server as an event.

    Raises:
        ValueError: the frame is not a JSON object with a string ``type``
            (or a message or change frame lacks its room, seq or another field).
    """
    try:
        frame = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if type(frame) is not dict or not isinstance(frame.get("type"), str):
        raise ValueError("a server frame is a JSON object with a type")
    kind: str = frame["type"]
    payload = frame.get("payload")
    if type(payload) is not dict:
        payload = {}
    fid = frame.get("id") if isinstance(frame.get("id"), str) else None
    stamp = frame.get("timestamp")
    try:
        if kind == "chat" or (kind == "file" and "room" in payload):
            return room_message(payload, stamp)
        if kind == "direct" or kind == "file":
            return direct_message(payload, stamp)
        if kind in CHANGE_TYPES:
            event = change_event(kind, payload, stamp)
            assert event is not None
            return event
        if kind == "presence" and "event" in payload:
            return Presence(str(payload["room"]), str(payload["user"]), str(payload["event"]))
        if kind == "typing":
            return Typing(str(payload["room"]), str(payload["user"]))
        if kind == "receipt":
            return receipt(payload)
        if kind == "read" and fid is None:
            # With an id it answers this client's own read: a Reply, for the sender.
            return read_marker(payload)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"malformed {kind} frame: {exc!r}") from None
    if kind == "error" and fid is None:
        return server_error(payload)
    try:
        if kind == "removed" and fid is None:
            return removed(payload)
        if kind == "room" and fid is None:
            return room_updated(payload)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"malformed {kind} frame: {exc!r}") from None
    return Reply(kind, payload, fid)
