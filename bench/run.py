"""Benchmark driver: servers pinned to CPU 0, bench/loadgen.py pinned to CPU 1.

For each run, scenario and target it starts the server (roomcast, the Node
reference or a candidate transport), runs one load-generator scenario against
it, records the server's CPU time, stops the server by PID, and finally writes
bench/results/<stamp>.json and .md with the medians across runs and the ratios
vs the Node reference.

Scenarios: ``fanout100`` and ``fanout1000`` (max deliveries/s with no loss and
p99 under --bound-ms, plus p50/p99 at a fixed 20,000 deliveries/s), ``echo``
(50 clients doing back-to-back ping/pong round trips), ``persist`` (50 clients,
each in its own room, sending chat with ids at rising offered rates: the most
acked msgs/s with every message acked and ack p99 under 50 ms). ``persist``
runs against roomcast only: the other targets store nothing, so they are
skipped for it (noted in the report). ``idle`` (10,000 clients connect, 200
at a time, and stay idle in the lobby: connect rate, server RSS per
connection, a late client's ping round trip), ``idle-noroom`` (the same, each
client leaving the lobby after its welcome: no room, no presence events) and
``idle50k`` (50,000 in the lobby; not run by default, and skipped when the
open-files hard limit is too low for it).

Scale-out scenarios, roomcast only and run only when named (they need the
local PostgreSQL, --pg-url, and Redis, --redis-url; a scenario whose service
does not answer is skipped with a note): ``persist-pg`` is ``persist`` with
roomcast on a fresh PostgreSQL database (``CREATE DATABASE
roomcast_bench_<hex>`` before, ``DROP DATABASE ... WITH (FORCE)`` after;
with --pg-prefill N it is first given N messages and ANALYZEd).
``crossnode`` runs the fan-out ramp (one sender, --crossnode-receivers
receivers, one room) twice per run, in alternating order: on three nodes A,
B, C sharing one fresh database and one fresh Redis prefix (the sender on A,
the receivers split between B and C), and on one node with the same flags
(PostgreSQL and Redis), all clients on it. All nodes are pinned to CPU 0 like
every server here. Afterwards the prefix's keys are deleted (SCAN + UNLINK)
and the database dropped. Each result also has the CPU of each node, of Redis
and of PostgreSQL (read from /proc), the nodes' memory and any warning or
error lines in their logs.

At the end it also draws PNG plots of the run into docs/img/bench/ (--plots),
named by scenario and overwriting the previous ones, with bench/plots.py; that
needs matplotlib (the ``bench`` extra) and is skipped with a note without it.

    .venv/bin/python bench/run.py                      # roomcast vs node, 3 runs
    .venv/bin/python bench/run.py --targets all --runs 1
    .venv/bin/python bench/run.py --compare-loadgens   # picows vs Node ws client
    .venv/bin/python bench/run.py --targets roomcast --scenarios persist --runs 1
    .venv/bin/python bench/run.py --scenarios idle,idle-noroom
    .venv/bin/python bench/run.py --targets roomcast --scenarios persist-pg,crossnode --runs 3
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg

import report
import scaleout
import servers

SCENARIOS: dict[str, list[str]] = {
    "fanout100": ["fanout", "--clients", "100"],
    "fanout1000": ["fanout", "--clients", "1000"],
    "echo": ["echo", "--clients", "50"],
    "persist": ["persist", "--clients", "50"],
    "idle": ["idle", "--clients", "10000"],
    "idle-noroom": ["idle", "--clients", "10000", "--leave-lobby"],
    "idle50k": ["idle", "--clients", "50000"],
    "persist-pg": ["persist", "--clients", "50"],
    "crossnode": ["fanout"],  # --clients: 1 + --crossnode-receivers
}
# Run only when asked for by name.
OPT_IN = {"idle50k", "persist-pg", "crossnode"}
# Scenarios that only roomcast can run, and why the other targets are skipped.
ROOMCAST_ONLY = {
    "persist": "they store no messages (no acks)",
    "persist-pg": "they store no messages (no acks)",
    "crossnode": "they have no multi-node mode",
}
# The services a scale-out scenario needs (see bench/scaleout.py).
SERVICES = {"persist-pg": ("postgres",), "crossnode": ("postgres", "redis")}
# Open files a scenario needs in the server and in the load generator each.
FDS_NEEDED = {"idle": 10_300, "idle-noroom": 10_300, "idle50k": 50_300}
LOADGEN_TIMEOUT = 300
# Where the PNGs of the latest run go (docs/benchmarks.md links them).
PLOTS_DIR = servers.REPO / "docs" / "img" / "bench"


def loadgen(cmd: list[str], cpu: int = 1) -> dict[str, Any]:
    """Run one load-generator command pinned to ``cpu``; parse its JSON line."""
    proc = subprocess.run(
        ["taskset", "-c", str(cpu), *cmd],
        capture_output=True,
        timeout=LOADGEN_TIMEOUT,
        check=False,
        cwd=servers.BENCH,
    )
    lines = proc.stdout.decode().strip().splitlines()
    if proc.returncode != 0 or not lines:
        return {"error": proc.stderr.decode(errors="replace")[-1500:]}
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def machine_busy() -> float:
    """Busy CPU-seconds of all CPUs since boot (from /proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def python_loadgen(args: list[str]) -> list[str]:
    return [str(servers.VENV_BIN / "python"), str(servers.BENCH / "loadgen.py"), *args]


def measure(
    target: str,
    scenario: list[str],
    opts: argparse.Namespace,
    tmp: Path,
    node: Path | None,
    extra_args: list[str] | None = None,
    database: str = "",
) -> dict[str, Any]:
    """Fresh server, one scenario, server stopped; adds the server's CPU use.

    ``extra_args`` (roomcast only) go to ``roomcast serve``; with them the
    result also has PostgreSQL's CPU, the server's memory and log problems.
    """
    server = servers.start(target, tmp, node, [*opts.roomcast_arg, *(extra_args or [])])
    watch = ["--watch-pid", "postgres=0", "--postgres-db", database] if database else []
    result: dict[str, Any] = {}
    try:
        cpu0, busy0, t0 = server.cpu_seconds(), machine_busy(), time.monotonic()
        child0, pg0 = children_cpu(), scaleout.postgres_cpu(database)
        result = loadgen(
            python_loadgen(
                [*scenario, "--url", server.url, "--server-pid", str(server.proc.pid), *watch]
                + opts.loadgen_arg
            )
        )
        wall = time.monotonic() - t0
        server_cpu = (server.cpu_seconds() - cpu0) / wall
        result["server_cpu"] = round(server_cpu, 3)
        # Everything else the machine did meanwhile (other processes, interrupts): noise.
        other = (machine_busy() - busy0) / wall - server_cpu - (children_cpu() - child0) / wall
        if extra_args:
            pg1 = scaleout.postgres_cpu(database)
            if pg0 is not None and pg1 is not None:
                result["postgres_cpu"] = round((pg1 - pg0) / wall, 3)
                other -= (pg1 - pg0) / wall
            result["server_memory_kb"] = scaleout.memory_kb(server.proc.pid)
        result["other_cpu"] = round(other, 3)
    finally:
        servers.stop(server)
        if extra_args:
            result["log_problems"] = scaleout.log_problems(server.log)
    return result


def measure_persist_pg(scenario: list[str], opts: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """``persist`` with roomcast on a fresh PostgreSQL database, dropped afterwards."""
    try:
        db = scaleout.Database.create(opts.pg_url)
    except Exception as exc:  # recorded as this run's error, like a failed load generator
        return {"error": f"cannot create the database: {exc!r}"}
    try:
        if opts.pg_prefill:
            # The schema first (a server migrates the database at start), then the rows.
            servers.stop(servers.start("roomcast", tmp, None, ["--database-url", db.url]))
            db.prefill(opts.pg_prefill)
        result = measure("roomcast", scenario, opts, tmp, None, ["--database-url", db.url], db.name)
        result["prefilled_rows"] = opts.pg_prefill
        result["database_mb"] = db.size_mb()
    except (RuntimeError, subprocess.TimeoutExpired, asyncpg.PostgresError) as exc:
        result = {"error": repr(exc)[-1500:]}
    finally:
        db.drop()
    result["database"] = scaleout.where(opts.pg_url)
    return result


def crossnode_variant(nodes: int, opts: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """The fan-out ramp with the sender on node A and the receivers on the other nodes
    (all on A when ``nodes`` is 1); a fresh database and Redis prefix, cleaned after."""
    receivers = opts.crossnode_receivers
    db = scaleout.Database.create(opts.pg_url)
    prefix = scaleout.Prefix.create(opts.redis_url)
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
        redis_pid = scaleout.redis_pid(opts.redis_url)
        watch = [f"{name}={s.proc.pid}" for name, s in zip(names, started, strict=True)]
        watch.append("nodes=" + ",".join(str(s.proc.pid) for s in started))
        if redis_pid:
            watch.append(f"redis={redis_pid}")
        watch.append("postgres=0")
        cmd_pg = ["--postgres-db", db.name]
        cmd = [
            *SCENARIOS["crossnode"],
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
        redis0, pg0 = scaleout.process_cpu(redis_pid), scaleout.postgres_cpu(db.name)
        busy0, child0, t0 = machine_busy(), children_cpu(), time.monotonic()
        try:
            result = loadgen(python_loadgen(cmd + opts.loadgen_arg))
        except subprocess.TimeoutExpired as exc:
            result = {"error": repr(exc)}
        wall = time.monotonic() - t0
        node_cpu = [(s.cpu_seconds() - c) / wall for s, c in zip(started, cpu0, strict=True)]
        result["node_cpu"] = {n: round(c, 3) for n, c in zip(names, node_cpu, strict=True)}
        result["server_cpu"] = round(sum(node_cpu), 3)
        other = (machine_busy() - busy0) / wall - sum(node_cpu) - (children_cpu() - child0) / wall
        redis1, pg1 = scaleout.process_cpu(redis_pid), scaleout.postgres_cpu(db.name)
        if redis0 is not None and redis1 is not None:
            result["redis_cpu"] = round((redis1 - redis0) / wall, 3)
            other -= (redis1 - redis0) / wall
        if pg0 is not None and pg1 is not None:
            result["postgres_cpu"] = round((pg1 - pg0) / wall, 3)
            other -= (pg1 - pg0) / wall
        result["other_cpu"] = round(other, 3)
        result["node_memory_kb"] = {
            n: scaleout.memory_kb(s.proc.pid) for n, s in zip(names, started, strict=True)
        }
        result["node_urls"] = {n: s.url for n, s in zip(names, started, strict=True)}
    except RuntimeError as exc:  # a node did not start
        result = {"error": repr(exc)[-1500:]}
    finally:
        for server in started:
            servers.stop(server)
        result["log_problems"] = {
            n: scaleout.log_problems(s.log) for n, s in zip(names, started, strict=False)
        }
        result["database_mb"] = db.size_mb()
        db.drop()
        result["redis_keys_left"] = prefix.clear()
    result["nodes"] = nodes
    result["receivers"] = receivers
    return result


def measure_crossnode(opts: argparse.Namespace, tmp: Path, run: int) -> dict[str, Any]:
    """One run of ``crossnode``: three nodes and the one-node baseline, alternating order."""
    order = [1, 3] if run % 2 == 0 else [3, 1]
    variants: dict[str, dict[str, Any]] = {}
    for nodes in order:
        try:
            variants["single" if nodes == 1 else "cross"] = crossnode_variant(nodes, opts, tmp)
        except Exception as exc:  # database or Redis set-up: this run's error, not a traceback
            variants["single" if nodes == 1 else "cross"] = {"error": repr(exc)[-1500:]}
    result: dict[str, Any] = {
        "scenario": "crossnode",
        "receivers": opts.crossnode_receivers,
        "order": ["single" if n == 1 else "cross" for n in order],
        "variants": variants,
    }
    errors = [f"{k}: {v['error']}" for k, v in variants.items() if "error" in v]
    if errors:
        result["error"] = "; ".join(errors)
    return result


def roomcast_runs(target: str, scenario: str) -> bool:
    """Whether ``target`` runs a roomcast-only scenario (the base tree: not the scale-out ones)."""
    if target == "roomcast":
        return True
    return target == "roomcast-base" and scenario not in ("persist-pg", "crossnode")


def src_digest() -> str:
    """A digest of src/ (the tree under test, which others may edit between runs)."""
    digest = hashlib.sha256()
    for path in sorted((servers.REPO / "src").rglob("*.py")):
        digest.update(path.relative_to(servers.REPO).as_posix().encode() + b"\0")
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


def compare_loadgens(opts: argparse.Namespace, tmp: Path, node: Path) -> list[dict[str, Any]]:
    """Same fan-out step (Node server, N=1000) and echo, from each load generator."""
    rows: list[dict[str, Any]] = []
    for _ in range(opts.runs):
        for rate in opts.compare_rates:
            for gen in ("python-picows", "node-ws"):
                server = servers.start("node", tmp, node, [])
                try:
                    cpu0, t0 = server.cpu_seconds(), time.monotonic()
                    if gen == "node-ws":
                        cmd = ["node", "loadgen_ws.js", "rate", server.url, "1000", str(rate), "3"]
                    else:
                        cmd = python_loadgen(
                            [
                                "rate",
                                "--url",
                                server.url,
                                "--clients",
                                "1000",
                                "--fixed-rate",
                                str(rate),
                                "--step-seconds",
                                "3",
                            ]
                        )
                    row = loadgen(cmd)
                    row["server_cpu"] = round(
                        (server.cpu_seconds() - cpu0) / (time.monotonic() - t0), 3
                    )
                finally:
                    servers.stop(server)
                row.update(loadgen=gen, target_deliveries_per_s=rate)
                print(json.dumps(row), flush=True)
                rows.append(row)
    return rows


def render_plots(results: Path, out: Path) -> None:
    """PNGs of a results JSON (bench/plots.py); optional: needs matplotlib."""
    if importlib.util.find_spec("matplotlib") is None:
        print("matplotlib is not installed: no plots (pip install -e '.[bench]')", flush=True)
        return
    import plots  # imports matplotlib

    try:
        paths = plots.render(results, out)
    except Exception as exc:  # the results are saved; a plotting bug must not fail the run
        print(f"plots failed ({exc!r}); retry: bench/plots.py {results}", file=sys.stderr)
        return
    for path in paths:
        print(f"plot: {path}")


def ensure_node_client() -> None:
    if not (servers.BENCH / "node_modules" / "ws").exists():
        subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=servers.BENCH,
            check=True,
            timeout=300,
        )


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--targets",
        default="roomcast,node",
        help=f"comma list or 'all' ({','.join(servers.TARGETS)})",
    )
    parser.add_argument(
        "--scenarios",
        default=",".join(s for s in SCENARIOS if s not in OPT_IN),
        help=f"comma list of {', '.join(SCENARIOS)} (default: all but {', '.join(OPT_IN)})",
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=servers.BENCH / "results")
    parser.add_argument(
        "--plots",
        type=Path,
        default=PLOTS_DIR,
        help="directory for the PNGs of the run, overwritten (default: docs/img/bench)",
    )
    parser.add_argument(
        "--roomcast-arg",
        action="append",
        default=[],
        help="extra argument for 'roomcast serve' (repeatable)",
    )
    parser.add_argument(
        "--loadgen-arg",
        action="append",
        default=[],
        help="extra argument for loadgen.py (repeatable), e.g. --step-seconds=3",
    )
    parser.add_argument(
        "--pg-url",
        default=os.environ.get("ROOMCAST_BENCH_PG_URL", scaleout.DEFAULT_PG_URL),
        help="PostgreSQL to create the scale-out scenarios' databases in "
        f"(env ROOMCAST_BENCH_PG_URL; default {scaleout.DEFAULT_PG_URL})",
    )
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("ROOMCAST_BENCH_REDIS_URL", scaleout.DEFAULT_REDIS_URL),
        help="Redis for crossnode (env ROOMCAST_BENCH_REDIS_URL; "
        f"default {scaleout.DEFAULT_REDIS_URL})",
    )
    parser.add_argument(
        "--pg-prefill",
        type=int,
        default=0,
        help="persist-pg: first fill the fresh database with this many messages and ANALYZE "
        "it (a database with history and statistics; default 0: empty)",
    )
    parser.add_argument(
        "--crossnode-receivers",
        type=int,
        default=100,
        help="crossnode: receivers, split between nodes B and C (default 100)",
    )
    parser.add_argument("--compare-loadgens", action="store_true")
    parser.add_argument("--report", type=Path, help="re-render the markdown of a results JSON")
    parser.add_argument(
        "--compare-rates",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[60_000, 100_000, 150_000],
    )
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    opts = parse_args(argv)
    if opts.report:
        doc = json.loads(opts.report.read_text())
        targets = list(doc["summary"][next(iter(doc["summary"]))])
        summary = report.summarize(doc["raw"], targets, list(doc["summary"]))
        runs = 1 + max(r["run"] for r in doc["raw"])
        md = report.markdown(summary, targets, list(doc["summary"]), runs, doc.get("notes"))
        opts.report.with_suffix(".md").write_text(md)
        print(md)
        return 0
    targets = servers.TARGETS if opts.targets == "all" else opts.targets.split(",")
    scenarios = opts.scenarios.split(",")
    unknown = [s for s in scenarios if s not in SCENARIOS]
    if unknown:
        print(f"unknown scenario(s): {', '.join(unknown)}", file=sys.stderr)
        return 2
    if "roomcast" in targets and not servers.roomcast_available():
        print("roomcast is not installed in .venv; skipping it", file=sys.stderr)
        targets = [t for t in targets if t != "roomcast"]
    opts.out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    src_at_start = src_digest()
    with tempfile.TemporaryDirectory(prefix="roomcast-bench-") as tmpdir:
        tmp = Path(tmpdir)
        node_runs = "node" in targets and any(s not in ROOMCAST_ONLY for s in scenarios)
        node = servers.prepare_node(tmp) if node_runs or opts.compare_loadgens else None
        if opts.compare_loadgens:
            assert node is not None
            ensure_node_client()
            rows = compare_loadgens(opts, tmp, node)
            doc = {"machine": machine(), "loadgen_comparison": rows}
            (opts.out / f"{stamp}-loadgens.json").write_text(json.dumps(doc, indent=1))
            md = report.loadgen_table(rows)
            (opts.out / f"{stamp}-loadgens.md").write_text(md)
            print(md)
            return 0
        notes: dict[str, str] = {}
        fd_limit = servers.fd_hard_limit()
        for scenario in list(scenarios):
            if FDS_NEEDED.get(scenario, 0) > fd_limit:
                notes[scenario] = (
                    f"Not run: it needs {FDS_NEEDED[scenario]:,} open files per process, "
                    f"the hard limit (ulimit -Hn) is {fd_limit:,}."
                )
                print(f"{scenario}: {notes[scenario]}", file=sys.stderr)
                scenarios.remove(scenario)
                continue
            problems = [
                problem
                for service in SERVICES.get(scenario, ())
                if (
                    problem := scaleout.pg_problem(opts.pg_url)
                    if service == "postgres"
                    else scaleout.redis_problem(opts.redis_url)
                )
            ]
            if problems:
                notes[scenario] = f"Not run: {'; '.join(problems)}."
                print(f"{scenario}: {notes[scenario]}", file=sys.stderr)
                scenarios.remove(scenario)
                continue
            skipped = [t for t in targets if not roomcast_runs(t, scenario)]
            if scenario in ROOMCAST_ONLY and skipped:
                notes[scenario] = f"Skipped {', '.join(skipped)}: {ROOMCAST_ONLY[scenario]}."
                print(f"{scenario}: {notes[scenario]}", file=sys.stderr)
        raw: list[dict[str, Any]] = []
        for run in range(opts.runs):
            for scenario in scenarios:
                for target in targets:  # interleaved, so drift hits every target alike
                    if scenario in ROOMCAST_ONLY and not roomcast_runs(target, scenario):
                        continue
                    if scenario == "persist-pg":
                        result = measure_persist_pg(SCENARIOS[scenario], opts, tmp)
                    elif scenario == "crossnode":
                        result = measure_crossnode(opts, tmp, run)
                    else:
                        result = measure(target, SCENARIOS[scenario], opts, tmp, node)
                    result.update(run=run, scenario_name=scenario, target=target)
                    print(json.dumps(report.brief(result)), flush=True)
                    raw.append(result)
    summary = report.summarize(raw, targets, scenarios)
    doc = {
        "machine": {**machine(), "src_sha256_at_start": src_at_start},
        "argv": argv,
        "summary": summary,
        "notes": notes,
        "raw": raw,
    }
    results = opts.out / f"{stamp}.json"
    results.write_text(json.dumps(doc, indent=1))
    md = report.markdown(summary, targets, scenarios, opts.runs, notes)
    (opts.out / f"{stamp}.md").write_text(md)
    print(md)
    render_plots(results, opts.plots)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
