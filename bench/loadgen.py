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
  With ``--watch-pid`` each step also reports those processes' CPU.
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
from typing import Any, cast

import uvloop
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

CHAT = b'"type":"chat"'
MESSAGE = b'"message":"'
PONG = b'"type":"pong"'
ACK = b'"type":"ack"'
ID = b'"id":"'
TYPE = b'"type":"'
LEFT = frozenset({b"left", b"echo"})  # a reply to leave: roomcast's, or the Node echo
PAD = "x" * 48
CONNECT_BATCH = 50
PERSIST_RATES = "1000,2000,4000,6000,8000,12000,16000"
DEFAULTS = {"clients": 100, "step_seconds": 2.0, "bound_ms": 100.0}
PERSIST_DEFAULTS = {"clients": 50, "step_seconds": 5.0, "bound_ms": 50.0}
IDLE_DEFAULTS = {"clients": 10_000, "step_seconds": 0.0, "bound_ms": 0.0}
IDLE_MAX_FAILURES = 100  # stop connecting after this many failed connections
MEMORY_FIELDS = ("VmRSS", "VmHWM", "RssAnon", "RssFile")


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


def memory_kb(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM, RssAnon, RssFile of process ``pid`` in kB (empty: none known)."""
    if not pid:
        return {}
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in MEMORY_FIELDS:
                out[key] = int(value.split()[0])
    return out


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


@dataclass
class Split:
    """Where the fan-out clients are: the sender's URL and the receivers' URLs.

    ``urls[i]`` is client i's server (client 0 sends); ``watch`` names
    processes (server nodes, Redis) whose CPU each step reports.
    """

    urls: list[str]
    watch: dict[str, list[int]] = field(default_factory=dict)


#: PostgreSQL's background processes that work for every database (WAL, checkpoints).
PG_SHARED = ("walwriter", "checkpointer", "background writer")


def postgres_cpu(database: str = "") -> float:
    """CPU seconds so far of the local PostgreSQL's processes (from /proc).

    With ``database``: the backends (and autovacuum workers) on that
    database plus the shared WAL writer, checkpointer and background
    writer, so other databases' work on the same server is left out.
    Without: the postmaster with its reaped children and every live child.
    """
    procs: dict[int, tuple[list[str], str]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as stat:
                text = stat.read()
            if "(postgres)" not in text:
                continue
            with open(f"/proc/{name}/cmdline", "rb") as cmd:
                title = cmd.read().decode(errors="replace")
        except OSError:
            continue
        procs[int(name)] = (text.rsplit(")", 1)[1].split(), title)
    ticks = 0
    for fields, title in procs.values():
        master = int(fields[1]) not in procs
        if database:
            if master or not (f" {database} " in title or any(k in title for k in PG_SHARED)):
                continue
        ticks += int(fields[11]) + int(fields[12])
        if master:
            ticks += int(fields[13]) + int(fields[14])
    return ticks / os.sysconf("SC_CLK_TCK")


#: --postgres-db: the database the ``postgres`` watch is about ("": all of them).
POSTGRES_DB = {"name": ""}


def watched_cpu(watch: dict[str, list[int]]) -> dict[str, float]:
    """CPU seconds so far of each watched name (``postgres``: the local PostgreSQL)."""
    return {
        name: (
            postgres_cpu(POSTGRES_DB["name"])
            if name == "postgres"
            else sum(process_cpu(pid) for pid in pids)
        )
        for name, pids in watch.items()
    }


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
    watch: dict[str, list[int]] | None = None,
) -> dict[str, Any]:
    """One constant-rate step at ``rate`` offered msgs/s; returns its measurements."""
    for client in clients:
        client.pending.clear()
    tally.reset()
    drops_before = tally.disconnects
    watch0 = watched_cpu(watch) if watch else {}
    cpu0, server0, t0 = cpu_seconds(), process_cpu(server_pid), time.monotonic()
    sent = await send_spread(clients, rate, seconds)
    send_time = time.monotonic() - t0
    cpu1, server1 = cpu_seconds(), process_cpu(server_pid)
    watch1 = watched_cpu(watch) if watch else {}
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
    if watch:
        result["cpu_by_process"] = {
            name: round((watch1[name] - watch0[name]) / send_time, 3) for name in watch0
        }
    return result


def close_all(listeners: list[Any]) -> None:
    for listener in listeners:
        if listener.transport is not None:
            listener.transport.disconnect()


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


def watch_pid(text: str) -> tuple[str, list[int]]:
    """``NAME=PID[,PID...]`` (for --watch-pid)."""
    name, _, pids = text.partition("=")
    if not name or not pids:
        raise argparse.ArgumentTypeError(f"expected NAME=PID[,PID...], got {text!r}")
    return name, [int(x) for x in pids.split(",")]


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
            clients, tally, rate, args.step_seconds, args.bound_ms, args.server_pid, args.watch_pid
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


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("scenario", choices=["fanout", "echo", "rate", "persist", "idle"])
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
        "--watch-pid",
        action="append",
        type=watch_pid,
        default=[],
        help="fanout with --receiver-url, persist: NAME=PID[,PID...], report its CPU per step "
        "(repeatable); NAME postgres (any PID): the local PostgreSQL's processes",
    )
    parser.add_argument(
        "--postgres-db",
        default="",
        help="the postgres watch counts only this database's backends and the WAL writer, "
        "checkpointer and background writer (default: the whole server)",
    )
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
    POSTGRES_DB["name"] = args.postgres_db
    defaults = {"persist": PERSIST_DEFAULTS, "idle": IDLE_DEFAULTS}.get(args.scenario, DEFAULTS)
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
    }
    runner = runners[args.scenario]
    result = await asyncio.wait_for(runner(args), timeout=300)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    uvloop.run(main(sys.argv[1:]))
