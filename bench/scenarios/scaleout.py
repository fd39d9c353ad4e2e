"""scaleout: what one node spends while the other nodes' traffic grows (issue 22).

N = 1 to 6 nodes of one service on this host (``--scaleout-nodes``) share one
fresh PostgreSQL database, one fresh Redis prefix and one secret. Each node
has a room of its own, ``scale-<i>``, with its own clients all connected to
it: one sender at a fixed rate and ten receivers (bench/lib/loadgen/rooms.py).
No delivery crosses nodes, so node A's work for its own room stays the same
at every N, and whatever more it spends as N grows is what its broker makes
it hear of the other nodes' rooms: with per-room channels (issue 22) nothing,
with one channel every node hears, all of the other nodes' traffic.

Measured over one window at each N: the CPU (seconds per second, from /proc)
of node A, of every other node, of Redis and of the database's PostgreSQL
processes; what node A and Redis read and wrote through system calls
(/proc/PID/io: bytes and read calls per second, which do not depend on what
else the machine does); each room's deliveries/s, losses and p50/p99.
roomcast only, run only when named (it needs the local PostgreSQL, --pg-url,
and Redis, --redis-url; without them it is not run, with a note). With
``--targets roomcast,roomcast-base`` (and ``$ROOMCAST_BASE_SRC``, the base
tree's ``src``), each roomcast run measures both trees at every N, in
alternating order (this tree first at N = 1, 3, 5 in even runs, the base
first in odd runs), so drift within a run hits both alike.

Parameters, and why:

- **Node A alone on CPU 0**, nodes B to F on CPU 1 with the load generator.
  A first version put all nodes on CPU 0, as crossnode does: at 200
  messages/s per room CPU 0 was full from N = 3 on, the nodes split it
  evenly (0.12 of a CPU each at N = 6, 0.24 at N = 1), and a starved node
  batches more and spends less per message, so A's CPU fell as N grew on
  both trees (results 20261202-143613): its share, not its need.
- 100 messages/s per room (``--scaleout-rate``), 1 sender + 10 receivers
  (1,100 deliveries/s per node; 600 messages/s and 6,600 deliveries/s in
  all at N = 6): bounded load that CPU 1 carries for five nodes and the
  load generator (a node costs about 0.1 of a CPU at this rate, mostly the
  store's one transaction per message). ``--scaleout-a-rate 0`` leaves node
  A's room quiet (its clients connected, nobody sending), so A's CPU is then
  only what it does for the others' rooms and its own timers.
- An 8 s window after 2 s at the rate: CPU of a few hundredths of a core,
  read in clock ticks of 10 ms, to about ±0.002 of a core.
- A fresh database, prefix and nodes at every N and for each tree: each
  point stands alone; the whole run (2 trees × 6 set-ups) takes about 5 min.

    ROOMCAST_BASE_SRC=/tmp/base/src .venv/bin/python bench/run.py \\
        --scenarios scaleout --targets roomcast,roomcast-base --runs 1
    .venv/bin/python -m bench.scenarios.scaleout --targets roomcast --scaleout-nodes 1,3
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: import bench from the repository
    sys.path[0] = str(Path(__file__).resolve().parents[2])

from bench.lib import cluster, driver, servers

RECEIVERS = 10  # clients of a room besides its sender, all on its node
WINDOW_SECONDS = 8.0
WARMUP_SECONDS = 2.0

LOADGEN = (
    "rooms",
    f"--clients={RECEIVERS + 1}",
    f"--step-seconds={WINDOW_SECONDS}",
    f"--warmup={WARMUP_SECONDS}",
)


def cpu_of(index: int) -> int:
    """Node A alone on CPU 0 (its CPU is its need, not its share); the others on CPU 1."""
    return 0 if index == 0 else 1


def loadgen_command(rate: float, a_rate: float | None) -> cluster.Command:
    """The rooms load generator: node A's room first, then one room per other node."""

    def command(started: list[servers.Server], watch: list[str]) -> list[str]:
        cmd = [*LOADGEN, f"--room-rate={rate:g}", "--url", started[0].url]
        if a_rate is not None:
            cmd.append(f"--first-room-rate={a_rate:g}")
        for server in started[1:]:
            cmd += ["--node-url", server.url]
        return cmd + watch

    return command


def measure_scaleout(
    scenario: driver.Scenario, ctx: driver.Context, target: str, run: int
) -> dict[str, Any]:
    """One run of ``scaleout``: every N, on this tree and (when paired) on the base."""
    opts = ctx.opts
    trees = ["roomcast", "roomcast-base"] if cluster.base_paired(opts) else ["roomcast"]
    command = loadgen_command(opts.scaleout_rate, opts.scaleout_a_rate)
    points: list[dict[str, Any]] = []
    order: list[str] = []
    for index, nodes in enumerate(opts.scaleout_nodes):
        for tree in trees if (index + run) % 2 == 0 else trees[::-1]:
            order.append(f"{tree} {nodes}")
            label = f"{tree}, {nodes} nodes"
            points.append(cluster.measure(ctx, tree, nodes, command, label, cpus=cpu_of))
    result: dict[str, Any] = {
        "scenario": "scaleout",
        "room_rate": opts.scaleout_rate,
        "a_room_rate": opts.scaleout_rate if opts.scaleout_a_rate is None else opts.scaleout_a_rate,
        "clients_per_room": RECEIVERS + 1,
        "window_seconds": WINDOW_SECONDS,
        "trees": trees,
        "order": order,
        "points": points,
    }
    errors = [p["error"] for p in points if "error" in p]
    if errors:  # the points that were measured still count; a run with none is an error
        result["errors"] = errors
        if len(errors) == len(points):
            result["error"] = "; ".join(errors)
    return result


SCALEOUT = driver.Scenario(
    "scaleout",
    LOADGEN,
    measure=measure_scaleout,
    opt_in=True,
    roomcast_only="they have no multi-node mode",
    base_runs=False,
    pairs_base=True,  # roomcast-base runs inside roomcast's run, alternating with it
    services=("postgres", "redis"),
)
SCENARIOS = [SCALEOUT]


def main(argv: list[str]) -> int:
    return driver.main(argv, SCENARIOS, __doc__)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
