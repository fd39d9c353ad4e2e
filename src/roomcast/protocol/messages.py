"""Wire messages: a tagged union of small frozen classes, parsed and encoded here.

Everything a client may send is parsed by :func:`parse_client_frame` into one
of the :data:`ClientFrame` classes, or refused with a
:class:`~roomcast.exceptions.ProtocolError`. Everything the server sends is a
:data:`ServerFrame` turned into JSON bytes by :func:`encode`. No other module
builds or reads frame dicts.

This module does no I/O.
"""

from __future__ import annotations

import math
import re
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, Final

import orjson

from ..exceptions import (
    Banned,
    DomainError,
    Forbidden,
    InvalidRequest,
    Muted,
    NameTaken,
    NoSuchMessage,
    NotFound,
    ProtocolError,
    QuotaExceeded,
    RoomExists,
    TooFrequent,
    TooLarge,
    UnknownUser,
)
from ..model import (
    FOREVER_MS,
    Change,
    ChatMessage,
    DirectMessage,
    FileInfo,
    Mention,
    Quote,
    RoomSettings,
    SearchHit,
    Unread,
    UserInfo,
)
from .codes import ErrorCode

__all__ = [
    "Removed",
    "RoomUpdate",
    "iso_ms",
    "room_settings_json",
    "until_text",
    "DEFAULT_HISTORY_LIMIT",
    "DEFAULT_SEARCH_LIMIT",
    "LOBBY",
    "MAX_FILE_HEADER",
    "MAX_HISTORY_LIMIT",
    "MAX_SEARCH_LIMIT",
    "SearchReply",
    "SearchRequest",
    "parse_search",
    "valid_name",
    "MAX_ID_LENGTH",
    "MAX_SEQ",
    "ROOM_NAME",
    "Ack",
    "AuthFrame",
    "AuthOk",
    "Chat",
    "ChatMessage",
    "ClientFrame",
    "Direct",
    "DirectHistoryReply",
    "DirectHistoryRequest",
    "DirectMessage",
    "Delete",
    "Edit",
    "React",
    "SendBack",
    "SentBack",
    "ErrorReply",
    "FileHeader",
    "FileInfo",
    "HistoryReply",
    "HistoryRequest",
    "Join",
    "Joined",
    "Leave",
    "Left",
    "MemberList",
    "Ping",
    "Pong",
    "PresenceEvent",
    "PresenceRequest",
    "Read",
    "ReadEvent",
    "Receipt",
    "UnreadReply",
    "UnreadRequest",
    "ServerFrame",
    "Welcome",
    "Typing",
    "TypingEvent",
    "UserInfo",
    "encode",
    "format_timestamp",
    "now_ms",
    "parse_binary_frame",
    "parse_client_frame",
    "valid_room",
]

LOBBY: Final = "lobby"
MAX_ID_LENGTH: Final = 64
#: The largest JSON header of a binary (file) frame, in bytes.
MAX_FILE_HEADER: Final = 4096
MAX_HISTORY_LIMIT: Final = 100
#: The largest seq a client may name (``before``, ``since``): far past any
#: real stream, yet inside the signed 64-bit integers SQLite and PostgreSQL
#: bind (2**64 raised OverflowError in the store), and the HTTP API's bound.
MAX_SEQ: Final = 2**62
DEFAULT_HISTORY_LIMIT: Final = 50
#: Results in a page of search, unless asked otherwise, and the most.
DEFAULT_SEARCH_LIMIT: Final = 20
MAX_SEARCH_LIMIT: Final = 50
#: The longest search query and cursor a frame may carry (the query's own
#: rules are the search's: roomcast.query).
MAX_QUERY_LENGTH: Final = 256
MAX_CURSOR_LENGTH: Final = 512
MAX_NAME_LENGTH: Final = 64
#: The longest reaction a frame may carry, in characters (a family emoji
#: with skin tones is 11 code points; a ``:name:`` at most 34).
MAX_EMOJI_LENGTH: Final = 64
ROOM_NAME: Final = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")

_loads = orjson.loads
_dumps = orjson.dumps


def valid_room(name: object) -> bool:
    """Whether ``name`` is a valid room name (``[a-z0-9][a-z0-9_-]{0,63}``)."""
    return isinstance(name, str) and ROOM_NAME.fullmatch(name) is not None


# --------------------------------------------------------------------------
# Client -> server


@dataclass(frozen=True, slots=True)
class Ping:
    """``ping``: answered with a ``pong`` carrying the same payload."""

    TYPE: ClassVar[str] = "ping"
    id: str | None
    payload: Any


@dataclass(frozen=True, slots=True)
class AuthFrame:
    """``auth``: a token, or a guest nickname."""

    TYPE: ClassVar[str] = "auth"
    id: str | None
    token: str | None = None
    guest: str | None = None


@dataclass(frozen=True, slots=True)
class Chat:
    """``chat``: a message for a room the sender has joined, perhaps answering another."""

    TYPE: ClassVar[str] = "chat"
    id: str | None
    room: str
    message: str
    reply_to: str | None = None


@dataclass(frozen=True, slots=True)
class Edit:
    """``edit``: new text for one of the sender's messages."""

    TYPE: ClassVar[str] = "edit"
    id: str | None
    message_id: str
    message: str


@dataclass(frozen=True, slots=True)
class Delete:
    """``delete``: take a message back (its text and file are erased)."""

    TYPE: ClassVar[str] = "delete"
    id: str | None
    message_id: str


@dataclass(frozen=True, slots=True)
class React:
    """``react`` (``added``) or ``unreact``: the sender's reaction to a message."""

    TYPE: ClassVar[str] = "react"
    id: str | None
    message_id: str
    emoji: str
    added: bool


@dataclass(frozen=True, slots=True)
class Join:
    """``join``: enter a room, optionally replaying messages after ``since``."""

    TYPE: ClassVar[str] = "join"
    id: str | None
    room: str
    since: int | None = None


@dataclass(frozen=True, slots=True)
class Leave:
    """``leave``: leave a room."""

    TYPE: ClassVar[str] = "leave"
    id: str | None
    room: str


@dataclass(frozen=True, slots=True)
class Direct:
    """``direct``: a private message to one user."""

    TYPE: ClassVar[str] = "direct"
    id: str | None
    to: str
    message: str


@dataclass(frozen=True, slots=True)
class Typing:
    """``typing``: tell a room's other members the sender is typing."""

    TYPE: ClassVar[str] = "typing"
    id: str | None
    room: str


@dataclass(frozen=True, slots=True)
class HistoryRequest:
    """``history``: a page of a room's stored messages, oldest first."""

    TYPE: ClassVar[str] = "history"
    id: str | None
    room: str
    before: int | None = None
    limit: int = DEFAULT_HISTORY_LIMIT
    #: Only this thread: its root (this message id) and its replies.
    thread: str | None = None
    #: Messages around this seq instead of before ``before``.
    around: int | None = None


@dataclass(frozen=True, slots=True)
class DirectHistoryRequest:
    """``direct_history``: a page of the user's own direct messages.

    With ``since``, the messages after that seq, oldest first (to resume);
    otherwise the ``limit`` messages before ``before`` (to scroll back).
    """

    TYPE: ClassVar[str] = "direct_history"
    id: str | None
    before: int | None = None
    since: int | None = None
    limit: int = DEFAULT_HISTORY_LIMIT
    #: Messages around this seq (of the user's stream) instead.
    around: int | None = None
    #: Only the conversation with this user (not with ``since``).
    peer: str | None = None


@dataclass(frozen=True, slots=True)
class PresenceRequest:
    """``presence``: the members of a room."""

    TYPE: ClassVar[str] = "presence"
    id: str | None
    room: str


@dataclass(frozen=True, slots=True)
class Read:
    """``read``: the user has read a room, or direct messages, up to ``seq``.

    ``room`` None is the user's direct stream: all of it, or only the
    conversation with ``peer``.
    """

    TYPE: ClassVar[str] = "read"
    id: str | None
    seq: int
    room: str | None = None
    peer: str | None = None


@dataclass(frozen=True, slots=True)
class UnreadRequest:
    """``unread``: the user's unread counts in every room and direct conversation."""

    TYPE: ClassVar[str] = "unread"
    id: str | None


@dataclass(frozen=True, slots=True)
class SearchRequest:
    """``search``: messages the user may read that match a query, newest (or best) first."""

    TYPE: ClassVar[str] = "search"
    id: str | None
    q: str
    room: str | None = None
    #: Only the user's direct conversations; with ``peer``, the one with that user.
    direct: bool = False
    peer: str | None = None
    sender: str | None = None
    #: Stored strictly after / before these times (epoch ms).
    after_ms: int | None = None
    before_ms: int | None = None
    limit: int = DEFAULT_SEARCH_LIMIT
    cursor: str | None = None
    relevance: bool = False


@dataclass(frozen=True, slots=True)
class SendBack:
    """``echo``, or any type the server does not handle: sent back whole."""

    TYPE: ClassVar[str] = "echo"
    id: str | None
    frame: dict[str, Any]


ClientFrame = (
    Ping
    | AuthFrame
    | Chat
    | Join
    | Leave
    | Direct
    | Edit
    | Delete
    | React
    | Typing
    | HistoryRequest
    | DirectHistoryRequest
    | Read
    | UnreadRequest
    | SearchRequest
    | PresenceRequest
    | SendBack
)


def _fail(code: ErrorCode, message: str, frame_id: str | None) -> ProtocolError:
    return ProtocolError(code, message, frame_id=frame_id)


def _room(payload: dict[str, Any], frame_id: str | None, *, default: str | None = None) -> str:
    room = payload.get("room", default)
    if room is None:
        raise _fail(ErrorCode.INVALID_MESSAGE, "payload.room is required", frame_id)
    if not valid_room(room):
        raise _fail(
            ErrorCode.INVALID_MESSAGE,
            "payload.room must match [a-z0-9][a-z0-9_-]{0,63}",
            frame_id,
        )
    assert isinstance(room, str)
    return room


def _text(payload: dict[str, Any], key: str, frame_id: str | None, max_chars: int) -> str:
    text = payload.get(key)
    if not isinstance(text, str):
        raise _fail(ErrorCode.INVALID_MESSAGE, f"payload.{key} must be a string", frame_id)
    if not text.strip():
        raise _fail(ErrorCode.INVALID_MESSAGE, f"payload.{key} must not be empty", frame_id)
    if "\x00" in text:
        # Legal JSON, but no database keeps it the same way (PostgreSQL refuses it).
        raise _fail(ErrorCode.INVALID_MESSAGE, f"payload.{key} must not contain U+0000", frame_id)
    if len(text) > max_chars:
        raise _fail(
            ErrorCode.TOO_LARGE,
            f"payload.{key} is longer than {max_chars} characters",
            frame_id,
        )
    return text


def valid_name(name: object) -> bool:
    """Whether ``name`` can be a user's name to look up: 1 to :data:`MAX_NAME_LENGTH`
    printable characters (no control character, which no name has and PostgreSQL
    cannot even compare, no lone surrogate)."""
    return (
        isinstance(name, str)
        and 0 < len(name) <= MAX_NAME_LENGTH
        and name.isprintable()
        and not any("\ud800" <= char <= "\udfff" for char in name)
    )


def _name(payload: dict[str, Any], key: str, frame_id: str | None) -> str:
    name = payload.get(key)
    if not valid_name(name):
        raise _fail(
            ErrorCode.INVALID_MESSAGE,
            f"payload.{key} must be a name of 1 to {MAX_NAME_LENGTH} printable characters",
            frame_id,
        )
    assert isinstance(name, str)
    return name


def _seq(
    payload: dict[str, Any],
    key: str,
    frame_id: str | None,
    *,
    minimum: int,
    maximum: int | None = MAX_SEQ,
) -> int | None:
    """An optional integer field in ``[minimum, maximum]`` (no upper bound when None).

    The bound is checked here, where the frame is refused with a message
    naming the field, rather than by the store, which cannot bind a number
    past 64 bits.
    """
    value = payload.get(key)
    if value is None:
        return None
    if type(value) is not int or value < minimum or (maximum is not None and value > maximum):
        bound = f">= {minimum}" if maximum is None else f"between {minimum} and {maximum}"
        raise _fail(
            ErrorCode.INVALID_MESSAGE, f"payload.{key} must be an integer {bound}", frame_id
        )
    return value


def parse_client_frame(data: str | bytes, *, max_message_chars: int = 4000) -> ClientFrame:
    """Parse one text frame from a client.

    Args:
        data: the frame's text (or its UTF-8 bytes).
        max_message_chars: the longest ``chat``/``direct`` text accepted.

    Raises:
        ProtocolError: ``invalid_json`` when ``data`` is not JSON,
            ``invalid_message`` when it is not a valid frame, ``too_large``
            when a message text is too long. ``frame_id`` is set whenever the
            frame carried a usable ``id``.
    """
    try:
        obj = _loads(data)
    except orjson.JSONDecodeError:
        raise _fail(ErrorCode.INVALID_JSON, "frame is not valid JSON", None) from None
    if type(obj) is not dict:
        raise _fail(ErrorCode.INVALID_MESSAGE, "frame must be a JSON object", None)

    frame_id = obj.get("id")
    if frame_id is not None and (
        type(frame_id) is not str or len(frame_id) > MAX_ID_LENGTH or "\x00" in frame_id
    ):
        raise _fail(
            ErrorCode.INVALID_MESSAGE,
            f"id must be a string of at most {MAX_ID_LENGTH} characters, without U+0000",
            None,
        )
    kind = obj.get("type")
    if type(kind) is not str:
        raise _fail(ErrorCode.INVALID_MESSAGE, "type must be a string", frame_id)

    payload = obj.get("payload")
    if kind == "ping":
        return Ping(frame_id, {} if payload is None else payload)
    parser = _PARSERS.get(kind)
    if parser is None:
        return SendBack(frame_id, obj)
    if payload is None:
        payload = {}
    elif type(payload) is not dict:
        raise _fail(ErrorCode.INVALID_MESSAGE, "payload must be a JSON object", frame_id)
    return parser(payload, frame_id, max_message_chars)


def _message_id(payload: dict[str, Any], key: str, frame_id: str | None) -> str:
    value = payload.get(key)
    if type(value) is not str or not value or len(value) > MAX_ID_LENGTH or "\x00" in value:
        raise _fail(
            ErrorCode.INVALID_MESSAGE,
            f"payload.{key} must be a message id (a string of 1 to {MAX_ID_LENGTH} characters)",
            frame_id,
        )
    return value


def _parse_chat(payload: dict[str, Any], fid: str | None, max_chars: int) -> ClientFrame:
    message = _text(payload, "message", fid, max_chars)
    reply_to = _message_id(payload, "reply_to", fid) if "reply_to" in payload else None
    return Chat(fid, _room(payload, fid, default=LOBBY), message, reply_to)


def _parse_edit(payload: dict[str, Any], fid: str | None, max_chars: int) -> ClientFrame:
    message_id = _message_id(payload, "message_id", fid)
    return Edit(fid, message_id, _text(payload, "message", fid, max_chars))


def _parse_delete(payload: dict[str, Any], fid: str | None, max_chars: int) -> ClientFrame:
    return Delete(fid, _message_id(payload, "message_id", fid))


def _parse_reaction(payload: dict[str, Any], fid: str | None, *, added: bool) -> ClientFrame:
    message_id = _message_id(payload, "message_id", fid)
    emoji = payload.get("emoji")
    if type(emoji) is not str or not emoji or len(emoji) > MAX_EMOJI_LENGTH:
        raise _fail(
            ErrorCode.INVALID_MESSAGE,
            f"payload.emoji must be a string of 1 to {MAX_EMOJI_LENGTH} characters",
            fid,
        )
    return React(fid, message_id, emoji, added)


def _parse_react(payload: dict[str, Any], fid: str | None, max_chars: int) -> ClientFrame:
    return _parse_reaction(payload, fid, added=True)


def _parse_unreact(payload: dict[str, Any], fid: str | None, max_chars: int) -> ClientFrame:
    return _parse_reaction(payload, fid, added=False)


def _parse_auth(payload: dict[str, Any], fid: str | None, max_chars: int) -> ClientFrame:
    token, guest = payload.get("token"), payload.get("guest")
    if (token is None) == (guest is None):
        raise _fail(
            ErrorCode.INVALID_MESSAGE, "auth needs exactly one of payload.token, payload.guest", fid
        )
    if token is not None:
        if not isinstance(token, str) or not token:
            raise _fail(ErrorCode.INVALID_MESSAGE, "payload.token must be a string", fid)
        return AuthFrame(fid, token=token)
    return AuthFrame(fid, guest=_name(payload, "guest", fid))


def _parse_join(payload: dict[str, Any], fid: str | None, max_chars: int) -> ClientFrame:
    return Join(fid, _room(payload, fid), _seq(payload, "since", fid, minimum=0))


def _parse_leave(payload: dict[str, Any], fid: str | None, max_chars: int) -> ClientFrame:
    return Leave(fid, _room(payload, fid))


def _parse_direct(payload: dict[str, Any], fid: str | None, max_chars: int) -> ClientFrame:
    to = _name(payload, "to", fid)
    return Direct(fid, to, _text(payload, "message", fid, max_chars))


def _parse_typing(payload: dict[str, Any], fid: str | None, max_chars: int) -> ClientFrame:
    return Typing(fid, _room(payload, fid))


def _parse_history(payload: dict[str, Any], fid: str | None, max_chars: int) -> ClientFrame:
    room = _room(payload, fid)
    before = _seq(payload, "before", fid, minimum=1)
    around = _seq(payload, "around", fid, minimum=1)
    if before is not None and around is not None:
        raise _fail(
            ErrorCode.INVALID_MESSAGE, "give payload.before or payload.around, not both", fid
        )
    thread = _message_id(payload, "thread", fid) if "thread" in payload else None
    if thread is not None and around is not None:
        raise _fail(
            ErrorCode.INVALID_MESSAGE, "payload.around does not page a thread; use before", fid
        )
    limit = _seq(payload, "limit", fid, minimum=1, maximum=None)  # lowered below
    limit = DEFAULT_HISTORY_LIMIT if limit is None else min(limit, MAX_HISTORY_LIMIT)
    return HistoryRequest(fid, room, before, limit, thread, around)


def _parse_direct_history(payload: dict[str, Any], fid: str | None, max_chars: int) -> ClientFrame:
    before = _seq(payload, "before", fid, minimum=1)
    since = _seq(payload, "since", fid, minimum=0)
    around = _seq(payload, "around", fid, minimum=1)
    if sum(value is not None for value in (before, since, around)) > 1:
        raise _fail(
            ErrorCode.INVALID_MESSAGE,
            "give one of payload.before, payload.since and payload.around",
            fid,
        )
    peer = _name(payload, "with", fid) if payload.get("with") is not None else None
    if peer is not None and since is not None:
        raise _fail(
            ErrorCode.INVALID_MESSAGE,
            "payload.with pages one conversation: give it with before or around, not since",
            fid,
        )
    limit = _seq(payload, "limit", fid, minimum=1, maximum=None)  # lowered below
    limit = DEFAULT_HISTORY_LIMIT if limit is None else min(limit, MAX_HISTORY_LIMIT)
    return DirectHistoryRequest(fid, before, since, limit, around, peer)


def _parse_presence(payload: dict[str, Any], fid: str | None, max_chars: int) -> ClientFrame:
    return PresenceRequest(fid, _room(payload, fid))


def _parse_read(payload: dict[str, Any], fid: str | None, max_chars: int) -> ClientFrame:
    seq = _seq(payload, "seq", fid, minimum=0)
    if seq is None:
        raise _fail(ErrorCode.INVALID_MESSAGE, "payload.seq is required", fid)
    direct = payload.get("direct")
    if direct is None:
        if "with" in payload:
            raise _fail(ErrorCode.INVALID_MESSAGE, "payload.with needs payload.direct", fid)
        return Read(fid, seq, room=_room(payload, fid))
    if direct is not True or "room" in payload:
        raise _fail(
            ErrorCode.INVALID_MESSAGE, "give payload.room, or payload.direct true, not both", fid
        )
    peer = _name(payload, "with", fid) if "with" in payload else None
    return Read(fid, seq, peer=peer)


def _parse_unread(payload: dict[str, Any], fid: str | None, max_chars: int) -> ClientFrame:
    return UnreadRequest(fid)


def _parse_search(payload: dict[str, Any], fid: str | None, max_chars: int) -> ClientFrame:
    return parse_search(payload, fid)


def parse_search(payload: dict[str, Any], fid: str | None = None) -> SearchRequest:
    """A ``search`` frame's payload, or ``GET /api/search``'s query as the same fields.

    The query's own syntax is the search's to check (``roomcast.query``);
    this checks each field's type and bounds.

    Raises:
        ProtocolError: ``invalid_message``, saying which field and why.
    """
    q = payload.get("q")
    if not isinstance(q, str) or not q.strip():
        raise _fail(ErrorCode.INVALID_MESSAGE, "payload.q must be a query to search for", fid)
    if len(q) > MAX_QUERY_LENGTH:
        raise _fail(
            ErrorCode.INVALID_MESSAGE,
            f"payload.q is longer than {MAX_QUERY_LENGTH} characters",
            fid,
        )
    room = _room(payload, fid) if payload.get("room") is not None else None
    direct = payload.get("direct")
    if direct is not None and type(direct) is not bool:
        raise _fail(ErrorCode.INVALID_MESSAGE, "payload.direct must be true or false", fid)
    peer = _name(payload, "with", fid) if payload.get("with") is not None else None
    if peer is not None and not direct:
        raise _fail(ErrorCode.INVALID_MESSAGE, "payload.with needs payload.direct", fid)
    if room is not None and direct:
        raise _fail(ErrorCode.INVALID_MESSAGE, "give payload.room or payload.direct, not both", fid)
    sender = _name(payload, "from", fid) if payload.get("from") is not None else None
    after = _time(payload, "after", fid)
    before = _time(payload, "before", fid)
    limit = _seq(payload, "limit", fid, minimum=1, maximum=None)  # lowered below
    limit = DEFAULT_SEARCH_LIMIT if limit is None else min(limit, MAX_SEARCH_LIMIT)
    cursor = payload.get("cursor")
    if cursor is not None and (
        not isinstance(cursor, str) or not cursor or len(cursor) > MAX_CURSOR_LENGTH
    ):
        raise _fail(
            ErrorCode.INVALID_MESSAGE, "payload.cursor must be the cursor a search gave", fid
        )
    order = payload.get("order", "newest")
    if order not in ("newest", "relevance"):
        raise _fail(ErrorCode.INVALID_MESSAGE, 'payload.order must be "newest" or "relevance"', fid)
    return SearchRequest(
        fid,
        q,
        room,
        bool(direct),
        peer,
        sender,
        after,
        before,
        limit,
        cursor,
        order == "relevance",
    )


_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


def _time(payload: dict[str, Any], key: str, fid: str | None) -> int | None:
    """An optional ISO 8601 time (UTC unless it says otherwise; a date is its
    midnight), as epoch milliseconds."""
    value = payload.get(key)
    if value is None:
        return None
    ms = iso_ms(value)
    if ms is None:
        raise _fail(
            ErrorCode.INVALID_MESSAGE,
            f'payload.{key} must be an ISO 8601 time, like "2026-12-01T10:00:00Z"',
            fid,
        )
    return ms


def iso_ms(value: object) -> int | None:
    """An ISO 8601 time (UTC unless it says otherwise; a date is its midnight) as
    epoch milliseconds, or None when ``value`` is not one (or out of range)."""
    if not isinstance(value, str) or len(value) > 40:
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    try:
        # In whole milliseconds: a float of seconds times 1000 is off by one for some.
        return (when - _EPOCH) // timedelta(milliseconds=1)
    except (OverflowError, ValueError, OSError):
        return None


_PARSERS: Final = {
    "read": _parse_read,
    "unread": _parse_unread,
    "search": _parse_search,
    "auth": _parse_auth,
    "chat": _parse_chat,
    "join": _parse_join,
    "leave": _parse_leave,
    "direct": _parse_direct,
    "edit": _parse_edit,
    "delete": _parse_delete,
    "react": _parse_react,
    "unreact": _parse_unreact,
    "typing": _parse_typing,
    "history": _parse_history,
    "direct_history": _parse_direct_history,
    "presence": _parse_presence,
}


@dataclass(frozen=True, slots=True)
class FileHeader:
    """The JSON header of a binary (file) frame."""

    id: str | None
    name: str
    mime: str
    room: str | None
    to: str | None
    body_offset: int


_HEADER_LENGTH = struct.Struct(">I")


def parse_binary_frame(data: bytes, *, max_header: int = MAX_FILE_HEADER) -> FileHeader:
    """Parse the header of a binary frame: 4-byte length, JSON header, bytes.

    Raises:
        ProtocolError: ``invalid_message`` for any malformed header.
    """
    if len(data) < 4:
        raise _fail(ErrorCode.INVALID_MESSAGE, "binary frame shorter than its header", None)
    (length,) = _HEADER_LENGTH.unpack_from(data)
    if length == 0 or length > max_header or 4 + length > len(data):
        raise _fail(ErrorCode.INVALID_MESSAGE, "binary frame header length is wrong", None)
    try:
        header = _loads(data[4 : 4 + length])
    except orjson.JSONDecodeError:
        raise _fail(ErrorCode.INVALID_MESSAGE, "binary frame header is not JSON", None) from None
    if type(header) is not dict:
        raise _fail(ErrorCode.INVALID_MESSAGE, "binary frame header must be an object", None)
    fid = header.get("id")
    if fid is not None and (type(fid) is not str or len(fid) > MAX_ID_LENGTH or "\x00" in fid):
        raise _fail(ErrorCode.INVALID_MESSAGE, "id must be a short string", None)
    name, mime = header.get("name"), header.get("mime")
    if not isinstance(name, str) or not name or len(name) > 255:
        raise _fail(ErrorCode.INVALID_MESSAGE, "header.name must be a file name", fid)
    if not isinstance(mime, str) or not mime or len(mime) > 255:
        raise _fail(ErrorCode.INVALID_MESSAGE, "header.mime must be a media type", fid)
    room, to = header.get("room"), header.get("to")
    if (room is None) == (to is None):
        raise _fail(ErrorCode.INVALID_MESSAGE, "header needs exactly one of room, to", fid)
    if room is not None:
        room = _room(header, fid)
    else:
        to = _name(header, "to", fid)
    return FileHeader(fid, name, mime, room, to, 4 + length)


# --------------------------------------------------------------------------
# Server -> client


@dataclass(frozen=True, slots=True)
class Welcome:
    """The welcome frame, sent first on every connection."""

    TYPE: ClassVar[str] = "system"
    session: str
    user: UserInfo
    heartbeat: float
    message: str = "Connected to WebSocket server"

    def payload(self) -> dict[str, Any]:
        return {
            "message": self.message,
            "session": self.session,
            "user": _user_dict(self.user),
            "heartbeat": int(self.heartbeat) if self.heartbeat.is_integer() else self.heartbeat,
        }


@dataclass(frozen=True, slots=True)
class Pong:
    """The answer to ``ping``."""

    TYPE: ClassVar[str] = "pong"
    data: Any

    def payload(self) -> Any:
        return self.data


@dataclass(frozen=True, slots=True)
class AuthOk:
    """A successful ``auth``."""

    TYPE: ClassVar[str] = "auth"
    user: UserInfo

    def payload(self) -> dict[str, Any]:
        return {"ok": True, "user": _user_dict(self.user)}


@dataclass(frozen=True, slots=True)
class Ack:
    """Confirms a client frame: for messages, that it is stored."""

    TYPE: ClassVar[str] = "ack"
    message_id: str | None = None
    room: str | None = None
    seq: int | None = None

    def payload(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.room is not None:
            out["room"] = self.room
        if self.seq is not None:
            out["seq"] = self.seq
        if self.message_id is not None:
            out["message_id"] = self.message_id
        return out


@dataclass(frozen=True, slots=True)
class Joined:
    """The answer to ``join`` (and the automatic lobby join)."""

    TYPE: ClassVar[str] = "joined"
    room: str
    seq: int
    members: list[str]
    member_count: int
    recovered: bool | None = None
    #: The first seq the replay sends, when a ``since`` asked for more than
    #: one join replays: the older ones are read with ``history``.
    replay_from: int | None = None
    #: What the (registered) user has not read there yet.
    unread: Unread | None = None

    def payload(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "room": self.room,
            "seq": self.seq,
            "members": self.members,
            "member_count": self.member_count,
        }
        if self.recovered is not None:
            out["recovered"] = self.recovered
        if self.replay_from is not None:
            out["replay_from"] = self.replay_from
        if self.unread is not None:
            out["unread"] = self.unread.unread
            out["mentions"] = self.unread.mentions
            out["last_read"] = self.unread.last_read
        return out


@dataclass(frozen=True, slots=True)
class Left:
    """The answer to ``leave``."""

    TYPE: ClassVar[str] = "left"
    room: str
    #: Why the server took the connection out of the room (none for ``leave``).
    reason: str | None = None

    def payload(self) -> dict[str, Any]:
        if self.reason is None:
            return {"room": self.room}
        return {"room": self.room, "reason": self.reason}


@dataclass(frozen=True, slots=True)
class Removed:
    """The connection was taken out of a room: removed, banned, or the room deleted.

    It is out of the room at once: no more of its messages, presence or
    typing reach it, and a ban refuses its next ``join``.
    """

    TYPE: ClassVar[str] = "removed"
    room: str
    #: Who did it (a moderator, the owner or an admin; the user themself when
    #: they left a private room on another connection).
    by: str
    reason: str = ""
    #: Set when it was a ban: ``until`` in the payload (null: until lifted).
    banned: bool = False
    until_ms: int | None = None

    def payload(self) -> dict[str, Any]:
        out: dict[str, Any] = {"room": self.room, "by": self.by}
        if self.reason:
            out["reason"] = self.reason
        if self.banned:
            out["banned"] = True
            out["until"] = until_text(self.until_ms)
        return out


@dataclass(frozen=True, slots=True)
class RoomUpdate:
    """A room's settings or roles changed: its members get the whole of them again."""

    TYPE: ClassVar[str] = "room"
    settings: RoomSettings

    def payload(self) -> dict[str, Any]:
        return room_settings_json(self.settings)


def room_settings_json(settings: RoomSettings) -> dict[str, Any]:
    """A room's settings as the ``room`` frame and ``GET /api/rooms/{room}`` show them."""
    return {
        "room": settings.name,
        "private": settings.private,
        "owner": settings.owner,
        "moderators": sorted(settings.moderators),
        "topic": settings.topic,
        "title": settings.title or settings.name,
        "slow_mode": settings.slow_mode,
        "receipts": settings.receipts,
    }


def until_text(until_ms: int | None) -> str | None:
    """When a ban or mute ends, for the wire: ISO 8601, or None for no end."""
    if until_ms is None or until_ms >= FOREVER_MS:
        return None
    return format_timestamp(until_ms)


@dataclass(frozen=True, slots=True)
class PresenceEvent:
    """A user joined or left a room."""

    TYPE: ClassVar[str] = "presence"
    room: str
    user: str
    event: str

    def payload(self) -> dict[str, Any]:
        return {"room": self.room, "user": self.user, "event": self.event}


@dataclass(frozen=True, slots=True)
class MemberList:
    """The answer to ``presence``: who is in a room."""

    TYPE: ClassVar[str] = "presence"
    room: str
    members: list[str]
    member_count: int

    def payload(self) -> dict[str, Any]:
        return {"room": self.room, "members": self.members, "member_count": self.member_count}


@dataclass(frozen=True, slots=True)
class TypingEvent:
    """Someone in a room is typing."""

    TYPE: ClassVar[str] = "typing"
    room: str
    user: str

    def payload(self) -> dict[str, Any]:
        return {"room": self.room, "user": self.user}


@dataclass(frozen=True, slots=True)
class HistoryReply:
    """A page of history, oldest first."""

    TYPE: ClassVar[str] = "history"
    room: str
    messages: list[ChatMessage]
    has_more: bool
    #: The thread paged, if one was asked for.
    thread: str | None = None
    #: With ``around``: whether newer messages follow the page.
    has_newer: bool | None = None
    #: How far each reader has read (a room with receipts and few readers).
    receipts: dict[str, int] | None = None
    #: For each message on the page, how many readers other than its sender
    #: have read it (a room with receipts and too many readers to name).
    read_counts: list[tuple[int, int]] | None = None

    def payload(self) -> dict[str, Any]:
        out: dict[str, Any] = {"room": self.room}
        if self.thread is not None:
            out["thread"] = self.thread
        out["messages"] = [_history_item(m) for m in self.messages]
        out["has_more"] = self.has_more
        if self.has_newer is not None:
            out["has_newer"] = self.has_newer
        if self.receipts is not None:
            out["receipts"] = self.receipts
        if self.read_counts is not None:
            out["read_counts"] = [list(pair) for pair in self.read_counts]
        return out


@dataclass(frozen=True, slots=True)
class DirectHistoryReply:
    """A page of the user's direct messages, oldest first.

    ``last_seq`` is the newest seq of the user's stream, so a client knows
    whether it has caught up.
    """

    TYPE: ClassVar[str] = "direct_history"
    messages: Sequence[DirectMessage | Change | Mention]
    has_more: bool
    last_seq: int
    #: For each peer on the page who shows receipts: up to which seq of the
    #: user's own stream they have read the conversation.
    receipts: dict[str, int] | None = None
    #: With ``around``: whether newer messages follow the page.
    has_newer: bool | None = None

    def payload(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "messages": [_history_item(m) for m in self.messages],
            "has_more": self.has_more,
        }
        if self.has_newer is not None:
            out["has_newer"] = self.has_newer
        out["last_seq"] = self.last_seq
        if self.receipts is not None:
            out["receipts"] = self.receipts
        return out


@dataclass(frozen=True, slots=True)
class ReadEvent:
    """``read``: the user's read marker moved (to every connection of that user)."""

    TYPE: ClassVar[str] = "read"
    seq: int
    #: What is left unread there after it.
    unread: int
    mentions: int
    room: str | None = None
    #: The direct conversation read (with ``room`` None); None for all of them.
    peer: str | None = None

    def payload(self) -> dict[str, Any]:
        out = _where(self.room, self.peer)
        out["seq"] = self.seq
        out["unread"] = self.unread
        out["mentions"] = self.mentions
        return out


@dataclass(frozen=True, slots=True)
class Receipt:
    """``receipt``: ``user`` has read up to ``seq`` (in a room, or of the receiver's
    own direct stream)."""

    TYPE: ClassVar[str] = "receipt"
    user: str
    seq: int
    room: str | None = None

    def payload(self) -> dict[str, Any]:
        out = _where(self.room, None)
        out["user"] = self.user
        out["seq"] = self.seq
        return out


@dataclass(frozen=True, slots=True)
class UnreadReply:
    """The answer to ``unread`` (and ``GET /api/unread``)."""

    TYPE: ClassVar[str] = "unread"
    rooms: list[Unread]
    #: The whole direct stream, and each conversation in it.
    direct: Unread
    conversations: list[Unread]

    def payload(self) -> dict[str, Any]:
        direct = unread_payload(self.direct)
        direct["conversations"] = [unread_payload(c) for c in self.conversations]
        return {"rooms": [unread_payload(r) for r in self.rooms], "direct": direct}


def unread_payload(unread: Unread) -> dict[str, Any]:
    """One conversation's counts, as ``unread`` lists them."""
    out: dict[str, Any] = {}
    if unread.room is not None:
        out["room"] = unread.room
    elif unread.peer is not None:
        out["with"] = unread.peer
    out["unread"] = unread.unread
    out["mentions"] = unread.mentions
    out["last_read"] = unread.last_read
    out["last_seq"] = unread.last_seq
    out["last_at"] = format_timestamp(unread.last_ms) if unread.last_ms is not None else None
    return out


def _where(room: str | None, peer: str | None) -> dict[str, Any]:
    """Where a read or receipt happened: a room, or the direct stream (one conversation)."""
    if room is not None:
        return {"room": room}
    if peer is not None:
        return {"direct": True, "with": peer}
    return {"direct": True}


@dataclass(frozen=True, slots=True)
class SearchReply:
    """The answer to ``search`` (and ``GET /api/search``): a page of results."""

    TYPE: ClassVar[str] = "search"
    results: list[SearchHit]
    #: Where the next page starts; None on the last page.
    cursor: str | None = None

    def payload(self) -> dict[str, Any]:
        out: dict[str, Any] = {"results": [_search_result(hit) for hit in self.results]}
        if self.cursor is not None:
            out["cursor"] = self.cursor
        return out


def _search_result(hit: SearchHit) -> dict[str, Any]:
    """One search result: where, which message, who and when, its text and snippet."""
    message = hit.message
    out: dict[str, Any]
    if isinstance(message, ChatMessage):
        out = {"room": message.room}
        if message.thread is not None:
            out["thread"] = message.thread
    else:
        out = {"direct": True, "with": hit.peer}
    out["seq"] = message.seq
    out["message_id"] = message.message_id
    out["from"] = message.sender
    out["at"] = format_timestamp(message.ts_ms)
    out["message"] = message.message
    if message.edited_ms is not None:
        out["edited_at"] = format_timestamp(message.edited_ms)
    out["snippet"] = hit.snippet
    out["highlights"] = [list(span) for span in hit.highlights]
    return out


@dataclass(frozen=True, slots=True)
class SentBack:
    """The whole frame a client sent, sent back."""

    TYPE: ClassVar[str] = "echo"
    frame: dict[str, Any]

    def payload(self) -> dict[str, Any]:
        return self.frame


#: The ``error`` code of each refusal of the core, on the WebSocket.
REFUSAL_CODES: Final[dict[type[DomainError], ErrorCode]] = {
    Forbidden: ErrorCode.FORBIDDEN,
    Banned: ErrorCode.BANNED,
    Muted: ErrorCode.MUTED,
    NoSuchMessage: ErrorCode.NOT_FOUND,
    NotFound: ErrorCode.FORBIDDEN,  # a room or file one may not see does not exist for them
    UnknownUser: ErrorCode.UNKNOWN_USER,
    NameTaken: ErrorCode.FORBIDDEN,
    RoomExists: ErrorCode.FORBIDDEN,
    InvalidRequest: ErrorCode.INVALID_MESSAGE,
    TooLarge: ErrorCode.TOO_LARGE,
    QuotaExceeded: ErrorCode.QUOTA_EXCEEDED,
    TooFrequent: ErrorCode.RATE_LIMITED,
}


@dataclass(frozen=True, slots=True)
class ErrorReply:
    """An ``error`` frame; the connection stays open."""

    TYPE: ClassVar[str] = "error"
    code: ErrorCode
    message: str
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_exception(cls, exc: ProtocolError) -> ErrorReply:
        return cls(exc.code, exc.message, exc.extra)

    @classmethod
    def refused(cls, exc: DomainError) -> ErrorReply:
        """The ``error`` frame for a refusal of the core (the WebSocket's one mapping)."""
        if isinstance(exc, TooFrequent):
            return cls.rate_limited(str(exc), exc.retry_after)
        if isinstance(exc, Banned):
            extra: dict[str, Any] = {"until": until_text(exc.until_ms)}
            if exc.reason:
                extra["reason"] = exc.reason
            return cls(ErrorCode.BANNED, str(exc), extra)
        if isinstance(exc, Muted):
            return cls(ErrorCode.MUTED, str(exc), {"until": until_text(exc.until_ms)})
        for kind in type(exc).__mro__:
            code = REFUSAL_CODES.get(kind)
            if code is not None:
                return cls(code, str(exc))
        return cls(ErrorCode.INVALID_MESSAGE, str(exc))

    @classmethod
    def rate_limited(cls, message: str, wait: float) -> ErrorReply:
        """``rate_limited``, telling the client to retry after ``wait`` seconds (at least 1 ms)."""
        return cls(ErrorCode.RATE_LIMITED, message, {"retry_after": max(1, math.ceil(wait * 1000))})

    def payload(self) -> dict[str, Any]:
        out: dict[str, Any] = {"code": str(self.code), "message": self.message}
        out.update(self.extra)
        return out


ServerFrame = (
    Welcome
    | Pong
    | AuthOk
    | ChatMessage
    | DirectMessage
    | Change
    | Mention
    | Ack
    | Joined
    | Left
    | Removed
    | RoomUpdate
    | PresenceEvent
    | MemberList
    | ReadEvent
    | Receipt
    | UnreadReply
    | SearchReply
    | TypingEvent
    | HistoryReply
    | DirectHistoryReply
    | SentBack
    | ErrorReply
)

#: The frames that may carry a file (and are then sent as type ``file``).


def now_ms() -> int:
    """Milliseconds since the epoch, from the wall clock."""
    return time.time_ns() // 1_000_000


_ts_cache: list[Any] = [-1, ""]


def format_timestamp(ms: int) -> str:
    """``2026-11-25T20:12:45.123Z`` for a time in epoch milliseconds."""
    second, millis = divmod(ms, 1000)
    if _ts_cache[0] != second:
        _ts_cache[1] = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        _ts_cache[0] = second
    return f"{_ts_cache[1]}.{millis:03d}Z"


def _user_dict(user: UserInfo) -> dict[str, Any]:
    if user.admin:
        return {"name": user.name, "guest": False, "admin": True}
    return {"name": user.name, "guest": user.guest}


def _file_into(out: dict[str, Any], file: FileInfo) -> None:
    out["name"] = file.name
    out["mime"] = file.mime
    out["size"] = file.size
    if file.url is not None:
        out["url"] = file.url


def _chat_payload(message: ChatMessage) -> dict[str, Any]:
    """A room message as broadcast: type ``chat``, or ``file`` with the file's metadata.

    The fields of a plain chat come first and alone, so the common frame
    stays as short as before; a reply, mentions and the state history
    shows (edited, deleted, reactions, replies) are added only when set.
    """
    if message.file is None:
        out: dict[str, Any] = {"room": message.room}
        if not message.deleted:
            out["message"] = message.message
        out["from"] = message.sender
        out["seq"] = message.seq
        out["message_id"] = message.message_id
    else:
        out = {"room": message.room, "from": message.sender}
        _file_into(out, message.file)
        out["seq"] = message.seq
        out["message_id"] = message.message_id
    if message.reply_to is not None or message.mentions or message.edited_ms is not None:
        _answer_into(out, message)
    if message.deleted or message.reactions or message.reply_count:
        _state_into(out, message)
    return out


def _answer_into(out: dict[str, Any], message: ChatMessage) -> None:
    """Add what a message answers and whom it names, and when it was edited."""
    if message.reply_to is not None:
        out["reply_to"] = message.reply_to
        out["thread"] = message.thread
        if message.quote is not None:
            out["quote"] = _quote(message.quote)
    if message.mentions:
        out["mentions"] = list(message.mentions)
    if message.edited_ms is not None:
        out["edited_at"] = format_timestamp(message.edited_ms)


def _state_into(out: dict[str, Any], message: ChatMessage | DirectMessage) -> None:
    """Add a message's state as history shows it: deleted, reactions, replies."""
    if message.deleted:
        out["deleted"] = True
    if message.reactions:
        out["reactions"] = {emoji: list(names) for emoji, names in message.reactions}
    if isinstance(message, ChatMessage) and message.reply_count:
        out["reply_count"] = message.reply_count


def _quote(quote: Quote) -> dict[str, Any]:
    if quote.deleted:
        return {"from": quote.sender, "deleted": True}
    return {"from": quote.sender, "message": quote.message}


def _direct_payload(message: DirectMessage) -> dict[str, Any]:
    out: dict[str, Any] = {"from": message.sender, "to": message.to}
    if message.file is not None:
        _file_into(out, message.file)
    elif not message.deleted:
        out["message"] = message.message
    out["message_id"] = message.message_id
    if message.seq is not None:
        out["seq"] = message.seq
    if message.mentions:
        out["mentions"] = list(message.mentions)
    if message.edited_ms is not None:
        out["edited_at"] = format_timestamp(message.edited_ms)
    if message.deleted or message.reactions:
        _state_into(out, message)
    return out


#: The wire type of each kind of change.
CHANGE_TYPES: Final = {
    "edit": "edit",
    "delete": "delete",
    "react": "reaction",
    "unreact": "reaction",
}


def _change_payload(change: Change) -> dict[str, Any]:
    """An edit, delete or reaction: in a room, or between the two of a direct conversation."""
    if change.room is not None:
        out: dict[str, Any] = {"room": change.room}
    else:
        assert change.peers is not None
        out = {"from": change.peers[0], "to": change.peers[1]}
    out["message_id"] = change.target
    kind = change.kind
    if kind == "edit":
        out["message"] = change.text
        out["by"] = change.by
    elif kind == "delete":
        out["by"] = change.by
    else:
        out["emoji"] = change.text
        out["user"] = change.by
        out["added"] = kind == "react"
    if change.seq is not None:
        out["seq"] = change.seq
    if kind == "edit":
        out["edited_at"] = format_timestamp(change.ts_ms)
    return out


def _mention_payload(mention: Mention) -> dict[str, Any]:
    return {
        "room": mention.room,
        "message_id": mention.message_id,
        "from": mention.sender,
        "seq": mention.seq,
    }


def _message_type(message: ChatMessage | DirectMessage) -> str:
    return "file" if message.file is not None else _MESSAGE_TYPES[type(message)]


_MESSAGE_TYPES: Final[dict[type, str]] = {ChatMessage: "chat", DirectMessage: "direct"}

#: Each form of the model sent as a frame: its wire ``type``, and its payload.
_MODEL_FRAMES: Final[dict[type, tuple[Callable[[Any], str], Callable[[Any], dict[str, Any]]]]] = {
    ChatMessage: (_message_type, _chat_payload),
    DirectMessage: (_message_type, _direct_payload),
    Change: (lambda change: CHANGE_TYPES[change.kind], _change_payload),
    Mention: (lambda _mention: "mention", _mention_payload),
}


def _history_item(message: ChatMessage | DirectMessage | Change | Mention) -> dict[str, Any]:
    """A stored event as an item of a history page: its payload, type and time."""
    wire_type, payload = _MODEL_FRAMES[type(message)]
    item: dict[str, Any] = payload(message)
    item["type"] = wire_type(message)
    item["timestamp"] = format_timestamp(message.ts_ms)
    return item


def encode(frame: ServerFrame, *, id: str | None = None, ts_ms: int | None = None) -> bytes:
    """Serialize a server frame to the JSON bytes of one text frame.

    Args:
        frame: what to send.
        id: the client frame's ``id`` this frame answers, if any.
        ts_ms: the frame's time; stored messages keep their own, everything
            else is stamped now.
    """
    if ts_ms is None:
        ts_ms = getattr(frame, "ts_ms", None) or now_ms()
    model = _MODEL_FRAMES.get(type(frame))
    if model is None:
        obj: dict[str, Any] = {"type": frame.TYPE}  # type: ignore[union-attr]
        if id is not None:
            obj["id"] = id
        obj["payload"] = frame.payload()  # type: ignore[union-attr]
    else:
        obj = {"type": model[0](frame)}
        if id is not None:
            obj["id"] = id
        obj["payload"] = model[1](frame)
    obj["timestamp"] = format_timestamp(ts_ms)
    return _dumps(obj)
