"""What the batching stores share: appends queued for one writer, and their rows.

:class:`~roomcast.store.sqlite.SQLiteStore` and
:class:`~roomcast.store.postgres.PostgresStore` both answer ``append`` with a
future at once, and store what is queued in batches, one transaction each,
resolving the futures in order. :class:`WriteQueue` is that queue: it folds a
resend that arrives while its first copy is still queued into the first
copy's future, refuses a message when :data:`MAX_QUEUED` are already waiting
(:class:`~roomcast.exceptions.StoreBusy`: when more arrives than the database
can take, senders are told to come back instead of waiting ever longer for
their acks while the server's memory grows), hands the writer batches,
resolves a finished batch, and tells :meth:`WriteQueue.wait_idle` callers
when nothing is left.
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
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, Final

import orjson

from ..exceptions import StoreBusy, StoreError
from ..model import ChatMessage, DirectMessage, FileInfo
from .base import AppendResult, DirectResult

__all__ = [
    "MAX_BATCH",
    "MAX_QUEUED",
    "BatchedAppends",
    "Pending",
    "Plan",
    "ResendKey",
    "WriteQueue",
    "chat_from_row",
    "direct_from_row",
    "direct_resend",
    "file_from_column",
    "file_to_column",
]

#: Most messages stored in one transaction.
MAX_BATCH: Final = 2000

#: Most messages waiting for the writer (not counting the batch being
#: written): what SQLite or PostgreSQL store here in 0.3-1 s
#: (docs/benchmarks.md), so an accepted message is acked within about a
#: second even when more arrives. Past it an append fails with StoreBusy.
MAX_QUEUED: Final = 4_000

#: A refused sender is told to retry after this many seconds, spread by
#: ±50 % so that refused senders do not all come back at once.
BUSY_RETRY_AFTER: Final = 1.0


class Pending:
    """A queued message: for a room (``room``) or a direct one (``recipient``)."""

    __slots__ = ("client_id", "file", "file_json", "future", "recipient", "room", "sender", "text")

    def __init__(
        self,
        room: str | None,
        recipient: str | None,
        sender: str,
        text: str,
        client_id: str | None,
        file: FileInfo | None,
        future: asyncio.Future[Any],
    ) -> None:
        self.room = room
        self.recipient = recipient
        self.sender = sender
        self.text = text
        self.client_id = client_id
        # The file as stored (no url), and its column value.
        if file is not None and file.url is not None:
            file = replace(file, url=None)
        self.file = file
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


class WriteQueue:
    """Appends waiting for a store's writer, in append order.

    Args:
        limit: most messages waiting; past it :meth:`add` refuses with
            :class:`~roomcast.exceptions.StoreBusy`.
    """

    __slots__ = ("_idle", "_inflight", "busy", "items", "limit")

    def __init__(self, limit: int = MAX_QUEUED) -> None:
        self.limit = limit
        self.items: list[Pending] = []
        #: A batch taken by the writer is being stored.
        self.busy = False
        self._inflight: dict[tuple[str, str, bool, str], asyncio.Future[Any]] = {}
        self._idle: list[asyncio.Future[None]] = []

    def add(
        self,
        loop: asyncio.AbstractEventLoop,
        room: str | None,
        recipient: str | None,
        sender: str,
        text: str,
        client_id: str | None,
        file: FileInfo | None,
    ) -> asyncio.Future[Any]:
        """Queue a message; its future, or the first copy's when it is a resend of one queued.

        The future fails at once with :class:`~roomcast.exceptions.StoreBusy`
        when :attr:`limit` messages are already waiting.
        """
        future: asyncio.Future[Any] = loop.create_future()
        item = Pending(room, recipient, sender, text, client_id, file, future)
        key = item.key
        if key is not None:
            first = self._inflight.get(key)
            if first is not None:
                # A resend while the first is still being written.
                first.add_done_callback(functools.partial(_as_duplicate, future))
                return future
        if len(self.items) >= self.limit:
            retry_after = BUSY_RETRY_AFTER * random.uniform(0.5, 1.5)
            message = f"{self.limit} messages are waiting to be stored"
            future.set_exception(StoreBusy(message, retry_after=retry_after))
            return future
        if key is not None:
            self._inflight[key] = future
        self.items.append(item)
        return future

    def take(self) -> list[Pending]:
        """The next batch (at most :data:`MAX_BATCH`), now :attr:`busy`."""
        batch, self.items = self.items[:MAX_BATCH], self.items[MAX_BATCH:]
        self.busy = True
        return batch

    def finish(
        self,
        batch: list[Pending],
        outcome: Sequence[AppendResult | DirectResult] | BaseException,
        reason: str = "",
    ) -> None:
        """Resolve ``batch``'s futures in order: with its results, or failed with ``reason``."""
        self.busy = False
        for item in batch:
            key = item.key
            if key is not None and self._inflight.get(key) is item.future:
                del self._inflight[key]
        if not isinstance(outcome, BaseException):
            for item, result in zip(batch, outcome, strict=True):
                if not item.future.done():
                    item.future.set_result(result)
            return
        for item in batch:
            if not item.future.done():
                failure = StoreError(f"the message was not stored: {reason}")
                failure.__cause__ = outcome
                item.future.set_exception(failure)

    def idle(self) -> bool:
        """Nothing queued and nothing being written."""
        return not self.items and not self.busy

    async def wait_idle(self) -> None:
        """Wait until every append queued so far is stored or failed."""
        if self.idle():
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._idle.append(waiter)
        await waiter

    def wake_idle(self) -> None:
        """The writer found nothing left: release :meth:`wait_idle`."""
        waiters, self._idle = self._idle, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)


class BatchedAppends:
    """``append`` and ``append_direct`` for a store that queues them with ``_enqueue``."""

    def append(
        self,
        room: str,
        sender: str,
        text: str,
        *,
        client_id: str | None = None,
        file: FileInfo | None = None,
    ) -> asyncio.Future[AppendResult]:
        return self._enqueue(room, None, sender, text, client_id, file)

    def append_direct(
        self,
        sender: str,
        recipient: str,
        text: str,
        *,
        client_id: str | None = None,
        file: FileInfo | None = None,
    ) -> asyncio.Future[DirectResult]:
        return self._enqueue(None, recipient, sender, text, client_id, file)

    def _enqueue(
        self,
        room: str | None,
        recipient: str | None,
        sender: str,
        text: str,
        client_id: str | None,
        file: FileInfo | None,
    ) -> asyncio.Future[Any]:
        raise NotImplementedError


# -- a batch, worked out ------------------------------------------------------------

#: A resend's key once its kind is known: sender, frame id, and room or recipient.
ResendKey = tuple[str, str, str]


class Plan:
    """A batch worked out in memory, the same way for every SQL store.

    Built from the batch and the earlier copies of its resends (found by the
    store in the batch's transaction), it says how many seqs each room and
    inbox needs (:attr:`room_counts`, :attr:`inbox_counts`); :meth:`assign`
    then gives each new message its seq and id from the last seqs before the
    batch, and lists the rows to insert.

    Args:
        batch: the messages, in append order.
        rooms: the earlier copy of each resent room message, by
            ``(sender, client_id, room)``.
        direct: the same for direct messages, by ``(sender, client_id, recipient)``.
    """

    __slots__ = (
        "batch",
        "direct_rows",
        "earlier",
        "inbox_counts",
        "inbox_rows",
        "message_rows",
        "room_counts",
    )

    def __init__(
        self,
        batch: list[Pending],
        rooms: dict[ResendKey, ChatMessage],
        direct: dict[ResendKey, DirectResult],
    ) -> None:
        self.batch = batch
        #: Each message's earlier copy, or None for a new message.
        self.earlier: list[AppendResult | DirectResult | None] = []
        #: How many new messages each room and each inbox gets.
        self.room_counts: dict[str, int] = {}
        self.inbox_counts: dict[str, int] = {}
        #: Rows to insert, filled by :meth:`assign`: messages
        #: ``(room, seq, message_id, sender, body, client_id, ts_ms, file)``,
        #: direct messages ``(message_id, sender, recipient, body, client_id,
        #: ts_ms, file)``, inbox entries ``(owner, seq, message_id)``.
        self.message_rows: list[tuple[Any, ...]] = []
        self.direct_rows: list[tuple[Any, ...]] = []
        self.inbox_rows: list[tuple[Any, ...]] = []
        room_counts, inbox_counts = self.room_counts, self.inbox_counts
        for item in batch:
            first: AppendResult | DirectResult | None = None
            if item.room is not None:
                if item.client_id is not None and rooms:
                    found = rooms.get((item.sender, item.client_id, item.room))
                    first = AppendResult(found, True) if found is not None else None
                if first is None:
                    room_counts[item.room] = room_counts.get(item.room, 0) + 1
            else:
                recipient = item.recipient
                assert recipient is not None
                if item.client_id is not None and direct:
                    first = direct.get((item.sender, item.client_id, recipient))
                if first is None:
                    for owner in dict.fromkeys((item.sender, recipient)):
                        inbox_counts[owner] = inbox_counts.get(owner, 0) + 1
            self.earlier.append(first)

    def assign(
        self, room_seqs: dict[str, int], inbox_seqs: dict[str, int], now_ms: int
    ) -> list[AppendResult | DirectResult]:
        """Every message's result, new ones numbered on from the last seqs before the batch.

        ``room_seqs`` and ``inbox_seqs`` hold the last seq of each room and
        inbox in :attr:`room_counts` and :attr:`inbox_counts`; they are
        updated in place to the last seqs after the batch.

        Raises:
            StoreError: an inbox has no seq: no such user. The batch fails whole.
        """
        for owner in self.inbox_counts:
            if owner not in inbox_seqs:
                raise StoreError(f"no user {owner!r} for a direct message")
        results: list[AppendResult | DirectResult] = []
        add_message, add_direct = self.message_rows.append, self.direct_rows.append
        add_inbox = self.inbox_rows.append
        for item, first in zip(self.batch, self.earlier, strict=True):
            if first is not None:
                results.append(first)
                continue
            message_id = uuid.uuid4().hex
            room = item.room
            if room is not None:
                seq = room_seqs[room] = room_seqs[room] + 1
                add_message(
                    (
                        room,
                        seq,
                        message_id,
                        item.sender,
                        item.text,
                        item.client_id,
                        now_ms,
                        item.file_json,
                    )
                )
                chat = ChatMessage(room, item.text, item.sender, seq, message_id, now_ms, item.file)
                results.append(AppendResult(chat, False))
                continue
            sender, recipient = item.sender, item.recipient
            assert recipient is not None
            add_direct(
                (message_id, sender, recipient, item.text, item.client_id, now_ms, item.file_json)
            )
            sender_seq = inbox_seqs[sender] = inbox_seqs[sender] + 1
            add_inbox((sender, sender_seq, message_id))
            if recipient == sender:
                recipient_seq = sender_seq  # a note to self: one inbox, one seq
            else:
                recipient_seq = inbox_seqs[recipient] = inbox_seqs[recipient] + 1
                add_inbox((recipient, recipient_seq, message_id))
            direct = DirectMessage(sender, recipient, item.text, message_id, now_ms, file=item.file)
            results.append(DirectResult(direct, sender_seq, recipient_seq, False))
        return results


# -- rows ------------------------------------------------------------------------


def file_to_column(file: FileInfo) -> str:
    """The ``file`` column of a file message: name, mime, size and sha256 as JSON (no url)."""
    return orjson.dumps(
        {"name": file.name, "mime": file.mime, "size": file.size, "sha256": file.sha256}
    ).decode()


def file_from_column(column: str | None) -> FileInfo | None:
    """The FileInfo stored in a ``file`` column (None for a text message)."""
    if not column:
        return None
    obj = orjson.loads(column)
    return FileInfo(obj["name"], obj["mime"], obj["size"], obj["sha256"])


def chat_from_row(row: Sequence[Any]) -> ChatMessage:
    """A room message from ``room, body, sender, seq, message_id, ts_ms, file``."""
    room, body, sender, seq, message_id, ts_ms, file = row
    return ChatMessage(room, body, sender, seq, message_id, ts_ms, file_from_column(file))


def direct_from_row(row: Sequence[Any]) -> DirectMessage:
    """A direct message from ``sender, recipient, body, message_id, ts_ms, seq, file``."""
    sender, recipient, body, message_id, ts_ms, seq, file = row
    return DirectMessage(sender, recipient, body, message_id, ts_ms, seq, file_from_column(file))


def direct_resend(row: Sequence[Any]) -> tuple[ResendKey, DirectResult]:
    """A direct message's earlier copy, by its resend key, from a lookup row.

    The row is ``sender, client_id, recipient, body, message_id, ts_ms, file,
    sender_seq, recipient_seq`` (the seqs None when pruned from an inbox).
    """
    sender, client_id, to, body, message_id, ts_ms, file, sender_seq, to_seq = row
    copy = DirectMessage(sender, to, body, message_id, ts_ms, file=file_from_column(file))
    return (sender, client_id, to), DirectResult(copy, sender_seq or 0, to_seq or 0, True)


def _as_duplicate(future: asyncio.Future[Any], first: asyncio.Future[Any]) -> None:
    if future.done():
        return
    if first.cancelled():
        future.set_exception(StoreError("the first copy of this message was not stored"))
    elif (error := first.exception()) is not None:
        future.set_exception(StoreError(f"the message was not stored: {error}"))
    else:
        future.set_result(replace(first.result(), duplicate=True))
