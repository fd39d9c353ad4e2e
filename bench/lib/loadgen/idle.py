"""The idle load generator: N clients connect, read their welcome and stay idle.

A probe connection learns which frames a new connection gets (its welcome);
then N clients connect, at most ``--concurrency`` at a time. The server's RSS
before and after gives the memory per connection; one more client, opened
while all are connected, gives the late connect time and ping round trips.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import resource
import time
from dataclasses import dataclass, field
from typing import Any, cast

from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

from bench.lib.loadgen.common import (
    close_all,
    cpu_seconds,
    memory_kb,
    percentile,
    process_cpu,
    wait_until,
)

TYPE = b'"type":"'
LEFT = frozenset({b"left", b"echo"})  # a reply to leave: roomcast's, or the Node echo
IDLE_MAX_FAILURES = 100  # stop connecting after this many failed connections


def frame_type(data: bytes) -> bytes:
    """The ``type`` of a JSON frame (its first ``"type":"..."``), or b""."""
    start = data.find(TYPE)
    if start < 0:
        return b""
    start += len(TYPE)
    return data[start : data.find(b'"', start)]


def fd_limit_of(pid: int) -> int | None:
    """The soft "Max open files" of process ``pid`` (None: none known)."""
    if not pid:
        return None
    with open(f"/proc/{pid}/limits") as limits:
        for line in limits:
            if line.startswith("Max open files"):
                value = line.split()[3]
                return int(value) if value.isdigit() else None
    return None


@dataclass
class IdleTally:
    """What all idle clients received: frames by type, close frames, disconnects."""

    frames: int = 0
    bytes: int = 0
    types: dict[str, int] = field(default_factory=dict)
    closes: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    disconnects: int = 0


class IdleClient(WSListener):  # type: ignore[misc]
    """Reads its welcome frames (and leaves the lobby if asked), then stays idle.

    ``done`` resolves once every type in ``welcome`` has arrived (and, with
    ``leave``, the reply to leave); ``welcome=None`` only records the types
    (the probe). ``ping`` sends one ping and returns a future of its RTT in ns.
    """

    def __init__(self, tally: IdleTally, welcome: frozenset[bytes] | None, leave: bool) -> None:
        self.tally = tally
        self.waiting = set(welcome) if welcome is not None else None
        self.leave = leave
        self.leaving = False
        self.seen: list[bytes] = []
        self.transport: WSTransport | None = None
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.pong: asyncio.Future[int] | None = None
        self.sent_at = 0
        self.closed = False

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.closed = True
        self.tally.disconnects += 1
        for future in (self.done, self.pong):
            if future is not None and not future.done():
                future.set_exception(ConnectionError("disconnected"))
                future.exception()  # an awaiter still gets it; nobody else is told

    def ping(self) -> asyncio.Future[int]:
        assert self.transport is not None
        self.pong = asyncio.get_running_loop().create_future()
        self.sent_at = time.monotonic_ns()
        self.transport.send(WSMsgType.TEXT, b'{"type":"ping","id":"idle","payload":{}}')
        return self.pong

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type == WSMsgType.CLOSE:
            reason = f"{frame.get_close_code()} {frame.get_close_message()!r}"[:120]
            self.tally.closes[reason] = self.tally.closes.get(reason, 0) + 1
            transport.send_close(frame.get_close_code())
            transport.disconnect()
            return
        if frame.msg_type != WSMsgType.TEXT:
            return
        data = frame.get_payload_as_bytes()
        tally = self.tally
        tally.frames += 1
        tally.bytes += len(data)
        kind = frame_type(data)
        name = kind.decode(errors="replace")
        tally.types[name] = tally.types.get(name, 0) + 1
        if kind == b"pong" and self.pong is not None and not self.pong.done():
            self.pong.set_result(time.monotonic_ns() - self.sent_at)
        elif kind == b"error":
            text = data.decode(errors="replace")[:160]
            tally.errors[text] = tally.errors.get(text, 0) + 1
        if self.waiting is None:
            self.seen.append(kind)
        elif self.leaving:
            if kind in LEFT:
                self.leaving = False
                self.done.set_result(None)
        elif kind in self.waiting:
            self.waiting.discard(kind)
            if not self.waiting:
                if self.leave:
                    self.leaving = True
                    transport.send(WSMsgType.TEXT, b'{"type":"leave","payload":{"room":"lobby"}}')
                else:
                    self.done.set_result(None)


async def open_idle(
    url: str,
    tally: IdleTally,
    welcome: frozenset[bytes] | None,
    leave: bool,
    source: str | None,
    timeout: float = 15.0,
) -> IdleClient:
    """Connect one idle client (from ``source`` if given) and wait for its welcome."""
    kwargs: dict[str, Any] = {"local_addr": (source, 0)} if source else {}

    async def opened() -> IdleClient:
        _, listener = await ws_connect(
            lambda: IdleClient(tally, welcome, leave),
            url,
            websocket_handshake_timeout=timeout,
            **kwargs,
        )
        client = cast(IdleClient, listener)
        if welcome is not None:
            try:
                await client.done
            except BaseException:
                if client.transport is not None:
                    client.transport.disconnect()
                raise
        return client

    return await asyncio.wait_for(opened(), timeout)


def source_addresses(url: str, n: int, count: int, per_address: int) -> list[str | None]:
    """Source addresses to bind clients to: none (the kernel's choice) unless needed.

    ``count`` 0 means auto: one address per ``per_address`` connections once
    ``n`` is more than one address's share, and only for a 127.x server.
    """
    if count == 0:
        if n <= per_address or "://127." not in url:
            return [None]
        count = -(-n // per_address)
    return [f"127.0.0.{2 + k}" for k in range(count)]


def raise_fd_limit(needed: int) -> int:
    """Raise this process's RLIMIT_NOFILE soft limit to ``needed``; return the new one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return soft
    if hard != resource.RLIM_INFINITY and hard < needed:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (needed, needed))
            return needed
        except (ValueError, OSError):
            raise RuntimeError(
                f"{needed} file descriptors needed, the hard limit is {hard} "
                "(raising it needs CAP_SYS_RESOURCE)"
            ) from None
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    return needed


async def wait_quiet(
    tally: IdleTally, server_pid: int, quiet: float = 1.0, max_wait: float = 30.0
) -> float:
    """Wait until no frame arrived and the server used < 5 % CPU for ``quiet`` s.

    Returns the seconds waited (at most ``max_wait``).
    """
    start = time.monotonic()
    tick = 0.25
    still = 0.0
    frames, cpu = tally.frames, process_cpu(server_pid)
    while time.monotonic() - start < max_wait:
        await asyncio.sleep(tick)
        frames1, cpu1 = tally.frames, process_cpu(server_pid)
        still = still + tick if frames1 == frames and cpu1 - cpu < 0.05 * tick + 0.011 else 0.0
        frames, cpu = frames1, cpu1
        if still >= quiet:
            break
    return time.monotonic() - start


async def run_idle(args: argparse.Namespace) -> dict[str, Any]:
    n = args.clients
    fd_limit = raise_fd_limit(n + 256)
    sources = source_addresses(args.url, n, args.source_addrs, args.ports_per_address)
    tally = IdleTally()
    pid = args.server_pid
    rss_fresh = memory_kb(pid)
    # The probe: learns which frames a new connection gets, warms the server up.
    probe = await open_idle(args.url, tally, None, False, sources[0])
    await wait_until(lambda: bool(probe.seen), 5, "the probe's first frame")
    await wait_quiet(tally, pid, quiet=0.3, max_wait=2)
    welcome = frozenset(probe.seen)
    if args.leave_lobby:
        assert probe.transport is not None
        probe.transport.send(WSMsgType.TEXT, b'{"type":"leave","payload":{"room":"lobby"}}')
    await wait_quiet(tally, pid, quiet=0.5, max_wait=5)
    rss_before = memory_kb(pid)

    clients: list[IdleClient] = []
    times: list[int] = []
    failures: dict[str, int] = {}
    counter = itertools.count()
    deadline = time.monotonic() + args.connect_max_seconds

    async def worker() -> None:
        while time.monotonic() < deadline and sum(failures.values()) < IDLE_MAX_FAILURES:
            i = next(counter)
            if i >= n:
                return
            t0 = time.monotonic_ns()
            try:
                client = await open_idle(
                    args.url, tally, welcome, args.leave_lobby, sources[i % len(sources)]
                )
            except Exception as exc:
                key = f"{type(exc).__name__}: {exc}"[:160]
                failures[key] = failures.get(key, 0) + 1
                continue
            times.append(time.monotonic_ns() - t0)
            clients.append(client)

    disconnects0 = tally.disconnects
    cpu0, server0, t0 = cpu_seconds(), process_cpu(pid), time.monotonic()
    await asyncio.gather(*(worker() for _ in range(min(args.concurrency, n))))
    connect_s = time.monotonic() - t0
    cpu1, server1 = cpu_seconds(), process_cpu(pid)
    frames_connect = tally.frames
    settle_s = await wait_quiet(tally, pid, quiet=1.0, max_wait=30)
    rss_after = memory_kb(pid)
    server_settle = process_cpu(pid) - server1

    # One more client while all are connected: its connect time and ping RTTs.
    t1 = time.monotonic_ns()
    late = await open_idle(args.url, tally, welcome, args.leave_lobby, sources[-1])
    late_connect = time.monotonic_ns() - t1
    rtts = sorted([await asyncio.wait_for(late.ping(), 5) for _ in range(args.pings)])
    still_open = sum(1 for c in clients if not c.closed)
    dropped = tally.disconnects - disconnects0
    loadgen_rss = memory_kb(os.getpid()).get("VmRSS", 0)
    close_all([*clients, late, probe])
    times.sort()
    connected = len(clients)
    delta = rss_after["VmRSS"] - rss_before["VmRSS"] if rss_after and rss_before else None
    return {
        "scenario": "idle",
        "clients": n,
        "connected": connected,
        "leave_lobby": args.leave_lobby,
        "concurrency": args.concurrency,
        "source_addresses": [s or "default" for s in sources],
        "fd_limit": fd_limit,
        "server_fd_limit": fd_limit_of(pid),
        "welcome": sorted(k.decode() for k in welcome),
        "failures": failures,
        "connect_s": round(connect_s, 3),
        "connections_per_s": round(connected / connect_s),
        "connect_p50_ms": round(percentile(times, 0.50), 2),
        "connect_p99_ms": round(percentile(times, 0.99), 2),
        "connect_max_ms": round(times[-1] / 1e6, 2) if times else None,
        "settle_s": round(settle_s, 2),
        "rss_fresh_kb": rss_fresh.get("VmRSS"),
        "rss_before_kb": rss_before.get("VmRSS"),
        "rss_after_kb": rss_after.get("VmRSS"),
        "hwm_after_kb": rss_after.get("VmHWM"),
        "anon_before_kb": rss_before.get("RssAnon"),
        "anon_after_kb": rss_after.get("RssAnon"),
        "kb_per_connection": round(delta / connected, 2) if delta and connected else None,
        "frames": tally.frames,
        "frames_during_connect": frames_connect,
        "mb_received": round(tally.bytes / 1e6, 1),
        "frame_types": dict(tally.types),
        "closes": dict(tally.closes),
        "errors": dict(tally.errors),
        "disconnects": dropped,
        "still_open": still_open,
        "late_connect_ms": round(late_connect / 1e6, 2),
        "ping_p50_ms": round(percentile(rtts, 0.50), 3),
        "ping_max_ms": round(rtts[-1] / 1e6, 3),
        "pings": len(rtts),
        "loadgen_cpu": round((cpu1 - cpu0) / connect_s, 3),
        "server_cpu_connect": round((server1 - server0) / connect_s, 3) if pid else None,
        "server_us_per_connection": (
            round(1e6 * (server1 - server0 + server_settle) / connected, 1)
            if pid and connected
            else None
        ),
        "loadgen_rss_kb": loadgen_rss,
        "ok": connected == n and not dropped and len(rtts) == args.pings,
    }
