"""A client written for the original Node server works against roomcast unchanged."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from websockets.asyncio.client import connect

from tests.integration.serverproc import ServerProcess
from tests.integration.wsclient import recv_type, send_json, welcome

NODE_CLIENT = Path(__file__).parent / "node_client"
#: How long the Node client may run before it gives up by itself.
NODE_SECONDS = 10


@pytest.fixture(scope="session")
def node_client() -> Path:
    """The Node client's script, with its ``ws`` dependency installed from the lock file."""
    assert shutil.which("node"), "Node.js is needed for the compatibility test"
    if not (NODE_CLIENT / "node_modules" / "ws").is_dir():
        npm = shutil.which("npm")
        assert npm, "npm is needed to install the Node client's dependencies"
        result = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"],
            cwd=NODE_CLIENT,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, f"npm ci failed:\n{result.stdout}\n{result.stderr}"
    return NODE_CLIENT / "client.js"


@pytest.mark.node
async def test_original_node_client_chats_with_a_python_client(
    server: ServerProcess, node_client: Path
) -> None:
    """Node ws client at / and Python client chat both ways; the Node side gets welcome and pong."""
    async with connect(server.ws_url()) as py:
        py_system, _ = await welcome(py)
        py_name = py_system["payload"]["user"]["name"]
        proc = await asyncio.create_subprocess_exec(
            "node",
            str(node_client),
            f"ws://127.0.0.1:{server.port}/",
            "hello from node",
            "hello from python",
            str(NODE_SECONDS),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            try:
                from_node = await recv_type(py, "chat", timeout=NODE_SECONDS)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                out, err = await proc.communicate()
                pytest.fail(f"no chat from the Node client; it said {err.decode()}{out.decode()}")
            assert from_node["payload"]["message"] == "hello from node"
            assert from_node["payload"]["room"] == "lobby"
            await send_json(py, "chat", {"message": "hello from python"})
            out, err = await asyncio.wait_for(proc.communicate(), NODE_SECONDS + 5)
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()  # by its own PID, only if it hung
                await proc.communicate()
    stdout, stderr = out.decode(), err.decode()
    assert proc.returncode == 0, f"node exited {proc.returncode}: {stderr}\n{stdout}"
    frames = [json.loads(line) for line in stdout.splitlines()]
    assert all(isinstance(frame, dict) and "type" in frame for frame in frames)
    welcome_frame = frames[0]
    assert welcome_frame["type"] == "system"
    assert welcome_frame["payload"]["message"] == "Connected to WebSocket server"
    node_name = welcome_frame["payload"]["user"]["name"]
    assert from_node["payload"]["from"] == node_name
    assert any(frame["type"] == "pong" for frame in frames), "no pong for the Node ping"
    chats = [(f["payload"]["from"], f["payload"]["message"]) for f in frames if f["type"] == "chat"]
    assert (node_name, "hello from node") in chats
    assert (py_name, "hello from python") in chats
