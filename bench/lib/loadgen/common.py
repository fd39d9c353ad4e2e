"""What every load-generator scenario shares: CPU and memory readings, percentiles,
opening and closing connections, and the CPU of watched processes (the nodes,
Redis, the local PostgreSQL).

This runs in the load-generator process (pinned to CPU 1): like the rest of
bench/lib/loadgen it imports only the standard library and picows.
"""

from __future__ import annotations

import asyncio
import os
import resource
import time
from collections.abc import Callable
from typing import Any

from picows import WSListener, ws_connect

CHAT = b'"type":"chat"'
PAD = "x" * 48
CONNECT_BATCH = 50
MEMORY_FIELDS = ("VmRSS", "VmHWM", "RssAnon", "RssFile")


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def process_cpu(pid: int) -> float:
    """CPU seconds used so far by process ``pid`` (0: none known)."""
    if not pid:
        return 0.0
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(sorted_values: list[int], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, int(q * len(sorted_values)))
    return sorted_values[index] / 1e6  # ns -> ms


def memory_kb(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM, RssAnon, RssFile of process ``pid`` in kB (empty: none known)."""
    if not pid:
        return {}
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in MEMORY_FIELDS:
                out[key] = int(value.split()[0])
    return out


async def connect_all(url: str, count: int, factory: Callable[[], WSListener]) -> list[Any]:
    """Open ``count`` connections, CONNECT_BATCH at a time; return the listeners."""
    listeners: list[Any] = []
    for first in range(0, count, CONNECT_BATCH):
        batch = min(CONNECT_BATCH, count - first)
        pairs = await asyncio.wait_for(
            asyncio.gather(*(ws_connect(factory, url) for _ in range(batch))), timeout=30
        )
        listeners.extend(listener for _, listener in pairs)
    return listeners


def close_all(listeners: list[Any]) -> None:
    for listener in listeners:
        if listener.transport is not None:
            listener.transport.disconnect()


async def wait_until(done: Callable[[], bool], max_wait: float, what: str) -> None:
    """Poll ``done`` every 10 ms; raise if it is still false after ``max_wait`` seconds."""
    deadline = time.monotonic() + max_wait
    while not done():
        if time.monotonic() >= deadline:
            raise RuntimeError(f"timed out after {max_wait} s waiting for {what}")
        await asyncio.sleep(0.01)


#: PostgreSQL's background processes that work for every database (WAL, checkpoints).
PG_SHARED = ("walwriter", "checkpointer", "background writer")


def postgres_cpu(database: str = "") -> float:
    """CPU seconds so far of the local PostgreSQL's processes (from /proc).

    With ``database``: the backends (and autovacuum workers) on that
    database plus the shared WAL writer, checkpointer and background
    writer, so other databases' work on the same server is left out.
    Without: the postmaster with its reaped children and every live child.
    """
    procs: dict[int, tuple[list[str], str]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as stat:
                text = stat.read()
            if "(postgres)" not in text:
                continue
            with open(f"/proc/{name}/cmdline", "rb") as cmd:
                title = cmd.read().decode(errors="replace")
        except OSError:
            continue
        procs[int(name)] = (text.rsplit(")", 1)[1].split(), title)
    ticks = 0
    for fields, title in procs.values():
        master = int(fields[1]) not in procs
        if database:
            if master or not (f" {database} " in title or any(k in title for k in PG_SHARED)):
                continue
        ticks += int(fields[11]) + int(fields[12])
        if master:
            ticks += int(fields[13]) + int(fields[14])
    return ticks / os.sysconf("SC_CLK_TCK")


#: --postgres-db: the database the ``postgres`` watch is about ("": all of them).
POSTGRES_DB = {"name": ""}


def watched_cpu(watch: dict[str, list[int]]) -> dict[str, float]:
    """CPU seconds so far of each watched name (``postgres``: the local PostgreSQL)."""
    return {
        name: (
            postgres_cpu(POSTGRES_DB["name"])
            if name == "postgres"
            else sum(process_cpu(pid) for pid in pids)
        )
        for name, pids in watch.items()
    }
