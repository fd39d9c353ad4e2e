"""A deleted account leaves the database's files, not only its answers.

After ``delete_user``, the password hash and the texts the user wrote (room
messages, direct messages, and the edits of both) are in no file of the
database: SQLite's database and its log, read byte by byte; PostgreSQL's
row versions, live or dead, of the tables (as ``pageinspect`` reads the
pages) and its search indexes' files. Another user's words stay.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Final

import asyncpg
import pytest

from roomcast.query import parse_query
from roomcast.store.base import Draft, SearchFilter, Store
from roomcast.store.postgres import PostgresStore
from tests.store.backends import database

#: The user's password hash, and words only their texts hold.
HASH: Final = "$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHQ$quokkahashzebrapasswordvalue"
ROOM_WORD: Final = "zebraquokkaplinth"
ROOM_EDIT: Final = "walrusonyxmarble"
DIRECT_WORD: Final = "lemurtopazcanyon"
DIRECT_EDIT: Final = "otterjadeharbour"
SECRETS: Final = (HASH, ROOM_WORD, ROOM_EDIT, DIRECT_WORD, DIRECT_EDIT)
#: What bob says, which stays.
KEPT: Final = "bobkeepsthisword"


async def fill(store: Store) -> None:
    """ann and bob talk in several batches (several index segments); ann's texts hold
    the secret words, two of them as edits of a room and of a direct message."""
    assert await store.create_user("ann", HASH)
    assert await store.create_user("bob", "$argon2id$bobs-own-hash")
    for batch in range(20):
        texts = [f"shared words {batch} {i}" for i in range(5)]
        if batch == 10:
            texts[2] += f" {ROOM_WORD}"
        await asyncio.gather(*(store.append("lobby", "ann", text) for text in texts))
        await store.append("lobby", "bob", f"{KEPT} {batch}")
    draft = await store.append("lobby", "ann", "a draft")
    await store.append_direct("ann", "bob", f"psst {DIRECT_WORD}")
    direct = await store.append_direct("ann", "bob", "another draft")
    await store.append_direct("bob", "ann", f"{KEPT} back")
    target = draft.message.message_id
    await store.submit(Draft("ann", room="lobby", kind="edit", target=target, text=ROOM_EDIT))
    target = direct.message.message_id
    await store.submit(Draft("ann", to="bob", kind="edit", target=target, text=DIRECT_EDIT))
    await store.flush()


async def searched(store: Store, word: str) -> int:
    hits, _ = await store.search(SearchFilter(parse_query(word), "bob", limit=50))
    return len(hits)


async def until_none(count: Callable[[], Awaitable[int]], seconds: float) -> int:
    """Wait until ``count`` says 0 (or the time is up); its last answer."""
    deadline = time.monotonic() + seconds
    while (left := await count()) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return left


def sqlite_holding(path: Path) -> list[str]:
    """The secrets the database's files (the database and its log) hold."""
    files = [p for p in path.parent.glob(path.name + "*") if p.is_file()]
    data = [p.read_bytes() for p in files]
    return [secret for secret in SECRETS if any(secret.encode() in d for d in data)]


async def test_sqlite_files_keep_nothing_of_a_deleted_account(tmp_path: Path) -> None:
    """After delete_user, neither the .db file nor its -wal holds the hash or ann's words."""
    async with database("sqlite", tmp_path) as db, db.opened() as store:
        assert isinstance(db.where, Path)
        path = db.where
        await fill(store)
        assert await searched(store, ROOM_EDIT) == 1
        assert sqlite_holding(path) == list(SECRETS)

        assert await store.delete_user("ann", 1) == []

        async def left() -> int:
            return len(sqlite_holding(path))

        assert await until_none(left, 10.0) == 0, sqlite_holding(path)
        for word in SECRETS[1:]:
            assert await searched(store, word) == 0
        assert await searched(store, KEPT) == 21
        assert KEPT.encode() in b"".join(p.read_bytes() for p in path.parent.glob("*.db*"))


async def postgres_holding(url: str) -> list[str]:
    """The secrets in any row version (live or dead) of the account's tables and their
    TOAST, as the pages are now, and in the search indexes' files after a checkpoint."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("CREATE EXTENSION IF NOT EXISTS pageinspect")
        relations = [
            row[0]
            for row in await conn.fetch(
                "SELECT c.oid::regclass::text FROM pg_class c WHERE c.relname = ANY($1)"
                " UNION SELECT t.oid::regclass::text FROM pg_class c JOIN pg_class t"
                " ON t.oid = c.reltoastrelid WHERE c.relname = ANY($1)",
                ["users", "messages", "direct_messages", "notifications", "sessions"],
            )
        ]
        holding = set()
        for secret in SECRETS:
            for relation in relations:
                if await versions_holding(conn, relation, secret):
                    holding.add(secret)
        await conn.execute("CHECKPOINT")
        data_dir = Path(await conn.fetchval("SHOW data_directory"))
        indexes = [
            data_dir / await conn.fetchval("SELECT pg_relation_filepath($1)", index)
            for index in ("messages_search", "direct_messages_search")
        ]
    finally:
        await conn.close()
    try:
        data = [p.read_bytes() for p in indexes if p.exists()]
    except PermissionError:
        pytest.skip("this user may not read PostgreSQL's data directory")
    holding.update(word for word in SECRETS[1:] if any(word.encode() in d for d in data))
    return [secret for secret in SECRETS if secret in holding]


async def versions_holding(conn: Any, relation: str, text: str) -> int:
    """How many row versions of ``relation`` hold ``text``'s bytes (``pageinspect``)."""
    return int(
        await conn.fetchval(
            "SELECT count(*) FROM generate_series(0, pg_relation_size($1::regclass) / 8192 - 1)"
            " AS b, heap_page_items(get_raw_page($1::text, b::int)) AS item"
            " WHERE position($2::bytea IN item.t_data) > 0",
            relation,
            text.encode(),
        )
    )


@pytest.mark.postgres
async def test_postgres_keeps_nothing_of_a_deleted_account(tmp_path: Path) -> None:
    """After delete_user, no row version or rebuilt search index holds the hash or her words."""
    async with database("postgres", tmp_path) as db:
        assert isinstance(db.where, str)
        url = db.where
        async with db.opened(reindex_delay=0.1) as store:
            assert isinstance(store, PostgresStore)
            await fill(store)
            assert await postgres_holding(url) == list(SECRETS)

            assert await store.delete_user("ANN", 1) == []

            async def left() -> int:
                return len(await postgres_holding(url))

            assert await until_none(left, 20.0) == 0, await postgres_holding(url)
            for word in SECRETS[1:]:
                assert await searched(store, word) == 0
            assert await searched(store, KEPT) == 21
