"""A deleted message's words leave the search index's own files, not only its results.

SQLite's FTS5 keeps a deleted row's words beside a delete marker until its
segments are merged; PostgreSQL's GIN index keeps every word it ever held
until it is rebuilt. Each store purges them after a delete; these tests read
the database files themselves for a word only the deleted message had.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Final

import asyncpg
import pytest

from roomcast.query import parse_query
from roomcast.store.base import Draft, SearchFilter, Store
from roomcast.store.postgres import PostgresStore
from tests.store.backends import database

#: A word no other message has, and no SQL or index metadata could hold.
SECRET = "zebraquokkaplinth"


async def fill(store: Store, batches: int) -> str:
    """Messages in ``batches`` separate batches (each a segment of the index); the id
    of the one in the middle that holds :data:`SECRET`."""
    secret_id = ""
    for batch in range(batches):
        texts = [f"message {batch} {i} shared words" for i in range(10)]
        if batch == batches // 2:
            texts[3] += f" {SECRET}"
        results = await asyncio.gather(*(store.append("room", "alice", text) for text in texts))
        if batch == batches // 2:
            secret_id = results[3].message.message_id
    return secret_id


async def found(store: Store, text: str) -> int:
    hits, _cursor = await store.search(SearchFilter(parse_query(text), None, limit=10))
    return len(hits)


async def until(check: object, seconds: float) -> None:
    """Wait until the coroutine function ``check`` returns 0 (or the time is up)."""
    deadline = time.monotonic() + seconds
    while await check() and time.monotonic() < deadline:  # type: ignore[operator]
        await asyncio.sleep(0.02)


def sqlite_copies(path: Path) -> int:
    """How many of the database's files (the database, its log) hold :data:`SECRET`."""
    return sum(SECRET.encode() in p.read_bytes() for p in path.parent.glob(path.name + "*"))


#: How each change takes the word away: a delete, or an edit to other words.
CHANGES: Final = {"delete": "", "edit": "plainer words"}


async def change(store: Store, kind: str, message_id: str) -> None:
    """Delete the message, or edit :data:`SECRET` out of it; search follows at once."""
    await store.submit(
        Draft("alice", room="room", kind=kind, target=message_id, text=CHANGES[kind])
    )
    assert await found(store, SECRET) == 0
    assert await found(store, "plainer") == (1 if kind == "edit" else 0)


@pytest.mark.parametrize("kind", CHANGES)
async def test_sqlite_merges_a_changed_messages_old_words_out_of_the_index_files(
    tmp_path: Path, kind: str
) -> None:
    """After a delete or an edit, the FTS5 segments are merged and no file holds the word."""
    async with database("sqlite", tmp_path) as db, db.opened() as store:
        assert isinstance(db.where, Path)
        path = db.where
        secret_id = await fill(store, 60)
        await store.flush()
        assert await found(store, SECRET) == 1
        assert sqlite_copies(path) >= 1  # the index holds it (the row too)
        await change(store, kind, secret_id)

        async def copies() -> int:
            return sqlite_copies(path)

        await until(copies, 5.0)
        assert await copies() == 0
        assert await found(store, "shared") == 10  # the rest of the index still answers


async def test_sqlite_finishes_an_owed_purge_when_it_closes(tmp_path: Path) -> None:
    """A store closed right after a delete merges the index before it lets go."""
    async with database("sqlite", tmp_path) as db:
        assert isinstance(db.where, Path)
        async with db.opened() as store:
            secret_id = await fill(store, 60)
            await store.submit(Draft("alice", room="room", kind="delete", target=secret_id))
        assert sqlite_copies(db.where) == 0
        async with db.opened() as store:
            assert await found(store, "shared") == 10


async def postgres_copies(url: str, relation: str | None = None) -> int:
    """How many files of the database's own directory (or of ``relation`` only) hold
    :data:`SECRET`, after a checkpoint."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("CHECKPOINT")
        data_dir = Path(await conn.fetchval("SHOW data_directory"))
        oid = await conn.fetchval("SELECT oid FROM pg_database WHERE datname = current_database()")
        path = None
        if relation is not None:
            path = data_dir / await conn.fetchval("SELECT pg_relation_filepath($1)", relation)
    finally:
        await conn.close()
    folder = data_dir / "base" / str(oid)
    files = [path] if path is not None else [p for p in folder.iterdir() if p.is_file()]
    try:
        return sum(SECRET.encode() in p.read_bytes() for p in files if p.exists())
    except PermissionError:
        pytest.skip("this user may not read PostgreSQL's data directory")


@pytest.mark.postgres
@pytest.mark.parametrize(
    ("kind", "relation"),
    # An edit leaves the old row version to autovacuum (only a delete erases the
    # row's text at once): its test reads the index's file alone.
    [("delete", None), ("edit", "messages_search")],
)
async def test_postgres_rebuilds_the_gin_index_without_a_changed_messages_old_words(
    tmp_path: Path, kind: str, relation: str | None
) -> None:
    """After a delete or an edit, the rebuilt GIN index (with the database) no longer holds it."""
    async with database("postgres", tmp_path) as db:
        assert isinstance(db.where, str)
        url = db.where
        async with db.opened(reindex_delay=0.1) as store:
            assert isinstance(store, PostgresStore)
            secret_id = await fill(store, 30)
            assert await found(store, SECRET) == 1
            assert await postgres_copies(url, relation) >= 1
            await change(store, kind, secret_id)

            async def copies() -> int:
                return await postgres_copies(url, relation)

            await until(copies, 10.0)
            assert await copies() == 0
            assert await found(store, "shared") == 10
