"""Read markers written as ReadState writes them: one upsert batch per interval.

How long one write of N markers takes on roomcast's SQLite and PostgreSQL
stores, while nothing else writes: the cost behind the marker write
interval (``roomcast.readstate.MARKER_WRITE_INTERVAL``). Each batch moves N
users' markers forward in one transaction, as a flush does; a second batch
at lower seqs shows the forward-only guard refusing them. Prints the median
of ``--runs`` batches per size, in ms per batch and µs per marker; nothing
is kept (a temporary SQLite file, a scratch PostgreSQL database dropped at
the end)::

    .venv/bin/python bench/scenarios/marker_writes.py
    .venv/bin/python bench/scenarios/marker_writes.py --backend sqlite --sizes 100,1000
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a file: import bench from the repository
    sys.path[0] = str(Path(__file__).resolve().parents[2])

from bench.scenarios.store_seam import scratch_database
from roomcast.store.base import Store
from roomcast.store.postgres import PostgresStore
from roomcast.store.sqlite import SQLiteStore

DEFAULT_URL = os.environ.get(
    "ROOMCAST_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


async def measure(store: Store, sizes: list[int], runs: int) -> None:
    for size in sizes:
        forward, backward = [], []
        for run in range(runs):
            seq = (run + 1) * 10
            batch = [(f"user{i}", f"room{i % 50}", seq) for i in range(size)]
            started = time.perf_counter()
            await store.save_markers(batch)
            forward.append(time.perf_counter() - started)
            stale = [(name, stream, seq - 5) for name, stream, seq in batch]
            started = time.perf_counter()
            await store.save_markers(stale)
            backward.append(time.perf_counter() - started)
        ahead, behind = statistics.median(forward), statistics.median(backward)
        print(
            f"  {size:>6} markers: {ahead * 1000:8.2f} ms a batch, "
            f"{ahead / size * 1e6:6.1f} µs a marker; refused (behind): "
            f"{behind * 1000:8.2f} ms"
        )


async def main_async(args: argparse.Namespace) -> None:
    sizes = [int(size) for size in args.sizes.split(",")]
    if args.backend in ("sqlite", "both"):
        with tempfile.TemporaryDirectory() as folder:
            store = SQLiteStore(Path(folder) / "markers.db")
            await store.open()
            print("SQLite (WAL, synchronous=FULL):")
            await measure(store, sizes, args.runs)
            await store.close()
    if args.backend in ("postgres", "both"):
        async with scratch_database(args.database_url) as url:
            store = PostgresStore(url)
            await store.open()
            print(f"PostgreSQL at {args.database_url.rpartition('@')[2]}:")
            await measure(store, sizes, args.runs)
            await store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--sizes", default="10,100,1000,10000", help="markers per batch")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--database-url", default=DEFAULT_URL)
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
