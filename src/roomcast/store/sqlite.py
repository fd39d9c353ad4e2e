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
writer writes), so a history page never waits behind a commit.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sqlite3
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Final, TypeVar

from ..exceptions import StoreError
from ..protocol.messages import ChatMessage
from .base import DEDUPE_SECONDS, AppendResult
from .schema import LATEST_VERSION, MIGRATIONS, VERSION_TABLE

__all__ = ["SQLiteStore"]

logger = logging.getLogger("roomcast.store.sqlite")

T = TypeVar("T")

#: Most messages stored in one transaction.
MAX_BATCH: Final = 2000
#: Rows deleted per transaction when old history is pruned.
PRUNE_CHUNK: Final = 5000
#: Seconds between retention passes.
PRUNE_INTERVAL: Final = 3600.0

_COLUMNS: Final = "room, body, sender, seq, message_id, ts_ms"
_INSERT: Final = (
    "INSERT INTO messages (room, seq, message_id, sender, body, client_id, ts_ms)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_DEDUPE: Final = (
    f"SELECT {_COLUMNS} FROM messages"
    " WHERE sender = ? AND client_id = ? AND ts_ms >= ? ORDER BY ts_ms DESC LIMIT 1"
)
_SAVE_SEQ: Final = (
    "INSERT INTO rooms (name, last_seq, created_ms) VALUES (?, ?, ?)"
    " ON CONFLICT (name) DO UPDATE SET last_seq = excluded.last_seq"
)


class _Pending:
    __slots__ = ("client_id", "future", "room", "sender", "text")

    def __init__(
        self,
        room: str,
        sender: str,
        text: str,
        client_id: str | None,
        future: asyncio.Future[AppendResult],
    ) -> None:
        self.room = room
        self.sender = sender
        self.text = text
        self.client_id = client_id
        self.future = future


class SQLiteStore:
    """Room messages in a SQLite file.

    Args:
        path: the database file; created, with its schema, if missing.
        history_days: delete messages older than this many days (0 keeps
            everything). At least 1, so resends are recognised for 24 h.
        clock: wall-clock seconds, for message times and retention.
        busy_timeout: seconds a write waits for a lock held by another
            process before the batch fails.
    """

    def __init__(
        self,
        path: Path,
        *,
        history_days: int = 0,
        clock: Callable[[], float] = time.time,
        busy_timeout: float = 2.0,
    ) -> None:
        if history_days < 0:
            raise ValueError("history_days must be 0 (keep everything) or more")
        self.path = path
        self.history_days = history_days
        self._clock = clock
        self._busy_timeout = busy_timeout
        self._queue: list[_Pending] = []
        self._inflight: dict[tuple[str, str], asyncio.Future[AppendResult]] = {}
        self._writing = False
        self._kick_scheduled = False
        self._idle: list[asyncio.Future[None]] = []
        self._write_error: str | None = None
        self._closed = True
        self._loop: asyncio.AbstractEventLoop | None = None
        self._writer: ThreadPoolExecutor | None = None
        self._reader: ThreadPoolExecutor | None = None
        self._wconn: sqlite3.Connection | None = None
        self._rconn: sqlite3.Connection | None = None
        self._seqs: dict[str, int] = {}  # writer thread only
        self._pruner: asyncio.Task[None] | None = None

    # -- life cycle ----------------------------------------------------------

    async def open(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="roomcast-sqlite-write")
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="roomcast-sqlite-read")
        try:
            self._wconn = await self._loop.run_in_executor(self._writer, self._open_writer)
            self._rconn = await self._loop.run_in_executor(self._reader, self._connect)
        except sqlite3.Error as exc:
            await self._shutdown()
            raise StoreError(f"cannot open the database {self.path}: {exc}") from exc
        except StoreError:
            await self._shutdown()
            raise
        self._closed = False
        if self.history_days:
            # The first pass runs before the server accepts anyone, so no
            # client is told about messages that are about to go.
            await self._prune_logged()
            self._pruner = asyncio.ensure_future(self._prune_forever())
        logger.debug("storing messages in %s", self.path)

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=self._busy_timeout, isolation_level=None)
        return conn

    def _open_writer(self) -> sqlite3.Connection:
        conn = self._connect()
        try:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(f"{self.path} cannot use write-ahead logging (mode {mode})")
            conn.execute("PRAGMA synchronous = FULL")
            _migrate(conn, int(self._clock() * 1000))
        except BaseException:
            conn.close()
            raise
        return conn

    async def close(self) -> None:
        if self._closed:
            return
        await self.flush()
        self._closed = True
        if self._pruner is not None:
            self._pruner.cancel()
            await asyncio.gather(self._pruner, return_exceptions=True)
        await self._shutdown()

    async def _shutdown(self) -> None:
        loop = asyncio.get_running_loop()
        for executor, conn in ((self._writer, self._wconn), (self._reader, self._rconn)):
            if executor is None:
                continue
            if conn is not None:
                await loop.run_in_executor(executor, conn.close)
            executor.shutdown(wait=False)
        self._wconn = self._rconn = None
        self._writer = self._reader = None

    async def ping(self) -> None:
        if self._write_error is not None:
            raise StoreError(f"the last write failed: {self._write_error}")
        await self._read(lambda conn: conn.execute("SELECT 1").fetchone())

    # -- writes --------------------------------------------------------------

    def append(
        self, room: str, sender: str, text: str, *, client_id: str | None = None
    ) -> asyncio.Future[AppendResult]:
        loop = self._loop or asyncio.get_running_loop()
        future: asyncio.Future[AppendResult] = loop.create_future()
        if self._closed:
            future.set_exception(StoreError("the store is closed"))
            return future
        if client_id is not None:
            key = (sender, client_id)
            first = self._inflight.get(key)
            if first is not None:
                # A resend while the first is still being written.
                first.add_done_callback(functools.partial(_as_duplicate, future))
                return future
            self._inflight[key] = future
        self._queue.append(_Pending(room, sender, text, client_id, future))
        if not self._writing and not self._kick_scheduled:
            self._kick_scheduled = True
            loop.call_soon(self._kick)
        return future

    def _kick(self) -> None:
        self._kick_scheduled = False
        if self._writing or not self._queue or self._writer is None or self._loop is None:
            return
        batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
        self._writing = True
        job = self._loop.run_in_executor(self._writer, self._write, batch)
        job.add_done_callback(functools.partial(self._written, batch))

    def _write(self, batch: list[_Pending]) -> list[AppendResult]:
        """Store ``batch`` in one transaction (writer thread)."""
        conn = self._wconn
        assert conn is not None
        now_ms = int(self._clock() * 1000)
        cutoff = now_ms - DEDUPE_SECONDS * 1000
        seqs = self._seqs
        touched: dict[str, int] = {}
        results: list[AppendResult] = []
        execute = conn.execute
        try:
            execute("BEGIN IMMEDIATE")
            for item in batch:
                room = item.room
                if item.client_id is not None:
                    row = execute(_DEDUPE, (item.sender, item.client_id, cutoff)).fetchone()
                    if row is not None:
                        results.append(AppendResult(ChatMessage(*row), True))
                        continue
                seq = touched.get(room)
                if seq is None:
                    seq = seqs.get(room)
                    if seq is None:
                        row = execute("SELECT last_seq FROM rooms WHERE name = ?", (room,))
                        found = row.fetchone()
                        seq = found[0] if found is not None else 0
                seq += 1
                touched[room] = seq
                message_id = uuid.uuid4().hex
                execute(
                    _INSERT,
                    (room, seq, message_id, item.sender, item.text, item.client_id, now_ms),
                )
                results.append(
                    AppendResult(
                        ChatMessage(room, item.text, item.sender, seq, message_id, now_ms), False
                    )
                )
            for room, seq in touched.items():
                execute(_SAVE_SEQ, (room, seq, now_ms))
            execute("COMMIT")
        except BaseException:
            seqs.clear()
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    logger.exception("rollback failed")
            raise
        seqs.update(touched)
        return results

    def _written(self, batch: list[_Pending], job: asyncio.Future[list[AppendResult]]) -> None:
        """The writer thread finished ``batch``: resolve its futures in order."""
        self._writing = False
        for item in batch:
            if item.client_id is not None:
                key = (item.sender, item.client_id)
                if self._inflight.get(key) is item.future:
                    del self._inflight[key]
        error = job.exception() if not job.cancelled() else StoreError("write cancelled")
        if error is None:
            if self._write_error is not None:
                logger.warning("writes to %s work again", self.path)
                self._write_error = None
            for item, result in zip(batch, job.result(), strict=True):
                if not item.future.done():
                    item.future.set_result(result)
        else:
            reason = str(error) or type(error).__name__
            if self._write_error != reason:
                logger.error("cannot write to %s: %s", self.path, reason)
            self._write_error = reason
            for item in batch:
                if not item.future.done():
                    failure = StoreError(f"the message was not stored: {reason}")
                    failure.__cause__ = error
                    item.future.set_exception(failure)
        if self._queue:
            self._kick()
        else:
            idle, self._idle = self._idle, []
            for waiter in idle:
                if not waiter.done():
                    waiter.set_result(None)

    async def flush(self) -> None:
        if not self._writing and not self._queue:
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._idle.append(waiter)
        await waiter

    # -- reads ---------------------------------------------------------------

    async def _read(self, query: Callable[[sqlite3.Connection], T]) -> T:
        if self._closed and self._rconn is None:
            raise StoreError("the store is closed")
        conn = self._rconn
        assert conn is not None and self._reader is not None
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._reader, query, conn)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot read {self.path}: {exc}") from exc

    async def last_seq(self, room: str) -> int:
        return await self._read(functools.partial(_last_seq, room=room))

    async def first_seq(self, room: str) -> int:
        def query(conn: sqlite3.Connection) -> int:
            row = conn.execute("SELECT min(seq) FROM messages WHERE room = ?", (room,)).fetchone()
            if row[0] is not None:
                return int(row[0])
            return _last_seq(conn, room) + 1

        return await self._read(query)

    async def history(
        self, room: str, *, before: int | None = None, limit: int = 50
    ) -> tuple[list[ChatMessage], bool]:
        bound = before if before is not None else 2**62

        def query(conn: sqlite3.Connection) -> tuple[list[ChatMessage], bool]:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM messages WHERE room = ? AND seq < ?"
                " ORDER BY seq DESC LIMIT ?",
                (room, bound, limit + 1),
            ).fetchall()
            more = len(rows) > limit
            return [ChatMessage(*row) for row in reversed(rows[:limit])], more

        return await self._read(query)

    async def since(self, room: str, seq: int, *, limit: int) -> list[ChatMessage]:
        def query(conn: sqlite3.Connection) -> list[ChatMessage]:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM messages WHERE room = ? AND seq > ? ORDER BY seq LIMIT ?",
                (room, seq, limit),
            ).fetchall()
            return [ChatMessage(*row) for row in rows]

        return await self._read(query)

    # -- retention -----------------------------------------------------------

    async def prune(self) -> int:
        """Delete messages older than ``history_days``; return how many went."""
        if not self.history_days or self._writer is None:
            return 0
        cutoff = int((self._clock() - self.history_days * 86400) * 1000)
        loop = asyncio.get_running_loop()
        total = 0
        while True:
            try:
                count = await loop.run_in_executor(self._writer, self._prune_chunk, cutoff)
            except sqlite3.Error as exc:
                raise StoreError(f"cannot prune {self.path}: {exc}") from exc
            total += count
            if count < PRUNE_CHUNK:
                return total

    def _prune_chunk(self, cutoff_ms: int) -> int:
        conn = self._wconn
        assert conn is not None
        cursor = conn.execute(
            "DELETE FROM messages WHERE rowid IN"
            " (SELECT rowid FROM messages WHERE ts_ms < ? LIMIT ?)",
            (cutoff_ms, PRUNE_CHUNK),
        )
        return cursor.rowcount

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


def _last_seq(conn: sqlite3.Connection, room: str) -> int:
    row = conn.execute("SELECT last_seq FROM rooms WHERE name = ?", (room,)).fetchone()
    return int(row[0]) if row is not None else 0


def _as_duplicate(
    future: asyncio.Future[AppendResult], first: asyncio.Future[AppendResult]
) -> None:
    if future.done():
        return
    if first.cancelled():
        future.set_exception(StoreError("the first copy of this message was not stored"))
    elif (error := first.exception()) is not None:
        future.set_exception(StoreError(f"the message was not stored: {error}"))
    else:
        future.set_result(AppendResult(first.result().message, True))


def _migrate(conn: sqlite3.Connection, now_ms: int) -> None:
    """Bring the schema up to :data:`LATEST_VERSION`, one migration per transaction."""
    conn.execute(VERSION_TABLE)
    for migration in MIGRATIONS:
        conn.execute("BEGIN IMMEDIATE")  # re-read under the lock: another process may migrate
        try:
            current = conn.execute("SELECT coalesce(max(version), 0) FROM schema_version")
            version = current.fetchone()[0]
            if version > LATEST_VERSION:
                raise StoreError(
                    f"the database has schema version {version}; this roomcast knows up to "
                    f"{LATEST_VERSION}: upgrade roomcast"
                )
            if version >= migration.version:
                conn.execute("COMMIT")
                continue
            for statement in migration.statements:
                conn.execute(statement)
            conn.execute(
                "INSERT INTO schema_version (version, description, applied_ms) VALUES (?, ?, ?)",
                (migration.version, migration.description, now_ms),
            )
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        logger.debug("database schema migrated to version %d", migration.version)
