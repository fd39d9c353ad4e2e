"""Open a store of each kind for a test: memory, SQLite in a temp dir, or fresh PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from roomcast.store.base import Store
from roomcast.store.memory import MemoryStore
from roomcast.store.postgres import PostgresStore
from roomcast.store.sqlite import SQLiteStore
from tests.services import afresh_database


@asynccontextmanager
async def opened(kind: str, tmp_path: Path, **options: Any) -> AsyncIterator[Store]:
    """A ``kind`` store ("memory", "sqlite" or "postgres") built with ``options``, open."""
    if kind == "postgres":
        async with afresh_database() as url:
            async with _open(PostgresStore(url, **options)) as backend:
                yield backend
        return
    if kind == "memory":
        store: Store = MemoryStore(**options)
    else:
        store = SQLiteStore(tmp_path / f"{kind}.db", **options)
    async with _open(store) as backend:
        yield backend


@asynccontextmanager
async def _open(store: Store) -> AsyncIterator[Store]:
    await store.open()
    try:
        yield store
    finally:
        await store.close()
