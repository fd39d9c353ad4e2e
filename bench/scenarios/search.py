"""Search (issue 20): query latency over a million messages, the index's size, its cost on writes.

The issue's targets: over one million messages in a thousand rooms, a
search's p99 under 50 ms on SQLite and on PostgreSQL, for a word, a prefix
and a phrase, by a user who belongs to a hundred rooms; the index's size
per message; and persisted chat still at its target (5,000 acked msgs/s,
ack p99 ≤ 50 ms) with the index kept in the message's transaction.

Parts (subcommands), each printing its figures and writing
``bench/results/<stamp>-search-<part>.json``:

``queries``
    Times ``store.search`` (the store API the server calls, query parsing
    included) on a generated history (bench/lib/search_corpus.py): 1,000,000
    room messages in 1,000 private rooms, the reader a member of 100 of them
    (about a tenth of the messages), 50,000 direct messages of which 3,000
    are the reader's. Five words (Zipf ranks 1 to 15,000), five prefixes
    (3-4 letters) and five phrases (2-3 words, taken from messages the
    reader may read), each 40 times, interleaved: 200 searches per kind.
    For each: the first page (newest first, 20 results), the second page
    (its cursor) and the first page best first (``order: relevance``, no
    target). p50/p99 per kind and per query; ``--explain`` prints the plan
    of every query whose p99 misses the target. A search slower than
    ``--budget`` seconds in total for one query stops being repeated.
``size``
    The index on disk per message: SQLite's FTS5 tables (``dbstat``), the
    PostgreSQL GIN indexes (``pg_relation_size``).
``e2e``
    One word through a real server's WebSocket ``search`` frame (the server
    on the generated SQLite database, pinned to CPU 0; this client on CPU 1),
    paced under the per-user search rate (4 a second; the server allows 5).
``writes``
    The index's cost on writes: persisted chat (the ``persist`` load
    generator, 50 clients) on SQLite and on a fresh PostgreSQL database,
    this tree against the tree before search, interleaved in one run: the
    stepped maximum (as ``persist``/``persist-pg``) and the server's CPU per
    acked message at fixed offered rates (2,000 and 4,000/s, which repeat
    where the maximum does not on a noisy machine). The existing scenario's
    message is one padding word; ``--words`` sends sentences, which is what
    an index works on. Each run records the CPU the rest of the machine used.

``--pg-sql`` probes a schema change before it is made: SQL run on the
PostgreSQL database before measuring (``queries``: on the kept database,
undone with ``--pg-sql-after``; ``writes``: on each fresh database once
the server migrated it, e.g. ``ALTER INDEX messages_search SET (fastupdate
= off)`` with ``--trees search``).

The generated databases are kept in ``--data`` (SQLite, and a meta file
with the queries) and in the PostgreSQL database ``--pg-database``
(commented with the corpus's key and a digest of its schema) and reused by
the next run while the corpus, the tree's migrations and the schema match
(a database changed by hand is made again); ``drop`` removes both. Point
``PYTHONPATH`` at a tree's ``src`` to measure that tree (each result
records which roomcast it imported, and its commit)::

    git worktree add /tmp/wt-search 1aaeb6b && git worktree add /tmp/wt-base 5a76b0a
    PYTHONPATH=/tmp/wt-search/src .venv/bin/python -m bench.scenarios.search queries
    PYTHONPATH=/tmp/wt-search/src .venv/bin/python -m bench.scenarios.search size
    PYTHONPATH=/tmp/wt-search/src .venv/bin/python -m bench.scenarios.search e2e
    PYTHONPATH=/tmp/wt-search/src .venv/bin/python -m bench.scenarios.search writes \
        --base-src /tmp/wt-base/src --runs 3
    .venv/bin/python -m bench.scenarios.search drop
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import asyncpg

if __package__ in (None, ""):  # run as a file: import bench from the repository
    sys.path[0] = str(Path(__file__).resolve().parents[2])

from bench.lib import driver, results, search_corpus as corpus_lib, servers, services
from bench.lib.search_corpus import READER, READER_PASSWORD, Corpus, Query, Spec
from bench.scenarios import persist

TARGET_MS = 50.0
#: Timed searches of each query and mode: 5 queries of a kind make 200.
REPS = 40
#: Results per page, the protocol's default.
LIMIT = 20
MODES = ("first page", "second page", "relevance")
DATA = Path(tempfile.gettempdir()) / "roomcast-search-bench"
PG_DATABASE = "bench_search"
#: e2e: searches, and at most this many a second (the server allows bursts of 10, then 5/s).
E2E_SEARCHES = 200
E2E_PER_SECOND = 4.0
#: writes: the fixed offered rates (msgs/s), and a bound past any stall so both steps run.
FIXED_RATES = "2000,4000"
FIXED_BOUND_MS = 2000.0


# -- the corpus -----------------------------------------------------------------------


def sqlite_path(spec: Spec, data: Path) -> Path:
    return data / spec.key() / "sqlite" / "roomcast.db"


def meta_path(spec: Spec, data: Path) -> Path:
    return data / spec.key() / "meta.json"


async def prepare_sqlite(spec: Spec, data: Path) -> dict[str, Any]:
    """The SQLite database and the queries (made now if missing); the meta file's content."""
    meta_file, db = meta_path(spec, data), sqlite_path(spec, data)
    if meta_file.exists() and db.exists():
        meta: dict[str, Any] = json.loads(meta_file.read_text())
        if meta.get("sqlite_schema") == corpus_lib.sqlite_schema(db):
            return meta
        print(f"{db}: its schema changed since it was made: making it again", flush=True)
    if db.parent.exists():
        shutil.rmtree(db.parent)
    db.parent.mkdir(parents=True)
    corpus = Corpus(spec)
    print(f"generating {spec.messages:,} messages into {db} ...", flush=True)
    took = await corpus_lib.load_sqlite(corpus, db, log=lambda line: None)
    queries = corpus.queries()
    print("counting each query's matches ...", flush=True)
    corpus_lib.sqlite_counts(db, queries, corpus.reader_room_set)
    readable = sum(
        count
        for room, count in zip(corpus.rooms, corpus.room_counts, strict=True)
        if room in corpus.reader_room_set
    )
    meta = {
        "spec": asdict(spec),
        "key": spec.key(),
        "queries": [asdict(q) for q in queries],
        "prefix_terms": {
            q.text: corpus.prefix_terms(q.text) for q in queries if q.kind == "prefix"
        },
        "readable_room_messages": readable,
        "reader_direct_messages": corpus.inbox_seqs.get(READER, 0),
        "sqlite_load_s": took,
        "sqlite_schema": corpus_lib.sqlite_schema(db),
    }
    meta_file.write_text(json.dumps(meta, indent=1))
    return meta


def pg_url(admin_url: str, database: str) -> str:
    return services.with_database(admin_url, database)


async def prepare_postgres(
    spec: Spec, admin_url: str, database: str, meta: dict[str, Any], data: Path | None = None
) -> None:
    """The PostgreSQL database (made now if missing or of another corpus)."""
    conn = await asyncpg.connect(admin_url)
    try:
        comment = await conn.fetchval(
            "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = $1",
            database,
        )
        url = pg_url(admin_url, database)
        if comment == f"{spec.key()} {meta.get('postgres_schema')}":
            if await corpus_lib.postgres_schema(url) == meta.get("postgres_schema"):
                return
            print(f"{database}: its schema changed since it was made: making it again")
        await conn.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
        await conn.execute(f"CREATE DATABASE {database}")
    finally:
        await conn.close()
    print(f"generating {spec.messages:,} messages into PostgreSQL {database} ...", flush=True)
    took = await corpus_lib.load_postgres(
        Corpus(spec), pg_url(admin_url, database), log=lambda _: None
    )
    meta["postgres_schema"] = await corpus_lib.postgres_schema(url)
    conn = await asyncpg.connect(admin_url)
    try:
        comment = f"{spec.key()} {meta['postgres_schema']}"
        await conn.execute(f"COMMENT ON DATABASE {database} IS '{comment}'")
    finally:
        await conn.close()
    meta["postgres_load_s"] = took
    meta_path(spec, DATA if data is None else data).write_text(json.dumps(meta, indent=1))


def queries_of(meta: dict[str, Any]) -> list[Query]:
    return [Query(**q) for q in meta["queries"]]


# -- timing searches through the store -------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """The nearest-rank percentile ``q`` (0-1) of ``values``."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


async def time_store(store: Any, queries: list[Query], reps: int, budget: float) -> dict[str, Any]:
    """Every query in every mode, ``reps`` times each, interleaved; ms per search."""
    from roomcast.exceptions import RoomcastError
    from roomcast.query import parse_query
    from roomcast.store.base import SearchFilter

    def search(query: Query, mode: str, cursor: str | None = None) -> Any:
        return SearchFilter(
            parse_query(query.text),
            READER,
            limit=LIMIT,
            cursor=cursor if mode == "second page" else None,
            relevance=mode == "relevance",
        )

    samples: dict[tuple[str, str], list[float]] = {}
    spent: dict[tuple[str, str], float] = {}
    errors: dict[tuple[str, str], list[str]] = {}
    cursors: dict[str, str | None] = {}
    found: dict[tuple[str, str], int] = {}
    cold: dict[str, float] = {}

    async def once(query: Query, mode: str) -> None:
        key = (query.text, mode)
        if spent.get(key, 0.0) > budget:
            return
        started = time.perf_counter()
        try:
            hits, cursor = await store.search(search(query, mode, cursors.get(query.text)))
        except RoomcastError as exc:
            errors.setdefault(key, []).append(f"{type(exc).__name__}: {exc}")
            spent[key] = spent.get(key, 0.0) + time.perf_counter() - started
            return
        took = time.perf_counter() - started
        spent[key] = spent.get(key, 0.0) + took
        samples.setdefault(key, []).append(took * 1000)
        found[key] = len(hits)
        if mode == "first page":
            cursors[query.text] = cursor

    # Untimed: the first search of each query after the store opened (cold caches),
    # which also gives the cursor of its second page.
    for query in queries:
        started = time.perf_counter()
        try:
            _, cursors[query.text] = await store.search(search(query, "first page"))
        except RoomcastError as exc:
            errors.setdefault((query.text, "first page"), []).append(f"first: {exc}")
        cold[query.text] = (time.perf_counter() - started) * 1000
    for _ in range(reps):
        for query in queries:
            for mode in MODES:
                if mode == "second page" and cursors.get(query.text) is None:
                    continue
                await once(query, mode)
    per_query = []
    for query in queries:
        for mode in MODES:
            values = samples.get((query.text, mode), [])
            per_query.append(
                {
                    "kind": query.kind,
                    "label": query.label,
                    "query": query.text,
                    "mode": mode,
                    "n": len(values),
                    "p50_ms": round(percentile(values, 0.5), 2) if values else None,
                    "p99_ms": round(percentile(values, 0.99), 2) if values else None,
                    "max_ms": round(max(values), 2) if values else None,
                    "results": found.get((query.text, mode)),
                    "has_next_page": cursors.get(query.text) is not None,
                    "errors": errors.get((query.text, mode), [])[:3],
                    "error_count": len(errors.get((query.text, mode), [])),
                    "first_after_open_ms": round(cold[query.text], 2) if mode == MODES[0] else None,
                }
            )
    per_kind = []
    for kind in dict.fromkeys(q.kind for q in queries):
        for mode in MODES:
            values = [v for q in queries if q.kind == kind for v in samples.get((q.text, mode), [])]
            if values:
                per_kind.append(
                    {
                        "kind": kind,
                        "mode": mode,
                        "n": len(values),
                        "p50_ms": round(percentile(values, 0.5), 2),
                        "p99_ms": round(percentile(values, 0.99), 2),
                        "max_ms": round(max(values), 2),
                    }
                )
    return {"per_kind": per_kind, "per_query": per_query}


async def explain(store: Any, backend: str, query: Query, mode: str, cursor: str | None) -> str:
    """The plan of each SQL statement a search runs (SQLite: EXPLAIN QUERY PLAN;
    PostgreSQL: EXPLAIN (ANALYZE, BUFFERS))."""
    from roomcast.query import parse_query
    from roomcast.store.base import SearchFilter, read_cursor

    search = SearchFilter(
        parse_query(query.text),
        READER,
        limit=LIMIT,
        cursor=cursor if mode == "second page" else None,
        relevance=mode == "relevance",
    )
    state = read_cursor(search) if mode == "second page" else None
    match = store._SEARCH.compile(search.query)
    limit = LIMIT + 1
    out = []
    for kind in ("rooms", "direct"):
        after = state.get(kind) if isinstance(state, dict) else None
        if after is False:
            continue
        sql, args = store._search_sql(search, kind, match, after, limit)
        if backend == "sqlite":
            from roomcast.store.sqlite import _dialect

            conn = sqlite3.connect(store.path)
            try:
                rows = conn.execute("EXPLAIN QUERY PLAN " + _dialect(sql), args).fetchall()
            finally:
                conn.close()
            plan = "\n".join(f"  {row[-1]}" for row in rows)
        else:
            conn = await asyncpg.connect(store.url)
            try:
                rows = await conn.fetch("EXPLAIN (ANALYZE, BUFFERS) " + sql, *args, timeout=120)
            finally:
                await conn.close()
            plan = "\n".join(f"  {row[0]}" for row in rows)
        out.append(f"-- {kind}: {sql}\n-- args: {args!r}\n{plan}")
    return "\n".join(out)


async def run_queries(args: argparse.Namespace) -> dict[str, Any]:
    from roomcast.store.postgres import PostgresStore
    from roomcast.store.sqlite import SQLiteStore

    spec = Spec(messages=args.messages)
    meta = await prepare_sqlite(spec, args.data)
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    if "postgres" in backends:
        await prepare_postgres(spec, args.pg_url, args.pg_database, meta, args.data)
    queries = queries_of(meta)
    doc: dict[str, Any] = {"corpus": meta, "backends": {}}
    for backend in backends:
        store: Any = (
            SQLiteStore(sqlite_path(spec, args.data))
            if backend == "sqlite"
            else PostgresStore(pg_url(args.pg_url, args.pg_database))
        )
        if backend == "postgres" and args.pg_sql:
            await services.pg_execute(pg_url(args.pg_url, args.pg_database), args.pg_sql)
        await store.open()
        try:
            started = time.monotonic()
            timed = await time_store(store, queries, args.reps, args.budget)
            timed["seconds"] = round(time.monotonic() - started, 1)
            plans = {}
            if args.explain:
                for row in timed["per_query"]:
                    late = row["p99_ms"] is not None and row["p99_ms"] > TARGET_MS
                    if row["mode"] != "relevance" and (late or row["error_count"]):
                        query = next(q for q in queries if q.text == row["query"])
                        cursor = None
                        if row["mode"] == "second page":
                            _, cursor = await store.search(_first_page(query.text))
                        key = f"{row['query']} ({row['mode']})"
                        plans[key] = await explain(store, backend, query, row["mode"], cursor)
            timed["plans"] = plans
        finally:
            await store.close()
            if backend == "postgres" and args.pg_sql_after:
                await services.pg_execute(pg_url(args.pg_url, args.pg_database), args.pg_sql_after)
        timed["pg_sql"] = [args.pg_sql, args.pg_sql_after] if backend == "postgres" else None
        doc["backends"][backend] = timed
        print_queries(backend, timed, queries)
    return doc


def _first_page(text: str) -> Any:
    from roomcast.query import parse_query
    from roomcast.store.base import SearchFilter

    return SearchFilter(parse_query(text), READER, limit=LIMIT)


def print_queries(backend: str, timed: dict[str, Any], queries: list[Query]) -> None:
    print(f"\n{backend} ({timed['seconds']} s):")
    for row in timed["per_kind"]:
        print(
            f"  {row['kind']:<7} {row['mode']:<12} n={row['n']:<4} p50 {row['p50_ms']:8.2f} ms"
            f"  p99 {row['p99_ms']:8.2f} ms  max {row['max_ms']:8.2f} ms"
        )
    counts = {q.text: q for q in queries}
    for row in timed["per_query"]:
        query = counts[row["query"]]
        p50 = "-" if row["p50_ms"] is None else f"{row['p50_ms']:.2f}"
        p99 = "-" if row["p99_ms"] is None else f"{row['p99_ms']:.2f}"
        print(
            f"    {row['kind']:<7} {row['query']:<28} {row['mode']:<12} n={row['n']:<3}"
            f" p50 {p50:>8} p99 {p99:>8}  results {row['results']}"
            f"  matches {query.matches} (readable {query.readable})"
            + (f"  errors {row['error_count']}: {row['errors'][:1]}" if row["error_count"] else "")
        )
    for key, plan in timed.get("plans", {}).items():
        print(f"\nplan of {key}:\n{plan}")


# -- the index's size ----------------------------------------------------------------------


async def run_size(args: argparse.Namespace) -> dict[str, Any]:
    spec = Spec(messages=args.messages)
    meta = await prepare_sqlite(spec, args.data)
    db = sqlite_path(spec, args.data)
    conn = sqlite3.connect(db)
    try:
        pages = dict(conn.execute("SELECT name, sum(pgsize) FROM dbstat GROUP BY name").fetchall())
        chat = conn.execute("SELECT count(*) FROM messages WHERE kind = 'chat'").fetchone()[0]
        direct = conn.execute(
            "SELECT count(*) FROM direct_messages WHERE kind = 'chat'"
        ).fetchone()[0]
    finally:
        conn.close()

    def group(prefix: str) -> dict[str, int]:
        return {name: size for name, size in pages.items() if name.startswith(prefix)}

    rooms_index, direct_index = group("messages_search"), group("direct_search")
    sqlite_doc = {
        "file_bytes": db.stat().st_size,
        "room_messages": chat,
        "direct_messages": direct,
        "messages_table_bytes": pages.get("messages"),
        "room_index_tables": rooms_index,
        "direct_index_tables": direct_index,
        "room_index_bytes_per_message": round(sum(rooms_index.values()) / chat, 1),
        "direct_index_bytes_per_message": round(sum(direct_index.values()) / direct, 1),
        "all_pages": pages,
    }
    doc: dict[str, Any] = {"corpus": meta, "sqlite": sqlite_doc}
    print(f"SQLite {db} ({sqlite_doc['file_bytes'] / 2**20:.0f} MiB):")
    print(
        f"  room messages {chat:,}: FTS5 tables {sum(rooms_index.values()) / 2**20:.1f} MiB"
        f" = {sqlite_doc['room_index_bytes_per_message']} bytes a message {rooms_index}"
    )
    print(
        f"  direct messages {direct:,}: {sum(direct_index.values()) / 2**20:.1f} MiB"
        f" = {sqlite_doc['direct_index_bytes_per_message']} bytes a message"
    )
    print(f"  (the messages table itself: {pages.get('messages', 0) / 2**20:.1f} MiB)")
    if args.backend in ("postgres", "both"):
        await prepare_postgres(spec, args.pg_url, args.pg_database, meta, args.data)
        conn = await asyncpg.connect(pg_url(args.pg_url, args.pg_database))
        try:
            sizes = {
                row["relname"]: row["bytes"]
                for row in await conn.fetch(
                    "SELECT c.relname, pg_relation_size(c.oid) AS bytes FROM pg_class c"
                    " JOIN pg_namespace n ON n.oid = c.relnamespace"
                    " WHERE n.nspname = 'public' AND c.relkind IN ('r', 'i')"
                )
            }
            chat = await conn.fetchval("SELECT count(*) FROM messages WHERE kind = 'chat'")
            direct = await conn.fetchval("SELECT count(*) FROM direct_messages WHERE kind = 'chat'")
        finally:
            await conn.close()
        pg_doc = {
            "room_messages": chat,
            "direct_messages": direct,
            "messages_search_bytes": sizes["messages_search"],
            "direct_messages_search_bytes": sizes["direct_messages_search"],
            "room_index_bytes_per_message": round(sizes["messages_search"] / chat, 1),
            "direct_index_bytes_per_message": round(sizes["direct_messages_search"] / direct, 1),
            "relations": sizes,
            "built": "while loading"
            if "index_s" not in meta.get("postgres_load_s", {})
            else "after loading",
        }
        doc["postgres"] = pg_doc
        print(f"PostgreSQL {args.pg_database}:")
        print(
            f"  messages_search {sizes['messages_search'] / 2**20:.1f} MiB"
            f" = {pg_doc['room_index_bytes_per_message']} bytes a message;"
            f" direct_messages_search {sizes['direct_messages_search'] / 2**20:.1f} MiB"
            f" = {pg_doc['direct_index_bytes_per_message']} bytes a message"
        )
        print(f"  (the messages table itself: {sizes['messages'] / 2**20:.1f} MiB)")
    return doc


# -- one word through a real server --------------------------------------------------------


async def e2e_client(url: str, words: list[str], searches: int) -> dict[str, Any]:
    import aiohttp
    from websockets.asyncio.client import connect

    base = url.replace("ws://", "http://", 1).rsplit("/", 1)[0]
    async with aiohttp.ClientSession() as http:
        account = {"username": READER, "password": READER_PASSWORD}
        async with http.post(f"{base}/api/login", json=account) as resp:
            token = (await resp.json())["token"]
    times: dict[str, list[float]] = {word: [] for word in words}
    #: Each search: seconds since the first, ms, the word.
    when: list[tuple[float, float, str]] = []
    counts: dict[str, int] = {}
    async with connect(url, max_size=2**22) as ws:

        async def ask(kind: str, payload: dict[str, Any], fid: str) -> dict[str, Any]:
            await ws.send(json.dumps({"type": kind, "id": fid, "payload": payload}))
            while True:
                frame = json.loads(await ws.recv())
                if frame.get("id") == fid:
                    return dict(frame)

        answer = await ask("auth", {"token": token}, "a")
        if answer["type"] != "auth":
            raise RuntimeError(f"auth: {answer}")
        gap = 1 / E2E_PER_SECOND
        began = time.perf_counter()
        for i in range(searches):
            word = words[i % len(words)]
            started = time.perf_counter()
            answer = await ask("search", {"q": word}, f"s{i}")
            took = time.perf_counter() - started
            if answer["type"] != "search":
                raise RuntimeError(f"search {word}: {answer}")
            times[word].append(took * 1000)
            when.append((round(started - began, 1), round(took * 1000, 2), word))
            counts[word] = len(answer["payload"]["results"])
            await asyncio.sleep(max(0.0, gap - took))
    every = [v for values in times.values() for v in values]
    return {
        "searches": len(every),
        "p50_ms": round(percentile(every, 0.5), 2),
        "p99_ms": round(percentile(every, 0.99), 2),
        "max_ms": round(max(every), 2),
        "slowest": sorted(when, key=lambda sample: -sample[1])[:5],
        "samples": when,
        "per_word": {
            word: {
                "p50_ms": round(percentile(values, 0.5), 2),
                "p99_ms": round(percentile(values, 0.99), 2),
                "results": counts.get(word),
            }
            for word, values in times.items()
        },
    }


def run_e2e(args: argparse.Namespace) -> dict[str, Any]:
    spec = Spec(messages=args.messages)
    meta = asyncio.run(prepare_sqlite(spec, args.data))
    words = [q.text for q in queries_of(meta) if q.kind == "word"]
    db = sqlite_path(spec, args.data)
    os.sched_setaffinity(0, {1})  # this client on CPU 1, the server on CPU 0
    with tempfile.TemporaryDirectory(prefix="roomcast-search-e2e-") as tmp:
        server = servers.start("roomcast", Path(tmp), None, ["--database-url", f"sqlite://{db}"])
        try:
            result = asyncio.run(e2e_client(server.url, words, args.searches))
        finally:
            servers.stop(server)
            result_log = servers.log_problems(server.log)
    result["log_problems"] = result_log
    result["words"] = words
    print(
        f"e2e, SQLite, one word per search frame ({result['searches']} searches,"
        f" {E2E_PER_SECOND:g}/s): p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms,"
        f" max {result['max_ms']} ms"
    )
    for word, row in result["per_word"].items():
        print(f"  {word:<16} p50 {row['p50_ms']:7.2f}  p99 {row['p99_ms']:7.2f}  {row}")
    print(f"  slowest (s since the first search, ms, word): {result['slowest']}")
    return {"corpus": {"key": meta["key"]}, "e2e": result}


# -- the index's cost on writes -------------------------------------------------------------


def tree_of(src: str) -> dict[str, str]:
    """Which roomcast a ``PYTHONPATH`` imports, and its git commit."""
    env = dict(os.environ, PYTHONPATH=src)
    where = subprocess.run(
        [str(servers.VENV_BIN / "python"), "-c", "import roomcast; print(roomcast.__file__)"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout.strip()
    if src and not where.startswith(str(Path(src).resolve())):
        raise SystemExit(f"PYTHONPATH {src} holds no roomcast (it imports {where})")
    package = str(Path(where).parent)

    def git(*command: str) -> str:
        run = subprocess.run(["git", "-C", package, *command], capture_output=True, text=True)
        return run.stdout.strip()

    commit = git("rev-parse", "--short", "HEAD")
    if git("status", "--porcelain", "--", "."):
        commit += "+uncommitted"  # a live tree that others edit: the digest says which
    return {"src": src, "roomcast": where, "commit": commit}


def writes_once(
    target: str, store: str, loadgen: list[str], opts: argparse.Namespace, tmp: Path
) -> dict[str, Any]:
    """One load-generator run on a fresh server (and, for PostgreSQL, a fresh database,
    given ``opts.pg_sql`` once the server has migrated it)."""
    if store == "sqlite":
        return driver.measure(target, loadgen, opts, tmp, None)
    db = services.Database.create(opts.pg_url)
    try:
        if opts.pg_sql:
            servers.stop(servers.start(target, tmp, None, ["--database-url", db.url]))
            asyncio.run(services.pg_execute(db.url, opts.pg_sql))
        return driver.measure(target, loadgen, opts, tmp, None, ["--database-url", db.url], db.name)
    finally:
        db.drop()


def brief(result: dict[str, Any]) -> dict[str, Any]:
    """A run's steps, each: offered, acked/s, p50/p99 ms, µs of server CPU per ack."""
    steps = []
    for step in result.get("steps", []):
        acked = step["acked_per_s"] or 0
        cpu = step.get("server_cpu")
        pg = (step.get("cpu_by_process") or {}).get("postgres")
        steps.append(
            {
                "offered": step["offered_per_s"],
                "acked_per_s": acked,
                "p50_ms": step["p50_ms"],
                "p99_ms": step["p99_ms"],
                "ok": step["ok"],
                "server_us_per_ack": round(cpu / acked * 1e6, 1) if cpu and acked else None,
                "postgres_us_per_ack": round(pg / acked * 1e6, 1) if pg and acked else None,
            }
        )
    return {
        "max_acked_per_s": result.get("max_acked_per_s_within_p99"),
        "p99_at_max_ms": (result.get("max_ok_step") or {}).get("p99_ms"),
        "steps": steps,
        # CPUs the rest of the machine used meanwhile: a noisy run shows here.
        "other_cpu": result.get("other_cpu"),
        "error": result.get("error"),
    }


def run_writes(args: argparse.Namespace) -> dict[str, Any]:
    search_src = os.environ.get("PYTHONPATH", "").split(os.pathsep)[0]
    if not search_src or not args.base_src:
        raise SystemExit("writes needs PYTHONPATH=<this tree's src> and --base-src <the base src>")
    trees = {"search": tree_of(search_src), "base": tree_of(args.base_src)}
    trees["pg_sql"] = args.pg_sql
    print(f"trees: {trees}", flush=True)
    # servers.start runs ``roomcast`` with this environment's PYTHONPATH and
    # ``roomcast-base`` with ROOMCAST_BASE_SRC.
    os.environ["ROOMCAST_BASE_SRC"] = args.base_src
    targets = {"search": "roomcast", "base": "roomcast-base"}
    opts = argparse.Namespace(
        roomcast_arg=[], loadgen_arg=[], pg_url=args.pg_url, pg_sql=args.pg_sql
    )
    words = ["--words"] if args.words else []
    stepped = [*persist.LOADGEN, *words]
    fixed = [
        "persist",
        "--clients",
        str(persist.CLIENTS),
        f"--rates={FIXED_RATES}",
        "--step-seconds=5",
        f"--bound-ms={FIXED_BOUND_MS}",
        *words,
    ]
    raw = []
    with tempfile.TemporaryDirectory(prefix="roomcast-search-writes-") as folder:
        tmp = Path(folder)
        for run in range(args.runs):
            order = ["search", "base"] if run % 2 == 0 else ["base", "search"]
            order = [tree for tree in order if tree in args.trees.split(",")]
            for store in args.stores.split(","):
                for tree in order:
                    for variant, loadgen in (("stepped", stepped), ("fixed", fixed)):
                        result = writes_once(targets[tree], store, loadgen, opts, tmp)
                        row = {"run": run, "store": store, "tree": tree, "variant": variant}
                        row |= brief(result)
                        print(json.dumps(row), flush=True)
                        raw.append(row | {"result": result})
    summary = summarize_writes(raw)
    for line in summary["lines"]:
        print(line)
    return {"trees": trees, "summary": summary, "raw": raw}


def summarize_writes(raw: list[dict[str, Any]]) -> dict[str, Any]:
    lines = []
    table: dict[str, Any] = {}
    for store in dict.fromkeys(r["store"] for r in raw):
        for tree in ("search", "base"):
            rows = [r for r in raw if r["store"] == store and r["tree"] == tree]
            maxima = [r["max_acked_per_s"] or 0 for r in rows if r["variant"] == "stepped"]
            fixed: dict[int, list[dict[str, Any]]] = {}
            for r in rows:
                if r["variant"] == "fixed":
                    for step in r["steps"]:
                        fixed.setdefault(step["offered"], []).append(step)
            entry = {
                "max_acked_per_s_median": statistics.median(maxima) if maxima else None,
                "max_acked_per_s_runs": maxima,
                "fixed": {
                    rate: {
                        "server_us_per_ack": [s["server_us_per_ack"] for s in steps],
                        "postgres_us_per_ack": [s["postgres_us_per_ack"] for s in steps],
                        "p50_p99_ms": [(s["p50_ms"], s["p99_ms"]) for s in steps],
                    }
                    for rate, steps in fixed.items()
                },
            }
            table[f"{store}/{tree}"] = entry
            lines.append(
                f"{store:<8} {tree:<6} stepped max {maxima}"
                f" (median {entry['max_acked_per_s_median']})"
            )
            for rate, values in entry["fixed"].items():
                lines.append(
                    f"{'':16} {rate}/s: server µs/ack {values['server_us_per_ack']}"
                    f" postgres µs/ack {values['postgres_us_per_ack']}"
                    f" p50/p99 {values['p50_p99_ms']}"
                )
    return {"table": table, "lines": lines}


# -- the command line -----------------------------------------------------------------------


def drop(args: argparse.Namespace) -> None:
    async def drop_pg() -> None:
        await services.pg_execute(
            args.pg_url, f"DROP DATABASE IF EXISTS {args.pg_database} WITH (FORCE)"
        )

    asyncio.run(drop_pg())
    shutil.rmtree(args.data, ignore_errors=True)
    print(f"dropped {args.pg_database} and removed {args.data}")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("part", choices=["queries", "size", "e2e", "writes", "drop"])
    parser.add_argument("--messages", type=int, default=Spec.messages, help="room messages")
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--reps", type=int, default=REPS, help="queries: searches of each query")
    parser.add_argument(
        "--budget", type=float, default=15.0, help="queries: most seconds spent on one query"
    )
    parser.add_argument("--explain", action="store_true", help="queries: plans of late ones")
    parser.add_argument("--searches", type=int, default=E2E_SEARCHES, help="e2e")
    parser.add_argument("--base-src", help="writes: the src folder of the tree before search")
    parser.add_argument("--runs", type=int, default=3, help="writes")
    parser.add_argument("--stores", default="sqlite,postgres", help="writes")
    parser.add_argument(
        "--words",
        action="store_true",
        help="writes: chat sentences of made-up words (the load generator's --words), not "
        "one padding word",
    )
    parser.add_argument(
        "--trees", default="search,base", help="writes: which of the two trees to run"
    )
    parser.add_argument(
        "--pg-sql",
        help="a probe of a schema change: SQL run on the PostgreSQL database before measuring "
        "(queries: on the kept database; writes: on each fresh one, once migrated)",
    )
    parser.add_argument(
        "--pg-sql-after", help="queries: SQL undoing --pg-sql, so the kept database stays as made"
    )
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument(
        "--pg-url", default=services.DEFAULT_PG_URL, help="where to create databases"
    )
    parser.add_argument("--pg-database", default=PG_DATABASE)
    parser.add_argument("--out", type=Path, default=results.DEFAULT_OUT)
    args = parser.parse_args(argv)
    if args.part == "drop":
        drop(args)
        return 0
    # Which tree is measured: the first PYTHONPATH entry's roomcast, or the installed one.
    tree = tree_of(os.environ.get("PYTHONPATH", "").split(os.pathsep)[0])
    started = time.monotonic()
    if args.part == "queries":
        doc = asyncio.run(run_queries(args))
    elif args.part == "size":
        doc = asyncio.run(run_size(args))
    elif args.part == "e2e":
        doc = run_e2e(args)
    else:
        doc = run_writes(args)
    doc["argv"] = argv
    doc["roomcast"] = tree
    doc["seconds"] = round(time.monotonic() - started, 1)
    doc["loadavg"] = os.getloadavg()
    args.out.mkdir(parents=True, exist_ok=True)
    path = results.write(args.out, f"{results.stamp()}-search-{args.part}", doc)
    print(f"\n{path} ({doc['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
