"""Ordered streams: each room's messages, and each user's direct inbox, in seq order.

A stored message reaches this node's members through a
:class:`~roomcast.sequencer.Sequencer`, whether it was stored here or on
another node, so members see each room in seq order with no gap even when
several nodes write to it at once; a gap is read from the store. A
joining member gets the room's position, the messages it missed (replayed
from the store) and then the live stream, with nothing lost or repeated
between the two (docs/design.md, "Joining a room while it is busy").
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, Final

from .broker.base import Broker, Publication
from .config import Limits
from .exceptions import BackendError
from .files import FileLinks, with_link
from .hub import Hub, Peer
from .membership import Membership
from .metrics import Metrics
from .model import Change, ChatMessage, DirectMessage, Mention, Unread
from .outbox import Outbox
from .protocol.messages import Joined, encode
from .protocol.wsframe import text_frame
from .sequencer import Sequencer
from .store.base import Store

__all__ = ["CATCH_UP_WAIT", "REPLAY_PAGE", "Streams"]

logger = logging.getLogger("roomcast.node")

#: What a stream holds: messages, changes of them, and mentions (an inbox).
StreamEvent = ChatMessage | DirectMessage | Change | Mention

#: Messages replayed per store read when a join asks for ``since``.
REPLAY_PAGE: Final = 500

#: Seconds a join waits for live delivery to reach what it replayed.
CATCH_UP_WAIT: Final = 2.0


class Streams:
    """The rooms and inboxes with a local reader, each delivered in seq order.

    Args:
        node_id: this node's id, on its publications.
        hub: delivers frames to this node's connections.
        membership: who is where (a join enters the room through it).
        store: where missed messages are read from.
        broker: carries stored messages to the other nodes.
        limits: ``max_queue_bytes`` (the hold while replaying), ``max_replay``.
        metrics: deliveries, publish times and catch-ups.
        outbox: answers to the joining connection.
        links: signs the links to files in replayed messages.
    """

    def __init__(
        self,
        *,
        node_id: str,
        hub: Hub,
        membership: Membership,
        store: Store,
        broker: Broker,
        limits: Limits,
        metrics: Metrics,
        outbox: Outbox,
        links: FileLinks | None,
    ) -> None:
        self._node_id = node_id
        self._hub = hub
        self._membership = membership
        self._store = store
        self._broker = broker
        self._limits = limits
        self._metrics = metrics
        self._outbox = outbox
        self._links = links
        #: Rooms with a local member, in seq order.
        self._room_order = Sequencer(self._deliver_room, self._fetch_room)
        #: The direct inboxes of local users, in seq order.
        self._inbox_order = Sequencer(self._deliver_inbox, self._fetch_inbox)
        #: Store reads in flight for gaps and catch-ups (kept from the GC).
        self._tasks: set[asyncio.Task[None]] = set()

    async def close(self) -> None:
        """Stop the store reads in flight."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- publishing stored messages -------------------------------------------------

    def publish(self, room: str, frame: bytes, seq: int) -> None:
        """Deliver a stored room message here, then hand it to the other nodes."""
        metrics = self._metrics
        metrics.deliveries.inc(self._room_order.offer(room, seq, frame))
        started = time.perf_counter()
        self._broker.publish(Publication(self._node_id, room, None, frame, seq=seq))
        metrics.broker_publish_seconds.observe(time.perf_counter() - started)

    def publish_direct(self, owner: str, frame: bytes, seq: int) -> None:
        """Deliver a stored direct message to ``owner``'s inbox here and on the other nodes."""
        self._metrics.deliveries.inc(self._to_inbox(owner, seq, frame))
        self._broker.publish(Publication(self._node_id, None, owner, frame, seq=seq))

    def receive(self, publication: Publication) -> None:
        """Deliver another node's publication to the local members it is for."""
        room, seq, frame = publication.room, publication.seq, publication.frame
        if room is not None:
            if seq is not None:
                self._metrics.deliveries.inc(self._room_order.offer(room, seq, frame))
            else:
                self._hub.deliver(room, frame, skip_user=publication.skip_user)
        elif publication.user is not None:
            if seq is not None:
                self._metrics.deliveries.inc(self._to_inbox(publication.user, seq, frame))
            else:
                self._hub.send_to_user(publication.user, frame)

    def _deliver_room(self, room: str, seq: int, frame: bytes) -> int:
        return self._hub.deliver(room, frame, seq=seq)

    def _to_inbox(self, user: str, seq: int, frame: bytes) -> int:
        """Deliver a direct message to ``user``'s local connections, in inbox order."""
        if user not in self._inbox_order:
            if not self._hub.user_online(user):
                return 0
            # The first direct message since the user connected here sets
            # the inbox's position (earlier ones come from direct_history).
            self._inbox_order.start(user, seq - 1)
        return self._inbox_order.offer(user, seq, frame)

    def _deliver_inbox(self, user: str, seq: int, frame: bytes) -> int:
        return self._hub.send_to_user(user, frame)

    def room_position(self, room: str) -> int | None:
        """The last seq delivered here in ``room`` (None when no local member orders it)."""
        return self._room_order.position(room)

    def inbox_position(self, user: str) -> int | None:
        """The last seq delivered here in ``user``'s direct stream (None when not ordered)."""
        return self._inbox_order.position(user)

    # -- readers coming and going --------------------------------------------------

    async def open_inbox(self, user: str) -> None:
        """Hear what other nodes publish for ``user`` (direct messages, a claim of the name)
        before the connection using the name asks for anything.

        A ``guest-`` name is the server's, given once: nobody registers it,
        nothing is addressed to it, so it needs no channel (and most
        connections of a public server save a subscription).
        """
        if not _given_name(user):
            await self._broker.subscribe_user(user)

    def forget_room(self, room: str) -> None:
        """Stop ordering and hearing ``room``'s frames once it has no local member."""
        if not self._hub.has_members(room):
            self._room_order.close(room)
            self._broker.unsubscribe_room(room)

    def forget_inbox(self, user: str) -> None:
        """Stop ordering ``user``'s direct messages once it has no local connection, and
        hearing the name once no local connection uses it in any case."""
        if not self._hub.user_online(user):
            self._inbox_order.close(user)
        if not _given_name(user) and not self._hub.name_used(user):
            self._broker.unsubscribe_user(user)

    async def join(
        self,
        peer: Peer,
        room: str,
        since: int | None,
        frame_id: str | None,
        unread: Callable[[int], Awaitable[Unread | None]] | None = None,
    ) -> None:
        """Put ``peer`` in ``room``: ``joined``, the replay after ``since``, then live frames.

        The caller has checked access. ``unread`` says what the user has not
        read up to the room's position ``joined`` gives. A join that fails
        leaves the connection as it was (out of the room unless it was in it
        already).
        """
        user = peer.session.user
        assert user is not None
        hub = self._hub
        was_member = room in peer.session.rooms
        first = self._membership.join(peer, room)
        self._room_order.open(room)
        # From here on the room's live frames are kept aside for this peer,
        # so none can overtake ``joined`` or the replay, and none is lost.
        hub.hold(room, peer, self._limits.max_queue_bytes)
        held = None
        try:
            if first:
                self._membership.announce(room, user.name, True)
            # Heard before the position is read: what is stored after the
            # read arrives live, what was before comes from the store.
            await self._broker.subscribe_room(room)
            stored_last = await self._store.last_seq(room)
            # Live frames go out from the room's position on: the replay
            # covers everything up to there (which may be past the read).
            last = max(stored_last, self._room_order.start(room, stored_last))
            after, recovered, replay_from = last, None, None
            if since is not None:
                kept = await self._store.first_seq(room)
                recovered = kept - 1 <= since <= last
                after = min(max(since, kept - 1), last)
                cap = self._limits.max_replay
                if last - after > cap:
                    # The newest part goes now, joined to the live stream;
                    # the client pages back through the rest with history.
                    after = last - cap
                    replay_from = after + 1
            members, count = await self._membership.members(room)
            counts = await unread(last) if unread is not None else None
            joined = Joined(room, last, members, count, recovered, replay_from, counts)
            self._outbox.reply(peer, joined, frame_id)
            while True:
                after = await self._replay(peer, room, after, last)
                await self._caught_up(room, after)
                held = hub.release(room, peer)
                if held is None or not held.overflowed:
                    break
                # Too much arrived while replaying: read it from the store too.
                hub.hold(room, peer, self._limits.max_queue_bytes)
                held = None
                last = max(await self._store.last_seq(room), self._room_order.position(room) or 0)
        except BaseException:
            held = hub.release(room, peer)
            if not was_member:
                self._membership.leave(peer, room)
                self.forget_room(room)
            elif held is not None:
                for _, frame in held.frames:  # it stays a member: keep it live
                    peer.send(frame)
            raise
        if held is not None:
            for seq, frame in held.frames:
                if seq is None or seq > after:
                    peer.send(frame)

    def leave(self, peer: Peer, room: str) -> None:
        """Take ``peer`` out of ``room``."""
        self._membership.leave(peer, room)
        self.forget_room(room)

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
        pace = self._limits.max_queue_bytes // 2
        links = self._links
        while after < last:
            page = await self._store.since(room, after, limit=min(REPLAY_PAGE, last - after))
            if not page:
                break
            queued = 0
            for message in page:
                frame = text_frame(encode(with_link(message, links)))
                peer.send(frame)
                assert message.seq is not None  # a stored event always has one
                after = message.seq
                queued += len(frame)
                if queued >= pace:
                    if not await peer.drain():
                        return after
                    queued = 0
            if not await peer.drain():
                break
        return after

    # -- gaps ----------------------------------------------------------------------

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        # Store reads for many rooms: not in any connection's log context.
        task = asyncio.get_running_loop().create_task(work, context=contextvars.Context())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _fetch_room(self, room: str, after: int, before: int) -> None:
        self._metrics.catch_ups.labels("gap").inc()
        self._spawn(self._fill_room(room, after, before))

    def _fetch_inbox(self, user: str, after: int, before: int) -> None:
        self._metrics.catch_ups.labels("gap").inc()
        self._spawn(self._fill_inbox(user, after, before))

    async def _fill_room(self, room: str, after: int, before: int) -> None:
        """Read ``room``'s messages ``after < seq < before`` and offer them in order."""

        async def page(after: int, limit: int) -> Sequence[StreamEvent]:
            return await self._store.since(room, after, limit=limit)

        await self._fill(self._room_order, room, after, before, page, "missed messages")

    async def _fill_inbox(self, user: str, after: int, before: int) -> None:
        """Read ``user``'s direct messages ``after < seq < before`` and offer them in order."""

        async def page(after: int, limit: int) -> Sequence[StreamEvent]:
            return (await self._store.direct_since(user, after, limit=limit))[0]

        await self._fill(self._inbox_order, user, after, before, page, "missed direct messages")

    async def _fill(
        self,
        order: Sequencer,
        stream: str,
        after: int,
        before: int,
        read: Callable[[int, int], Awaitable[Sequence[StreamEvent]]],
        what: str,
    ) -> None:
        """Offer ``stream``'s stored messages ``after < seq < before``, then end the gap."""
        complete = False
        try:
            while after < before - 1:
                page = await read(after, min(REPLAY_PAGE, before - 1 - after))
                if not page:
                    break
                for message in page:
                    assert message.seq is not None
                    frame = text_frame(encode(with_link(message, self._links)))
                    self._metrics.deliveries.inc(order.offer(stream, message.seq, frame))
                    after = message.seq
            complete = True
        except BackendError as exc:
            logger.error("cannot read %s's %s: %s", stream, what, exc)
        finally:
            order.filled(stream, before, complete=complete)

    def resync(self) -> None:
        """The broker may have missed publications: catch up from the store."""
        self._metrics.catch_ups.labels("resync").inc()
        self._spawn(self._catch_up())

    async def _catch_up(self) -> None:
        """After the broker was cut off: deliver what was stored meanwhile, from the store."""
        for attempt in range(10):
            try:
                for room in self._room_order.streams():
                    last = await self._store.last_seq(room)
                    position = self._room_order.position(room)
                    if position is not None and last > position:
                        await self._fill_room(room, position, last + 1)
                for user in self._inbox_order.streams():
                    last = await self._store.direct_last_seq(user)
                    position = self._inbox_order.position(user)
                    if position is not None and last > position:
                        await self._fill_inbox(user, position, last + 1)
                return
            except BackendError as exc:
                logger.error("cannot catch up from the store: %s", exc)
                await asyncio.sleep(min(0.1 * 2**attempt, 5.0))


def _given_name(name: str) -> bool:
    """Whether ``name`` is one the server gives guests (``guest-`` and hex), never claimed."""
    return name[:6].lower() == "guest-"
