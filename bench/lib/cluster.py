"""Several nodes of one service on this host, for the scale-out scenarios
(``crossnode``, ``crossnode-latency``, ``scaleout``).

:func:`measure` starts N nodes of one target (``roomcast``, or ``roomcast-base``
for an A/B in one run) on one fresh PostgreSQL database and one fresh Redis
prefix with one shared secret, pinned to CPU 0 like every server here (or
where the scenario says); runs one load-generator command against them
(pinned to CPU 1); reads the CPU of each node, of Redis and of the database's
PostgreSQL processes from /proc over the whole command; stops the nodes by
PID; then records their memory and log warnings, drops the database and
deletes the prefix's keys (SCAN + UNLINK).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import time
from collections.abc import Callable
from typing import Any

from bench.lib import driver, servers, services
from bench.lib.measure import children_cpu, machine_busy, memory_kb, postgres_cpu, process_cpu

NAMES = "ABCDEFGHIJKL"

#: The load generator's arguments, given the started nodes (node A first) and
#: the ``--watch-pid``/``--postgres-db`` arguments that name them, Redis and
#: PostgreSQL.
Command = Callable[[list[servers.Server], list[str]], list[str]]


def base_paired(opts: argparse.Namespace) -> bool:
    """Whether ``roomcast-base`` was asked for beside ``roomcast``: the scale-out
    scenarios then measure it inside roomcast's run, alternating with it."""
    targets = servers.TARGETS if opts.targets == "all" else opts.targets.split(",")
    return "roomcast" in targets and "roomcast-base" in targets


def measure(
    ctx: driver.Context,
    target: str,
    nodes: int,
    command: Command,
    label: str = "",
    cpus: Callable[[int], int] = lambda index: 0,
) -> dict[str, Any]:
    """``nodes`` nodes of ``target`` and one load-generator run (``command``) against them.

    ``cpus`` gives the CPU node ``index`` (0: A) is pinned to; by default CPU 0,
    as every server here. A set-up failure (a node that does not start,
    PostgreSQL or Redis away) is the result's ``error``, not an exception.
    """
    opts, tmp = ctx.opts, ctx.tmp
    names = NAMES[:nodes]
    started: list[servers.Server] = []
    result: dict[str, Any] = {}
    db: services.Database | None = None
    prefix: services.Prefix | None = None
    try:
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
        for index in range(nodes):
            started.append(servers.start(target, tmp, None, args, cpu=cpus(index)))
        redis_pid = services.redis_pid(opts.redis_url)
        watch = [f"{name}={s.proc.pid}" for name, s in zip(names, started, strict=True)]
        watch.append("nodes=" + ",".join(str(s.proc.pid) for s in started))
        if redis_pid:
            watch.append(f"redis={redis_pid}")
        watch.append("postgres=0")
        watch_args = [arg for item in watch for arg in ("--watch-pid", item)]
        watch_args += ["--postgres-db", db.name]
        cmd = command(started, watch_args)
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
    except Exception as exc:  # a node did not start, or the database or Redis set-up failed
        result = {"error": f"{label or target}: {exc!r}"[-1500:]}
    finally:
        for server in started:
            servers.stop(server)
        result["log_problems"] = {
            n: servers.log_problems(s.log) for n, s in zip(names, started, strict=False)
        }
        if db is not None:
            result["database_mb"] = db.size_mb()
            db.drop()
        if prefix is not None:
            result["redis_keys_left"] = prefix.clear()
    result["nodes"] = nodes
    result["target"] = target
    return result
