"""Read state: how far each user has read, what is left unread, and receipts.

A user's *read marker* in a conversation is the seq up to which they have
read it: a room's seq, or a seq of their own direct stream (all of it, or
one conversation in it). Because seqs have no gaps, unread is exact: the
messages from others after the marker that are not deleted. A marker only
moves forward, in memory at once and in the store at most once per
:data:`MARKER_WRITE_INTERVAL` per user and conversation (readers send them
often; one write carries every marker that moved meanwhile). The user's
connections, here and on other nodes, hear of a move at once; the
conversation's members hear of it as a ``receipt``, at most once per
interval, where receipts are on and the room is small enough to name its
readers. A guest's markers live on its connection only.
"""

from __future__ import annotations

import asyncio
import bisect
import functools
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Final

from .broker.base import Broker, Publication
from .exceptions import BackendError, UnknownUser
from .hub import Hub, Peer
from .metrics import Metrics
from .model import ChatMessage, DirectMessage, RoomAccess, Unread, UserInfo
from .outbox import Outbox
from .protocol.messages import Read, ReadEvent, Receipt, UnreadReply, encode
from .protocol.wsframe import text_frame
from .rooms import Rooms
from .store.base import Store
from .streams import Streams

__all__ = ["DIRECT", "MARKER_WRITE_INTERVAL", "RECEIPTS_MAX_READERS", "ReadState", "direct_stream"]

logger = logging.getLogger("roomcast.node")

#: Seconds between two writes of one user's marker in one conversation. A
#: reader marks what it sees as it scrolls, every message or so: written at
#: once, every reader would cost a write per message. Within this interval
#: the moves go to the user's other connections at once and to the store
#: together; a crash loses at most this much of how far someone read, never
#: a message (docs/benchmarks.md, "Read markers", measures the cost).
MARKER_WRITE_INTERVAL: Final = 1.0

#: Rooms with more readers than this give counts, not names: a receipt per
#: reader per message would be that many frames to each of that many members.
RECEIPTS_MAX_READERS: Final = 100

#: Settings (:data:`SETTINGS_TTL`) kept at most; past it they are read afresh.
SETTINGS_KEPT: Final = 100_000

#: Seconds receipts reuse a user's "hide my receipts" and a room's receipts
#: rule and reader count: read once per conversation per flush otherwise,
#: they were three store reads per reader per second. A change made on this
#: node applies at once (:meth:`ReadState.hide_receipts`,
#: :meth:`ReadState.set_room_receipts`), on others
#: within this.
SETTINGS_TTL: Final = 10.0

#: The marker stream of a user's whole direct stream; ``@name`` is one conversation.
DIRECT: Final = "@"


def direct_stream(peer: str | None) -> str:
    """The marker stream of the direct conversation with ``peer`` (all of them for None)."""
    return DIRECT if peer is None else DIRECT + peer


class ReadState:
    """Read markers, unread counts and receipts, for both edges.

    Args:
        node_id: this node's id, on its publications.
        store: where markers are kept and counts are read.
        hub: this node's connections (a user's, a room's).
        broker: carries marker moves and receipts to the other nodes.
        rooms: who may read which room, and its receipts setting.
        streams: where each stream is now (a marker is never past it).
        metrics: markers written, receipts sent.
        outbox: answers to the reading connection.
        interval: seconds between marker writes (:data:`MARKER_WRITE_INTERVAL`).
        receipts_max: most readers a room names in receipts (:data:`RECEIPTS_MAX_READERS`).
    """

    def __init__(
        self,
        *,
        node_id: str,
        store: Store,
        hub: Hub,
        broker: Broker,
        rooms: Rooms,
        streams: Streams,
        metrics: Metrics,
        outbox: Outbox,
        interval: float = MARKER_WRITE_INTERVAL,
        receipts_max: int = RECEIPTS_MAX_READERS,
    ) -> None:
        self._node_id = node_id
        self._store = store
        self._hub = hub
        self._broker = broker
        self._rooms = rooms
        self._streams = streams
        self._metrics = metrics
        self._outbox = outbox
        self.interval = interval
        self.receipts_max = receipts_max
        #: Markers moved here and not yet written: (name, stream) -> (from, to).
        self._pending: dict[tuple[str, str], tuple[int, int]] = {}
        #: Markers this node read from the store or moved since the last write,
        #: so a reader's next ``read`` needs no store read. Forgotten at each
        #: write: a move made on another node is in the store by then.
        self._known: dict[tuple[str, str], int] = {}
        #: The moved markers a write is on its way with (the store is behind them).
        self._writing: dict[tuple[str, str], tuple[int, int]] = {}
        #: Each guest connection's markers: session id -> room -> seq.
        self._guests: dict[str, dict[str, int]] = {}
        #: Settings receipts read lately: key -> (loop time it goes stale, value).
        self._settings: dict[str, tuple[float, bool]] = {}
        #: Writes the pending markers every interval.
        self._writer: asyncio.Task[None] | None = None

    # -- lifecycle ---------------------------------------------------------------

    def start(self) -> None:
        """Begin writing moved markers every :attr:`interval`."""
        if self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(self._write_forever())

    async def close(self) -> None:
        """Stop the writer, and write what moved since its last write."""
        if self._writer is not None:
            self._writer.cancel()
            await asyncio.gather(self._writer, return_exceptions=True)
            self._writer = None
        await self.flush()

    async def _write_forever(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.flush()
            except Exception:  # the writer must outlive a bug in one receipt
                logger.exception("cannot write read markers")

    def forget(self, peer: Peer) -> None:
        """A connection ended: a guest's markers end with it."""
        self._guests.pop(peer.session.id, None)

    # -- a reader says how far it read --------------------------------------------

    async def read(self, peer: Peer, cmd: Read) -> None:
        """Move the connection's user's marker (never back); tell the user's connections.

        The session has checked that a room's reader is in the room (so it
        may read it) and that a direct reader is a registered user.

        Raises:
            UnknownUser: ``cmd.peer`` is no registered user.
            BackendError: the store failed.
        """
        user = peer.session.user
        assert user is not None
        if cmd.room is not None:
            await self._read_room(peer, user, cmd.room, cmd.seq, cmd.id)
        else:
            await self._read_direct(peer, user, cmd.peer, cmd.seq, cmd.id)

    async def _read_room(
        self, peer: Peer, user: UserInfo, room: str, seq: int, frame_id: str | None
    ) -> None:
        last = await self._room_last(room, seq)
        seq = min(seq, last)
        if user.guest:
            marks = self._guests.setdefault(peer.session.id, {})
            mark = marks[room] = max(marks.get(room, 0), seq)
            moved = False
        else:
            current = await self._current(user.name, room)
            mark = max(seq, current or 0)
            moved = current is None or seq > current
            if moved:
                self._move(user.name, room, current or 0, seq)
        unread, mentions = await self._store.unread_in_room(room, user.name, mark, last)
        self._tell(peer, user, ReadEvent(mark, unread, mentions, room=room), frame_id, moved)

    async def _read_direct(
        self, peer: Peer, user: UserInfo, other: str | None, seq: int, frame_id: str | None
    ) -> None:
        if other is not None:
            account = await self._store.get_user(other)
            if account is None:
                raise UnknownUser(f"there is no user {other}")
            other = account.name
        stream = direct_stream(other)
        last = self._streams.inbox_position(user.name)
        if last is None or seq > last:
            last = await self._store.direct_last_seq(user.name)
        seq = min(seq, last)
        current = await self._current(user.name, stream)
        moved = current is None or seq > current
        if moved:
            self._move(user.name, stream, current or 0, seq)
        markers = await self.markers(user.name)
        left, everything = await self._unread_direct(user.name, markers)
        if other is not None:
            left = [row for row in left if row[0] == other]
        mentions = sum(mentioned for _, _, mentioned in left)
        # A conversation is read as far as its own marker or the whole stream's goes.
        event = ReadEvent(max(seq, current or 0, everything), len(left), mentions, peer=other)
        self._tell(peer, user, event, frame_id, moved)

    async def _room_last(self, room: str, seq: int) -> int:
        """``room``'s newest seq, read from the store only when ``seq`` may be past ours."""
        last = self._streams.room_position(room)
        if last is None or seq > last:
            last = max(last or 0, await self._store.last_seq(room))
        return last

    def _tell(
        self, peer: Peer, user: UserInfo, event: ReadEvent, frame_id: str | None, moved: bool
    ) -> None:
        """Answer the reader; when the marker moved, tell its user's other connections too."""
        self._outbox.reply(peer, event, frame_id)
        if not moved or user.guest:
            return
        frame = text_frame(encode(event))
        self._hub.send_to_user(user.name, frame, skip=peer)
        self._broker.publish(Publication(self._node_id, None, user.name, frame))

    def sent(self, user: UserInfo, stream: str, seq: int) -> None:
        """``user`` sent the message at ``seq`` of ``stream``: they read up to it."""
        if user.guest:
            return
        key = (user.name, stream)
        before = self._pending.get(key, (0, self._known.get(key, 0)))[1]
        if seq > before:
            self._move(user.name, stream, before, seq)

    def _move(self, name: str, stream: str, before: int, seq: int) -> None:
        key = (name, stream)
        pending = self._pending.get(key)
        self._pending[key] = (pending[0] if pending is not None else before, seq)
        self._known[key] = seq

    async def _current(self, name: str, stream: str) -> int | None:
        """The marker as this node knows it: moved here lately, else from the store."""
        key = (name, stream)
        pending = self._pending.get(key)
        if pending is not None:
            return pending[1]
        if key in self._known:
            return self._known[key]
        seq = await self._store.marker(name, stream)
        if seq is not None:
            self._known[key] = seq
        return seq

    async def markers(self, name: str) -> dict[str, int]:
        """Every marker of ``name``: the store's, with those moved here and not yet written."""
        found = await self._store.markers(name)
        for (who, stream), (_, seq) in [*self._writing.items(), *self._pending.items()]:
            if who == name and seq > found.get(stream, -1):
                found[stream] = seq
        return found

    # -- writing, and the receipts of what was written ----------------------------

    async def flush(self) -> None:
        """Write every marker moved since the last write; then send their receipts."""
        if not self._pending:
            self._known = {}
            return
        moved, self._pending = self._pending, {}
        self._writing = moved
        try:
            await self._store.save_markers([(n, s, seq) for (n, s), (_, seq) in moved.items()])
            # Kept until here: while the write was on its way the store was behind them.
            self._known = {}
        except BackendError as exc:
            logger.error("read markers not written (retried): %s", exc)
            for key, (before, seq) in moved.items():
                pending = self._pending.get(key)
                if pending is None or pending[1] < seq:
                    self._pending[key] = (before, seq)
            return
        finally:
            self._writing = {}
        self._metrics.markers_written.inc(len(moved))
        await self._send_receipts(moved)

    async def _send_receipts(self, moved: dict[tuple[str, str], tuple[int, int]]) -> None:
        """Tell each moved marker's conversation (rooms where receipts are on and few read)."""
        for (name, stream), (before, seq) in moved.items():
            if seq <= before:  # a first join's marker: nothing newly read
                continue
            if await self._cached(f"@{name}", functools.partial(self._hides_receipts, name)):
                continue
            if not stream.startswith(DIRECT):
                if await self._cached(stream, functools.partial(self._names_readers, stream)):
                    self._to_room(stream, Receipt(name, seq, room=stream))
                continue
            peers = (
                await self._store.direct_peers(name, before, seq)
                if stream == DIRECT
                else [stream[len(DIRECT) :]]
            )
            for other in peers:
                if other == name:
                    continue
                theirs = await self._store.direct_seq_for(name, other, seq)
                if theirs is not None:
                    self._to_user(other, Receipt(name, theirs))

    async def _cached(self, key: str, read: Callable[[], Awaitable[bool]]) -> bool:
        """A setting from :attr:`_settings` while fresh, else ``read()`` (and kept)."""
        now = asyncio.get_running_loop().time()
        found = self._settings.get(key)
        if found is not None and found[0] > now:
            return found[1]
        value = await read()
        if len(self._settings) >= SETTINGS_KEPT:
            self._settings.clear()
        self._settings[key] = (now + SETTINGS_TTL, value)
        return value

    async def hide_receipts(self, user: UserInfo, hidden: bool) -> None:
        """Hide (or show) ``user``'s receipts; on this node at once, on others within
        :data:`SETTINGS_TTL`."""
        await self._store.set_hide_receipts(user.name, hidden)
        self._settings.pop(f"@{user.name}", None)

    async def set_room_receipts(self, user: UserInfo, room: str, on: bool) -> RoomAccess:
        """Turn receipts in ``room`` on or off (its owner only: :meth:`Rooms.set_receipts`)."""
        access = await self._rooms.set_receipts(user, room, on)
        self._settings.pop(room, None)
        return access

    def room_changed(self, room: str) -> None:
        """``room``'s settings changed (receipts among them): read them again."""
        self._settings.pop(room, None)

    async def _hides_receipts(self, name: str) -> bool:
        account = await self._store.get_user(name)
        return account is None or account.hide_receipts

    async def _names_readers(self, room: str) -> bool:
        """Whether ``room`` has receipts on and at most :attr:`receipts_max` readers."""
        access = await self._store.room_access(room)
        if access is not None and not access.receipts:
            return False
        return await self._store.reader_count(room) <= self.receipts_max

    def _to_room(self, room: str, receipt: Receipt) -> None:
        """Tell ``room``'s members but the reader (who knows from its ``read``)."""
        frame = text_frame(encode(receipt))
        self._metrics.receipts_out.inc()
        self._hub.deliver(room, frame, skip_user=receipt.user)
        self._broker.publish(Publication(self._node_id, room, None, frame, skip_user=receipt.user))

    def _to_user(self, name: str, receipt: Receipt) -> None:
        frame = text_frame(encode(receipt))
        self._metrics.receipts_out.inc()
        self._hub.send_to_user(name, frame)
        self._broker.publish(Publication(self._node_id, None, name, frame))

    # -- counts --------------------------------------------------------------------

    async def joined(self, peer: Peer, room: str, last: int) -> Unread | None:
        """What ``peer``'s user has not read in ``room`` (up to ``last``), for ``joined``.

        A registered user's first join of a public room reads its past (a
        newcomer is not handed years of unread); a private room the user was
        added to is unread from its start. A guest has counts only where
        its connection has read before.
        """
        user = peer.session.user
        assert user is not None
        if user.guest:
            mark: int | None = self._guests.get(peer.session.id, {}).get(room)
            if mark is None:
                return None
        else:
            mark = await self._current(user.name, room)
            if mark is None:
                access = await self._store.room_access(room)
                mark = 0 if access is not None and access.private else last
                self._move(user.name, room, mark, mark)
        unread, mentions = await self._store.unread_in_room(room, user.name, mark, last)
        return Unread(unread, mentions, mark, last, None, room=room)

    async def unread(self, user: UserInfo) -> UnreadReply:
        """``user``'s counts in each room they read or belong to, and in their direct stream."""
        markers = await self.markers(user.name)
        visible = {access.name: access for access in await self._rooms.visible(user)}
        names = {s for s in markers if not s.startswith(DIRECT) and s in visible}
        names |= {r for r, access in visible.items() if access.private and access.allows(user.name)}
        rooms = [
            await self._room_unread(user.name, room, markers.get(room, 0)) for room in sorted(names)
        ]
        direct, conversations = await self._direct_unread(user.name, markers)
        return UnreadReply(rooms, direct, conversations)

    async def _room_unread(self, name: str, room: str, mark: int) -> Unread:
        last = await self._store.last_seq(room)
        unread, mentions = await self._store.unread_in_room(room, name, mark, last)
        newest = await self._store.last_message(room)
        seq, ts_ms = newest if newest is not None else (0, None)
        return Unread(unread, mentions, mark, seq, ts_ms, room=room)

    async def _unread_direct(
        self, name: str, markers: dict[str, int]
    ) -> tuple[list[tuple[str, int, bool]], int]:
        """``name``'s unread direct messages (past the whole stream's marker and their
        conversation's), and the whole stream's marker after this.

        Where nothing before some point is unread any more, the whole stream's
        marker moves up to it, so the next count reads from there. That move
        tells nobody: each conversation's reader was told when it was read.
        """
        everything = markers.get(DIRECT, 0)
        rows = await self._store.unread_direct(name, everything)
        left = [row for row in rows if row[1] > markers.get(direct_stream(row[0]), 0)]
        read_to = left[0][1] - 1 if left else (rows[-1][1] if rows else everything)
        if read_to > everything:
            self._move(name, DIRECT, read_to, read_to)  # from == to: no receipts
            everything = read_to
        return left, everything

    async def _direct_unread(
        self, name: str, markers: dict[str, int]
    ) -> tuple[Unread, list[Unread]]:
        left, everything = await self._unread_direct(name, markers)
        peers = {sender for sender, _, _ in left}
        peers |= {s[len(DIRECT) :] for s in markers if s.startswith(DIRECT) and s != DIRECT}
        conversations = []
        for other in sorted(peers):
            mine = [row for row in left if row[0] == other]
            newest = await self._store.last_direct(name, other)
            seq, ts_ms = newest if newest is not None else (0, None)
            mark = max(everything, markers.get(direct_stream(other), 0))
            mentions = sum(mentioned for _, _, mentioned in mine)
            conversations.append(Unread(len(mine), mentions, mark, seq, ts_ms, peer=other))
        newest = await self._store.last_direct(name, None)
        seq, ts_ms = newest if newest is not None else (0, None)
        mentions = sum(mentioned for _, _, mentioned in left)
        return Unread(len(left), mentions, everything, seq, ts_ms), conversations

    # -- receipts in history ---------------------------------------------------------

    async def room_receipts(
        self, room: str, page: Sequence[ChatMessage]
    ) -> tuple[dict[str, int] | None, list[tuple[int, int]] | None]:
        """For a history page of ``room``: its readers by name, or, in a big room,
        how many have read each message on it. (None, None) when receipts are off."""
        access = await self._store.room_access(room)
        if access is not None and not access.receipts:
            return None, None

        def allowed(name: str) -> bool:
            return access is None or access.allows(name)

        count = await self._store.reader_count(room)
        if count <= self.receipts_max:
            found = await self._store.readers(room, limit=self.receipts_max)
            return {name: seq for name, seq in found if allowed(name)}, None
        if not page:
            return None, []
        first = min(m.seq for m in page)
        found = await self._store.readers(room, at_least=first, limit=count)
        marks = {name: seq for name, seq in found if allowed(name)}
        ordered = sorted(marks.values())
        counts = []
        for message in page:
            read = len(ordered) - bisect.bisect_left(ordered, message.seq)
            if marks.get(message.sender, -1) >= message.seq:
                read -= 1
            counts.append((message.seq, read))
        return None, counts

    async def direct_receipts(self, name: str, page: Iterable[object]) -> dict[str, int]:
        """For a page of ``name``'s direct messages: up to which seq of ``name``'s stream
        each peer on it has read their conversation (peers who show receipts)."""
        peers = {
            m.to if m.sender == name else m.sender
            for m in page
            if isinstance(m, DirectMessage) and m.sender != m.to
        }
        receipts: dict[str, int] = {}
        for other in sorted(peers):
            account = await self._store.get_user(other)
            if account is None or account.hide_receipts:
                continue
            theirs = await self.markers(other)
            upto = max(theirs.get(DIRECT, 0), theirs.get(direct_stream(name), 0))
            seq = await self._store.direct_seq_for(other, name, upto) if upto else None
            if seq is not None:
                receipts[other] = seq
        return receipts
