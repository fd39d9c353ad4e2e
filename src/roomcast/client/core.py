"""The asyncio client: one connection kept alive, nothing lost, nothing repeated.

A :class:`Client` runs one task that connects, signs in, resumes, reads,
and reconnects with backoff when the connection goes, until the application
closes it or the server refuses it for good. Around that task:

- **Sends are queued.** Every frame that expects an answer gets a random
  ``id`` and waits in the outbox until the server answers it; it is written
  at once when connected, and written again, in order and with the same
  ``id``, after every reconnect. The server recognises a resent ``id``, so a
  message is stored and broadcast once however often it was sent. The
  outbox is bounded (:class:`QueueFull` past ``max_queue``).
- **Deliveries are ordered.** Room messages and the changes to them
  (edits, deletes, reactions) carry the room's ``seq``; direct messages,
  their changes and mentions the user's stream seq. The client delivers
  each stream in seq order, exactly once: a seq already delivered is
  dropped, one that comes early waits for the gap to fill. After a
  reconnect it joins every room again with ``since`` = the last seq
  delivered, and asks for the direct stream after its last one; the server
  replays what was missed.
- **Errors that cannot heal stop it**: a refused handshake (401, 403), a
  refused ``auth``, a close with 1008. Everything else (1001 going away,
  1013, a reset, a refused connection, a server that stopped answering
  pings) is retried. An expired token is not such an error: the client
  renews it (:mod:`roomcast.client.signin`). A session the server ended
  (1008 "signed out", "banned", "account deleted") stops it with
  :class:`SignedOut`.

The connection is a WebSocket, or where a proxy refuses the upgrade the
server's HTTP fallback (:mod:`roomcast.client.eventstream`, the same frames
over ``GET /events`` and POSTs): one code path drives either.

Moderation and the account's routes are HTTP calls, in the mixins the
client is made of (:mod:`roomcast.client.moderation`,
:mod:`roomcast.client.signin`).

Logging goes to the ``roomcast.client`` logger; no handler is installed.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import mimetypes
import os
import random
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

import orjson
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from ..protocol.messages import LOBBY
from .backoff import Backoff
from .errors import (
    AuthRefused,
    ClientClosed,
    ClientError,
    QueueFull,
    SendError,
    SignedOut,
    send_error,
)
from .events import (
    ConnectionState,
    DirectMessage,
    Event,
    FileRef,
    Mention,
    MessageDeleted,
    MessageEdited,
    Reaction,
    ReadMarker,
    Removed,
    Reply,
    RoomMessage,
    SearchPage,
    SearchResult,
    ServerError,
    StateChange,
    Unread,
    UnreadCounts,
    direct_item,
    parse_server_frame,
    read_marker,
    room_message,
    search_page,
    unread_counts,
)
from .eventstream import Connection, EventStream, events_url
from .moderation import ModerationMixin

__all__ = [
    "AuthRefused",
    "Client",
    "ClientClosed",
    "ClientError",
    "DirectHistoryPage",
    "HistoryPage",
    "QueueFull",
    "SendError",
    "SeqStream",
    "SignedOut",
    "UnreadBook",
]

logger = logging.getLogger("roomcast.client")

#: Seconds before a send the server could not store (``internal``) is sent
#: again: the first wait, doubling up to the cap (each with jitter).
INTERNAL_RETRY_FIRST: Final = 0.25
INTERNAL_RETRY_CAP: Final = 5.0
#: The key of the direct-message stream among the rooms' streams.
_DIRECT: Final = "@direct"
#: Messages counted unread since the server's last numbers that a conversation
#: remembers (by id, so that a delete can take one back); older ones are forgotten.
LIVE_UNREAD_CAP: Final = 1000
#: No receipts on a history page (the room has them off, or nobody to list).
_NO_RECEIPTS: Final[Mapping[str, int]] = MappingProxyType({})
_NO_READ_COUNTS: Final[Mapping[int, int]] = MappingProxyType({})
#: The ``order`` values of a search: newest first, or best match first.
SEARCH_ORDERS: Final = frozenset({"newest", "relevance"})
#: The close reasons (1008) of a connection whose session the server ended:
#: the client stops with :class:`SignedOut` rather than signing in again.
REVOKED: Final = ("signed out", "banned", "account deleted")
#: The codes that refuse a resume ``join`` for good: the user was removed or
#: banned while away, or the room is gone. The client stops following the room.
SHUT_OUT: Final = frozenset({"banned", "forbidden", "not_member", "not_found"})
#: The ``transport`` option's values: WebSocket, falling back to HTTP when
#: its handshake fails; either one only.
TRANSPORTS: Final = frozenset({"auto", "websocket", "http"})
#: Seconds an "auto" client that fell back to HTTP reconnects over HTTP
#: straight away, rather than trying a WebSocket that was just refused.
HTTP_HOLD: Final = 300.0


@dataclass(slots=True)
class _Outgoing:
    id: str
    data: str | bytes
    future: asyncio.Future[Reply]
    #: Frames that only make sense on the connection they were sent on
    #: (resume joins, catch-up requests) are not sent again after a reconnect.
    once: bool = False
    sent_on: int = -1
    #: Times the server answered ``internal`` (its store failed) so far.
    failures: int = 0


@dataclass(frozen=True, slots=True)
class HistoryPage:
    """A page of a room's history (:meth:`Client.history_page`), oldest first.

    ``has_more``: older messages exist; ``has_newer`` (pages read ``around``
    a seq only): newer ones exist after the page.

    In a room with receipts on, for a "seen by" under the messages:
    ``receipts`` (rooms of at most 100 readers) maps each reader to the seq
    they have read up to; ``read_counts`` (bigger rooms) maps each message's
    seq on the page to how many readers other than its sender have read it.
    Both are empty otherwise; users who hide their receipts are never counted.
    """

    room: str
    messages: list[RoomMessage]
    has_more: bool
    has_newer: bool = False
    receipts: Mapping[str, int] = field(default_factory=lambda: _NO_RECEIPTS, hash=False)
    read_counts: Mapping[int, int] = field(default_factory=lambda: _NO_READ_COUNTS, hash=False)


@dataclass(frozen=True, slots=True)
class DirectHistoryPage:
    """A page of this user's direct messages (:meth:`Client.direct_history_page`), oldest first.

    Seqs are those of this user's own direct stream. ``has_more``: older
    messages exist; ``has_newer`` (pages read ``around`` a seq only): newer
    ones exist after the page. ``last_seq``: the stream's newest seq.
    ``receipts``: for each other user on the page who shows receipts, up to
    which seq of this user's stream they have read the conversation.
    """

    messages: list[DirectMessage]
    has_more: bool
    has_newer: bool = False
    last_seq: int = 0
    receipts: Mapping[str, int] = field(default_factory=lambda: _NO_RECEIPTS, hash=False)


class SeqStream:
    """One ordered stream (a room's seqs, or the user's direct messages). Pure.

    :meth:`offer` takes events in any order, repeated or not, and returns
    the ones that can be delivered now: each seq once, in order, none
    skipped. ``expected`` is the next seq to deliver (None: not known yet).
    A seq offered with no event (None) is passed over: it takes its place
    in the order and delivers nothing.
    """

    __slots__ = ("early", "expected")

    def __init__(self, expected: int | None = None) -> None:
        self.expected = expected
        #: Events that came before the seqs in front of them.
        self.early: dict[int, Event | None] = {}

    def start_at(self, expected: int) -> list[Event]:
        """Deliver from ``expected`` on (earlier events are dropped); what is ready."""
        self.expected = expected
        self.early = {s: e for s, e in self.early.items() if s >= expected}
        return self._ready()

    def offer(self, seq: int, event: Event | None) -> list[Event]:
        """Take one event (None: nothing to deliver at ``seq``); return the deliverable ones."""
        if self.expected is None or seq > self.expected:
            if self.early.get(seq) is None:  # an event may replace a placeholder, no other
                self.early[seq] = event
            return []
        if seq < self.expected:
            return []  # delivered already
        self.expected = seq + 1
        ready = self._ready()
        return ready if event is None else [event, *ready]

    def _ready(self) -> list[Event]:
        ready: list[Event] = []
        assert self.expected is not None
        while self.expected in self.early:
            event = self.early.pop(self.expected)
            if event is not None:
                ready.append(event)
            self.expected += 1
        return ready


@dataclass(slots=True)
class _Count:
    """One conversation's unread count: the server's last numbers plus the messages since."""

    unread: int
    mentions: int
    last_read: int
    last_seq: int | None = None
    last_at: datetime | None = None
    #: Messages up to this seq are in the numbers already (the server counted
    #: them, or they were counted here): a replay of one adds nothing.
    through: int = 0
    #: The messages counted here since the server's numbers: id -> (seq, names this user).
    live: dict[str, tuple[int, bool]] = field(default_factory=dict)

    @classmethod
    def of(cls, entry: Unread, through: int) -> _Count:
        return cls(
            entry.unread, entry.mentions, entry.last_read, entry.last_seq, entry.last_at, through
        )

    def snapshot(self) -> Unread:
        return Unread(self.unread, self.mentions, self.last_read, self.last_seq, self.last_at)

    def message(
        self,
        seq: int,
        message_id: str,
        *,
        mine: bool,
        names_me: bool,
        at: datetime | None,
        marks: bool = True,
    ) -> bool:
        """A message delivered: unread when it is another's, after the marker, not counted yet.

        One of this user's own is read, and (``marks``) so is everything
        before it: the server moves the sender's marker to what they send,
        and says nothing. False for a message counted already.
        """
        if seq <= self.through:
            return False
        self.through = seq
        self.last_seq, self.last_at = seq, at or self.last_at
        if mine:
            if marks:  # delivered in seq order: nothing counted here is newer than it
                self.take(0, 0, max(self.last_read, seq))
            return True
        if seq > self.last_read:
            self.unread += 1
            self.mentions += names_me
            self.live[message_id] = (seq, names_me)
            if len(self.live) > LIVE_UNREAD_CAP:
                del self.live[next(iter(self.live))]
        return True

    def deleted(self, message_id: str) -> None:
        """A deleted message is not unread any more (when it was counted here)."""
        counted = self.live.pop(message_id, None)
        if counted is not None:
            self.unread = max(0, self.unread - 1)
            self.mentions = max(0, self.mentions - counted[1])

    def take(self, unread: int, mentions: int, last_read: int) -> None:
        """The server's numbers: they count every message delivered so far."""
        self.unread, self.mentions, self.last_read = unread, mentions, last_read
        self.live.clear()

    def merge(self, entry: Unread, through: int) -> _Count:
        """The server's ``entry`` (as of ``through``) and the messages counted here after it."""
        merged = _Count.of(entry, max(through, self.through))
        for message_id, (seq, names_me) in self.live.items():
            if seq > through and seq > entry.last_read:
                merged.unread += 1
                merged.mentions += names_me
                merged.live[message_id] = (seq, names_me)
        if self.last_seq is not None and (entry.last_seq is None or self.last_seq > entry.last_seq):
            merged.last_seq, merged.last_at = self.last_seq, self.last_at
        return merged

    def read_to(self, seq: int) -> None:
        """The marker moved to ``seq`` without new numbers: drop what is known to be read."""
        if seq <= self.last_read:
            return
        self.last_read = seq
        if self.last_seq is not None and self.last_seq <= seq:
            self.unread = self.mentions = 0
            self.live.clear()
            return
        for message_id, (at, names_me) in list(self.live.items()):
            if at <= seq:
                del self.live[message_id]
                self.unread = max(0, self.unread - 1)
                self.mentions = max(0, self.mentions - names_me)


def _names_me(me: str | None, mentions: tuple[str, ...]) -> bool:
    if me is None:
        return False
    folded = me.casefold()
    return any(name.casefold() == folded for name in mentions)


class UnreadBook:
    """The unread counts a client keeps: the server's numbers, then the messages since. Pure.

    The server's numbers come from ``joined`` (:meth:`joined`), ``read``
    frames (:meth:`read`) and ``unread`` replies (:meth:`replace`). Between
    them each message delivered from someone else after the marker adds one
    (:meth:`message`), and a mention of this user one mention; a delete takes
    back one counted here. Each conversation knows up to which seq the
    numbers count already, so a replay after a reconnect is not counted
    twice. Only conversations the server gave numbers for are counted: the
    direct stream once an ``unread`` reply or a direct ``read`` came.
    """

    __slots__ = ("conversations", "direct", "rooms")

    def __init__(self) -> None:
        self.rooms: dict[str, _Count] = {}
        self.direct: _Count | None = None
        self.conversations: dict[str, _Count] = {}

    def snapshot(self) -> UnreadCounts:
        """The counts now, frozen."""
        return UnreadCounts(
            MappingProxyType({room: c.snapshot() for room, c in self.rooms.items()}),
            self.direct.snapshot() if self.direct is not None else None,
            MappingProxyType({peer: c.snapshot() for peer, c in self.conversations.items()}),
        )

    def joined(self, payload: dict[str, Any]) -> None:
        """A ``joined`` with counts (a registered user's): the room's numbers as of its seq."""
        if "unread" not in payload or "last_read" not in payload:
            return  # a guest's: nothing is counted for it
        room = str(payload.get("room", ""))
        known = self.rooms.get(room)
        try:
            through = int(payload.get("seq") or 0)
            entry = Unread(
                int(payload.get("unread") or 0),
                int(payload.get("mentions") or 0),
                int(payload["last_read"]),
                known.last_seq if known is not None else None,
                known.last_at if known is not None else None,
            )
        except (TypeError, ValueError):
            logger.warning("ignored the counts of a joined the client cannot read")
            return
        self.rooms[room] = _Count.of(entry, through)

    def read(self, marker: ReadMarker, seen: int | None) -> bool:
        """A ``read`` frame: take its numbers unless it is older than the marker known.

        ``seen``: the newest seq delivered in that conversation (the new
        numbers count it already). False when the frame is stale (two devices
        raced, or frames from two nodes crossed): nothing changed.
        """
        if marker.room is not None:
            table, key = self.rooms, marker.room
        elif marker.with_ is not None:
            table, key = self.conversations, marker.with_
        else:
            table, key = None, ""
        known = self.direct if table is None else table.get(key)
        if known is not None and marker.seq < known.last_read:
            return False
        if known is None:
            known = _Count(marker.unread, marker.mentions, marker.seq)
            if table is None:
                self.direct = known
            else:
                table[key] = known
        elif table is self.conversations and self.direct is not None:
            # The whole stream loses what this conversation did.
            self.direct.unread = max(0, self.direct.unread - (known.unread - marker.unread))
            self.direct.mentions = max(0, self.direct.mentions - (known.mentions - marker.mentions))
        known.take(marker.unread, marker.mentions, marker.seq)
        known.through = max(known.through, marker.seq, seen or 0)
        if table is None:  # the whole stream: every conversation is read as far
            for conversation in self.conversations.values():
                conversation.read_to(marker.seq)
        return True

    def replace(self, counts: UnreadCounts) -> None:
        """An ``unread`` reply: its numbers, plus the messages counted here after each."""

        def merged(known: _Count | None, entry: Unread) -> _Count:
            through = entry.last_seq or 0
            return _Count.of(entry, through) if known is None else known.merge(entry, through)

        self.rooms = {room: merged(self.rooms.get(room), e) for room, e in counts.rooms.items()}
        if counts.direct is not None:
            self.direct = merged(self.direct, counts.direct)
            self.conversations = {
                peer: merged(self.conversations.get(peer), entry)
                for peer, entry in counts.conversations.items()
            }

    def message(self, event: RoomMessage | DirectMessage, me: str | None) -> None:
        """A message delivered (live, or replayed: then it is counted already)."""
        mine = me is not None and event.sender.casefold() == me.casefold()
        facts = (event.seq, event.message_id)
        names_me = _names_me(me, event.mentions)
        if isinstance(event, RoomMessage):
            if event.room in self.rooms:
                self.rooms[event.room].message(
                    *facts, mine=mine, names_me=names_me, at=event.timestamp
                )
            return
        whole = self.direct
        if whole is None:
            return  # not known: an unread reply or a direct read brings it
        peer = event.to if mine else event.sender
        conversation = self.conversations.get(peer)
        if conversation is None:  # a new conversation: read as far as the whole stream
            conversation = self.conversations[peer] = _Count(0, 0, whole.last_read)
        before = (conversation.unread, conversation.mentions)
        # Sending moves the sender's marker of that conversation, not of the whole stream.
        whole.message(*facts, mine=mine, names_me=names_me, at=event.timestamp, marks=False)
        new = conversation.message(*facts, mine=mine, names_me=names_me, at=event.timestamp)
        if new and mine:  # what that conversation had unread is read now
            whole.unread = max(0, whole.unread - before[0])
            whole.mentions = max(0, whole.mentions - before[1])

    def deleted(self, event: MessageDeleted) -> None:
        """A deleted message is no longer unread."""
        if event.room is not None:
            count = self.rooms.get(event.room)
            if count is not None:
                count.deleted(event.message_id)
            return
        for count in (self.direct, *self.conversations.values()):
            if count is not None:
                count.deleted(event.message_id)


def _new_id() -> str:
    return base64.urlsafe_b64encode(os.urandom(12)).decode()


class Client(ModerationMixin):
    """A roomcast connection that survives the network.

    Args:
        url: the WebSocket URL, ``ws://host:port/ws`` or ``wss://...``.
        token: a token from ``POST /api/login``, sent on the handshake.
        refresh_token: a refresh token from ``POST /api/login`` (kept from
            an earlier sign-in): the client signs in with it, and renews
            the token with it when it expires. It changes on every renewal
            (:class:`~roomcast.client.SessionTokens` events carry the new one).
        username, password: log in over HTTP first; the client keeps the
            refresh token the server returns and renews with it, logging in
            with the password again only when the refresh is refused.
        guest: a guest nickname (``auth`` with ``guest`` after connecting).
        backoff: reconnect delays (0.5 s first, doubling, 30 s cap, reset
            after a connection that lasted a minute).
        max_queue: frames that may wait for an answer at once.
        ping_interval, ping_timeout: the client's own keepalive: a server
            that does not answer a ping within ``ping_timeout`` is taken as
            gone and the client reconnects.
        open_timeout: seconds a connection attempt may take.
        rooms: rooms to join on connect, besides the lobby.
        transport: "auto" (a WebSocket, or the HTTP fallback where its
            handshake fails, as behind a proxy that refuses the upgrade),
            "websocket" or "http" only. :attr:`transport` says which one
            the connection uses.
    """

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        refresh_token: str | None = None,
        username: str | None = None,
        password: str | None = None,
        guest: str | None = None,
        backoff: Backoff | None = None,
        max_queue: int = 1000,
        ping_interval: float | None = 20.0,
        ping_timeout: float | None = 20.0,
        open_timeout: float = 10.0,
        rooms: tuple[str, ...] = (),
        transport: str = "auto",
    ) -> None:
        if (username is None) != (password is None):
            raise ValueError("give username and password together")
        if transport not in TRANSPORTS:
            raise ValueError(f"transport is one of {sorted(TRANSPORTS)}, not {transport!r}")
        self.url = url
        self.token = token
        self.refresh_token = refresh_token
        self.username = username
        self._password = password
        self.admin = False
        self._renew_lock: asyncio.Lock | None = None
        self._leaving: str | None = None
        self.guest = guest
        self.backoff = backoff or Backoff()
        self.max_queue = max_queue
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.open_timeout = open_timeout
        #: The ``transport`` option.
        self._mode = transport
        #: The transport of the current (or last) connection: "websocket" or
        #: "http" (None before the first).
        self.transport: str | None = None
        #: Until when (``time.monotonic()``) an "auto" client that fell back goes straight to HTTP.
        self._http_until = 0.0
        self.state = ConnectionState.DISCONNECTED
        #: Who the server says this connection is (set on each connect).
        self.user: str | None = None
        #: Why the client stopped for good, once it has.
        self.closed_reason: str | None = None
        self._streams: dict[str, SeqStream] = {LOBBY: SeqStream()}
        for room in rooms:
            self._streams.setdefault(room, SeqStream())
        self._outbox: dict[str, _Outgoing] = {}
        self._events: asyncio.Queue[Event | None] = asyncio.Queue()
        self._callbacks: list[tuple[type[Any] | None, Callable[[Any], object]]] = []
        self._ws: Connection | None = None
        self._connection = 0  # counts connections, to tell sends apart
        self._runner: asyncio.Task[None] | None = None
        self._stop = False
        self._ready_once: asyncio.Future[None] | None = None
        self._iterating = False
        #: Rooms whose missed messages were partly pruned: deliver from the replay's start.
        self._pruned: set[str] = set()
        #: When each of the last 100 connection attempts began (``time.monotonic()``).
        self.attempts: deque[float] = deque(maxlen=100)
        self._book = UnreadBook()
        #: The newest seq of this user's direct stream seen with each peer.
        self._peer_seq: dict[str, int] = {}

    # -- life cycle ------------------------------------------------------------

    async def connect(self) -> None:
        """Start, and return once connected the first time.

        Raises:
            AuthRefused: the server refused the token, login or guest name.
            ClientClosed: the client stopped for another reason that cannot heal.
        """
        if self._runner is None:
            loop = asyncio.get_running_loop()
            self._ready_once = loop.create_future()
            self._runner = loop.create_task(self._run(), name="roomcast-client")
        assert self._ready_once is not None
        await asyncio.shield(self._ready_once)

    async def close(self) -> None:
        """Close the connection and stop; pending sends fail with :class:`ClientClosed`."""
        await self._close("closed by the application")

    async def _close(self, reason: str) -> None:
        self._stop = True
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await self._ws.close()
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
        self._finish(reason)

    async def __aenter__(self) -> Client:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _finish(self, reason: str, error: type[ClientError] | ClientError = ClientClosed) -> None:
        if self.state is ConnectionState.CLOSED:
            return
        self.closed_reason = reason
        self._set_state(ConnectionState.CLOSED, reason)
        for out in self._outbox.values():
            if not out.future.done():
                out.future.set_exception(ClientClosed(reason))
        self._outbox.clear()
        self._iterating = True  # the end marker below must reach an iterator
        if self._ready_once is not None and not self._ready_once.done():
            self._ready_once.set_exception(
                error if isinstance(error, ClientError) else error(reason)
            )
            self._ready_once.exception()  # connect() may never be awaited
        self._events.put_nowait(None)

    # -- events ----------------------------------------------------------------

    def on(self, kind: type[Any] | None, callback: Callable[[Any], object]) -> None:
        """Call ``callback(event)`` for every event of class ``kind`` (None: all)."""
        self._callbacks.append((kind, callback))

    def __aiter__(self) -> AsyncIterator[Event]:
        self._iterating = True
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Event]:
        while True:
            event = await self._events.get()
            if event is None:
                return
            yield event

    def _account(self, event: Event) -> None:
        """Count a message delivered (or take back a deleted one) in the unread counts."""
        if isinstance(event, RoomMessage | DirectMessage):
            self._book.message(event, self.user)
            if isinstance(event, DirectMessage):
                self._saw_peer(event.sender, event.to, event.seq)
        elif isinstance(event, MessageDeleted):
            self._book.deleted(event)
        if isinstance(event, MessageEdited | MessageDeleted | Reaction) and event.room is None:
            self._saw_peer(event.sender or "", event.to or "", event.seq)

    def _saw_peer(self, sender: str, to: str, seq: int) -> None:
        me = (self.user or "").casefold()
        peer = to if sender.casefold() == me else sender
        if seq > self._peer_seq.get(peer, 0):
            self._peer_seq[peer] = seq

    def _marker_moved(self, marker: ReadMarker) -> None:
        """This user's marker moved (a read frame, or the answer to ours): count, deliver."""
        if marker.room is not None:
            seen = self.last_seq(marker.room)
        elif marker.with_ is not None:
            seen = self._peer_seq.get(marker.with_)
        else:
            seen = self.last_seq(_DIRECT)
        if self._book.read(marker, seen):
            self._emit(marker)

    def _emit(self, event: Event) -> None:
        self._account(event)  # first: a callback reading the counts sees this message in them
        if self._iterating:  # kept only for an application that iterates
            self._events.put_nowait(event)
        for kind, callback in list(self._callbacks):
            if kind is None or isinstance(event, kind):
                try:
                    callback(event)
                except Exception:
                    logger.exception("event callback failed")

    def _set_state(self, new: ConnectionState, reason: str | None = None) -> None:
        old, self.state = self.state, new
        if old is not new:
            logger.info(
                "connection %s -> %s%s", old.value, new.value, f" ({reason})" if reason else ""
            )
            self._emit(StateChange(old, new, reason))

    # -- sending ---------------------------------------------------------------

    async def send_chat(
        self,
        text: str,
        room: str = LOBBY,
        *,
        reply_to: str | None = None,
        timeout: float | None = 30.0,
    ) -> Reply:
        """Send a chat message; return the server's ``ack`` (it is stored by then).

        ``reply_to``: the id of a message of the same room that this one answers
        (it joins that message's thread).
        """
        payload: dict[str, Any] = {"room": room, "message": text}
        if reply_to is not None:
            payload["reply_to"] = reply_to
        return await self.request("chat", payload, timeout=timeout)

    async def edit(self, message_id: str, text: str, *, timeout: float | None = 30.0) -> Reply:
        """Change the text of one of this user's messages; return the ``ack``.

        The ``ack``'s payload has ``message_id`` and the ``seq`` of the change
        (in the room, or in this user's direct stream).
        """
        return await self.request(
            "edit", {"message_id": message_id, "message": text}, timeout=timeout
        )

    async def delete(self, message_id: str, *, timeout: float | None = 30.0) -> Reply:
        """Delete a message (this user's; any in a room this user owns or moderates); the ``ack``.

        Deleting a deleted message is acked without ``seq``.
        """
        return await self.request("delete", {"message_id": message_id}, timeout=timeout)

    async def react(self, message_id: str, emoji: str, *, timeout: float | None = 30.0) -> Reply:
        """React to a message with ``emoji`` (one emoji, or ``:name:``); return the ``ack``.

        A reaction already there is acked without ``seq``.
        """
        payload = {"message_id": message_id, "emoji": emoji}
        return await self.request("react", payload, timeout=timeout)

    async def unreact(self, message_id: str, emoji: str, *, timeout: float | None = 30.0) -> Reply:
        """Take back a reaction; return the ``ack`` (without ``seq`` when there was none)."""
        payload = {"message_id": message_id, "emoji": emoji}
        return await self.request("unreact", payload, timeout=timeout)

    async def send_direct(self, to: str, text: str, *, timeout: float | None = 30.0) -> Reply:
        """Send a direct message to the user ``to``; return the ``ack``."""
        return await self.request("direct", {"to": to, "message": text}, timeout=timeout)

    async def send_file(
        self,
        file: bytes | str | Path,
        *,
        room: str | None = None,
        to: str | None = None,
        name: str | None = None,
        mime: str | None = None,
        timeout: float | None = 60.0,
    ) -> Reply:
        """Send a file (its bytes, or a path) to a room or a user; return the ``ack``."""
        if (room is None) == (to is None):
            raise ValueError("give exactly one of room, to")
        if isinstance(file, bytes):
            data, name = file, name or "file"
        else:
            path = Path(file)
            data, name = path.read_bytes(), name or path.name
        mime = mime or mimetypes.guess_type(name)[0] or "application/octet-stream"
        fid = _new_id()
        header: dict[str, Any] = {"name": name, "mime": mime, "id": fid}
        header["room" if room is not None else "to"] = room if room is not None else to
        encoded = orjson.dumps(header)
        frame = len(encoded).to_bytes(4, "big") + encoded + data
        return await self._queue(fid, frame, timeout=timeout)

    async def download(self, file: FileRef | str) -> bytes:
        """The bytes of a file from a message (its signed link), over HTTP."""
        url = file.url if isinstance(file, FileRef) else file
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        status, body = await asyncio.to_thread(_http, "GET", self._http_url(url), None, headers)
        if status != 200:
            raise SendError(str(status), body.decode("utf-8", "replace")[:200])
        return body

    async def join(self, room: str, *, timeout: float | None = 30.0) -> Reply:
        """Join ``room``; return the ``joined`` reply. Messages from now on are delivered."""
        new = room not in self._streams
        self._streams.setdefault(room, SeqStream())
        try:
            return await self.request("join", {"room": room}, timeout=timeout)
        except (SendError, TimeoutError):
            if new:
                self._streams.pop(room, None)
            raise

    async def leave(self, room: str, *, timeout: float | None = 30.0) -> Reply:
        """Leave ``room``; its messages are no longer delivered."""
        self._streams.pop(room, None)
        return await self.request("leave", {"room": room}, timeout=timeout)

    async def history(
        self,
        room: str,
        *,
        before: int | None = None,
        limit: int = 50,
        thread: str | None = None,
        around: int | None = None,
    ) -> tuple[list[RoomMessage], bool]:
        """A page of ``room``'s history, oldest first, and whether there is more.

        ``thread``: a root message's id: the root and its replies. ``around``:
        a seq: messages before it and from it on (:meth:`history_page` also
        says whether newer ones exist). Each message shows its current state
        (edited, deleted, reactions, replies).
        """
        page = await self.history_page(
            room, before=before, limit=limit, thread=thread, around=around
        )
        return page.messages, page.has_more

    async def history_page(
        self,
        room: str,
        *,
        before: int | None = None,
        limit: int = 50,
        thread: str | None = None,
        around: int | None = None,
        timeout: float | None = 30.0,
    ) -> HistoryPage:
        """Like :meth:`history`, as a :class:`HistoryPage` (with ``has_newer``)."""
        payload: dict[str, Any] = {"room": room, "limit": limit}
        if before is not None:
            payload["before"] = before
        if thread is not None:
            payload["thread"] = thread
        if around is not None:
            payload["around"] = around
        reply = await self.request("history", payload, timeout=timeout)
        items = reply.payload.get("messages", [])
        return HistoryPage(
            room,
            [room_message({"room": room, **item}) for item in items],
            bool(reply.payload.get("has_more")),
            bool(reply.payload.get("has_newer")),
            _receipts(reply.payload.get("receipts")),
            _read_counts(reply.payload.get("read_counts")),
        )

    async def direct_history(
        self,
        *,
        before: int | None = None,
        limit: int = 50,
        around: int | None = None,
        with_: str | None = None,
    ) -> tuple[list[DirectMessage], bool]:
        """A page of this user's direct messages, oldest first, and whether older ones exist.

        ``before``: a seq of this user's stream, the messages before it (None:
        the newest). ``around``: a seq, the messages before it and from it on
        (:meth:`direct_history_page` also says whether newer ones exist); a
        direct :class:`SearchResult`'s ``seq`` opens its conversation.
        ``with_``: only the conversation with that user. Each message shows
        its current state. Registered users only.
        """
        page = await self.direct_history_page(
            before=before, limit=limit, around=around, with_=with_
        )
        return page.messages, page.has_more

    async def direct_history_page(
        self,
        *,
        before: int | None = None,
        limit: int = 50,
        around: int | None = None,
        with_: str | None = None,
        timeout: float | None = 30.0,
    ) -> DirectHistoryPage:
        """Like :meth:`direct_history`, as a :class:`DirectHistoryPage` (with ``has_newer``).

        Raises:
            ValueError: both ``before`` and ``around``.
            SendError: ``forbidden`` for a guest; ``unknown_user`` for a ``with_``
                nobody is registered as.
        """
        if before is not None and around is not None:
            raise ValueError("give before or around, not both")
        payload: dict[str, Any] = {"limit": limit}
        if before is not None:
            payload["before"] = before
        if around is not None:
            payload["around"] = around
        if with_ is not None:
            payload["with"] = with_
        reply = await self.request("direct_history", payload, timeout=timeout)
        messages: list[DirectMessage] = []
        for item in reply.payload.get("messages", []):
            if type(item) is not dict:
                continue
            try:
                event = direct_item(item)
            except ValueError as exc:
                logger.warning("ignored a direct_history item the client cannot read: %s", exc)
                continue
            if isinstance(event, DirectMessage):  # a page lists messages only
                messages.append(event)
        last_seq = reply.payload.get("last_seq")
        return DirectHistoryPage(
            messages,
            bool(reply.payload.get("has_more")),
            bool(reply.payload.get("has_newer")),
            last_seq if type(last_seq) is int else 0,
            _receipts(reply.payload.get("receipts")),
        )

    # -- search ----------------------------------------------------------------

    async def search(
        self,
        q: str,
        *,
        room: str | None = None,
        direct: bool = False,
        with_: str | None = None,
        sender: str | None = None,
        after: datetime | date | str | None = None,
        before: datetime | date | str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
        order: str = "newest",
        timeout: float | None = 30.0,
    ) -> SearchPage:
        """A page of the messages this user may read now that match the query ``q``.

        ``q``: words that must all appear (any case), ``prefix*``, ``"a
        phrase"``, ``-word`` or ``-"a phrase"`` to exclude. Without ``room``
        or ``direct``: every room this user may read (public rooms, private
        ones they belong to) and, for a registered user, their direct
        conversations, whether this client joined them or not.

        Args:
            room: only this room.
            direct: only this user's direct conversations.
            with_: only the conversation with this user (implies ``direct``).
            sender: only messages from this user (the wire's ``from``).
            after, before: only messages stored strictly after / before this
                time: an aware datetime, a naive one (taken as UTC), a date
                (its midnight UTC), or an ISO 8601 string as the server reads it.
            limit: results a page (the server's default 20, at most 50).
            cursor: the previous page's ``cursor``, with the same query and filters.
            order: ``"newest"`` first, or ``"relevance"`` (best match first).

        Like every request it waits in the outbox while offline and is sent
        once connected; a ``rate_limited`` answer is waited out and the
        search sent again, within ``timeout``.

        Raises:
            ValueError: ``room`` with ``direct`` or ``with_``, an unknown
                ``order``, or an answer the client cannot read.
            SendError: ``invalid_message`` (the query cannot be parsed,
                and the message says why; a bad cursor or time),
                ``forbidden`` (``direct`` from a guest, a private room this
                user is not in), ``unknown_user`` (``with_`` is no user).
        """
        direct = direct or with_ is not None
        if room is not None and direct:
            raise ValueError("give room or direct (with_), not both")
        if order not in SEARCH_ORDERS:
            raise ValueError(f'order is "newest" or "relevance", not {order!r}')
        payload: dict[str, Any] = {"q": q}
        optional: dict[str, Any] = {
            "room": room,
            "direct": True if direct else None,
            "with": with_,
            "from": sender,
            "after": _iso_time(after),
            "before": _iso_time(before),
            "limit": limit,
            "cursor": cursor,
            "order": None if order == "newest" else order,
        }
        payload.update({key: value for key, value in optional.items() if value is not None})
        reply = await self.request("search", payload, timeout=timeout)
        return search_page(reply.payload)

    async def search_all(
        self,
        q: str,
        *,
        room: str | None = None,
        direct: bool = False,
        with_: str | None = None,
        sender: str | None = None,
        after: datetime | date | str | None = None,
        before: datetime | date | str | None = None,
        limit: int | None = None,
        order: str = "newest",
        timeout: float | None = 30.0,
    ) -> AsyncIterator[SearchResult]:
        """Every result of :meth:`search`, page after page until the last.

        Takes :meth:`search`'s arguments but ``cursor``; ``limit`` is the size
        of each page asked for, ``timeout`` each page's. Pages are asked for
        as the iteration reaches them: stop iterating to stop asking.
        """
        cursor: str | None = None
        seen: set[str] = set()
        while True:
            page = await self.search(
                q,
                room=room,
                direct=direct,
                with_=with_,
                sender=sender,
                after=after,
                before=before,
                limit=limit,
                cursor=cursor,
                order=order,
                timeout=timeout,
            )
            for result in page.results:
                yield result
            if page.cursor is None or page.cursor in seen:
                return  # the last page (a cursor seen again would loop for ever)
            seen.add(page.cursor)
            cursor = page.cursor

    # -- read markers and unread counts --------------------------------------------

    async def mark_read(
        self, room: str, seq: int | None = None, *, timeout: float | None = 30.0
    ) -> ReadMarker:
        """Tell the server this user has read ``room`` up to ``seq``; the marker it keeps.

        ``seq`` None: the newest seq this client delivered from ``room``. The
        marker never moves back (the answer then carries it as it is) and a
        seq past the room's last is lowered to it. The answer has the counts
        after the move; every other connection of this user gets them as a
        :class:`ReadMarker` event (this one too). Nothing is debounced here:
        an application that marks as messages scroll past should send at
        most about one a second per conversation (the server coalesces its
        writes anyway). A guest's marker lives on its connection only.

        Raises:
            ValueError: ``seq`` None and nothing was delivered from ``room``.
            SendError: ``not_member``: this client is not in ``room``.
        """
        if seq is None:
            seq = self.last_seq(room)
            if seq is None:
                raise ValueError(f"nothing seen in {room} yet: give the seq read")
        reply = await self.request("read", {"room": room, "seq": seq}, timeout=timeout)
        return read_marker(reply.payload)

    async def mark_read_direct(
        self, seq: int | None = None, *, with_: str | None = None, timeout: float | None = 30.0
    ) -> ReadMarker:
        """Mark direct messages read up to ``seq`` of this user's stream; the marker kept.

        ``with_`` None: the whole direct stream; else only the conversation
        with that user. ``seq`` None: the newest seq delivered (with ``with_``:
        the newest seen with that user, else the stream's). Registered users
        only (``forbidden`` for a guest). See :meth:`mark_read` on debouncing.

        Raises:
            ValueError: ``seq`` None and the direct stream is not known yet.
            SendError: ``forbidden`` for a guest.
        """
        if seq is None:
            newest = self._peer_seq.get(with_) if with_ is not None else None
            seq = newest if newest is not None else self.last_seq(_DIRECT)
            if seq is None:
                raise ValueError("no direct message seen yet: give the seq read")
        payload: dict[str, Any] = {"direct": True, "seq": seq}
        if with_ is not None:
            payload["with"] = with_
        reply = await self.request("read", payload, timeout=timeout)
        return read_marker(reply.payload)

    async def unread_counts(self, *, timeout: float | None = 30.0) -> UnreadCounts:
        """Ask the server what this user has not read; refresh :attr:`unread` with it.

        Every room the user has read in (or belongs to), the whole direct
        stream and each direct conversation. Returns :attr:`unread` as it is
        then: the server's numbers plus any message delivered after it
        counted. Registered users only.

        Raises:
            SendError: ``forbidden`` for a guest.
            ValueError: the server's answer cannot be read.
        """
        reply = await self.request("unread", {}, timeout=timeout)
        self._book.replace(unread_counts(reply.payload))
        return self._book.snapshot()

    @property
    def unread(self) -> UnreadCounts:
        """The unread counts known now, without asking the server.

        Kept up to date from each ``joined`` (a registered user's rooms),
        every message delivered (from someone else, after the marker: one
        more; naming this user: one more mention), ``read`` frames from any
        of this user's devices and :meth:`unread_counts` answers; a
        reconnect refreshes them (``joined`` again, and ``unread`` once the
        direct stream is known). Rooms this client is not in are as the last
        answer left them; ``direct`` is None until :meth:`unread_counts` or a
        direct read brought its numbers. A guest has no counts, except those
        its own reads answered.
        """
        return self._book.snapshot()

    async def presence(self, room: str = LOBBY) -> list[str]:
        """Who is in ``room``."""
        reply = await self.request("presence", {"room": room})
        return [str(name) for name in reply.payload.get("members", [])]

    async def typing(self, room: str = LOBBY) -> None:
        """Tell ``room`` this user is typing (not queued: dropped while offline)."""
        ws = self._ws
        if ws is not None and self.state is ConnectionState.CONNECTED:
            with contextlib.suppress(ConnectionClosed):
                await ws.send(_frame("typing", {"room": room}))

    @property
    def rooms(self) -> list[str]:
        """The rooms this client is in (and resumes after a reconnect)."""
        return [key for key in self._streams if key != _DIRECT]

    def last_seq(self, room: str) -> int | None:
        """The last seq delivered from ``room`` (None before the first)."""
        stream = self._streams.get(room)
        if stream is None or stream.expected is None:
            return None
        return stream.expected - 1

    async def request(
        self, kind: str, payload: dict[str, Any], *, timeout: float | None = 30.0
    ) -> Reply:
        """Send any frame that the server answers; return the answer.

        Raises:
            SendError: the server answered ``error``.
            QueueFull: too many frames wait already.
            ClientClosed: the client stopped before an answer came.
            TimeoutError: no answer within ``timeout`` (the frame may still
                have been carried out; it is not sent again).
        """
        fid = _new_id()
        return await self._queue(fid, _frame(kind, payload, fid), timeout=timeout)

    async def _queue(
        self, fid: str, data: str | bytes, *, timeout: float | None, once: bool = False
    ) -> Reply:
        if self.state is ConnectionState.CLOSED:
            raise ClientClosed(self.closed_reason or "closed")
        if len(self._outbox) >= self.max_queue:
            raise QueueFull(f"{len(self._outbox)} frames are waiting for the server already")
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        out = _Outgoing(fid, data, future, once=once)
        self._outbox[fid] = out
        if self.state is ConnectionState.CONNECTED:
            await self._write(out)
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout)
        except TimeoutError:
            self._outbox.pop(fid, None)
            raise
        finally:
            if future.done() and not future.cancelled():
                future.exception()  # retrieved: no "never retrieved" warning

    async def _write(self, out: _Outgoing) -> None:
        ws = self._ws
        if ws is None or out.sent_on == self._connection:
            return
        out.sent_on = self._connection
        try:
            await ws.send(out.data)
        except ConnectionClosed:
            pass  # the reader sees it and reconnects; the frame waits in the outbox

    # -- the connection task ---------------------------------------------------

    async def _run(self) -> None:
        first = True
        while not self._stop:
            self._set_state(ConnectionState.CONNECTING if first else ConnectionState.RECONNECTING)
            reason = await self._connection_once()
            if self.state is ConnectionState.CLOSED or self._stop:
                return
            first = False
            delay = self.backoff.next_delay()
            logger.info("connection lost (%s); reconnecting in %.2f s", reason, delay)
            self._set_state(ConnectionState.RECONNECTING, reason)
            await asyncio.sleep(delay)

    async def _connection_once(self) -> str:
        """One connection from handshake to its end; the reason it ended."""
        self.attempts.append(time.monotonic())
        renewed = False  # the token was issued for this attempt: a refusal of it is final
        try:
            if self._can_renew() and self._token_stale():
                stale = self.token
                await self._renew(stale)
                renewed = self.token != stale
            headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
            ws = await self._open(headers)
        except InvalidStatus as exc:
            status = exc.response.status_code
            if status == 401 and not renewed and self._can_renew():
                self.token = None  # expired or its session ended: renew on the next attempt
                return "token refused; signing in again"
            if status in (401, 403):
                self._finish(f"handshake refused with {status}", AuthRefused)
            return f"handshake answered {status}"
        except AuthRefused as exc:
            self._finish(str(exc), AuthRefused)
            return str(exc)
        except (OSError, TimeoutError, WebSocketException) as exc:
            return f"cannot connect: {exc!r}"
        self._ws = ws
        self._connection += 1
        started = time.monotonic()
        reader = asyncio.create_task(self._read(ws))
        try:
            await self._resume(ws, reader)
            await reader
        except ConnectionClosed:
            pass
        except AuthRefused as exc:
            self._finish(str(exc), AuthRefused)
        finally:
            reader.cancel()
            with contextlib.suppress(BaseException):
                await reader
            self._ws = None
            with contextlib.suppress(Exception):
                await ws.close()
        self.backoff.connected_for(time.monotonic() - started)
        close = ws.close_rcvd if isinstance(ws, EventStream) else ws.protocol.close_rcvd
        if close is not None and close.code == 1008 and not self._stop:
            self._closed_by_policy(close.reason)
        if close is not None:
            return f"closed with {close.code} {close.reason}".strip()
        return "connection lost"

    async def _open(self, headers: dict[str, str]) -> Connection:
        """Open a connection over the transport to use now.

        "auto" tries a WebSocket first, and ``GET /events`` when its
        handshake fails other than for a server that is down (a refused or
        reset connection) or a refused token (401): a proxy that blocks
        WebSocket answers 403, or something else, or nothing. A 403 of the
        server's own (a refused origin) is answered again by ``/events``,
        which makes the same checks, and is final there as on a handshake.
        After a fallback, connections go straight to HTTP for
        :data:`HTTP_HOLD` seconds.

        Raises:
            InvalidStatus: the handshake (or ``/events``) was refused.
            OSError, TimeoutError, WebSocketException: it failed otherwise.
        """
        hold = self._mode == "auto" and time.monotonic() < self._http_until
        if self._mode == "http" or hold:
            return await self._open_http(headers)
        try:
            ws = await connect(
                self.url,
                additional_headers=headers,
                open_timeout=self.open_timeout,
                ping_interval=self.ping_interval,
                ping_timeout=self.ping_timeout,
                max_size=32 * 1024 * 1024,
                close_timeout=2.0,
            )
        except InvalidStatus as exc:
            if self._mode != "auto" or exc.response.status_code == 401:
                raise
            failure: Exception = exc
        except ConnectionError:
            raise  # the server is down: /events would be too
        except (TimeoutError, WebSocketException) as exc:
            if self._mode != "auto":
                raise
            failure = exc
        else:
            self.transport = "websocket"
            return ws
        logger.info("WebSocket handshake failed (%s); trying the HTTP fallback", failure)
        stream = await self._open_http(headers)
        self._http_until = time.monotonic() + HTTP_HOLD
        return stream

    async def _open_http(self, headers: dict[str, str]) -> EventStream:
        stream = await EventStream.open(
            events_url(self.url),
            headers,
            open_timeout=self.open_timeout,
            ping_interval=self.ping_interval,
            ping_timeout=self.ping_timeout,
        )
        self.transport = "http"
        return stream

    def _closed_by_policy(self, reason: str) -> None:
        """The server closed the connection with 1008: stop, unless a new token will do."""
        if self._leaving is not None:
            self._finish(self._leaving)  # the application signed out: no surprise
        elif reason.startswith(REVOKED):
            error = SignedOut(reason)
            self._finish(str(error), error)
        elif reason == "token expired" and self._can_renew():
            self.token = None  # not renewed in time: sign in again on the next attempt
        else:
            self._finish(f"closed by the server with 1008: {reason}")

    async def _resume(self, ws: Connection, reader: asyncio.Task[None]) -> None:
        """Sign in, join the rooms again from where they were, send what waits."""
        this = self._connection
        if self.guest is not None:
            reply = await self._ask(ws, reader, "auth", {"guest": self.guest})
            if reply.type == "error":
                raise AuthRefused(f"guest name refused: {reply.payload.get('message')}")
        for room, stream in list(self._streams.items()):
            if room == _DIRECT:
                continue
            payload: dict[str, Any] = {"room": room}
            if stream.expected is not None:
                payload["since"] = stream.expected - 1
            reply = await self._ask(ws, reader, "join", payload)
            if reply.type == "error" and reply.payload.get("code") in SHUT_OUT:
                self._shut_out(room, reply.payload)
            if reply.type == "joined":
                self._joined(reply.payload, resumed=stream.expected is not None)
                await self._page_back(ws, reader, room, reply.payload)
        if self.token is not None:
            await self._catch_up_direct(ws, reader)
            if self._book.direct is not None:
                # Reads made on other devices meanwhile: the rooms' came with
                # joined, the direct stream's come with a fresh unread.
                reply = await self._ask(ws, reader, "unread", {})
                if reply.type == "unread":
                    with contextlib.suppress(ValueError):
                        self._book.replace(unread_counts(reply.payload))
        # What waits goes out in order; sends made meanwhile join the end of
        # the outbox and are picked up by the next pass.
        while True:
            waiting = [o for o in self._outbox.values() if o.sent_on != this and not o.once]
            if not waiting:
                break
            for out in waiting:
                await self._write(out)
        self._set_state(
            ConnectionState.CONNECTED, "over HTTP" if self.transport == "http" else None
        )
        if self._ready_once is not None and not self._ready_once.done():
            self._ready_once.set_result(None)

    async def _ask(
        self, ws: Connection, reader: asyncio.Task[None], kind: str, payload: dict[str, Any]
    ) -> Reply:
        """A request on this connection only (not queued, not resent)."""
        fid = _new_id()
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        out = _Outgoing(fid, _frame(kind, payload, fid), future, once=True)
        self._outbox[fid] = out
        await self._write(out)
        waiters: set[asyncio.Future[Any]] = {future, reader}
        done, _ = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        if future not in done:
            self._outbox.pop(fid, None)
            reader.result()  # raises ConnectionClosed
            raise ConnectionClosed(None, None)
        return future.result()

    async def _page_back(
        self,
        ws: Connection,
        reader: asyncio.Task[None],
        room: str,
        joined: dict[str, Any],
    ) -> None:
        """Read what a capped replay left out (``replay_from``) with ``history``.

        The server replays at most its newest messages after ``since``; the
        stream holds those until the older ones read here fill the gap, so
        every missed message is still delivered once, in order. History
        lists messages only, in their current state: the seqs of the changes
        (edits, deletes, reactions) in the gap are passed over.
        """
        stream = self._streams.get(room)
        replay_from = joined.get("replay_from")
        if stream is None or not isinstance(replay_from, int):
            return
        # A stream whose missed messages were partly pruned starts at the
        # oldest one kept: page back until the server has no more.
        pruned = stream.expected is None
        # The replay's frames wait in the stream meanwhile: start it here,
        # not at the first of them.
        self._pruned.discard(room)
        floor = 1 if stream.expected is None else stream.expected
        pages: list[list[dict[str, Any]]] = []
        before = replay_from
        refused = False
        while before > floor:
            query = {"room": room, "before": before, "limit": min(100, before - floor)}
            reply = await self._ask(ws, reader, "history", query)
            refused = reply.type != "history"
            items = [] if refused else reply.payload.get("messages", [])
            if not items:
                break
            pages.append(items)
            before = min(int(item["seq"]) for item in items)
            if not reply.payload.get("has_more"):
                break
        messages = [
            room_message({"room": room, **item}) for page in reversed(pages) for item in page
        ]
        messages = [m for m in messages if floor <= m.seq < replay_from]
        if pruned:
            for event in stream.start_at(messages[0].seq if messages else replay_from):
                self._emit(event)
        elif refused:
            logger.warning(
                "room %s: messages %d-%d could not be read",
                room,
                stream.expected,
                (messages[0].seq if messages else replay_from) - 1,
            )
        # Every seq of the gap that is not a message is passed over: a change
        # (history lists messages only), or one pruned or refused meanwhile;
        # else the room would wait for it for ever.
        assert stream.expected is not None
        found = {m.seq: m for m in messages}
        for seq in range(stream.expected, replay_from):
            for event in stream.offer(seq, found.get(seq)):
                self._emit(event)

    async def _catch_up_direct(self, ws: Connection, reader: asyncio.Task[None]) -> None:
        stream = self._streams.setdefault(_DIRECT, SeqStream())
        if stream.expected is None:
            reply = await self._ask(ws, reader, "direct_history", {"limit": 1})
            if reply.type == "direct_history" and stream.expected is None:
                for event in stream.start_at(int(reply.payload.get("last_seq", 0)) + 1):
                    self._emit(event)
            return
        while True:
            since = stream.expected - 1
            reply = await self._ask(ws, reader, "direct_history", {"since": since, "limit": 100})
            if reply.type != "direct_history":
                return
            for item in reply.payload.get("messages", []):
                # Messages, their changes and mentions, each with its type.
                if type(item) is not dict or type(item.get("seq")) is not int:
                    continue
                try:
                    self._deliver(_DIRECT, item["seq"], direct_item(item))
                except ValueError as exc:
                    # Its seq is passed over, or the stream would wait for it.
                    logger.warning("ignored a direct_history item the client cannot read: %s", exc)
                    self._deliver(_DIRECT, item["seq"], None)
            if not reply.payload.get("has_more") or stream.expected - 1 == since:
                return

    def _http_url(self, path: str) -> str:
        parts = urllib.parse.urlsplit(self.url)
        scheme = "https" if parts.scheme == "wss" else "http"
        if path.startswith(("http://", "https://")):
            return path
        return urllib.parse.urlunsplit((scheme, parts.netloc, path.split("?")[0], "", "")) + (
            "?" + path.split("?", 1)[1] if "?" in path else ""
        )

    # -- reading ---------------------------------------------------------------

    async def _read(self, ws: Connection) -> None:
        async for data in ws:
            if isinstance(data, bytes):
                continue
            try:
                event = parse_server_frame(data)
            except ValueError as exc:
                logger.warning("ignored a frame the client cannot read: %s", exc)
                continue
            self._handle(event)

    def _handle(self, event: Event) -> None:
        if isinstance(event, RoomMessage):
            if event.room in self._streams:
                self._deliver(event.room, event.seq, event)
            return
        if isinstance(event, DirectMessage | Mention):
            self._deliver(_DIRECT, event.seq, event)
            return
        if isinstance(event, MessageEdited | MessageDeleted | Reaction):
            # A change takes the next seq of the conversation it belongs to.
            if event.room is None:
                self._deliver(_DIRECT, event.seq, event)
            elif event.room in self._streams:
                self._deliver(event.room, event.seq, event)
            return
        if isinstance(event, ReadMarker):
            self._marker_moved(event)
            return
        if isinstance(event, Removed):
            # Out of the room now (removed, banned, the room deleted): it is
            # not joined again on the next reconnect.
            self._forget_room(event.room)
        if isinstance(event, Reply):
            if event.type == "system":
                user = event.payload.get("user") or {}
                self._signed_in(str(user.get("name") or "") or None, user)
            elif event.type == "auth" and event.payload.get("ok"):
                user = event.payload.get("user") or {}
                self._signed_in(str(user.get("name") or self.user), user)
            elif event.type == "joined":
                # The lobby on connect, or an answer to join: the stream starts
                # after the room's last seq (a resume join is checked in _resume).
                self._joined(event.payload, resumed=False)
                self._book.joined(event.payload)
            elif event.type == "read" and event.id is not None:
                # The answer to this client's read: the counts move as for any device's.
                try:
                    self._marker_moved(read_marker(event.payload))
                except (KeyError, TypeError, ValueError) as exc:
                    logger.warning("ignored a read answer the client cannot read: %r", exc)
            elif event.type == "left" and event.id is None:
                # The server took this connection out of the room (a new
                # identity may not be in it): do not join it again on resume.
                self._streams.pop(str(event.payload.get("room", "")), None)
            if event.id is not None:
                self._answer(event)
                return
        if isinstance(event, ServerError) and event.code == "token_expired":
            self._token_expired()
        self._emit(event)

    def _signed_in(self, user: str | None, about: object = None) -> None:
        """Who this connection is; another user than before starts the counts over.

        ``about``: the frame's user object, which says whether they are an admin.
        """
        if self.user is not None and user is not None and user.casefold() != self.user.casefold():
            self._book = UnreadBook()
            self._peer_seq.clear()
        self.user = user
        if type(about) is dict and "admin" in about:
            self.admin = about["admin"] is True

    def _answer(self, reply: Reply) -> None:
        out = self._outbox.get(reply.id or "")
        if out is None:
            self._emit(reply)
            return
        if reply.type == "error":
            code = str(reply.payload.get("code", ""))
            if code == "rate_limited":
                retry = float(reply.payload.get("retry_after", 1000)) / 1000
                asyncio.get_running_loop().call_later(retry, self._resend, out)
                return
            if code == "internal" and not out.once:
                # The server could not store it (its database is away): not
                # stored, so send it again, later and later, until the send's
                # timeout. A resend of the same id is stored once.
                retry = min(INTERNAL_RETRY_FIRST * 2**out.failures, INTERNAL_RETRY_CAP)
                out.failures += 1
                asyncio.get_running_loop().call_later(
                    retry * random.uniform(0.5, 1.0), self._resend, out
                )
                return
            del self._outbox[out.id]
            if not out.future.done():
                if out.once:
                    out.future.set_result(reply)
                else:
                    out.future.set_exception(send_error(reply.payload))
            return
        del self._outbox[out.id]
        if not out.future.done():
            out.future.set_result(reply)

    def _resend(self, out: _Outgoing) -> None:
        if out.id in self._outbox and self.state is ConnectionState.CONNECTED:
            out.sent_on = -1
            asyncio.ensure_future(self._write(out))

    def _forget_room(self, room: str) -> None:
        """Stop following ``room``: nothing more is delivered from it, no resume joins it."""
        self._streams.pop(room, None)
        self._pruned.discard(room)

    def _shut_out(self, room: str, error: dict[str, Any]) -> None:
        """A resume join refused for good (removed or banned while away): forget the room."""
        self._forget_room(room)
        refusal = send_error(error)
        self._emit(
            Removed(
                room,
                "",
                refusal.message or None,
                refusal.code == "banned",
                refusal.until,
            )
        )

    def _joined(self, payload: dict[str, Any], *, resumed: bool) -> None:
        room = str(payload.get("room", ""))
        stream = self._streams.get(room)
        if stream is None:
            return
        if stream.expected is None:
            for event in stream.start_at(int(payload.get("seq", 0)) + 1):
                self._emit(event)
        elif resumed and payload.get("recovered") is False:
            # Some missed messages are gone (retention): the replay starts at
            # the first one kept, whatever it is.
            logger.warning("room %s: messages after seq %d were pruned", room, stream.expected - 1)
            stream.expected = None
            self._pruned.add(room)

    def _deliver(self, key: str, seq: int, event: Event | None) -> None:
        stream = self._streams.get(key)
        if stream is None:
            return
        if stream.expected is None and key in self._pruned:
            self._pruned.discard(key)
            for ready in stream.start_at(min([seq, *stream.early])):
                self._emit(ready)
        for ready in stream.offer(seq, event):
            self._emit(ready)


def _receipts(value: object) -> Mapping[str, int]:
    """A history reply's ``receipts`` (reader -> seq read up to); empty when absent or bad."""
    if type(value) is not dict or not value:
        return _NO_RECEIPTS
    return MappingProxyType({str(user): seq for user, seq in value.items() if type(seq) is int})


def _read_counts(value: object) -> Mapping[int, int]:
    """A history reply's ``read_counts`` (``[[seq, n], ...]``) as seq -> readers."""
    if not isinstance(value, list) or not value:
        return _NO_READ_COUNTS
    pairs = (p for p in value if isinstance(p, list) and len(p) == 2)
    return MappingProxyType({p[0]: p[1] for p in pairs if type(p[0]) is int and type(p[1]) is int})


def _iso_time(value: datetime | date | str | None) -> str | None:
    """A search bound as the server reads it: UTC with milliseconds, a date, or as given."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, datetime):
        when = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return value.isoformat()


def _frame(kind: str, payload: dict[str, Any], fid: str | None = None) -> str:
    frame: dict[str, Any] = {"type": kind, "payload": payload}
    if fid is not None:
        frame["id"] = fid
    return orjson.dumps(frame).decode()


def _http(method: str, url: str, body: bytes | None, headers: dict[str, str]) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), bytes(exc.read())
