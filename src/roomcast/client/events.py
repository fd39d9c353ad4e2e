"""What a :class:`~roomcast.client.Client` hands the application: small frozen events.

Server frames are parsed here, in one place (:func:`parse_server_frame`),
into a tagged union of frozen classes; nothing else in the client reads the
JSON. Pure: no I/O.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

__all__ = [
    "ConnectionState",
    "DirectMessage",
    "Event",
    "FileRef",
    "Presence",
    "Reply",
    "RoomMessage",
    "ServerError",
    "StateChange",
    "Typing",
    "parse_server_frame",
]


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
class RoomMessage:
    """A chat (or file) message in a room, delivered once and in seq order."""

    room: str
    sender: str
    text: str
    seq: int
    message_id: str
    timestamp: datetime | None
    file: FileRef | None = None


@dataclass(frozen=True, slots=True)
class DirectMessage:
    """A direct message (or file) to or from this user; ``seq`` is this user's stream."""

    sender: str
    to: str
    text: str
    seq: int
    message_id: str
    timestamp: datetime | None
    file: FileRef | None = None


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
    """An ``error`` frame that answers nothing this client is waiting for."""

    code: str
    message: str
    id: str | None = None


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


Event = RoomMessage | DirectMessage | Presence | Typing | ServerError | StateChange | Reply


def _time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def _file(payload: dict[str, Any]) -> FileRef:
    return FileRef(
        str(payload.get("name", "")),
        str(payload.get("mime", "")),
        int(payload.get("size", 0)),
        str(payload.get("url", "")),
    )


def room_message(item: dict[str, Any], timestamp: object = None) -> RoomMessage:
    """A room message from a ``chat`` or ``file`` payload (or history item)."""
    is_file = item.get("type") == "file" or "mime" in item
    return RoomMessage(
        room=str(item["room"]),
        sender=str(item.get("from", "")),
        text="" if is_file else str(item.get("message", "")),
        seq=int(item["seq"]),
        message_id=str(item.get("message_id", "")),
        timestamp=_time(item.get("timestamp", timestamp)),
        file=_file(item) if is_file else None,
    )


def direct_message(item: dict[str, Any], timestamp: object = None) -> DirectMessage:
    """A direct message from a ``direct`` or ``file`` payload (or history item)."""
    is_file = item.get("type") == "file" or "mime" in item
    return DirectMessage(
        sender=str(item.get("from", "")),
        to=str(item.get("to", "")),
        text="" if is_file else str(item.get("message", "")),
        seq=int(item.get("seq", 0)),
        message_id=str(item.get("message_id", "")),
        timestamp=_time(item.get("timestamp", timestamp)),
        file=_file(item) if is_file else None,
    )


def parse_server_frame(data: str | bytes) -> Event:
    """One text frame from the server as an event.

    Raises:
        ValueError: the frame is not a JSON object with a string ``type``
            (or a message frame lacks its room or seq).
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
        if kind == "presence" and "event" in payload:
            return Presence(str(payload["room"]), str(payload["user"]), str(payload["event"]))
        if kind == "typing":
            return Typing(str(payload["room"]), str(payload["user"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"malformed {kind} frame: {exc!r}") from None
    if kind == "error" and fid is None:
        return ServerError(str(payload.get("code", "")), str(payload.get("message", "")))
    return Reply(kind, payload, fid)
