"""The embedded store: one SQLite file, written in batches off the event loop.

Writes go through one connection in one thread. :meth:`SQLiteStore.append`
only queues the message and returns a future; when the writer thread is free
it takes everything queued so far (the appends of the last loop turn, or of
every turn that passed while it was committing the previous batch) and
stores it in one transaction, assigning seqs as it goes. The database is in
WAL mode with ``synchronous=FULL``: when the commit returns, the batch is on
disk, and only then do the futures resolve, in append order. A failed batch
is rolled back whole and every future in it fails with
:class:`~roomcast.exceptions.StoreError`; the next batch starts afresh.

Reads use a second connection in a second thread (WAL lets it read while the
writer writes), so a history page never waits behind a commit. Every query
but the batch writer's is :class:`~roomcast.store.sql.SQLStore`'s, shared
with PostgreSQL; this module adds the threads, the writer and its seq cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import re
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Final, TypeVar

from ..exceptions import InvalidRequest, StoreError
from ..query import Query, Term
from .base import DEDUPE_SECONDS, AppendResult, DirectResult
from .batch import (
    MAX_QUEUED,
    MESSAGE_COLUMNS,
    Pending,
    Plan,
    ResendKey,
    direct_resend,
    message_from_row,
)
from .sql import (
    DIRECT_HIT_COLUMNS,
    ROOM_HIT_COLUMNS,
    SEARCH_TIMEOUT,
    SEARCH_TOO_LONG,
    Job,
    Prune,
    SearchSQL,
    SQLStore,
    apply_changes,
    load_targets,
    run_sync,
)

__all__ = ["SQLiteStore"]

logger = logging.getLogger("roomcast.store.sqlite")

T = TypeVar("T")

#: Pages of a full-text index one purge step merges: about a millisecond of the
#: writer's time on a small index (20,000 messages: 13 steps, 17 ms in all); on
#: a million messages' index, 376 steps took 0.8 s, the longest 166 ms. A batch
#: that arrives meanwhile waits for the step under way.
PURGE_STEP_PAGES: Final = 16
#: A purge rewrites the whole index (see :meth:`SQLiteStore._purge_step`), so
#: the next one waits this many times as long as the last one took, and at
#: least :data:`PURGE_SPACING` seconds: under a steady stream of edits and
#: deletes purging takes at most a twentieth of the writer's time, and the
#: changes of that wait share one purge. (About 1 s for a million messages'
#: index here: the next purge then waits 20 s.)
PURGE_SHARE: Final = 20
PURGE_SPACING: Final = 1.0
#: Seconds a store that closes goes on purging; what is left waits for the
#: next change's purge. (Purging at every start instead cost a million
#: messages' index 0.8 s of merging, a step up to 166 ms, that searches and
#: batches waited behind.)
PURGE_AT_CLOSE: Final = 2.0
#: The full-text indexes of room and direct messages.
SEARCH_INDEXES: Final = ("messages_search", "direct_search")
_INDEX_OF: Final = dict(zip(("messages", "direct_messages"), SEARCH_INDEXES, strict=True))

_INSERT: Final = (
    "INSERT INTO messages (room, seq, message_id, sender, body, client_id, ts_ms, file, kind,"
    " target, thread, mentions) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
#: The earlier copy of one resent room message: sender, client id, room,
#: and the oldest time that still counts.
_DEDUPE: Final = (
    f"SELECT {MESSAGE_COLUMNS} FROM messages"
    " WHERE sender = ? AND client_id = ? AND room = ? AND ts_ms >= ?"
    " ORDER BY ts_ms DESC LIMIT 1"
)
#: The same for a direct message (by recipient), with its seq in both inboxes,
#: as :func:`~.batch.direct_resend` reads it.
_DIRECT_DEDUPE: Final = (
    "SELECT d.sender, d.client_id, d.recipient, d.body, d.message_id, d.ts_ms, d.file,"
    " s.seq, r.seq, d.kind, d.target, d.mentions FROM direct_messages d"
    " LEFT JOIN inbox s ON s.message_id = d.message_id AND s.owner = d.sender"
    " LEFT JOIN inbox r ON r.message_id = d.message_id AND r.owner = d.recipient"
    " WHERE d.sender = ? AND d.client_id = ? AND d.recipient = ? AND d.ts_ms >= ?"
    " ORDER BY d.ts_ms DESC LIMIT 1"
)
_DIRECT_INSERT: Final = (
    "INSERT INTO direct_messages (message_id, sender, recipient, body, client_id, ts_ms, file,"
    " kind, target, room, mentions) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_INBOX_INSERT: Final = "INSERT INTO inbox (owner, seq, message_id) VALUES (?, ?, ?)"
_SAVE_SEQ: Final = (
    "INSERT INTO rooms (name, last_seq, created_ms) VALUES (?, ?, ?)"
    " ON CONFLICT (name) DO UPDATE SET last_seq = excluded.last_seq"
)
_SAVE_DM_SEQ: Final = "UPDATE users SET dm_seq = ? WHERE name = ?"
_LAST_SEQ: Final = "SELECT last_seq FROM rooms WHERE name = ?"
_DM_SEQ: Final = "SELECT dm_seq FROM users WHERE name = ?"

_PLACEHOLDER: Final = re.compile(r"\$(\d+)")


@functools.lru_cache(maxsize=256)
def _dialect(sql: str) -> str:
    """A shared query in SQLite's spelling: ``$1`` becomes ``?1`` (the same number)."""
    return _PLACEHOLDER.sub(r"?\1", sql)


class _Connection:
    """A sqlite3 connection as a :class:`~roomcast.store.sql.SQLConn` (used in its thread).

    Its methods do their work when called and never suspend: a job over it
    runs to its end with :func:`~roomcast.store.sql.run_sync`.
    """

    __slots__ = ("raw",)

    def __init__(self, raw: sqlite3.Connection) -> None:
        self.raw = raw

    async def fetch(self, sql: str, *args: Any) -> list[Sequence[Any]]:
        return self.raw.execute(_dialect(sql), args).fetchall()

    async def fetchrow(self, sql: str, *args: Any) -> Sequence[Any] | None:
        row: Sequence[Any] | None = self.raw.execute(_dialect(sql), args).fetchone()
        return row

    async def fetchval(self, sql: str, *args: Any) -> Any:
        row = self.raw.execute(_dialect(sql), args).fetchone()
        return row[0] if row is not None else None

    async def execute(self, sql: str, *args: Any) -> int:
        return self.raw.execute(_dialect(sql), args).rowcount

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        self.raw.executemany(_dialect(sql), rows)


class SQLiteStore(SQLStore):
    """Room messages in a SQLite file.

    Args:
        path: the database file; created, with its schema, if missing.
        history_days: delete messages older than this many days (0 keeps
            everything). At least 1, so resends are recognised for 24 h.
        clock: wall-clock seconds, for message times and retention.
        busy_timeout: seconds a write waits for a lock held by another
            process before the batch fails.
        purge_spacing: the shortest wait, in seconds, between two purges of
            the search index's deleted words (see :data:`PURGE_SHARE`).
        max_queued: most messages waiting for the writer; past it an
            append fails with :class:`~roomcast.exceptions.StoreBusy`.
    """

    _log = logger
    _DIALECT = "sqlite"
    _NAMES_IN = "IN (SELECT value FROM json_each($1))"
    _FILE_SIZE = "json_extract(file, '$.size')"
    _SEARCH = SearchSQL(
        rooms=f"SELECT {ROOM_HIT_COLUMNS}, f.rowid, {{score}} AS score FROM messages_search f"
        " JOIN messages m ON m.rowid = f.rowid"
        " WHERE f.messages_search MATCH $1 AND m.kind = 'chat'",
        direct=f"SELECT {DIRECT_HIT_COLUMNS}, f.rowid, {{score}} AS score FROM direct_search f"
        " JOIN direct_messages d ON d.rowid = f.rowid"
        " JOIN inbox i ON i.message_id = d.message_id AND i.owner = $2"
        " WHERE f.direct_search MATCH $1 AND d.kind = 'chat'",
        # FTS5 reads its matches in rowid order, newest (last inserted) first,
        # so a page of the newest stops after a page of matches.
        position=("f.rowid", "f.rowid"),
        types=(int,),
        # bm25: lower is better.
        score=("-f.rank", "-f.rank"),
        compile=lambda query: fts5_query(query),  # defined below this class
    )

    def __init__(
        self,
        path: Path,
        *,
        history_days: int = 0,
        clock: Callable[[], float] = time.time,
        busy_timeout: float = 2.0,
        max_queued: int = MAX_QUEUED,
        purge_spacing: float = PURGE_SPACING,
    ) -> None:
        super().__init__(
            history_days=history_days, clock=clock, max_queued=max_queued, place=str(path)
        )
        self.path = path
        self._busy_timeout = busy_timeout
        #: One thread each: the writer's connection, the reader's, and the one
        #: searches read on (a search can read long; other reads do not wait for it).
        self._writer: ThreadPoolExecutor | None = None
        self._reader: ThreadPoolExecutor | None = None
        self._searcher: ThreadPoolExecutor | None = None
        self._wconn: _Connection | None = None
        self._rconn: _Connection | None = None
        self._sconn: _Connection | None = None
        #: The last seq of each room and inbox, as committed (writer thread only).
        self._seqs: dict[str, int] = {}
        self._inbox_seqs: dict[str, int] = {}
        #: The full-text indexes that may still hold deleted or replaced words:
        #: those a batch changed (added by the writer thread, taken by purge steps).
        self._purge_owed: set[str] = set()
        #: The purge step on the writer thread, if one is; the timer of the next
        #: purge, and when it may start (loop time).
        self._purge_job: asyncio.Future[bool] | None = None
        self._purge_timer: asyncio.TimerHandle | None = None
        self._next_purge = 0.0
        self._purge_spacing = purge_spacing
        #: When the purge under way started (loop time).
        self._purge_started = 0.0

    @staticmethod
    def _names(names: list[str]) -> Any:
        return json.dumps(names)

    # -- life cycle ----------------------------------------------------------

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="roomcast-sqlite-write")
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="roomcast-sqlite-read")
        self._searcher = ThreadPoolExecutor(1, thread_name_prefix="roomcast-sqlite-search")
        try:
            self._wconn = _Connection(await loop.run_in_executor(self._writer, self._open_writer))
            await self._migrate()
            self._rconn = _Connection(await loop.run_in_executor(self._reader, self._sqlite))
            self._sconn = _Connection(await loop.run_in_executor(self._searcher, self._sqlite))
        except sqlite3.Error as exc:
            await self._disconnect()
            raise StoreError(f"cannot open the database {self.path}: {exc}") from exc
        except BaseException:
            await self._disconnect()
            raise

    def _sqlite(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=self._busy_timeout, isolation_level=None)

    def _open_writer(self) -> sqlite3.Connection:
        # The database holds password hashes: only the server's user may read
        # it (SQLite gives its -wal and -shm files the same mode).
        try:
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except FileExistsError:
            pass
        except OSError as exc:
            raise StoreError(f"cannot create the database {self.path}: {exc.strerror}") from exc
        conn = self._sqlite()
        try:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(f"{self.path} cannot use write-ahead logging (mode {mode})")
            conn.execute("PRAGMA synchronous = FULL")
            # A deleted message's text is overwritten, not only unlinked:
            # freed space is zeroed (docs/security.md, "Deleting a message").
            conn.execute("PRAGMA secure_delete = ON")
        except BaseException:
            conn.close()
            raise
        return conn

    async def _disconnect(self) -> None:
        loop = asyncio.get_running_loop()
        if self._purge_timer is not None:
            self._purge_timer.cancel()
            self._purge_timer = None
        if self._purge_job is not None:
            await asyncio.gather(self._purge_job, return_exceptions=True)
        # Go on with a purge under way for a moment; the next start purges anyway.
        deadline = loop.time() + PURGE_AT_CLOSE
        while self._purge_owed and self._writer is not None and loop.time() < deadline:
            if await loop.run_in_executor(self._writer, self._purge_step):
                break
        for executor, conn in (
            (self._writer, self._wconn),
            (self._reader, self._rconn),
            (self._searcher, self._sconn),
        ):
            if executor is None:
                continue
            if conn is not None:
                await loop.run_in_executor(executor, conn.raw.close)
            executor.shutdown(wait=False)
        self._wconn = self._rconn = self._sconn = None
        self._writer = self._reader = self._searcher = None

    async def ping(self) -> None:
        # The reader works while another process holds the write lock: a
        # failed batch is what says the store does not.
        if self._write_error is not None:
            raise StoreError(f"the last write failed: {self._write_error}")
        await super().ping()

    # -- the seam --------------------------------------------------------------

    async def _read(self, job: Job[T]) -> T:
        return await self._read_on(self._reader, self._rconn, job, None)

    async def _search_read(self, job: Job[T]) -> T:
        try:
            return await self._read_on(self._searcher, self._sconn, job, SEARCH_TIMEOUT)
        except StoreError as exc:
            cause = exc.__cause__
            if isinstance(cause, sqlite3.OperationalError) and str(cause) == "interrupted":
                raise InvalidRequest(SEARCH_TOO_LONG) from None
            raise

    async def _read_on(
        self,
        thread: ThreadPoolExecutor | None,
        conn: _Connection | None,
        job: Job[T],
        seconds: float | None,
    ) -> T:
        """Run ``job`` on a reading ``thread`` and its ``conn``; past ``seconds`` (if
        given) SQLite interrupts it (``OperationalError: interrupted``)."""
        if self._closed and conn is None:
            raise StoreError("the store is closed")
        assert conn is not None and thread is not None
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(thread, _run, job, conn, seconds)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read {self.path}: {exc}") from exc

    async def _write_now(self, job: Job[T]) -> T:
        if self._closed:
            raise StoreError("the store is closed")
        try:
            return await self._in_writer(job)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot write to {self.path}: {exc}") from exc

    async def _migration(self, job: Job[T]) -> T:
        # BEGIN IMMEDIATE takes the write lock: another process migrating
        # waits, and the version is read again under it.
        return await self._in_writer(job)

    @contextlib.asynccontextmanager
    async def _pruning(self) -> AsyncIterator[Prune | None]:
        try:
            yield self._in_writer
        except sqlite3.Error as exc:
            raise StoreError(f"cannot prune {self.path}: {exc}") from exc

    async def _in_writer(self, job: Job[T]) -> T:
        """Run ``job`` in its own transaction on the writer thread, between batches."""
        conn, writer = self._wconn, self._writer
        if conn is None or writer is None:
            raise StoreError("the store is closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(writer, _run_in_transaction, job, conn)

    # -- writes --------------------------------------------------------------

    def _search_pruned(self) -> None:
        self._purge_owed.update(SEARCH_INDEXES)
        self._purge_when_due()

    async def _erased(self, tables: tuple[str, ...]) -> None:
        # secure_delete zeroed the freed space; the log still holds the pages
        # as they were, and the search indexes the words: as after a delete.
        owed = {index for table, index in _INDEX_OF.items() if table in tables}
        conn, writer = self._wconn, self._writer
        if conn is None or writer is None:
            return
        await asyncio.get_running_loop().run_in_executor(writer, self._owe_purge, conn.raw, owed)
        if owed:
            self._purge_when_due()

    def _owe_purge(self, conn: sqlite3.Connection, owed: set[str]) -> None:
        """Empty the log now, and owe ``owed`` a purge (writer thread)."""
        self._purge_owed.update(owed)
        self._erase_log(conn)

    def _inbox_gone(self, owner: str) -> None:
        # In the deleting transaction, on the writer thread: no batch comes between.
        self._inbox_seqs.pop(owner, None)

    def _writer_running(self) -> bool:
        return self._writer is not None

    def _write_batch(
        self, writer: int, batch: list[Pending]
    ) -> asyncio.Future[list[AppendResult | DirectResult | Exception]]:
        # One lane and one writer (SQLite has one): the writer thread, between other jobs.
        assert self._writer is not None
        loop = self._loop or asyncio.get_running_loop()
        return loop.run_in_executor(self._writer, self._write, batch)

    def _writer_idle(self) -> None:
        if self._purge_owed:
            self._purge_when_due()

    def _write(self, batch: list[Pending]) -> list[AppendResult | DirectResult | Exception]:
        """Store ``batch`` in one transaction (writer thread)."""
        assert self._wconn is not None
        shared = self._wconn
        conn = shared.raw
        now_ms = int(self._clock() * 1000)
        try:
            conn.execute("BEGIN IMMEDIATE")
            plan = Plan(batch, *_resends(conn, batch, now_ms - DEDUPE_SECONDS * 1000))
            targets = run_sync(load_targets(shared, plan, self._NAMES_IN, self._names))
            plan.decide(targets, now_ms)
            rooms = {room: self._room_seq(conn, room) for room in plan.room_counts}
            inboxes = {
                owner: seq
                for owner in plan.inbox_counts
                if (seq := self._inbox_seq(conn, owner)) is not None
            }
            results = plan.assign(rooms, inboxes, now_ms)
            if plan.message_rows:
                conn.executemany(_INSERT, plan.message_rows)
                conn.executemany(_SAVE_SEQ, [(room, seq, now_ms) for room, seq in rooms.items()])
            if plan.direct_rows:
                conn.executemany(_DIRECT_INSERT, plan.direct_rows)
                conn.executemany(_INBOX_INSERT, plan.inbox_rows)
                conn.executemany(_SAVE_DM_SEQ, [(seq, owner) for owner, seq in inboxes.items()])
            run_sync(apply_changes(shared, plan, self._FILE_SIZE))
            conn.execute("COMMIT")
        except BaseException:
            # The cached seqs may be past what is committed: read them again.
            self._seqs.clear()
            self._inbox_seqs.clear()
            _roll_back(conn)
            raise
        self._seqs.update(rooms)
        self._inbox_seqs.update(inboxes)
        if plan.deletes or plan.direct_deletes:
            self._erase_log(conn)
        if plan.deletes or plan.edits:
            self._purge_owed.add(SEARCH_INDEXES[0])
        if plan.direct_deletes or plan.direct_edits:
            self._purge_owed.add(SEARCH_INDEXES[1])
        return results

    # -- erasing deleted words from the full-text index ---------------------------------

    def _purge_when_due(self) -> None:
        """Start purging the index now, or once the wait after the last purge is over."""
        if self._purge_job is not None or self._purge_timer is not None or self._loop is None:
            return
        delay = self._next_purge - self._loop.time()
        if delay > 0:
            self._purge_timer = self._loop.call_later(delay, self._purge_due)
        else:
            self._purge_soon()

    def _purge_due(self) -> None:
        """The wait is over: purge, unless a batch is queued (its end starts the purge)."""
        self._purge_timer = None
        if self._purge_owed and not self._queue.queued:
            self._purge_soon()

    def _purge_soon(self) -> None:
        """Run a purge step on the writer thread, between batches."""
        if self._purge_job is not None or self._writer is None or self._loop is None:
            return
        if not self._purge_started:
            self._purge_started = self._loop.time()
        job = self._purge_job = self._loop.run_in_executor(self._writer, self._purge_step)
        job.add_done_callback(self._purged)

    def _purge_step(self) -> bool:
        """Merge a few pages of each index still owed a purge (writer thread).

        FTS5 takes a deleted message out of its index by writing a delete
        marker beside the words, which stay in the index's pages until the
        segments holding them are merged. Merging every segment, a step at a
        time, drops them; secure_delete zeroes the freed pages, and the
        checkpoint after the last step empties the log. Returns whether
        every index is purged.
        """
        if self._wconn is None:
            return True
        conn = self._wconn.raw
        try:
            for index in sorted(self._purge_owed):
                before = conn.total_changes
                conn.execute(
                    f"INSERT INTO {index} ({index}, rank) VALUES ('merge', ?)",
                    (-PURGE_STEP_PAGES,),
                )
                if conn.total_changes - before < 2:  # FTS5's sign that nothing was left
                    self._purge_owed.discard(index)
        except sqlite3.Error as exc:
            # The next change owes a purge again; retrying now could fail forever.
            logger.warning("could not purge deleted words from the search index: %s", exc)
            self._purge_owed.clear()
        if self._purge_owed:
            return False
        self._erase_log(conn)
        return True

    def _purged(self, job: asyncio.Future[bool]) -> None:
        """A purge step ended: the next one, or, the purge done, when the next may start."""
        self._purge_job = None
        if job.cancelled() or job.exception() is not None or self._loop is None:
            return
        if job.result():
            took = self._loop.time() - self._purge_started
            self._purge_started = 0.0
            self._next_purge = self._loop.time() + max(self._purge_spacing, took * PURGE_SHARE)
            if self._purge_owed:  # changes during the purge's last step
                self._purge_when_due()
        elif not self._queue.queued:
            self._purge_soon()

    def _erase_log(self, conn: sqlite3.Connection) -> None:
        """Copy the write-ahead log into the database and empty it, after a delete.

        The log still holds the pages as they were before the delete, text
        and all; this is the moment they go. Best effort: a reader in the
        middle of a read can keep a checkpoint from finishing, and the next
        delete (or SQLite's own checkpoint) finishes it.
        """
        try:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        except sqlite3.Error as exc:
            logger.warning("could not empty the write-ahead log after a delete: %s", exc)

    def _room_seq(self, conn: sqlite3.Connection, room: str) -> int:
        seq = self._seqs.get(room)
        if seq is None:
            row = conn.execute(_LAST_SEQ, (room,)).fetchone()
            seq = int(row[0]) if row is not None else 0
        return seq

    def _inbox_seq(self, conn: sqlite3.Connection, owner: str) -> int | None:
        seq = self._inbox_seqs.get(owner)
        if seq is None:
            row = conn.execute(_DM_SEQ, (owner,)).fetchone()
            seq = int(row[0]) if row is not None else None
        return seq


def _resends(
    conn: sqlite3.Connection, batch: list[Pending], cutoff_ms: int
) -> tuple[dict[ResendKey, AppendResult], dict[ResendKey, DirectResult]]:
    """The earlier copies of ``batch``'s resends, room and direct (one lookup each)."""
    rooms: dict[ResendKey, AppendResult] = {}
    direct: dict[ResendKey, DirectResult] = {}
    execute = conn.execute
    for item in batch:
        client_id = item.client_id
        if client_id is None:
            continue
        if item.room is not None:
            row = execute(_DEDUPE, (item.sender, client_id, item.room, cutoff_ms)).fetchone()
            if row is not None:
                rooms[(item.sender, client_id, item.room)] = AppendResult(
                    message_from_row(row), True
                )
        else:
            key = (item.sender, client_id, item.recipient, cutoff_ms)
            row = execute(_DIRECT_DEDUPE, key).fetchone()
            if row is not None:
                resend_key, result = direct_resend(row)
                direct[resend_key] = result
    return rooms, direct


def fts5_query(query: Query) -> str:
    """``query`` as an FTS5 expression: each term a quoted string, so every
    character a user typed is text to find, never an operator."""

    def term(item: Term) -> str:
        quoted = '"' + " ".join(item.words).replace('"', '""') + '"'
        return quoted + "*" if item.prefix else quoted

    expression = "(" + " AND ".join(term(item) for item in query.included) + ")"
    for item in query.excluded:
        expression += f" NOT {term(item)}"
    return expression


#: SQLite virtual machine instructions between two looks at a read's deadline
#: (tens of microseconds of work: the look costs nothing beside it).
_PROGRESS_EVERY: Final = 10_000


def _run(job: Job[T], conn: _Connection, seconds: float | None = None) -> T:
    """Run ``job`` on ``conn``; past ``seconds`` (if given) interrupted by SQLite."""
    if seconds is None:
        return run_sync(job(conn))
    deadline = time.monotonic() + seconds
    conn.raw.set_progress_handler(lambda: time.monotonic() > deadline, _PROGRESS_EVERY)
    try:
        return run_sync(job(conn))
    finally:
        conn.raw.set_progress_handler(None, 0)


def _run_in_transaction(job: Job[T], conn: _Connection) -> T:
    conn.raw.execute("BEGIN IMMEDIATE")
    try:
        result = run_sync(job(conn))
        conn.raw.execute("COMMIT")
    except BaseException:
        _roll_back(conn.raw)
        raise
    return result


def _roll_back(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            logger.exception("rollback failed")
