"""The shared store: PostgreSQL through an asyncpg pool, written in batches.

Several nodes may write to one database at once, so nothing about seqs is
kept in process memory: each batch reserves its seqs in the database, in
the transaction that inserts its messages.

:meth:`PostgresStore.append` only queues the message and returns a future;
one writer task per store takes everything queued so far (up to
:data:`MAX_BATCH`) and stores it in one transaction:

1. ``BEGIN``, and in the same round trip ``pg_advisory_xact_lock`` on a hash
   of every sender with a frame id in the batch, so two nodes given the same
   resend at once look it up one after the other;
2. one lookup of those ``(sender, client_id)`` pairs among the room
   messages of the last :data:`~roomcast.store.base.DEDUPE_SECONDS` (and one
   among direct messages, when the batch resends any);
3. one ``INSERT INTO rooms ... ON CONFLICT DO UPDATE SET last_seq = last_seq
   + n RETURNING`` for the batch's rooms: the row lock it takes holds any
   other node's batch for those rooms until this one commits, so seqs stay
   gapless and in one order per room;
4. for direct messages, ``SELECT ... FOR NO KEY UPDATE`` on the inboxes'
   users (their ``dm_seq``), likewise;
5. one statement inserting every message, direct message and inbox row
   (and setting the new ``dm_seq`` values) from ``unnest()`` arrays; then
   ``COMMIT``.

So a batch of room messages takes 5 round trips (4 without frame ids)
however many messages and rooms it holds; direct messages add one or two.

Locks are always taken in one global order (advisory locks sorted, then
rooms sorted by name, then users sorted by name), so batches of different
nodes wait for each other but never deadlock. A failed batch is rolled back
whole and every future in it fails with :class:`~roomcast.exceptions.StoreError`;
the next batch starts afresh (on a new connection if the old one broke).

Reads use the other connections of the pool, concurrently with the writer.
Every driver exception is turned into a :class:`StoreError` here, with the
original as ``__cause__``; messages and logs never show the URL's password.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import errno
import hashlib
import inspect
import logging
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Final, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

import asyncpg

from ..exceptions import StoreError
from ..protocol.messages import ChatMessage, DirectMessage, FileInfo
from .base import DEDUPE_SECONDS, AppendResult, DirectResult, RoomAccess, StoredUser
from .batch import (
    MAX_QUEUED,
    BatchedAppends,
    Pending,
    WriteQueue,
    chat_from_row,
    direct_from_row,
    file_from_column,
)
from .schema import LATEST_VERSION, MIGRATIONS, VERSION_TABLE

__all__ = ["PostgresStore"]

logger = logging.getLogger("roomcast.store.postgres")

T = TypeVar("T")

#: Rows deleted per transaction when old history is pruned.
PRUNE_CHUNK: Final = 5000
#: Seconds between retention passes.
PRUNE_INTERVAL: Final = 3600.0
#: Seconds a migration (or the wait for another node's) may take.
MIGRATE_TIMEOUT: Final = 300.0

#: What asyncpg (and the sockets under it) raise; turned into StoreError here.
_DRIVER_ERRORS: Final = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.InternalClientError,
    OSError,
    TimeoutError,
)


def _lock_key(name: str) -> int:
    """A signed 64-bit ``pg_advisory_xact_lock`` key for ``name``."""
    digest = hashlib.blake2b(name.encode(), digest_size=8, person=b"roomcast").digest()
    return int.from_bytes(digest, "big", signed=True)


#: Advisory locks: schema migrations, retention passes, and (per sender)
#: the dedupe lookup of frame ids.
_MIGRATE_LOCK: Final = _lock_key("migrate")
_PRUNE_LOCK: Final = _lock_key("prune")


def _sender_lock(sender: str) -> int:
    """The advisory lock held while looking up ``sender``'s resent frame ids."""
    return _lock_key("sender:" + sender)


#: A room message's columns, in the order :func:`~.batch.chat_from_row` reads them.
_COLUMNS: Final = "room, body, sender, seq, message_id, ts_ms, file"
#: The earlier copies of a batch's resent room messages: ``$1``, ``$2``,
#: ``$3`` are the senders, client ids and rooms, ``$4`` the oldest time
#: that still counts.
_DEDUPE: Final = (
    "SELECT DISTINCT ON (m.sender, m.client_id, m.room) m.sender, m.client_id,"
    " m.room, m.body, m.sender, m.seq, m.message_id, m.ts_ms, m.file"
    " FROM unnest($1::text[], $2::text[], $3::text[]) AS k(sender, client_id, room)"
    " JOIN messages m ON m.sender = k.sender AND m.client_id = k.client_id"
    " AND m.room = k.room"
    " WHERE m.client_id IS NOT NULL AND m.ts_ms >= $4"
    " ORDER BY m.sender, m.client_id, m.room, m.ts_ms DESC, m.seq DESC"
)
#: The same for direct messages (``$3``: the recipients), with their seqs
#: in both inboxes.
_DIRECT_DEDUPE: Final = (
    "SELECT DISTINCT ON (d.sender, d.client_id, d.recipient) d.sender, d.client_id,"
    " d.recipient, d.body, d.message_id, d.ts_ms, d.file, s.seq, r.seq"
    " FROM unnest($1::text[], $2::text[], $3::text[]) AS k(sender, client_id, recipient)"
    " JOIN direct_messages d ON d.sender = k.sender AND d.client_id = k.client_id"
    " AND d.recipient = k.recipient"
    " LEFT JOIN inbox s ON s.message_id = d.message_id AND s.owner = d.sender"
    " LEFT JOIN inbox r ON r.message_id = d.message_id AND r.owner = d.recipient"
    " WHERE d.client_id IS NOT NULL AND d.ts_ms >= $4"
    " ORDER BY d.sender, d.client_id, d.recipient, d.ts_ms DESC"
)
#: Reserve ``$2[i]`` seqs in room ``$1[i]`` (names sorted: the lock order);
#: returns each room's new last seq.
_RESERVE_SEQS: Final = (
    "INSERT INTO rooms (name, last_seq, created_ms)"
    " SELECT name, n, $3 FROM unnest($1::text[], $2::bigint[]) AS t(name, n)"
    " ON CONFLICT (name) DO UPDATE SET last_seq = rooms.last_seq + excluded.last_seq"
    " RETURNING name, last_seq"
)
#: Lock the inboxes of a batch's direct messages, in name order.
_LOCK_INBOXES: Final = (
    "SELECT name, dm_seq FROM users WHERE name = ANY($1::text[])"
    ' ORDER BY name COLLATE "C" FOR NO KEY UPDATE'
)
#: Everything a batch adds, in one statement: room messages ($1-$7), direct
#: messages ($8-$13), the inboxes' new last seqs ($14-$15), inbox rows
#: ($16-$18), all at time $19. Empty arrays insert nothing.
_INSERT_BATCH: Final = (
    "WITH room_rows AS ("
    " INSERT INTO messages (room, seq, message_id, sender, body, client_id, ts_ms, file)"
    " SELECT room, seq, message_id, sender, body, client_id, $19, file FROM unnest("
    "$1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[])"
    " AS t(room, seq, message_id, sender, body, client_id, file)),"
    " direct_rows AS ("
    " INSERT INTO direct_messages (message_id, sender, recipient, body, client_id, ts_ms, file)"
    " SELECT message_id, sender, recipient, body, client_id, $19, file FROM unnest("
    "$8::text[], $9::text[], $10::text[], $11::text[], $12::text[], $13::text[])"
    " AS t(message_id, sender, recipient, body, client_id, file)),"
    " inbox_seqs AS ("
    " UPDATE users SET dm_seq = t.seq FROM unnest($14::text[], $15::bigint[]) AS t(name, seq)"
    " WHERE users.name = t.name)"
    " INSERT INTO inbox (owner, seq, message_id)"
    " SELECT owner, seq, message_id FROM unnest($16::text[], $17::bigint[], $18::text[])"
    " AS t(owner, seq, message_id)"
)
#: A direct message's columns, in the order :func:`~.batch.direct_from_row` reads them.
_DIRECT_COLUMNS: Final = "d.sender, d.recipient, d.body, d.message_id, d.ts_ms, i.seq, d.file"
#: A message by id, from either table: a room message has a room, a direct
#: one a recipient (the last column).
_BY_ID: Final = (
    f"SELECT {_COLUMNS}, NULL::text FROM messages WHERE message_id = $1"
    " UNION ALL"
    " SELECT NULL, body, sender, NULL, message_id, ts_ms, file, recipient"
    " FROM direct_messages WHERE message_id = $1"
)
#: A room's access rules, members as an array.
_ACCESS: Final = (
    "SELECT r.name, r.private, r.owner,"
    " ARRAY(SELECT m.name FROM room_members m WHERE m.room = r.name) FROM rooms r"
)
#: One retention chunk: up to $2 room messages and $2 direct messages (with
#: their inbox rows) older than $1; returns how many of each went.
_PRUNE: Final = (
    "WITH gone AS ("
    " DELETE FROM messages WHERE (room, seq) IN"
    " (SELECT room, seq FROM messages WHERE ts_ms < $1 LIMIT $2) RETURNING 1),"
    " old AS (SELECT message_id FROM direct_messages WHERE ts_ms < $1 LIMIT $2),"
    " unlisted AS (DELETE FROM inbox WHERE message_id IN (SELECT message_id FROM old)),"
    " gone_direct AS (DELETE FROM direct_messages"
    " WHERE message_id IN (SELECT message_id FROM old) RETURNING 1)"
    " SELECT (SELECT count(*) FROM gone), (SELECT count(*) FROM gone_direct)"
)


class _BatchError(Exception):
    """A batch cannot be stored for a reason of its own (not the driver's)."""


class _Rows:
    """What a batch inserts, column by column: the arrays of :data:`_INSERT_BATCH`."""

    def __init__(self) -> None:
        self.messages: tuple[list[Any], ...] = tuple([] for _ in range(7))
        self.direct: tuple[list[Any], ...] = tuple([] for _ in range(6))
        self.inbox: tuple[list[Any], ...] = tuple([] for _ in range(3))

    def __bool__(self) -> bool:
        return bool(self.messages[0] or self.direct[0])

    def add_message(self, item: Pending, room: str, seq: int, message_id: str) -> None:
        row = (room, seq, message_id, item.sender, item.text, item.client_id, item.file_json)
        for column, value in zip(self.messages, row, strict=True):
            column.append(value)

    def add_direct(self, item: Pending, message_id: str, seqs: dict[str, int]) -> None:
        row = (message_id, item.sender, item.recipient, item.text, item.client_id, item.file_json)
        for column, value in zip(self.direct, row, strict=True):
            column.append(value)
        for owner, seq in seqs.items():
            for column, cell in zip(self.inbox, (owner, seq, message_id), strict=True):
                column.append(cell)

    def args(self, inbox_seqs: dict[str, int], now_ms: int) -> tuple[Any, ...]:
        """The parameters of :data:`_INSERT_BATCH`, with the inboxes' new last seqs."""
        owners = sorted(inbox_seqs)
        last = [inbox_seqs[owner] for owner in owners]
        return (*self.messages, *self.direct, owners, last, *self.inbox, now_ms)


async def _keep_session(conn: Any) -> None:
    """Pool reset: nothing to undo (saves a round trip on every release).

    The store never changes session settings, never LISTENs and unlocks its
    one session-level advisory lock itself; an open transaction is still
    rolled back by asyncpg before this runs.
    """


#: asyncpg 0.30 added the pool's ``reset`` hook; older ones reset as usual.
_POOL_OPTIONS: Final[dict[str, Any]] = (
    {"reset": _keep_session} if "reset" in inspect.signature(asyncpg.create_pool).parameters else {}
)


class PostgresStore(BatchedAppends):
    """Room messages in PostgreSQL, shared by every node that uses the database.

    Args:
        url: a ``postgresql://`` (or ``postgres://``) URL, as libpq takes it.
        history_days: delete messages older than this many days (0 keeps
            everything). At least 1, so resends are recognised for 24 h.
        clock: wall-clock seconds, for message times and retention.
        pool_size: most connections to the server (one is the writer's).
        command_timeout: seconds a statement may take before it fails.
        connect_timeout: seconds to connect (or get a pooled connection)
            before the operation fails.
        max_queued: most messages waiting for the writer; past it an
            append fails with :class:`~roomcast.exceptions.StoreBusy`.
    """

    def __init__(
        self,
        url: str,
        *,
        history_days: int = 0,
        clock: Callable[[], float] = time.time,
        pool_size: int = 8,
        command_timeout: float = 5.0,
        connect_timeout: float = 5.0,
        max_queued: int = MAX_QUEUED,
    ) -> None:
        if history_days < 0:
            raise ValueError("history_days must be 0 (keep everything) or more")
        if pool_size < 2:
            raise ValueError("pool_size must be at least 2 (the writer's and one for reads)")
        self.url = url
        self.history_days = history_days
        self._clock = clock
        self._pool_size = pool_size
        self._command_timeout = command_timeout
        self._connect_timeout = connect_timeout
        self._where, self._password = _location(url)
        self._queue = WriteQueue(max_queued)
        self._wakeup = asyncio.Event()
        self._write_error: str | None = None
        self._closed = True
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pool: Any = None  # asyncpg.Pool
        self._wconn: Any = None  # the writer's pooled connection, between batches
        self._writer: asyncio.Task[None] | None = None
        self._pruner: asyncio.Task[None] | None = None
        #: Called with (messages, seconds) after each batch is written (metrics).
        self.on_batch: Callable[[int, float], None] | None = None

    def __repr__(self) -> str:
        return f"PostgresStore({self._where!r})"

    # -- life cycle ----------------------------------------------------------

    async def open(self) -> None:
        self._loop = asyncio.get_running_loop()
        try:
            self._pool = await asyncpg.create_pool(
                self.url,
                min_size=0,
                max_size=self._pool_size,
                timeout=self._connect_timeout,
                command_timeout=self._command_timeout,
                # asyncpg prepares every statement once per connection, and
                # PostgreSQL switches a prepared statement to a generic plan
                # made from the statistics of the moment: on a new database,
                # of empty tables, that plan scans the whole table for every
                # resent-id lookup until autoanalyze runs (measured: 0.24 ->
                # 6.6 ms a batch within one benchmark run). Plan each
                # execution with its parameters instead (~0.1 ms).
                server_settings={
                    "plan_cache_mode": "force_custom_plan",
                    "application_name": "roomcast",
                },
                **_POOL_OPTIONS,
            )
        except (*_DRIVER_ERRORS, ValueError) as exc:
            raise self._error("cannot connect to PostgreSQL at", exc) from exc
        connected = False
        try:
            # asyncpg reads the URL and connects only now, at the first acquire.
            async with self._connection() as conn:
                connected = True
                await _migrate(conn, int(self._clock() * 1000))
        except (*_DRIVER_ERRORS, ValueError) as exc:
            await self._close_pool()
            if connected:
                what = "cannot create or migrate the schema in PostgreSQL at"
            else:
                what = "cannot connect to PostgreSQL at"
            raise self._error(what, exc) from exc
        except BaseException:
            await self._close_pool()
            raise
        self._closed = False
        self._wakeup = asyncio.Event()
        # A batch holds many connections' messages: the writer (and its log
        # lines) runs in a context of its own, not in the opener's.
        self._writer = self._loop.create_task(
            self._write_forever(), name="roomcast-postgres-writer", context=contextvars.Context()
        )
        if self.history_days:
            # The first pass runs before the server accepts anyone, so no
            # client is told about messages that are about to go.
            await self._prune_logged()
            self._pruner = asyncio.ensure_future(self._prune_forever())
        logger.debug("storing messages in PostgreSQL at %s", self._where)

    async def close(self) -> None:
        if self._closed:
            return
        await self.flush()
        self._closed = True
        for task in (self._pruner, self._writer):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self._pruner = self._writer = None
        await self._close_pool()

    async def _close_pool(self) -> None:
        pool, self._pool = self._pool, None
        if self._wconn is not None:
            conn, self._wconn = self._wconn, None
            if pool is not None:
                await self._release(conn, pool)
        if pool is None:
            return
        try:
            await asyncio.wait_for(pool.close(), self._command_timeout)
        except _DRIVER_ERRORS:
            pool.terminate()
        except BaseException:
            pool.terminate()
            raise

    async def _release(self, conn: Any, pool: Any = None) -> None:
        """Give ``conn`` back to the pool (which drops it if it is broken)."""
        try:
            await (pool or self._pool).release(conn, timeout=self._command_timeout)
        except _DRIVER_ERRORS:
            pass  # the pool has terminated it

    async def ping(self) -> None:
        await self._read(lambda conn: conn.fetchval("SELECT 1"))

    # -- writes --------------------------------------------------------------

    def _enqueue(
        self,
        room: str | None,
        recipient: str | None,
        sender: str,
        text: str,
        client_id: str | None,
        file: FileInfo | None,
    ) -> asyncio.Future[Any]:
        loop = self._loop or asyncio.get_running_loop()
        if self._closed:
            refused: asyncio.Future[Any] = loop.create_future()
            refused.set_exception(StoreError("the store is closed"))
            return refused
        if "\x00" in text or (client_id is not None and "\x00" in client_id):
            # PostgreSQL text cannot hold U+0000: refuse this message alone
            # rather than fail the batch, and everyone else's messages in it.
            refused = loop.create_future()
            refused.set_exception(
                StoreError("the message was not stored: PostgreSQL cannot store U+0000")
            )
            return refused
        future = self._queue.add(loop, room, recipient, sender, text, client_id, file)
        self._wakeup.set()
        return future

    async def _write_forever(self) -> None:
        """The writer: store what is queued, a batch at a time, until cancelled."""
        queue = self._queue
        while True:
            if not queue.items:
                queue.wake_idle()
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            batch = queue.take()
            started = time.perf_counter()
            try:
                results = await self._write(batch)
            except asyncio.CancelledError:
                self._written(batch, StoreError("write cancelled"), started)
                raise
            except Exception as exc:
                self._written(batch, exc, started)
            else:
                self._written(batch, results, started)

    async def _write(self, batch: list[Pending]) -> list[AppendResult | DirectResult]:
        """Store ``batch`` in one transaction on the writer's connection."""
        conn = self._wconn
        if conn is not None and _is_gone(conn):
            self._wconn = conn = None
        if conn is None:
            conn = self._wconn = await self._pool.acquire(timeout=self._connect_timeout)
        try:
            return await self._store_batch(conn, batch)
        except BaseException:
            # Start the next batch afresh, on a new connection if this one broke.
            self._wconn = None
            await self._release(conn)
            raise

    async def _store_batch(
        self, conn: Any, batch: list[Pending]
    ) -> list[AppendResult | DirectResult]:
        now_ms = int(self._clock() * 1000)
        cutoff = now_ms - DEDUPE_SECONDS * 1000
        keyed = [item for item in batch if item.client_id is not None]
        locks = sorted({_sender_lock(item.sender) for item in keyed})
        begin = "BEGIN"
        if locks:
            # Integers only: safe to inline, so BEGIN and the locks are one round trip.
            keys = ",".join(map(str, locks))
            begin += f"; SELECT pg_advisory_xact_lock(k) FROM unnest('{{{keys}}}'::bigint[]) AS k"
        try:
            await conn.execute(begin)
            results = await self._fill_batch(conn, batch, keyed, now_ms, cutoff)
            await conn.execute("COMMIT")
        except (asyncpg.PostgresError, _BatchError):
            # The server refused something: roll back, keep the connection.
            if not _is_gone(conn):
                try:
                    await conn.execute("ROLLBACK")
                except _DRIVER_ERRORS:
                    _terminate(conn)
            raise
        except BaseException:
            # Timed out, cut off or cancelled: the server rolls back when the
            # connection goes, and a rollback now could wait for an answer
            # that does not come.
            _terminate(conn)
            raise
        return results

    async def _fill_batch(
        self,
        conn: Any,
        batch: list[Pending],
        keyed: list[Pending],
        now_ms: int,
        cutoff: int,
    ) -> list[AppendResult | DirectResult]:
        """Look up resends, reserve seqs and insert ``batch`` (inside its transaction)."""
        earlier_rooms: dict[tuple[str, str, str], ChatMessage] = {}
        earlier_direct: dict[tuple[str, str, str], DirectResult] = {}
        room_keys = [(i.sender, i.client_id, i.room) for i in keyed if i.room is not None]
        if room_keys:
            senders, ids, rooms = zip(*room_keys, strict=True)
            rows = await conn.fetch(_DEDUPE, list(senders), list(ids), list(rooms), cutoff)
            for row in rows:
                earlier_rooms[(row[0], row[1], row[2])] = chat_from_row(row[2:])
        direct_keys = [(i.sender, i.client_id, i.recipient) for i in keyed if i.room is None]
        if direct_keys:
            senders, ids, recipients = zip(*direct_keys, strict=True)
            rows = await conn.fetch(
                _DIRECT_DEDUPE, list(senders), list(ids), list(recipients), cutoff
            )
            for row in rows:
                sender, client_id, to, body, message_id, ts_ms, file, sender_seq, to_seq = row
                copy = DirectMessage(
                    sender, to, body, message_id, ts_ms, file=file_from_column(file)
                )
                earlier_direct[(sender, client_id, to)] = DirectResult(
                    copy, sender_seq or 0, to_seq or 0, True
                )

        # Each message's earlier copy (None for a new one), and how many seqs
        # each room and inbox needs.
        earlier: list[AppendResult | DirectResult | None] = []
        room_counts: dict[str, int] = {}
        inbox_counts: dict[str, int] = {}
        for item in batch:
            first: AppendResult | DirectResult | None = None
            if item.client_id is not None:
                if item.room is None:
                    assert item.recipient is not None
                    first = earlier_direct.get((item.sender, item.client_id, item.recipient))
                elif found := earlier_rooms.get((item.sender, item.client_id, item.room)):
                    first = AppendResult(found, True)
            earlier.append(first)
            if first is not None:
                continue
            if item.room is not None:
                room_counts[item.room] = room_counts.get(item.room, 0) + 1
            else:
                assert item.recipient is not None
                for owner in dict.fromkeys((item.sender, item.recipient)):
                    inbox_counts[owner] = inbox_counts.get(owner, 0) + 1

        # The last seq before this batch, per room and inbox: rooms sorted by
        # name, then users, so batches of several nodes never deadlock.
        room_seqs: dict[str, int] = {}
        if room_counts:
            names = sorted(room_counts)
            rows = await conn.fetch(
                _RESERVE_SEQS, names, [room_counts[name] for name in names], now_ms
            )
            room_seqs = {name: int(last) - room_counts[name] for name, last in rows}
        inbox_seqs: dict[str, int] = {}
        if inbox_counts:
            owners = sorted(inbox_counts)
            rows = await conn.fetch(_LOCK_INBOXES, owners)
            inbox_seqs = {name: int(seq) for name, seq in rows}
            for owner in owners:
                if owner not in inbox_seqs:
                    raise _BatchError(f"no user {owner!r} for a direct message")

        rows = _Rows()
        results: list[AppendResult | DirectResult] = []
        for item, first in zip(batch, earlier, strict=True):
            if first is not None:
                results.append(first)
                continue
            message_id = uuid.uuid4().hex
            if item.room is not None:
                seq = room_seqs[item.room] = room_seqs[item.room] + 1
                rows.add_message(item, item.room, seq, message_id)
                chat = ChatMessage(
                    item.room, item.text, item.sender, seq, message_id, now_ms, item.file
                )
                results.append(AppendResult(chat, False))
                continue
            sender, recipient = item.sender, item.recipient
            assert recipient is not None
            seqs: dict[str, int] = {}
            for owner in dict.fromkeys((sender, recipient)):
                seqs[owner] = inbox_seqs[owner] = inbox_seqs[owner] + 1
            rows.add_direct(item, message_id, seqs)
            direct = DirectMessage(sender, recipient, item.text, message_id, now_ms, file=item.file)
            results.append(DirectResult(direct, seqs[sender], seqs[recipient], False))
        if rows:
            await conn.execute(_INSERT_BATCH, *rows.args(inbox_seqs, now_ms))
        return results

    def _written(
        self,
        batch: list[Pending],
        outcome: list[AppendResult | DirectResult] | BaseException,
        started: float,
    ) -> None:
        """The writer finished ``batch``: resolve its futures in order."""
        if self.on_batch is not None:
            try:
                self.on_batch(len(batch), time.perf_counter() - started)
            except Exception:  # a metrics hook must not stop the writer
                logger.exception("on_batch failed")
        if not isinstance(outcome, BaseException):
            if self._write_error is not None:
                logger.warning("writes to PostgreSQL at %s work again", self._where)
                self._write_error = None
            self._queue.finish(batch, outcome)
            return
        reason = self._reason(outcome)
        if self._write_error != reason:
            logger.error("cannot write to PostgreSQL at %s: %s", self._where, reason)
        self._write_error = reason
        self._queue.finish(batch, outcome, reason)

    async def flush(self) -> None:
        if self._writer is None or self._writer.done():
            return
        await self._queue.wait_idle()

    # -- errors ----------------------------------------------------------------

    def _reason(self, exc: BaseException) -> str:
        """One line saying why ``exc`` happened, without the URL's password."""
        text = str(exc).strip()
        if isinstance(exc, _BatchError | StoreError):
            reason = text
        elif isinstance(exc, TimeoutError):
            reason = f"no answer within {max(self._command_timeout, self._connect_timeout):g} s"
        elif isinstance(exc, ConnectionRefusedError) or (
            isinstance(exc, OSError)
            and (exc.errno == errno.ECONNREFUSED or "Connect call failed" in text)
        ):
            reason = "connection refused"
        elif isinstance(exc, socket.gaierror):
            reason = f"unknown host ({exc.strerror})"
        elif isinstance(exc, ConnectionError):
            reason = f"connection lost ({exc.strerror or type(exc).__name__})"
        elif isinstance(exc, ValueError) and not isinstance(exc, asyncpg.InterfaceError):
            reason = f"invalid URL ({text})"
        else:
            reason = text.splitlines()[0] if text else type(exc).__name__
        if self._password:
            reason = reason.replace(self._password, "***")
        return reason

    def _error(self, what: str, exc: BaseException) -> StoreError:
        """``StoreError("<what> <host:port>: <reason>")``; the caller chains ``exc``."""
        return StoreError(f"{what} {self._where}: {self._reason(exc)}")

    # -- reads ---------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[Any]:
        """A pooled connection; dropped, not reused, if it fails other than by an SQL error."""
        pool = self._pool
        if pool is None:
            raise StoreError("the store is closed")
        conn = await pool.acquire(timeout=self._connect_timeout)
        try:
            yield conn
        except _DRIVER_ERRORS as exc:
            if not isinstance(exc, asyncpg.PostgresError):
                # Timed out or cut off: its state is unknown, and a rollback
                # or reset would wait for a server that does not answer.
                _terminate(conn)
            raise
        finally:
            await self._release(conn, pool)

    async def _read(self, query: Callable[[Any], Awaitable[T]]) -> T:
        """Run ``query`` on a pooled connection, driver errors as StoreError."""
        if self._closed:
            raise StoreError("the store is closed")
        try:
            async with self._connection() as conn:
                return await query(conn)
        except _DRIVER_ERRORS as exc:
            raise self._error("cannot read from PostgreSQL at", exc) from exc

    async def _write_now(self, job: Callable[[Any], Awaitable[T]]) -> T:
        """Run ``job`` in its own transaction on a pooled connection."""
        if self._closed:
            raise StoreError("the store is closed")
        try:
            async with self._connection() as conn, conn.transaction():
                return await job(conn)
        except _DRIVER_ERRORS as exc:
            raise self._error("cannot write to PostgreSQL at", exc) from exc

    async def last_seq(self, room: str) -> int:
        value = await self._read(
            lambda conn: conn.fetchval("SELECT last_seq FROM rooms WHERE name = $1", room)
        )
        return int(value) if value is not None else 0

    async def first_seq(self, room: str) -> int:
        value = await self._read(
            lambda conn: conn.fetchval(
                "SELECT coalesce((SELECT min(seq) FROM messages WHERE room = $1),"
                " (SELECT last_seq FROM rooms WHERE name = $1) + 1, 1)",
                room,
            )
        )
        return int(value)

    async def history(
        self, room: str, *, before: int | None = None, limit: int = 50
    ) -> tuple[list[ChatMessage], bool]:
        bound = before if before is not None else 2**62
        rows = await self._read(
            lambda conn: conn.fetch(
                f"SELECT {_COLUMNS} FROM messages WHERE room = $1 AND seq < $2"
                " ORDER BY seq DESC LIMIT $3",
                room,
                bound,
                limit + 1,
            )
        )
        more = len(rows) > limit
        return [chat_from_row(row) for row in reversed(rows[:limit])], more

    async def since(self, room: str, seq: int, *, limit: int) -> list[ChatMessage]:
        rows = await self._read(
            lambda conn: conn.fetch(
                f"SELECT {_COLUMNS} FROM messages WHERE room = $1 AND seq > $2"
                " ORDER BY seq LIMIT $3",
                room,
                seq,
                limit,
            )
        )
        return [chat_from_row(row) for row in rows]

    # -- direct messages -------------------------------------------------------

    async def direct_last_seq(self, owner: str) -> int:
        value = await self._read(
            lambda conn: conn.fetchval("SELECT dm_seq FROM users WHERE name = $1", owner)
        )
        return int(value) if value is not None else 0

    async def direct_history(
        self, owner: str, *, before: int | None = None, limit: int = 50
    ) -> tuple[list[DirectMessage], bool]:
        bound = before if before is not None else 2**62
        return await self._inbox_page(owner, bound, after=False, limit=limit)

    async def direct_since(
        self, owner: str, seq: int, *, limit: int
    ) -> tuple[list[DirectMessage], bool]:
        return await self._inbox_page(owner, seq, after=True, limit=limit)

    async def _inbox_page(
        self, owner: str, seq: int, *, after: bool, limit: int
    ) -> tuple[list[DirectMessage], bool]:
        """Up to ``limit`` of ``owner``'s messages after (or before) ``seq``, oldest first."""
        where, order = ("i.seq > $2", "") if after else ("i.seq < $2", " DESC")
        rows = await self._read(
            lambda conn: conn.fetch(
                f"SELECT {_DIRECT_COLUMNS} FROM inbox i"
                " JOIN direct_messages d ON d.message_id = i.message_id"
                f" WHERE i.owner = $1 AND {where} ORDER BY i.seq{order} LIMIT $3",
                owner,
                seq,
                limit + 1,
            )
        )
        page = rows[:limit] if after else list(reversed(rows[:limit]))
        return [direct_from_row(row) for row in page], len(rows) > limit

    async def message_by_id(self, message_id: str) -> ChatMessage | DirectMessage | None:
        row = await self._read(lambda conn: conn.fetchrow(_BY_ID, message_id))
        if row is None:
            return None
        room, body, sender, _seq, found_id, ts_ms, file, recipient = row
        if room is None:
            return DirectMessage(
                sender, recipient, body, found_id, ts_ms, file=file_from_column(file)
            )
        return chat_from_row(tuple(row)[:7])

    async def file_digests(self) -> set[str]:
        rows = await self._read(
            lambda conn: conn.fetch(
                "SELECT file FROM messages WHERE file IS NOT NULL"
                " UNION SELECT file FROM direct_messages WHERE file IS NOT NULL"
            )
        )
        return {FileInfo.from_json(row[0]).sha256 for row in rows}

    # -- users and rooms ---------------------------------------------------------

    async def create_user(self, name: str, password_hash: str) -> bool:
        now_ms = int(self._clock() * 1000)
        status = await self._write_now(
            lambda conn: conn.execute(
                "INSERT INTO users (name, name_key, password_hash, created_ms)"
                " VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                name,
                name.lower(),
                password_hash,
                now_ms,
            )
        )
        return _rowcount(status) == 1

    async def get_user(self, name: str) -> StoredUser | None:
        row = await self._read(
            lambda conn: conn.fetchrow(
                "SELECT name, password_hash FROM users WHERE name_key = $1", name.lower()
            )
        )
        return StoredUser(row[0], row[1]) if row is not None else None

    async def create_room(
        self, name: str, *, owner: str, private: bool, members: frozenset[str]
    ) -> bool:
        now_ms = int(self._clock() * 1000)

        async def job(conn: Any) -> bool:
            status = await conn.execute(
                "INSERT INTO rooms (name, last_seq, created_ms, private, owner)"
                " VALUES ($1, 0, $2, $3, $4) ON CONFLICT DO NOTHING",
                name,
                now_ms,
                int(private),
                owner,
            )
            if _rowcount(status) != 1:
                return False
            await _insert_members(conn, name, members, now_ms)
            return True

        return await self._write_now(job)

    async def room_access(self, name: str) -> RoomAccess | None:
        row = await self._read(lambda conn: conn.fetchrow(f"{_ACCESS} WHERE r.name = $1", name))
        return _access(row) if row is not None else None

    async def file_bytes_since(self, sender: str, since_ms: int) -> int:
        total = await self._read(
            lambda conn: conn.fetchval(
                "SELECT COALESCE(SUM((file::json->>'size')::bigint), 0) FROM ("
                " SELECT file FROM messages"
                " WHERE sender = $1 AND ts_ms >= $2 AND file IS NOT NULL"
                " UNION ALL SELECT file FROM direct_messages"
                " WHERE sender = $1 AND ts_ms >= $2 AND file IS NOT NULL) AS f",
                sender,
                since_ms,
            )
        )
        return int(total)

    async def known_rooms(self, names: list[str]) -> set[str]:
        if not names:
            return set()
        rows = await self._read(
            lambda conn: conn.fetch("SELECT name FROM rooms WHERE name = ANY($1::text[])", names)
        )
        return {row[0] for row in rows}

    async def add_room_members(self, name: str, members: frozenset[str]) -> None:
        now_ms = int(self._clock() * 1000)
        await self._write_now(lambda conn: _insert_members(conn, name, members, now_ms))

    async def list_rooms(self, user: str | None) -> list[RoomAccess]:
        rows = await self._read(
            lambda conn: conn.fetch(
                f"{_ACCESS} WHERE r.private = 0 OR r.owner = $1"
                " OR r.name IN (SELECT room FROM room_members WHERE name = $1)"
                ' ORDER BY r.name COLLATE "C"',
                user,
            )
        )
        return [_access(row) for row in rows]

    # -- retention -----------------------------------------------------------

    async def prune(self) -> int:
        """Delete messages older than ``history_days``; return how many went.

        One node prunes at a time: while another holds the retention lock,
        this returns 0 at once.
        """
        if not self.history_days or self._pool is None:
            return 0
        cutoff = int((self._clock() - self.history_days * 86400) * 1000)
        try:
            async with self._connection() as conn:
                if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", _PRUNE_LOCK):
                    logger.debug("another node is pruning old history")
                    return 0
                try:
                    return await _prune(conn, cutoff)
                finally:
                    try:
                        await conn.execute("SELECT pg_advisory_unlock($1)", _PRUNE_LOCK)
                    except _DRIVER_ERRORS:
                        _terminate(conn)  # ends the session, and its lock
        except _DRIVER_ERRORS as exc:
            raise self._error("cannot prune old history in PostgreSQL at", exc) from exc

    async def _prune_logged(self) -> None:
        try:
            removed = await self.prune()
        except StoreError as exc:
            logger.error("%s", exc)
            return
        if removed:
            logger.info("pruned %d messages older than %d days", removed, self.history_days)

    async def _prune_forever(self) -> None:
        while True:
            await asyncio.sleep(PRUNE_INTERVAL)
            await self._prune_logged()


async def _prune(conn: Any, cutoff_ms: int) -> int:
    """Delete what is older than ``cutoff_ms``, a chunk per transaction; return how many."""
    total = 0
    while True:
        async with conn.transaction():
            row = await conn.fetchrow(_PRUNE, cutoff_ms, PRUNE_CHUNK)
        rooms, direct = int(row[0]), int(row[1])
        total += rooms + direct
        if rooms < PRUNE_CHUNK and direct < PRUNE_CHUNK:
            return total


async def _migrate(conn: Any, now_ms: int) -> None:
    """Bring the schema up to :data:`LATEST_VERSION`, one migration per transaction.

    Each transaction first takes an advisory lock, so nodes starting at once
    migrate one after the other, each re-reading the version under the lock.
    """
    while True:
        async with conn.transaction():
            await conn.execute(
                "SELECT pg_advisory_xact_lock($1)", _MIGRATE_LOCK, timeout=MIGRATE_TIMEOUT
            )
            await conn.execute(VERSION_TABLE)
            version = int(
                await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_version")
            )
            if version > LATEST_VERSION:
                raise StoreError(
                    f"the database has schema version {version}; this roomcast knows up to "
                    f"{LATEST_VERSION}: upgrade roomcast"
                )
            pending = [m for m in MIGRATIONS if m.version > version]
            if not pending:
                return
            migration = pending[0]
            for statement in migration.statements:
                await conn.execute(statement, timeout=MIGRATE_TIMEOUT)
            await conn.execute(
                "INSERT INTO schema_version (version, description, applied_ms) VALUES ($1, $2, $3)",
                migration.version,
                migration.description,
                now_ms,
            )
        logger.debug("database schema migrated to version %d", migration.version)


async def _insert_members(conn: Any, room: str, members: frozenset[str], now_ms: int) -> None:
    await conn.execute(
        "INSERT INTO room_members (room, name, added_ms)"
        " SELECT $1, name, $3 FROM unnest($2::text[]) AS t(name) ON CONFLICT DO NOTHING",
        room,
        sorted(members),
        now_ms,
    )


def _location(url: str) -> tuple[str, str | None]:
    """``host:port`` of ``url`` (for messages and logs), and its password (to hide)."""
    try:
        parts = urlsplit(url)
        query = parse_qs(parts.query)
        password = unquote(parts.password) if parts.password else None
        password = password or query.get("password", [None])[0]
        host = parts.hostname or query.get("host", ["localhost"])[0]
    except ValueError:
        return "an invalid URL", None
    try:
        port: int | str = parts.port or 5432
    except ValueError:
        port = parts.netloc.rpartition(":")[2]
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{port}", password


def _is_gone(conn: Any) -> bool:
    """Whether a pooled connection has closed (the pool then takes it back, detached)."""
    try:
        return bool(conn.is_closed())
    except asyncpg.InterfaceError:  # detached: it closed, and the pool has it back
        return True


def _terminate(conn: Any) -> None:
    """Close ``conn`` at once, without a word to the server (the pool replaces it)."""
    try:
        conn.terminate()
    except asyncpg.InterfaceError:
        pass  # detached: it is closed already


def _rowcount(status: str) -> int:
    """The row count at the end of a command tag such as ``INSERT 0 1``."""
    return int(status.rsplit(" ", 1)[-1])


def _access(row: Sequence[Any]) -> RoomAccess:
    """A room's access rules from a row of :data:`_ACCESS`."""
    name, private, owner, members = row
    return RoomAccess(name, bool(private), owner, frozenset(members))
