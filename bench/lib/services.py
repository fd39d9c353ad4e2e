"""PostgreSQL and Redis for the scale-out scenarios (``persist-pg``, ``crossnode``).

Each measurement gets a fresh database, ``roomcast_bench_<hex>``, created on
the server's ``postgres`` database with asyncpg and dropped afterwards
(``DROP DATABASE ... WITH (FORCE)``), and a fresh Redis key prefix,
``roomcast-bench-<hex>:``, whose keys are deleted afterwards (``SCAN MATCH
prefix*`` + ``UNLINK``). Both clients come with roomcast (its dependencies).

It also finds the PID of the Redis (``INFO server``, when that is a local
``redis-server``) so a result can say what its CPU cost (bench/lib/measure.py
reads it, and the local PostgreSQL's, from /proc).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import redis

from bench.lib.measure import process_name

DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
TIMEOUT = 5.0


def with_database(url: str, name: str) -> str:
    """``url`` with its database (path) replaced by ``name``."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


def where(url: str) -> str:
    """``host:port`` of a URL, without credentials."""
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port or ''}"


async def pg_execute(url: str, sql: str) -> None:
    conn = await asyncpg.connect(url, timeout=TIMEOUT)
    try:
        await conn.execute(sql, timeout=60)
    finally:
        await conn.close(timeout=TIMEOUT)


def pg_problem(url: str) -> str | None:
    """None if PostgreSQL at ``url`` answers; otherwise why not, in one line."""
    try:
        asyncio.run(pg_execute(url, "SELECT 1"))
    except Exception as exc:  # any failure means: skip the scenario, with this note
        return f"PostgreSQL at {where(url)} is not answering ({type(exc).__name__}: {exc})"
    return None


def redis_problem(url: str) -> str | None:
    """None if Redis at ``url`` answers PING; otherwise why not, in one line."""
    try:
        client = redis.Redis.from_url(url, socket_timeout=TIMEOUT, socket_connect_timeout=TIMEOUT)
        try:
            client.ping()
        finally:
            client.close()
    except Exception as exc:  # any failure means: skip the scenario, with this note
        return f"Redis at {where(url)} is not answering ({type(exc).__name__}: {exc})"
    return None


@dataclass
class Database:
    """A fresh database for one measurement; ``url`` is what roomcast gets."""

    admin_url: str
    name: str

    @property
    def url(self) -> str:
        return with_database(self.admin_url, self.name)

    @classmethod
    def create(cls, admin_url: str) -> Database:
        name = f"roomcast_bench_{secrets.token_hex(6)}"
        asyncio.run(pg_execute(admin_url, f"CREATE DATABASE {name}"))
        return cls(admin_url, name)

    def size_mb(self) -> float | None:
        """The database's size on disk (pg_database_size), MB."""

        async def size() -> int:
            conn = await asyncpg.connect(self.admin_url, timeout=TIMEOUT)
            try:
                value: int = await conn.fetchval("SELECT pg_database_size($1)", self.name)
                return value
            finally:
                await conn.close(timeout=TIMEOUT)

        try:
            return round(asyncio.run(size()) / 2**20, 1)
        except Exception:  # a figure for the report, never a reason to fail
            return None

    def prefill(self, rows: int, rooms: int = 100) -> None:
        """Add ``rows`` room messages (with frame ids, as of now) in ``rooms``
        rooms nobody uses, then ANALYZE: a database that has history, with
        statistics, instead of an empty one. Needs roomcast's schema (start a
        server on the database once first)."""
        sql = f"""
            INSERT INTO rooms (name, last_seq, created_ms)
              SELECT 'prefill-' || r, {rows} / {rooms} + 1, {{now}}
              FROM generate_series(0, {rooms - 1}) r;
            INSERT INTO messages (room, seq, message_id, sender, body, client_id, ts_ms)
              SELECT 'prefill-' || (i % {rooms}), i / {rooms} + 1, md5(i::text),
                     'prefill-' || (i % {rooms}), repeat('x', 48), 'f' || i, {{now}}
              FROM generate_series(0, {rows - 1}) i;
            ANALYZE;
        """
        now = int(time.time() * 1000)
        asyncio.run(pg_execute(self.url, sql.format(now=now)))

    def drop(self) -> None:
        asyncio.run(pg_execute(self.admin_url, f"DROP DATABASE IF EXISTS {self.name} WITH (FORCE)"))


@dataclass
class Prefix:
    """A fresh Redis key prefix for one measurement."""

    url: str
    prefix: str

    @classmethod
    def create(cls, url: str) -> Prefix:
        return cls(url, f"roomcast-bench-{secrets.token_hex(6)}:")

    def clear(self) -> int:
        """Delete every key under the prefix (SCAN + UNLINK); return how many."""
        client = redis.Redis.from_url(
            self.url, socket_timeout=TIMEOUT, socket_connect_timeout=TIMEOUT
        )
        deleted = 0
        try:
            batch: list[bytes] = []
            for key in client.scan_iter(match=f"{self.prefix}*", count=1000):
                batch.append(key)
                if len(batch) >= 1000:
                    deleted += int(client.unlink(*batch))
                    batch = []
            if batch:
                deleted += int(client.unlink(*batch))
        finally:
            client.close()
        return deleted


def redis_pid(url: str) -> int | None:
    """The PID of the Redis at ``url`` if it runs on this machine (INFO's
    ``process_id``, checked to be a local ``redis-server``), else None."""
    try:
        client = redis.Redis.from_url(url, socket_timeout=TIMEOUT, socket_connect_timeout=TIMEOUT)
        try:
            pid = int(client.info("server")["process_id"])
        finally:
            client.close()
    except Exception:  # no figure for Redis's CPU, nothing worse
        return None
    return pid if process_name(pid) == "redis-server" else None
