"""Load generator for roomcast-protocol WebSocket servers (picows + uvloop).

Measures, against a server URL:

* ``fanout``: N clients in one room, one of them sending chat messages whose
  text is ``"<monotonic ns>|<padding>"``. One fixed step (default 20,000
  deliveries/s) gives p50/p99 latency; then the rate rises geometrically until
  a step loses a message, drops a client, misses the p99 bound or the sender
  cannot keep up, and bisects between the last pass and the first failure.
  A delivery is one chat frame received by one client (the sender included).
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

Every loop is bounded in count and time. Prints one JSON object to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import uvloop
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

CHAT = b'"type":"chat"'
MESSAGE = b'"message":"'
PONG = b'"type":"pong"'
ACK = b'"type":"ack"'
ID = b'"id":"'
PAD = "x" * 48
CONNECT_BATCH = 50
PERSIST_RATES = "1000,2000,4000,6000,8000,12000,16000"
DEFAULTS = {"clients": 100, "step_seconds": 2.0, "bound_ms": 100.0}
PERSIST_DEFAULTS = {"clients": 50, "step_seconds": 5.0, "bound_ms": 50.0}


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


@dataclass
class Tally:
    """Chat deliveries received by all clients since the last reset."""

    received: int = 0
    latencies: list[int] = field(default_factory=list)
    disconnects: int = 0

    def reset(self) -> None:
        self.received = 0
        self.latencies = []


class ChatClient(WSListener):  # type: ignore[misc]
    """Counts chat frames and records latency from the timestamp in the text."""

    def __init__(self, tally: Tally) -> None:
        self.tally = tally
        self.transport: WSTransport | None = None
        self.frames = 0

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.tally.disconnects += 1

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type != WSMsgType.TEXT:
            return
        self.frames += 1
        data = frame.get_payload_as_bytes()
        if CHAT not in data:
            return
        start = data.find(MESSAGE) + len(MESSAGE)
        end = data.find(b"|", start)
        if end < 0:
            return
        tally = self.tally
        tally.latencies.append(time.monotonic_ns() - int(data[start:end]))
        tally.received += 1


class EchoClient(WSListener):  # type: ignore[misc]
    """Sends one ping at a time; sends the next as soon as the pong arrives."""

    def __init__(self, running: Callable[[], bool]) -> None:
        self.running = running
        self.transport: WSTransport | None = None
        self.sent_at = 0
        self.seq = 0
        self.rtts: list[int] = []
        self.idle = True

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport

    def ping(self) -> None:
        assert self.transport is not None
        self.seq += 1
        self.idle = False
        self.sent_at = time.monotonic_ns()
        msg = b'{"type":"ping","id":"%d","payload":{"n":%d}}' % (self.seq, self.seq)
        self.transport.send(WSMsgType.TEXT, msg)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type != WSMsgType.TEXT or self.idle:
            return
        if PONG not in frame.get_payload_as_bytes():
            return
        self.rtts.append(time.monotonic_ns() - self.sent_at)
        self.idle = True
        if self.running():
            self.ping()


@dataclass
class AckTally:
    """Acks (and error frames) received by all persist clients since the last reset."""

    acked: int = 0
    latencies: list[int] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    disconnects: int = 0

    def reset(self) -> None:
        self.acked = 0
        self.latencies = []
        self.errors = {}


class PersistClient(WSListener):  # type: ignore[misc]
    """Chats in its own room; times each message from send to its ack."""

    def __init__(self, index: int, tally: AckTally) -> None:
        self.room = f"bench-{index}"
        self.tally = tally
        self.transport: WSTransport | None = None
        self.prefix = b"p%d-" % index
        self.tail = b'","payload":{"room":"%s","message":"%s"}}' % (
            self.room.encode(),
            PAD.encode(),
        )
        self.seq = 0
        self.pending: dict[bytes, int] = {}  # chat id -> send time (monotonic ns)
        self.rooms: set[str] = set()

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.tally.disconnects += 1

    def send_json(self, frame: dict[str, Any]) -> None:
        assert self.transport is not None
        self.transport.send(WSMsgType.TEXT, json.dumps(frame).encode())

    def chat(self) -> None:
        assert self.transport is not None
        self.seq += 1
        fid = self.prefix + b"%d" % self.seq
        self.pending[fid] = time.monotonic_ns()
        self.transport.send(WSMsgType.TEXT, b'{"type":"chat","id":"' + fid + self.tail)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type != WSMsgType.TEXT:
            return
        data = frame.get_payload_as_bytes()
        if ACK in data:
            start = data.find(ID) + len(ID)
            sent_at = self.pending.pop(data[start : data.find(b'"', start)], None)
            if sent_at is not None:
                tally = self.tally
                tally.latencies.append(time.monotonic_ns() - sent_at)
                tally.acked += 1
            return
        if CHAT in data:
            return  # our own broadcast copy; the ack follows it
        msg = json.loads(data)
        payload = msg.get("payload") or {}
        kind = msg.get("type")
        if kind == "joined":
            self.rooms.add(payload.get("room"))
        elif kind == "left":
            self.rooms.discard(payload.get("room"))
        elif kind == "error":
            code = str(payload.get("code"))
            self.tally.errors[code] = self.tally.errors.get(code, 0) + 1
            if isinstance(msg.get("id"), str):
                self.pending.pop(msg["id"].encode(), None)


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


def chat_message() -> bytes:
    text = f"{time.monotonic_ns()}|{PAD}"
    return b'{"type":"chat","payload":{"message":"%s"}}' % text.encode()


async def send_paced(transport: WSTransport, msgs_per_s: float, seconds: float) -> int:
    """Send chat messages at ``msgs_per_s`` for ``seconds``; return how many were sent."""
    start = time.monotonic()
    sent = 0
    cap = max(1, int(msgs_per_s / 100))  # never burst more than 10 ms worth
    while (elapsed := time.monotonic() - start) < seconds:
        due = min(cap, int(elapsed * msgs_per_s) + 1 - sent)
        for _ in range(due):
            transport.send(WSMsgType.TEXT, chat_message())
        sent += max(due, 0)
        await asyncio.sleep(0.001)
    return sent


async def drain(tally: Tally, expected: int, max_wait: float) -> None:
    """Wait until ``expected`` deliveries have arrived, or ``max_wait`` seconds."""
    deadline = time.monotonic() + max_wait
    while tally.received < expected and time.monotonic() < deadline:
        await asyncio.sleep(0.01)


async def settle(tally: Tally, quiet: float = 0.3, max_wait: float = 10.0) -> None:
    """Wait until no chat frame has arrived for ``quiet`` seconds (at most ``max_wait``)."""
    deadline = time.monotonic() + max_wait
    last = -1
    while tally.received != last and time.monotonic() < deadline:
        last = tally.received
        await asyncio.sleep(quiet)


async def fanout_step(
    clients: list[ChatClient],
    tally: Tally,
    target: float,
    seconds: float,
    bound_ms: float,
    server_pid: int = 0,
) -> dict[str, Any]:
    """One constant-rate step at ``target`` deliveries/s; returns its measurements."""
    n = len(clients)
    sender = clients[0].transport
    assert sender is not None
    await settle(tally)
    tally.reset()
    drops_before = tally.disconnects
    cpu0, server0, t0 = cpu_seconds(), process_cpu(server_pid), time.monotonic()
    sent = await send_paced(sender, target / n, seconds)
    send_time = time.monotonic() - t0
    cpu1, server1 = cpu_seconds(), process_cpu(server_pid)
    received_in_window = tally.received
    await drain(tally, sent * n, max_wait=max(2.0, 2 * bound_ms / 1000))
    lat = sorted(tally.latencies)
    lost = sent * n - tally.received
    p99 = percentile(lat, 0.99)
    result = {
        "target_deliveries_per_s": round(target),
        "sent": sent,
        "send_rate_ok": sent >= 0.95 * seconds * target / n,
        "deliveries": tally.received,
        "delivered_per_s": round(tally.received / send_time),
        "in_window_per_s": round(received_in_window / send_time),
        "lost": lost,
        "disconnects": tally.disconnects - drops_before,
        "p50_ms": round(percentile(lat, 0.50), 3),
        "p99_ms": round(p99, 3),
        "max_ms": round(lat[-1] / 1e6, 3) if lat else None,
        "loadgen_cpu": round((cpu1 - cpu0) / send_time, 3),
        "server_cpu": round((server1 - server0) / send_time, 3) if server_pid else None,
    }
    result["ok"] = bool(
        result["send_rate_ok"] and lost == 0 and result["disconnects"] == 0 and p99 <= bound_ms
    )
    return result


async def open_room(url: str, n: int) -> tuple[list[ChatClient], Tally]:
    """Connect n clients and wait until a warm-up chat message reaches all of them."""
    tally = Tally()
    clients: list[ChatClient] = await connect_all(url, n, lambda: ChatClient(tally))
    for _ in range(50):  # joins may complete after the handshake: retry up to 5 s
        tally.reset()
        sender = clients[0].transport
        assert sender is not None
        sender.send(WSMsgType.TEXT, chat_message())
        await drain(tally, n, max_wait=0.1)
        if tally.received >= n:
            break
    else:
        raise RuntimeError(f"warm-up reached {tally.received}/{n} clients")
    await drain(tally, 10**12, max_wait=0.2)
    return clients, tally


async def wait_until(done: Callable[[], bool], max_wait: float, what: str) -> None:
    """Poll ``done`` every 10 ms; raise if it is still false after ``max_wait`` seconds."""
    deadline = time.monotonic() + max_wait
    while not done():
        if time.monotonic() >= deadline:
            raise RuntimeError(f"timed out after {max_wait} s waiting for {what}")
        await asyncio.sleep(0.01)


async def open_rooms(url: str, n: int) -> tuple[list[PersistClient], AckTally]:
    """Connect n clients, move each from lobby to its own room, one acked chat each."""
    tally = AckTally()
    index = itertools.count()
    clients: list[PersistClient] = await connect_all(
        url, n, lambda: PersistClient(next(index), tally)
    )
    await wait_until(lambda: all("lobby" in c.rooms for c in clients), 10, "lobby joins")
    for client in clients:
        client.send_json({"type": "join", "payload": {"room": client.room}})
        client.send_json({"type": "leave", "payload": {"room": "lobby"}})
    await wait_until(lambda: all(c.rooms == {c.room} for c in clients), 10, "own rooms")
    for client in clients:
        client.chat()
    await wait_until(lambda: not any(c.pending for c in clients), 10, "warm-up acks")
    return clients, tally


async def send_spread(clients: list[PersistClient], msgs_per_s: float, seconds: float) -> int:
    """Send chat at ``msgs_per_s`` in all, round robin over the clients; return the count."""
    n = len(clients)
    start = time.monotonic()
    sent = 0
    cap = max(1, int(msgs_per_s / 100))  # never burst more than 10 ms worth
    while (elapsed := time.monotonic() - start) < seconds:
        due = min(cap, int(elapsed * msgs_per_s) + 1 - sent)
        for k in range(sent, sent + max(due, 0)):
            clients[k % n].chat()
        sent += max(due, 0)
        await asyncio.sleep(0.001)
    return sent


async def persist_step(
    clients: list[PersistClient],
    tally: AckTally,
    rate: float,
    seconds: float,
    bound_ms: float,
    server_pid: int = 0,
) -> dict[str, Any]:
    """One constant-rate step at ``rate`` offered msgs/s; returns its measurements."""
    for client in clients:
        client.pending.clear()
    tally.reset()
    drops_before = tally.disconnects
    cpu0, server0, t0 = cpu_seconds(), process_cpu(server_pid), time.monotonic()
    sent = await send_spread(clients, rate, seconds)
    send_time = time.monotonic() - t0
    cpu1, server1 = cpu_seconds(), process_cpu(server_pid)
    acked_in_window = tally.acked
    deadline = time.monotonic() + max(2.0, 2 * bound_ms / 1000)
    while any(c.pending for c in clients) and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    lat = sorted(tally.latencies)
    p99 = percentile(lat, 0.99)
    result: dict[str, Any] = {
        "offered_per_s": round(rate),
        "sent": sent,
        "send_rate_ok": sent >= 0.95 * seconds * rate,
        "acked": tally.acked,
        "acked_per_s": round(tally.acked / send_time),
        "in_window_per_s": round(acked_in_window / send_time),
        "unacked": sum(len(c.pending) for c in clients),
        "errors": sum(tally.errors.values()),
        "error_codes": dict(tally.errors),
        "disconnects": tally.disconnects - drops_before,
        "p50_ms": round(percentile(lat, 0.50), 3),
        "p99_ms": round(p99, 3),
        "max_ms": round(lat[-1] / 1e6, 3) if lat else None,
        "loadgen_cpu": round((cpu1 - cpu0) / send_time, 3),
        "server_cpu": round((server1 - server0) / send_time, 3) if server_pid else None,
    }
    fail = []
    if not result["send_rate_ok"]:
        fail.append("sender behind")
    if tally.acked < sent:
        fail.append(f"{sent - tally.acked} not acked")
    if result["errors"]:
        fail.append(f"{result['errors']} errors")
    if result["disconnects"]:
        fail.append(f"{result['disconnects']} disconnects")
    if not p99 <= bound_ms:
        fail.append(f"p99 {p99:.1f} ms > {bound_ms:g}")
    result["fail"] = fail
    result["ok"] = not fail
    return result


def close_all(listeners: list[Any]) -> None:
    for listener in listeners:
        if listener.transport is not None:
            listener.transport.disconnect()


async def run_fanout(args: argparse.Namespace) -> dict[str, Any]:
    clients, tally = await open_room(args.url, args.clients)
    fixed = await fanout_step(
        clients, tally, args.fixed_rate, args.step_seconds, args.bound_ms, args.server_pid
    )
    steps: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    low, high = 0.0, 0.0
    rate = args.start_rate
    while rate <= args.max_rate and len(steps) < 30:
        step = await fanout_step(
            clients, tally, rate, args.step_seconds, args.bound_ms, args.server_pid
        )
        steps.append(step)
        if not step["ok"]:
            high = rate
            break
        best, low = step, rate
        rate *= args.factor
    for _ in range(args.bisect if high else 0):
        if not low or high / low < 1.08:
            break
        mid = (low * high) ** 0.5
        step = await fanout_step(
            clients, tally, mid, args.step_seconds, args.bound_ms, args.server_pid
        )
        steps.append(step)
        if step["ok"]:
            best, low = step, mid
        else:
            high = mid
    close_all(clients)
    return {
        "scenario": "fanout",
        "clients": args.clients,
        "bound_ms": args.bound_ms,
        "step_seconds": args.step_seconds,
        "fixed": fixed,
        "max_ok_deliveries_per_s": best["delivered_per_s"] if best else 0,
        "max_ok_step": best,
        "ceiling_hit": not high,
        "steps": steps,
    }


async def run_rate(args: argparse.Namespace) -> dict[str, Any]:
    clients, tally = await open_room(args.url, args.clients)
    step = await fanout_step(
        clients, tally, args.fixed_rate, args.step_seconds, args.bound_ms, args.server_pid
    )
    close_all(clients)
    return {"scenario": "rate", "loadgen": "python-picows", "clients": args.clients, **step}


async def run_persist(args: argparse.Namespace) -> dict[str, Any]:
    clients, tally = await open_rooms(args.url, args.clients)
    steps: list[dict[str, Any]] = []
    for rate in args.rates[:30]:
        step = await persist_step(
            clients, tally, rate, args.step_seconds, args.bound_ms, args.server_pid
        )
        steps.append(step)
        if not step["ok"]:
            break
    close_all(clients)
    passed = [s for s in steps if s["ok"]]
    best = max(passed, key=lambda s: s["acked_per_s"]) if passed else None
    return {
        "scenario": "persist",
        "clients": args.clients,
        "bound_ms": args.bound_ms,
        "step_seconds": args.step_seconds,
        "rates": args.rates,
        "max_acked_per_s_within_p99": best["acked_per_s"] if best else 0,
        "max_ok_step": best,
        "ceiling_hit": len(passed) == len(steps),
        "steps": steps,
    }


async def run_echo(args: argparse.Namespace) -> dict[str, Any]:
    state = {"running": True}
    clients: list[EchoClient] = await connect_all(
        args.url, args.clients, lambda: EchoClient(lambda: state["running"])
    )
    await asyncio.sleep(0.2)  # let welcome/joined frames arrive first
    for client in clients:
        client.ping()
    await asyncio.sleep(args.warmup)
    counts = [len(c.rtts) for c in clients]
    cpu0, t0 = cpu_seconds(), time.monotonic()
    await asyncio.sleep(args.seconds)
    window = time.monotonic() - t0
    cpu1 = cpu_seconds()
    rtts = sorted(x for c, k in zip(clients, counts, strict=True) for x in c.rtts[k:])
    state["running"] = False
    await asyncio.sleep(0.2)
    close_all(clients)
    if not rtts:
        raise RuntimeError("no round trip completed")
    return {
        "scenario": "echo",
        "clients": args.clients,
        "seconds": round(window, 3),
        "round_trips": len(rtts),
        "round_trips_per_s": round(len(rtts) / window),
        "p50_ms": round(percentile(rtts, 0.50), 3),
        "p99_ms": round(percentile(rtts, 0.99), 3),
        "loadgen_cpu": round((cpu1 - cpu0) / window, 3),
    }


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("scenario", choices=["fanout", "echo", "rate", "persist"])
    parser.add_argument("--url", required=True, help="e.g. ws://127.0.0.1:8080/ws")
    parser.add_argument("--clients", type=int, help="default 100; persist: 50")
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
    parser.add_argument("--server-pid", type=int, default=0, help="report its CPU per step")
    parser.add_argument("--seconds", type=float, default=5.0, help="echo window")
    parser.add_argument("--warmup", type=float, default=1.0, help="echo warm-up")
    args = parser.parse_args(argv)
    for name, value in (PERSIST_DEFAULTS if args.scenario == "persist" else DEFAULTS).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


async def main(argv: list[str]) -> None:
    args = parse_args(argv)
    runners = {"fanout": run_fanout, "echo": run_echo, "rate": run_rate, "persist": run_persist}
    runner = runners[args.scenario]
    result = await asyncio.wait_for(runner(args), timeout=300)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    uvloop.run(main(sys.argv[1:]))
