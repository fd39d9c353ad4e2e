"""The client library imports nothing of the server or its dependencies."""

from __future__ import annotations

import subprocess
import sys

SERVER_MODULES = (
    "aiohttp",
    "picows",
    "uvloop",
    "prometheus_client",
    "argon2",
    "jwt",
    "roomcast.server",
    "roomcast.node",
    "roomcast.store",
)


def test_importing_the_client_loads_no_server_module() -> None:
    """``import roomcast.client`` in a fresh interpreter loads none of the server's modules."""
    code = (
        "import sys, roomcast.client\n"
        f"print(','.join(m for m in {SERVER_MODULES!r} if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "", f"the client imported {result.stdout.strip()}"
    assert (
        "websockets"
        in subprocess.run(
            [sys.executable, "-c", "import sys, roomcast.client; print(sorted(sys.modules))"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
