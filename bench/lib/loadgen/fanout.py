"""The fan-out load generator (``fanout`` and ``rate``): N clients in one room.

One client sends chat messages whose text is ``"<monotonic ns>|<padding>"``;
every client (the sender included) times each chat frame it receives from that
timestamp. ``fanout`` runs one fixed step (p50/p99), then a rising ramp until a
step fails, then bisects; ``rate`` runs one fixed step and reports the load
generator's own CPU (to compare load generators). With receiver URLs the
clients are spread over several nodes of one service (``crossnode``).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from picows import WSFrame, WSListener, WSMsgType, WSTransport

from bench.lib.loadgen.common import (
    CHAT,
    PAD,
    close_all,
    connect_all,
    cpu_seconds,
    percentile,
    process_cpu,
    watched_cpu,
)

MESSAGE = b'"message":"'


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
        self.chats = 0  # chat frames with a timestamp: this client's deliveries

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
        self.chats += 1


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


@dataclass
class Split:
    """Where the fan-out clients are: the sender's URL and the receivers' URLs.

    ``urls[i]`` is client i's server (client 0 sends); ``watch`` names
    processes (server nodes, Redis) whose CPU each step reports.
    """

    urls: list[str]
    watch: dict[str, list[int]] = field(default_factory=dict)


async def fanout_step(
    clients: list[ChatClient],
    tally: Tally,
    target: float,
    seconds: float,
    bound_ms: float,
    server_pid: int = 0,
    split: Split | None = None,
) -> dict[str, Any]:
    """One constant-rate step at ``target`` deliveries/s; returns its measurements.

    With ``split`` (clients on several servers) it also reports deliveries/s
    per server URL, p90/p99.9 and the CPU of the watched processes.
    """
    n = len(clients)
    sender = clients[0].transport
    assert sender is not None
    await settle(tally)
    tally.reset()
    chats0 = [c.chats for c in clients]
    drops_before = tally.disconnects
    watch0 = watched_cpu(split.watch) if split else {}
    cpu0, server0, t0 = cpu_seconds(), process_cpu(server_pid), time.monotonic()
    sent = await send_paced(sender, target / n, seconds)
    send_time = time.monotonic() - t0
    cpu1, server1 = cpu_seconds(), process_cpu(server_pid)
    watch1 = watched_cpu(split.watch) if split else {}
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
    if split is not None:
        result["msgs_per_s"] = round(sent / send_time)
        result["p90_ms"] = round(percentile(lat, 0.90), 3)
        result["p999_ms"] = round(percentile(lat, 0.999), 3)
        by_url: dict[str, int] = {}
        lost_by_url: dict[str, int] = {}
        for client, url, before in zip(clients, split.urls, chats0, strict=True):
            by_url[url] = by_url.get(url, 0) + client.chats - before
            lost_by_url[url] = lost_by_url.get(url, 0) + sent - (client.chats - before)
        result["delivered_per_s_by_url"] = {u: round(k / send_time) for u, k in by_url.items()}
        result["lost_by_url"] = lost_by_url
        result["cpu_by_process"] = {
            name: round((watch1[name] - watch0[name]) / send_time, 3) for name in watch0
        }
    return result


async def open_room(
    url: str, n: int, receiver_urls: list[str] | None = None
) -> tuple[list[ChatClient], Tally]:
    """Connect n clients and wait until a warm-up chat message reaches all of them.

    Client 0 (the sender) connects to ``url``; with ``receiver_urls`` the
    other n - 1 connect to those, round robin, instead.
    """
    tally = Tally()
    if receiver_urls:
        urls = client_urls(url, n, receiver_urls)
        groups: dict[str, Any] = {}
        for where in dict.fromkeys(urls):  # the sender's server first
            opened = await connect_all(where, urls.count(where), lambda: ChatClient(tally))
            groups[where] = iter(opened)
        clients: list[ChatClient] = [next(groups[where]) for where in urls]
    else:
        clients = await connect_all(url, n, lambda: ChatClient(tally))
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


def client_urls(url: str, n: int, receiver_urls: list[str]) -> list[str]:
    """The server URL of each of n clients: the sender on ``url``, the rest round robin."""
    return [url] + [receiver_urls[i % len(receiver_urls)] for i in range(n - 1)]


async def run_fanout(args: argparse.Namespace) -> dict[str, Any]:
    clients, tally = await open_room(args.url, args.clients, args.receiver_url)
    split = (
        Split(client_urls(args.url, args.clients, args.receiver_url), args.watch_pid)
        if args.receiver_url
        else None
    )
    fixed = await fanout_step(
        clients, tally, args.fixed_rate, args.step_seconds, args.bound_ms, args.server_pid, split
    )
    steps: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    low, high = 0.0, 0.0
    rate = args.start_rate
    while rate <= args.max_rate and len(steps) < 30:
        step = await fanout_step(
            clients, tally, rate, args.step_seconds, args.bound_ms, args.server_pid, split
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
            clients, tally, mid, args.step_seconds, args.bound_ms, args.server_pid, split
        )
        steps.append(step)
        if step["ok"]:
            best, low = step, mid
        else:
            high = mid
    close_all(clients)
    result = {
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
    if split is not None:
        result["sender_url"] = args.url
        result["clients_by_url"] = {u: split.urls.count(u) for u in dict.fromkeys(split.urls)}
        result["max_ok_msgs_per_s"] = best["msgs_per_s"] if best else 0
    return result


async def run_rate(args: argparse.Namespace) -> dict[str, Any]:
    clients, tally = await open_room(args.url, args.clients)
    step = await fanout_step(
        clients, tally, args.fixed_rate, args.step_seconds, args.bound_ms, args.server_pid
    )
    close_all(clients)
    return {"scenario": "rate", "loadgen": "python-picows", "clients": args.clients, **step}
