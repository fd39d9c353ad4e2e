"""What only the SQLite store has: a file of its own, locks between processes, its threads.

Reopening, migrations, retention and everything else SQLite shares with
PostgreSQL is in test_contract.py.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from roomcast.exceptions import StoreError
from roomcast.store.sql import run_sync
from roomcast.store.sqlite import SQLiteStore


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "roomcast.db"


@pytest.fixture
async def store(path: Path) -> AsyncIterator[SQLiteStore]:
    backend = SQLiteStore(path, busy_timeout=0.2)
    await backend.open()
    yield backend
    await backend.close()


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


async def test_database_file_is_private(store: SQLiteStore, path: Path) -> None:
    """The database (it holds password hashes) is readable by the server's user only."""
    await store.append("r", "ann", "x")
    assert path.stat().st_mode & 0o777 == 0o600
    wal = path.with_name(path.name + "-wal")
    assert wal.stat().st_mode & 0o777 == 0o600


def test_a_job_that_waits_for_something_else_is_refused() -> None:
    """A shared job runs on SQLite's thread in one step: one that awaits anything else fails."""

    async def job() -> None:
        await asyncio.sleep(0)

    with pytest.raises(RuntimeError, match="awaited something other"):
        run_sync(job())
