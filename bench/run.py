"""Benchmark driver: servers pinned to CPU 0, the load generator pinned to CPU 1.

For each run, scenario and target it starts the server (roomcast, the Node
reference or a candidate transport), runs one load-generator scenario against
it, records the server's CPU time, stops the server by PID, and finally writes
bench/results/<stamp>.json and .md with the medians across runs and the ratios
vs the Node reference. Targets are interleaved inside each run.

Scenarios (each module in bench/scenarios/ states its parameters and why,
and runs on its own with these options):

- ``fanout100``, ``fanout1000`` (scenarios/fanout.py): max deliveries/s to
  one room of 100 or 1,000 clients with no loss and p99 ≤ 100 ms, plus
  p50/p99 at a fixed 20,000 deliveries/s.
- ``echo`` (scenarios/echo.py): 50 clients doing back-to-back ping/pong
  round trips.
- ``persist`` (scenarios/persist.py): 50 clients, each in its own room,
  sending chat with ids at rising offered rates: the most acked msgs/s with
  every message acked and ack p99 ≤ 50 ms. roomcast only: the other targets
  store nothing, so they are skipped for it (noted in the report).
- ``idle``, ``idle-noroom`` (scenarios/idle.py): 10,000 clients connect, 200
  at a time, and stay idle in the lobby (or leave it after their welcome):
  connect rate, server RSS per connection, a late client's ping round trip.
  ``idle50k``: 50,000 in the lobby; run only when named, and skipped when
  the open-files hard limit is too low for it.

Scale-out scenarios, roomcast only and run only when named (they need the
local PostgreSQL, --pg-url, and Redis, --redis-url; a scenario whose service
does not answer is skipped with a note):

- ``persist-pg`` (scenarios/persist.py): ``persist`` with roomcast on a fresh
  PostgreSQL database, dropped afterwards (with --pg-prefill N it is first
  given N messages and ANALYZEd).
- ``persist-changes``, ``persist-pg-changes`` (scenarios/persist.py): the
  same with every tenth frame a change (an edit or a reaction, in turn) of
  the client's last message.
- ``persist-read``, ``persist-pg-read`` (scenarios/persist.py): the same with
  the clients signed in, each sending a ``read`` marker for every message it
  gets.
- ``crossnode`` (scenarios/crossnode.py): the fan-out ramp (one sender,
  --crossnode-receivers receivers, one room) twice per run, in alternating
  order: on three nodes A, B, C sharing one fresh database and one fresh
  Redis prefix (the sender on A, the receivers split between B and C), and
  on one node with the same flags, all clients on it. All nodes are pinned
  to CPU 0 like every server here.
- ``crossnode-latency`` (scenarios/crossnode.py): crossnode's two set-ups at
  its fixed 20,000 deliveries/s only (p50/p99, 5 s); with --targets
  roomcast,roomcast-base both trees in each run, alternating.
- ``scaleout`` (scenarios/scaleout.py): 1 to 6 nodes (--scaleout-nodes),
  each with a room of its own (a sender at 200 msgs/s and 10 receivers, all
  on that node): node A's CPU, each node's, Redis's and PostgreSQL's as the
  other nodes' traffic grows; with --targets roomcast,roomcast-base both
  trees at every node count, alternating.

Search (issue 20) has its own module, run on its own rather than from here
(its history of a million messages is generated once and kept in /tmp):
``python -m bench.scenarios.search queries|size|e2e|writes`` (query latency
through the store, the index's size, one word through a server's ``search``
frame, persisted chat with the index against the tree before it).

--compare-loadgens (scenarios/loadgens.py) compares the Python load
generator with a Node ``ws`` one against the Node server instead.

At the end it also draws PNG plots of the run into docs/img/bench/ (--plots),
named by scenario and overwriting the previous ones, with bench/lib/plots.py;
that needs matplotlib (the ``bench`` extra) and is skipped with a note
without it.

    .venv/bin/python bench/run.py                      # roomcast vs node, 3 runs
    .venv/bin/python bench/run.py --targets all --runs 1
    .venv/bin/python bench/run.py --compare-loadgens   # picows vs Node ws client
    .venv/bin/python bench/run.py --targets roomcast --scenarios persist --runs 1
    .venv/bin/python bench/run.py --scenarios idle,idle-noroom
    .venv/bin/python bench/run.py --targets roomcast --scenarios persist-pg,crossnode --runs 3
    ROOMCAST_BASE_SRC=/tmp/base/src .venv/bin/python bench/run.py \
        --targets roomcast,roomcast-base --scenarios scaleout,crossnode-latency --runs 1
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: import bench from the repository
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from bench.lib import driver, results
from bench.scenarios import crossnode, echo, fanout, idle, loadgens, persist, scaleout

#: Every scenario by name, in the order they run (and the default list's order).
SCENARIOS: dict[str, driver.Scenario] = {
    s.name: s
    for s in [
        fanout.FANOUT100,
        fanout.FANOUT1000,
        echo.ECHO,
        persist.PERSIST,
        idle.IDLE,
        idle.IDLE_NOROOM,
        idle.IDLE50K,
        persist.PERSIST_PG,
        persist.PERSIST_CHANGES,
        persist.PERSIST_PG_CHANGES,
        persist.PERSIST_READ,
        persist.PERSIST_PG_READ,
        crossnode.CROSSNODE,
        crossnode.CROSSNODE_LATENCY,
        scaleout.SCALEOUT,
    ]
}


def more_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--compare-loadgens", action="store_true")
    parser.add_argument("--report", type=Path, help="re-render the markdown of a results JSON")
    parser.add_argument("--compare-rates", type=loadgens.rates, default=loadgens.RATES)


def main(argv: list[str]) -> int:
    opts = driver.parse_args(argv, SCENARIOS, __doc__, more_arguments)
    if opts.report:
        print(results.rerender(opts.report))
        return 0
    chosen = driver.choose(opts, SCENARIOS)
    if isinstance(chosen, int):
        return chosen
    if opts.compare_loadgens:
        return loadgens.run(opts)
    return driver.run(opts, argv, SCENARIOS, *chosen)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
