"""The server process: start-up, configuration, signals, Origin, the secret."""

from __future__ import annotations

import asyncio
import json
import os
import selectors
import signal
import socket
import stat
import subprocess
import time
from pathlib import Path

import aiohttp
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from tests.integration.serverproc import START_TIMEOUT, ServerFactory, ServerProcess, serve_command
from tests.integration.wsclient import (
    OP_CLOSE,
    RECV_TIMEOUT,
    RawWebSocket,
    client_frame,
    welcome,
)

#: How long a process may take to exit after SIGTERM/SIGINT (PROTOCOL section 1).
EXIT_TIMEOUT = 10.0


def free_port() -> int:
    """A port nobody listens on right now (bound, read, released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``roomcast serve ARGS`` to completion (killed after 20 s)."""
    return subprocess.run(
        serve_command(*args),
        capture_output=True,
        text=True,
        timeout=20,
        env={**os.environ, **(env or {})},
    )


async def wait_exit(server: ServerProcess, timeout: float = EXIT_TIMEOUT) -> int:
    """The exit status of ``server``'s process, which must end within ``timeout``."""
    try:
        return await asyncio.to_thread(server.proc.wait, timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"server still running {timeout} s after the signal")


async def health_status(server: ServerProcess) -> int | None:
    """The status of GET /health, or None when the connection is refused."""
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(server.http_url("/health")) as resp:
                return resp.status
    except aiohttp.ClientConnectionError:
        return None


async def closed_with(ws: ClientConnection) -> int | None:
    """Read until the server closes ``ws``; the close code it sent."""
    async with asyncio.timeout(EXIT_TIMEOUT):
        with pytest.raises(ConnectionClosed) as info:
            while True:
                await ws.recv()
    return info.value.rcvd.code if info.value.rcvd is not None else None


# -- signals ------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_signal_closes_clients_with_1001_and_exits_0(
    server: ServerProcess, sig: signal.Signals
) -> None:
    """SIGTERM/SIGINT: every client gets close 1001 and the process exits 0 within 10 s."""
    async with connect(server.ws_url()) as a, connect(server.ws_url("/")) as b:
        await welcome(a)
        await welcome(b)
        server.proc.send_signal(sig)
        codes = await asyncio.gather(closed_with(a), closed_with(b))
    assert codes == [1001, 1001]
    assert await wait_exit(server) == 0


async def test_after_sigterm_new_connections_are_refused(server: ServerProcess) -> None:
    """Once shutting down (a client still closing), new connections get no WebSocket."""
    async with await RawWebSocket.connect(server.port) as lingering:
        server.proc.send_signal(signal.SIGTERM)
        # The server says 1001; until this client answers, the process is
        # still shutting down, and must not accept anyone new.
        async with asyncio.timeout(EXIT_TIMEOUT):
            while True:
                opcode, payload = await lingering.read_frame(EXIT_TIMEOUT)
                if opcode == OP_CLOSE:
                    break
        assert int.from_bytes(payload[:2], "big") == 1001
        assert server.proc.poll() is None, "the server did not wait for the close handshake"
        with pytest.raises((OSError, InvalidHandshake)):
            async with connect(server.ws_url(), open_timeout=3):
                pass
        assert await health_status(server) in (None, 503)
        await lingering.send_raw(client_frame(OP_CLOSE, (1000).to_bytes(2, "big")))
    assert await wait_exit(server) == 0


# -- configuration ------------------------------------------------------------------


#: Bad command lines, by name: the flags (``{tmp}`` is the test's directory)
#: and a word the one error line must contain to say what is wrong.
BAD_CONFIGS: dict[str, tuple[list[str], str]] = {
    "port abc": (["--port", "abc"], "--port"),
    "port 70000": (["--port", "70000"], "--port"),
    "cert without key": (["--tls-cert", "{tmp}/garbage.pem"], "--tls-key"),
    "nonexistent cert": (
        ["--tls-cert", "{tmp}/missing.pem", "--tls-key", "{tmp}/missing.key"],
        "missing.",
    ),
    "cert is a directory": (
        ["--tls-cert", "{tmp}/dir.pem", "--tls-key", "{tmp}/dir.pem"],
        "dir.pem",
    ),
    "cert is not PEM": (
        ["--tls-cert", "{tmp}/garbage.pem", "--tls-key", "{tmp}/garbage.pem"],
        "garbage.pem",
    ),
    "heartbeat -1": (["--heartbeat", "-1"], "--heartbeat"),
    "origin not a URL": (["--allowed-origin", "notaurl"], "notaurl"),
    "unknown flag": (["--no-such-flag"], "--no-such-flag"),
    "database URL scheme": (["--database-url", "mysql://db.example/chat"], "mysql"),
    "database is not SQLite": (["--database-url", "sqlite:{tmp}/garbage.pem"], "garbage.pem"),
    "history days -3": (["--history-days", "-3"], "--history-days"),
    "secret too short": (["--secret", "hunter2"], "--secret"),
    "log format xml": (["--log-format", "xml"], "--log-format"),
    "redis without a shared database": (
        ["--redis-url", "redis://127.0.0.1:6379/0"],
        "--database-url postgresql://",
    ),
    "postgresql unreachable": (
        ["--database-url", "postgresql://postgres@127.0.0.1:1/roomcast"],
        "127.0.0.1:1",
    ),
    "redis URL scheme": (
        ["--database-url", "postgresql://postgres@127.0.0.1:1/x", "--redis-url", "http://x"],
        "--redis-url",
    ),
}


def assert_one_error_line(result: subprocess.CompletedProcess[str], mention: str) -> None:
    """Exit status 2; stderr is one ``roomcast: error:`` line that says ``mention``."""
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("roomcast: error: "), result.stderr
    assert mention in lines[0], f"the error does not name {mention!r}: {lines[0]}"
    assert "roomcast listening" not in result.stdout, result.stdout


@pytest.mark.parametrize("name", list(BAD_CONFIGS))
def test_bad_configuration_is_one_line_and_exit_2(tmp_path: Path, name: str) -> None:
    """Each bad configuration prints one clear 'roomcast: error:' line and exits 2."""
    (tmp_path / "dir.pem").mkdir()
    (tmp_path / "garbage.pem").write_text(
        "-----BEGIN CERTIFICATE-----\nnot a certificate\n-----END CERTIFICATE-----\n"
    )
    flags, mention = BAD_CONFIGS[name]
    args = [flag.format(tmp=tmp_path) for flag in flags]
    if "--port" not in args:
        args += ["--port", "0"]  # were it accepted, it must not take a fixed port
    result = run_cli(*args, "--data-dir", str(tmp_path / "data"))
    assert_one_error_line(result, mention)


def test_port_in_use_is_one_line_and_exit_2(tmp_path: Path) -> None:
    """A port someone already listens on prints one error line and exits 2."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("--port", str(port), "--data-dir", str(tmp_path / "data"))
    assert_one_error_line(result, str(port))


def test_help_lists_every_flag() -> None:
    """serve --help exits 0 and names every flag."""
    result = subprocess.run(serve_command("--help"), capture_output=True, text=True, timeout=20)
    assert result.returncode == 0, result.stderr
    flags = (
        "--host --port --data-dir --database-url --history-days --tls-cert --tls-key "
        "--allowed-origin --secret --heartbeat --rate-limit --rate-burst "
        "--max-connections-per-user --max-connections-per-ip"
    )
    for flag in flags.split():
        assert flag in result.stdout, f"{flag} missing from --help"


# -- environment ------------------------------------------------------------------


async def test_heartbeat_from_the_environment(server_factory: ServerFactory) -> None:
    """ROOMCAST_HEARTBEAT=7 makes the welcome frame announce heartbeat 7."""
    server = server_factory(env={"ROOMCAST_HEARTBEAT": "7"})
    async with connect(server.ws_url()) as ws:
        system, _ = await welcome(ws)
    assert system["payload"]["heartbeat"] == 7


async def test_flag_beats_environment(server_factory: ServerFactory) -> None:
    """--heartbeat 9 wins over ROOMCAST_HEARTBEAT=7."""
    server = server_factory("--heartbeat", "9", env={"ROOMCAST_HEARTBEAT": "7"})
    async with connect(server.ws_url()) as ws:
        system, _ = await welcome(ws)
    assert system["payload"]["heartbeat"] == 9


def start_without_port_flag(tmp_path: Path, env: dict[str, str]) -> ServerProcess:
    """Start ``roomcast serve`` with no --port; wait for the listening line."""
    stderr_path = tmp_path / "env-server.stderr"
    data_dir = tmp_path / "env-data"
    with stderr_path.open("w") as stderr:
        proc = subprocess.Popen(
            serve_command("--data-dir", str(data_dir)),
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env={**os.environ, **env},
        )
    assert proc.stdout is not None
    line = ""
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline and not line:
            if selector.select(timeout=0.1):
                line = proc.stdout.readline()
                if not line:
                    break
    server = ServerProcess(proc, line.split()[-1] if line else "", data_dir, stderr_path, [line])
    if not line.startswith("roomcast listening on "):
        server.stop(signal.SIGKILL)
        pytest.fail(f"no listening line: {line!r}; stderr {stderr_path.read_text()!r}")
    return server


async def test_port_from_the_environment(tmp_path: Path) -> None:
    """ROOMCAST_PORT is the port when no --port flag is given."""
    port = free_port()
    server = start_without_port_flag(tmp_path, {"ROOMCAST_PORT": str(port)})
    try:
        assert server.stdout_lines[0].strip() == f"roomcast listening on http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/health") as resp:
                assert resp.status == 200
                assert await resp.text() == "WebSocket server is running"
    finally:
        assert server.stop() == 0


async def test_listening_line_is_first_and_names_the_real_port(server: ServerProcess) -> None:
    """The first stdout line is the listening line, and /health answers on that port."""
    first = server.stdout_lines[0].rstrip("\n")
    assert first == f"roomcast listening on http://127.0.0.1:{server.port}"
    assert server.port != 0
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{server.port}/health") as resp:
            assert resp.status == 200
            assert await resp.text() == "WebSocket server is running"


# -- Origin ----------------------------------------------------------------------


async def assert_origin_refused(server: ServerProcess, origin: str) -> None:
    """A handshake with ``origin`` is answered 403 with a JSON error body."""
    with pytest.raises(InvalidStatus) as info:
        async with connect(server.ws_url(), origin=origin, open_timeout=RECV_TIMEOUT):
            pass
    response = info.value.response
    assert response.status_code == 403, origin
    body = json.loads(response.body or b"")
    assert body["error"]["code"] == "forbidden", body
    assert body["error"]["message"], body


async def assert_origin_accepted(server: ServerProcess, origin: str | None) -> None:
    """A handshake with ``origin`` (or none) gets the welcome frame."""
    async with connect(server.ws_url(), origin=origin) as ws:
        system, joined = await welcome(ws)
    assert system["type"] == "system"
    assert joined["payload"]["room"] == "lobby"


async def test_foreign_and_null_origins_get_403(server: ServerProcess) -> None:
    """Origin https://evil.example or null is refused with 403 and a JSON error."""
    await assert_origin_refused(server, "https://evil.example")
    await assert_origin_refused(server, "null")
    await assert_origin_refused(server, f"https://127.0.0.1:{server.port}")  # other scheme
    await assert_origin_refused(server, "http://127.0.0.1:1")  # other port


async def test_own_origin_and_no_origin_are_accepted(server: ServerProcess) -> None:
    """The server's own origin, and no Origin header at all, are accepted."""
    await assert_origin_accepted(server, f"http://127.0.0.1:{server.port}")
    await assert_origin_accepted(server, None)


async def test_allowed_origin_flag_is_an_exact_match(server_factory: ServerFactory) -> None:
    """--allowed-origin admits that origin and not a look-alike with a suffix."""
    server = server_factory("--allowed-origin", "https://chat.example.org")
    await assert_origin_accepted(server, "https://chat.example.org")
    await assert_origin_refused(server, "https://chat.example.org.evil.com")
    await assert_origin_refused(server, "https://evil.example")
    await assert_origin_accepted(server, f"http://127.0.0.1:{server.port}")


# -- the generated secret ---------------------------------------------------------


def test_generated_secret_is_private_and_survives_a_restart(server_factory: ServerFactory) -> None:
    """With no --secret, data/secret is created with mode 0600 and kept across restarts."""
    first = server_factory()
    secret = first.data_dir / "secret"
    assert secret.is_file()
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    value = secret.read_bytes()
    assert value.strip()
    assert first.stop() == 0
    second = server_factory()
    assert second.data_dir == first.data_dir
    assert secret.read_bytes() == value
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
