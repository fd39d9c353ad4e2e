"""The rooms load generator (``rooms``, for the ``scaleout`` scenario): one room per
node, its sender and its receivers all on that node, every room busy at once.

For the i-th URL (``--url``, then each ``--node-url``), ``--clients`` clients
connect to that URL, leave the lobby and join room ``scale-<i>``; client 0 of
the group sends chat at ``--room-rate`` messages/s (the first room at
``--first-room-rate`` if given; 0: a quiet room), stamped with its send time
as fanout's are, and every member (the sender included) counts and times each
chat frame it gets. No delivery crosses nodes: whatever a node spends on the
other nodes' rooms is what its broker makes it hear.

After one warm-up message per room and ``--warmup`` seconds at the rate, one
window of ``--step-seconds`` reports, per room (so per node): messages sent,
deliveries, losses, p50/p99; and, for the ``--watch-pid`` processes over the
window, their CPU (each node, Redis, PostgreSQL) and the bytes and read calls
of their system calls (``/proc/PID/io``: rchar, wchar, syscr; not for
PostgreSQL): what a node reads grows with what its broker makes it hear,
whatever else the machine does meanwhile.
"""

from __future__ import annotations

import argparse
import asyncio
import json
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
    wait_until,
    watched_cpu,
)

MESSAGE = b'"message":"'
#: Longest wait for the last deliveries of the window, seconds (a loss past it).
DRAIN_SECONDS = 3.0


@dataclass
class RoomTally:
    """One room's chat deliveries (all its members together) since the last reset."""

    received: int = 0
    latencies: list[int] = field(default_factory=list)
    disconnects: int = 0

    def reset(self) -> None:
        self.received = 0
        self.latencies = []


class RoomClient(WSListener):
    """A member of one room: counts and times its chat frames, tracks its rooms."""

    def __init__(self, room: str, tally: RoomTally) -> None:
        self.room = room
        self.tally = tally
        self.transport: WSTransport | None = None
        self.rooms: set[str] = set()
        self.head = b'{"type":"chat","payload":{"room":"%s","message":"' % room.encode()
        self.tail = b'|%s"}}' % PAD.encode()

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.tally.disconnects += 1

    def send_json(self, frame: dict[str, Any]) -> None:
        assert self.transport is not None
        self.transport.send(WSMsgType.TEXT, json.dumps(frame).encode())

    def chat(self) -> None:
        assert self.transport is not None
        self.transport.send(WSMsgType.TEXT, self.head + b"%d" % time.monotonic_ns() + self.tail)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type != WSMsgType.TEXT:
            return
        data = frame.get_payload_as_bytes()
        if CHAT in data:
            start = data.find(MESSAGE) + len(MESSAGE)
            end = data.find(b"|", start)
            if end > start:
                self.tally.latencies.append(time.monotonic_ns() - int(data[start:end]))
                self.tally.received += 1
            return
        msg = json.loads(data)
        room = str((msg.get("payload") or {}).get("room"))
        if msg.get("type") == "joined":
            self.rooms.add(room)
        elif msg.get("type") == "left":
            self.rooms.discard(room)


@dataclass
class Room:
    """One node's room: its URL, its members (member 0 sends) and their tally."""

    url: str
    name: str
    clients: list[RoomClient]
    tally: RoomTally


async def open_room(url: str, name: str, n: int) -> Room:
    """Connect ``n`` clients to ``url``, move them from the lobby to room ``name``."""
    tally = RoomTally()
    clients: list[RoomClient] = await connect_all(url, n, lambda: RoomClient(name, tally))
    await wait_until(lambda: all("lobby" in c.rooms for c in clients), 10, f"{name}: lobby")
    for client in clients:
        client.send_json({"type": "join", "payload": {"room": name}})
        client.send_json({"type": "leave", "payload": {"room": "lobby"}})
    await wait_until(lambda: all(c.rooms == {name} for c in clients), 10, f"{name}: joins")
    return Room(url, name, clients, tally)


async def warm_up(rooms: list[Room]) -> None:
    """One message per room until every member got it (joins may settle late; up to 5 s)."""
    for room in rooms:
        n = len(room.clients)
        for _ in range(50):
            room.tally.reset()
            room.clients[0].chat()
            deadline = time.monotonic() + 0.1
            while room.tally.received < n and time.monotonic() < deadline:
                await asyncio.sleep(0.005)
            if room.tally.received >= n:
                break
        else:
            raise RuntimeError(f"{room.name}: warm-up reached {room.tally.received}/{n}")


async def send_all(rooms: list[Room], rates: list[float], seconds: float) -> list[int]:
    """Room i's sender sends at ``rates[i]`` messages/s for ``seconds``; the counts."""
    start = time.monotonic()
    sent = [0] * len(rooms)
    caps = [max(1, int(rate / 100)) for rate in rates]  # never burst more than 10 ms worth
    while (elapsed := time.monotonic() - start) < seconds:
        for i, room in enumerate(rooms):
            if not rates[i]:
                continue
            due = min(caps[i], int(elapsed * rates[i]) + 1 - sent[i])
            for _ in range(max(due, 0)):
                room.clients[0].chat()
            sent[i] += max(due, 0)
        await asyncio.sleep(0.001)
    return sent


IO_FIELDS = ("rchar", "wchar", "syscr")


def io_counts(watch: dict[str, list[int]]) -> dict[str, dict[str, int]]:
    """rchar, wchar and syscr so far of each watched name but PostgreSQL (/proc/PID/io)."""
    out: dict[str, dict[str, int]] = {}
    for name, pids in watch.items():
        if name == "postgres":
            continue
        total = dict.fromkeys(IO_FIELDS, 0)
        for pid in pids:
            try:
                with open(f"/proc/{pid}/io") as io:
                    for line in io:
                        key, _, value = line.partition(":")
                        if key in total:
                            total[key] += int(value)
            except OSError:
                continue
        out[name] = total
    return out


async def window(
    rooms: list[Room], rates: list[float], seconds: float, watch: dict[str, list[int]]
) -> dict[str, Any]:
    """One window with room i at ``rates[i]`` messages/s; its measurements."""
    for room in rooms:
        room.tally.reset()
    drops = [room.tally.disconnects for room in rooms]
    io0, watch0, cpu0, t0 = io_counts(watch), watched_cpu(watch), cpu_seconds(), time.monotonic()
    sent = await send_all(rooms, rates, seconds)
    send_time = time.monotonic() - t0
    watch1, cpu1, io1 = watched_cpu(watch), cpu_seconds(), io_counts(watch)
    in_window = [room.tally.received for room in rooms]
    deadline = time.monotonic() + DRAIN_SECONDS
    while time.monotonic() < deadline and any(
        room.tally.received < k * len(room.clients) for room, k in zip(rooms, sent, strict=True)
    ):
        await asyncio.sleep(0.01)
    per_room = []
    for room, k, before, got in zip(rooms, sent, drops, in_window, strict=True):
        lat = sorted(room.tally.latencies)
        per_room.append(
            {
                "url": room.url,
                "room": room.name,
                "clients": len(room.clients),
                "sent": k,
                "deliveries": room.tally.received,
                "delivered_per_s": round(room.tally.received / send_time),
                "in_window_per_s": round(got / send_time),
                "lost": k * len(room.clients) - room.tally.received,
                "disconnects": room.tally.disconnects - before,
                "p50_ms": round(percentile(lat, 0.50), 3),
                "p99_ms": round(percentile(lat, 0.99), 3),
                "max_ms": round(lat[-1] / 1e6, 3) if lat else None,
            }
        )
    return {
        "seconds": round(send_time, 3),
        "msgs_per_s": round(sum(sent) / send_time),
        "send_rate_ok": all(k >= 0.95 * seconds * r for k, r in zip(sent, rates, strict=True)),
        "delivered_per_s": sum(r["delivered_per_s"] for r in per_room),
        "lost": sum(r["lost"] for r in per_room),
        "rooms": per_room,
        "loadgen_cpu": round((cpu1 - cpu0) / send_time, 3),
        "cpu_by_process": {
            name: round((watch1[name] - watch0[name]) / send_time, 3) for name in watch0
        },
        "io_per_s_by_process": {
            name: {k: round((io1[name][k] - io0[name][k]) / send_time) for k in IO_FIELDS}
            for name in io0
        },
    }


async def run_rooms(args: argparse.Namespace) -> dict[str, Any]:
    urls = [args.url, *args.node_url]
    first = args.room_rate if args.first_room_rate is None else args.first_room_rate
    rates = [first] + [args.room_rate] * (len(urls) - 1)
    rooms = [await open_room(url, f"scale-{i}", args.clients) for i, url in enumerate(urls)]
    try:
        await warm_up(rooms)
        if args.warmup > 0:
            await send_all(rooms, rates, args.warmup)
            await asyncio.sleep(0.5)
        measured = await window(rooms, rates, args.step_seconds, args.watch_pid)
    finally:
        close_all([c for room in rooms for c in room.clients])
    return {
        "scenario": "rooms",
        "nodes": len(urls),
        "clients_per_room": args.clients,
        "room_rate": args.room_rate,
        "first_room_rate": first,
        "step_seconds": args.step_seconds,
        "warmup_seconds": args.warmup,
        **measured,
    }
