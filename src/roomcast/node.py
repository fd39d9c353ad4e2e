"""The node: one roomcast process, wired together.

The node holds one collaborator per concern and starts and stops them:
who a connection is (:mod:`~roomcast.connections`), who is in which room
(:mod:`~roomcast.membership`), each room's and inbox's ordered stream
(:mod:`~roomcast.streams`), messages (:mod:`~roomcast.messaging`) and the
rules of rooms (:mod:`~roomcast.rooms`). It turns what a connection's
session decided into calls to them, and the broker's events into
deliveries. It never touches a socket: the transport (``websocket.py``)
feeds it frames and gives it peers to write to; the HTTP API (``api.py``)
calls the same collaborators.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import uuid
from collections.abc import Coroutine
from typing import Any, Final

import orjson

from .accounts import Accounts
from .broker.base import Broker, Publication
from .config import DEFAULT_LIMITS, Limits, Webhook
from .connections import AUTH_TIMEOUT, GUEST_NAME, REAUTH_TIMEOUT, Connections
from .exceptions import BackendError, DomainError, ProtocolError
from .files import FileLinks, FileStore
from .hub import Hub, Peer
from .membership import Membership
from .messaging import Messaging
from .metrics import Metrics
from .model import UserInfo
from .moderation import Moderation
from .notify import Notifier
from .outbox import Outbox
from .protocol.codes import ErrorCode
from .protocol.messages import (
    LOBBY,
    AuthFrame,
    Chat,
    Delete,
    Direct,
    DirectHistoryRequest,
    Edit,
    FileHeader,
    HistoryRequest,
    Join,
    Leave,
    Left,
    MemberList,
    PresenceRequest,
    React,
    Read,
    SearchRequest,
    Typing,
    UnreadRequest,
)
from .protocol.session import Close, Outcome, Reply, Session
from .quota.base import Quotas
from .quota.memory import MemoryQuotas
from .readstate import ReadState
from .revocation import ACCOUNT_DELETED, Revocations
from .rooms import Rooms
from .rules import RulesBook
from .search import MessageSearch
from .store.base import Store
from .streams import Streams

__all__ = ["GUEST_NAME", "Node"]

logger = logging.getLogger("roomcast.node")


class Node:
    """One roomcast process: its collaborators, their lifecycle, and the frames' dispatch.

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
        webhook: where notifications for users away are posted; None sends none.
        quotas: guest names, connections per user and logins, counted over every
            node; this process's own by default.
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
        webhook: Webhook | None = None,
        quotas: Quotas | None = None,
    ) -> None:
        #: This node's id, on its publications (its own come back to it).
        self.id = uuid.uuid4().hex[:12]
        #: Work started on the side (re-checking rooms after a resync), kept alive.
        self._tasks: set[asyncio.Task[None]] = set()
        #: Where messages, users and rooms are kept.
        self.store = store
        #: How publications and presence reach the other nodes.
        self.broker = broker
        #: Per-connection limits.
        self.limits = limits
        #: Guest names, connections per user and the login throttle, for every node.
        self.quotas: Quotas = quotas if quotas is not None else MemoryQuotas()
        #: Registered users and their tokens; None accepts no token.
        self.accounts = accounts
        #: What the node counts, for /metrics.
        self.metrics = metrics or Metrics()
        #: This node's connections and their rooms, and fan-out to them.
        self.hub = Hub()
        self.metrics.watch(self.hub)
        #: Encodes answers to a connection and counts the errors.
        self.outbox = Outbox(self.metrics)
        #: Who is in which room, here and on every node.
        self.membership = Membership(self.id, self.hub, broker, limits)
        #: Room access and the room lifecycle; each room's rules, kept in memory.
        self.rooms = Rooms(store, self.membership, RulesBook(store, self.hub.rooms))
        #: Each room's and inbox's messages in seq order; joins and their replay.
        self.streams = Streams(
            node_id=self.id,
            hub=self.hub,
            membership=self.membership,
            store=store,
            broker=broker,
            limits=limits,
            metrics=self.metrics,
            outbox=self.outbox,
            links=links,
        )
        #: Roles, removals, bans, mutes, slow mode, room settings, the audit log.
        self.moderation = Moderation(
            node_id=self.id,
            store=store,
            broker=broker,
            hub=self.hub,
            streams=self.streams,
            rooms=self.rooms,
            outbox=self.outbox,
        )
        #: How far each user has read; unread counts; receipts.
        self.read_state = ReadState(
            node_id=self.id,
            store=store,
            hub=self.hub,
            broker=broker,
            rooms=self.rooms,
            streams=self.streams,
            metrics=self.metrics,
            outbox=self.outbox,
        )
        #: Posts notifications for users away; None without a webhook.
        self.notifier = (
            Notifier(
                url=webhook.url,
                secret=webhook.secret,
                store=store,
                present=self.membership.online,
                metrics=self.metrics,
            )
            if webhook is not None
            else None
        )
        #: Full-text search over what each user may read.
        self.search = MessageSearch(store, self.rooms, self.metrics)
        #: Chat, direct messages, files, typing and history.
        self.messaging = Messaging(
            node_id=self.id,
            store=store,
            streams=self.streams,
            rooms=self.rooms,
            hub=self.hub,
            broker=broker,
            limits=limits,
            metrics=self.metrics,
            outbox=self.outbox,
            files=files,
            links=links,
            read_state=self.read_state,
            notifier=self.notifier,
            moderation=self.moderation,
        )
        #: Who each connection is, its deadlines, and name claims.
        self.connections = Connections(
            node_id=self.id,
            hub=self.hub,
            membership=self.membership,
            streams=self.streams,
            rooms=self.rooms,
            store=store,
            broker=broker,
            accounts=accounts,
            limits=limits,
            outbox=self.outbox,
            guests=guests,
            heartbeat=heartbeat,
            auth_timeout=auth_timeout,
            reauth_timeout=reauth_timeout,
            quotas=self.quotas,
        )
        #: Closes the connections of revoked sessions, here and on every node.
        self.revocations = Revocations(
            node_id=self.id, connections=self.connections, broker=broker, store=store
        )

    # -- lifecycle ----------------------------------------------------------------

    async def start(self) -> None:
        """Open the store and start receiving other nodes' publications."""
        await self.store.open()
        try:
            await self.broker.start(self.id, self)
        except BaseException:
            await self.store.close()
            raise
        self.read_state.start()
        self.revocations.start()
        if self.notifier is not None:
            await self.notifier.start()

    async def flush(self) -> None:
        """Wait until every message received so far is stored (or failed) and acked."""
        await self.store.flush()
        await asyncio.sleep(0)  # let the acks of the last batch go out

    async def close(self) -> None:
        """Write the moved markers and keep the queued notifications (their receipts
        and presence checks need the broker), stop the broker, then flush and close
        the store."""
        await self.revocations.close()
        await self.read_state.close()
        if self.notifier is not None:
            await self.notifier.close()
        await self.broker.close()
        await self.streams.close()
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

    # -- connections (the transport calls these) -------------------------------------

    def new_session(self, user: UserInfo | None = None) -> Session:
        """A session for a new connection: ``user``, else a guest unless guests are off."""
        return self.connections.new_session(user)

    async def connect(self, peer: Peer) -> None:
        """A connection is open: welcome it and put it in the lobby."""
        if await self.connections.connect(peer):
            user = peer.session.user
            assert user is not None
            await self.streams.open_inbox(user.name)
            pending = self.dispatch(peer, Join(None, LOBBY))
            if pending is not None:
                await pending

    def set_token_expiry(self, peer: Peer, expires_at: float) -> None:
        """Ask ``peer`` for a fresh token when its token expires (epoch seconds)."""
        self.connections.set_token_expiry(peer, expires_at)

    def disconnect(self, peer: Peer) -> None:
        """A connection ended: forget it and tell the rooms it was in."""
        self.connections.disconnect(peer)
        self.read_state.forget(peer)

    # -- frames from a connection ----------------------------------------------------

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
            return self._finish(peer, outcome, self.messaging.file(peer, outcome, data))
        return self.dispatch(peer, outcome)

    def dispatch(self, peer: Peer, outcome: Outcome) -> Coroutine[Any, Any, None] | None:
        """Do what a session decided; a coroutine for the part that must wait."""
        try:
            match outcome:
                case Chat():
                    work = self.messaging.chat(peer, outcome)
                    if work is not None:
                        return self._finish(peer, outcome, work)
                case Reply(frame=frame, id=fid):
                    self.outbox.reply(peer, frame, fid)
                case Close(code=code, reason=reason):
                    peer.close(code, reason)
                case Join():
                    return self._finish(peer, outcome, self._join(peer, outcome))
                case Leave():
                    self.streams.leave(peer, outcome.room)
                    self.outbox.reply(peer, Left(outcome.room), outcome.id)
                case Typing():
                    self.messaging.typing(peer, outcome)
                case HistoryRequest():
                    return self._finish(peer, outcome, self._history(peer, outcome))
                case PresenceRequest():
                    return self._finish(peer, outcome, self._presence_list(peer, outcome))
                case AuthFrame():
                    return self._finish(peer, outcome, self._auth(peer, outcome))
                case Direct():
                    return self._finish(peer, outcome, self.messaging.direct(peer, outcome))
                case Edit() | Delete() | React():
                    return self._finish(peer, outcome, self.messaging.change(peer, outcome))
                case DirectHistoryRequest():
                    return self._finish(peer, outcome, self._direct_history(peer, outcome))
                case Read():
                    return self._finish(peer, outcome, self.read_state.read(peer, outcome))
                case UnreadRequest():
                    return self._finish(peer, outcome, self._unread(peer, outcome))
                case SearchRequest():
                    return self._finish(peer, outcome, self._search(peer, outcome))
                case FileHeader():
                    # A file needs its bytes: handle_binary carries them out.
                    self.outbox.error(
                        peer, ErrorCode.INVALID_MESSAGE, "a file needs its bytes", outcome.id
                    )
        except (ProtocolError, DomainError, BackendError) as exc:
            self.outbox.refused(peer, exc, getattr(outcome, "id", None))
        return None

    async def _finish(self, peer: Peer, outcome: Outcome, work: Coroutine[Any, Any, None]) -> None:
        try:
            await work
        except (ProtocolError, DomainError, BackendError) as exc:
            self.outbox.refused(peer, exc, getattr(outcome, "id", None))

    async def _join(self, peer: Peer, cmd: Join) -> None:
        user = peer.session.user
        assert user is not None
        entering = cmd.room not in peer.session.rooms
        if entering:
            await self.rooms.enter(user, cmd.room)
        rules = self.moderation.rules.cached(cmd.room) or await self.moderation.load(cmd.room)
        if entering:
            # Again with no await before the join: a ban made while the checks above
            # waited (its order dropped the rules they read) refuses it too.
            self.moderation.check_ban(user, cmd.room, rules)
        unread = functools.partial(self.read_state.joined, peer, cmd.room)
        await self.streams.join(peer, cmd.room, cmd.since, cmd.id, unread)

    async def _auth(self, peer: Peer, cmd: AuthFrame) -> None:
        entered = await self.connections.auth(peer, cmd)
        user = peer.session.user
        if user is not None:
            await self.streams.open_inbox(user.name)  # the name may be new to this node
        if entered:
            # A connection that had to authenticate first now enters the lobby.
            await self._join(peer, Join(None, LOBBY))

    async def _history(self, peer: Peer, cmd: HistoryRequest) -> None:
        user = peer.session.user
        assert user is not None
        reply = await self.messaging.history(
            user,
            cmd.room,
            before=cmd.before,
            limit=cmd.limit,
            thread=cmd.thread,
            around=cmd.around,
        )
        self.outbox.reply(peer, reply, cmd.id)

    async def _direct_history(self, peer: Peer, cmd: DirectHistoryRequest) -> None:
        user = peer.session.user
        assert user is not None
        reply = await self.messaging.direct_history(
            user,
            before=cmd.before,
            since=cmd.since,
            limit=cmd.limit,
            around=cmd.around,
            peer=cmd.peer,
        )
        self.outbox.reply(peer, reply, cmd.id)

    async def _unread(self, peer: Peer, cmd: UnreadRequest) -> None:
        user = peer.session.user
        assert user is not None
        self.outbox.reply(peer, await self.read_state.unread(user), cmd.id)

    async def _search(self, peer: Peer, cmd: SearchRequest) -> None:
        user = peer.session.user
        assert user is not None
        self.outbox.reply(peer, await self.search.search(user, cmd), cmd.id)

    async def _presence_list(self, peer: Peer, cmd: PresenceRequest) -> None:
        user = peer.session.user
        assert user is not None
        await self.rooms.check_access(user, cmd.room)
        members, count = await self.membership.members(cmd.room)
        self.outbox.reply(peer, MemberList(cmd.room, members, count), cmd.id)

    # -- broker events (BrokerEvents) ----------------------------------------------

    def on_publication(self, publication: Publication) -> None:
        """Deliver another node's publication to the local members it is for."""
        if publication.node_id == self.id:
            return
        metrics = self.metrics
        if publication.order:
            metrics.received_order.inc()
        elif publication.room is not None:
            metrics.received_room.inc()
        else:
            metrics.received_user.inc()
        if publication.name_claim:
            if publication.user is not None:
                self.connections.evict_guests(publication.user)
            return
        if publication.order:
            self._order(publication.frame)
            return
        self.streams.receive(publication)

    def on_presence(self, room: str, user: str, joined: bool, count: int) -> None:
        """Tell ``room``'s members on every node that ``user`` joined or left it."""
        self.membership.presence_changed(room, user, joined, count)

    def on_resync(self) -> None:
        """The broker may have missed publications: catch up from the store, and read
        rooms' rules again."""
        self.streams.resync()
        self._spawn(self.moderation.recheck())

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` on its own; kept until it ends, its failure logged."""
        task = asyncio.get_running_loop().create_task(work, context=contextvars.Context())
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("a background task failed", exc_info=task.exception())

    def _order(self, data: bytes) -> None:
        """Carry out another node's order (its own node carried it out already)."""
        try:
            order = orjson.loads(data)
        except orjson.JSONDecodeError:
            order = None
        if not isinstance(order, dict):
            logger.warning("an order that is not a JSON object was ignored")
            return
        if order.get("op") in _MODERATION_ORDERS:
            self.moderation.on_order(order)
            if order.get("op") == "rules" and isinstance(order.get("room"), str):
                self.read_state.room_changed(order["room"])
        elif order.get("op") == "revoke":
            self.revocations.on_order(order)
            if order.get("reason") == ACCOUNT_DELETED:
                self.moderation.rules.clear()  # its roles, bans and mutes are gone

    def local_presence(self) -> list[tuple[str, str]]:
        """Every ``(room, user)`` with a connection on this node."""
        return self.membership.local_presence()


#: The orders :class:`~roomcast.moderation.Moderation` carries out.
_MODERATION_ORDERS: Final = frozenset({"removed", "rules", "room_deleted", "muted"})

#: What a refused frame counts as in ``roomcast_frames_received``.
_REPLY_KINDS: Final = {"pong": "ping", "echo": "echo"}


def _kind(outcome: Outcome) -> str:
    """The frame type an outcome came from, for the metrics."""
    if isinstance(outcome, Reply):
        return _REPLY_KINDS.get(getattr(outcome.frame, "TYPE", ""), "refused")
    if isinstance(outcome, Close):
        return "refused"
    if isinstance(outcome, FileHeader):
        return "file"
    return outcome.TYPE
