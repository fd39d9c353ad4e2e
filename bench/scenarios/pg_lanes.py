"""PostgreSQL writer lanes (issue 22): one node's store writes, through the Store API.

One process, the node, pinned to CPU 0 as the benchmark's servers are,
opens a ``PostgresStore`` on a fresh database and drives it directly (no
sockets, no JSON: the store's own ceiling): ``--rooms`` rooms with
``--senders`` senders each, and ``--conversations`` direct conversations
with both sides sending, every sender sending a 48-byte chat with a frame
id (as a client does, so the resend lookup runs) and awaiting its ack
(the future: stored and committed) before the next one (``--rates 0``,
the default: the store's ceiling), or at an even pace that adds up to each
of ``--rates`` msgs/s offered, one step after the other, on one database
(the latency at a given load, as bench/scenarios/persist.py's steps
measure it through a server). After ``--warmup`` seconds, ``--seconds``
are measured per step: acked messages/s, ack p50/p99, batches and their
mean size, the node's CPU, PostgreSQL's CPU
(its backends on the database, plus the WAL writer, checkpointer and
background writer) and the rest of the machine's (``other CPU``: other
engineers' work, noise), all over the measured seconds.

Configurations, in one run: ``base`` (the tree before, ``--base-src``,
default ``$ROOMCAST_BASE_SRC``: the ``src`` of a ``git worktree`` of the
base commit, imported first through ``PYTHONPATH``) and this tree with each
of ``--lanes`` (``PostgresStore(write_lanes=N)``; ``N:M`` also sets the
queue's overlap, :data:`~roomcast.store.batch.OVERLAP_AT`, to M). Each round runs every
configuration once, on a fresh database dropped afterwards, in an order
rotated per round so that drift hits every configuration alike; the table
gives the median over rounds and each round's figure.

Parameters, and why: 200 rooms × 1 sender: a node with many quiet rooms,
where one writer stores every room in turn; 200 senders awaiting their
acks keep the store busy (up to 200 messages waiting) without a queue
that only grows; 10 s measured after 2 s of warm-up: thousands of batches.
``--conversations 100`` (with ``--rooms 100``) adds direct messages, whose
inboxes two lanes may share.

    .venv/bin/python bench/scenarios/pg_lanes.py --lanes 1,2,4,8 --rounds 3
    .venv/bin/python bench/scenarios/pg_lanes.py --lanes 4 --rates 1000,2000,4000,8000 \\
        --warmup 1 --seconds 5
    .venv/bin/python bench/scenarios/pg_lanes.py --rooms 100 --conversations 100
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: import bench from the repository
    sys.path[0] = str(Path(__file__).resolve().parents[2])

from bench.lib import servers, services
from bench.lib.measure import machine_busy, postgres_cpu

TEXT = "x" * 48
#: Other processes' CPU (cores) under which a round counts as quiet: the
#: machine is shared, and a round with a neighbour's test run is slower.
QUIET = 0.3
#: Seconds a child may take beyond its steps (open, close, a slow flush).
CHILD_SLACK = 60


# -- the node (a child process) ------------------------------------------------------


async def drive(opts: argparse.Namespace) -> dict[str, Any]:
    """Open the store, run each step (warm-up + measured seconds), close; the figures."""
    from roomcast.store import postgres  # the tree PYTHONPATH names

    settings: dict[str, Any] = {}
    if opts.lanes:
        # The store gives its lanes at most half its pool: more lanes, a bigger pool.
        settings["write_lanes"] = opts.lanes
        settings["pool_size"] = max(8, 2 * opts.lanes)
    store = postgres.PostgresStore(opts.url, **settings)
    if opts.overlap:
        store._queue.overlap = opts.overlap  # the measured constant, varied here only
    await store.open()
    users = [f"u{i}" for i in range(2 * opts.conversations)]
    for name in users:
        await store.create_user(name, "h")
    senders: list[tuple[str | None, str, str | None]] = [
        (f"room-{r}", f"s{r}-{k}", None) for r in range(opts.rooms) for k in range(opts.senders)
    ]
    for c in range(opts.conversations):
        one, two = users[2 * c], users[2 * c + 1]
        senders += [(None, one, two), (None, two, one)]
    steps = [await step(store, senders, float(rate), opts) for rate in opts.rates.split(",")]
    lanes = len(getattr(store, "_wconns", [None]))
    await store.close()
    return {"tree": str(Path(postgres.__file__).parents[2]), "lanes": lanes, "steps": steps}


async def step(
    store: Any, senders: list[tuple[str | None, str, str | None]], rate: float, opts: Any
) -> dict[str, Any]:
    """One step: every sender closed-loop (``rate`` 0: send, await the ack, again), or
    ``rate`` msgs/s offered over all senders at an even pace (open loop)."""
    batches = [0, 0]
    latencies: list[float] = []
    errors = [0]
    measuring = False
    stop = False

    def on_batch(size: int, _seconds: float) -> None:
        if measuring:
            batches[0] += 1
            batches[1] += size

    def done(started: float, future: asyncio.Future[Any]) -> None:
        if future.exception() is not None:
            errors[0] += 1
        elif measuring:
            latencies.append(time.perf_counter() - started)

    def send(room: str | None, name: str, peer: str | None) -> asyncio.Future[Any]:
        frame = uuid.uuid4().hex
        if room is not None:
            future: asyncio.Future[Any] = store.append(room, name, TEXT, client_id=frame)
        else:
            future = store.append_direct(name, peer, TEXT, client_id=frame)
        future.add_done_callback(functools.partial(done, time.perf_counter()))
        return future

    async def closed(room: str | None, name: str, peer: str | None) -> None:
        while not stop:
            with contextlib.suppress(Exception):
                await send(room, name, peer)

    async def paced(index: int, room: str | None, name: str, peer: str | None) -> None:
        interval = len(senders) / rate
        due = time.perf_counter() + interval * index / len(senders)
        while not stop:
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            send(room, name, peer)
            due += interval

    store.on_batch = on_batch
    if rate:
        tasks = [asyncio.ensure_future(paced(i, *who)) for i, who in enumerate(senders)]
    else:
        tasks = [asyncio.ensure_future(closed(*who)) for who in senders]
    await asyncio.sleep(opts.warmup)
    database = opts.url.rpartition("/")[2]
    measuring = True
    cpu0, pg0, busy0, t0 = _cpu(), postgres_cpu(database), machine_busy(), time.perf_counter()
    sent0 = errors[0]
    await asyncio.sleep(opts.seconds)
    measuring = False
    wall, cpu = time.perf_counter() - t0, _cpu() - cpu0
    pg1, busy = postgres_cpu(database), machine_busy() - busy0
    stop = True
    await asyncio.gather(*tasks)
    await store.flush()
    latencies.sort()
    count = len(latencies) or 1
    return {
        "rate": int(rate),
        "acked_per_s": round(len(latencies) / wall),
        "p50_ms": round(1000 * latencies[count // 2], 2) if latencies else None,
        "p99_ms": round(1000 * latencies[int(count * 0.99)], 2) if latencies else None,
        "max_ms": round(1000 * latencies[-1], 2) if latencies else None,
        "errors": errors[0] - sent0,
        "batches_per_s": round(batches[0] / wall),
        "mean_batch": round(batches[1] / max(batches[0], 1), 1),
        "node_cpu": round(cpu / wall, 3),
        "postgres_cpu": round((pg1 - pg0) / wall, 3) if pg0 is not None and pg1 else None,
        # Everything else the machine did meanwhile (other engineers' tests): noise.
        "other_cpu": round((busy - cpu - ((pg1 or 0) - (pg0 or 0))) / wall, 3),
    }


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def child(opts: argparse.Namespace) -> None:
    import uvloop

    print(json.dumps(uvloop.run(drive(opts))), flush=True)


# -- the parent: configurations × rounds ------------------------------------------------


def run_one(opts: argparse.Namespace, config: str) -> dict[str, Any]:
    """One configuration (``base`` or a lane count) on a fresh database."""
    db = services.Database.create(opts.pg_url)
    env = dict(os.environ)
    cmd = [
        str(servers.VENV_BIN / "python"),
        "-m",
        "bench.scenarios.pg_lanes",
        "child",
        "--url",
        db.url,
        f"--rooms={opts.rooms}",
        f"--senders={opts.senders}",
        f"--conversations={opts.conversations}",
        f"--rates={opts.rates}",
        f"--warmup={opts.warmup}",
        f"--seconds={opts.seconds}",
    ]
    if config == "base":
        env["PYTHONPATH"] = opts.base_src
    else:
        lanes, _, overlap = config.partition(":")
        cmd.append(f"--lanes={lanes}")
        if overlap:
            cmd.append(f"--overlap={overlap}")
    try:
        proc = subprocess.run(
            ["taskset", "-c", "0", *cmd],
            capture_output=True,
            text=True,
            timeout=CHILD_SLACK + len(opts.rates.split(",")) * (opts.warmup + opts.seconds + 5),
            env=env,
            cwd=servers.REPO,
            check=False,
        )
    finally:
        db.drop()
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        return {"config": config, "error": proc.stderr[-1500:]}
    result: dict[str, Any] = json.loads(lines[-1])
    result["config"] = config
    return result


def load() -> str:
    """The first line of ``top -bn1``'s load average, and its CPU line."""
    out = subprocess.run(["top", "-bn1"], capture_output=True, text=True, check=False).stdout
    lines = out.splitlines()
    return " / ".join(line.strip() for line in lines[:3] if "load" in line or "Cpu" in line)


def parent(opts: argparse.Namespace) -> None:
    configs = ["base", *opts.lanes.split(",")] if opts.base_src else opts.lanes.split(",")
    results: dict[str, list[dict[str, Any]]] = {config: [] for config in configs}
    print(f"# {time.strftime('%Y-%m-%d %H:%M:%S')}; load before: {load()}", flush=True)
    for round_ in range(opts.rounds):
        order = configs[round_ % len(configs) :] + configs[: round_ % len(configs)]
        for config in order:
            result = run_one(opts, config)
            results[config].append(result)
            print(json.dumps(result), flush=True)
    print(f"# load after: {load()}")
    for index, rate in enumerate(opts.rates.split(",")):
        offered = "closed loop (each sender awaits its ack)" if not float(rate) else f"{rate}/s"
        print(f"\n{offered}, medians over rounds:\n")
        print(
            "| configuration | lanes | acked msgs/s (each round) | ack p50 / p99 ms"
            " | mean batch | node CPU | PostgreSQL CPU | other CPU | errors"
            f" | quiet rounds (other CPU < {QUIET}): acked msgs/s, p50 / p99 ms |"
        )
        print("|---|---:|---|---|---:|---:|---:|---:|---:|---|")
        for config, runs in results.items():
            good = [r["steps"][index] for r in runs if "error" not in r]
            if not good:
                print(f"| {config} | | error: {runs[0].get('error', '')[-200:]!r} |||||||")
                continue

            def med(key: str, rows: list[dict[str, Any]] = good) -> float:
                return statistics.median(r.get(key) or 0 for r in rows)

            each = ", ".join(f"{r['acked_per_s']:,}" for r in good)
            lanes = next(r["lanes"] for r in runs if "error" not in r)
            name = "base (one writer)" if config == "base" else f"lanes={config}"
            name = name.replace(":", ", overlap ")
            quiet = [r for r in good if (r.get("other_cpu") or 0) < QUIET]
            calm = (
                f"{med('acked_per_s', quiet):,.0f}, {med('p50_ms', quiet):.1f}"
                f" / {med('p99_ms', quiet):.1f} ({len(quiet)} of {len(good)})"
                if quiet
                else "none"
            )
            print(
                f"| {name} | {lanes} | **{med('acked_per_s'):,.0f}** ({each})"
                f" | {med('p50_ms'):.1f} / {med('p99_ms'):.1f} | {med('mean_batch'):.1f}"
                f" | {med('node_cpu'):.2f} | {med('postgres_cpu'):.2f}"
                f" | {med('other_cpu'):.2f} | {sum(r['errors'] for r in good)} | {calm} |"
            )


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("mode", nargs="?", default="run", choices=["run", "child"])
    parser.add_argument("--url", help="(child) the database to write to")
    parser.add_argument(
        "--pg-url",
        default=os.environ.get("ROOMCAST_BENCH_PG_URL", services.DEFAULT_PG_URL),
        help="PostgreSQL to create the fresh databases in",
    )
    parser.add_argument("--base-src", default=os.environ.get("ROOMCAST_BASE_SRC", ""))
    parser.add_argument(
        "--lanes",
        default="1,2,4,8",
        help="(run) lane counts of this tree; LANES:N also sets OVERLAP_AT to N",
    )
    parser.add_argument("--overlap", type=int, default=0, help="(child) OVERLAP_AT to use")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rooms", type=int, default=200)
    parser.add_argument("--senders", type=int, default=1, help="senders per room")
    parser.add_argument("--conversations", type=int, default=0)
    parser.add_argument(
        "--rates",
        default="0",
        help="steps, in msgs/s offered over all senders (0: closed loop), one after the other",
    )
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds before each step")
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds each step")
    opts = parser.parse_args(argv)
    if opts.mode == "child":
        opts.lanes = int(opts.lanes) if opts.lanes and "," not in opts.lanes else None
        child(opts)
    else:
        parent(opts)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
