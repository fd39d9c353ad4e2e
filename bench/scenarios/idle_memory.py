"""One-off: where a server's memory per idle connection goes (tracemalloc + object census).

Starts the target (``roomcast``, or a candidate from bench/candidates/) in a
child process under tracemalloc, pinned to CPU 0; connects one probe client,
has the child dump a tracemalloc snapshot and a census of GC-tracked objects
(SIGUSR1), connects N idle clients (200 in flight, as the ``idle`` scenario),
waits until the server is quiet, dumps again, and prints per connection: the
RSS growth, the traced growth, the top allocation sites, the growth by
package, and the objects by type. tracemalloc slows the server and adds its
own per-allocation overhead to RSS, so take the RSS per connection from
``bench/run.py --scenarios idle``; this script tells where it goes.

Parameters: 3,000 clients (``--clients``): every figure is the difference
of two snapshots divided by the clients, so thousands make the server's own
allocations in between negligible, and the traced server (several times
slower) still connects them quickly: a run takes 45-80 s.

    .venv/bin/python bench/scenarios/idle_memory.py                  # roomcast, 3,000 clients
    .venv/bin/python bench/scenarios/idle_memory.py --target aiohttp-bare --clients 3000

Every wait is bounded; prints plain text.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import runpy
import signal
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections import Counter
from pathlib import Path
from typing import Any

import uvloop

if __package__ in (None, ""):  # run as a file: import bench from the repository
    sys.path[0] = str(Path(__file__).resolve().parents[2])

from bench.lib import servers
from bench.lib.loadgen.common import close_all, memory_kb, wait_until
from bench.lib.loadgen.idle import IdleTally, open_idle, raise_fd_limit, wait_quiet

FRAMES = 16  # traceback depth kept by tracemalloc


# -- the child: the server under tracemalloc -------------------------------------------


def dump(out: Path) -> None:
    """Write a tracemalloc snapshot and a census of GC-tracked objects to ``out``.*."""
    gc.collect()
    census: Counter[str] = Counter()
    sizes: Counter[str] = Counter()
    for obj in gc.get_objects():
        kind = type(obj)
        name = f"{kind.__module__}.{kind.__qualname__}"
        census[name] += 1
        sizes[name] += sys.getsizeof(obj)
    tracemalloc.take_snapshot().dump(str(out.with_suffix(".snap")))
    traced, _ = tracemalloc.get_traced_memory()
    info = {
        "census": census,
        "sizes": sizes,
        "traced": traced,
        "memory": memory_kb(os.getpid()),
    }
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(info))
    tmp.rename(out.with_suffix(".json"))  # the parent waits for this name


def child(dump_dir: Path, argv: list[str]) -> None:
    """Run the server (``roomcast ...`` or a script path) until it is stopped."""
    tracemalloc.start(FRAMES)
    shots = iter(range(1000))
    signal.signal(signal.SIGUSR1, lambda *_: dump(dump_dir / f"shot{next(shots)}"))
    if argv[0] == "roomcast":
        sys.argv = argv
        runpy.run_module("roomcast", run_name="__main__", alter_sys=True)
    else:
        sys.argv = argv
        sys.path.insert(0, str(Path(argv[0]).parent))  # as running the script would
        runpy.run_path(argv[0], run_name="__main__")


# -- the parent: clients and the comparison ---------------------------------------------


def start(target: str, tmp: Path) -> tuple[subprocess.Popen[bytes], str, Path]:
    """Start ``target`` under tracemalloc; wait (max 30 s) for its listening line."""
    cmd = servers.command(target, tmp, None, [])
    argv = ["roomcast", *cmd[1:]] if target == "roomcast" else cmd[1:]
    dump_dir = tmp / "dumps"
    dump_dir.mkdir()
    log = tmp / "server.log"
    env = dict(os.environ, QUIET="1", PORT=str(servers.free_port()))
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                "taskset",
                "-c",
                "0",
                str(servers.VENV_BIN / "python"),
                str(Path(__file__).resolve()),
                "--child",
                str(dump_dir),
                "--",
                *argv,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=tmp,
            preexec_fn=servers.raise_fd_limit,
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        match = servers.LISTENING.search(log.read_bytes())
        if match:
            port = int(match.group(1) or match.group(2))
            return proc, f"ws://127.0.0.1:{port}/ws", dump_dir
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"{target} did not start: {log.read_text(errors='replace')[-2000:]}")


async def shot(pid: int, dump_dir: Path, index: int) -> tuple[tracemalloc.Snapshot, Any]:
    """Ask the child for dump ``index``; wait (max 120 s) and load it."""
    os.kill(pid, signal.SIGUSR1)
    path = dump_dir / f"shot{index}.json"
    deadline = time.monotonic() + 120
    while not path.exists():
        if time.monotonic() > deadline:
            raise RuntimeError(f"no dump {path} after 120 s")
        await asyncio.sleep(0.2)
    snapshot = tracemalloc.Snapshot.load(str(path.with_suffix(".snap")))
    return snapshot, json.loads(path.read_text())


async def connect(url: str, n: int, welcome: frozenset[bytes], tally: Any) -> list[Any]:
    """n idle clients, 200 in flight; raises on the first failure."""
    clients: list[Any] = []
    counter = iter(range(n))

    async def worker() -> None:
        for _ in counter:
            clients.append(await open_idle(url, tally, welcome, False, None, 30))

    await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(200))), 300)
    return clients


def package(filename: str) -> str:
    """A short owner for a source file: the site-packages package, roomcast or stdlib."""
    path = Path(filename)
    parts = path.parts
    if "site-packages" in parts:
        return parts[parts.index("site-packages") + 1]
    if "roomcast" in parts:
        return "roomcast"
    if "candidates" in parts:
        return f"candidates/{path.name}"
    if "asyncio" in parts:
        return "asyncio (stdlib)"
    return f"{path.name} (stdlib)" if "python3" in filename else path.name


def site(frame: tracemalloc.Frame) -> str:
    parts = Path(frame.filename).parts
    short = "/".join(parts[-2:])
    return f"{short}:{frame.lineno}"


def chain(trace: tracemalloc.Traceback, depth: int = 4) -> str:
    """The innermost ``depth`` frames, innermost first."""
    return " < ".join(site(frame) for frame in list(trace)[::-1][:depth])


def report(n: int, a: tuple[tracemalloc.Snapshot, Any], b: tuple[tracemalloc.Snapshot, Any]) -> str:
    snap_a, info_a = a
    snap_b, info_b = b
    rss = info_b["memory"]["VmRSS"] - info_a["memory"]["VmRSS"]
    anon = info_b["memory"]["RssAnon"] - info_a["memory"]["RssAnon"]
    traced = info_b["traced"] - info_a["traced"]
    lines = [
        f"{n:,} idle connections",
        f"RSS growth under tracemalloc: {rss / n:.2f} KB per connection "
        f"(anonymous {anon / n:.2f} KB); traced Python allocations: "
        f"{traced / n / 1024:.2f} KB per connection",
        "",
        "By package (traced bytes per connection; the file that allocated):",
    ]
    by_pkg: Counter[str] = Counter()
    for stat in snap_b.compare_to(snap_a, "filename"):
        by_pkg[package(stat.traceback[0].filename)] += stat.size_diff
    for name, size in by_pkg.most_common(12):
        lines.append(f"  {size / n:8.0f} B  {name}")
    lines += ["", "Top allocation sites (bytes and blocks per connection; innermost frames):"]
    stats = snap_b.compare_to(snap_a, "traceback")
    for stat in stats[:25]:
        if stat.size_diff <= 0:
            break
        lines.append(
            f"  {stat.size_diff / n:8.0f} B {stat.count_diff / n:6.2f}x  {chain(stat.traceback)}"
        )
    lines += ["", "GC-tracked objects by type (per connection; shallow sizeof):"]
    census_a, census_b = Counter(info_a["census"]), Counter(info_b["census"])
    sizes_a, sizes_b = Counter(info_a["sizes"]), Counter(info_b["sizes"])
    grown = {k: census_b[k] - census_a.get(k, 0) for k in census_b}
    for name, count in sorted(grown.items(), key=lambda kv: -(sizes_b[kv[0]] - sizes_a[kv[0]]))[
        :25
    ]:
        if count <= 0:
            continue
        size = sizes_b[name] - sizes_a.get(name, 0)
        lines.append(
            f"  {count / n:6.2f} x {size / max(count, 1):6.0f} B = {size / n:7.0f} B  {name}"
        )
    return "\n".join(lines)


async def measure(target: str, n: int) -> str:
    with tempfile.TemporaryDirectory(prefix="roomcast-idle-memory-") as tmpdir:
        tmp = Path(tmpdir)
        proc, url, dump_dir = start(target, tmp)
        try:
            raise_fd_limit(n + 256)
            tally = IdleTally()
            probe = await open_idle(url, tally, None, False, None)
            await wait_until(lambda: bool(probe.seen), 5, "the probe's first frame")
            await wait_quiet(tally, proc.pid, quiet=0.5, max_wait=5)
            welcome = frozenset(probe.seen)
            before = await shot(proc.pid, dump_dir, 0)
            clients = await connect(url, n, welcome, tally)
            await wait_quiet(tally, proc.pid, quiet=1.0, max_wait=120)
            after = await shot(proc.pid, dump_dir, 1)
            frames = dict(tally.types)
            close_all([*clients, probe])
        finally:
            servers.stop(servers.Server(target, proc, "", tmp / "server.log"))
    return f"{target}: frames to the clients {frames}\n" + report(n, before, after)


def main(argv: list[str]) -> int:
    if argv[:1] == ["--child"]:
        child(Path(argv[1]), argv[3:])
        return 0
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--target", default="roomcast", choices=["roomcast", *servers.CANDIDATES])
    parser.add_argument("--clients", type=int, default=3000)
    args = parser.parse_args(argv)
    print(uvloop.run(measure(args.target, args.clients)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
