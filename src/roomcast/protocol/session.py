"""The per-connection state machine, without I/O.

A :class:`Session` is fed each frame a client sends and answers with one
*outcome*: a :class:`Reply` the transport sends straight back, a
:class:`Close` that ends the connection, or a validated client frame that the
node must carry out (it needs the store, the broker or other connections).
The session keeps what is known about one connection: who it is, which rooms
it is in, how many times it failed to authenticate, and its rate limits
(the time is passed in, so the session still reads no clock). Like websockets'
``Protocol``, it is tested by feeding it bytes, with no socket and no loop.

A frame is decided in two steps, because a connection's frames may wait:
while one of its frames waits for the store, the frames behind it are kept
until it is done. :meth:`Session.arrive_text` (or ``arrive_binary``) is the
step taken when the frame arrives: parse it and take it from its rate limit,
so a flood is refused as it comes, not when it reaches the front of the
queue. :meth:`Session.decide` is the step taken when the frame's turn comes:
the checks that depend on what the frames before it did (a join still
pending, an ``auth`` not yet answered). ``receive_text``/``receive_binary``
take both steps at once, for a frame that waits behind nothing.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

from ..exceptions import ProtocolError
from ..ratelimit import ABUSE_AFTER, Bucket, RateLimiter
from .codes import CloseCode, ErrorCode
from .messages import (
    AuthFrame,
    Chat,
    ClientFrame,
    Direct,
    DirectHistoryRequest,
    ErrorReply,
    FileHeader,
    Join,
    Leave,
    Ping,
    Pong,
    Read,
    SearchRequest,
    SendBack,
    SentBack,
    ServerFrame,
    Typing,
    UnreadRequest,
    UserInfo,
    parse_binary_frame,
    parse_client_frame,
)

__all__ = [
    "MAX_AUTH_FAILURES",
    "Arrival",
    "Close",
    "Outcome",
    "Reply",
    "Session",
    "State",
]

#: Failed ``auth`` frames after which the connection is closed with 1008.
MAX_AUTH_FAILURES: Final = 3

#: Frame types drawn from the commands bucket; every other frame (chat,
#: direct, typing, files, echo, unknown types, malformed frames) is a message.
COMMAND_TYPES: Final = frozenset(
    {"join", "leave", "history", "direct_history", "presence", "ping", "auth", "read", "unread"}
)


class State(enum.IntEnum):
    """Where a connection is in its life."""

    OPEN = 1
    CLOSED = 2


OPEN: Final = State.OPEN
CLOSED: Final = State.CLOSED


@dataclass(frozen=True, slots=True)
class Reply:
    """Send ``frame`` back to this connection, answering the frame ``id``."""

    frame: ServerFrame
    id: str | None = None


@dataclass(frozen=True, slots=True)
class Close:
    """Close this connection with ``code``."""

    code: CloseCode
    reason: str


Outcome = Reply | Close | ClientFrame | FileHeader
#: What the first step makes of a frame: the parsed frame (or file header) to
#: decide in its turn, or a refusal (an error reply, a close for abuse).
Arrival = Reply | Close | ClientFrame | FileHeader


def _error(code: ErrorCode, message: str, frame_id: str | None) -> Reply:
    return Reply(ErrorReply(code, message), frame_id)


class Session:
    """What the server knows about one connection, and its rules.

    Args:
        session_id: the connection's id, as sent in the welcome frame.
        user: who the connection is; ``None`` until it authenticates (only
            when guests are not allowed).
        max_rooms: how many rooms the connection may be in at once.
        max_message_chars: the longest chat or direct message text.
        rate_limit: messages a second (commands: five times as many); 0 is
            unlimited.
        rate_burst: messages allowed at once (commands: five times as many).
    """

    __slots__ = (
        "auth_failures",
        "id",
        "limiter",
        "max_message_chars",
        "max_rooms",
        "rooms",
        "state",
        "user",
    )

    def __init__(
        self,
        session_id: str,
        user: UserInfo | None,
        *,
        max_rooms: int = 128,
        max_message_chars: int = 4000,
        rate_limit: float = 20.0,
        rate_burst: int = 40,
    ) -> None:
        self.id = session_id
        self.user = user
        self.state = OPEN
        self.rooms: set[str] = set()
        self.auth_failures = 0
        self.max_rooms = max_rooms
        self.max_message_chars = max_message_chars
        #: None when rate limits are off.
        self.limiter = RateLimiter(rate_limit, rate_burst) if rate_limit > 0 else None

    # -- input ---------------------------------------------------------------

    def receive_text(self, data: str | bytes, now: float) -> Outcome:
        """Handle one text frame received at ``now`` (seconds); return what to do about it.

        Both steps at once: ``decide(arrive_text(data, now))``, written out
        because this is every chat frame's path and the call between the
        steps would cost each one.
        """
        try:
            frame = parse_client_frame(data, max_message_chars=self.max_message_chars)
        except ProtocolError as exc:
            return self._malformed(exc, now)
        if self.limiter is not None:
            bucket = Bucket.COMMANDS if frame.TYPE in COMMAND_TYPES else Bucket.MESSAGES
            limited = self._limit(bucket, now, frame.id)
            if limited is not None:
                return limited
        return self._check(frame)

    def receive_binary(self, data: bytes, now: float) -> Outcome:
        """Handle one binary frame (a file) received at ``now``: check its header and sender."""
        return self.decide(self.arrive_binary(data, now))

    def arrive_text(self, data: str | bytes, now: float) -> Arrival:
        """The first step for a text frame that arrived at ``now``: parse it, rate limit it.

        Returns the parsed frame, for :meth:`decide` in its turn, or the
        refusal (``invalid_json``, ``rate_limited``, ... or a close for abuse).
        """
        try:
            frame = parse_client_frame(data, max_message_chars=self.max_message_chars)
        except ProtocolError as exc:
            return self._malformed(exc, now)
        if self.limiter is not None:
            bucket = Bucket.COMMANDS if frame.TYPE in COMMAND_TYPES else Bucket.MESSAGES
            limited = self._limit(bucket, now, frame.id)
            if limited is not None:
                return limited
        return frame

    def arrive_binary(self, data: bytes, now: float) -> Arrival:
        """The first step for a binary frame: parse its header, rate limit it (a message)."""
        try:
            header = parse_binary_frame(data)
        except ProtocolError as exc:
            return self._malformed(exc, now)
        limited = self._limit(Bucket.MESSAGES, now, header.id)
        return header if limited is None else limited

    def decide(self, arrived: Arrival) -> Outcome:
        """The second step, in the frame's turn: the checks on who may do what, where.

        They read the session as the frames before this one left it (rooms
        joined, the user signed in), so they wait for those frames. A
        refusal from the first step is passed on as it is.
        """
        if isinstance(arrived, Reply | Close):
            return arrived
        if isinstance(arrived, FileHeader):
            return self._check_file(arrived)
        return self._check(arrived)

    def _malformed(self, exc: ProtocolError, now: float) -> Reply | Close:
        """A frame that does not parse: it still costs a message, then it is refused."""
        limited = self._limit(Bucket.MESSAGES, now, exc.frame_id)
        return limited or Reply(ErrorReply.from_exception(exc), exc.frame_id)

    def _check_file(self, header: FileHeader) -> Outcome:
        if self.user is None or self.user.guest:
            return _error(ErrorCode.FORBIDDEN, "files need a registered user", header.id)
        if header.room is not None and header.room not in self.rooms:
            return _error(ErrorCode.NOT_MEMBER, f"not a member of {header.room}", header.id)
        return header

    def _limit(self, bucket: Bucket, now: float, frame_id: str | None) -> Reply | Close | None:
        """None when the frame may go on; else the refusal, or the close for abuse."""
        limiter = self.limiter
        if limiter is None:
            return None
        wait = limiter.take(bucket, now)
        if wait <= 0.0:
            return None
        if limiter.abusive(now):
            return Close(CloseCode.POLICY_VIOLATION, f"rate limit exceeded for {ABUSE_AFTER:g} s")
        return Reply(ErrorReply.rate_limited("too many frames; slow down", wait), frame_id)

    def _check(self, frame: ClientFrame) -> Outcome:
        fid = frame.id
        if isinstance(frame, Ping):
            return Reply(Pong(frame.payload), fid)
        if self.user is None and not isinstance(frame, AuthFrame):
            return _error(ErrorCode.FORBIDDEN, "authenticate first", fid)
        if isinstance(frame, Chat | Typing):
            if frame.room not in self.rooms:
                return _error(ErrorCode.NOT_MEMBER, f"not a member of {frame.room}", fid)
        elif isinstance(frame, SendBack):
            return Reply(SentBack(frame.frame), fid)
        elif isinstance(frame, Join):
            if frame.room not in self.rooms and len(self.rooms) >= self.max_rooms:
                return _error(
                    ErrorCode.FORBIDDEN,
                    f"a connection can be in at most {self.max_rooms} rooms",
                    fid,
                )
        elif isinstance(frame, Leave):
            if frame.room not in self.rooms:
                return _error(ErrorCode.NOT_MEMBER, f"not a member of {frame.room}", fid)
        elif isinstance(frame, Direct | DirectHistoryRequest):
            assert self.user is not None
            if self.user.guest:
                return _error(ErrorCode.FORBIDDEN, "direct messages need a registered user", fid)
        elif isinstance(frame, Read):
            assert self.user is not None
            if frame.room is not None:
                if frame.room not in self.rooms:
                    return _error(ErrorCode.NOT_MEMBER, f"not a member of {frame.room}", fid)
            elif self.user.guest:
                return _error(ErrorCode.FORBIDDEN, "direct messages need a registered user", fid)
        elif isinstance(frame, SearchRequest) and frame.direct:
            assert self.user is not None
            if self.user.guest:
                return _error(ErrorCode.FORBIDDEN, "direct messages need a registered user", fid)
        elif isinstance(frame, UnreadRequest):
            assert self.user is not None
            if self.user.guest:
                return _error(ErrorCode.FORBIDDEN, "unread counts need a registered user", fid)
        return frame

    # -- what the node reports back -----------------------------------------

    def joined(self, room: str) -> None:
        """The connection is now a member of ``room``."""
        self.rooms.add(room)

    def left(self, room: str) -> None:
        """The connection is no longer a member of ``room``."""
        self.rooms.discard(room)

    def authenticated(self, user: UserInfo) -> None:
        """The connection is now ``user``."""
        self.user = user
        self.auth_failures = 0

    def auth_failed(self, message: str, frame_id: str | None) -> tuple[Reply, Close | None]:
        """An ``auth`` was refused: the error to send, and a close on the last strike."""
        self.auth_failures += 1
        reply = _error(ErrorCode.AUTH_FAILED, message, frame_id)
        if self.auth_failures >= MAX_AUTH_FAILURES:
            return reply, Close(CloseCode.POLICY_VIOLATION, "too many failed auth attempts")
        return reply, None

    def closed(self) -> set[str]:
        """The connection ended; return the rooms it was in."""
        self.state = CLOSED
        rooms, self.rooms = self.rooms, set()
        return rooms
