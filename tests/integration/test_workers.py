"""``roomcast serve --workers 2``: two real worker processes on one port, acting as one server.

Each test runs the real command on a fresh PostgreSQL database and Redis
prefix. Which worker holds a connection is read off ``/proc`` (Linux): the
socket whose peer is the client's port is in that worker's file table.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from websockets.asyncio.client import ClientConnection, connect

from roomcast.exceptions import ConfigError
from roomcast.workers import reserve_port
from tests.integration.serverproc import ServerProcess, start_server
from tests.integration.wsclient import recv_type, send_json, welcome
from tests.services import REDIS_URL, fresh_database, redis_prefix

pytestmark = pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads Linux's /proc")

#: Connections the tests open: with the kernel's even hash over two
#: listening sockets, all on one worker has odds of 2 in 2**20.
CLIENTS = 20


@pytest.fixture
def start_workers(tmp_path: Path) -> Iterator[Callable[[], ServerProcess]]:
    """Start ``serve --workers 2`` on a fresh database and prefix; stopped afterwards."""
    started: list[ServerProcess] = []
    with redis_prefix() as prefix, fresh_database() as url:

        def start() -> ServerProcess:
            server = start_server(
                tmp_path,
                "--workers",
                "2",
                "--database-url",
                url,
                "--redis-url",
                REDIS_URL,
                "--redis-prefix",
                prefix,
                "--heartbeat",
                "1",
            )
            started.append(server)
            return server

        try:
            yield start
        finally:
            for server in started:
                # Killed after 15 s at worst: its workers then see their stdin end and stop.
                server.stop()


@contextlib.asynccontextmanager
async def clients(server: ServerProcess, count: int) -> AsyncIterator[list[ClientConnection]]:
    """``count`` guest connections to ``server``, past their welcome; closed afterwards."""
    opened: list[ClientConnection] = []
    try:
        for _ in range(count):
            # No read queue limit: unread presence frames must not stall the close.
            ws = await connect(server.ws_url(), open_timeout=5, max_queue=None)
            opened.append(ws)
            await welcome(ws)
        yield opened
    finally:
        await asyncio.gather(*(ws.close() for ws in opened))


def workers_of(parent: int) -> list[int]:
    """The pids of ``parent``'s child processes."""
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue  # it ended meanwhile
            if int(stat.rsplit(")", 1)[1].split()[1]) == parent:
                children.append(int(entry.name))
    return sorted(children)


def worker_of_each(server_port: int, conns: list[ClientConnection], pids: list[int]) -> list[int]:
    """For each connection, the pid of the worker holding its server-side socket."""
    inodes: dict[str, int] = {}  # socket inode -> pid
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                link = os.readlink(fd)
                if link.startswith("socket:["):
                    inodes[link[8:-1]] = pid
    peer_inode: dict[int, str] = {}  # client port -> inode of the server's end
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local_port = int(fields[1].split(":")[1], 16)
        if local_port == server_port and fields[3] == "01":  # ESTABLISHED
            peer_inode[int(fields[2].split(":")[1], 16)] = fields[9]
    return [inodes[peer_inode[ws.local_address[1]]] for ws in conns]


def gone(pid: int) -> bool:
    """Whether ``pid`` no longer runs (ended, or a zombie nobody reaped yet)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


async def test_two_workers_share_the_port_act_as_one_and_stop_together(
    start_workers: Callable[[], ServerProcess],
) -> None:
    """Connections spread over both workers, a chat crosses them, SIGTERM stops all with 0."""
    server = await asyncio.to_thread(start_workers)
    pids = workers_of(server.proc.pid)
    assert len(pids) == 2, pids
    async with clients(server, CLIENTS) as conns:
        owners = worker_of_each(server.port, conns, pids)
        assert set(owners) == set(pids), owners
        sender = conns[owners.index(pids[0])]
        receiver = conns[owners.index(pids[1])]
        await send_json(sender, "chat", {"room": "lobby", "message": "across"}, id="x1")
        frame = await recv_type(receiver, "chat")
        assert frame["payload"]["message"] == "across"
        began = time.monotonic()
        status = await asyncio.to_thread(server.stop)
        took = time.monotonic() - began
    assert status == 0, server.stderr()
    assert took < 8, took
    for _ in range(50):
        if all(gone(pid) for pid in pids):
            break
        await asyncio.sleep(0.1)
    assert all(gone(pid) for pid in pids), "orphan workers"
    assert "Traceback" not in server.stderr()


async def test_a_killed_worker_is_started_again(
    start_workers: Callable[[], ServerProcess],
) -> None:
    """A worker killed with SIGKILL is logged and replaced; both serve again."""
    server = await asyncio.to_thread(start_workers)
    before = workers_of(server.proc.pid)
    os.kill(before[0], signal.SIGKILL)
    deadline = time.monotonic() + 10
    while "listening again" not in server.stderr() and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    after = workers_of(server.proc.pid)
    assert len(after) == 2 and before[0] not in after and before[1] in after, (before, after)
    assert f"(pid {before[0]}) was killed by signal 9; starting it again" in server.stderr()
    async with clients(server, CLIENTS) as conns:
        assert set(worker_of_each(server.port, conns, after)) == set(after)
    assert await asyncio.to_thread(server.stop) == 0


@pytest.mark.parametrize(
    "extra",
    [[], ["--redis-url", REDIS_URL]],
    ids=["neither", "no-postgresql"],
)
def test_workers_without_redis_and_postgresql_are_refused(tmp_path: Path, extra: list[str]) -> None:
    """The real command refuses --workers 2 without both: one line on stderr, exit 2."""
    result = subprocess.run(
        [sys.executable, "-m", "roomcast", "serve", "--workers", "2", "--port", "0", *extra],
        capture_output=True,
        text=True,
        timeout=20,
        cwd=tmp_path,
    )
    assert result.returncode == 2, result.stderr
    assert result.stdout == "" and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("roomcast: error: --workers 2 runs 2 nodes")


def test_the_reserved_port_takes_no_connections_and_no_second_server() -> None:
    """The parent's hold on the port accepts nothing; a second server is refused beside workers."""
    held, port = reserve_port("127.0.0.1", 0)
    worker = socket.socket()
    try:
        assert port > 0
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        worker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        worker.bind(("127.0.0.1", port))  # as a worker listens: beside the hold
        worker.listen()
        with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{port}: Address"):
            reserve_port("127.0.0.1", port)
    finally:
        worker.close()
        for sock in held:
            sock.close()
