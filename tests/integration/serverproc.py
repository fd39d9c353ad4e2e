"""Run the real ``roomcast serve`` as a subprocess on port 0 for tests."""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

#: How long a server gets to print its listening line.
START_TIMEOUT = 20.0


@dataclass
class ServerProcess:
    """A running ``roomcast serve`` and where to reach it."""

    proc: subprocess.Popen[str]
    url: str
    data_dir: Path
    stderr_path: Path
    stdout_lines: list[str] = field(default_factory=list)

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def ws_url(self, path: str = "/ws") -> str:
        scheme = "wss" if self.url.startswith("https") else "ws"
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    def http_url(self, path: str) -> str:
        return f"{self.url}{path}"

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        """Send ``sig`` and wait for the exit status (killing after ``timeout``)."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return self.proc.returncode


def serve_command(*args: str) -> list[str]:
    """The command line that runs ``roomcast serve`` with ``args``."""
    return [sys.executable, "-m", "roomcast", "serve", *args]


def start_server(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> ServerProcess:
    """Start ``roomcast serve --port 0`` and wait for its listening line."""
    data_dir = tmp_path / "data"
    stderr_path = tmp_path / f"server-{time.monotonic_ns()}.stderr"
    command = serve_command("--port", "0", "--data-dir", str(data_dir), *args)
    # OWASP's minimum argon2id settings: a tenth of the suite is sign-ups,
    # each a quarter of the default's cost (docs/protocol.md, --password-hash).
    full_env = {"ROOMCAST_PASSWORD_HASH": "small", **os.environ, **(env or {})}
    with stderr_path.open("w") as stderr:
        proc = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=stderr, text=True, env=full_env
        )
    assert proc.stdout is not None
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + START_TIMEOUT
    line = ""
    while time.monotonic() < deadline and not line:
        if selector.select(timeout=0.1):
            line = proc.stdout.readline()
            if not line:
                break
    selector.close()
    if not line.startswith("roomcast listening on "):
        proc.kill()
        proc.wait()
        proc.stdout.close()
        raise RuntimeError(
            f"server did not start: stdout={line!r} stderr={stderr_path.read_text()!r}"
        )
    return ServerProcess(proc, line.split()[-1], data_dir, stderr_path, [line])


#: What the ``server_factory`` fixture gives: start a server with extra flags.
ServerFactory = Callable[..., ServerProcess]
