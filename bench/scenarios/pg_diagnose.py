"""Where persisted chat spends its time on PostgreSQL (docs/benchmarks.md, "Scale-out").

Three measurements, each on a fresh database (created and dropped here, as
bench/run.py's ``persist-pg`` does), one roomcast server pinned to CPU 0 and
the ``persist`` load generator (50 clients, one room each) pinned to CPU 1:

* ``batches``: for each offered rate, one 5 s step; the store's batches from
  roomcast's own /metrics (``roomcast_store_batch_size``,
  ``roomcast_store_write_seconds``): mean batch size, mean batch time, and
  how much of the step the writer was busy. The rates run one after the
  other on one database, so later ones also meet a bigger table;
  ``--pg-prefill N`` starts from N messages and ANALYZE. ``--store sqlite``
  for the same on the default SQLite store.
* ``statements``: PostgreSQL's own time per statement, by setting
  ``log_min_duration_statement = 0`` on the benchmark's database only (ALTER
  DATABASE) and reading the server log (``--pg-log``) afterwards; the resend
  lookup's time is also shown by fifths of the run (it grows with the table
  when its cached plan is a sequential scan).
* ``plan``: the resend lookup (roomcast's own SQL) prepared and run on the
  empty table, then 40,000 rows added: EXPLAIN ANALYZE in that session (the
  plan asyncpg's statement cache keeps) and in a new one.

    .venv/bin/python bench/scenarios/pg_diagnose.py batches --rates 500,1000,2000,3000,4000
    .venv/bin/python bench/scenarios/pg_diagnose.py batches --pg-prefill 200000 \\
        --rates 1000,2000,4000,6000
    .venv/bin/python bench/scenarios/pg_diagnose.py batches --store sqlite \\
        --rates 500,1000,2000,4000
    .venv/bin/python bench/scenarios/pg_diagnose.py statements --rates 1000,2000,4000
    .venv/bin/python bench/scenarios/pg_diagnose.py plan
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import asyncpg

if __package__ in (None, ""):  # run as a file: import bench from the repository
    sys.path[0] = str(Path(__file__).resolve().parents[2])

from bench.lib import driver, servers, services

PG_LOG = Path("/var/log/postgresql/postgresql-15-main.log")


def persist_step(url: str, rates: str, pid: int) -> list[dict[str, Any]]:
    """The persist load generator at ``rates`` (5 s each) against ``url``; its steps."""
    cmd = driver.python_loadgen(
        ["persist", "--url", url, "--clients", "50", "--rates", rates, "--server-pid", str(pid)]
    )
    out = subprocess.run(
        ["taskset", "-c", "1", *cmd],
        capture_output=True,
        text=True,
        timeout=200,
        check=True,
        cwd=servers.REPO,
    )
    steps: list[dict[str, Any]] = json.loads(out.stdout.strip().splitlines()[-1])["steps"]
    return steps


def store_metrics(url: str) -> dict[str, float]:
    """The store's histogram sums and counts from the server's /metrics."""
    http = url.replace("ws://", "http://").removesuffix("/ws") + "/metrics"
    out: dict[str, float] = {}
    with urllib.request.urlopen(http, timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith("roomcast_store_") and ("_sum" in line or "_count" in line):
                name, value = line.rsplit(" ", 1)
                out[name] = float(value)
    return out


def batches(opts: argparse.Namespace, tmp: Path) -> None:
    db = services.Database.create(opts.pg_url)
    args = [] if opts.store == "sqlite" else ["--database-url", db.url]
    if opts.pg_prefill and args:
        servers.stop(servers.start("roomcast", tmp, None, args))  # the schema
        db.prefill(opts.pg_prefill)
    server = servers.start("roomcast", tmp, None, args)
    print(
        "| offered msgs/s | acked/s | p50 ms | p99 ms | mean batch | mean batch ms | writer busy |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    try:
        for rate in opts.rates.split(","):
            before = store_metrics(server.url)
            step = persist_step(server.url, rate, server.proc.pid)[0]
            after = store_metrics(server.url)
            n = after["roomcast_store_batch_size_count"] - before["roomcast_store_batch_size_count"]
            msgs = after["roomcast_store_batch_size_sum"] - before["roomcast_store_batch_size_sum"]
            busy = (
                after["roomcast_store_write_seconds_sum"]
                - before["roomcast_store_write_seconds_sum"]
            )
            print(
                f"| {int(float(rate)):,} | {step['acked_per_s']:,} | {step['p50_ms']:.2f} "
                f"| {step['p99_ms']:.2f} | {msgs / n:.1f} | {1000 * busy / n:.2f} "
                f"| {busy / 5:.0%} |",
                flush=True,
            )
    finally:
        servers.stop(server)
        db.drop()


def statements(opts: argparse.Namespace, tmp: Path) -> None:
    if not opts.pg_log.exists():
        print(f"no PostgreSQL log at {opts.pg_log} (--pg-log)", file=sys.stderr)
        return
    db = services.Database.create(opts.pg_url)
    sql = f"ALTER DATABASE {db.name} SET log_min_duration_statement = 0"
    asyncio.run(services.pg_execute(opts.pg_url, sql))
    start = opts.pg_log.stat().st_size
    server = servers.start("roomcast", tmp, None, ["--database-url", db.url])
    try:
        steps = persist_step(server.url, opts.rates, server.proc.pid)
    finally:
        servers.stop(server)
        with opts.pg_log.open("rb") as log:
            log.seek(start)
            text = log.read().decode(errors="replace")
        db.drop()
    for step in steps:
        print(f"{step['offered_per_s']:,}/s: p50 {step['p50_ms']} ms, p99 {step['p99_ms']} ms")
    total: dict[str, float] = collections.defaultdict(float)
    count: collections.Counter[str] = collections.Counter()
    lookups: list[float] = []
    for line in text.splitlines():
        match = re.search(r"duration: ([\d.]+) ms\s+(\w+)[^:]*:\s*(.*)", line)
        if db.name not in line or not match:
            continue
        ms, phase, statement = float(match.group(1)), match.group(2), match.group(3)
        statement = re.sub(r"\{[^}]*\}", "{...}", statement)  # the advisory lock keys
        key = f"{phase}: {statement[:70]}"
        total[key] += ms
        count[key] += 1
        if phase == "execute" and "DISTINCT ON" in statement:
            lookups.append(ms)
    print("| ms in all | times | mean ms | statement |\n|---:|---:|---:|---|")
    for key in sorted(total, key=lambda k: -total[k])[:10]:
        print(f"| {total[key]:,.1f} | {count[key]:,} | {total[key] / count[key]:.3f} | `{key}` |")
    n = len(lookups)
    fifths = [lookups[i * n // 5 : (i + 1) * n // 5] for i in range(5)]
    means = [round(sum(f) / len(f), 2) for f in fifths if f]
    print(f"resend lookup, mean ms by fifth of the run: {means}")


async def _plan(url: str) -> None:
    from roomcast.store.postgres import _DEDUPE  # the store's own statement

    senders = "{" + ",".join(f"u{i}" for i in range(50)) + "}"
    ids = "{" + ",".join(f"c{i * 800}" for i in range(50)) + "}"
    args = f"('{senders}', '{ids}', 0)"
    conn = await asyncpg.connect(url)
    other = None
    try:
        await conn.execute(f"PREPARE lookup(text[], text[], bigint) AS {_DEDUPE}")
        for _ in range(8):  # past the five custom plans before a generic one is kept
            await conn.fetch(f"EXECUTE lookup{args}")
        now = int(time.time() * 1000)
        await conn.execute(
            "INSERT INTO messages (room, seq, message_id, sender, body, client_id, ts_ms)"
            f" SELECT 'r' || (i % 50), i, md5(i::text), 'u' || (i % 50), 'x', 'c' || i, {now}"
            " FROM generate_series(1, 40000) i"
        )
        rows = await conn.fetch(f"EXPLAIN (ANALYZE) EXECUTE lookup{args}")
        print("prepared on the empty table, after 40,000 rows:")
        print("\n".join(row[0] for row in rows))
        other = await asyncpg.connect(url)
        await other.execute(f"PREPARE lookup(text[], text[], bigint) AS {_DEDUPE}")
        rows = await other.fetch(f"EXPLAIN (ANALYZE) EXECUTE lookup{args}")
        print("\nprepared in a new session:")
        print("\n".join(row[0] for row in rows))
    finally:
        await conn.close()
        if other is not None:
            await other.close()


def plan(opts: argparse.Namespace, tmp: Path) -> None:
    db = services.Database.create(opts.pg_url)
    try:
        # roomcast creates its schema when it starts.
        servers.stop(servers.start("roomcast", tmp, None, ["--database-url", db.url]))
        asyncio.run(_plan(db.url))
    finally:
        db.drop()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("what", choices=["batches", "statements", "plan"])
    parser.add_argument("--rates", default="500,1000,2000,3000,4000", help="offered msgs/s")
    parser.add_argument("--store", choices=["postgres", "sqlite"], default="postgres")
    parser.add_argument("--pg-url", default=services.DEFAULT_PG_URL)
    parser.add_argument(
        "--pg-prefill",
        type=int,
        default=0,
        help="batches: first give the database this many messages and ANALYZE it",
    )
    parser.add_argument("--pg-log", type=Path, default=PG_LOG, help=f"default {PG_LOG}")
    opts = parser.parse_args(argv)
    problem = services.pg_problem(opts.pg_url)
    if problem:
        print(problem, file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="roomcast-pg-diagnose-") as tmpdir:
        {"batches": batches, "statements": statements, "plan": plan}[opts.what](opts, Path(tmpdir))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
