"""Open a store of each kind for a test: memory, SQLite in a temp dir, or fresh PostgreSQL."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg

from roomcast.store.base import Store
from roomcast.store.memory import MemoryStore
from roomcast.store.postgres import PostgresStore
from roomcast.store.sqlite import SQLiteStore
from tests.services import afresh_database


@asynccontextmanager
async def opened(kind: str, tmp_path: Path, **options: Any) -> AsyncIterator[Store]:
    """A ``kind`` store ("memory", "sqlite" or "postgres") built with ``options``, open."""
    if kind == "memory":
        async with _open(MemoryStore(**options)) as backend:
            yield backend
        return
    async with database(kind, tmp_path) as db:
        async with db.opened(**options) as backend:
            yield backend


class Database:
    """One database of a durable kind: stores opened on it, one after another, and raw access.

    Raw access goes to the database itself (sqlite3, asyncpg), never through
    the store, so a test can set up or check what a store must cope with.
    """

    def __init__(self, kind: str, where: Path | str) -> None:
        self.kind = kind
        self.where = where

    def store(self, **options: Any) -> SQLiteStore | PostgresStore:
        """A store on this database, not yet open."""
        if isinstance(self.where, Path):
            return SQLiteStore(self.where, **options)
        return PostgresStore(self.where, **options)

    @asynccontextmanager
    async def opened(self, **options: Any) -> AsyncIterator[SQLiteStore | PostgresStore]:
        """A store on this database, open for the block."""
        async with _open(self.store(**options)) as backend:
            yield backend

    async def fetch(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        """The rows of ``sql`` (``$1`` placeholders), read straight from the database."""
        if isinstance(self.where, Path):
            conn = sqlite3.connect(self.where, isolation_level=None)
            try:
                return conn.execute(re.sub(r"\$(\d+)", r"?\1", sql), args).fetchall()
            finally:
                conn.close()
        aconn = await asyncpg.connect(self.where)
        try:
            return [tuple(row) for row in await aconn.fetch(sql, *args)]
        finally:
            await aconn.close()

    async def execute(self, *statements: str) -> None:
        """Run ``statements`` (no parameters) straight on the database, each on its own."""
        if isinstance(self.where, Path):
            conn = sqlite3.connect(self.where, isolation_level=None)
            try:
                for statement in statements:
                    conn.execute(statement)
            finally:
                conn.close()
            return
        aconn = await asyncpg.connect(self.where)
        try:
            for statement in statements:
                await aconn.execute(statement)
        finally:
            await aconn.close()


@asynccontextmanager
async def database(kind: str, tmp_path: Path) -> AsyncIterator[Database]:
    """An empty database of ``kind`` ("sqlite" or "postgres"), removed afterwards."""
    if kind == "postgres":
        async with afresh_database() as url:
            yield Database(kind, url)
    else:
        yield Database(kind, tmp_path / f"{kind}.db")


@asynccontextmanager
async def _open(store: Store) -> AsyncIterator[Any]:
    await store.open()
    try:
        yield store
    finally:
        await store.close()
