"""crossnode: the fan-out ramp with the clients on three nodes of one service,
against the same clients on one node; roomcast only, run only when named
(it needs the local PostgreSQL, --pg-url, and Redis, --redis-url; without
them it is not run, with a note).

Each run measures two set-ups, in alternating order (one node first in even
runs, three nodes first in odd ones):

- three nodes: A, B and C share one fresh database and one fresh Redis
  prefix; the sender is on A, the receivers alternate between B and C, so
  every delivery but the sender's own copy crosses Redis;
- one node: the same clients all on one node with the same flags,
  PostgreSQL and Redis (it publishes to Redis and hears only its own echo),
  so the only difference is crossing nodes.

Every node is pinned to CPU 0 like every server here (the three share it),
the load generator to CPU 1. Each step also reports deliveries/s and losses
per node, p90/p99.9, and the CPU of each node, of Redis and of PostgreSQL
(read from /proc); each set-up also records the nodes' memory and the
warnings in their logs. Afterwards the prefix's keys are deleted (SCAN +
UNLINK) and the database dropped.

Parameters, and why:

- One sender and 100 receivers (``--crossnode-receivers``) in one room:
  fanout100's room, so the two compare; 50 receivers on each of B and C.
- The ramp of fanout100 (bench/scenarios/fanout.py: a fixed step at
  20,000 deliveries/s for p50/p99, then ×1.5 per step and 2 bisections;
  no loss, no drop, p99 ≤ 100 ms, the sender on pace): the scale-out
  issue's targets are the p50 added by crossing nodes (≤ 2 ms) and each
  node's share of one node's throughput.
- Alternating order: drift over a run (the database growing, the machine's
  other work) hits both set-ups alike.

    .venv/bin/python -m bench.scenarios.crossnode --targets roomcast --runs 1
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: import bench from the repository
    sys.path[0] = str(Path(__file__).resolve().parents[2])

from bench.lib import driver, servers, services
from bench.lib.measure import (
    children_cpu,
    machine_busy,
    memory_kb,
    postgres_cpu,
    process_cpu,
)
from bench.scenarios.fanout import RAMP

LOADGEN = ("fanout", *RAMP)  # --clients: 1 + --crossnode-receivers


def variant(nodes: int, ctx: driver.Context) -> dict[str, Any]:
    """The fan-out ramp with the sender on node A and the receivers on the other nodes
    (all on A when ``nodes`` is 1); a fresh database and Redis prefix, cleaned after."""
    opts, tmp = ctx.opts, ctx.tmp
    receivers = opts.crossnode_receivers
    db = services.Database.create(opts.pg_url)
    prefix = services.Prefix.create(opts.redis_url)
    secret = os.urandom(24).hex()  # one secret, as the nodes of one service share
    args = [
        *opts.roomcast_arg,
        "--database-url",
        db.url,
        "--redis-url",
        opts.redis_url,
        "--redis-prefix",
        prefix.prefix,
        "--secret",
        secret,
    ]
    started: list[servers.Server] = []
    result: dict[str, Any] = {}
    names = "ABCDEFGH"[:nodes]
    try:
        for _ in range(nodes):
            started.append(servers.start("roomcast", tmp, None, args))
        sender = started[0]
        urls = [s.url for s in started[1:]] or [sender.url]
        redis_pid = services.redis_pid(opts.redis_url)
        watch = [f"{name}={s.proc.pid}" for name, s in zip(names, started, strict=True)]
        watch.append("nodes=" + ",".join(str(s.proc.pid) for s in started))
        if redis_pid:
            watch.append(f"redis={redis_pid}")
        watch.append("postgres=0")
        cmd_pg = ["--postgres-db", db.name]
        cmd = [
            *LOADGEN,
            "--clients",
            str(receivers + 1),
            "--url",
            sender.url,
            "--server-pid",
            str(sender.proc.pid),
        ]
        for url in urls:
            cmd += ["--receiver-url", url]
        for item in watch:
            cmd += ["--watch-pid", item]
        cmd += cmd_pg
        cpu0 = [s.cpu_seconds() for s in started]
        redis0, pg0 = process_cpu(redis_pid), postgres_cpu(db.name)
        busy0, child0, t0 = machine_busy(), children_cpu(), time.monotonic()
        try:
            result = driver.loadgen(driver.python_loadgen(cmd + opts.loadgen_arg))
        except subprocess.TimeoutExpired as exc:
            result = {"error": repr(exc)}
        wall = time.monotonic() - t0
        node_cpu = [(s.cpu_seconds() - c) / wall for s, c in zip(started, cpu0, strict=True)]
        result["node_cpu"] = {n: round(c, 3) for n, c in zip(names, node_cpu, strict=True)}
        result["server_cpu"] = round(sum(node_cpu), 3)
        other = (machine_busy() - busy0) / wall - sum(node_cpu) - (children_cpu() - child0) / wall
        redis1, pg1 = process_cpu(redis_pid), postgres_cpu(db.name)
        if redis0 is not None and redis1 is not None:
            result["redis_cpu"] = round((redis1 - redis0) / wall, 3)
            other -= (redis1 - redis0) / wall
        if pg0 is not None and pg1 is not None:
            result["postgres_cpu"] = round((pg1 - pg0) / wall, 3)
            other -= (pg1 - pg0) / wall
        result["other_cpu"] = round(other, 3)
        result["node_memory_kb"] = {
            n: memory_kb(s.proc.pid) for n, s in zip(names, started, strict=True)
        }
        result["node_urls"] = {n: s.url for n, s in zip(names, started, strict=True)}
    except RuntimeError as exc:  # a node did not start
        result = {"error": repr(exc)[-1500:]}
    finally:
        for server in started:
            servers.stop(server)
        result["log_problems"] = {
            n: servers.log_problems(s.log) for n, s in zip(names, started, strict=False)
        }
        result["database_mb"] = db.size_mb()
        db.drop()
        result["redis_keys_left"] = prefix.clear()
    result["nodes"] = nodes
    result["receivers"] = receivers
    return result


def measure_crossnode(
    scenario: driver.Scenario, ctx: driver.Context, target: str, run: int
) -> dict[str, Any]:
    """One run of ``crossnode``: three nodes and the one-node baseline, alternating order."""
    order = [1, 3] if run % 2 == 0 else [3, 1]
    variants: dict[str, dict[str, Any]] = {}
    for nodes in order:
        try:
            variants["single" if nodes == 1 else "cross"] = variant(nodes, ctx)
        except Exception as exc:  # database or Redis set-up: this run's error, not a traceback
            variants["single" if nodes == 1 else "cross"] = {"error": repr(exc)[-1500:]}
    result: dict[str, Any] = {
        "scenario": "crossnode",
        "receivers": ctx.opts.crossnode_receivers,
        "order": ["single" if n == 1 else "cross" for n in order],
        "variants": variants,
    }
    errors = [f"{k}: {v['error']}" for k, v in variants.items() if "error" in v]
    if errors:
        result["error"] = "; ".join(errors)
    return result


CROSSNODE = driver.Scenario(
    "crossnode",
    LOADGEN,
    measure=measure_crossnode,
    opt_in=True,
    roomcast_only="they have no multi-node mode",
    base_runs=False,  # the scale-out scenarios run on this tree only
    services=("postgres", "redis"),
)
SCENARIOS = [CROSSNODE]


def main(argv: list[str]) -> int:
    return driver.main(argv, SCENARIOS, __doc__)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
