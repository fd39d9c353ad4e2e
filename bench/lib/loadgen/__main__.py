"""Load generator for roomcast-protocol WebSocket servers (picows + uvloop).

Measures, against a server URL:

* ``fanout``: N clients in one room, one of them sending chat messages whose
  text is ``"<monotonic ns>|<padding>"``. One fixed step (default 20,000
  deliveries/s) gives p50/p99 latency; then the rate rises geometrically until
  a step loses a message, drops a client, misses the p99 bound or the sender
  cannot keep up, and bisects between the last pass and the first failure.
  A delivery is one chat frame received by one client (the sender included).
  With ``--receiver-url`` (repeatable) the sender connects to ``--url`` and
  the other clients to the receiver URLs, round robin: several nodes of one
  service (cross-node fan-out). Each step then also reports deliveries/s and
  losses per URL, p90/p99.9, messages/s, and the CPU of ``--watch-pid``
  processes (the nodes, Redis).
* ``echo``: C clients, each sending one ``ping`` at a time and waiting for the
  ``pong`` before the next; round trips/s and p50/p99 over a fixed window.
* ``rate``: a single fan-out step at a given deliveries/s, reporting the load
  generator's own CPU use (used to compare load generators).
* ``persist``: C clients (default 50), each alone in its own room ``bench-<i>``
  (joined after leaving ``lobby``, so a client receives only its own
  broadcast), send chat messages with an ``id`` at an aggregate offered rate
  spread over the clients; each message is timed from send to its ``ack`` (an
  ack means the message is stored). Offered rates rise step by step (default
  1,000 to 16,000 msgs/s, 5 s each); a step reports acked msgs/s, ack
  p50/p99/max, ``error`` frames by code and what is still unacked after a
  drain wait. Stepping stops at the first step that loses a message, misses
  the p99 bound (default 50 ms) or whose sender cannot keep up;
  ``max_acked_per_s_within_p99`` is the best passing step's acked rate.
  With ``--watch-pid`` each step also reports those processes' CPU. With
  ``--words`` a message is a sentence of made-up words rather than one
  padding word (what a full-text index works on).
* ``idle``: N clients (default 10,000) connect, at most ``--concurrency``
  (200) at a time, and stay connected doing nothing. A connection counts once
  it has read its welcome frames: the types a first probe connection received
  (roomcast: ``system`` and the lobby's ``joined``; the Node reference:
  ``system``). Reports the connect time (connections/s), the server's RSS
  (VmRSS of ``--server-pid``) before (after the probe) and after all are
  connected and the server is quiet again, hence KB per connection, every
  frame type the idle clients received (presence events), and the ping round
  trips of one more client opened while all are connected. ``--leave-lobby``:
  each client leaves the lobby after its welcome (so no room, no presence).
  Past ``--ports-per-address`` connections, clients bind to source addresses
  127.0.0.2, 127.0.0.3, ... (all of 127/8 is loopback) to get past the
  ephemeral port range of one address.
* ``rooms``: one room per node URL (``--url``, then each ``--node-url``), its
  ``--clients`` members all on that node, member 0 sending at ``--room-rate``
  messages/s (the first at ``--first-room-rate`` if given); every room busy
  at once. After ``--warmup`` seconds at the rate, one window of
  ``--step-seconds`` reports each room's deliveries, losses and p50/p99, and
  the CPU and system-call I/O of the ``--watch-pid`` processes (``scaleout``).

Every loop is bounded in count and time. Prints one JSON object to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

import uvloop

if __package__ in (None, ""):  # run as a file: import bench from the repository
    sys.path[0] = str(Path(__file__).resolve().parents[3])

from bench.lib.loadgen import common
from bench.lib.loadgen.echo import run_echo
from bench.lib.loadgen.fanout import run_fanout, run_rate
from bench.lib.loadgen.idle import run_idle
from bench.lib.loadgen.persist import run_persist
from bench.lib.loadgen.rooms import run_rooms

PERSIST_RATES = "1000,2000,4000,6000,8000,12000,16000"
DEFAULTS = {"clients": 100, "step_seconds": 2.0, "bound_ms": 100.0}
PERSIST_DEFAULTS = {"clients": 50, "step_seconds": 5.0, "bound_ms": 50.0}
IDLE_DEFAULTS = {"clients": 10_000, "step_seconds": 0.0, "bound_ms": 0.0}
ROOMS_DEFAULTS = {"clients": 11, "step_seconds": 8.0, "bound_ms": 0.0}


def watch_pid(text: str) -> tuple[str, list[int]]:
    """``NAME=PID[,PID...]`` (for --watch-pid)."""
    name, _, pids = text.partition("=")
    if not name or not pids:
        raise argparse.ArgumentTypeError(f"expected NAME=PID[,PID...], got {text!r}")
    return name, [int(x) for x in pids.split(",")]


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("scenario", choices=["fanout", "echo", "rate", "persist", "idle", "rooms"])
    parser.add_argument(
        "--url", required=True, help="e.g. ws://127.0.0.1:8080/ws (fanout: the sender's)"
    )
    parser.add_argument(
        "--receiver-url",
        action="append",
        default=[],
        help="fanout: the other clients connect here instead, round robin (repeatable); "
        "then each step also reports deliveries/s per URL",
    )
    parser.add_argument(
        "--node-url",
        action="append",
        default=[],
        help="rooms: another node, with a room and clients of its own (repeatable)",
    )
    parser.add_argument(
        "--room-rate", type=float, default=200.0, help="rooms: messages/s each room's sender sends"
    )
    parser.add_argument(
        "--first-room-rate",
        type=float,
        help="rooms: the first room's (node A's) messages/s instead (0: a quiet room)",
    )
    parser.add_argument(
        "--watch-pid",
        action="append",
        type=watch_pid,
        default=[],
        help="fanout with --receiver-url, persist, rooms: NAME=PID[,PID...], report its CPU "
        "per step (repeatable); NAME postgres (any PID): the local PostgreSQL's processes",
    )
    parser.add_argument(
        "--postgres-db",
        default="",
        help="the postgres watch counts only this database's backends and the WAL writer, "
        "checkpointer and background writer (default: the whole server)",
    )
    parser.add_argument("--clients", type=int, help="default 100; persist: 50; rooms: 11 a room")
    parser.add_argument("--step-seconds", type=float, help="default 2; persist: 5")
    parser.add_argument("--fixed-rate", type=float, default=20_000, help="deliveries/s")
    parser.add_argument("--start-rate", type=float, default=40_000, help="deliveries/s")
    parser.add_argument("--max-rate", type=float, default=5_000_000, help="deliveries/s")
    parser.add_argument("--factor", type=float, default=1.5, help="rate growth per step")
    parser.add_argument("--bisect", type=int, default=2, help="refinement steps")
    parser.add_argument(
        "--bound-ms", type=float, help="p99 latency bound, default 100; persist: 50"
    )
    parser.add_argument(
        "--rates",
        type=lambda s: [float(x) for x in s.split(",")],
        default=PERSIST_RATES,
        help=f"persist: offered msgs/s of each step (default {PERSIST_RATES})",
    )
    parser.add_argument(
        "--changes-every",
        type=int,
        default=0,
        help="persist: every Nth frame changes the client's last message (an edit or a "
        "reaction, in turn) instead of chatting; 0: chat only",
    )
    parser.add_argument(
        "--read-markers",
        action="store_true",
        help="persist: clients sign in and send a read marker for each message they get",
    )
    parser.add_argument(
        "--words",
        action="store_true",
        help="persist: chat sentences of 3-30 made-up words (Zipf over 20,000) instead of "
        "one padding word, so a full-text index has words to index",
    )
    parser.add_argument("--server-pid", type=int, default=0, help="report its CPU per step")
    parser.add_argument("--seconds", type=float, default=5.0, help="echo window")
    parser.add_argument(
        "--warmup", type=float, default=1.0, help="echo, rooms: warm-up seconds before measuring"
    )
    parser.add_argument(
        "--concurrency", type=int, default=200, help="idle: connections in flight at most"
    )
    parser.add_argument(
        "--leave-lobby", action="store_true", help="idle: leave the lobby after the welcome"
    )
    parser.add_argument(
        "--source-addrs",
        type=int,
        default=0,
        help="idle: bind clients to 127.0.0.2..127.0.0.(1+K); 0: only past one address's share",
    )
    parser.add_argument(
        "--ports-per-address",
        type=int,
        default=25_000,
        help="idle: connections per source address (the ephemeral range is ~28k)",
    )
    parser.add_argument(
        "--connect-max-seconds", type=float, default=150.0, help="idle: connect phase cap"
    )
    parser.add_argument("--pings", type=int, default=20, help="idle: late client's pings")
    args = parser.parse_args(argv)
    args.watch_pid = dict(args.watch_pid)
    common.POSTGRES_DB["name"] = args.postgres_db
    defaults = {
        "persist": PERSIST_DEFAULTS,
        "idle": IDLE_DEFAULTS,
        "rooms": ROOMS_DEFAULTS,
    }.get(args.scenario, DEFAULTS)
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


async def main(argv: list[str]) -> None:
    args = parse_args(argv)
    runners = {
        "fanout": run_fanout,
        "echo": run_echo,
        "rate": run_rate,
        "persist": run_persist,
        "idle": run_idle,
        "rooms": run_rooms,
    }
    runner = runners[args.scenario]
    result = await asyncio.wait_for(runner(args), timeout=300)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    uvloop.run(main(sys.argv[1:]))
