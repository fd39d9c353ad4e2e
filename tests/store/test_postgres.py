"""What only the PostgreSQL store has: several nodes on one database, and a server to lose.

Each store here stands for a node: several of them share one fresh database
and write at once. Outages go through a real TCP proxy in front of the real
server (which other tests keep using), never a mock. Reopening, migrations,
retention and everything else PostgreSQL shares with SQLite is in
test_contract.py.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator, Iterable
from contextlib import AsyncExitStack
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from roomcast.exceptions import StoreError
from roomcast.store import postgres
from roomcast.store.base import AppendResult, DirectResult
from roomcast.store.postgres import PostgresStore
from roomcast.store.schema import LATEST_VERSION, MIGRATIONS
from tests.fakes import Clock
from tests.netproxy import TcpProxy
from tests.services import afresh_database

pytestmark = pytest.mark.postgres

DAY = 86400.0
NODES = 4


@pytest.fixture
async def url() -> AsyncIterator[str]:
    """The URL of an empty database of this test's own."""
    async with afresh_database() as fresh:
        yield fresh


async def open_stores(
    stack: AsyncExitStack, url: str, count: int, **settings: Any
) -> list[PostgresStore]:
    """``count`` stores on ``url``, opened at once and closed when ``stack`` ends."""
    stores = [PostgresStore(url, **settings) for _ in range(count)]
    await asyncio.gather(*(store.open() for store in stores))
    for store in stores:
        stack.push_async_callback(store.close)
    return stores


async def fetch(url: str, query: str, *args: Any) -> list[Any]:
    """Rows of ``query`` on ``url``, read straight from the server."""
    conn = await asyncpg.connect(url)
    try:
        return [tuple(row) for row in await conn.fetch(query, *args)]
    finally:
        await conn.close()


def via(url: str, port: int) -> str:
    """``url`` with its port changed to ``port`` on 127.0.0.1."""
    parts = urlsplit(url)
    user = parts.netloc.rpartition("@")[0]
    netloc = f"{user}@127.0.0.1:{port}" if user else f"127.0.0.1:{port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def unused_port() -> int:
    """A local TCP port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def increasing(values: Iterable[int]) -> bool:
    """Whether ``values`` strictly increase."""
    items = list(values)
    return all(a < b for a, b in zip(items, items[1:], strict=False))


async def test_nodes_appending_to_one_room_get_each_seq_once(url: str) -> None:
    """Four stores appending to one room at once produce seqs 1..800 once, each in its own order."""
    async with AsyncExitStack() as stack:
        stores = await open_stores(stack, url, NODES)
        queued: list[list[asyncio.Future[AppendResult]]] = [[] for _ in stores]

        async def sender(node: int, name: str) -> None:
            for i in range(20):
                future = stores[node].append("r", name, f"{name} {i}")
                queued[node].append(future)
                await future

        await asyncio.gather(
            *(sender(node, f"u{node}-{k}") for node in range(NODES) for k in range(10))
        )
        seqs = [f.result().message.seq for futures in queued for f in futures]
        assert sorted(seqs) == list(range(1, 801))
        for futures in queued:
            assert increasing(f.result().message.seq for f in futures)
        assert await stores[0].last_seq("r") == 800
        stored = await stores[1].since("r", 0, limit=1000)
        assert [m.seq for m in stored] == list(range(1, 801))
        by_seq = {f.result().message.seq: f.result().message for fs in queued for f in fs}
        assert stored == [by_seq[seq] for seq in range(1, 801)]


async def test_nodes_sending_to_one_inbox_get_each_seq_once(url: str) -> None:
    """Four stores sending direct messages to one user at once fill its inbox 1..200 once."""
    async with AsyncExitStack() as stack:
        stores = await open_stores(stack, url, NODES)
        for name in ["bob", *(f"s{node}" for node in range(NODES))]:
            await stores[0].create_user(name, "h")
        queued: list[list[asyncio.Future[DirectResult]]] = [[] for _ in stores]

        async def sender(node: int, k: int) -> None:
            for i in range(10):
                future = stores[node].append_direct(f"s{node}", "bob", f"{k}/{i}")
                queued[node].append(future)
                await future

        await asyncio.gather(*(sender(node, k) for node in range(NODES) for k in range(5)))
        received = [f.result().recipient_seq for futures in queued for f in futures]
        assert sorted(received) == list(range(1, 201))
        for futures in queued:
            assert increasing(f.result().recipient_seq for f in futures)
            assert [f.result().sender_seq for f in futures] == list(range(1, 51))
        assert await stores[2].direct_last_seq("bob") == 200
        inbox, more = await stores[3].direct_history("bob", limit=500)
        assert [m.seq for m in inbox] == list(range(1, 201)) and not more


async def test_batches_over_several_rooms_and_inboxes_never_deadlock(url: str) -> None:
    """Batches naming the same rooms and inboxes in different orders all commit, seqs gapless."""
    rooms = ["a", "b", "c"]
    users = ["ann", "bob", "cat", "dan"]
    async with AsyncExitStack() as stack:
        stores = await open_stores(stack, url, NODES)
        for name in users:
            await stores[0].create_user(name, "h")

        async def node(n: int) -> list[AppendResult | DirectResult]:
            done: list[AppendResult | DirectResult] = []
            for i in range(15):
                order = rooms[n % 3 :] + rooms[: n % 3]
                futures: list[asyncio.Future[Any]] = []
                for room in order if i % 2 else reversed(order):
                    futures.append(
                        stores[n].append(room, users[n], f"{n}/{i}", client_id=f"{room}{i}")
                    )
                for k in range(len(users)):
                    to = users[(n + k + i) % len(users)]
                    futures.append(stores[n].append_direct(users[n], to, "hi"))
                done += await asyncio.gather(*futures)
            return done

        results = [r for rs in await asyncio.gather(*(node(n) for n in range(NODES))) for r in rs]
        assert not any(r.duplicate for r in results)
        for room in rooms:
            in_room = [
                r.message.seq
                for r in results
                if isinstance(r, AppendResult) and r.message.room == room
            ]
            assert sorted(in_room) == list(range(1, 61)), room
        listed = 0
        for user in users:
            inbox, _ = await stores[0].direct_history(user, limit=1000)
            assert [m.seq for m in inbox] == list(range(1, len(inbox) + 1))
            assert await stores[1].direct_last_seq(user) == len(inbox)
            listed += len(inbox)
        sent = [r.message for r in results if isinstance(r, DirectResult)]
        assert listed == sum(1 if m.sender == m.to else 2 for m in sent)


async def test_one_resend_given_to_two_nodes_at_once_is_stored_once(url: str) -> None:
    """One (sender, client_id) appended to two stores at once is stored once: one is a duplicate."""
    async with AsyncExitStack() as stack:
        one, two = await open_stores(stack, url, 2)
        for name in ("ann", "bob"):
            await one.create_user(name, "h")
        pairs = [
            (
                one.append("r", f"user{i % 3}", f"m{i}", client_id=f"c{i}"),
                two.append("r", f"user{i % 3}", f"m{i}", client_id=f"c{i}"),
            )
            for i in range(20)
        ]
        direct = [
            (
                two.append_direct("ann", "bob", f"d{i}", client_id=f"d{i}"),
                one.append_direct("ann", "bob", f"d{i}", client_id=f"d{i}"),
            )
            for i in range(10)
        ]
        for first_future, second_future in pairs:
            first, second = await first_future, await second_future
            assert first.message == second.message
            assert [first.duplicate, second.duplicate].count(True) == 1
        for first_future, second_future in direct:
            a, b = await first_future, await second_future
            assert a.message == b.message
            assert (a.sender_seq, a.recipient_seq) == (b.sender_seq, b.recipient_seq)
            assert [a.duplicate, b.duplicate].count(True) == 1
        assert await one.last_seq("r") == 20
        assert await two.direct_last_seq("bob") == 10
        messages = await two.since("r", 0, limit=100)
        assert sorted(m.message for m in messages) == sorted(f"m{i}" for i in range(20))


async def test_nodes_starting_at_once_migrate_once(url: str) -> None:
    """Stores opening one fresh database at once all succeed; each migration is recorded once."""
    async with AsyncExitStack() as stack:
        stores = await open_stores(stack, url, 3)
        assert (await stores[0].append("r", "ann", "x")).message.seq == 1
    rows = await fetch(url, "SELECT version, description FROM schema_version ORDER BY version")
    assert rows == [(m.version, m.description) for m in MIGRATIONS]
    assert [version for version, _ in rows] == list(range(1, LATEST_VERSION + 1))


async def test_unreachable_server_is_one_clear_store_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Opening a store on a port nothing listens on raises StoreError naming it, no password."""
    caplog.set_level(logging.DEBUG)
    port = unused_port()
    with pytest.raises(StoreError) as raised:
        await PostgresStore(f"postgresql://postgres:s3cret@127.0.0.1:{port}/x").open()
    assert type(raised.value) is StoreError
    assert (
        str(raised.value) == f"cannot connect to PostgreSQL at 127.0.0.1:{port}: connection refused"
    )
    assert isinstance(raised.value.__cause__, OSError)
    assert "s3cret" not in caplog.text


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("postgresql://postgres:s3cret@127.0.0.1:notaport/x", "invalid URL"),
        ("postgresql://postgres:s3cret@no-such-host.invalid/x", "unknown host"),
    ],
)
async def test_unusable_url_is_a_store_error(target: str, expected: str) -> None:
    """A malformed URL or an unknown host fails open with a StoreError, password hidden."""
    with pytest.raises(StoreError, match=expected) as raised:
        await PostgresStore(target).open()
    assert "s3cret" not in str(raised.value)


async def test_missing_database_is_a_store_error(url: str) -> None:
    """A database that does not exist on a running server fails open with a StoreError saying so."""
    missing = url.rpartition("/")[0] + "/roomcast_no_such_database"
    with pytest.raises(StoreError, match='database "roomcast_no_such_database" does not exist'):
        await PostgresStore(missing).open()


async def test_outage_fails_writes_and_ping_then_seqs_go_on(url: str) -> None:
    """While cut off from the server appends and ping fail; once back, seqs go on without a gap."""
    target = urlsplit(url).port or 5432
    proxy = TcpProxy(target)
    await proxy.start()
    store = PostgresStore(via(url, proxy.port), command_timeout=2.0, connect_timeout=2.0)
    try:
        await store.open()
        assert (await store.append("r", "ann", "before")).message.seq == 1
        await store.ping()

        proxy.target_port = unused_port()  # new connections are refused upstream
        assert proxy.cut() >= 1  # and the open ones die
        with pytest.raises(StoreError, match="not stored"):
            await store.append("r", "ann", "during", client_id="d1")
        with pytest.raises(StoreError):
            await store.ping()
        with pytest.raises(StoreError):
            await store.history("r")
        failed = store.append("r", "bob", "also during")
        with pytest.raises(StoreError):
            await failed

        proxy.target_port = target
        after = await store.append("r", "ann", "during", client_id="d1")
        assert not after.duplicate and after.message.seq == 2
        await store.ping()
        messages, _ = await store.history("r")
        assert [(m.seq, m.message) for m in messages] == [(1, "before"), (2, "during")]
    finally:
        await store.close()
        await proxy.stop()


async def test_server_that_does_not_answer_fails_with_store_errors(url: str) -> None:
    """A server that accepts connections but never answers makes open, appends and ping fail."""
    silent_peers: list[asyncio.StreamWriter] = []

    async def silent(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        silent_peers.append(writer)  # keep it open, say nothing

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    silent_port = server.sockets[0].getsockname()[1]
    target = urlsplit(url).port or 5432
    proxy = TcpProxy(target)
    await proxy.start()
    settings: dict[str, Any] = {"command_timeout": 0.5, "connect_timeout": 0.5}
    store = PostgresStore(via(url, proxy.port), **settings)
    try:
        with pytest.raises(StoreError, match="no answer"):
            await PostgresStore(via(url, silent_port), **settings).open()
        await store.open()
        assert (await store.append("r", "ann", "before")).message.seq == 1
        proxy.target_port = silent_port
        proxy.cut()
        with pytest.raises(StoreError):  # cut off, or no answer from a new connection
            await store.append("r", "ann", "during")
        with pytest.raises(StoreError, match="no answer"):
            await store.append("r", "ann", "during")
        with pytest.raises(StoreError, match="no answer"):
            await store.ping()
        proxy.target_port = target
        assert (await store.append("r", "ann", "after")).message.seq == 2
    finally:
        await store.close()
        await proxy.stop()
        for writer in silent_peers:
            writer.transport.abort()
        server.close()
        await server.wait_closed()


async def test_batch_stuck_behind_a_lock_times_out_then_seqs_go_on(url: str) -> None:
    """A batch kept waiting past command_timeout by another session's lock fails; seqs go on."""
    store = PostgresStore(url, command_timeout=0.5)
    await store.open()
    holder = await asyncpg.connect(url)
    try:
        assert (await store.append("r", "ann", "one")).message.seq == 1
        async with holder.transaction():
            await holder.execute("SELECT * FROM rooms WHERE name = 'r' FOR UPDATE")
            with pytest.raises(StoreError, match="not stored"):
                await store.append("r", "ann", "stuck")
            assert (await store.append("elsewhere", "ann", "free")).message.seq == 1
        assert (await store.append("r", "ann", "two")).message.seq == 2
        assert [m.message for m in await store.since("r", 0, limit=5)] == ["one", "two"]
    finally:
        await holder.close()
        await store.close()


async def test_one_node_prunes_at_a_time(url: str) -> None:
    """While another session holds the retention lock a store prunes nothing; then it does."""
    clock = Clock()
    store = PostgresStore(url, history_days=1, clock=clock)
    await store.open()
    holder = await asyncpg.connect(url)
    try:
        await store.append("r", "ann", "old")
        clock.now += 2 * DAY
        await holder.execute("SELECT pg_advisory_lock($1)", postgres._PRUNE_LOCK)
        assert await store.prune() == 0
        await holder.execute("SELECT pg_advisory_unlock($1)", postgres._PRUNE_LOCK)
        assert await store.prune() == 1
    finally:
        await holder.close()
        await store.close()
