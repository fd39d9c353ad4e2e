"""Server memory after big file uploads on connections that stay open.

picows keeps a connection's read buffer as large as its largest frame; the
peer gives the buffer's pages back after a big frame (``release_pages``).
This starts a server, opens CONNECTIONS registered connections, sends one
file of SIZE bytes on each, waits for every ack, and prints the server's
RSS before and after (the connections stay open).

Parameters: 5 connections, so a buffer kept per connection shows as five
times its size; files of 7.9 MiB, just under the 8 MiB file limit: about
the largest frame a client may send.

    .venv/bin/python bench/scenarios/upload_memory.py [--connections 5] [--size-mib 7.9]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import aiohttp
import websockets

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "correct horse battery"


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def run(connections: int, size: int) -> None:
    with tempfile.TemporaryDirectory() as data:
        server = subprocess.Popen(
            [str(ROOT / ".venv/bin/roomcast"), "serve", "--port", "0", "--data-dir", data]
            + ["--rate-limit", "0", "--log-level", "warning"],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert server.stdout is not None
            url = server.stdout.readline().split()[-1]
            async with aiohttp.ClientSession() as http:
                login = {"username": "uploader", "password": PASSWORD}
                await http.post(f"{url}/api/register", json=login)
                async with http.post(f"{url}/api/login", json=login) as resp:
                    token = (await resp.json())["token"]
            ws_url = url.replace("http", "ws", 1) + "/ws"
            headers = {"Authorization": f"Bearer {token}"}
            clients = [
                await websockets.connect(ws_url, additional_headers=headers, max_size=None)
                for _ in range(connections)
            ]
            await asyncio.sleep(0.5)
            before = rss_kib(server.pid)
            loop = asyncio.get_running_loop()
            acked_in: list[float] = []
            for i, ws in enumerate(clients):
                header = json.dumps({"room": "lobby", "name": "f", "mime": "x/y", "id": f"f{i}"})
                encoded = header.encode()
                frame = len(encoded).to_bytes(4, "big") + encoded + os.urandom(size)
                started = loop.time()
                await ws.send(frame)
                while True:
                    reply = json.loads(await ws.recv())
                    if reply["type"] == "ack" and reply.get("id") == f"f{i}":
                        acked_in.append(loop.time() - started)
                        break
            await asyncio.sleep(1.0)
            after = rss_kib(server.pid)
            print(
                f"server RSS {before / 1024:.1f} MiB before, {after / 1024:.1f} MiB after "
                f"{connections} uploads of {size / 2**20:.1f} MiB on connections still open "
                f"(+{(after - before) / 1024:.1f} MiB); send to ack "
                f"{', '.join(f'{t * 1000:.0f}' for t in acked_in)} ms"
            )
            for ws in clients:
                await ws.close()
        finally:
            server.terminate()
            server.wait(timeout=15)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=5)
    parser.add_argument("--size-mib", type=float, default=7.9)
    args = parser.parse_args()
    if not sys.platform.startswith("linux"):
        sys.exit("needs Linux (/proc)")
    asyncio.run(run(args.connections, int(args.size_mib * 2**20)))


if __name__ == "__main__":
    main()
