"""What the SQLite store adds to the contract: a file that outlives the process."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from roomcast.exceptions import StoreError
from roomcast.protocol.messages import DirectMessage, FileInfo
from roomcast.store.schema import LATEST_VERSION, MIGRATIONS, VERSION_TABLE
from roomcast.store.sqlite import SQLiteStore
from tests.fakes import Clock

DAY = 86400.0


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "roomcast.db"


@pytest.fixture
async def store(path: Path) -> AsyncIterator[SQLiteStore]:
    backend = SQLiteStore(path, busy_timeout=0.2)
    await backend.open()
    yield backend
    await backend.close()


async def test_reopened_store_keeps_messages_seqs_and_dedupe(path: Path) -> None:
    """After a close and reopen, history, the next seq and resend detection carry on."""
    first = SQLiteStore(path)
    await first.open()
    stored = await first.append("r", "ann", "one", client_id="c1")
    await first.append("r", "bob", "two")
    await first.close()

    second = SQLiteStore(path)
    await second.open()
    try:
        again = await second.append("r", "ann", "one", client_id="c1")
        assert again.duplicate and again.message == stored.message
        third = await second.append("r", "ann", "three")
        assert third.message.seq == 3
        messages, more = await second.history("r")
        assert [(m.seq, m.message, m.sender) for m in messages] == [
            (1, "one", "ann"),
            (2, "two", "bob"),
            (3, "three", "ann"),
        ]
        assert not more
    finally:
        await second.close()


async def test_close_stores_what_was_queued(path: Path) -> None:
    """Appends still queued when close is called are written before it returns."""
    store = SQLiteStore(path)
    await store.open()
    futures = [store.append("r", "ann", f"m{i}") for i in range(20)]
    await store.close()
    assert all(f.done() and not f.cancelled() and f.exception() is None for f in futures)
    reopened = SQLiteStore(path)
    await reopened.open()
    try:
        assert await reopened.last_seq("r") == 20
    finally:
        await reopened.close()


async def test_schema_version_is_recorded(store: SQLiteStore, path: Path) -> None:
    """A new database records every migration in schema_version."""
    with sqlite3.connect(path) as conn:
        versions = [row[0] for row in conn.execute("SELECT version FROM schema_version")]
    assert versions == list(range(1, LATEST_VERSION + 1))


async def test_version_2_database_gains_file_columns(path: Path) -> None:
    """A database from before file messages migrates to 3; its messages come back as text."""
    with sqlite3.connect(path, isolation_level=None) as conn:
        conn.execute(VERSION_TABLE)
        for migration in MIGRATIONS[:2]:
            for statement in migration.statements:
                conn.execute(statement)
            conn.execute(
                "INSERT INTO schema_version (version, description, applied_ms) VALUES (?, ?, 0)",
                (migration.version, migration.description),
            )
        conn.execute(
            "INSERT INTO messages (room, seq, message_id, sender, body, client_id, ts_ms)"
            " VALUES ('r', 1, 'old1', 'ann', 'from v2', NULL, 5)"
        )
        conn.execute("INSERT INTO rooms (name, last_seq, created_ms) VALUES ('r', 1, 5)")
    conn.close()
    store = SQLiteStore(path)
    await store.open()
    try:
        [old], _ = await store.history("r")
        assert (old.seq, old.message, old.file) == (1, "from v2", None)
        added = await store.append("r", "bob", "", file=FileInfo("a.txt", "text/plain", 1, "0f"))
        assert added.message.seq == 2
        assert await store.message_by_id("old1") == old
    finally:
        await store.close()
    with sqlite3.connect(path) as conn:
        versions = [row[0] for row in conn.execute("SELECT version FROM schema_version")]
    conn.close()
    assert versions == [1, 2, 3, 4] == list(range(1, LATEST_VERSION + 1))


async def test_reopened_store_keeps_file_messages(path: Path) -> None:
    """Room and direct file messages, and their dedupe, outlive a close and reopen."""
    photo = FileInfo("cat.png", "image/png", 1234, "ab" * 32)
    first = SQLiteStore(path)
    await first.open()
    for name in ("ann", "bob"):
        await first.create_user(name, "h")
    room = await first.append("r", "ann", "", client_id="f1", file=photo)
    direct = await first.append_direct("ann", "bob", "", client_id="f2", file=photo)
    await first.close()

    second = SQLiteStore(path)
    await second.open()
    try:
        again = await second.append("r", "ann", "", client_id="f1", file=photo)
        assert again.duplicate and again.message == room.message
        resent = await second.append_direct("ann", "bob", "", client_id="f2", file=photo)
        assert resent.duplicate and resent.message == direct.message
        assert (await second.since("r", 0, limit=5)) == [room.message]
        [listed], _ = await second.direct_history("bob")
        assert listed.file == photo and listed.seq == 1
        found = await second.message_by_id(direct.message.message_id)
        assert isinstance(found, DirectMessage) and found.file == photo
    finally:
        await second.close()


async def test_newer_schema_is_refused(path: Path) -> None:
    """A database migrated by a newer roomcast is refused with a clear StoreError."""
    store = SQLiteStore(path)
    await store.open()
    await store.close()
    with sqlite3.connect(path) as conn:
        conn.execute(
            "INSERT INTO schema_version (version, description, applied_ms) VALUES (999, 'x', 0)"
        )
    with pytest.raises(StoreError, match="schema version 999"):
        await SQLiteStore(path).open()


async def test_not_a_database_is_a_store_error(path: Path) -> None:
    """A file that is not SQLite fails open with a StoreError naming it."""
    path.write_bytes(b"this is not a database, just text " * 100)
    with pytest.raises(StoreError, match=str(path)):
        await SQLiteStore(path).open()


async def test_locked_database_fails_the_batch_then_recovers(
    store: SQLiteStore, path: Path
) -> None:
    """While another process holds the lock, appends fail and ping says so; then seqs go on."""
    await store.append("r", "ann", "before")
    locker = sqlite3.connect(path, isolation_level=None)
    try:
        locker.execute("BEGIN EXCLUSIVE")
        with pytest.raises(StoreError, match="not stored"):
            await store.append("r", "ann", "during", client_id="d1")
        with pytest.raises(StoreError):
            await store.ping()
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    after = await store.append("r", "ann", "during", client_id="d1")
    assert not after.duplicate and after.message.seq == 2
    await store.ping()
    messages, _ = await store.history("r")
    assert [m.message for m in messages] == ["before", "during"]


async def test_retention_prunes_old_messages_and_moves_first_seq(path: Path) -> None:
    """With history_days, older messages go, first_seq moves up, last_seq stays."""
    clock = Clock()
    store = SQLiteStore(path, history_days=1, clock=clock)
    await store.open()
    try:
        for i in range(3):
            await store.append("r", "ann", f"old{i}")
        clock.now += 2 * DAY
        await store.append("r", "ann", "new")
        assert await store.prune() == 3
        assert await store.first_seq("r") == 4
        assert await store.last_seq("r") == 4
        assert [m.seq for m in await store.since("r", 0, limit=10)] == [4]
        messages, more = await store.history("r")
        assert [m.message for m in messages] == ["new"] and not more
        clock.now += 2 * DAY
        assert await store.prune() == 1
        assert await store.first_seq("r") == 5
        assert (await store.append("r", "ann", "next")).message.seq == 5
    finally:
        await store.close()


async def test_store_without_retention_prunes_nothing(store: SQLiteStore) -> None:
    """history_days 0 keeps everything."""
    await store.append("r", "ann", "x")
    assert await store.prune() == 0
    assert await store.first_seq("r") == 1


async def test_reads_run_while_a_batch_is_written(store: SQLiteStore) -> None:
    """History can be read while appends are queued; it sees what was committed."""
    await store.append("r", "ann", "committed")
    pending = [store.append("r", "ann", f"p{i}") for i in range(200)]
    messages, _ = await store.history("r", limit=100)
    assert messages[0].message == "committed"
    await asyncio.gather(*pending)
    assert await store.last_seq("r") == 201


async def test_append_after_close_fails(path: Path) -> None:
    """A closed store refuses appends with StoreError instead of hanging."""
    store = SQLiteStore(path)
    await store.open()
    await store.close()
    with pytest.raises(StoreError, match="closed"):
        await store.append("r", "ann", "x")


async def test_database_file_is_private(store: SQLiteStore, path: Path) -> None:
    """The database (it holds password hashes) is readable by the server's user only."""
    await store.append("r", "ann", "x")
    assert path.stat().st_mode & 0o777 == 0o600
    wal = path.with_name(path.name + "-wal")
    assert wal.stat().st_mode & 0o777 == 0o600
