"""What the batching stores share: appends queued for their writers, and their rows.

:class:`~roomcast.store.sqlite.SQLiteStore` and
:class:`~roomcast.store.postgres.PostgresStore` both answer ``append`` with a
future at once, and store what is queued in batches, one transaction each,
resolving the futures in order. :class:`WriteQueue` is that queue: it folds a
resend that arrives while its first copy is still queued into the first
copy's future, refuses a message when :data:`MAX_QUEUED` are already waiting
(:class:`~roomcast.exceptions.StoreBusy`: when more arrives than the database
can take, senders are told to come back instead of waiting ever longer for
their acks while the server's memory grows), hands the writers batches,
resolves a finished batch, and tells :meth:`WriteQueue.wait_idle` callers
when nothing is left.

The queue has one or more *lanes* (the backend says how many: SQLite one,
since SQLite allows one writer; PostgreSQL
:data:`~roomcast.store.postgres.WRITE_LANES`). :func:`lane_of` puts every
draft of one room, and every draft of one direct conversation, in one lane,
and a lane is held by one batch at a time, which takes all it holds; so
what one room or conversation gets is stored in the order it was queued,
as with one writer:

- a room's seqs are taken in queue order (the next batch of its lane
  starts once the last one is committed);
- a resend's key (sender, frame id, room or recipient) always names the
  same lane, so two batches written at once never hold copies of one id;
  one queued or being written is folded in by :meth:`WriteQueue.add`, one
  stored is found by the next batch's lookup;
- a change (edit, delete, reaction) names its message's room, or the other
  side of its message's conversation (``Draft.to``), so it goes to its
  message's lane, behind everything queued there before it. (It cannot be
  queued before its message is stored anyway: a message's id is made in
  the transaction that stores it, and a client learns it only afterwards.)

Several lanes are written at once only when enough waits
(:data:`OVERLAP_AT`): while little waits, one batch takes every free lane's
drafts, in append order, as the single writer did, because a batch costs
its round trips and its commit however small it is.

What batches written at once can share are inboxes: a user's direct stream
takes events from each of their conversations and from mentions in rooms,
so two batches may both number it; the database's row lock on the inbox
keeps its seqs gapless, in the order the transactions commit (see the
PostgreSQL store for why they never deadlock).

:class:`BatchedAppends` gives a store ``append`` and ``append_direct`` on top
of one ``_enqueue``. :class:`Plan` is what a batch means once its resends are
known: which messages are new, how many seqs each room and inbox needs, and,
given the seqs before the batch, every message's seq, result and row. Where
the resends and seqs come from (a lookup per message or one per batch, a
cache or a reservation in the database) is each store's own.
"""

from __future__ import annotations

import asyncio
import functools
import random
import uuid
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final

import orjson

from ..exceptions import InvalidRequest, NoSuchMessage, StoreBusy, StoreError
from ..model import Change, ChatMessage, DirectMessage, FileInfo, Mention
from .base import AppendResult, DirectResult, Draft

__all__ = [
    "MAX_BATCH",
    "MAX_QUEUED",
    "OVERLAP_AT",
    "Batch",
    "BatchedAppends",
    "Pending",
    "Plan",
    "ResendKey",
    "WriteQueue",
    "lane_of",
    "MAX_REACTIONS",
    "MESSAGE_COLUMNS",
    "Target",
    "chat_from_row",
    "direct_from_row",
    "message_from_row",
    "names_from_column",
    "direct_resend",
    "file_from_column",
    "file_to_column",
]

#: Most messages stored in one transaction.
MAX_BATCH: Final = 2000

#: Most messages waiting for the writers, over all lanes (not counting the
#: batches being written): what SQLite or PostgreSQL store here in 0.3-1 s
#: (docs/benchmarks.md), so an accepted message is acked within about a
#: second even when more arrives. Past it an append fails with StoreBusy.
MAX_QUEUED: Final = 4_000

#: Drafts waiting in lanes no batch holds that start another batch beside
#: one being written (and, past one batch's worth, that split what waits
#: among the free writers). Fewer wait for the batch to end, then go in
#: one: a batch costs its round trips and its commit however small it is.
#: Measured on PostgreSQL with 4 lanes (bench/scenarios/pg_lanes.py, 200
#: rooms at an even pace): with every lane in a batch of its own as soon
#: as anything waits (1), batches of 1.5-5.5 drafts at 1,000-4,000 msgs/s
#: cost PostgreSQL 55-60 % more CPU and raised the ack p50 from 3-5 ms to
#: 8-9 ms; with 8, 60 % more CPU at 8,000 msgs/s; with 32, the same CPU
#: and latency as one writer up to 4,000 msgs/s, and the lanes' gain
#: above it (docs/benchmarks.md, "PostgreSQL writer lanes").
OVERLAP_AT: Final = 32

#: A refused sender is told to retry after this many seconds, spread by
#: ±50 % so that refused senders do not all come back at once.
BUSY_RETRY_AFTER: Final = 1.0


class Pending:
    """A queued draft: for a room (``room``) or a direct conversation (``recipient``)."""

    __slots__ = (
        "client_id",
        "draft",
        "file_json",
        "future",
        "order",
        "recipient",
        "room",
        "sender",
        "text",
    )

    def __init__(self, draft: Draft, future: asyncio.Future[Any], order: int = 0) -> None:
        self.draft = draft
        #: Its place in the queue (a batch of several lanes keeps it).
        self.order = order
        self.room = draft.room
        self.recipient = draft.to
        self.sender = draft.sender
        self.text = draft.text
        self.client_id = draft.client_id
        # The file's column value (never its url).
        file = draft.file
        self.file_json = file_to_column(file) if file is not None else None
        self.future = future

    @property
    def key(self) -> tuple[str, str, bool, str] | None:
        """What makes a resend a resend: sender, frame id, and where it goes.

        The same id sent to two rooms (or two users) is two messages.
        """
        if self.client_id is None:
            return None
        if self.room is not None:
            return (self.sender, self.client_id, False, self.room)
        assert self.recipient is not None
        return (self.sender, self.client_id, True, self.recipient)


def lane_of(room: str | None, sender: str, recipient: str | None, lanes: int) -> int:
    """The lane (``0 <= lane < lanes``) of a draft for ``room``, or ``sender`` to ``recipient``.

    A room's drafts share one lane; so do a direct conversation's, whichever
    side sends (the pair, not the sender: a message and the other side's
    reactions to it stay in one lane). A stable hash (CRC-32, not Python's
    salted ``hash``), so the lanes are the same in every process and test.
    """
    if lanes == 1:
        return 0
    if room is not None:
        key = "r\0" + room
    else:
        assert recipient is not None
        first, second = (sender, recipient) if sender <= recipient else (recipient, sender)
        key = "d\0" + first + "\0" + second
    return zlib.crc32(key.encode("utf-8", "surrogatepass")) % lanes


#: A batch as the queue hands it out: its drafts, and the lanes it holds.
Batch = tuple[list["Pending"], tuple[int, ...]]


class WriteQueue:
    """Appends waiting for a store's writers: in lanes, each in append order.

    A lane is held by at most one batch being written, and a batch takes
    everything waiting in the lanes it holds (up to :data:`MAX_BATCH`), so a
    room's drafts are stored in the order they came. How many batches
    :meth:`take` hands out adapts to what waits: one batch with every free
    lane's drafts, in append order, while little waits (one transaction, as
    one writer did: a batch costs its round trips and its commit however
    small it is); up to one per free writer, the lanes shared out among
    them, once ``overlap`` or more drafts wait.

    Args:
        limit: most messages waiting, over all lanes; past it :meth:`add`
            refuses with :class:`~roomcast.exceptions.StoreBusy`.
        lanes: how many lanes (:func:`lane_of`); 1: one batch at a time.
        overlap: drafts waiting in free lanes that make a batch worth
            writing beside one being written (:data:`OVERLAP_AT`).
    """

    __slots__ = (
        "_added",
        "_idle",
        "_inflight",
        "busy",
        "items",
        "lanes",
        "limit",
        "overlap",
        "queued",
        "writing",
    )

    def __init__(self, limit: int = MAX_QUEUED, lanes: int = 1, overlap: int = 0) -> None:
        if lanes < 1:
            raise ValueError("a store writes with one lane or more")
        self.limit = limit
        self.lanes = lanes
        self.overlap = overlap or OVERLAP_AT
        #: Each lane's waiting drafts, oldest first.
        self.items: list[list[Pending]] = [[] for _ in range(lanes)]
        #: How many drafts wait, in all lanes.
        self.queued = 0
        #: Each lane is held by a batch being written.
        self.busy: list[bool] = [False] * lanes
        #: Batches being written.
        self.writing = 0
        self._added = 0
        self._inflight: dict[tuple[str, str, bool, str], asyncio.Future[Any]] = {}
        self._idle: list[asyncio.Future[None]] = []

    def add(
        self, loop: asyncio.AbstractEventLoop, draft: Draft
    ) -> tuple[asyncio.Future[Any], int | None]:
        """Queue a draft: its future (or the first copy's, for a resend of one queued),
        and the lane it waits in (None when nothing new was queued).

        The future fails at once with :class:`~roomcast.exceptions.StoreBusy`
        when :attr:`limit` messages are already waiting.
        """
        future: asyncio.Future[Any] = loop.create_future()
        self._added += 1
        item = Pending(draft, future, self._added)
        key = item.key
        if key is not None:
            first = self._inflight.get(key)
            if first is not None:
                # A resend while the first is still being written.
                first.add_done_callback(functools.partial(_as_duplicate, future))
                return future, None
        if self.queued >= self.limit:
            retry_after = BUSY_RETRY_AFTER * random.uniform(0.5, 1.5)
            message = f"{self.limit} messages are waiting to be stored"
            future.set_exception(StoreBusy(message, retry_after=retry_after))
            return future, None
        if key is not None:
            self._inflight[key] = future
        lane = lane_of(item.room, item.sender, item.recipient, self.lanes)
        self.items[lane].append(item)
        self.queued += 1
        return future, lane

    def take(self, writers: int = 1) -> list[Batch]:
        """The batches to write now, with ``writers`` free to write them (maybe none).

        Nothing while a batch is being written and fewer than :attr:`overlap`
        drafts wait in free lanes: they go with the next batch, whole, when
        that one is done.
        """
        if writers < 1 or not self.queued:
            return []
        items, busy = self.items, self.busy
        free = [lane for lane in range(self.lanes) if items[lane] and not busy[lane]]
        waiting = sum(len(items[lane]) for lane in free)
        if not waiting or (self.writing and waiting < self.overlap):
            return []
        count = min(writers, len(free), max(1, waiting // self.overlap))
        # The biggest lanes first, each to the batch that has the fewest drafts so far.
        groups: list[list[int]] = [[] for _ in range(count)]
        sizes = [0] * count
        for lane in sorted(free, key=lambda lane: -len(items[lane])):
            smallest = sizes.index(min(sizes))
            groups[smallest].append(lane)
            sizes[smallest] += len(items[lane])
        return [self._take_lanes(group) for group in groups]

    def _take_lanes(self, lanes: list[int]) -> Batch:
        """One batch of everything waiting in ``lanes`` (up to :data:`MAX_BATCH`), held."""
        batch: list[Pending] = []
        held: list[int] = []
        for lane in lanes:
            room = MAX_BATCH - len(batch)
            if room <= 0:
                break
            waiting = self.items[lane]
            if len(waiting) <= room:
                batch += waiting
                self.items[lane] = []
            else:
                batch += waiting[:room]
                self.items[lane] = waiting[room:]
            self.busy[lane] = True
            held.append(lane)
        if len(held) > 1:
            batch.sort(key=_order)  # append order, as one writer had it
        self.queued -= len(batch)
        self.writing += 1
        return batch, tuple(held)

    def finish(
        self,
        batch: list[Pending],
        outcome: Sequence[AppendResult | DirectResult | Exception] | BaseException,
        reason: str = "",
        lanes: Sequence[int] = (0,),
    ) -> None:
        """Resolve ``batch``'s futures in order: with its results, or failed with ``reason``.

        A result that is an exception fails that draft alone (a change the
        message's state refuses). ``lanes``, which the batch held, are free.
        """
        for lane in lanes:
            self.busy[lane] = False
        self.writing -= 1
        for item in batch:
            key = item.key
            if key is not None and self._inflight.get(key) is item.future:
                del self._inflight[key]
        if not isinstance(outcome, BaseException):
            for item, result in zip(batch, outcome, strict=True):
                if item.future.done():
                    continue
                if isinstance(result, Exception):
                    item.future.set_exception(result)
                else:
                    item.future.set_result(result)
            return
        for item in batch:
            if not item.future.done():
                failure = StoreError(f"the message was not stored: {reason}")
                failure.__cause__ = outcome
                item.future.set_exception(failure)

    def idle(self) -> bool:
        """Nothing queued and nothing being written, in any lane."""
        return not self.queued and not self.writing

    async def wait_idle(self) -> None:
        """Wait until every append queued so far, in every lane, is stored or failed."""
        if self.idle():
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._idle.append(waiter)
        await waiter

    def wake_idle(self) -> None:
        """The writers found nothing left: release :meth:`wait_idle`."""
        waiters, self._idle = self._idle, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)


def _order(item: Pending) -> int:
    return item.order


class BatchedAppends:
    """``append`` and ``append_direct`` for a store that queues drafts with ``submit``."""

    def append(
        self,
        room: str,
        sender: str,
        text: str,
        *,
        client_id: str | None = None,
        file: FileInfo | None = None,
    ) -> asyncio.Future[AppendResult]:
        return self.submit(Draft(sender, room=room, text=text, client_id=client_id, file=file))

    def append_direct(
        self,
        sender: str,
        recipient: str,
        text: str,
        *,
        client_id: str | None = None,
        file: FileInfo | None = None,
    ) -> asyncio.Future[DirectResult]:
        return self.submit(Draft(sender, to=recipient, text=text, client_id=client_id, file=file))

    def submit(self, draft: Draft) -> asyncio.Future[Any]:
        raise NotImplementedError


# -- a batch, worked out ------------------------------------------------------------

#: A resend's key once its kind is known: sender, frame id, and room or recipient.
ResendKey = tuple[str, str, str]

#: Most distinct emoji on one message: a row of reactions stays one row on
#: a phone (Slack allows 23, GitHub 8), and a message cannot be flooded.
MAX_REACTIONS: Final = 20


@dataclass(slots=True)
class Target:
    """A message some change in a batch names, as its transaction reads it.

    The plan keeps it current as it goes through the batch, so a delete and
    a later edit of one message in one batch are decided as if sent apart.
    """

    message_id: str
    sender: str
    #: The room of a room message; the recipient of a direct one.
    room: str | None
    recipient: str | None
    deleted: bool
    #: Each emoji with the names that reacted with it.
    reactions: dict[str, set[str]] = field(default_factory=dict)


class Plan:
    """A batch worked out in memory, the same way for every SQL store.

    Built from the batch and the earlier copies of its resends (found by the
    store in the batch's transaction), it lists the messages its changes
    name (:meth:`targets`); :meth:`decide`, given those messages as the
    transaction reads them, says which changes apply, which change nothing
    and which the message's state refuses, and so how many seqs each room
    and inbox needs (:attr:`room_counts`, :attr:`inbox_counts`);
    :meth:`assign` then gives each new event its seq and id from the last
    seqs before the batch, and lists the rows to insert and update.

    Args:
        batch: the drafts, in append order.
        rooms: the earlier copy of each resent room draft, by
            ``(sender, client_id, room)``.
        direct: the same for direct drafts, by ``(sender, client_id, recipient)``.
    """

    __slots__ = (
        "batch",
        "deletes",
        "direct_deletes",
        "direct_edits",
        "direct_rows",
        "earlier",
        "edits",
        "inbox_counts",
        "inbox_rows",
        "message_rows",
        "reactions",
        "room_counts",
        "_targets",
    )

    def __init__(
        self,
        batch: list[Pending],
        rooms: dict[ResendKey, AppendResult],
        direct: dict[ResendKey, DirectResult],
    ) -> None:
        self.batch = batch
        #: Each draft's outcome when known before seqs: an earlier copy, a
        #: change that changes nothing, or a refusal; None for a new event.
        self.earlier: list[AppendResult | DirectResult | Exception | None] = []
        #: How many new events each room and each inbox gets.
        self.room_counts: dict[str, int] = {}
        self.inbox_counts: dict[str, int] = {}
        #: Rows to insert, filled by :meth:`assign`: messages ``(room, seq,
        #: message_id, sender, body, client_id, ts_ms, file, kind, target,
        #: thread, mentions)``, direct messages ``(message_id, sender,
        #: recipient, body, client_id, ts_ms, file, kind, target, room,
        #: mentions)``, inbox entries ``(owner, seq, message_id)``.
        self.message_rows: list[tuple[Any, ...]] = []
        self.direct_rows: list[tuple[Any, ...]] = []
        self.inbox_rows: list[tuple[Any, ...]] = []
        #: What the changes do to the messages they name, in order: edits
        #: ``(body, edited_ms, message_id)``, deletes ``(deleted_ms,
        #: message_id)``, per table; each reaction touched, ``(message_id,
        #: emoji, name)``, with its row ``(..., ts_ms)`` if it ends added,
        #: None if removed (:meth:`reaction_rows`).
        self.edits: list[tuple[Any, ...]] = []
        self.deletes: list[tuple[Any, ...]] = []
        self.direct_edits: list[tuple[Any, ...]] = []
        self.direct_deletes: list[tuple[Any, ...]] = []
        self.reactions: dict[tuple[str, str, str], tuple[Any, ...] | None] = {}
        self._targets: dict[str, Target] = {}
        for item in batch:
            first: AppendResult | DirectResult | None = None
            if item.client_id is not None:
                if item.room is not None:
                    first = rooms.get((item.sender, item.client_id, item.room)) if rooms else None
                else:
                    assert item.recipient is not None
                    key = (item.sender, item.client_id, item.recipient)
                    first = direct.get(key) if direct else None
            self.earlier.append(first)

    def targets(self) -> set[str]:
        """The ids of the messages this batch's new changes name."""
        return {
            item.draft.target
            for item, first in zip(self.batch, self.earlier, strict=True)
            if first is None and item.draft.target is not None and item.draft.kind != "chat"
        }

    def decide(self, targets: dict[str, Target], now_ms: int) -> None:
        """Settle each change against ``targets`` (as read in the transaction); count seqs.

        ``targets`` holds the messages :meth:`targets` named that exist;
        it is updated in place as the changes apply.
        """
        self._targets = targets
        room_counts, inbox_counts = self.room_counts, self.inbox_counts
        earlier = self.earlier
        for index, item in enumerate(self.batch):
            if earlier[index] is not None:
                continue
            draft = item.draft
            if draft.kind != "chat":
                outcome = _settle(draft, targets.get(draft.target or ""), now_ms)
                if outcome is not None:
                    earlier[index] = outcome
                    continue
            if item.room is not None:
                room_counts[item.room] = room_counts.get(item.room, 0) + 1
                for name in draft.mentions:
                    if name != draft.sender:
                        inbox_counts[name] = inbox_counts.get(name, 0) + 1
            else:
                assert item.recipient is not None
                for owner in dict.fromkeys((item.sender, item.recipient)):
                    inbox_counts[owner] = inbox_counts.get(owner, 0) + 1

    def assign(
        self, room_seqs: dict[str, int], inbox_seqs: dict[str, int], now_ms: int
    ) -> list[AppendResult | DirectResult | Exception]:
        """Every draft's result, new events numbered on from the last seqs before the batch.

        ``room_seqs`` and ``inbox_seqs`` hold the last seq of each room and
        inbox in :attr:`room_counts` and :attr:`inbox_counts`; they are
        updated in place to the last seqs after the batch.

        Raises:
            StoreError: an inbox has no seq: no such user. The batch fails whole.
        """
        for owner in self.inbox_counts:
            if owner not in inbox_seqs:
                raise StoreError(f"no user {owner!r} for a direct message")
        results: list[AppendResult | DirectResult | Exception] = []
        add_message, add_direct = self.message_rows.append, self.direct_rows.append
        add_inbox = self.inbox_rows.append
        for item, first in zip(self.batch, self.earlier, strict=True):
            if first is not None:
                results.append(first)
                continue
            draft = item.draft
            message_id = uuid.uuid4().hex
            room = item.room
            if room is not None:
                seq = room_seqs[room] = room_seqs[room] + 1
                if draft.kind != "chat":
                    assert draft.target is not None
                    add_message(
                        (room, seq, message_id, item.sender, item.text, item.client_id)
                        + (now_ms, None, draft.kind, draft.target, None, None)
                    )
                    self._apply(draft, now_ms)
                    change = Change(
                        draft.kind, draft.target, item.sender, now_ms, seq, room, None, item.text
                    )
                    results.append(AppendResult(change, False))
                    continue
                mentions = draft.mentions
                add_message(
                    (room, seq, message_id, item.sender, item.text, item.client_id, now_ms)
                    + (item.file_json, "chat", draft.reply_to, draft.thread)
                    + (_names_column(mentions),)
                )
                chat = ChatMessage(
                    room,
                    item.text,
                    item.sender,
                    seq,
                    message_id,
                    now_ms,
                    _unsigned(draft.file),
                    draft.reply_to,
                    draft.thread,
                    mentions,
                )
                mentioned: list[tuple[str, int]] = []
                for name in mentions:
                    if name == item.sender:
                        continue
                    event_id = uuid.uuid4().hex
                    add_direct(
                        (event_id, item.sender, name, "", None, now_ms, None)
                        + ("mention", message_id, room, None)
                    )
                    mention_seq = inbox_seqs[name] = inbox_seqs[name] + 1
                    add_inbox((name, mention_seq, event_id))
                    mentioned.append((name, mention_seq))
                results.append(AppendResult(chat, False, tuple(mentioned)))
                continue
            sender, recipient = item.sender, item.recipient
            assert recipient is not None
            if draft.kind != "chat":
                add_direct(
                    (message_id, sender, recipient, item.text, item.client_id, now_ms, None)
                    + (draft.kind, draft.target, None, None)
                )
                self._apply(draft, now_ms)
            else:
                add_direct(
                    (message_id, sender, recipient, item.text, item.client_id, now_ms)
                    + (item.file_json, "chat", None, None, _names_column(draft.mentions))
                )
            sender_seq = inbox_seqs[sender] = inbox_seqs[sender] + 1
            add_inbox((sender, sender_seq, message_id))
            if recipient == sender:
                recipient_seq = sender_seq  # a note to self: one inbox, one seq
            else:
                recipient_seq = inbox_seqs[recipient] = inbox_seqs[recipient] + 1
                add_inbox((recipient, recipient_seq, message_id))
            event: DirectMessage | Change
            if draft.kind != "chat":
                assert draft.target is not None
                peers = (sender, recipient)
                event = Change(
                    draft.kind, draft.target, sender, now_ms, None, None, peers, item.text
                )
            else:
                event = DirectMessage(
                    sender,
                    recipient,
                    item.text,
                    message_id,
                    now_ms,
                    file=_unsigned(draft.file),
                    mentions=draft.mentions,
                )
            results.append(DirectResult(event, sender_seq, recipient_seq, False))
        return results

    def _apply(self, draft: Draft, now_ms: int) -> None:
        """List what an applied change does to its message (decided in :meth:`decide`)."""
        target = draft.target
        assert target is not None
        direct = draft.room is None
        if draft.kind == "edit":
            (self.direct_edits if direct else self.edits).append((draft.text, now_ms, target))
        elif draft.kind == "delete":
            (self.direct_deletes if direct else self.deletes).append((now_ms, target))
        else:
            key = (target, draft.text, draft.sender)
            self.reactions[key] = (*key, now_ms) if draft.kind == "react" else None

    def reaction_rows(self) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        """The reactions to insert ``(message_id, emoji, name, ts_ms)`` and to delete.

        Each (message, emoji, name) as the batch leaves it: an add and a
        remove of one reaction in one batch keep only the last.
        """
        inserts = [row for row in self.reactions.values() if row is not None]
        deletes = [key for key, row in self.reactions.items() if row is None]
        return inserts, deletes


def _settle(
    draft: Draft, target: Target | None, now_ms: int
) -> AppendResult | DirectResult | Exception | None:
    """A change's outcome when it stores no event (nothing to change, or refused); else None.

    An applying change updates ``target`` so later drafts of the batch see it.
    """
    if target is None:
        return NoSuchMessage("no such message")
    kind, name = draft.kind, draft.sender
    if kind == "edit":
        if target.deleted:
            return InvalidRequest("the message was deleted; it cannot be edited")
        return None
    if kind == "delete":
        if target.deleted:
            return _unchanged(draft, target, now_ms)
        target.deleted = True
        target.reactions.clear()
        return None
    reactions = target.reactions
    if kind == "react":
        if target.deleted:
            return InvalidRequest("the message was deleted; it cannot take reactions")
        names = reactions.get(draft.text)
        if names is not None and name in names:
            return _unchanged(draft, target, now_ms)
        if names is None:
            if len(reactions) >= MAX_REACTIONS:
                return InvalidRequest(f"a message has at most {MAX_REACTIONS} different reactions")
            names = reactions[draft.text] = set()
        names.add(name)
        return None
    names = reactions.get(draft.text)
    if names is None or name not in names:
        return _unchanged(draft, target, now_ms)
    names.discard(name)
    if not names:
        del reactions[draft.text]
    return None


def _unchanged(draft: Draft, target: Target, now_ms: int) -> AppendResult | DirectResult:
    """The result of a change that changes nothing: no event, no seq."""
    assert draft.target is not None
    if draft.room is not None:
        change = Change(draft.kind, draft.target, draft.sender, now_ms, None, draft.room)
        return AppendResult(replace(change, text=draft.text), False)
    assert draft.to is not None
    peers = (draft.sender, draft.to)
    change = Change(draft.kind, draft.target, draft.sender, now_ms, None, None, peers, draft.text)
    return DirectResult(change, 0, 0, False)


def _names_column(names: tuple[str, ...]) -> str | None:
    """The ``mentions`` column: a JSON list of names, or NULL for none."""
    return orjson.dumps(list(names)).decode() if names else None


def _unsigned(file: FileInfo | None) -> FileInfo | None:
    """``file`` as stored: without its url."""
    return replace(file, url=None) if file is not None and file.url is not None else file


# -- rows ------------------------------------------------------------------------


def file_to_column(file: FileInfo) -> str:
    """The ``file`` column of a file message: name, mime, size and sha256 as JSON (no url)."""
    return orjson.dumps(
        {"name": file.name, "mime": file.mime, "size": file.size, "sha256": file.sha256}
    ).decode()


def file_from_column(column: str | None) -> FileInfo | None:
    """The FileInfo stored in a ``file`` column (None for a text message).

    None too for a deleted file message, whose column keeps only the size.
    """
    if not column:
        return None
    obj = orjson.loads(column)
    if "sha256" not in obj:
        return None
    return FileInfo(obj["name"], obj["mime"], obj["size"], obj["sha256"])


#: A room event's columns, in the order :func:`message_from_row` reads them.
MESSAGE_COLUMNS: Final = (
    "room, body, sender, seq, message_id, ts_ms, file, kind, target, thread, mentions,"
    " edited_ms, deleted_ms"
)


def message_from_row(row: Sequence[Any]) -> ChatMessage | Change:
    """A room message (as it is now) or change, from a row of :data:`MESSAGE_COLUMNS`."""
    room, body, sender, seq, message_id, ts_ms, file, kind, target, thread = row[:10]
    names, edited, gone = row[10:13]
    if kind != "chat":
        return Change(kind, target, sender, ts_ms, seq, room, None, body)
    return ChatMessage(
        room,
        body,
        sender,
        seq,
        message_id,
        ts_ms,
        file_from_column(file),
        target,
        thread,
        names_from_column(names),
        edited,
        gone is not None,
    )


def chat_from_row(row: Sequence[Any]) -> ChatMessage:
    """A room message from a row of :data:`MESSAGE_COLUMNS` that is one (not a change)."""
    message = message_from_row(row)
    assert isinstance(message, ChatMessage)
    return message


def direct_from_row(row: Sequence[Any]) -> DirectMessage | Change | Mention:
    """A direct-stream event from ``sender, recipient, body, message_id, ts_ms, seq,
    file, kind, target, room, mentions, edited_ms, deleted_ms``."""
    sender, to, body, message_id, ts_ms, seq, file, kind, target, room, names, edited, gone = row
    if kind == "chat":
        return DirectMessage(
            sender,
            to,
            body,
            message_id,
            ts_ms,
            seq,
            file_from_column(file),
            names_from_column(names),
            edited,
            gone is not None,
        )
    if kind == "mention":
        return Mention(room, target, sender, seq, ts_ms)
    return Change(kind, target, sender, ts_ms, seq, None, (sender, to), body)


def direct_resend(row: Sequence[Any]) -> tuple[ResendKey, DirectResult]:
    """A direct draft's earlier copy, by its resend key, from a lookup row.

    The row is ``sender, client_id, recipient, body, message_id, ts_ms, file,
    sender_seq, recipient_seq, kind, target, mentions`` (the seqs None when
    pruned from an inbox).
    """
    sender, client_id, to, body, message_id, ts_ms, file, sender_seq, to_seq = row[:9]
    kind, target, names = row[9:12]
    copy: DirectMessage | Change
    if kind == "chat":
        copy = DirectMessage(
            sender,
            to,
            body,
            message_id,
            ts_ms,
            file=file_from_column(file),
            mentions=names_from_column(names),
        )
    else:
        copy = Change(kind, target, sender, ts_ms, None, None, (sender, to), body)
    return (sender, client_id, to), DirectResult(copy, sender_seq or 0, to_seq or 0, True)


def names_from_column(column: str | None) -> tuple[str, ...]:
    """The names in a ``mentions`` column."""
    return tuple(orjson.loads(column)) if column else ()


def _as_duplicate(future: asyncio.Future[Any], first: asyncio.Future[Any]) -> None:
    if future.done():
        return
    if first.cancelled():
        future.set_exception(StoreError("the first copy of this message was not stored"))
    elif (error := first.exception()) is not None:
        future.set_exception(StoreError(f"the message was not stored: {error}"))
    else:
        future.set_result(replace(first.result(), duplicate=True))
