"""The shared store: PostgreSQL through an asyncpg pool, written in batches.

Several nodes may write to one database at once, so nothing about seqs is
kept in process memory: each batch reserves its seqs in the database, in
the transaction that inserts its messages.

:meth:`PostgresStore.append` only queues the message and returns a future.
The queue has :data:`WRITE_LANES` lanes (:class:`~.batch.WriteQueue`): every
draft of one room, and every draft of one direct conversation, waits in
one lane (:func:`~.batch.lane_of`). A batch holds the lanes it takes, and
up to :data:`WRITE_LANES` batches are written at once, each on a pooled
connection of its own: one with every lane's drafts while few wait, more
(the lanes shared out) once :data:`~.batch.OVERLAP_AT` wait beside a batch
being written, or at once. Each batch (up to :data:`MAX_BATCH` drafts) is
stored in one transaction:

1. ``BEGIN``, and in the same round trip ``pg_advisory_xact_lock`` on a hash
   of every sender with a frame id in the batch, so two nodes given the same
   resend at once look it up one after the other;
2. one lookup of those ``(sender, client_id)`` pairs among the room
   messages of the last :data:`~roomcast.store.base.DEDUPE_SECONDS` (and one
   among direct messages, when the batch resends any);
2b. when the batch changes messages (edits, deletes, reactions): one read of
   those messages, ``FOR UPDATE`` in id order, and one of their reactions,
   which :meth:`~.batch.Plan.decide` settles each change against;
3. one ``INSERT INTO rooms ... ON CONFLICT DO UPDATE SET last_seq = last_seq
   + n RETURNING`` for the batch's rooms: the row lock it takes holds any
   other node's batch for those rooms until this one commits, so seqs stay
   gapless and in one order per room;
4. for direct messages, ``SELECT ... FOR NO KEY UPDATE`` on the inboxes'
   users (their ``dm_seq``), likewise;
5. one statement inserting every message, direct message and inbox row
   (and setting the new ``dm_seq`` values) from ``unnest()`` arrays; then
   what the changes do to their messages (``executemany``: edits, reactions,
   erasures); then ``COMMIT``.

So a batch of room messages takes 5 round trips (4 without frame ids)
however many messages and rooms it holds; direct messages add one or two,
and changes two to four.

**Batches at once: seqs, resends and deadlocks.** The batches one node
writes at once are to each other what the writers of several nodes were
already: transactions that may run at once on one database. What keeps
them right is the database's, plus one rule of the queue's (a room or
conversation is in one batch at a time):

- seqs: a room's seqs come from its ``rooms`` row, updated (and so locked)
  by the transaction that inserts the messages, until it commits; an
  inbox's from its ``users`` row, likewise. Two transactions numbering
  one room or inbox take turns, each reading the other's committed last
  seq: gapless, in commit order. A room's (or conversation's) next batch
  starts only when its last one is done, so its seqs also follow this
  node's queue order, and an edit, delete or reaction (queued in its
  message's lane) lands after everything queued before it there;
- resends: a frame id's key (sender, id, room or recipient) names one lane,
  so two batches at once never hold copies of one id; the per-sender
  advisory lock (step 1) still orders two nodes, or two batches given one
  sender's frames, before their lookups;
- deadlocks: every transaction takes the rows two transactions may both
  lock in one global order, and never another: advisory locks (sorted
  keys), then the changed messages (``FOR UPDATE``, room messages then
  direct ones, each by id), then ``rooms`` rows (names sorted), then
  ``users`` rows (the inboxes, names sorted, ``COLLATE "C"``: the byte
  order, Python's too). The rows a batch touches after that are its own:
  the new rows (unique seqs and ids, reserved above), a changed message's
  reactions, edits and notifications (only a transaction holding the
  message's row touches them). So no two batches ever wait for each other
  in a cycle: two that share an inbox (a user in two conversations, or
  mentioned in a room) or a sender wait for each other, no more. A
  statement elsewhere (an admin erasing an account, say) could still take
  locks in another order; PostgreSQL then aborts one side after
  ``deadlock_timeout``: a batch aborted so is rolled back whole and tried
  again, up to :data:`DEADLOCK_RETRIES` times, before its drafts fail.

A failed batch is rolled back whole and every future in it fails with
:class:`~roomcast.exceptions.StoreError`; the next batch starts afresh (on
a new connection if the old one broke).

Reads use the other connections of the pool, concurrently with the writers.
Every query but the batch writer's is :class:`~roomcast.store.sql.SQLStore`'s,
shared with SQLite; this module adds the pool, the writer and its seq
reservations, and runs the shared jobs on asyncpg. Every driver exception
is turned into a :class:`StoreError` here, with the original as
``__cause__``; messages and logs never show the URL's password.
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
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import Any, Final, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

import asyncpg

from ..exceptions import InvalidRequest, StoreError
from ..query import Query, Term
from .base import DEDUPE_SECONDS, AppendResult, DirectResult, Marker
from .batch import MAX_QUEUED, Pending, Plan, ResendKey, direct_resend, message_from_row
from .sql import (
    DIRECT_HIT_COLUMNS,
    ROOM_HIT_COLUMNS,
    SEARCH_TIMEOUT,
    SEARCH_TOO_LONG,
    Job,
    Prune,
    SearchSQL,
    SQLConn,
    SQLStore,
    apply_changes,
    load_targets,
)

__all__ = ["PostgresStore"]

logger = logging.getLogger("roomcast.store.postgres")

T = TypeVar("T")

#: Seconds from a delete's batch to the VACUUM that erases it: the batch
#: has committed by then, and a burst of deletes shares one VACUUM.
ERASE_DELAY: Final = 0.5
#: Seconds before a VACUUM that failed is tried again.
ERASE_RETRY: Final = 5.0
#: The tables a message delete leaves old row versions (its text) in.
ERASE_TABLES: Final = ("messages", "direct_messages", "reactions", "notifications")

#: Seconds from a delete to rebuilding the full-text indexes, which then no
#: longer hold its words. A GIN index keeps every word it ever indexed in its
#: entry tree (VACUUM only empties the word's list of rows), so a deleted
#: message's words leave the index's files when it is rebuilt. A rebuild
#: reads every chat message (REINDEX CONCURRENTLY: writes go on), so the
#: deletes of ten minutes share one.
REINDEX_DELAY: Final = 600.0
#: Seconds a rebuild of one search index may take before it is given up.
REINDEX_TIMEOUT: Final = 3600.0
#: The full-text indexes, by the table whose deletes they owe a rebuild.
SEARCH_INDEXES: Final = {"messages": "messages_search", "direct_messages": "direct_messages_search"}

#: Seconds a migration (or the wait for another node's) may take.
MIGRATE_TIMEOUT: Final = 300.0

#: The queue's lanes, and the most batches one node writes at once, each on
#: a pooled connection of its own. Measured through the store (200 rooms,
#: each sender awaiting its ack; bench/scenarios/pg_lanes.py, medians of 5
#: rounds on the shared 2-core host): one writer 2,600 acked msgs/s, 2 lanes
#: 6,800, 4 lanes 8,200, 8 lanes 8,600 (ack p99 135, 62, 51, 48 ms): most
#: of the gain by 4, where PostgreSQL and the node fill both cores; 4 also
#: leaves half of the default pool of 8 connections for reads. Past
#: :data:`~.batch.OVERLAP_AT` waiting only, so below that (1,000-4,000
#: msgs/s) it writes as one writer did (docs/benchmarks.md).
WRITE_LANES: Final = 4
#: Times a batch that PostgreSQL aborted to break a deadlock is tried again
#: (it was rolled back whole): lanes cannot deadlock with each other, so
#: this is for a statement outside the batches that locks in another order.
DEADLOCK_RETRIES: Final = 2

#: What asyncpg (and the sockets under it) raise; turned into StoreError here.
_DRIVER_ERRORS: Final = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.InternalClientError,
    OSError,
    TimeoutError,
)


def tsquery(query: Query) -> str:
    """``query`` as ``to_tsquery`` text: each word a quoted lexeme (quotes and
    backslashes escaped), so every character a user typed is text to find.
    PostgreSQL's parser splits a quoted word as it split the messages."""

    def word(text: str, prefix: bool) -> str:
        quoted = "'" + text.replace("\\", "\\\\").replace("'", "''") + "'"
        return quoted + ":*" if prefix else quoted

    def term(item: Term) -> str:
        last = len(item.words) - 1
        words = [word(text, item.prefix and i == last) for i, text in enumerate(item.words)]
        return "(" + " <-> ".join(words) + ")"

    expression = " & ".join(term(item) for item in query.included)
    for item in query.excluded:
        expression += f" & !{term(item)}"
    return expression


def _lock_key(name: str) -> int:
    """A signed 64-bit ``pg_advisory_xact_lock`` key for ``name``."""
    digest = hashlib.blake2b(name.encode(), digest_size=8, person=b"roomcast").digest()
    return int.from_bytes(digest, "big", signed=True)


#: Advisory locks: schema migrations, retention passes, and (per sender)
#: the dedupe lookup of frame ids.
_MIGRATE_LOCK: Final = _lock_key("migrate")
_PRUNE_LOCK: Final = _lock_key("prune")
_REINDEX_LOCK: Final = _lock_key("reindex")
#: Indexes a cut-off REINDEX CONCURRENTLY left behind, not valid, named after the index.
_LEFT_BEHIND: Final = (
    "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
    " WHERE NOT i.indisvalid AND c.relname LIKE $1 || '\\_cc%'"
)


def _sender_lock(sender: str) -> int:
    """The advisory lock held while looking up ``sender``'s resent frame ids."""
    return _lock_key("sender:" + sender)


#: The earlier copies of a batch's resent room messages: ``$1``, ``$2``,
#: ``$3`` are the senders, client ids and rooms, ``$4`` the oldest time
#: that still counts.
_DEDUPE: Final = (
    "SELECT DISTINCT ON (m.sender, m.client_id, m.room) m.sender, m.client_id,"
    " m.room, m.body, m.sender, m.seq, m.message_id, m.ts_ms, m.file, m.kind, m.target,"
    " m.thread, m.mentions, m.edited_ms, m.deleted_ms"
    " FROM unnest($1::text[], $2::text[], $3::text[]) AS k(sender, client_id, room)"
    " JOIN messages m ON m.sender = k.sender AND m.client_id = k.client_id"
    " AND m.room = k.room"
    " WHERE m.client_id IS NOT NULL AND m.ts_ms >= $4"
    " ORDER BY m.sender, m.client_id, m.room, m.ts_ms DESC, m.seq DESC"
)
#: The same for direct messages (``$3``: the recipients), with their seqs
#: in both inboxes, as :func:`~.batch.direct_resend` reads them.
_DIRECT_DEDUPE: Final = (
    "SELECT DISTINCT ON (d.sender, d.client_id, d.recipient) d.sender, d.client_id,"
    " d.recipient, d.body, d.message_id, d.ts_ms, d.file, s.seq, r.seq, d.kind, d.target,"
    " d.mentions FROM unnest($1::text[], $2::text[], $3::text[]) AS k(sender, client_id, recipient)"
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
#: Everything a batch adds, in one statement: room events ($1-$11), direct
#: events ($12-$21), the inboxes' new last seqs ($22-$23), inbox rows
#: ($24-$26), all at time $27. Empty arrays insert nothing.
_INSERT_BATCH: Final = (
    "WITH room_rows AS ("
    " INSERT INTO messages (room, seq, message_id, sender, body, client_id, ts_ms, file, kind,"
    " target, thread, mentions)"
    " SELECT room, seq, message_id, sender, body, client_id, $27, file, kind, target, thread,"
    " mentions FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[],"
    " $6::text[], $7::text[], $8::text[], $9::text[], $10::text[], $11::text[])"
    " AS t(room, seq, message_id, sender, body, client_id, file, kind, target, thread,"
    " mentions)),"
    " direct_rows AS ("
    " INSERT INTO direct_messages (message_id, sender, recipient, body, client_id, ts_ms, file,"
    " kind, target, room, mentions)"
    " SELECT message_id, sender, recipient, body, client_id, $27, file, kind, target, room,"
    " mentions FROM unnest($12::text[], $13::text[], $14::text[], $15::text[], $16::text[],"
    " $17::text[], $18::text[], $19::text[], $20::text[], $21::text[])"
    " AS t(message_id, sender, recipient, body, client_id, file, kind, target, room,"
    " mentions)),"
    " inbox_seqs AS ("
    " UPDATE users SET dm_seq = t.seq FROM unnest($22::text[], $23::bigint[]) AS t(name, seq)"
    " WHERE users.name = t.name)"
    " INSERT INTO inbox (owner, seq, message_id)"
    " SELECT owner, seq, message_id FROM unnest($24::text[], $25::bigint[], $26::text[])"
    " AS t(owner, seq, message_id)"
)


async def _keep_session(conn: Any) -> None:
    """Pool reset: nothing to undo (saves a round trip on every release).

    The store never changes session settings, never LISTENs and unlocks its
    one session-level advisory lock itself; an open transaction is still
    rolled back by asyncpg before this runs.
    """


#: A flush's markers in one statement, as arrays: moved forward only, like sql._SAVE_MARKER.
_SAVE_MARKERS: Final = (
    "INSERT INTO read_markers (name, stream, seq, updated_ms)"
    " SELECT m.name, m.stream, m.seq, $4"
    " FROM unnest($1::text[], $2::text[], $3::bigint[]) AS m(name, stream, seq)"
    " ON CONFLICT (name, stream) DO UPDATE SET seq = excluded.seq,"
    " updated_ms = excluded.updated_ms WHERE read_markers.seq < excluded.seq"
)

#: asyncpg 0.30 added the pool's ``reset`` hook; older ones reset as usual.
_POOL_OPTIONS: Final[dict[str, Any]] = (
    {"reset": _keep_session} if "reset" in inspect.signature(asyncpg.create_pool).parameters else {}
)


class _Connection:
    """An asyncpg connection as a :class:`~roomcast.store.sql.SQLConn`.

    Args:
        raw: the pooled connection.
        timeout: seconds each statement may take (None: the pool's
            ``command_timeout``).
    """

    __slots__ = ("raw", "timeout")

    def __init__(self, raw: Any, timeout: float | None = None) -> None:
        self.raw = raw
        self.timeout = timeout

    async def fetch(self, sql: str, *args: Any) -> list[Sequence[Any]]:
        rows: list[Sequence[Any]] = await self.raw.fetch(sql, *args, timeout=self.timeout)
        return rows

    async def fetchrow(self, sql: str, *args: Any) -> Sequence[Any] | None:
        row: Sequence[Any] | None = await self.raw.fetchrow(sql, *args, timeout=self.timeout)
        return row

    async def fetchval(self, sql: str, *args: Any) -> Any:
        return await self.raw.fetchval(sql, *args, timeout=self.timeout)

    async def execute(self, sql: str, *args: Any) -> int:
        # The row count ends the command tag (INSERT 0 1, DELETE 3); a tag
        # without one (CREATE TABLE) changed no rows.
        status: str = await self.raw.execute(sql, *args, timeout=self.timeout)
        count = status.rpartition(" ")[2]
        return int(count) if count.isdigit() else 0

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        await self.raw.executemany(sql, rows, timeout=self.timeout)


class PostgresStore(SQLStore):
    """Room messages in PostgreSQL, shared by every node that uses the database.

    Args:
        url: a ``postgresql://`` (or ``postgres://``) URL, as libpq takes it.
        history_days: delete messages older than this many days (0 keeps
            everything). At least 1, so resends are recognised for 24 h.
        clock: wall-clock seconds, for message times and retention.
        pool_size: most connections to the server: up to half of them are
            the writers', the rest are for reads.
        command_timeout: seconds a statement may take before it fails.
        connect_timeout: seconds to connect (or get a pooled connection)
            before the operation fails.
        max_queued: most messages waiting for the writers; past it an
            append fails with :class:`~roomcast.exceptions.StoreBusy`.
        write_lanes: lanes, and most batches written at once
            (:data:`WRITE_LANES`); at most half of ``pool_size``, so reads
            keep half the pool.
        reindex_delay: seconds from a delete or an edit to rebuilding the
            search indexes without its old words (:data:`REINDEX_DELAY`).
    """

    _log = logger
    _DIALECT = "postgres"
    _NAMES_IN = "= ANY($1::text[])"
    _FILE_SIZE = "(file::json->>'size')::bigint"
    _SEARCH = SearchSQL(
        # The stored tsvector (``search``) of the GIN indexes messages_search
        # and direct_messages_search.
        rooms=f"SELECT {ROOM_HIT_COLUMNS}, m.ts_ms, m.message_id, {{score}} AS score"
        " FROM messages m WHERE m.search @@ to_tsquery('simple', $1) AND m.kind = 'chat'",
        direct=f"SELECT {DIRECT_HIT_COLUMNS}, d.ts_ms, d.message_id, {{score}} AS score"
        " FROM direct_messages d JOIN inbox i ON i.message_id = d.message_id AND i.owner = $2"
        " WHERE d.search @@ to_tsquery('simple', $1) AND d.kind = 'chat'",
        position=("m.ts_ms, m.message_id", "d.ts_ms, d.message_id"),
        types=(int, str),
        score=(
            "ts_rank(m.search, to_tsquery('simple', $1))",
            "ts_rank(d.search, to_tsquery('simple', $1))",
        ),
        compile=lambda query: tsquery(query),  # defined below this class
    )

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
        reindex_delay: float = REINDEX_DELAY,
        write_lanes: int = WRITE_LANES,
    ) -> None:
        if pool_size < 2:
            raise ValueError("pool_size must be at least 2 (the writer's and one for reads)")
        if write_lanes < 1:
            raise ValueError("write_lanes must be at least 1")
        lanes = min(write_lanes, pool_size // 2)
        where, password = _location(url)
        super().__init__(
            history_days=history_days,
            clock=clock,
            max_queued=max_queued,
            place=f"PostgreSQL at {where}",
            lanes=lanes,
        )
        self.url = url
        self._pool_size = pool_size
        self._command_timeout = command_timeout
        self._connect_timeout = connect_timeout
        #: ``host:port``, for messages; the URL's password, to hide from them.
        self._where, self._password = where, password
        self._pool: Any = None  # asyncpg.Pool
        #: Each writer's pooled connection, kept between its batches.
        self._wconns: list[Any] = [None] * lanes
        #: The VACUUM that erases deleted messages' old row versions, and
        #: whether another delete came since it started.
        self._eraser: asyncio.Task[None] | None = None
        self._erase_wanted = False
        #: The tables it vacuums (more after a room or an account is erased).
        self._erase_tables: set[str] = set(ERASE_TABLES)
        #: Whether this role may run CHECKPOINT (found out at the first try).
        self._may_checkpoint = True
        #: The rebuild of the search indexes that deletes owe, and which ones.
        self._reindexer: asyncio.Task[None] | None = None
        self._reindex_owed: set[str] = set()
        self._reindex_delay = reindex_delay

    def __repr__(self) -> str:
        return f"PostgresStore({self._where!r})"

    @staticmethod
    def _names(names: list[str]) -> Any:
        return names

    # -- life cycle ----------------------------------------------------------

    async def _connect(self) -> None:
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
            async with self._connection():
                connected = True
            await self._migrate()
            # A rebuild cut off (a node stopped mid-REINDEX) left an index
            # PostgreSQL still updates on every write: the next rebuild drops it.
            async with self._connection() as conn:
                left = [
                    table
                    for table, index in SEARCH_INDEXES.items()
                    if await conn.fetch(_LEFT_BEHIND, index)
                ]
            if left:
                self._reindex_later(left)
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

    async def _disconnect(self) -> None:
        for task in (self._eraser, self._reindexer):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self._eraser = self._reindexer = None
        # close() has flushed: a batch still being written is one a
        # cancelled close left behind.
        await self._stop_lanes()
        await self._close_pool()

    async def _close_pool(self) -> None:
        pool, self._pool = self._pool, None
        for writer, conn in enumerate(self._wconns):
            self._wconns[writer] = None
            if conn is not None and pool is not None:
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

    # -- the seam --------------------------------------------------------------

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

    async def _read(self, job: Job[T]) -> T:
        if self._closed:
            raise StoreError("the store is closed")
        try:
            async with self._connection() as conn:
                return await job(_Connection(conn))
        except _DRIVER_ERRORS as exc:
            raise self._error("cannot read from PostgreSQL at", exc) from exc

    async def _search_read(self, job: Job[T]) -> T:
        async def in_time(conn: SQLConn) -> T:
            assert isinstance(conn, _Connection)
            async with conn.raw.transaction(readonly=True):
                # PostgreSQL cancels it; the connection stays good for the pool.
                timeout = int(SEARCH_TIMEOUT * 1000)
                await conn.raw.execute(f"SET LOCAL statement_timeout = {timeout}")
                return await job(conn)

        try:
            return await self._read(in_time)
        except StoreError as exc:
            if isinstance(exc.__cause__, asyncpg.QueryCanceledError):
                raise InvalidRequest(SEARCH_TOO_LONG) from None
            raise

    async def _write_now(self, job: Job[T]) -> T:
        if self._closed:
            raise StoreError("the store is closed")
        try:
            async with self._connection() as conn, conn.transaction():
                return await job(_Connection(conn))
        except _DRIVER_ERRORS as exc:
            raise self._error("cannot write to PostgreSQL at", exc) from exc

    async def _migration(self, job: Job[T]) -> T:
        # The lock is the transaction's: nodes starting at once migrate one
        # after the other, each reading the version again under it.
        async with self._connection() as conn, conn.transaction():
            await conn.execute(
                "SELECT pg_advisory_xact_lock($1)", _MIGRATE_LOCK, timeout=MIGRATE_TIMEOUT
            )
            return await job(_Connection(conn, MIGRATE_TIMEOUT))

    @contextlib.asynccontextmanager
    async def _pruning(self) -> AsyncIterator[Prune | None]:
        # One node prunes at a time: it holds a session lock on one
        # connection, and runs each chunk there in a transaction of its own.
        try:
            async with self._connection() as conn:
                if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", _PRUNE_LOCK):
                    logger.debug("another node is pruning old history")
                    yield None
                    return

                async def chunk(job: Job[tuple[int, int]]) -> tuple[int, int]:
                    async with conn.transaction():
                        return await job(_Connection(conn))

                try:
                    yield chunk
                finally:
                    try:
                        await conn.execute("SELECT pg_advisory_unlock($1)", _PRUNE_LOCK)
                    except _DRIVER_ERRORS:
                        _terminate(conn)  # ends the session, and its lock
        except _DRIVER_ERRORS as exc:
            raise self._error("cannot prune old history in PostgreSQL at", exc) from exc

    # -- writes --------------------------------------------------------------

    @staticmethod
    async def _upsert_markers(conn: SQLConn, rows: list[Marker], now_ms: int) -> None:
        """All of a flush's markers in one statement: 9-21 µs a marker in batches of
        100-10,000, where asyncpg's executemany, a round trip per row, took 21-36
        (bench/scenarios/marker_writes.py)."""
        names, streams, seqs = (list(column) for column in zip(*rows, strict=True))
        await conn.execute(_SAVE_MARKERS, names, streams, seqs, now_ms)

    def _writer_running(self) -> bool:
        return self._pool is not None

    def _write_batch(
        self, writer: int, batch: list[Pending]
    ) -> asyncio.Task[list[AppendResult | DirectResult | Exception]]:
        loop = asyncio.get_running_loop()
        return loop.create_task(
            self._write(writer, batch), name=f"roomcast-postgres-writer-{writer}"
        )

    async def _write(
        self, writer: int, batch: list[Pending]
    ) -> list[AppendResult | DirectResult | Exception]:
        """Store ``batch`` in one transaction on ``writer``'s connection; again after a deadlock."""
        attempt = 0
        while True:
            try:
                return await self._write_once(writer, batch)
            except asyncpg.DeadlockDetectedError as exc:
                if attempt >= DEADLOCK_RETRIES:
                    raise
                attempt += 1
                logger.info("a batch was aborted to break a deadlock; trying again: %s", exc)

    async def _write_once(
        self, writer: int, batch: list[Pending]
    ) -> list[AppendResult | DirectResult | Exception]:
        conn = self._wconns[writer]
        if conn is not None and _is_gone(conn):
            self._wconns[writer] = conn = None
        if conn is None:
            if self._pool is None:
                raise StoreError("the store is closed")
            conn = self._wconns[writer] = await self._pool.acquire(timeout=self._connect_timeout)
        try:
            return await self._store_batch(conn, batch)
        except BaseException:
            # Start the next batch afresh, on a new connection if this one broke.
            self._wconns[writer] = None
            await self._release(conn)
            raise

    async def _store_batch(
        self, conn: Any, batch: list[Pending]
    ) -> list[AppendResult | DirectResult | Exception]:
        now_ms = int(self._clock() * 1000)
        keyed = [item for item in batch if item.client_id is not None]
        locks = sorted({_sender_lock(item.sender) for item in keyed})
        begin = "BEGIN"
        if locks:
            # Integers only: safe to inline, so BEGIN and the locks are one round trip.
            keys = ",".join(map(str, locks))
            begin += f"; SELECT pg_advisory_xact_lock(k) FROM unnest('{{{keys}}}'::bigint[]) AS k"
        try:
            await conn.execute(begin)
            results = await self._fill_batch(conn, batch, keyed, now_ms)
            await conn.execute("COMMIT")
        except (asyncpg.PostgresError, StoreError):
            # The server, or the batch itself, refused something: roll back,
            # keep the connection.
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
        self, conn: Any, batch: list[Pending], keyed: list[Pending], now_ms: int
    ) -> list[AppendResult | DirectResult | Exception]:
        """Look up resends, reserve seqs and insert ``batch`` (inside its transaction)."""
        cutoff = now_ms - DEDUPE_SECONDS * 1000
        rooms: dict[ResendKey, AppendResult] = {}
        direct: dict[ResendKey, DirectResult] = {}
        room_keys = [(i.sender, i.client_id, i.room) for i in keyed if i.room is not None]
        if room_keys:
            senders, ids, in_rooms = zip(*room_keys, strict=True)
            for row in await conn.fetch(_DEDUPE, list(senders), list(ids), list(in_rooms), cutoff):
                rooms[(row[0], row[1], row[2])] = AppendResult(message_from_row(row[2:]), True)
        direct_keys = [(i.sender, i.client_id, i.recipient) for i in keyed if i.room is None]
        if direct_keys:
            senders, ids, recipients = zip(*direct_keys, strict=True)
            rows = await conn.fetch(
                _DIRECT_DEDUPE, list(senders), list(ids), list(recipients), cutoff
            )
            for row in rows:
                key, result = direct_resend(row)
                direct[key] = result
        plan = Plan(batch, rooms, direct)
        shared = _Connection(conn)
        # The changed messages' rows are locked (in id order, before any
        # room or inbox) as they are read: their state cannot move before
        # this batch commits, and lock orders never cross.
        targets = await load_targets(shared, plan, self._NAMES_IN, self._names, " FOR UPDATE")
        plan.decide(targets, now_ms)

        # The last seq before this batch, per room and inbox: rooms sorted by
        # name, then users, so batches of several nodes never deadlock.
        room_seqs: dict[str, int] = {}
        if counts := plan.room_counts:
            names = sorted(counts)
            rows = await conn.fetch(_RESERVE_SEQS, names, [counts[name] for name in names], now_ms)
            room_seqs = {name: int(last) - counts[name] for name, last in rows}
        inbox_seqs: dict[str, int] = {}
        if plan.inbox_counts:
            rows = await conn.fetch(_LOCK_INBOXES, sorted(plan.inbox_counts))
            inbox_seqs = {name: int(seq) for name, seq in rows}
        results = plan.assign(room_seqs, inbox_seqs, now_ms)
        if plan.message_rows or plan.direct_rows:
            await conn.execute(_INSERT_BATCH, *_insert_args(plan, inbox_seqs, now_ms))
        await apply_changes(shared, plan, self._FILE_SIZE)
        if plan.deletes or plan.direct_deletes:
            self._erase_soon()
        # An edit's old words, like a delete's, stay in the GIN index until it is rebuilt.
        changed = [
            table
            for table, rows in (
                ("messages", plan.deletes or plan.edits),
                ("direct_messages", plan.direct_deletes or plan.direct_edits),
            )
            if rows
        ]
        if changed:
            self._reindex_later(changed)
        return results

    async def _erased(self, tables: tuple[str, ...]) -> None:
        self._erase_soon(tables)
        self._reindex_later([table for table in tables if table in SEARCH_INDEXES])

    def _erase_soon(self, tables: Iterable[str] = ()) -> None:
        """A batch deletes messages: VACUUM their tables once it has committed.

        ``tables``: others to VACUUM too (a room's or an account's erasure).

        PostgreSQL keeps a row's old version (the text) in the table until
        VACUUM reclaims it, and the page on disk until a checkpoint writes
        it. This runs both shortly after each burst of deletes, off the
        writer, so the text leaves the table files within about a second.
        ``CHECKPOINT`` needs a superuser or the ``pg_checkpoint`` role: without
        it the pages reach the disk at PostgreSQL's next own checkpoint
        (5 minutes by default). The write-ahead log keeps the text until
        its segments are recycled (docs/security.md).
        """
        self._erase_wanted = True
        self._erase_tables.update(tables)
        if self._eraser is None or self._eraser.done():
            self._eraser = asyncio.get_running_loop().create_task(
                self._erase(), name="roomcast-postgres-erase", context=contextvars.Context()
            )

    async def _erase(self) -> None:
        """VACUUM (then CHECKPOINT) after :data:`ERASE_DELAY`, again while deletes come.

        A VACUUM that fails is tried again: one waits for a search index's
        rebuild (both take the table's SHARE UPDATE EXCLUSIVE lock) and may
        time out meanwhile.
        """
        while self._erase_wanted:
            await asyncio.sleep(ERASE_DELAY)
            self._erase_wanted = False
            tables, self._erase_tables = self._erase_tables, set(ERASE_TABLES)
            try:
                async with self._connection() as conn:
                    await conn.execute(f"VACUUM {', '.join(sorted(tables))}")
                    await self._checkpoint(conn)
            except (*_DRIVER_ERRORS, StoreError) as exc:
                self._erase_wanted = True
                self._erase_tables.update(tables)
                logger.warning("could not vacuum deleted messages away: %s", self._reason(exc))
                await asyncio.sleep(ERASE_RETRY)

    def _search_pruned(self) -> None:
        self._reindex_later(list(SEARCH_INDEXES))

    def _reindex_later(self, tables: list[str]) -> None:
        """Deletes or edits in ``tables``: rebuild their search indexes within
        :data:`REINDEX_DELAY`."""
        self._reindex_owed.update(SEARCH_INDEXES[table] for table in tables)
        if self._reindexer is None or self._reindexer.done():
            self._reindexer = asyncio.get_running_loop().create_task(
                self._reindex(), name="roomcast-postgres-reindex", context=contextvars.Context()
            )

    async def _reindex(self) -> None:
        """Rebuild the owed search indexes after :data:`REINDEX_DELAY`, until none is owed.

        A rebuild that fails, or finds another node rebuilding (which may
        have begun before these changes), is owed again after the delay.
        """
        while self._reindex_owed:
            await asyncio.sleep(self._reindex_delay)
            owed = sorted(self._reindex_owed)
            self._reindex_owed.clear()
            try:
                async with self._connection() as conn:
                    if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", _REINDEX_LOCK):
                        self._reindex_owed.update(owed)
                        continue
                    try:
                        for index in owed:
                            await self._rebuild(conn, index)
                    finally:
                        await conn.execute("SELECT pg_advisory_unlock($1)", _REINDEX_LOCK)
                    await self._checkpoint(conn)
            except (*_DRIVER_ERRORS, StoreError) as exc:
                self._reindex_owed.update(owed)
                logger.warning(
                    "could not rebuild the search index without deleted words: %s",
                    self._reason(exc),
                )

    async def _checkpoint(self, conn: Any) -> None:
        """Have the changed pages written to the files now, if this role may."""
        if not self._may_checkpoint:
            return
        try:
            await conn.execute("CHECKPOINT")
        except asyncpg.InsufficientPrivilegeError:
            self._may_checkpoint = False
            logger.info(
                "deleted messages leave the table files at PostgreSQL's next checkpoint:"
                " this role may not run CHECKPOINT (grant it pg_checkpoint)"
            )

    @staticmethod
    async def _rebuild(conn: Any, index: str) -> None:
        """Rebuild ``index`` while writes go on, after dropping what a cut-off one left."""
        for (left,) in await conn.fetch(_LEFT_BEHIND, index):
            await conn.execute(f'DROP INDEX CONCURRENTLY IF EXISTS "{left}"')
        await conn.execute(f"REINDEX INDEX CONCURRENTLY {index}", timeout=REINDEX_TIMEOUT)

    # -- errors ----------------------------------------------------------------

    def _reason(self, exc: BaseException) -> str:
        """One line saying why ``exc`` happened, without the URL's password."""
        text = str(exc).strip()
        if isinstance(exc, StoreError):
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


def _insert_args(plan: Plan, inbox_seqs: dict[str, int], now_ms: int) -> tuple[Any, ...]:
    """The parameters of :data:`_INSERT_BATCH`: ``plan``'s rows, column by column."""
    messages = list(zip(*plan.message_rows, strict=True)) or [()] * 12
    direct = list(zip(*plan.direct_rows, strict=True)) or [()] * 11
    inbox = list(zip(*plan.inbox_rows, strict=True)) or [()] * 3
    owners = sorted(inbox_seqs)
    last = [inbox_seqs[owner] for owner in owners]
    # Each row's time (column 6 of messages, 5 of direct) is $27, once.
    return (*messages[:6], *messages[7:], *direct[:5], *direct[6:], owners, last, *inbox, now_ms)


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
