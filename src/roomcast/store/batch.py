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
of one ``_enqueue``. How a batch is written is each store's own.
"""

from __future__ import annotations

import asyncio
import functools
import random
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, Final

from ..exceptions import StoreBusy, StoreError
from ..protocol.messages import ChatMessage, DirectMessage, FileInfo
from .base import AppendResult, DirectResult

__all__ = [
    "MAX_BATCH",
    "MAX_QUEUED",
    "BatchedAppends",
    "Pending",
    "WriteQueue",
    "chat_from_row",
    "direct_from_row",
    "file_from_column",
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
        self.file_json = file.to_json() if file is not None else None
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


# -- rows ------------------------------------------------------------------------


def file_from_column(column: str | None) -> FileInfo | None:
    """The FileInfo stored in a ``file`` column (None for a text message)."""
    return FileInfo.from_json(column) if column else None


def chat_from_row(row: Sequence[Any]) -> ChatMessage:
    """A room message from ``room, body, sender, seq, message_id, ts_ms, file``."""
    room, body, sender, seq, message_id, ts_ms, file = row
    return ChatMessage(room, body, sender, seq, message_id, ts_ms, file_from_column(file))


def direct_from_row(row: Sequence[Any]) -> DirectMessage:
    """A direct message from ``sender, recipient, body, message_id, ts_ms, seq, file``."""
    sender, recipient, body, message_id, ts_ms, seq, file = row
    return DirectMessage(sender, recipient, body, message_id, ts_ms, seq, file_from_column(file))


def _as_duplicate(future: asyncio.Future[Any], first: asyncio.Future[Any]) -> None:
    if future.done():
        return
    if first.cancelled():
        future.set_exception(StoreError("the first copy of this message was not stored"))
    elif (error := first.exception()) is not None:
        future.set_exception(StoreError(f"the message was not stored: {error}"))
    else:
        future.set_result(replace(first.result(), duplicate=True))
