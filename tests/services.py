"""The real local services tests use: PostgreSQL and Redis, and how to get a clean slate.

Unit and integration tests share these helpers. Each test gets a database
(or a Redis key prefix) of its own and leaves nothing behind. When a service
does not answer, :func:`service_down` skips the test, except in CI
(``CI=true``), where a missing service is a failure, not a reason to skip.

Point the tests at other servers with ``ROOMCAST_TEST_DATABASE_URL`` (any
database on the server: test databases are created next to it) and
``ROOMCAST_TEST_REDIS_URL``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import threading
import uuid
from collections.abc import AsyncIterator, Coroutine, Iterator
from typing import Any, NoReturn, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
import redis
import redis.asyncio as aioredis

__all__ = [
    "DATABASE_URL",
    "REDIS_URL",
    "afresh_database",
    "fresh_database",
    "fresh_redis_prefix",
    "redis_cleanup",
    "redis_prefix",
    "require_redis",
    "service_down",
]

T = TypeVar("T")

DATABASE_URL = os.environ.get(
    "ROOMCAST_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("ROOMCAST_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")

#: Seconds to wait for a service before calling it down.
CONNECT_TIMEOUT = 5.0


def service_down(what: str, reason: str) -> NoReturn:
    """Skip the test because ``what`` does not answer (fail instead when ``CI=true``)."""
    variable = {
        "PostgreSQL": "ROOMCAST_TEST_DATABASE_URL",
        "Redis": "ROOMCAST_TEST_REDIS_URL",
        "redis-server": "ROOMCAST_TEST_REDIS_SERVER",
    }.get(what, "its ROOMCAST_TEST_* variable")
    message = f"{what} is not available ({reason}); start it or set {variable}"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


# -- PostgreSQL ----------------------------------------------------------------


def _with_database(url: str, name: str) -> str:
    """``url`` with its database (the path) replaced by ``name``."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


def _where(url: str, default_port: int) -> str:
    """``host:port`` of a URL, for messages (never the password)."""
    parts = urlsplit(url)
    return f"{parts.hostname or 'localhost'}:{parts.port or default_port}"


async def _admin(sql: str) -> None:
    """Run one statement on the server of :data:`DATABASE_URL`, or call it down."""
    try:
        conn = await asyncpg.connect(DATABASE_URL, timeout=CONNECT_TIMEOUT)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        service_down("PostgreSQL", f"cannot connect to {_where(DATABASE_URL, 5432)}: {exc}")
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def _run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run ``coroutine`` to completion in a throwaway event loop on its own thread.

    A thread of its own, so it also works from code already inside a
    running loop (an async fixture or test).
    """
    outcome: list[T] = []
    failure: list[BaseException] = []

    def main() -> None:
        try:
            outcome.append(asyncio.run(coroutine))
        except BaseException as exc:  # re-raised in the caller (pytest's skip too)
            failure.append(exc)

    thread = threading.Thread(target=main, name="roomcast-test-services")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return outcome[0]


@contextlib.contextmanager
def fresh_database() -> Iterator[str]:
    """An empty database ``roomcast_test_<hex>`` on the test server: yields its URL, then drops it.

    Calls :func:`service_down` when the server does not answer.
    """
    name = f"roomcast_test_{uuid.uuid4().hex}"
    _run(_admin(f'CREATE DATABASE "{name}"'))
    try:
        yield _with_database(DATABASE_URL, name)
    finally:
        _run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@contextlib.asynccontextmanager
async def afresh_database() -> AsyncIterator[str]:
    """:func:`fresh_database` for async fixtures and tests: yields the URL of an empty database."""
    name = f"roomcast_test_{uuid.uuid4().hex}"
    await _admin(f'CREATE DATABASE "{name}"')
    try:
        yield _with_database(DATABASE_URL, name)
    finally:
        await _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# -- Redis -------------------------------------------------------------------------


def fresh_redis_prefix() -> str:
    """A key prefix no other test uses: ``roomcast-test-<hex>:``."""
    return f"roomcast-test-{uuid.uuid4().hex}:"


def require_redis() -> None:
    """Return if Redis at :data:`REDIS_URL` answers PING; else :func:`service_down`."""
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=CONNECT_TIMEOUT)
    try:
        client.ping()
    except redis.RedisError as exc:
        service_down("Redis", f"cannot reach {_where(REDIS_URL, 6379)}: {exc}")
    finally:
        client.close()


def redis_cleanup(prefix: str) -> int:
    """Delete every key under ``prefix`` (SCAN MATCH ``prefix*``); return how many went."""
    pattern = re.sub(r"([*?\[\]\\])", r"\\\1", prefix) + "*"
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=CONNECT_TIMEOUT)
    removed = 0
    try:
        batch: list[Any] = []
        for key in client.scan_iter(match=pattern, count=500):
            batch.append(key)
            if len(batch) >= 500:
                removed += int(client.unlink(*batch))
                batch.clear()
        if batch:
            removed += int(client.unlink(*batch))
    finally:
        client.close()
    return removed


@contextlib.contextmanager
def redis_prefix() -> Iterator[str]:
    """Check Redis answers, yield a fresh key prefix, and delete its keys afterwards."""
    require_redis()
    prefix = fresh_redis_prefix()
    try:
        yield prefix
    finally:
        redis_cleanup(prefix)


async def kill_redis_clients(prefix: str, *, subscribers_only: bool = False) -> int:
    """Drop the Redis connections of the nodes using ``prefix`` (as a Redis restart would).

    roomcast names its connections ``PREFIX NODE`` (commands) and
    ``PREFIX NODE:sub`` (the subscriber), so only this test's nodes are
    cut, never another test's or a benchmark's. Returns how many were cut.
    """
    client = aioredis.Redis.from_url(REDIS_URL, socket_connect_timeout=CONNECT_TIMEOUT)
    try:
        killed = 0
        for entry in await client.client_list():
            name = str(entry.get("name", ""))
            if not name.startswith(prefix) or (subscribers_only and not name.endswith(":sub")):
                continue
            killed += int(await client.execute_command("CLIENT", "KILL", "ID", entry["id"]))
        return killed
    finally:
        await client.aclose()
