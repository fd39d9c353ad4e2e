"""The load generators compared (``bench/run.py --compare-loadgens``): the
Python one (picows + uvloop, bench/lib/loadgen) against a probe on Node's
``ws`` package (bench/loadgen_ws.js, set up with ``npm ci`` in bench/).

Against the Node reference server, each does the same single fan-out step
(``rate``: one sender, N clients in one room, a fixed deliveries/s) with the
same work per frame (find the timestamp in the text, record the latency)
and reports what it delivered, its p99 and its own CPU use. It is how
bench/lib/loadgen came to be picows: the one that uses less CPU per delivery
can drive a server further (docs/benchmarks.md, "Load generator").

Parameters, and why:

- The Node reference server: the same server for both, so only the client
  side differs.
- N = 1,000 clients, 3 s steps at 60,000, 100,000 and 150,000 deliveries/s
  (``--compare-rates``): from comfortable to past what one load-generator
  CPU reads.

    .venv/bin/python -m bench.scenarios.loadgens --runs 1 --compare-rates 60000,100000
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: import bench from the repository
    sys.path[0] = str(Path(__file__).resolve().parents[2])

from bench.lib import driver, report, results, servers
from bench.lib.measure import machine

CLIENTS = 1000
STEP_SECONDS = 3
RATES = [60_000, 100_000, 150_000]  # deliveries/s, one step each


def compare_loadgens(opts: argparse.Namespace, tmp: Path, node: Path) -> list[dict[str, Any]]:
    """Same fan-out step (Node server, N=1000), from each load generator."""
    rows: list[dict[str, Any]] = []
    for _ in range(opts.runs):
        for rate in opts.compare_rates:
            for gen in ("python-picows", "node-ws"):
                server = servers.start("node", tmp, node, [])
                try:
                    cpu0, t0 = server.cpu_seconds(), time.monotonic()
                    if gen == "node-ws":
                        cmd = [
                            "node",
                            str(servers.BENCH / "loadgen_ws.js"),
                            "rate",
                            server.url,
                            str(CLIENTS),
                            str(rate),
                            str(STEP_SECONDS),
                        ]
                    else:
                        cmd = driver.python_loadgen(
                            [
                                "rate",
                                "--url",
                                server.url,
                                "--clients",
                                str(CLIENTS),
                                "--fixed-rate",
                                str(rate),
                                "--step-seconds",
                                str(STEP_SECONDS),
                            ]
                        )
                    row = driver.loadgen(cmd)
                    row["server_cpu"] = round(
                        (server.cpu_seconds() - cpu0) / (time.monotonic() - t0), 3
                    )
                finally:
                    servers.stop(server)
                row.update(loadgen=gen, target_deliveries_per_s=rate)
                print(json.dumps(row), flush=True)
                rows.append(row)
    return rows


def ensure_node_client() -> None:
    if not (servers.BENCH / "node_modules" / "ws").exists():
        subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=servers.BENCH,
            check=True,
            timeout=300,
        )


def run(opts: argparse.Namespace) -> int:
    """The comparison; writes bench/results/<stamp>-loadgens.json and .md."""
    opts.out.mkdir(parents=True, exist_ok=True)
    stamp = results.stamp()
    with tempfile.TemporaryDirectory(prefix="roomcast-bench-") as tmpdir:
        tmp = Path(tmpdir)
        node = servers.prepare_node(tmp)
        ensure_node_client()
        rows = compare_loadgens(opts, tmp, node)
        doc = {"machine": machine(), "loadgen_comparison": rows}
        path = results.write(opts.out, f"{stamp}-loadgens", doc)
        md = report.loadgen_table(rows)
        results.write_md(path, md)
        print(md)
    return 0


def rates(text: str) -> list[int]:
    return [int(x) for x in text.split(",")]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=results.DEFAULT_OUT)
    parser.add_argument("--compare-rates", type=rates, default=RATES)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
