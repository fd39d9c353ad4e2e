"""Readings the driver takes around a measurement: CPU time of the machine, of
finished children, of a process and of the local PostgreSQL; a process's memory;
and what the run was made on (the machine, and a digest of src/).

The load generator takes its own readings in its own process (bench/lib/loadgen/common.py).
"""

from __future__ import annotations

import hashlib
import os
import platform
import resource
import subprocess
from pathlib import Path
from typing import Any

from bench.lib.servers import REPO


def machine_busy() -> float:
    """Busy CPU-seconds of all CPUs since boot (from /proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def stat_fields(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def process_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


TICK = os.sysconf("SC_CLK_TCK")


def process_cpu(pid: int | None) -> float | None:
    """User+system CPU seconds of ``pid`` (all its threads) so far; None if gone."""
    fields = stat_fields(pid) if pid else None
    if fields is None:
        return None
    return (int(fields[11]) + int(fields[12])) / TICK


#: PostgreSQL's background processes that work for every database (WAL, checkpoints).
PG_SHARED = ("walwriter", "checkpointer", "background writer")


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return ""


def postgres_cpu(database: str = "") -> float | None:
    """CPU seconds so far of the local PostgreSQL (from /proc); None if none is found.

    With ``database``: its backends (and autovacuum workers) plus the shared
    WAL writer, checkpointer and background writer, leaving out other
    databases' work on the same server. Without: the postmaster with its
    reaped children (backends gone already) and every live child.
    """
    procs: dict[int, list[str]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and process_name(int(entry.name)) == "postgres":
            fields = stat_fields(int(entry.name))
            if fields is not None:
                procs[int(entry.name)] = fields
    masters = [pid for pid, f in procs.items() if int(f[1]) not in procs]
    if not masters:
        return None
    total = 0
    for pid, f in procs.items():
        if database:
            title = cmdline(pid)
            if pid in masters or not (
                f" {database} " in title or any(k in title for k in PG_SHARED)
            ):
                continue
        total += int(f[11]) + int(f[12])
        if pid in masters:
            total += int(f[13]) + int(f[14])  # cutime, cstime: backends gone already
    return total / TICK


def memory_kb(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of ``pid`` in kB (empty if it is gone)."""
    out: dict[str, int] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
    except OSError:
        pass
    return out


def src_digest() -> str:
    """A digest of src/ (the tree under test, which others may edit between runs)."""
    digest = hashlib.sha256()
    for path in sorted((REPO / "src").rglob("*.py")):
        digest.update(path.relative_to(REPO).as_posix().encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def machine() -> dict[str, Any]:
    cpu = next(
        (
            x.split(":", 1)[1].strip()
            for x in Path("/proc/cpuinfo").read_text().splitlines()
            if x.startswith("model name")
        ),
        "?",
    )
    node = subprocess.run(["node", "--version"], capture_output=True, text=True, check=False)
    return {
        "src_sha256": src_digest(),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "node": node.stdout.strip(),
    }
