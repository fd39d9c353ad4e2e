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
import contextvars
import functools
import json
import logging
import os
import sqlite3
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Final, TypeVar

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

__all__ = ["SQLiteStore"]

logger = logging.getLogger("roomcast.store.sqlite")

T = TypeVar("T")

#: Rows deleted per transaction when old history is pruned.
PRUNE_CHUNK: Final = 5000
#: Seconds between retention passes.
PRUNE_INTERVAL: Final = 3600.0

#: A room message's columns, in the order :func:`~.batch.chat_from_row` reads them.
_COLUMNS: Final = "room, body, sender, seq, message_id, ts_ms, file"
_INSERT: Final = (
    "INSERT INTO messages (room, seq, message_id, sender, body, client_id, ts_ms, file)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
_DEDUPE: Final = (
    f"SELECT {_COLUMNS} FROM messages"
    " WHERE sender = ? AND client_id = ? AND room = ? AND ts_ms >= ?"
    " ORDER BY ts_ms DESC LIMIT 1"
)
_SAVE_SEQ: Final = (
    "INSERT INTO rooms (name, last_seq, created_ms) VALUES (?, ?, ?)"
    " ON CONFLICT (name) DO UPDATE SET last_seq = excluded.last_seq"
)
#: A direct message's columns, in the order :func:`~.batch.direct_from_row` reads them.
_DIRECT_COLUMNS: Final = "d.sender, d.recipient, d.body, d.message_id, d.ts_ms, i.seq, d.file"
_DIRECT_DEDUPE: Final = (
    "SELECT message_id, recipient, body, ts_ms, file FROM direct_messages"
    " WHERE sender = ? AND client_id = ? AND recipient = ? AND ts_ms >= ?"
    " ORDER BY ts_ms DESC LIMIT 1"
)
_DIRECT_INSERT: Final = (
    "INSERT INTO direct_messages (message_id, sender, recipient, body, client_id, ts_ms, file)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
)
#: A message by id, from either table: a room message has a room, a direct
#: one a recipient (the last column). Each half is one primary-key or unique
#: index lookup.
_BY_ID: Final = (
    f"SELECT {_COLUMNS}, NULL FROM messages WHERE message_id = ?"
    " UNION ALL"
    " SELECT NULL, body, sender, NULL, message_id, ts_ms, file, recipient"
    " FROM direct_messages WHERE message_id = ?"
)


class SQLiteStore(BatchedAppends):
    """Room messages in a SQLite file.

    Args:
        path: the database file; created, with its schema, if missing.
        history_days: delete messages older than this many days (0 keeps
            everything). At least 1, so resends are recognised for 24 h.
        clock: wall-clock seconds, for message times and retention.
        busy_timeout: seconds a write waits for a lock held by another
            process before the batch fails.
        max_queued: most messages waiting for the writer; past it an
            append fails with :class:`~roomcast.exceptions.StoreBusy`.
    """

    def __init__(
        self,
        path: Path,
        *,
        history_days: int = 0,
        clock: Callable[[], float] = time.time,
        busy_timeout: float = 2.0,
        max_queued: int = MAX_QUEUED,
    ) -> None:
        if history_days < 0:
            raise ValueError("history_days must be 0 (keep everything) or more")
        self.path = path
        self.history_days = history_days
        self._clock = clock
        self._busy_timeout = busy_timeout
        self._queue = WriteQueue(max_queued)
        self._kick_scheduled = False
        self._write_error: str | None = None
        self._closed = True
        self._loop: asyncio.AbstractEventLoop | None = None
        self._writer: ThreadPoolExecutor | None = None
        self._reader: ThreadPoolExecutor | None = None
        self._wconn: sqlite3.Connection | None = None
        self._rconn: sqlite3.Connection | None = None
        self._seqs: dict[str, int] = {}  # writer thread only
        self._inbox_seqs: dict[str, int] = {}  # writer thread only
        self._pruner: asyncio.Task[None] | None = None
        #: Called with (messages, seconds) after each batch is written (metrics).
        self.on_batch: Callable[[int, float], None] | None = None
        self._batch_started = 0.0

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
        # The database holds password hashes: only the server's user may read
        # it (SQLite gives its -wal and -shm files the same mode).
        try:
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except FileExistsError:
            pass
        except OSError as exc:
            raise StoreError(f"cannot create the database {self.path}: {exc.strerror}") from exc
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
            future: asyncio.Future[Any] = loop.create_future()
            future.set_exception(StoreError("the store is closed"))
            return future
        future = self._queue.add(loop, room, recipient, sender, text, client_id, file)
        if not self._queue.busy and not self._kick_scheduled:
            self._kick_scheduled = True
            # A batch holds many connections' messages: its callbacks (and
            # log lines) run in a context of their own, not in the sender's.
            loop.call_soon(self._kick, context=contextvars.Context())
        return future

    def _kick(self) -> None:
        self._kick_scheduled = False
        queue = self._queue
        if queue.busy or not queue.items or self._writer is None or self._loop is None:
            return
        batch = queue.take()
        self._batch_started = time.perf_counter()
        job = self._loop.run_in_executor(self._writer, self._write, batch)
        job.add_done_callback(functools.partial(self._written, batch))

    def _write(self, batch: list[Pending]) -> list[AppendResult | DirectResult]:
        """Store ``batch`` in one transaction (writer thread)."""
        conn = self._wconn
        assert conn is not None
        now_ms = int(self._clock() * 1000)
        cutoff = now_ms - DEDUPE_SECONDS * 1000
        touched: dict[str, int] = {}
        inboxes: dict[str, int] = {}
        results: list[AppendResult | DirectResult] = []
        execute = conn.execute
        try:
            execute("BEGIN IMMEDIATE")
            for item in batch:
                if item.room is None:
                    results.append(self._write_direct(conn, item, now_ms, cutoff, inboxes))
                    continue
                room = item.room
                if item.client_id is not None:
                    row = execute(_DEDUPE, (item.sender, item.client_id, room, cutoff)).fetchone()
                    if row is not None:
                        results.append(AppendResult(chat_from_row(row), True))
                        continue
                seq = touched.get(room)
                if seq is None:
                    seq = self._seqs.get(room)
                    if seq is None:
                        seq = _last_seq(conn, room)
                seq += 1
                touched[room] = seq
                message_id = uuid.uuid4().hex
                execute(
                    _INSERT,
                    (
                        room,
                        seq,
                        message_id,
                        item.sender,
                        item.text,
                        item.client_id,
                        now_ms,
                        item.file_json,
                    ),
                )
                message = ChatMessage(
                    room, item.text, item.sender, seq, message_id, now_ms, item.file
                )
                results.append(AppendResult(message, False))
            for room, seq in touched.items():
                execute(_SAVE_SEQ, (room, seq, now_ms))
            for owner, seq in inboxes.items():
                execute("UPDATE users SET dm_seq = ? WHERE name = ?", (seq, owner))
            execute("COMMIT")
        except BaseException:
            self._seqs.clear()
            self._inbox_seqs.clear()
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    logger.exception("rollback failed")
            raise
        self._seqs.update(touched)
        self._inbox_seqs.update(inboxes)
        return results

    def _write_direct(
        self,
        conn: sqlite3.Connection,
        item: Pending,
        now_ms: int,
        cutoff: int,
        inboxes: dict[str, int],
    ) -> DirectResult:
        """Store one direct message inside the batch's transaction (writer thread)."""
        sender, recipient = item.sender, item.recipient
        assert recipient is not None
        if item.client_id is not None:
            key = (sender, item.client_id, recipient, cutoff)
            row = conn.execute(_DIRECT_DEDUPE, key).fetchone()
            if row is not None:
                message_id, to, body, ts_ms, file = row
                seqs = dict(
                    conn.execute(
                        "SELECT owner, seq FROM inbox WHERE message_id = ?", (message_id,)
                    ).fetchall()
                )
                message = DirectMessage(
                    sender, to, body, message_id, ts_ms, file=file_from_column(file)
                )
                return DirectResult(message, seqs.get(sender, 0), seqs.get(to, 0), True)
        message_id = uuid.uuid4().hex
        conn.execute(
            _DIRECT_INSERT,
            (message_id, sender, recipient, item.text, item.client_id, now_ms, item.file_json),
        )
        seqs = {}
        for owner in dict.fromkeys((sender, recipient)):
            seq = inboxes.get(owner)
            if seq is None:
                seq = self._inbox_seqs.get(owner)
                if seq is None:
                    seq = _dm_seq(conn, owner)
            seq += 1
            inboxes[owner] = seqs[owner] = seq
            conn.execute(
                "INSERT INTO inbox (owner, seq, message_id) VALUES (?, ?, ?)",
                (owner, seq, message_id),
            )
        message = DirectMessage(sender, recipient, item.text, message_id, now_ms, file=item.file)
        return DirectResult(message, seqs[sender], seqs[recipient], False)

    def _written(
        self, batch: list[Pending], job: asyncio.Future[list[AppendResult | DirectResult]]
    ) -> None:
        """The writer thread finished ``batch``: resolve its futures in order."""
        if self.on_batch is not None:
            self.on_batch(len(batch), time.perf_counter() - self._batch_started)
        error = job.exception() if not job.cancelled() else StoreError("write cancelled")
        if error is None:
            if self._write_error is not None:
                logger.warning("writes to %s work again", self.path)
                self._write_error = None
            self._queue.finish(batch, job.result())
        else:
            reason = str(error) or type(error).__name__
            if self._write_error != reason:
                logger.error("cannot write to %s: %s", self.path, reason)
            self._write_error = reason
            self._queue.finish(batch, error, reason)
        if self._queue.items:
            self._kick()
        else:
            self._queue.wake_idle()

    async def flush(self) -> None:
        await self._queue.wait_idle()

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
            return [chat_from_row(row) for row in reversed(rows[:limit])], more

        return await self._read(query)

    async def since(self, room: str, seq: int, *, limit: int) -> list[ChatMessage]:
        def query(conn: sqlite3.Connection) -> list[ChatMessage]:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM messages WHERE room = ? AND seq > ? ORDER BY seq LIMIT ?",
                (room, seq, limit),
            ).fetchall()
            return [chat_from_row(row) for row in rows]

        return await self._read(query)

    # -- direct messages -------------------------------------------------------

    async def direct_last_seq(self, owner: str) -> int:
        def query(conn: sqlite3.Connection) -> int:
            row = conn.execute("SELECT dm_seq FROM users WHERE name = ?", (owner,)).fetchone()
            return int(row[0]) if row is not None else 0

        return await self._read(query)

    async def direct_history(
        self, owner: str, *, before: int | None = None, limit: int = 50
    ) -> tuple[list[DirectMessage], bool]:
        bound = before if before is not None else 2**62
        query = functools.partial(_inbox_page, owner=owner, seq=bound, after=False, limit=limit)
        return await self._read(query)

    async def direct_since(
        self, owner: str, seq: int, *, limit: int
    ) -> tuple[list[DirectMessage], bool]:
        query = functools.partial(_inbox_page, owner=owner, seq=seq, after=True, limit=limit)
        return await self._read(query)

    async def message_by_id(self, message_id: str) -> ChatMessage | DirectMessage | None:
        def query(conn: sqlite3.Connection) -> ChatMessage | DirectMessage | None:
            row = conn.execute(_BY_ID, (message_id, message_id)).fetchone()
            if row is None:
                return None
            room, body, sender, _seq, found_id, ts_ms, file, recipient = row
            if room is None:
                return DirectMessage(
                    sender, recipient, body, found_id, ts_ms, file=file_from_column(file)
                )
            return chat_from_row(row[:7])

        return await self._read(query)

    async def file_digests(self) -> set[str]:
        def query(conn: sqlite3.Connection) -> set[str]:
            rows = conn.execute(
                "SELECT file FROM messages WHERE file IS NOT NULL"
                " UNION SELECT file FROM direct_messages WHERE file IS NOT NULL"
            )
            return {FileInfo.from_json(text).sha256 for (text,) in rows}

        return await self._read(query)

    # -- users and rooms ---------------------------------------------------------

    async def _write_now(self, job: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``job`` in its own transaction on the writer thread."""
        if self._closed or self._writer is None:
            raise StoreError("the store is closed")
        conn = self._wconn
        assert conn is not None

        def run() -> T:
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = job(conn)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            return result

        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._writer, run)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot write to {self.path}: {exc}") from exc

    async def create_user(self, name: str, password_hash: str) -> bool:
        now_ms = int(self._clock() * 1000)

        def job(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute(
                "INSERT INTO users (name, name_key, password_hash, created_ms)"
                " VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (name, name.lower(), password_hash, now_ms),
            )
            return cursor.rowcount == 1

        return await self._write_now(job)

    async def get_user(self, name: str) -> StoredUser | None:
        def query(conn: sqlite3.Connection) -> StoredUser | None:
            row = conn.execute(
                "SELECT name, password_hash FROM users WHERE name_key = ?", (name.lower(),)
            ).fetchone()
            return StoredUser(*row) if row is not None else None

        return await self._read(query)

    async def create_room(
        self, name: str, *, owner: str, private: bool, members: frozenset[str]
    ) -> bool:
        now_ms = int(self._clock() * 1000)

        def job(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute(
                "INSERT INTO rooms (name, last_seq, created_ms, private, owner)"
                " VALUES (?, 0, ?, ?, ?) ON CONFLICT DO NOTHING",
                (name, now_ms, int(private), owner),
            )
            if cursor.rowcount != 1:
                return False
            _insert_members(conn, name, members, now_ms)
            return True

        return await self._write_now(job)

    async def room_access(self, name: str) -> RoomAccess | None:
        return await self._read(functools.partial(_room_access, name=name))

    async def file_bytes_since(self, sender: str, since_ms: int) -> int:
        def query(conn: sqlite3.Connection) -> int:
            total = 0
            for table in ("messages", "direct_messages"):
                row = conn.execute(
                    f"SELECT COALESCE(SUM(json_extract(file, '$.size')), 0) FROM {table}"
                    " WHERE sender = ? AND ts_ms >= ? AND file IS NOT NULL",
                    (sender, since_ms),
                ).fetchone()
                total += int(row[0])
            return total

        return await self._read(query)

    async def known_rooms(self, names: list[str]) -> set[str]:
        def query(conn: sqlite3.Connection) -> set[str]:
            rows = conn.execute(
                "SELECT name FROM rooms WHERE name IN (SELECT value FROM json_each(?))",
                (json.dumps(names),),
            ).fetchall()
            return {row[0] for row in rows}

        return await self._read(query) if names else set()

    async def add_room_members(self, name: str, members: frozenset[str]) -> None:
        now_ms = int(self._clock() * 1000)
        await self._write_now(lambda conn: _insert_members(conn, name, members, now_ms))

    async def list_rooms(self, user: str | None) -> list[RoomAccess]:
        def query(conn: sqlite3.Connection) -> list[RoomAccess]:
            rows = conn.execute(
                "SELECT name FROM rooms WHERE private = 0"
                " OR owner = ? OR name IN (SELECT room FROM room_members WHERE name = ?)"
                " ORDER BY name",
                (user, user),
            ).fetchall()
            found = [_room_access(conn, row[0]) for row in rows]
            return [access for access in found if access is not None]

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
        conn.execute("BEGIN IMMEDIATE")
        try:
            cursor = conn.execute(
                "DELETE FROM messages WHERE rowid IN"
                " (SELECT rowid FROM messages WHERE ts_ms < ? LIMIT ?)",
                (cutoff_ms, PRUNE_CHUNK),
            )
            removed = cursor.rowcount
            old = conn.execute(
                "SELECT message_id FROM direct_messages WHERE ts_ms < ? LIMIT ?",
                (cutoff_ms, PRUNE_CHUNK),
            ).fetchall()
            conn.executemany("DELETE FROM inbox WHERE message_id = ?", old)
            conn.executemany("DELETE FROM direct_messages WHERE message_id = ?", old)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return removed + len(old)

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


def _inbox_page(
    conn: sqlite3.Connection, *, owner: str, seq: int, after: bool, limit: int
) -> tuple[list[DirectMessage], bool]:
    """Up to ``limit`` of ``owner``'s direct messages after (or before) ``seq``, oldest first."""
    where, order = ("i.seq > ?", "") if after else ("i.seq < ?", " DESC")
    rows = conn.execute(
        f"SELECT {_DIRECT_COLUMNS} FROM inbox i"
        " JOIN direct_messages d ON d.message_id = i.message_id"
        f" WHERE i.owner = ? AND {where} ORDER BY i.seq{order} LIMIT ?",
        (owner, seq, limit + 1),
    ).fetchall()
    page = rows[:limit] if after else list(reversed(rows[:limit]))
    return [direct_from_row(row) for row in page], len(rows) > limit


def _room_access(conn: sqlite3.Connection, name: str) -> RoomAccess | None:
    row = conn.execute("SELECT private, owner FROM rooms WHERE name = ?", (name,)).fetchone()
    if row is None:
        return None
    members = conn.execute("SELECT name FROM room_members WHERE room = ?", (name,)).fetchall()
    return RoomAccess(name, bool(row[0]), row[1], frozenset(m[0] for m in members))


def _insert_members(
    conn: sqlite3.Connection, room: str, members: frozenset[str], now_ms: int
) -> None:
    conn.executemany(
        "INSERT INTO room_members (room, name, added_ms) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
        [(room, member, now_ms) for member in sorted(members)],
    )


def _last_seq(conn: sqlite3.Connection, room: str) -> int:
    row = conn.execute("SELECT last_seq FROM rooms WHERE name = ?", (room,)).fetchone()
    return int(row[0]) if row is not None else 0


def _dm_seq(conn: sqlite3.Connection, owner: str) -> int:
    row = conn.execute("SELECT dm_seq FROM users WHERE name = ?", (owner,)).fetchone()
    if row is None:
        raise sqlite3.IntegrityError(f"no user {owner!r} for a direct message")
    return int(row[0])


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
