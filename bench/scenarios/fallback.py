"""The HTTP fallback (issue 23): Server-Sent Events + POST against the WebSocket, one server.

A client behind a proxy that refuses the upgrade gets every frame over
``GET /events`` and POSTs its own frames to ``/events/{stream}``
(docs/protocol.md, "The HTTP fallback"). This measures what that costs
the server and the client, against the same clients over the WebSocket:

- ``fanout``: ``--receivers`` receivers (default 100) in one room, all over
  SSE (aiohttp; the ``join`` and the ``leave`` of the lobby POSTed as NDJSON)
  or all over the WebSocket (picows), and one WebSocket sender chatting at
  each of ``--rates`` msgs/s in turn for ``--seconds`` each (after
  ``--warmup`` seconds at that rate). Per step: deliveries/s received,
  delivery latency p50/p99 (from the monotonic timestamp in the chat
  text), losses (sent × receivers − received, after the stream settles),
  the server's µs of CPU per delivery (from /proc/<pid>/stat) and the load
  generator's CPU (the SSE client parses in Python: if it reaches a whole
  core, the client is the limit, not the server).
- ``echo``: one sender alone in a room, over SSE+POST or the WebSocket,
  sending a chat with an id and waiting for its ack (and, over SSE, the
  POST's 204: a client keeps one POST in flight) before the next, for
  ``--seconds``: acked msgs/s and ack p50/p99.

One fresh server per configuration and round (``roomcast serve``, SQLite in
a temp dir, port 0, ``--rate-limit=0``, ``--heartbeat 0`` so that idle SSE
receivers need not POST, ``--max-http-connections-per-ip 0`` since every
receiver holds an HTTP connection), pinned to CPU 0 by bench/lib/servers.py;
this process, the load generator, pins itself to CPU 1. Each round runs
``sse`` and ``ws`` in an order that alternates round by round; the report
gives every round and the median per step, plus the machine's load average
and the other processes' CPU (``other``: the machine is shared).

Parameters, and why: 100 receivers and 50-400 msgs/s is 5,000-40,000
deliveries/s, within what the WebSocket path does with room to spare
(fanout100 passes ~200,000/s), so the steps compare the transports' cost
at equal work rather than their breaking points; 48 bytes of padding as
fanout's chats.

    .venv/bin/python bench/scenarios/fallback.py --rounds 3
    .venv/bin/python bench/scenarios/fallback.py --receivers 100 --rates 50,100,200,400 \\
        --seconds 5 --warmup 1 --rounds 3 --json /tmp/fallback.json
    .venv/bin/python bench/scenarios/fallback.py --only echo --rounds 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: import bench from the repository
    sys.path[0] = str(Path(__file__).resolve().parents[2])

import aiohttp
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

from bench.lib import servers
from bench.lib.loadgen.common import PAD, cpu_seconds, percentile
from bench.lib.measure import machine_busy, process_cpu, src_digest

ROOM = "fallback"
ECHO_ROOM = "echo"
CHAT = b'"type":"chat"'
ACK = b'"type":"ack"'
MESSAGE = b'"message":"'
ID = b'"id":"'
#: The POST's type: aiohttp would send bytes as application/octet-stream, a file.
NDJSON = {"Content-Type": "application/x-ndjson"}
#: Seconds to wait for the last deliveries of a step before counting losses.
SETTLE_MAX = 10.0
#: Receivers connected at once (as bench/lib/loadgen/common.py's CONNECT_BATCH).
CONNECT_BATCH = 50


class Tally:
    """Chat deliveries (with their latency) that the receivers got since the last reset."""

    def __init__(self) -> None:
        self.received = 0  # chats with a timestamp, all receivers
        self.latencies: list[int] = []  # ns, send to receipt
        self.errors: dict[str, int] = {}  # error frames by code

    def reset(self) -> None:
        self.received = 0
        self.latencies = []

    def frame(self, data: bytes | memoryview) -> None:
        """Count one frame's JSON: a chat with our timestamp, or an error."""
        data = bytes(data)
        if CHAT in data:
            start = data.find(MESSAGE) + len(MESSAGE)
            end = data.find(b"|", start)
            if end > start:
                self.latencies.append(time.monotonic_ns() - int(data[start:end]))
                self.received += 1
        elif b'"type":"error"' in data:
            code = json.loads(data).get("payload", {}).get("code", "?")
            self.errors[code] = self.errors.get(code, 0) + 1


def chat_frame(room: str, fid: str | None = None) -> bytes:
    text = f"{time.monotonic_ns()}|{PAD}"
    frame: dict[str, Any] = {"type": "chat", "payload": {"room": room, "message": text}}
    if fid is not None:
        frame["id"] = fid
    return json.dumps(frame).encode()


def join_frames(room: str) -> list[bytes]:
    """Join ``room`` and leave the lobby (whose presence frames would be noise)."""
    return [
        json.dumps({"type": "join", "payload": {"room": room}}).encode(),
        json.dumps({"type": "leave", "payload": {"room": "lobby"}}).encode(),
    ]


# -- WebSocket clients (picows) ---------------------------------------------------------


class WsClient(WSListener):  # type: ignore[misc]
    """A WebSocket client: hands every text frame to ``on_text``; notes its rooms."""

    def __init__(self, on_text: Callable[[bytes], None]) -> None:
        self.on_text = on_text
        self.transport: WSTransport | None = None
        self.joined = asyncio.Event()
        self.room = ROOM

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type != WSMsgType.TEXT:
            return
        data = frame.get_payload_as_bytes()
        if b'"type":"joined"' in data and b'"room":"%s"' % self.room.encode() in data:
            self.joined.set()
        self.on_text(data)

    def send(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.send(WSMsgType.TEXT, data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.disconnect()


async def ws_client(url: str, on_text: Callable[[bytes], None], room: str) -> WsClient:
    def make() -> WsClient:
        client = WsClient(on_text)
        client.room = room
        return client

    _, client = await ws_connect(make, url)
    for frame in join_frames(room):
        client.send(frame)
    await asyncio.wait_for(client.joined.wait(), 10)
    return client


# -- SSE + POST clients (aiohttp) -------------------------------------------------------


class SseClient:
    """A fallback client: reads ``GET /events``, POSTs NDJSON to ``/events/{stream}``."""

    def __init__(self, session: aiohttp.ClientSession, base: str, room: str) -> None:
        self.session = session
        self.base = base
        self.room = room
        self.on_text: Callable[[bytes], None] = lambda data: None
        self.stream = ""  # the stream's id, from the open event
        self.opened = asyncio.Event()
        self.joined = asyncio.Event()
        self.reader: asyncio.Task[None] | None = None
        self.response: aiohttp.ClientResponse | None = None

    async def open(self) -> None:
        self.response = await self.session.get(self.base + "/events")
        self.response.raise_for_status()
        self.reader = asyncio.create_task(self.read())
        await asyncio.wait_for(self.opened.wait(), 10)
        await self.post(join_frames(self.room))
        await asyncio.wait_for(self.joined.wait(), 10)

    async def read(self) -> None:
        """Split the stream into events; each ``data:`` line goes to ``on_text``."""
        assert self.response is not None
        buffer = b""
        joined = b'"room":"%s"' % self.room.encode()
        async for chunk in self.response.content.iter_any():
            buffer += chunk
            *events, buffer = buffer.split(b"\n\n")
            for event in events:
                if event.startswith(b"data: "):
                    data = event[6:]
                    if b'"type":"joined"' in data and joined in data:
                        self.joined.set()
                    self.on_text(data)
                elif event.startswith(b"event: open\n"):
                    self.stream = json.loads(event.split(b"data: ", 1)[1])["stream"]
                    self.opened.set()

    async def post(self, frames: list[bytes]) -> None:
        url = f"{self.base}/events/{self.stream}"
        body = b"\n".join(frames)
        async with self.session.post(url, data=body, headers=NDJSON) as resp:
            if resp.status != 204:
                raise RuntimeError(f"POST {resp.status}: {await resp.text()}")

    def close(self) -> None:
        if self.response is not None:
            self.response.close()
        if self.reader is not None:
            self.reader.cancel()


# -- the scenarios ----------------------------------------------------------------------


async def paced(send: Callable[[], None], rate: float, seconds: float) -> int:
    """Call ``send`` ``rate`` times a second for ``seconds`` (never 10 ms' worth at once)."""
    start = time.monotonic()
    sent = 0
    cap = max(1, int(rate / 100))
    while (elapsed := time.monotonic() - start) < seconds:
        due = min(cap, int(elapsed * rate) + 1 - sent)
        for _ in range(max(due, 0)):
            send()
        sent += max(due, 0)
        await asyncio.sleep(0.001)
    return sent


async def settle(tally: Tally, expected: int) -> None:
    """Wait for ``expected`` deliveries, or until none came for 0.5 s (at most SETTLE_MAX)."""
    deadline = time.monotonic() + SETTLE_MAX
    last, quiet_since = -1, time.monotonic()
    while tally.received < expected and time.monotonic() < deadline:
        if tally.received != last:
            last, quiet_since = tally.received, time.monotonic()
        elif time.monotonic() - quiet_since > 0.5:
            return
        await asyncio.sleep(0.02)


async def fanout(opts: argparse.Namespace, transport: str, url: str, pid: int) -> list[Any]:
    """Receivers over ``transport``, one WebSocket sender: one row per rate."""
    tally = Tally()
    base = url.replace("ws://", "http://").removesuffix("/ws")
    connector = aiohttp.TCPConnector(limit=0)
    rows: list[dict[str, Any]] = []
    async with aiohttp.ClientSession(connector=connector) as session:
        receivers: list[Any] = []
        try:
            for first in range(0, opts.receivers, CONNECT_BATCH):
                batch = min(CONNECT_BATCH, opts.receivers - first)
                if transport == "ws":
                    receivers += await asyncio.gather(
                        *(ws_client(url, tally.frame, ROOM) for _ in range(batch))
                    )
                else:
                    fresh = [SseClient(session, base, ROOM) for _ in range(batch)]
                    for client in fresh:
                        client.on_text = tally.frame
                    await asyncio.gather(*(c.open() for c in fresh))
                    receivers += fresh
            sender = await ws_client(url, lambda data: None, ROOM)
            receivers.append(sender)  # closed with them
            for rate in opts.rates:
                tally.reset()
                warm = await paced(lambda: sender.send(chat_frame(ROOM)), rate, opts.warmup)
                await settle(tally, warm * opts.receivers)
                tally.reset()
                cpu0, lg0, busy0 = process_cpu(pid), cpu_seconds(), machine_busy()
                t0 = time.monotonic()
                sent = await paced(lambda: sender.send(chat_frame(ROOM)), rate, opts.seconds)
                wall = time.monotonic() - t0
                received_in_time = tally.received
                cpu1, lg1, busy1 = process_cpu(pid), cpu_seconds(), machine_busy()
                expected = sent * opts.receivers
                await settle(tally, expected)
                lat = sorted(tally.latencies)
                server_cpu = (cpu1 or 0.0) - (cpu0 or 0.0)
                lg_cpu = lg1 - lg0
                rows.append(
                    {
                        "rate": rate,
                        "sent": sent,
                        "deliveries_per_s": round(received_in_time / wall),
                        "p50_ms": round(percentile(lat, 0.50), 2),
                        "p99_ms": round(percentile(lat, 0.99), 2),
                        "lost": expected - tally.received,
                        "server_cpu": round(server_cpu / wall, 3),
                        "us_per_delivery": round(server_cpu / max(received_in_time, 1) * 1e6, 2),
                        "loadgen_cpu": round(lg_cpu / wall, 3),
                        "other_cpu": round((busy1 - busy0 - server_cpu - lg_cpu) / wall, 3),
                    }
                )
        finally:
            for client in receivers:
                client.close()
    if tally.errors:
        rows.append({"errors": tally.errors})
    return rows


async def echo(opts: argparse.Namespace, transport: str, url: str, pid: int) -> dict[str, Any]:
    """One sender alone in a room: send a chat with an id, wait for its ack, again."""
    acks: dict[str, asyncio.Future[int]] = {}

    def on_text(data: bytes) -> None:
        if ACK in data:
            start = data.find(ID) + len(ID)
            fid = data[start : data.find(b'"', start)].decode()
            future = acks.pop(fid, None)
            if future is not None and not future.done():
                future.set_result(time.monotonic_ns())

    base = url.replace("ws://", "http://").removesuffix("/ws")
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        client: Any
        send_one: Callable[[bytes], Awaitable[None]]
        if transport == "ws":
            client = await ws_client(url, on_text, ECHO_ROOM)

            async def send_one(frame: bytes) -> None:
                client.send(frame)
        else:
            client = SseClient(session, base, ECHO_ROOM)
            client.on_text = on_text
            await client.open()

            async def send_one(frame: bytes) -> None:
                await client.post([frame])

        async def round_trip(seq: int) -> int:
            fid = f"e{seq}"
            future: asyncio.Future[int] = loop.create_future()
            acks[fid] = future
            sent_at = time.monotonic_ns()
            await send_one(chat_frame(ECHO_ROOM, fid))
            return await asyncio.wait_for(future, 10) - sent_at

        try:
            seq = 0
            until = time.monotonic() + opts.warmup
            while time.monotonic() < until:
                seq += 1
                await round_trip(seq)
            latencies: list[int] = []
            cpu0, lg0, busy0 = process_cpu(pid), cpu_seconds(), machine_busy()
            t0 = time.monotonic()
            while time.monotonic() < t0 + opts.seconds:
                seq += 1
                latencies.append(await round_trip(seq))
            wall = time.monotonic() - t0
            cpu1, lg1, busy1 = process_cpu(pid), cpu_seconds(), machine_busy()
        finally:
            client.close()
    lat = sorted(latencies)
    server_cpu = (cpu1 or 0.0) - (cpu0 or 0.0)
    return {
        "acked_per_s": round(len(lat) / wall, 1),
        "p50_ms": round(percentile(lat, 0.50), 3),
        "p99_ms": round(percentile(lat, 0.99), 3),
        "server_cpu": round(server_cpu / wall, 3),
        "us_per_ack": round(server_cpu / max(len(lat), 1) * 1e6, 1),
        "loadgen_cpu": round((lg1 - lg0) / wall, 3),
        "other_cpu": round((busy1 - busy0 - server_cpu - (lg1 - lg0)) / wall, 3),
    }


# -- the driver -------------------------------------------------------------------------


def start_server(tmp: Path) -> servers.Server:
    """A fresh roomcast on CPU 0 (its own SQLite database under ``tmp``)."""
    args = ["--heartbeat", "0", "--max-http-connections-per-ip", "0"]
    return servers.start("roomcast", tmp, None, args, cpu=0)


async def one(opts: argparse.Namespace, part: str, transport: str, tmp: Path) -> Any:
    server = start_server(tmp)
    try:
        if part == "fanout":
            return await fanout(opts, transport, server.url, server.proc.pid)
        return await echo(opts, transport, server.url, server.proc.pid)
    finally:
        servers.stop(server)
        problems = servers.log_problems(server.log)
        if problems["count"]:
            print(f"  server log ({transport}): {problems}", file=sys.stderr)


def median(values: list[float]) -> float:
    return round(statistics.median(values), 3)


def report(opts: argparse.Namespace, runs: list[dict[str, Any]]) -> None:
    """Print every round and the medians as markdown tables."""
    order = ["sse", "ws"]
    if "fanout" in opts.only:
        print("\n### fanout: receivers over SSE or WebSocket, one WebSocket sender\n")
        print(
            "| receivers | msgs/s | deliveries/s (rounds) | p50 ms | p99 ms | lost | "
            "server µs/delivery (rounds) | server CPU | loadgen CPU | other CPU |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for transport in order:
            rows = [
                r["rows"] for r in runs if r["part"] == "fanout" and r["transport"] == transport
            ]
            for i, rate in enumerate(opts.rates):
                step = [r[i] for r in rows]

                def col(key: str, step: list[dict[str, Any]] = step) -> str:
                    values = [s[key] for s in step]
                    return f"{median(values):g} ({', '.join(f'{v:g}' for v in values)})"

                def med(key: str, step: list[dict[str, Any]] = step) -> str:
                    return f"{median([s[key] for s in step]):g}"

                print(
                    f"| {transport} | {rate:g} | {col('deliveries_per_s')} | {med('p50_ms')} | "
                    f"{med('p99_ms')} | {sum(s['lost'] for s in step)} | "
                    f"{col('us_per_delivery')} | {med('server_cpu')} | {med('loadgen_cpu')} | "
                    f"{med('other_cpu')} |"
                )
    if "echo" in opts.only:
        print("\n### echo: one sender, send a chat with an id, wait for its ack\n")
        print(
            "| sender | acked msgs/s (rounds) | ack p50 ms (rounds) | ack p99 ms (rounds) | "
            "server µs/ack | loadgen CPU | other CPU |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|")
        for transport in order:
            step = [r["row"] for r in runs if r["part"] == "echo" and r["transport"] == transport]

            def ecol(key: str, step: list[dict[str, Any]] = step) -> str:
                values = [s[key] for s in step]
                return f"{median(values):g} ({', '.join(f'{v:g}' for v in values)})"

            print(
                f"| {transport} | {ecol('acked_per_s')} | {ecol('p50_ms')} | {ecol('p99_ms')} | "
                f"{median([s['us_per_ack'] for s in step]):g} | "
                f"{median([s['loadgen_cpu'] for s in step]):g} | "
                f"{median([s['other_cpu'] for s in step]):g} |"
            )


async def main_async(opts: argparse.Namespace) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="roomcast-fallback-") as name:
        tmp = Path(name)
        for round_no in range(opts.rounds):
            order = ["sse", "ws"] if round_no % 2 == 0 else ["ws", "sse"]
            for part in opts.only:
                for transport in order:
                    load = os.getloadavg()
                    result = await one(opts, part, transport, tmp)
                    entry: dict[str, Any] = {
                        "round": round_no,
                        "part": part,
                        "transport": transport,
                        "loadavg": [round(x, 2) for x in load],
                    }
                    if part == "fanout":
                        errors = [r for r in result if "errors" in r]
                        entry["rows"] = [r for r in result if "errors" not in r]
                        if errors:
                            entry["errors"] = errors[0]["errors"]
                    else:
                        entry["row"] = result
                    runs.append(entry)
                    print(json.dumps(entry), flush=True)
    return runs


def rates(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--receivers", type=int, default=100)
    parser.add_argument("--rates", type=rates, default=[50.0, 100.0, 200.0, 400.0])
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per step")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds before each step")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--only", type=lambda t: t.split(","), default=["fanout", "echo"], help="fanout,echo"
    )
    parser.add_argument("--json", type=Path, help="also write every round here")
    opts = parser.parse_args(argv)
    os.sched_setaffinity(0, {1})  # the load generator on CPU 1, the server on CPU 0
    start_load = os.getloadavg()
    print(f"src digest {src_digest()}; load average {start_load}", flush=True)
    runs = asyncio.run(main_async(opts))
    print(f"load average at the end {os.getloadavg()}")
    report(opts, runs)
    if opts.json:
        opts.json.write_text(json.dumps({"src_sha256": src_digest(), "runs": runs}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
