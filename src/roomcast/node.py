"""The node: one roomcast process's application logic.

The node turns what sessions decide into effects: it stores messages (the
store assigns seqs), delivers frames to local members through the hub and
publishes them to other nodes through the broker. It never touches a socket;
the transport (``server.py``) feeds it frames and gives it peers to write to.

Frames that carry a seq (room and direct messages) reach the hub through a
:class:`~roomcast.sequencer.Sequencer`, whether they were stored here or on
another node, so members see each room in seq order with no gap even when
several nodes write to it at once; a gap is read from the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import re
import secrets
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import replace
from pathlib import Path
from typing import Any, Final, TypeVar

from .accounts import Accounts
from .broker.base import Broker, Publication
from .config import DEFAULT_LIMITS, Limits
from .exceptions import (
    AuthError,
    BackendError,
    BrokerError,
    DomainError,
    Forbidden,
    InvalidRequest,
    NotFound,
    ProtocolError,
    QuotaExceeded,
    StoreBusy,
    StoreError,
    TooLarge,
    UnknownUser,
)
from .files import FileLinks, FileStore, safe_file_name
from .hub import Hub, Peer
from .metrics import Metrics
from .protocol.codes import CloseCode, ErrorCode
from .protocol.messages import (
    LOBBY,
    Ack,
    AuthFrame,
    AuthOk,
    Chat,
    ChatMessage,
    Direct,
    DirectHistoryReply,
    DirectHistoryRequest,
    DirectMessage,
    ErrorReply,
    FileHeader,
    FileInfo,
    HistoryReply,
    HistoryRequest,
    Join,
    Joined,
    Leave,
    Left,
    MemberList,
    PresenceEvent,
    PresenceRequest,
    ServerFrame,
    Typing,
    TypingEvent,
    UserInfo,
    Welcome,
    encode,
)
from .protocol.session import Close, Outcome, Reply, Session
from .protocol.wsframe import text_frame
from .rooms import Rooms
from .sequencer import Sequencer
from .store.base import AppendResult, DirectResult, Store

__all__ = ["GUEST_NAME", "Node"]

logger = logging.getLogger("roomcast.node")

T = TypeVar("T")
M = TypeVar("M", ChatMessage, DirectMessage)

#: A media type as a file header may give it (``type/subtype``, no parameters).
MEDIA_TYPE: Final = re.compile(
    r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}"
)
#: The media type of a file whose header gave none that is valid.
OCTET_STREAM: Final = "application/octet-stream"

#: Nicknames a guest may choose: letters, digits, ``_`` and ``-``, 1 to 32.
GUEST_NAME: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,31}")

#: Messages replayed per store read when a join asks for ``since``.
REPLAY_PAGE: Final = 500

#: The window of the upload quota (``Limits.upload_quota``), in seconds.
UPLOAD_WINDOW: Final = 24 * 3600.0

#: Seconds a join waits for live delivery to reach what it replayed.
CATCH_UP_WAIT: Final = 2.0

#: Seconds an unauthenticated connection has to ``auth`` when guests are off.
AUTH_TIMEOUT: Final = 10.0
#: Seconds a connection whose token expired has to send a fresh one.
REAUTH_TIMEOUT: Final = 30.0

#: The error and close reason when a user is over ``max_connections_per_user``.
TOO_MANY_CONNECTIONS: Final = "too many connections for this user"

#: Seconds a claimed name is remembered: longer than any store read a guest
#: ``auth`` waits on, so a registration it did not see still refuses it.
CLAIM_MEMORY: Final = 60.0

#: The close reason for a guest whose name a registered user took.
NAME_CLAIMED: Final = "your name now belongs to a registered user"

#: Seconds between two warnings that the store refuses messages (it is full).
BUSY_WARN_EVERY: Final = 10.0


class Node:
    """Orchestrates sessions, the hub, the store and the broker.

    Args:
        store: where messages are kept.
        broker: how publications reach other nodes.
        limits: per-connection limits.
        heartbeat: the ping interval announced in the welcome frame.
        guests: whether unauthenticated connections are guests.
        accounts: registered users and their tokens; None accepts no token.
        auth_timeout: seconds a connection has to ``auth`` when guests are off.
        reauth_timeout: seconds a connection whose token expired has to send a new one.
        metrics: where to count; a new registry of its own by default.
        files: where files sent in binary frames are kept; None refuses files.
        links: signs the links to files in file messages; None sends none.
    """

    def __init__(
        self,
        *,
        store: Store,
        broker: Broker,
        limits: Limits = DEFAULT_LIMITS,
        heartbeat: float = 30.0,
        guests: bool = True,
        accounts: Accounts | None = None,
        auth_timeout: float = AUTH_TIMEOUT,
        reauth_timeout: float = REAUTH_TIMEOUT,
        metrics: Metrics | None = None,
        files: FileStore | None = None,
        links: FileLinks | None = None,
    ) -> None:
        self.id = uuid.uuid4().hex[:12]
        self.hub = Hub()
        self.store = store
        self.broker = broker
        self.limits = limits
        self.heartbeat = heartbeat
        self.guests = guests
        self.accounts = accounts
        self.metrics = metrics or Metrics()
        #: When the last "store busy" warning was logged (loop time).
        self._busy_warned = -BUSY_WARN_EVERY
        self.files = files
        self.links = links
        self.metrics.watch(self.hub)
        #: Room access and the room lifecycle (both edges call it).
        self.rooms = Rooms(store, self)
        self.auth_timeout = auth_timeout
        self.reauth_timeout = reauth_timeout
        #: Per connection: the timer of its token's expiry or its auth deadline.
        self._deadlines: dict[Peer, asyncio.TimerHandle] = {}
        #: Rooms with a local member, and the inboxes of local users.
        self._room_order = Sequencer(self._deliver_room, self._fetch_room)
        self._inbox_order = Sequencer(self._deliver_inbox, self._fetch_inbox)
        #: Names claimed lately (lower case -> loop time), for a guest ``auth``
        #: whose store read was answered before the name was registered.
        self._claims: dict[str, float] = {}
        #: Store reads in flight for gaps and catch-ups (kept from the GC).
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Open the store and start receiving other nodes' publications."""
        await self.store.open()
        try:
            await self.broker.start(self.id, self)
        except BaseException:
            await self.store.close()
            raise

    async def flush(self) -> None:
        """Wait until every message received so far is stored (or failed) and acked."""
        await self.store.flush()
        await asyncio.sleep(0)  # let the acks of the last batch go out

    async def close(self) -> None:
        """Stop the broker, then flush and close the store."""
        await self.broker.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.store.close()

    async def ready(self) -> dict[str, str]:
        """Whether the store and broker answer, by name (``ok`` or the error)."""
        status: dict[str, str] = {}
        for name, backend in (("store", self.store), ("broker", self.broker)):
            try:
                await backend.ping()
                status[name] = "ok"
            except BackendError as exc:
                status[name] = str(exc) or type(exc).__name__
        return status

    # -- connections -----------------------------------------------------------

    def new_session(self, user: UserInfo | None = None) -> Session:
        """A session for a new connection: ``user``, else a guest unless guests are off."""
        if user is None and self.guests:
            user = UserInfo(self._guest_name(), True)
        return Session(
            uuid.uuid4().hex,
            user,
            max_rooms=self.limits.max_rooms,
            max_message_chars=self.limits.max_message_chars,
            rate_limit=self.limits.rate_limit,
            rate_burst=self.limits.rate_burst,
        )

    def _guest_name(self) -> str:
        while True:
            name = f"guest-{secrets.token_hex(4)}"
            if not self.hub.name_in_use(name):
                return name

    async def connect(self, peer: Peer) -> None:
        """A connection is open: welcome it and put it in the lobby."""
        session = peer.session
        if session.user is not None and self._too_many_connections(session.user.name):
            peer.close(CloseCode.POLICY_VIOLATION, TOO_MANY_CONNECTIONS)
            return
        if session.user is not None and not session.user.guest:
            # A token at the handshake follows the same rule as ``auth``.
            self.claim_name(session.user.name)
        self.hub.add(peer)
        self._reply(
            peer,
            Welcome(
                session.id,
                session.user or UserInfo("", False),
                self.heartbeat,
            ),
        )
        if session.user is not None:
            pending = self.dispatch(peer, Join(None, LOBBY))
            if pending is not None:
                await pending
        else:
            self._set_deadline(peer, self.auth_timeout, self._auth_timed_out)

    def set_token_expiry(self, peer: Peer, expires_at: float) -> None:
        """Ask ``peer`` for a fresh token when its token expires (epoch seconds)."""
        self._set_deadline(peer, max(0.0, expires_at - time.time()), self._token_expired)

    def _set_deadline(self, peer: Peer, delay: float, action: Callable[[Peer], None]) -> None:
        old = self._deadlines.pop(peer, None)
        if old is not None:
            old.cancel()
        loop = asyncio.get_running_loop()
        self._deadlines[peer] = loop.call_later(delay, action, peer)

    def _auth_timed_out(self, peer: Peer) -> None:
        self._deadlines.pop(peer, None)
        if peer.session.user is None:
            peer.close(CloseCode.POLICY_VIOLATION, f"authenticate within {self.auth_timeout:g} s")

    def _token_expired(self, peer: Peer) -> None:
        self._reply(
            peer,
            ErrorReply(
                ErrorCode.TOKEN_EXPIRED,
                f"your token has expired: send auth with a new one within "
                f"{self.reauth_timeout:g} s",
            ),
        )
        self._set_deadline(peer, self.reauth_timeout, self._reauth_timed_out)

    def _reauth_timed_out(self, peer: Peer) -> None:
        self._deadlines.pop(peer, None)
        peer.close(CloseCode.POLICY_VIOLATION, "token expired")

    def disconnect(self, peer: Peer) -> None:
        """A connection ended: forget it and tell the rooms it was in."""
        deadline = self._deadlines.pop(peer, None)
        if deadline is not None:
            deadline.cancel()
        user = peer.session.user
        for room, user_left in self.hub.remove(peer):
            if user_left and user is not None:
                self.broker.presence_changed(room, user.name, False)
            self._forget_room(room)
        if user is not None and not self.hub.user_online(user.name):
            self._inbox_order.close(user.name)

    def claim_name(self, name: str) -> None:
        """``name`` is a registered user's: close the guests using it, on every node.

        Called when the user registers, signs in, or connects with a token.
        What is addressed to the user never reaches a guest anyway (the hub
        sends to registered connections only); this ends the impersonation
        in the rooms too.
        """
        self._evict_guests(name)
        self.broker.publish(Publication(self.id, None, name, b"", name_claim=True))

    def _claimed_lately(self, name: str) -> bool:
        """Whether ``name`` was claimed within :data:`CLAIM_MEMORY` seconds (any case)."""
        at = self._claims.get(name.lower())
        return at is not None and asyncio.get_running_loop().time() - at < CLAIM_MEMORY

    def _evict_guests(self, name: str) -> None:
        now = asyncio.get_running_loop().time()
        claims = self._claims
        claims[name.lower()] = now
        if len(claims) > 1024:  # forget the old ones now and then
            for key in [k for k, at in claims.items() if now - at >= CLAIM_MEMORY]:
                del claims[key]
        for peer in self.hub.guests_named(name):
            self._reply(
                peer,
                ErrorReply(
                    ErrorCode.AUTH_FAILED,
                    f"the name {name} now belongs to a registered user; connect with another",
                ),
            )
            peer.close(CloseCode.POLICY_VIOLATION, NAME_CLAIMED)

    # -- input -------------------------------------------------------------------

    def handle_text(
        self, peer: Peer, data: str | bytes, arrived: Outcome | None = None
    ) -> Coroutine[Any, Any, None] | None:
        """Carry out one text frame from ``peer`` as far as it can without waiting.

        Most frames (chat, typing, ping, leave, refusals) are done when this
        returns None. A frame that must wait for the store (join, history,
        auth, direct) returns the coroutine that finishes it: the transport
        awaits it before it hands this connection's next frame in, so each
        connection's frames are carried out in order.

        A frame that came while an earlier one waited was parsed and rate
        limited when it arrived (``Session.arrive_text``): ``arrived`` is
        that result, and ``data`` is not read again.
        """
        session = peer.session
        if arrived is None:
            outcome = session.receive_text(data, asyncio.get_running_loop().time())
        else:
            outcome = session.decide(arrived)
        self.metrics.frame_in(_kind(outcome))
        return self.dispatch(peer, outcome)

    def handle_binary(
        self, peer: Peer, data: bytes, arrived: Outcome | None = None
    ) -> Coroutine[Any, Any, None] | None:
        """Carry out one binary frame from ``peer``; like :meth:`handle_text`.

        ``data`` is needed even when ``arrived`` is given: it holds the file.
        """
        session = peer.session
        if arrived is None:
            outcome = session.receive_binary(data, asyncio.get_running_loop().time())
        else:
            outcome = session.decide(arrived)
        self.metrics.frame_in(_kind(outcome))
        if isinstance(outcome, FileHeader):
            return self._finish(peer, outcome, self._file(peer, outcome, data))
        return self.dispatch(peer, outcome)

    def dispatch(self, peer: Peer, outcome: Outcome) -> Coroutine[Any, Any, None] | None:
        """Do what a session decided; a coroutine for the part that must wait."""
        try:
            match outcome:
                case Chat():
                    self._chat(peer, outcome)
                case Reply(frame=frame, id=fid):
                    self._reply(peer, frame, fid)
                case Close(code=code, reason=reason):
                    peer.close(code, reason)
                case Join():
                    return self._finish(peer, outcome, self._join(peer, outcome))
                case Leave():
                    self._leave(peer, outcome)
                case Typing():
                    self._typing(peer, outcome)
                case HistoryRequest():
                    return self._finish(peer, outcome, self._history(peer, outcome))
                case PresenceRequest():
                    return self._finish(peer, outcome, self._presence_list(peer, outcome))
                case AuthFrame():
                    return self._finish(peer, outcome, self._auth(peer, outcome))
                case Direct():
                    return self._finish(peer, outcome, self._direct(peer, outcome))
                case DirectHistoryRequest():
                    return self._finish(peer, outcome, self._direct_history(peer, outcome))
                case FileHeader():
                    # A file needs its bytes: handle_binary carries them out.
                    self._error(
                        peer, ErrorCode.INVALID_MESSAGE, "a file needs its bytes", outcome.id
                    )
        except (ProtocolError, DomainError, BackendError) as exc:
            self._refused(peer, outcome, exc)
        return None

    async def _finish(self, peer: Peer, outcome: Outcome, work: Coroutine[Any, Any, None]) -> None:
        try:
            await work
        except (ProtocolError, DomainError, BackendError) as exc:
            self._refused(peer, outcome, exc)

    def _refused(
        self, peer: Peer, outcome: Outcome, exc: ProtocolError | DomainError | BackendError
    ) -> None:
        """Answer a frame that failed with an ``error`` frame."""
        if isinstance(exc, ProtocolError):
            fid = exc.frame_id or getattr(outcome, "id", None)
            self._reply(peer, ErrorReply.from_exception(exc), fid)
            return
        if isinstance(exc, DomainError):
            self._reply(peer, ErrorReply.refused(exc), getattr(outcome, "id", None))
            return
        logger.error("backend failure: %s", exc)
        fid = getattr(outcome, "id", None)
        self._error(peer, ErrorCode.INTERNAL, "the server could not do that; retry", fid)

    # -- commands ----------------------------------------------------------------

    def _chat(self, peer: Peer, cmd: Chat) -> None:
        # Not awaited: the store batches this connection's (and everyone's)
        # messages; the callbacks run in store order, which is seq order.
        user = peer.session.user
        assert user is not None
        stored = self.store.append(cmd.room, user.name, cmd.message, client_id=cmd.id)
        received = asyncio.get_running_loop().time()
        sent = (cmd.message, None)
        stored.add_done_callback(functools.partial(self._chat_stored, peer, cmd.id, received, sent))

    def _chat_stored(
        self,
        peer: Peer,
        frame_id: str | None,
        received: float,
        sent: Sent,
        stored: asyncio.Future[AppendResult],
    ) -> None:
        result = self._stored(peer, frame_id, stored)
        if result is None or self._id_reused(peer, frame_id, result, sent):
            return
        message = result.message
        if not result.duplicate:
            self._publish(message.room, text_frame(encode(self._linked(message))), message.seq)
        if frame_id is not None:
            self._reply(peer, Ack(message.message_id, message.room, message.seq), frame_id)
        self.metrics.ack_seconds.observe(asyncio.get_running_loop().time() - received)

    def _id_reused(
        self, peer: Peer, frame_id: str | None, result: AppendResult | DirectResult, sent: Sent
    ) -> bool:
        """Whether a resend's id names another message: then the sender is told so."""
        if not result.duplicate or same_message(result.message, sent):
            return False
        self._error(peer, ErrorCode.INVALID_MESSAGE, id_reused(frame_id), frame_id)
        return True

    def _stored(self, peer: Peer, frame_id: str | None, stored: asyncio.Future[T]) -> T | None:
        """What the store returned, or None once the sender is told it was not stored."""
        try:
            return stored.result()
        except StoreBusy as exc:
            self._store_busy(peer, frame_id, exc)
            return None
        except BackendError as exc:
            logger.error("message from %s not stored: %s", peer.session.id, exc)
        except Exception:
            logger.exception("message from %s not stored", peer.session.id)
        self._error(peer, ErrorCode.INTERNAL, "the message was not stored; send it again", frame_id)
        return None

    def _store_busy(self, peer: Peer, frame_id: str | None, exc: StoreBusy) -> None:
        """The store refused a message (its queue is full): ``rate_limited``, retry later."""
        now = asyncio.get_running_loop().time()
        if now - self._busy_warned >= BUSY_WARN_EVERY:
            self._busy_warned = now
            logger.warning("the store is saturated, refusing messages: %s", exc)
        message = "the server is busy storing messages; send it again later"
        self._reply(peer, ErrorReply.rate_limited(message, exc.retry_after), frame_id)

    async def _join(self, peer: Peer, cmd: Join) -> None:
        user = peer.session.user
        assert user is not None
        room = cmd.room
        was_member = room in peer.session.rooms
        if room != LOBBY and not was_member:
            await self.rooms.check_access(user, room)
        first = self.hub.join(room, peer)
        self._room_order.open(room)
        # From here on the room's live frames are kept aside for this peer,
        # so none can overtake ``joined`` or the replay, and none is lost.
        self.hub.hold(room, peer, self.limits.max_queue_bytes)
        held = None
        try:
            if first:
                self.broker.presence_changed(room, user.name, True)
            stored_last = await self.store.last_seq(room)
            # Live frames go out from the room's position on: the replay
            # covers everything up to there (which may be past the read).
            last = max(stored_last, self._room_order.start(room, stored_last))
            after, recovered, replay_from = last, None, None
            if cmd.since is not None:
                kept = await self.store.first_seq(room)
                recovered = kept - 1 <= cmd.since <= last
                after = min(max(cmd.since, kept - 1), last)
                cap = self.limits.max_replay
                if last - after > cap:
                    # The newest part goes now, joined to the live stream;
                    # the client pages back through the rest with history.
                    after = last - cap
                    replay_from = after + 1
            members, count = await self._members(room)
            joined = Joined(room, last, members, count, recovered, replay_from)
            self._reply(peer, joined, cmd.id)
            while True:
                after = await self._replay(peer, room, after, last)
                await self._caught_up(room, after)
                held = self.hub.release(room, peer)
                if held is None or not held.overflowed:
                    break
                # Too much arrived while replaying: read it from the store too.
                self.hub.hold(room, peer, self.limits.max_queue_bytes)
                held = None
                last = max(await self.store.last_seq(room), self._room_order.position(room) or 0)
        except BaseException:
            held = self.hub.release(room, peer)
            if not was_member:
                if self.hub.leave(room, peer):
                    self.broker.presence_changed(room, user.name, False)
                self._forget_room(room)
            elif held is not None:
                for _, frame in held.frames:  # it stays a member: keep it live
                    peer.send(frame)
            raise
        if held is not None:
            for seq, frame in held.frames:
                if seq is None or seq > after:
                    peer.send(frame)

    async def _caught_up(self, room: str, seq: int) -> None:
        """Wait until live delivery in ``room`` has reached ``seq`` (at most ``CATCH_UP_WAIT``).

        Bounded: a gap the sequencer is still fetching must not hold a join
        for long (the held frames then cover it).
        """
        reached = self._room_order.reached(room, seq)
        if reached is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(reached, CATCH_UP_WAIT)

    async def _replay(self, peer: Peer, room: str, after: int, last: int) -> int:
        """Send ``room``'s stored messages with ``after < seq <= last``; return the last sent."""
        # Drained each half of the send queue's bound, not each page: 500
        # messages of 4,000 three-byte characters are 6 MB, which one write
        # would put over the bound and close the reader as a slow consumer.
        pace = self.limits.max_queue_bytes // 2
        while after < last:
            page = await self.store.since(room, after, limit=min(REPLAY_PAGE, last - after))
            if not page:
                break
            queued = 0
            for message in page:
                frame = text_frame(encode(self._linked(message)))
                peer.send(frame)
                after = message.seq
                queued += len(frame)
                if queued >= pace:
                    if not await peer.drain():
                        return after
                    queued = 0
            if not await peer.drain():
                break
        return after

    def _leave(self, peer: Peer, cmd: Leave) -> None:
        self._leave_room(peer, cmd.room)
        self._reply(peer, Left(cmd.room), cmd.id)

    def _leave_room(self, peer: Peer, room: str) -> None:
        user = peer.session.user
        assert user is not None
        if self.hub.leave(room, peer):
            self.broker.presence_changed(room, user.name, False)
        self._forget_room(room)

    def _typing(self, peer: Peer, cmd: Typing) -> None:
        user = peer.session.user
        assert user is not None
        frame = text_frame(encode(TypingEvent(cmd.room, user.name)))
        self.hub.deliver(cmd.room, frame, skip_user=user.name)
        self.broker.publish(Publication(self.id, cmd.room, None, frame, skip_user=user.name))

    async def _history(self, peer: Peer, cmd: HistoryRequest) -> None:
        user = peer.session.user
        assert user is not None
        reply = await self.history(user, cmd.room, before=cmd.before, limit=cmd.limit)
        self._reply(peer, reply, cmd.id)

    async def history(
        self, user: UserInfo, room: str, *, before: int | None, limit: int
    ) -> HistoryReply:
        """A page of ``room``'s messages for ``user`` (WebSocket and HTTP).

        Raises:
            Forbidden: ``user`` may not read ``room``.
            BackendError: the store failed.
        """
        await self.rooms.check_access(user, room)
        messages, has_more = await self.store.history(room, before=before, limit=limit)
        return HistoryReply(room, [self._linked(m) for m in messages], has_more)

    async def post(
        self, user: UserInfo, room: str, text: str, *, client_id: str | None = None
    ) -> ChatMessage:
        """Store and broadcast a chat message from outside a connection (HTTP).

        Raises:
            Forbidden: a private room ``user`` is not in.
            InvalidRequest: ``client_id`` was used for another message.
            BackendError: the store failed; nothing was broadcast.
        """
        await self.rooms.check_access(user, room)
        result = await self.store.append(room, user.name, text, client_id=client_id)
        message = result.message
        if result.duplicate and not same_message(message, (text, None)):
            raise InvalidRequest(id_reused(client_id))
        if not result.duplicate:
            self._publish(room, text_frame(encode(message)), message.seq)
        return message

    async def _direct(self, peer: Peer, cmd: Direct) -> None:
        user = peer.session.user
        assert user is not None and not user.guest
        recipient = await self.store.get_user(cmd.to)
        if recipient is None:
            raise UnknownUser(f"there is no user {cmd.to}")
        stored = self.store.append_direct(user.name, recipient.name, cmd.message, client_id=cmd.id)
        sent = (cmd.message, None)
        stored.add_done_callback(functools.partial(self._direct_stored, peer, cmd.id, sent))

    def _direct_stored(
        self,
        peer: Peer,
        frame_id: str | None,
        sent: Sent,
        stored: asyncio.Future[DirectResult],
    ) -> None:
        result = self._stored(peer, frame_id, stored)
        if result is None or self._id_reused(peer, frame_id, result, sent):
            return
        message = self._linked(result.message)
        if not result.duplicate:
            self.metrics.direct_out.inc()
            inboxes = [(message.sender, result.sender_seq)]
            if message.to != message.sender:
                inboxes.append((message.to, result.recipient_seq))
            for owner, seq in inboxes:
                frame = text_frame(encode(replace(message, seq=seq)))
                self.metrics.deliveries.inc(self._to_inbox(owner, seq, frame))
                self.broker.publish(Publication(self.id, None, owner, frame, seq=seq))
        if frame_id is not None:
            self._reply(peer, Ack(message.message_id, None, result.sender_seq), frame_id)

    async def _file(self, peer: Peer, header: FileHeader, data: bytes) -> None:
        """Keep a file, then store and send its message like a chat or direct message."""
        user = peer.session.user
        assert user is not None and not user.guest
        if self.files is None:
            raise Forbidden("this server does not keep files")
        body = data[header.body_offset :]
        if len(body) > self.limits.max_file_size:
            raise TooLarge(f"files are at most {self.limits.max_file_size} bytes")
        recipient = None
        if header.to is not None:
            recipient = await self.store.get_user(header.to)
            if recipient is None:
                raise UnknownUser(f"there is no user {header.to}")
        await self._check_quotas(user, len(body))
        mime = header.mime.lower() if MEDIA_TYPE.fullmatch(header.mime) else OCTET_STREAM
        try:
            digest = await self.files.put(body)
        except OSError as exc:
            logger.error("cannot keep a file from %s: %s", peer.session.id, exc)
            raise StoreError("the file could not be stored") from exc
        info = FileInfo(safe_file_name(header.name), mime, len(body), digest)
        if recipient is None:
            assert header.room is not None
            stored = self.store.append(header.room, user.name, "", client_id=header.id, file=info)
            received = asyncio.get_running_loop().time()
            stored.add_done_callback(
                functools.partial(self._chat_stored, peer, header.id, received, ("", digest))
            )
        else:
            direct = self.store.append_direct(
                user.name, recipient.name, "", client_id=header.id, file=info
            )
            direct.add_done_callback(
                functools.partial(self._direct_stored, peer, header.id, ("", digest))
            )

    async def _check_quotas(self, user: UserInfo, size: int) -> None:
        """Refuse a file past the sender's daily upload quota or the server's files quota."""
        assert self.files is not None
        quota = self.limits.upload_quota
        if quota > 0:
            since_ms = int((time.time() - UPLOAD_WINDOW) * 1000)
            sent = await self.store.file_bytes_since(user.name, since_ms)
            if sent + size > quota:
                raise QuotaExceeded(
                    f"you may send {quota} bytes of files in 24 hours; "
                    f"{max(0, quota - sent)} are left",
                )
        if not await self.files.fits(size):
            logger.warning("files quota of %d bytes reached: refusing files", self.files.quota)
            raise QuotaExceeded("the server keeps no more files for now")

    async def file_message(self, message_id: str) -> ChatMessage | DirectMessage:
        """The stored message that carries file ``message_id``.

        Raises:
            NotFound: no such message, it has no file, or this server keeps no files.
        """
        message = await self.store.message_by_id(message_id)
        if message is None or message.file is None or self.files is None:
            raise NotFound("no such file")
        return message

    async def open_file(
        self, message: ChatMessage | DirectMessage, reader: UserInfo | None
    ) -> tuple[FileInfo, Path]:
        """The file of ``message`` and where it is kept, if ``reader`` may read it.

        ``reader`` None is a signed link, which vouches for the reader.

        Raises:
            Forbidden: ``reader`` may not read the room, or is neither side
                of the direct message.
            NotFound: the file is not kept (any more).
        """
        info = message.file
        assert info is not None and self.files is not None
        if reader is not None:
            if isinstance(message, ChatMessage):
                await self.rooms.check_access(reader, message.room)
            elif reader.name not in (message.sender, message.to):
                raise Forbidden("this file was sent to someone else")
        try:
            path = self.files.path(info.sha256)
        except ValueError:
            raise NotFound("no such file") from None
        if not path.is_file():
            logger.error("file %s of message %s is missing", info.sha256, message.message_id)
            raise NotFound("the file is missing")
        return info, path

    async def sweep_files(self) -> int:
        """Delete kept files that no stored message names any more; return how many."""
        if self.files is None:
            return 0
        return await self.files.sweep(await self.store.file_digests())

    def _linked(self, message: M) -> M:
        """``message`` with a signed link to its file, if it carries one."""
        file = message.file
        if file is None or self.links is None:
            return message
        return replace(message, file=replace(file, url=self.links.url(message.message_id)))

    async def _direct_history(self, peer: Peer, cmd: DirectHistoryRequest) -> None:
        user = peer.session.user
        assert user is not None
        reply = await self.direct_history(user, before=cmd.before, since=cmd.since, limit=cmd.limit)
        self._reply(peer, reply, cmd.id)

    async def direct_history(
        self, user: UserInfo, *, before: int | None, since: int | None, limit: int
    ) -> DirectHistoryReply:
        """A page of ``user``'s direct messages: after ``since``, or before ``before``."""
        if user.guest:
            raise Forbidden("direct messages need a registered user")
        last = await self.store.direct_last_seq(user.name)
        if since is not None:
            messages, more = await self.store.direct_since(user.name, since, limit=limit)
        else:
            messages, more = await self.store.direct_history(user.name, before=before, limit=limit)
        return DirectHistoryReply([self._linked(m) for m in messages], more, last)

    async def _presence_list(self, peer: Peer, cmd: PresenceRequest) -> None:
        user = peer.session.user
        assert user is not None
        await self.rooms.check_access(user, cmd.room)
        members, count = await self._members(cmd.room)
        self._reply(peer, MemberList(cmd.room, members, count), cmd.id)

    async def _members(self, room: str) -> tuple[list[str], int]:
        """The users in ``room`` on every node (at most ``presence_limit`` names), and how many.

        This node's own members count even before the broker has them, and
        are all that is listed while the broker is unreachable.
        """
        limit = self.limits.presence_limit
        local = self.hub.members(room)
        try:
            found = await self.broker.members(room, limit)
        except BrokerError as exc:
            # Chat goes on without the broker: list who is here.
            logger.warning("presence of %s from this node only: %s", room, exc)
            return local[:limit], len(local)
        if found.count > len(found.names) or set(found.names).issuperset(local):
            names, count = found.names, found.count
        else:
            merged = dict.fromkeys([*found.names, *local])
            names, count = list(merged), len(merged)
        return names[:limit], max(count, len(local))

    async def member_count(self, room: str) -> int:
        """How many users are in ``room`` on every node."""
        return (await self._members(room))[1]

    def local_rooms(self) -> list[str]:
        """The rooms with a member on this node."""
        return list(self.hub.rooms())

    async def _auth(self, peer: Peer, cmd: AuthFrame) -> None:
        session = peer.session
        old = session.user
        expires_at: float | None = None
        if cmd.guest is None:
            if self.accounts is None or cmd.token is None:
                self._auth_failed(peer, "this server accepts no tokens", cmd.id)
                return
            try:
                user, expires_at = await self.accounts.user_for_token(cmd.token)
            except AuthError as exc:
                self._auth_failed(peer, str(exc), cmd.id)
                return
        else:
            if not self.guests:
                self._auth_failed(peer, "guests are not allowed on this server", cmd.id)
                return
            name = cmd.guest
            if GUEST_NAME.fullmatch(name) is None or name.lower().startswith("guest-"):
                self._auth_failed(peer, "nickname must be 1-32 letters, digits, _ or -", cmd.id)
                return
            user = UserInfo(name, True)
        refused: list[str] = []
        if old is not None and old != user:
            # A new identity keeps only the rooms it may be in itself. Read
            # before anything changes, so the switch below has no await in it.
            for room in sorted(session.rooms):
                if room != LOBBY and not await self.rooms.may_access(user, room):
                    refused.append(room)
        if user.guest and await self.store.get_user(user.name) is not None:
            # The last await before the switch: a name registered (and claimed)
            # while the rooms were read is seen here, and none can be after.
            self._auth_failed(peer, "that name belongs to a registered user", cmd.id)
            return
        # From here to the switch nothing waits: what is checked stays true.
        if user.guest and self._claimed_lately(user.name):
            # Registered after the read above answered, before this resumed.
            self._auth_failed(peer, "that name belongs to a registered user", cmd.id)
            return
        renamed = old is None or old.name != user.name
        if user.guest and renamed and self.hub.name_in_use(user.name):
            self._auth_failed(peer, "that name is in use", cmd.id)
            return
        if renamed and self._too_many_connections(user.name):
            self._error(peer, ErrorCode.FORBIDDEN, TOO_MANY_CONNECTIONS, cmd.id)
            peer.close(CloseCode.POLICY_VIOLATION, TOO_MANY_CONNECTIONS)
            return
        for room in refused:
            self._leave_room(peer, room)
        if old != user:
            self._rename(peer, old, user)
        session.authenticated(user)
        if not user.guest:
            self.claim_name(user.name)
        if expires_at is not None:
            self.set_token_expiry(peer, expires_at)
        else:
            # A guest has no credential that expires.
            deadline = self._deadlines.pop(peer, None)
            if deadline is not None:
                deadline.cancel()
        self._reply(peer, AuthOk(user), cmd.id)
        for room in refused:
            self._reply(peer, Left(room, f"{user.name} may not be in {room}"))
        if old is None:
            # A connection that had to authenticate first now enters the lobby.
            await self._join(peer, Join(None, LOBBY))

    def _rename(self, peer: Peer, old: UserInfo | None, new: UserInfo) -> None:
        """Move ``peer`` from ``old`` to ``new`` in the hub, with the presence events due."""
        rooms = peer.session.rooms
        old_name = old.name if old is not None else None
        old_present = set()
        if old_name is not None and old_name != new.name:
            old_present = {r for r in rooms if self.hub.connections_in(r, old_name) == 1}
        new_present = {r for r in rooms if self.hub.connections_in(r, new.name) == 0}
        self.hub.rename(peer, old, new)
        if old_name is not None and old_name != new.name:
            for room in sorted(old_present):
                self.broker.presence_changed(room, old_name, False)
        if old_name is not None and not self.hub.user_online(old_name):
            self._inbox_order.close(old_name)
        for room in sorted(new_present):
            self.broker.presence_changed(room, new.name, True)

    def _too_many_connections(self, name: str) -> bool:
        """Whether one more local connection for ``name`` would pass the per-user cap."""
        cap = self.limits.max_connections_per_user
        return cap > 0 and self.hub.connections_of(name) >= cap

    def _auth_failed(self, peer: Peer, message: str, frame_id: str | None) -> None:
        reply, close = peer.session.auth_failed(message, frame_id)
        self._reply(peer, reply.frame, reply.id)
        if close is not None:
            peer.close(close.code, close.reason)

    # -- output ------------------------------------------------------------------

    def _reply(self, peer: Peer, frame: ServerFrame, frame_id: str | None = None) -> None:
        if type(frame) is ErrorReply:
            self.metrics.error(frame.code)
        try:
            data = encode(frame, id=frame_id)
        except TypeError:
            # A pong or echo carries the client's own JSON back; orjson reads
            # 1,024 levels of nesting but writes only 254.
            frame = ErrorReply(ErrorCode.INVALID_MESSAGE, "the payload is nested too deeply")
            self.metrics.error(frame.code)
            data = encode(frame, id=frame_id)
        peer.send(text_frame(data))

    def _error(self, peer: Peer, code: ErrorCode, message: str, frame_id: str | None) -> None:
        self._reply(peer, ErrorReply(code, message), frame_id)

    def _publish(self, room: str, frame: bytes, seq: int) -> None:
        """Deliver a stored room message here, then hand it to the other nodes."""
        metrics = self.metrics
        metrics.deliveries.inc(self._room_order.offer(room, seq, frame))
        metrics.chat_out.inc()
        started = time.perf_counter()
        self.broker.publish(Publication(self.id, room, None, frame, seq=seq))
        metrics.broker_publish_seconds.observe(time.perf_counter() - started)

    def _deliver_room(self, room: str, seq: int, frame: bytes) -> int:
        return self.hub.deliver(room, frame, seq=seq)

    def _to_inbox(self, user: str, seq: int, frame: bytes) -> int:
        """Deliver a direct message to ``user``'s local connections, in inbox order."""
        if user not in self._inbox_order:
            if not self.hub.user_online(user):
                return 0
            # The first direct message since the user connected here sets
            # the inbox's position (earlier ones come from direct_history).
            self._inbox_order.start(user, seq - 1)
        return self._inbox_order.offer(user, seq, frame)

    def _deliver_inbox(self, user: str, seq: int, frame: bytes) -> int:
        return self.hub.send_to_user(user, frame)

    def _forget_room(self, room: str) -> None:
        """Stop ordering ``room``'s frames once it has no local member."""
        if not self.hub.has_members(room):
            self._room_order.close(room)

    # -- gaps --------------------------------------------------------------------

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        # Store reads for many rooms: not in any connection's log context.
        task = asyncio.get_running_loop().create_task(work, context=contextvars.Context())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _fetch_room(self, room: str, after: int, before: int) -> None:
        self.metrics.catch_ups.labels("gap").inc()
        self._spawn(self._fill_room(room, after, before))

    async def _fill_room(self, room: str, after: int, before: int) -> None:
        """Read ``room``'s messages ``after < seq < before`` and offer them in order."""
        complete = False
        try:
            while after < before - 1:
                limit = min(REPLAY_PAGE, before - 1 - after)
                page = await self.store.since(room, after, limit=limit)
                if not page:
                    break
                for message in page:
                    frame = text_frame(encode(self._linked(message)))
                    self.metrics.deliveries.inc(self._room_order.offer(room, message.seq, frame))
                after = page[-1].seq
            complete = True
        except BackendError as exc:
            logger.error("cannot read %s's missed messages: %s", room, exc)
        finally:
            self._room_order.filled(room, before, complete=complete)

    def _fetch_inbox(self, user: str, after: int, before: int) -> None:
        self.metrics.catch_ups.labels("gap").inc()
        self._spawn(self._fill_inbox(user, after, before))

    async def _fill_inbox(self, user: str, after: int, before: int) -> None:
        """Read ``user``'s direct messages ``after < seq < before`` and offer them in order."""
        complete = False
        try:
            while after < before - 1:
                limit = min(REPLAY_PAGE, before - 1 - after)
                page, _ = await self.store.direct_since(user, after, limit=limit)
                if not page:
                    break
                for message in page:
                    assert message.seq is not None
                    frame = text_frame(encode(self._linked(message)))
                    self.metrics.deliveries.inc(self._inbox_order.offer(user, message.seq, frame))
                    after = message.seq
            complete = True
        except BackendError as exc:
            logger.error("cannot read %s's missed direct messages: %s", user, exc)
        finally:
            self._inbox_order.filled(user, before, complete=complete)

    async def _catch_up(self) -> None:
        """After the broker was cut off: deliver what was stored meanwhile, from the store."""
        for attempt in range(10):
            try:
                for room in self._room_order.streams():
                    last = await self.store.last_seq(room)
                    position = self._room_order.position(room)
                    if position is not None and last > position:
                        await self._fill_room(room, position, last + 1)
                for user in self._inbox_order.streams():
                    last = await self.store.direct_last_seq(user)
                    position = self._inbox_order.position(user)
                    if position is not None and last > position:
                        await self._fill_inbox(user, position, last + 1)
                return
            except BackendError as exc:
                logger.error("cannot catch up from the store: %s", exc)
                await asyncio.sleep(min(0.1 * 2**attempt, 5.0))

    # -- broker events (BrokerEvents) ----------------------------------------------

    def on_publication(self, publication: Publication) -> None:
        """Deliver another node's publication to the local members it is for."""
        if publication.node_id == self.id:
            return
        if publication.name_claim:
            if publication.user is not None:
                self._evict_guests(publication.user)
            return
        room, seq, frame = publication.room, publication.seq, publication.frame
        if room is not None:
            if seq is not None:
                self.metrics.deliveries.inc(self._room_order.offer(room, seq, frame))
            else:
                self.hub.deliver(room, frame, skip_user=publication.skip_user)
        elif publication.user is not None:
            if seq is not None:
                self.metrics.deliveries.inc(self._to_inbox(publication.user, seq, frame))
            else:
                self.hub.send_to_user(publication.user, frame)

    def on_presence(self, room: str, user: str, joined: bool, count: int) -> None:
        """Tell ``room``'s members on every node that ``user`` joined or left it."""
        if count > self.limits.presence_limit:
            return
        event = PresenceEvent(room, user, "join" if joined else "leave")
        frame = text_frame(encode(event))
        self.hub.deliver(room, frame, skip_user=user)
        self.broker.publish(Publication(self.id, room, None, frame, skip_user=user))

    def on_resync(self) -> None:
        """The broker may have missed publications: catch up from the store."""
        self.metrics.catch_ups.labels("resync").inc()
        self._spawn(self._catch_up())

    def local_presence(self) -> list[tuple[str, str]]:
        """Every ``(room, user)`` with a connection on this node."""
        return self.hub.presence()


#: What a message sent with an id was: its text, and its file's SHA-256 if any.
Sent = tuple[str, str | None]


def same_message(stored: ChatMessage | DirectMessage, sent: Sent) -> bool:
    """Whether ``stored`` (found under a resent id) is the message ``sent`` again.

    A client resending after a reconnect sends the same text (or file); a
    different one under the same id is another message, never to be
    dropped as a resend.
    """
    digest = stored.file.sha256 if stored.file is not None else None
    return stored.message == sent[0] and digest == sent[1]


def id_reused(frame_id: str | None) -> str:
    """The error text for an id already used for another message."""
    return f"id {frame_id} was used for another message in the last 24 h; use a new id"


#: What a refused frame counts as in ``roomcast_frames_received``.
_REPLY_KINDS: Final = {"pong": "ping", "echo": "echo"}


def _kind(outcome: Outcome) -> str:
    """The frame type an outcome came from, for the metrics."""
    if isinstance(outcome, Reply):
        return _REPLY_KINDS.get(outcome.frame.TYPE, "refused")
    if isinstance(outcome, Close):
        return "refused"
    if isinstance(outcome, FileHeader):
        return "file"
    return outcome.TYPE
