"""Running scenarios against targets: the loop behind bench/run.py and each
bench/scenarios module run on its own.

A ``Scenario`` names the load generator's arguments and how one run of it
against one target is measured (by default ``measure``: a fresh server pinned
to CPU 0, the load generator pinned to CPU 1, the server's CPU time, the
server stopped by PID). ``run`` goes through runs × scenarios × targets,
interleaved so that drift hits every target alike, then writes
bench/results/<stamp>.json and .md with the medians across runs and the
ratios vs the Node reference, and draws the PNGs (bench/lib/plots.py).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.lib import report, results, servers, services
from bench.lib.measure import (
    children_cpu,
    machine,
    machine_busy,
    memory_kb,
    postgres_cpu,
    src_digest,
)

LOADGEN_TIMEOUT = 300


@dataclass(frozen=True)
class Context:
    """What every measurement of one invocation shares."""

    opts: argparse.Namespace
    tmp: Path
    node: Path | None  # the Node reference's copy, set up (None: not needed)


#: How one run of a scenario against one target goes: (scenario, context,
#: target, run index) -> the result.
Measure = Callable[["Scenario", Context, str, int], dict[str, Any]]


@dataclass(frozen=True)
class Scenario:
    """One named scenario (a name of ``--scenarios`` and of the results)."""

    name: str
    #: The load generator's arguments: its scenario and that scenario's parameters.
    loadgen: tuple[str, ...]
    #: How a run is measured; None: ``measure`` (fresh server, load generator, stop).
    measure: Measure | None = None
    #: Run only when asked for by name.
    opt_in: bool = False
    #: Why targets other than roomcast are skipped ("": every target runs it).
    roomcast_only: str = ""
    #: Whether ``roomcast-base`` (another tree's roomcast) runs a roomcast-only scenario.
    base_runs: bool = True
    #: Whether ``roomcast-base``, asked for beside ``roomcast``, is measured inside each
    #: roomcast run (alternating with it, in one result) instead of on its own.
    pairs_base: bool = False
    #: Services it needs ("postgres", "redis"); not run, with a note, without them.
    services: tuple[str, ...] = ()
    #: Open files it needs in the server and in the load generator each.
    fds: int = 0

    def run(self, ctx: Context, target: str, run: int) -> dict[str, Any]:
        if self.measure is None:
            return measure(target, list(self.loadgen), ctx.opts, ctx.tmp, ctx.node)
        return self.measure(self, ctx, target, run)


def loadgen(cmd: list[str], cpu: int = 1) -> dict[str, Any]:
    """Run one load-generator command pinned to ``cpu``; parse its JSON line."""
    proc = subprocess.run(
        ["taskset", "-c", str(cpu), *cmd],
        capture_output=True,
        timeout=LOADGEN_TIMEOUT,
        check=False,
        cwd=servers.REPO,
    )
    lines = proc.stdout.decode().strip().splitlines()
    if proc.returncode != 0 or not lines:
        return {"error": proc.stderr.decode(errors="replace")[-1500:]}
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def python_loadgen(args: list[str]) -> list[str]:
    """The command of bench/lib/loadgen with ``args`` (run it from the repository)."""
    return [str(servers.VENV_BIN / "python"), "-m", "bench.lib.loadgen", *args]


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
        child0, pg0 = children_cpu(), postgres_cpu(database)
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
            pg1 = postgres_cpu(database)
            if pg0 is not None and pg1 is not None:
                result["postgres_cpu"] = round((pg1 - pg0) / wall, 3)
                other -= (pg1 - pg0) / wall
            result["server_memory_kb"] = memory_kb(server.proc.pid)
        result["other_cpu"] = round(other, 3)
    finally:
        servers.stop(server)
        if extra_args:
            result["log_problems"] = servers.log_problems(server.log)
    return result


def roomcast_runs(target: str, scenario: Scenario) -> bool:
    """Whether ``target`` runs a roomcast-only scenario (the base tree: not the scale-out ones)."""
    if target == "roomcast":
        return True
    return target == "roomcast-base" and scenario.base_runs


#: Most nodes a scale-out scenario starts on this host (they share CPU 0).
MAX_NODES = 12


def node_counts(text: str) -> list[int]:
    """``--scaleout-nodes``: a comma list of node counts, each 1 to MAX_NODES."""
    try:
        counts = [int(n) for n in text.split(",")]
    except ValueError:
        counts = []
    if not counts or not all(1 <= n <= MAX_NODES for n in counts):
        raise argparse.ArgumentTypeError(f"expected counts of 1 to {MAX_NODES} nodes, got {text!r}")
    return counts


def parse_args(
    argv: list[str],
    scenarios: dict[str, Scenario],
    description: str | None,
    more: Callable[[argparse.ArgumentParser], None] | None = None,
) -> argparse.Namespace:
    """bench/run.py's options (``more`` adds its own at the end)."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--targets",
        default="roomcast,node",
        help=f"comma list or 'all' ({','.join(servers.TARGETS)})",
    )
    opt_in = [name for name, s in scenarios.items() if s.opt_in]
    default = [name for name in scenarios if name not in opt_in] or list(scenarios)
    but = f"all but {', '.join(opt_in)}" if len(default) < len(scenarios) else "all"
    parser.add_argument(
        "--scenarios",
        default=",".join(default),
        help=f"comma list of {', '.join(scenarios)} (default: {but})",
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=results.DEFAULT_OUT)
    parser.add_argument(
        "--plots",
        type=Path,
        default=results.PLOTS_DIR,
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
        help="extra argument for the load generator (repeatable), e.g. --step-seconds=3; "
        "see python -m bench.lib.loadgen --help",
    )
    parser.add_argument(
        "--pg-url",
        default=os.environ.get("ROOMCAST_BENCH_PG_URL", services.DEFAULT_PG_URL),
        help="PostgreSQL to create the scale-out scenarios' databases in "
        f"(env ROOMCAST_BENCH_PG_URL; default {services.DEFAULT_PG_URL})",
    )
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("ROOMCAST_BENCH_REDIS_URL", services.DEFAULT_REDIS_URL),
        help="Redis for crossnode (env ROOMCAST_BENCH_REDIS_URL; "
        f"default {services.DEFAULT_REDIS_URL})",
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
    parser.add_argument(
        "--scaleout-nodes",
        type=node_counts,
        default=[1, 2, 3, 4, 5, 6],
        help="scaleout: the node counts to measure, comma list (default 1,2,3,4,5,6)",
    )
    parser.add_argument(
        "--scaleout-rate",
        type=float,
        default=100.0,
        help="scaleout: messages/s each node's room gets (default 100)",
    )
    parser.add_argument(
        "--scaleout-a-rate",
        type=float,
        default=None,
        help="scaleout: node A's room's messages/s instead (0: quiet; default: --scaleout-rate)",
    )
    if more is not None:
        more(parser)
    return parser.parse_args(argv)


def choose(
    opts: argparse.Namespace, scenarios: dict[str, Scenario]
) -> tuple[list[str], list[str]] | int:
    """The targets and scenario names to run, or an exit status (2: unknown scenario)."""
    targets = servers.TARGETS if opts.targets == "all" else opts.targets.split(",")
    names = opts.scenarios.split(",")
    unknown = [s for s in names if s not in scenarios]
    if unknown:
        print(f"unknown scenario(s): {', '.join(unknown)}", file=sys.stderr)
        return 2
    if "roomcast" in targets and not servers.roomcast_available():
        print("roomcast is not installed in .venv; skipping it", file=sys.stderr)
        targets = [t for t in targets if t != "roomcast"]
    return targets, names


def runnable(
    opts: argparse.Namespace,
    targets: list[str],
    names: list[str],
    scenarios: dict[str, Scenario],
) -> dict[str, str]:
    """Drop from ``names`` what cannot run here (open files, services); the notes why,
    and which targets a roomcast-only scenario skips."""
    notes: dict[str, str] = {}
    fd_limit = servers.fd_hard_limit()
    for name in list(names):
        scenario = scenarios[name]
        if scenario.fds > fd_limit:
            notes[name] = (
                f"Not run: it needs {scenario.fds:,} open files per process, "
                f"the hard limit (ulimit -Hn) is {fd_limit:,}."
            )
            print(f"{name}: {notes[name]}", file=sys.stderr)
            names.remove(name)
            continue
        problems = [
            problem
            for service in scenario.services
            if (
                problem := services.pg_problem(opts.pg_url)
                if service == "postgres"
                else services.redis_problem(opts.redis_url)
            )
        ]
        if problems:
            notes[name] = f"Not run: {'; '.join(problems)}."
            print(f"{name}: {notes[name]}", file=sys.stderr)
            names.remove(name)
            continue
        skipped = [t for t in targets if not roomcast_runs(t, scenario)]
        if scenario.roomcast_only and skipped:
            others = [t for t in skipped if t != "roomcast-base"]
            why = [f"Skipped {', '.join(others)}: {scenario.roomcast_only}."] if others else []
            if "roomcast-base" in skipped and scenario.pairs_base:
                why.append(
                    "roomcast-base is measured inside each roomcast run, alternating with it."
                    if "roomcast" in targets
                    else "Skipped roomcast-base: it runs inside roomcast's runs only."
                )
            elif "roomcast-base" in skipped:
                why.append("Skipped roomcast-base: the scenario runs on this tree only.")
            notes[name] = " ".join(why)
            print(f"{name}: {notes[name]}", file=sys.stderr)
    return notes


def run(
    opts: argparse.Namespace,
    argv: list[str],
    scenarios: dict[str, Scenario],
    targets: list[str],
    names: list[str],
) -> int:
    """Every run of every scenario on every target; the results files, tables and plots."""
    opts.out.mkdir(parents=True, exist_ok=True)
    stamp = results.stamp()
    src_at_start = src_digest()
    with tempfile.TemporaryDirectory(prefix="roomcast-bench-") as tmpdir:
        tmp = Path(tmpdir)
        node_runs = "node" in targets and any(not scenarios[s].roomcast_only for s in names)
        node = servers.prepare_node(tmp) if node_runs else None
        notes = runnable(opts, targets, names, scenarios)
        ctx = Context(opts, tmp, node)
        raw: list[dict[str, Any]] = []
        for index in range(opts.runs):
            for name in names:
                scenario = scenarios[name]
                for target in targets:  # interleaved, so drift hits every target alike
                    if scenario.roomcast_only and not roomcast_runs(target, scenario):
                        continue
                    result = scenario.run(ctx, target, index)
                    result.update(run=index, scenario_name=name, target=target)
                    print(json.dumps(report.brief(result)), flush=True)
                    raw.append(result)
    summary = report.summarize(raw, targets, names)
    doc = {
        "machine": {**machine(), "src_sha256_at_start": src_at_start},
        "argv": argv,
        "summary": summary,
        "notes": notes,
        "raw": raw,
    }
    path = results.write(opts.out, stamp, doc)
    md = report.markdown(summary, targets, names, opts.runs, notes)
    results.write_md(path, md)
    print(md)
    results.render_plots(path, opts.plots)
    return 0


def main(argv: list[str], scenarios: list[Scenario], description: str | None) -> int:
    """A scenario module on its own: bench/run.py's options, its scenarios only."""
    by_name = {s.name: s for s in scenarios}
    opts = parse_args(argv, by_name, description)
    chosen = choose(opts, by_name)
    if isinstance(chosen, int):
        return chosen
    return run(opts, argv, by_name, *chosen)
