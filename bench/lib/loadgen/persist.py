"""The persist load generator: C clients, each alone in its own room, chat with ids.

Each message is timed from send to its ``ack`` (an ack means the message is
stored); offered rates rise step by step until a step loses a message, misses
the p99 bound or its sender cannot keep up.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import random
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from picows import WSFrame, WSListener, WSMsgType, WSTransport

from bench.lib.loadgen.common import (
    CHAT,
    PAD,
    close_all,
    connect_all,
    cpu_seconds,
    percentile,
    process_cpu,
    wait_until,
    watched_cpu,
)

ACK = b'"type":"ack"'
ID = b'"id":"'
MESSAGE_ID = b'"message_id":"'
SEQ = b'"seq":'
#: The answer to a read marker: counted by nobody, skipped unparsed.
READ = b'"type":"read"'
#: The broadcast copies of a client's own changes, skipped unparsed like its chat.
CHANGED = (b'"type":"edit"', b'"type":"reaction"')
#: The changes a client makes in turn when asked to (--changes-every).
CHANGE_KINDS = ("edit", "react")


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

    def __init__(
        self, index: int, tally: AckTally, changes_every: int = 0, read_markers: bool = False
    ) -> None:
        self.room = f"bench-{index}"
        #: Every Nth frame is a change of the last acked message (0: none).
        self.changes_every = changes_every
        #: Mark each message read as it arrives, as a reader on screen would.
        self.read_markers = read_markers
        self.read_head = b'{"type":"read","payload":{"room":"%s","seq":' % self.room.encode()
        self.last_id: bytes | None = None
        self.changes = itertools.cycle(CHANGE_KINDS)
        #: Signed in as a registered user (only they may edit).
        self.signed_in = False
        self.tally = tally
        self.transport: WSTransport | None = None
        self.prefix = b"p%d-" % index
        self.tail = b'","payload":{"room":"%s","message":"%s"}}' % (
            self.room.encode(),
            PAD.encode(),
        )
        #: The chat frames' ends, in turn (one, PAD, unless --words gave sentences).
        self.tails = [self.tail]
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
        every = self.changes_every
        if every and self.seq % every == 0 and self.last_id is not None:
            self.transport.send(WSMsgType.TEXT, self.change_frame(fid, self.last_id))
            return
        tail = self.tails[self.seq % len(self.tails)]
        self.transport.send(WSMsgType.TEXT, b'{"type":"chat","id":"' + fid + tail)

    def use_words(self, texts: list[str]) -> None:
        """Chat ``texts`` in turn instead of PAD."""
        self.tails = [
            b'","payload":{"room":"%s","message":"%s"}}' % (self.room.encode(), text.encode())
            for text in texts
        ]

    def change_frame(self, fid: bytes, message_id: bytes) -> bytes:
        kind = next(self.changes)
        payload: dict[str, Any] = {"message_id": message_id.decode()}
        if kind == "edit":
            payload["message"] = PAD + "!"
        else:
            payload["emoji"] = "👍"
        return json.dumps({"type": kind, "id": fid.decode(), "payload": payload}).encode()

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type != WSMsgType.TEXT:
            return
        data = frame.get_payload_as_bytes()
        if ACK in data:
            start = data.find(ID) + len(ID)
            fid = data[start : data.find(b'"', start)]
            sent_at = self.pending.pop(fid, None)
            if self.changes_every and MESSAGE_ID in data:
                # A chat's ack names the new message, a change's the one it
                # changed: either way, the one to change next.
                at = data.find(MESSAGE_ID) + len(MESSAGE_ID)
                self.last_id = data[at : data.find(b'"', at)]
            if sent_at is not None:
                tally = self.tally
                tally.latencies.append(time.monotonic_ns() - sent_at)
                tally.acked += 1
            return
        if self.read_markers and READ in data:
            return
        if CHAT in data or (self.changes_every and any(kind in data for kind in CHANGED)):
            if self.read_markers:  # read it: the next frame says how far
                at = data.find(SEQ) + len(SEQ)
                end = at
                while data[end : end + 1].isdigit():
                    end += 1
                transport.send(WSMsgType.TEXT, self.read_head + data[at:end] + b"}}")
            return  # our own broadcast copy; the ack follows it
        msg = json.loads(data)
        payload = msg.get("payload") or {}
        kind = msg.get("type")
        if kind == "auth":
            self.signed_in = bool(payload.get("ok"))
        elif kind == "joined":
            self.rooms.add(payload.get("room"))
        elif kind == "left":
            self.rooms.discard(payload.get("room"))
        elif kind == "error":
            code = str(payload.get("code"))
            self.tally.errors[code] = self.tally.errors.get(code, 0) + 1
            if isinstance(msg.get("id"), str):
                self.pending.pop(msg["id"].encode(), None)


#: --words: the made-up vocabulary's size and its Zipf exponent (as bench/lib/search_corpus.py's).
WORDS = 20_000
ZIPF = 1.0
SYLLABLES = "ba ke ti lo mu ra se di no pu fa ge hi jo ku ze".split()


def sentences(count: int, seed: int) -> list[str]:
    """``count`` messages of 3-30 made-up words (mostly short), drawn from a Zipf
    distribution over :data:`WORDS` words: text a full-text index has work with,
    unlike PAD's one word."""
    rng = random.Random(seed)

    def word(rank: int) -> str:
        letters = ""
        while True:
            rank, digit = divmod(rank, len(SYLLABLES))
            letters += SYLLABLES[digit]
            if not rank:
                return letters

    vocab = [word(rank) for rank in range(WORDS)]
    weights = list(itertools.accumulate(1 / (rank + 1) ** ZIPF for rank in range(WORDS)))
    out = []
    for _ in range(count):
        length = 3 + int(28 * rng.random() ** 2)
        out.append(" ".join(rng.choices(vocab, cum_weights=weights, k=length)))
    return out


async def open_rooms(
    url: str, n: int, changes_every: int = 0, read_markers: bool = False
) -> tuple[list[PersistClient], AckTally]:
    """Connect n clients, move each from lobby to its own room, one acked chat each."""
    tally = AckTally()
    index = itertools.count()
    clients: list[PersistClient] = await connect_all(
        url, n, lambda: PersistClient(next(index), tally, changes_every, read_markers)
    )
    await wait_until(lambda: all("lobby" in c.rooms for c in clients), 10, "lobby joins")
    if changes_every or read_markers:
        # Guests may react but not edit, and keep no markers: the clients sign in as users.
        tokens = await sign_up_all(url, len(clients))
        for client, token in zip(clients, tokens, strict=True):
            client.send_json({"type": "auth", "payload": {"token": token}})
        await wait_until(lambda: all(c.signed_in for c in clients), 60, "sign-ins")
    for client in clients:
        client.send_json({"type": "join", "payload": {"room": client.room}})
        client.send_json({"type": "leave", "payload": {"room": "lobby"}})
    await wait_until(lambda: all(c.rooms == {c.room} for c in clients), 10, "own rooms")
    for client in clients:
        client.chat()
    await wait_until(lambda: not any(c.pending for c in clients), 10, "warm-up acks")
    return clients, tally


async def sign_up_all(url: str, count: int) -> list[str]:
    """Register ``count`` users ``bench<random>-<i>`` and log them in; their tokens.

    The server takes ten sign-ups in a burst from one address, so each ten
    come from their own source address (127.0.0.2, 127.0.0.3, ...).
    """
    base = url.replace("ws://", "http://", 1).rsplit("/", 1)[0]
    prefix = f"bench{os.urandom(3).hex()}"
    password = "bench password " + os.urandom(4).hex()

    async def ten(first: int) -> list[str]:
        connector = aiohttp.TCPConnector(local_addr=(f"127.0.0.{2 + first // 10}", 0))
        tokens = []
        async with aiohttp.ClientSession(connector=connector) as http:
            for index in range(first, min(first + 10, count)):
                account = {"username": f"{prefix}-{index}", "password": password}
                async with http.post(f"{base}/api/register", json=account) as resp:
                    if resp.status != 201:
                        raise RuntimeError(f"register: {resp.status} {await resp.text()}")
                async with http.post(f"{base}/api/login", json=account) as resp:
                    tokens.append(str((await resp.json())["token"]))
        return tokens

    groups = await asyncio.gather(*(ten(first) for first in range(0, count, 10)))
    return [token for group in groups for token in group]


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


async def run_persist(args: argparse.Namespace) -> dict[str, Any]:
    clients, tally = await open_rooms(args.url, args.clients, args.changes_every, args.read_markers)
    if args.words:
        for index, client in enumerate(clients):
            client.use_words(sentences(256, index))
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
        "changes_every": args.changes_every,
        "read_markers": args.read_markers,
        "words": args.words,
        "bound_ms": args.bound_ms,
        "step_seconds": args.step_seconds,
        "rates": args.rates,
        "max_acked_per_s_within_p99": best["acked_per_s"] if best else 0,
        "max_ok_step": best,
        "ceiling_hit": len(passed) == len(steps),
        "steps": steps,
    }
