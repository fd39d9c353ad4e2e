"""The store's SQL seam, measured: raw drivers against SQLAlchemy Core, and the write path.

Two parts, each printing figures (nothing is written to disk but a
temporary SQLite file and a temporary PostgreSQL database, both removed):

``seam``
    The same two statements through the store's drivers (asyncpg, the
    standard library's sqlite3) and through SQLAlchemy Core (2.x; install it
    into the venv for the measurement only: ``.venv/bin/pip install
    sqlalchemy``): (a) the batch insert the writer does, for batches of 1,
    50 and 500 room messages, one transaction each; (b) a history page
    (51 rows of a room among 20,000 messages). The variants take turns
    statement by statement (so a noisy neighbour slows them alike); each
    line is the median time of the statement alone, wall and this
    process's CPU, and rows/s over whole batches (commit included).

``store``
    roomcast's own stores, through ``append`` and ``history``: 50 senders
    in 50 rooms, each awaiting its ack before sending again (acked msgs/s,
    ack latency, and this process's CPU per message: the loop's and the
    store's threads), bursts of 1,000 appends queued in one loop turn (the
    batch path at its widest), and history pages. Run it once against the
    code before a change and once after, by pointing ``PYTHONPATH`` at each
    tree's ``src``::

        mkdir -p /tmp/before && git archive HEAD src | tar -x -C /tmp/before
        PYTHONPATH=/tmp/before/src .venv/bin/python bench/scenarios/store_seam.py store
        .venv/bin/python bench/scenarios/store_seam.py store

The PostgreSQL server is ``--database-url`` (default
``ROOMCAST_TEST_DATABASE_URL`` or ``postgresql://postgres@127.0.0.1:5432/postgres``);
a database of the benchmark's own is created next to the one named, and
dropped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

import roomcast
from roomcast.store.schema import MIGRATIONS

DEFAULT_URL = os.environ.get(
    "ROOMCAST_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
ROOMS = 20
ROWS = 20_000
PAGE = 50

COLUMNS = "room, seq, message_id, sender, body, client_id, ts_ms, file"
INSERT_ROW = f"INSERT INTO messages ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
#: The writer's batch insert on PostgreSQL: one statement, a column per array.
INSERT_UNNEST = (
    f"INSERT INTO messages ({COLUMNS})"
    " SELECT room, seq, message_id, sender, body, client_id, $7, file FROM unnest("
    "$1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[], $8::text[])"
    " AS t(room, seq, message_id, sender, body, client_id, file)"
)
HISTORY = (
    "SELECT room, body, sender, seq, message_id, ts_ms, file FROM messages"
    " WHERE room = $1 AND seq < $2 ORDER BY seq DESC LIMIT $3"
)


def sqlite_sql(text: str) -> str:
    """``$1`` placeholders as SQLite's ``?1``."""
    for n in range(9, 0, -1):
        text = text.replace(f"${n}", f"?{n}")
    return text


# -- data -----------------------------------------------------------------------------


class Rows:
    """Room messages to insert, numbered on from where the last batch stopped."""

    def __init__(self) -> None:
        self.seq = 10_000_000

    def batch(self, size: int) -> list[tuple[Any, ...]]:
        rows = []
        for _ in range(size):
            self.seq += 1
            rows.append(
                ("bench", self.seq, uuid.uuid4().hex, "ann", "hello there", f"c{self.seq}", 1, None)
            )
        return rows


def columns(rows: list[tuple[Any, ...]]) -> list[list[Any]]:
    return [list(column) for column in zip(*rows, strict=True)]


async def seed_postgres(conn: Any) -> None:
    rows = [
        (f"r{i % ROOMS}", i // ROOMS + 1, uuid.uuid4().hex, "ann", f"m{i}", None, i, None)
        for i in range(ROWS)
    ]
    await conn.executemany(INSERT_ROW, rows)
    await conn.execute("ANALYZE messages")


def seed_sqlite(conn: sqlite3.Connection) -> None:
    rows = [
        (f"r{i % ROOMS}", i // ROOMS + 1, uuid.uuid4().hex, "ann", f"m{i}", None, i, None)
        for i in range(ROWS)
    ]
    conn.execute("BEGIN")
    conn.executemany(sqlite_sql(INSERT_ROW), rows)
    conn.execute("COMMIT")


# -- timing ---------------------------------------------------------------------------


class Sample:
    """One statement's wall time, the client's CPU time for it, and its batch's wall time."""

    __slots__ = ("cpu", "total", "wall")

    def __init__(self, wall: float, cpu: float, total: float) -> None:
        self.wall, self.cpu, self.total = wall, cpu, total


class Timer:
    """Times one statement inside its transaction: call :meth:`start`, :meth:`stop`, :meth:`end`."""

    def start(self) -> None:
        self._began = time.perf_counter()
        self._wall = time.perf_counter()
        self._cpu = time.process_time()

    def stop(self) -> None:
        self._wall_spent = time.perf_counter() - self._wall
        self._cpu_spent = time.process_time() - self._cpu

    def end(self) -> Sample:
        return Sample(self._wall_spent, self._cpu_spent, time.perf_counter() - self._began)


Variant = tuple[str, Callable[[int, Timer], Awaitable[None]]]


async def compare(variants: list[Variant], size: int, rounds: int) -> None:
    """Run the variants in turn (round-robin, so noise falls on all alike) and print each."""
    samples: dict[str, list[Sample]] = {label: [] for label, _ in variants}
    for _ in range(rounds):
        for label, once in variants:
            timer = Timer()
            await once(size, timer)
            samples[label].append(timer.end())
    base: float | None = None
    for label, _ in variants:
        taken = samples[label]
        wall = statistics.median(s.wall for s in taken)
        cpu = statistics.median(s.cpu for s in taken)
        total = statistics.mean(s.total for s in taken)
        extra = ""
        if base is None:
            base = wall
        else:
            extra = f"  {wall / base:5.2f}x  ({(wall - base) * 1e6:+8.1f} µs)"
        print(
            f"  {label:<40} n={size:<4} {wall * 1e6:8.1f} µs/stmt (CPU {cpu * 1e6:7.1f})"
            f" {size / total:9,.0f} rows/s{extra}"
        )


def synchronously(run: Callable[[int, Timer], None]) -> Callable[[int, Timer], Awaitable[None]]:
    async def once(size: int, timer: Timer) -> None:
        run(size, timer)

    return once


# -- PostgreSQL -----------------------------------------------------------------------


@contextlib.asynccontextmanager
async def scratch_database(url: str) -> AsyncIterator[str]:
    """A new empty database next to ``url``'s, dropped afterwards."""
    name = f"roomcast_bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        parts = urlsplit(url)
        yield urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def seam_postgres(url: str, rounds: int, sa: SQLAlchemyCore | None) -> None:
    print(f"PostgreSQL at {url.rpartition('@')[2]}, asyncpg {asyncpg.__version__}")
    settings = {"plan_cache_mode": "force_custom_plan"}
    conn = await asyncpg.connect(url, server_settings=settings)
    for migration in MIGRATIONS:
        for statement in migration.statements:
            await conn.execute(statement)
    await seed_postgres(conn)
    data = Rows()
    engine = saconn = None
    if sa is not None:
        engine = sa.create_async_engine(
            "postgresql+asyncpg://" + url.partition("://")[2],
            connect_args={"server_settings": settings},
        )
        saconn = await engine.connect()

    async def raw_unnest(size: int, timer: Timer) -> None:
        cols = columns(data.batch(size))
        async with conn.transaction():
            timer.start()
            await conn.execute(INSERT_UNNEST, *cols[:6], 1, cols[7])
            timer.stop()

    async def raw_many(size: int, timer: Timer) -> None:
        rows = data.batch(size)
        async with conn.transaction():
            timer.start()
            await conn.executemany(INSERT_ROW, rows)
            timer.stop()

    async def sa_insert(size: int, timer: Timer) -> None:
        assert sa is not None and saconn is not None
        rows = [dict(zip(sa.names, row, strict=True)) for row in data.batch(size)]
        async with saconn.begin():
            timer.start()
            await saconn.execute(sa.insert(sa.table), rows)
            timer.stop()

    async def sa_text(size: int, timer: Timer) -> None:
        assert sa is not None and saconn is not None
        params: dict[str, Any] = dict(zip(sa.names, columns(data.batch(size)), strict=True))
        params["ts_ms"] = 1
        async with saconn.begin():
            timer.start()
            await saconn.execute(sa.text_unnest, params)
            timer.stop()

    async def raw_history(_size: int, timer: Timer) -> None:
        room = f"r{timer_rooms.pop() % ROOMS}"
        timer.start()
        rows = await conn.fetch(HISTORY, room, 2**62, PAGE + 1)
        timer.stop()
        assert len(rows) == PAGE + 1

    async def sa_history(_size: int, timer: Timer) -> None:
        assert sa is not None and saconn is not None
        room = f"r{timer_rooms.pop() % ROOMS}"
        timer.start()
        rows = (await saconn.execute(sa.history(room, 2**62, PAGE + 1))).all()
        timer.stop()
        assert len(rows) == PAGE + 1

    inserts: list[Variant] = [
        ("asyncpg, unnest arrays (the store)", raw_unnest),
        ("asyncpg, executemany", raw_many),
    ]
    reads: list[Variant] = [("asyncpg fetch (the store)", raw_history)]
    if sa is not None:
        inserts += [
            ("SQLAlchemy Core insert(), executemany", sa_insert),
            ("SQLAlchemy Core text() with unnest", sa_text),
        ]
        reads.append(("SQLAlchemy Core select()", sa_history))
    timer_rooms = list(range(rounds * len(reads)))
    try:
        print(" (a) the writer's batch insert, one transaction per batch")
        for size in (1, 50, 500):
            await compare(inserts, size, max(40, rounds // max(1, size // 10)))
        print(f" (b) a history page ({PAGE + 1} rows of {ROWS:,})")
        await compare(reads, PAGE + 1, rounds)
    finally:
        await conn.close()
        if saconn is not None:
            await saconn.close()
        if engine is not None:
            await engine.dispose()


# -- SQLite ---------------------------------------------------------------------------


def open_sqlite(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    return conn


async def seam_sqlite(path: Path, rounds: int, sa: SQLAlchemyCore | None) -> None:
    print(f"SQLite {sqlite3.sqlite_version} (WAL, synchronous=FULL, in {path.parent})")
    conn = open_sqlite(path)
    for migration in MIGRATIONS:
        for statement in migration.statements:
            conn.execute(statement)
    seed_sqlite(conn)
    insert, history = sqlite_sql(INSERT_ROW), sqlite_sql(HISTORY)
    data = Rows()
    engine = saconn = None
    if sa is not None:
        engine = sa.create_engine(f"sqlite:///{path}")
        sa.event.listen(engine, "connect", _sqlite_pragmas)
        saconn = engine.connect()

    def raw_loop(size: int, timer: Timer) -> None:
        rows = data.batch(size)
        conn.execute("BEGIN IMMEDIATE")
        timer.start()
        for row in rows:
            conn.execute(insert, row)
        timer.stop()
        conn.execute("COMMIT")

    def raw_many(size: int, timer: Timer) -> None:
        rows = data.batch(size)
        conn.execute("BEGIN IMMEDIATE")
        timer.start()
        conn.executemany(insert, rows)
        timer.stop()
        conn.execute("COMMIT")

    def sa_insert(size: int, timer: Timer) -> None:
        assert sa is not None and saconn is not None
        rows = [dict(zip(sa.names, row, strict=True)) for row in data.batch(size)]
        with saconn.begin():
            timer.start()
            saconn.execute(sa.insert(sa.table), rows)
            timer.stop()

    def raw_history(_size: int, timer: Timer) -> None:
        room = f"r{len(timer_rooms) % ROOMS}"
        timer_rooms.pop()
        timer.start()
        rows = conn.execute(history, (room, 2**62, PAGE + 1)).fetchall()
        timer.stop()
        assert len(rows) == PAGE + 1

    def sa_history(_size: int, timer: Timer) -> None:
        assert sa is not None and saconn is not None
        room = f"r{len(timer_rooms) % ROOMS}"
        timer_rooms.pop()
        timer.start()
        rows = saconn.execute(sa.history(room, 2**62, PAGE + 1)).all()
        timer.stop()
        assert len(rows) == PAGE + 1

    inserts: list[Variant] = [
        ("sqlite3, execute() per row (the old store)", synchronously(raw_loop)),
        ("sqlite3, executemany() (the store)", synchronously(raw_many)),
    ]
    reads: list[Variant] = [
        ("sqlite3 execute().fetchall() (the store)", synchronously(raw_history))
    ]
    if sa is not None:
        inserts.append(("SQLAlchemy Core insert(), executemany", synchronously(sa_insert)))
        reads.append(("SQLAlchemy Core select()", synchronously(sa_history)))
    timer_rooms = list(range(rounds * len(reads)))
    try:
        print(" (a) the writer's batch insert, one transaction per batch")
        for size in (1, 50, 500):
            await compare(inserts, size, max(40, rounds // max(1, size // 10)))
        print(f" (b) a history page ({PAGE + 1} rows of {ROWS:,})")
        await compare(reads, PAGE + 1, rounds)
    finally:
        if saconn is not None:
            saconn.close()
        if engine is not None:
            engine.dispose()
        conn.close()


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode = WAL")
    cursor.execute("PRAGMA synchronous = FULL")
    cursor.close()


class SQLAlchemyCore:
    """The statements of this benchmark in SQLAlchemy Core (None when it is not installed)."""

    def __init__(self) -> None:
        import sqlalchemy
        from sqlalchemy import BigInteger, Column, MetaData, Table, Text, bindparam, event
        from sqlalchemy.dialects.postgresql import ARRAY
        from sqlalchemy.ext.asyncio import create_async_engine

        self.version = sqlalchemy.__version__
        self.event = event
        self.insert = sqlalchemy.insert
        self.create_engine = sqlalchemy.create_engine
        self.create_async_engine = create_async_engine
        self.table = Table(
            "messages",
            MetaData(),
            Column("room", Text, primary_key=True),
            Column("seq", BigInteger, primary_key=True),
            Column("message_id", Text),
            Column("sender", Text),
            Column("body", Text),
            Column("client_id", Text),
            Column("ts_ms", BigInteger),
            Column("file", Text),
        )
        self.names = [c.strip() for c in COLUMNS.split(",")]
        t = self.table
        self._history = (
            sqlalchemy.select(t.c.room, t.c.body, t.c.sender, t.c.seq, t.c.message_id)
            .add_columns(t.c.ts_ms, t.c.file)
            .where(t.c.room == bindparam("room"), t.c.seq < bindparam("before"))
            .order_by(t.c.seq.desc())
            .limit(bindparam("limit"))
        )
        text_types = {name: ARRAY(Text) for name in self.names if name not in ("seq", "ts_ms")}
        self.text_unnest = sqlalchemy.text(
            f"INSERT INTO messages ({COLUMNS})"
            " SELECT room, seq, message_id, sender, body, client_id, :ts_ms, file FROM unnest("
            ":room, :seq, :message_id, :sender, :body, :client_id, :file)"
            " AS t(room, seq, message_id, sender, body, client_id, file)"
        ).bindparams(
            *(bindparam(name, type_=kind) for name, kind in text_types.items()),
            bindparam("seq", type_=ARRAY(BigInteger)),
            bindparam("ts_ms", type_=BigInteger),
        )

    def history(self, room: str, before: int, limit: int) -> Any:
        return self._history.params(room=room, before=before, limit=limit)


def load_sqlalchemy() -> SQLAlchemyCore | None:
    try:
        return SQLAlchemyCore()
    except ImportError:
        print("SQLAlchemy is not installed: only the raw drivers are measured")
        return None


# -- the stores themselves -----------------------------------------------------------


@contextlib.contextmanager
def temporary_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="roomcast-bench-") as name:
        yield Path(name)


async def store_run(store: Any, senders: int, messages: int, bursts: int) -> dict[str, float]:
    """Acked msgs/s and ack latency with ``senders`` waiting for acks; then bursts; then reads."""
    batches: list[tuple[int, float]] = []
    store.on_batch = lambda size, seconds: batches.append((size, seconds))
    latencies: list[float] = []

    async def sender(n: int) -> None:
        room, name = f"room{n}", f"user{n}"
        for i in range(messages):
            started = time.perf_counter()
            await store.append(room, name, f"message {i} from {name}", client_id=f"c{i}")
            latencies.append(time.perf_counter() - started)

    started, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(sender(n) for n in range(senders)))
    closed = senders * messages / (time.perf_counter() - started)
    closed_cpu = (time.process_time() - cpu) / (senders * messages)
    latencies.sort()
    closed_batches = list(batches)
    batches.clear()

    burst = 1000
    started, cpu = time.perf_counter(), time.process_time()
    for b in range(bursts):
        futures = [
            store.append(f"room{i % senders}", f"user{i % senders}", "burst", client_id=f"b{b}.{i}")
            for i in range(burst)
        ]
        await asyncio.gather(*futures)
    burst_rate = bursts * burst / (time.perf_counter() - started)
    burst_cpu = (time.process_time() - cpu) / (bursts * burst)
    burst_batch = statistics.mean(seconds for _, seconds in batches)
    burst_size = statistics.mean(size for size, _ in batches)

    reads = 1000
    started, cpu = time.perf_counter(), time.process_time()
    for i in range(reads):
        page, _ = await store.history(f"room{i % senders}", limit=PAGE)
        assert len(page) == PAGE
    history = (time.perf_counter() - started) / reads
    history_cpu = (time.process_time() - cpu) / reads
    return {
        "acked msgs/s (50 senders awaiting acks)": closed,
        "ack p50 ms": latencies[len(latencies) // 2] * 1e3,
        "ack p99 ms": latencies[int(len(latencies) * 0.99)] * 1e3,
        "msgs per batch (closed loop)": statistics.mean(s for s, _ in closed_batches),
        "CPU µs per acked msg (closed loop)": closed_cpu * 1e6,
        "msgs/s in bursts of 1,000": burst_rate,
        "ms per batch in bursts": burst_batch * 1e3,
        "msgs per batch in bursts": burst_size,
        "CPU µs per msg in bursts": burst_cpu * 1e6,
        "µs per history page (store.history)": history * 1e6,
        "CPU µs per history page": history_cpu * 1e6,
    }


async def bench_stores(url: str, backends: list[str], runs: int, messages: int) -> None:
    from roomcast.store.postgres import PostgresStore
    from roomcast.store.sqlite import SQLiteStore

    print(f"roomcast from {Path(roomcast.__file__).parent}")
    for backend in backends:
        results: list[dict[str, float]] = []
        for _ in range(runs):
            if backend == "sqlite":
                with temporary_dir() as where:
                    store: Any = SQLiteStore(where / "bench.db")
                    await store.open()
                    try:
                        results.append(await store_run(store, 50, messages, 20))
                    finally:
                        await store.close()
            else:
                async with scratch_database(url) as fresh:
                    store = PostgresStore(fresh)
                    await store.open()
                    try:
                        results.append(await store_run(store, 50, messages, 20))
                    finally:
                        await store.close()
        print(f"{backend} store, median of {runs} runs (each run's figure in brackets)")
        for key in results[0]:
            values = [r[key] for r in results]
            shown = ", ".join(f"{v:,.1f}" for v in values)
            print(f"  {key:<42} {statistics.median(values):>12,.1f}   [{shown}]")


# -- main -----------------------------------------------------------------------------


async def seam(url: str, rounds: int, backends: list[str]) -> None:
    sa = load_sqlalchemy()
    if sa is not None:
        print(f"SQLAlchemy {sa.version}; Python {sys.version.split()[0]}")
    print("median wall and client CPU time of the statement alone; rows/s over whole batches")
    if "postgres" in backends:
        async with scratch_database(url) as fresh:
            await seam_postgres(fresh, rounds, sa)
    if "sqlite" in backends:
        with temporary_dir() as where:
            await seam_sqlite(where / "seam.db", rounds, sa)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=["seam", "store", "all"])
    parser.add_argument("--database-url", default=DEFAULT_URL)
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--rounds", type=int, default=2000, help="statements per seam run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--messages", type=int, default=200, help="per sender, store part")
    parser.add_argument("--no-uvloop", action="store_true")
    args = parser.parse_args()
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    if not args.no_uvloop:
        with contextlib.suppress(ImportError):
            import uvloop

            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())

    async def run() -> None:
        if args.part in ("seam", "all"):
            await seam(args.database_url, args.rounds, backends)
        if args.part in ("store", "all"):
            await bench_stores(args.database_url, backends, args.runs, args.messages)

    asyncio.run(run())


if __name__ == "__main__":
    main()
