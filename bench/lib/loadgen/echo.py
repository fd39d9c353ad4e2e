"""The echo load generator: C clients, each with one ``ping`` in flight.

Each client sends the next ping as soon as its pong arrives; round trips/s and
p50/p99 are taken over a fixed window after a warm-up.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Callable
from typing import Any

from picows import WSFrame, WSListener, WSMsgType, WSTransport

from bench.lib.loadgen.common import close_all, connect_all, cpu_seconds, percentile

PONG = b'"type":"pong"'


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
