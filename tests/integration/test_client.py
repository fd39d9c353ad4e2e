"""The Python client against real server processes: reconnects, queues, resumes.

Network faults are made with a real TCP proxy (``netproxy.TcpProxy``) and
with signals to the server process; nothing is mocked.
"""

from __future__ import annotations

import asyncio
import bisect
import random
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect

from roomcast.client import (
    AuthRefused,
    Client,
    ConnectionState,
    DirectMessage,
    QueueFull,
    Reply,
    RoomMessage,
    SendError,
    StateChange,
)
from tests.integration.clients import collect, fast_backoff, wait_for
from tests.integration.serverproc import start_server
from tests.integration.users import PASSWORD, SECRET, call, mint, sign_up
from tests.integration.wsclient import recv_json, recv_type, send_json, welcome
from tests.netproxy import TcpProxy


class Restartable:
    """A server on a fixed port that a test can kill, stop and start again."""

    def __init__(self, tmp_path: Path, *args: str) -> None:
        self.tmp_path = tmp_path
        self.args = args
        self.server = start_server(tmp_path, "--secret", SECRET, *args)
        self.port = self.server.port

    def restart(self, sig: int = signal.SIGKILL, down: float = 0.0) -> None:
        self.server.stop(sig)
        time.sleep(down)
        self.start()

    def start(self) -> None:
        self.server = start_server(
            self.tmp_path, "--secret", SECRET, *self.args, "--port", str(self.port)
        )

    def url(self) -> str:
        return self.server.ws_url()


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Restartable]:
    """A restartable server with the default limits."""
    server = Restartable(tmp_path)
    yield server
    server.server.stop(signal.SIGKILL)


def room_texts(events: list[Any], room: str = "lobby") -> list[str]:
    return [e.text for e in events if isinstance(e, RoomMessage) and e.room == room]


# -- the basics -------------------------------------------------------------------------


async def test_a_guest_chats_and_gets_its_message_once(node: Restartable) -> None:
    """A guest with a nickname connects, sends, gets the ack and its own message once."""
    async with Client(node.url(), guest="ann") as ann:
        events = collect(ann)
        assert ann.state is ConnectionState.CONNECTED and ann.user == "ann"
        ack = await ann.send_chat("hello")
        assert ack.type == "ack" and ack.payload["seq"] >= 1
        await wait_for(lambda: room_texts(events) == ["hello"])
        assert ann.last_seq("lobby") == ack.payload["seq"]


async def test_users_direct_messages_files_history_and_presence(node: Restartable) -> None:
    """Logged-in users: a DM arrives once, a file downloads exactly, history and presence answer."""
    for name in ("amy", "ben"):
        await sign_up(node.server, name)
    async with (
        Client(node.url(), username="amy", password=PASSWORD) as amy,
        Client(node.url(), username="ben", password=PASSWORD) as ben,
    ):
        seen = collect(ben)
        await amy.send_direct("ben", "psst")
        await wait_for(lambda: any(isinstance(e, DirectMessage) for e in seen))
        [dm] = [e for e in seen if isinstance(e, DirectMessage)]
        assert (dm.sender, dm.to, dm.text) == ("amy", "ben", "psst")
        data = bytes(range(256)) * 40
        await amy.send_file(data, room="lobby", name="bytes.bin")
        await wait_for(lambda: any(isinstance(e, RoomMessage) and e.file for e in seen))
        [shared] = [e for e in seen if isinstance(e, RoomMessage) and e.file]
        assert shared.file is not None and shared.file.size == len(data)
        assert await ben.download(shared.file) == data
        messages, _ = await ben.history("lobby")
        assert [m.file.name for m in messages if m.file] == ["bytes.bin"]
        assert set(await ben.presence()) >= {"amy", "ben"}


async def test_refused_credentials_stop_for_good(node: Restartable) -> None:
    """A wrong password and a forged token: connect raises AuthRefused, the state is CLOSED."""
    await sign_up(node.server, "cat")
    wrong = Client(node.url(), username="cat", password="not the password")
    with pytest.raises(AuthRefused):
        await wrong.connect()
    assert wrong.state is ConnectionState.CLOSED and "login refused" in (wrong.closed_reason or "")
    forged = Client(node.url(), token=mint("cat", key="another secret" * 4))
    with pytest.raises(AuthRefused):
        await forged.connect()
    assert "401" in (forged.closed_reason or "")
    await wrong.close()
    await forged.close()


async def test_sends_while_offline_are_kept_in_order_and_bounded(node: Restartable) -> None:
    """Sent while the server is down: acked in order when it is back, stored once; bounded."""
    async with Client(node.url(), guest="dan", backoff=fast_backoff(), max_queue=5) as dan:
        events = collect(dan)
        node.server.stop(signal.SIGKILL)
        await wait_for(lambda: dan.state is ConnectionState.RECONNECTING)
        sends = [asyncio.ensure_future(dan.send_chat(f"offline {i}")) for i in range(5)]
        await asyncio.sleep(0.1)
        with pytest.raises(QueueFull):
            await dan.send_chat("one too many")
        node.start()
        acks = await asyncio.gather(*sends)
        seqs = [a.payload["seq"] for a in acks]
        assert seqs == sorted(seqs) and len(set(seqs)) == 5
        await wait_for(lambda: len(room_texts(events)) == 5)
        assert room_texts(events) == [f"offline {i}" for i in range(5)]
    status, body = await call(node.server, "GET", "/api/rooms/lobby/messages", bearer=None)
    assert status == 401  # history needs a token; count through a user instead
    token = await sign_up(node.server, "eve")
    status, body = await call(node.server, "GET", "/api/rooms/lobby/messages", bearer=token)
    texts = [m["message"] for m in body["messages"] if m["type"] == "chat"]
    assert texts == [f"offline {i}" for i in range(5)]


@pytest.mark.parametrize(
    "fault", ["clean stop", "sigkill", "sigstop past the heartbeat", "refused for a while"]
)
async def test_it_reconnects_after_the_server_went_away(node: Restartable, fault: str) -> None:
    """Whatever way the server went, the client comes back by itself and sends again."""
    client = Client(
        node.url(),
        guest="fay",
        backoff=fast_backoff(),
        ping_interval=0.5,
        ping_timeout=0.5,
        open_timeout=1.0,
    )
    states: list[StateChange] = []
    client.on(StateChange, states.append)
    await client.connect()
    await client.send_chat("before")
    if fault == "clean stop":
        await asyncio.to_thread(node.restart, signal.SIGTERM)
    elif fault == "sigkill":
        await asyncio.to_thread(node.restart, signal.SIGKILL)
    elif fault == "refused for a while":
        await asyncio.to_thread(node.restart, signal.SIGKILL, 1.5)
    else:
        node.server.proc.send_signal(signal.SIGSTOP)
        try:
            await wait_for(lambda: client.state is ConnectionState.RECONNECTING, timeout=10)
        finally:
            node.server.proc.send_signal(signal.SIGCONT)
    await wait_for(lambda: client.state is ConnectionState.RECONNECTING, timeout=10)
    await wait_for(lambda: client.state is ConnectionState.CONNECTED, timeout=20)
    ack = await client.send_chat("after")
    assert ack.type == "ack"
    assert [s.new for s in states].count(ConnectionState.CONNECTED) >= 2
    await client.close()
    assert client.state is ConnectionState.CLOSED


# -- the proof ------------------------------------------------------------------------------


async def test_100_network_cuts_and_5_restarts_lose_and_repeat_nothing(
    node: Restartable,
) -> None:
    """100 proxy cuts, 5 SIGKILL restarts: every message once, in order; every send acked once."""
    tokens = {name: await sign_up(node.server, name) for name in ("gil", "hal", "ivy")}
    proxy = TcpProxy(node.port)
    await proxy.start()
    url = f"ws://127.0.0.1:{proxy.port}/ws"
    clients = {
        name: Client(url, token=tokens[name], backoff=fast_backoff(seed), open_timeout=2.0)
        for seed, name in enumerate(("gil", "hal"))
    }
    # ivy talks straight to the server, so messages keep coming during cuts.
    ivy = Client(node.url(), token=tokens["ivy"], backoff=fast_backoff(7), open_timeout=2.0)
    received = {name: collect(client) for name, client in clients.items()}
    for client in (*clients.values(), ivy):
        await client.connect()
    acks: dict[str, list[int]] = {name: [] for name in (*clients, "ivy")}
    sent: list[str] = []

    async def talk(name: str, client: Client, count: int, pause: float) -> None:
        for i in range(count):
            text = f"{name} {i}"
            sent.append(text)
            ack = await client.send_chat(text, timeout=120)
            acks[name].append(ack.payload["seq"])
            await asyncio.sleep(pause)

    talkers = [
        asyncio.ensure_future(talk("gil", clients["gil"], 120, 0.05)),
        asyncio.ensure_future(talk("hal", clients["hal"], 120, 0.05)),
        asyncio.ensure_future(talk("ivy", ivy, 120, 0.05)),
    ]
    rng = random.Random(6455)
    for i in range(100):
        await asyncio.sleep(rng.uniform(0.01, 0.08))
        proxy.cut("reset" if i % 2 else "close")
    for _ in range(5):
        await asyncio.sleep(0.3)
        await asyncio.to_thread(node.restart, signal.SIGKILL)
    await asyncio.wait_for(asyncio.gather(*talkers), 120)
    total = len(sent)
    assert total == 360
    for name, events in received.items():
        await wait_for(lambda events=events: len(room_texts(events)) >= total, timeout=60)
        messages = [e for e in events if isinstance(e, RoomMessage) and e.room == "lobby"]
        seqs = [m.seq for m in messages]
        assert seqs == list(range(seqs[0], seqs[0] + total)), f"{name}: gaps or repeats"
        assert sorted(m.text for m in messages) == sorted(sent), f"{name}: not every message"
    for name, seqs in acks.items():
        assert len(seqs) == 120 and len(set(seqs)) == 120, f"{name}: an ack twice or missing"
    status, body = await call(
        node.server, "GET", "/api/rooms/lobby/messages?limit=100", bearer=tokens["gil"]
    )
    assert status == 200 and body["messages"][-1]["seq"] == total  # stored once each
    assert proxy.cuts == 100
    for client in (*clients.values(), ivy):
        await client.close()
    await proxy.stop()


async def test_500_clients_spread_their_reconnects(node: Restartable) -> None:
    """After a restart, at most 15 % of 500 clients start their reconnect in any 100 ms."""
    clients = [Client(node.url(), open_timeout=5.0) for _ in range(500)]
    for start in range(0, 500, 50):
        await asyncio.gather(*(c.connect() for c in clients[start : start + 50]))
    await asyncio.to_thread(node.restart, signal.SIGKILL, 2.0)  # the clients run meanwhile
    await wait_for(lambda: all(c.state is ConnectionState.CONNECTED for c in clients), timeout=120)
    opened = sum(" opened from " in line for line in node.server.stderr().splitlines())
    assert opened == 500, (node.server.stderr_path, node.server.stderr()[:500])
    assert all(len(c.attempts) >= 2 for c in clients)
    # The client's own clock for the attempt that got through: the server's log
    # times bunch whenever a busy machine delays its accept loop.
    arrivals = sorted(c.attempts[-1] for c in clients)
    densest = max(bisect.bisect_left(arrivals, t + 0.1) - i for i, t in enumerate(arrivals))
    spread = arrivals[-1] - arrivals[0]
    print(f"500 reconnects over {spread:.2f} s; densest 100 ms: {densest}")
    # Without jitter all 500 come within a few ms. Spread evenly over ~15 s
    # they would be ~3 per 100 ms; alone on two cores the densest window
    # holds 27-32. With the suite's other worker busy, this process's own
    # timers fire late and bunch (51 and 58 seen): the bound leaves room.
    assert densest <= 75, f"{densest} arrivals within 100 ms (spread over {spread:.1f} s)"
    await asyncio.gather(*(c.close() for c in clients))


async def test_joined_rooms_deliver_and_a_refused_join_is_forgotten(node: Restartable) -> None:
    """After join() a room's messages are delivered; a refused join leaves no room to resume."""
    tokens = {name: await sign_up(node.server, name) for name in ("joe", "kim")}
    status, _ = await call(
        node.server,
        "POST",
        "/api/rooms",
        json={"name": "inner", "private": True},
        bearer=tokens["joe"],
    )
    assert status == 201
    async with (
        Client(node.url(), token=tokens["joe"]) as joe,
        Client(node.url(), token=tokens["kim"]) as kim,
    ):
        seen = collect(kim)
        await joe.join("dev")
        await kim.join("dev")
        await joe.send_chat("in dev", room="dev")
        await wait_for(lambda: room_texts(seen, "dev") == ["in dev"])
        with pytest.raises(SendError) as refused:
            await kim.join("inner")
        assert refused.value.code == "forbidden"
        assert kim.rooms == ["lobby", "dev"]


#: A small ``--max-replay`` so that a test misses more than one join replays cheaply.
MAX_REPLAY = 40


async def flood(url: str, room: str, count: int) -> None:
    """Send ``count`` chats to ``room`` on one guest connection; wait for the last ack."""
    async with connect(url, open_timeout=5) as ws:
        await welcome(ws)
        await send_json(ws, "join", {"room": room}, id="j")
        await recv_type(ws, "joined")
        for i in range(count):
            await send_json(ws, "chat", {"room": room, "message": f"m{i}"}, id=f"f{i}")
        async with asyncio.timeout(30):
            while True:
                frame = await recv_json(ws)
                if frame["type"] == "ack" and frame.get("id") == f"f{count - 1}":
                    return


async def test_a_capped_replay_is_paged_back_and_nothing_is_missed(tmp_path: Path) -> None:
    """Away for more than one join replays (``replay_from``): the client pages back with history."""
    # The server replays the newest --max-replay messages after ``since`` and
    # says where it started; the client reads the rest, so every missed
    # message is delivered once, in order.
    server = Restartable(tmp_path, "--rate-limit", "0", "--max-replay", str(MAX_REPLAY))
    proxy = TcpProxy(server.port)
    await proxy.start()
    try:
        client = Client(f"ws://127.0.0.1:{proxy.port}/ws", guest="rip", backoff=fast_backoff())
        events = collect(client)
        await client.connect()
        await client.join("big")
        await client.send_chat("before", room="big")
        await wait_for(lambda: room_texts(events, "big") == ["before"])
        proxy.down()
        await wait_for(lambda: client.state is ConnectionState.RECONNECTING)
        missed = MAX_REPLAY + 167  # the gap takes two history pages
        await flood(server.url(), "big", missed)
        # The cap itself, seen by a bare client joining from the same point.
        async with connect(server.url(), open_timeout=5) as probe:
            await welcome(probe)
            await send_json(probe, "join", {"room": "big", "since": 1}, id="j")
            joined = await recv_type(probe, "joined")
            assert joined["payload"]["replay_from"] == 1 + missed - MAX_REPLAY + 1
            replay = [(await recv_type(probe, "chat"))["payload"]["seq"] for _ in range(MAX_REPLAY)]
            assert replay == list(range(joined["payload"]["replay_from"], missed + 2))
        proxy.up()
        await wait_for(lambda: len(room_texts(events, "big")) == missed + 1, timeout=30)
        assert room_texts(events, "big") == ["before", *(f"m{i}" for i in range(missed))]
        await client.close()
    finally:
        await proxy.stop()
        server.server.stop(signal.SIGKILL)


async def test_a_room_the_server_takes_away_is_not_joined_again(node: Restartable) -> None:
    """After auth as a guest, the private room is left (``left`` with a reason) and forgotten."""
    tokens = {name: await sign_up(node.server, name) for name in ("ola", "pim")}
    status, _ = await call(
        node.server,
        "POST",
        "/api/rooms",
        json={"name": "crew", "private": True, "members": ["pim"]},
        bearer=tokens["ola"],
    )
    assert status == 201
    async with Client(node.url(), token=tokens["pim"], backoff=fast_backoff()) as pim:
        events = collect(pim)
        await pim.join("crew")
        assert "crew" in pim.rooms
        await pim.request("auth", {"guest": "pimmy"})
        await wait_for(lambda: "crew" not in pim.rooms)
        left = [e for e in events if isinstance(e, Reply) and e.type == "left"]
        assert left and left[0].payload["room"] == "crew" and left[0].payload["reason"]
