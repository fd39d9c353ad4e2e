"""crossnode: the fan-out ramp with the clients on three nodes of one service,
against the same clients on one node; crossnode-latency: the same two set-ups
at one fixed rate only, on this tree and on the base tree (``roomcast-base``)
in one run. roomcast only, run only when named (they need the local
PostgreSQL, --pg-url, and Redis, --redis-url; without them they are not run,
with a note).

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

crossnode-latency (issue 22: cross-node latency with per-room routing against
the single channel every node heard, in one run):

- Only the fixed step: 20,000 deliveries/s (198 messages/s to 101 clients,
  the step crossnode and fanout100 take p50/p99 at), for 5 s (100,000
  latency samples; the ramp would take minutes per set-up and say nothing
  more about latency).
- With ``--targets roomcast,roomcast-base`` (and ``$ROOMCAST_BASE_SRC``),
  each roomcast run measures four set-ups: three nodes and one node, on each
  tree, in the order this tree's three nodes, the base's three nodes, the
  base's one node, this tree's one node (the two trees swapped in odd
  runs), so drift within a run hits both trees alike. Without the base,
  this tree's two set-ups.

    .venv/bin/python -m bench.scenarios.crossnode --targets roomcast --runs 1
    ROOMCAST_BASE_SRC=/tmp/base/src .venv/bin/python -m bench.scenarios.crossnode \
        --scenarios crossnode-latency --targets roomcast,roomcast-base --runs 3
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: import bench from the repository
    sys.path[0] = str(Path(__file__).resolve().parents[2])

from bench.lib import cluster, driver, servers
from bench.scenarios.fanout import BOUND_MS, FIXED_RATE, RAMP

LOADGEN = ("fanout", *RAMP)  # --clients: 1 + --crossnode-receivers
#: crossnode-latency: seconds of its one fixed step (p50/p99 from 100,000 samples).
LATENCY_SECONDS = 5.0
#: crossnode-latency's load generator: the fixed step only (no rate passes --max-rate 0).
LATENCY_LOADGEN = (
    "fanout",
    f"--fixed-rate={FIXED_RATE}",
    f"--step-seconds={LATENCY_SECONDS}",
    f"--bound-ms={BOUND_MS}",
    "--max-rate=0",
)


def variant(
    nodes: int, ctx: driver.Context, target: str = "roomcast", loadgen: tuple[str, ...] = LOADGEN
) -> dict[str, Any]:
    """The fan-out load with the sender on node A and the receivers on the other nodes
    (all on A when ``nodes`` is 1); a fresh database and Redis prefix, cleaned after."""
    receivers = ctx.opts.crossnode_receivers

    def command(started: list[servers.Server], watch: list[str]) -> list[str]:
        sender = started[0]
        cmd = [
            *loadgen,
            "--clients",
            str(receivers + 1),
            "--url",
            sender.url,
            "--server-pid",
            str(sender.proc.pid),
        ]
        for server in started[1:] or [sender]:
            cmd += ["--receiver-url", server.url]
        return cmd + watch

    result = cluster.measure(ctx, target, nodes, command)
    result["receivers"] = receivers
    return result


def measure_crossnode(
    scenario: driver.Scenario, ctx: driver.Context, target: str, run: int
) -> dict[str, Any]:
    """One run of ``crossnode``: three nodes and the one-node baseline, alternating order."""
    order = [1, 3] if run % 2 == 0 else [3, 1]
    variants: dict[str, dict[str, Any]] = {}
    for nodes in order:
        variants["single" if nodes == 1 else "cross"] = variant(nodes, ctx)
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


def measure_latency(
    scenario: driver.Scenario, ctx: driver.Context, target: str, run: int
) -> dict[str, Any]:
    """One run of ``crossnode-latency``: three nodes and one, on this tree and on the base
    (when paired), at the fixed rate; the order alternates between the trees."""
    trees = ["roomcast", "roomcast-base"] if cluster.base_paired(ctx.opts) else ["roomcast"]
    if run % 2:
        trees.reverse()
    order = [(t, 3) for t in trees] + [(t, 1) for t in reversed(trees)]
    variants: dict[str, dict[str, dict[str, Any]]] = {t: {} for t in trees}
    for tree, nodes in order:
        variants[tree]["single" if nodes == 1 else "cross"] = variant(
            nodes, ctx, tree, LATENCY_LOADGEN
        )
    result: dict[str, Any] = {
        "scenario": "crossnode-latency",
        "receivers": ctx.opts.crossnode_receivers,
        "fixed_rate": FIXED_RATE,
        "step_seconds": LATENCY_SECONDS,
        "order": [f"{t} {'one node' if n == 1 else 'three nodes'}" for t, n in order],
        "variants": variants,
    }
    errors = [
        f"{t} {k}: {v['error']}"
        for t, vs in variants.items()
        for k, v in vs.items()
        if "error" in v
    ]
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
CROSSNODE_LATENCY = driver.Scenario(
    "crossnode-latency",
    LATENCY_LOADGEN,
    measure=measure_latency,
    opt_in=True,
    roomcast_only="they have no multi-node mode",
    base_runs=False,
    pairs_base=True,  # roomcast-base runs inside roomcast's run, alternating with it
    services=("postgres", "redis"),
)
SCENARIOS = [CROSSNODE, CROSSNODE_LATENCY]


def main(argv: list[str]) -> int:
    return driver.main(argv, SCENARIOS, __doc__)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
