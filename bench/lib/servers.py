"""Start and stop the servers under test, pinned to one CPU, and read their CPU time.

Targets: ``roomcast`` (the real server), ``roomcast-base`` (roomcast from
another tree, for an A/B in one run), ``node`` (the original design's Node
reference, copied from shared/peers/seed-node and set up with ``npm ci``) and
the candidate transports in bench/candidates/.
"""

from __future__ import annotations

import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent
REPO = BENCH.parent
VENV_BIN = REPO / ".venv" / "bin"
SEED_NODE = REPO.parent / "shared" / "peers" / "seed-node"
CANDIDATES = {
    "aiohttp-bare": "aiohttp_bare.py",
    "aiohttp-frame": "aiohttp_frame.py",
    "websockets": "websockets_bcast.py",
    "picows": "picows_server.py",
}
#: ``roomcast-base`` is roomcast from another tree (``$ROOMCAST_BASE_SRC``, the
#: ``src`` folder of a ``git worktree`` of the base commit), run with this
#: venv: the A/B of a change in one run.
TARGETS = ["roomcast", "roomcast-base", "node", *CANDIDATES]
ROOMCAST_TARGETS = frozenset({"roomcast", "roomcast-base"})
LISTENING = re.compile(rb"listening on http://127\.0\.0\.1:(\d+)|running on port (\d+)")


@dataclass
class Server:
    name: str
    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    def cpu_seconds(self) -> float:
        """User+system CPU seconds the server process has used so far."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def seed_node_source() -> Path:
    """shared/ beside the repo, or next to a clone elsewhere: $ROOMCAST_SEED_NODE wins."""
    return Path(os.environ.get("ROOMCAST_SEED_NODE", SEED_NODE))


def prepare_node(tmp: Path) -> Path:
    """Copy the read-only Node reference into tmp and install its locked deps."""
    dest = tmp / "seed-node"
    shutil.copytree(seed_node_source(), dest, ignore=shutil.ignore_patterns("node_modules"))
    for path in [dest, *dest.rglob("*")]:
        path.chmod(path.stat().st_mode | 0o200)
    subprocess.run(
        ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=dest,
        check=True,
        timeout=300,
    )
    return dest


def roomcast_available() -> bool:
    return (VENV_BIN / "roomcast").exists()


def fd_hard_limit() -> int:
    """This process's hard RLIMIT_NOFILE: the most open files a server started here gets."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return 1 << 30 if hard == resource.RLIM_INFINITY else hard


def raise_fd_limit() -> None:
    """In the server's process before exec: soft RLIMIT_NOFILE up to the hard limit.

    Python keeps the inherited soft limit (often 1024), too low for the idle
    scenarios; Node raises its own, this makes sure of it.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def command(name: str, tmp: Path, node_dir: Path | None, roomcast_args: list[str]) -> list[str]:
    if name in ROOMCAST_TARGETS:
        data = tmp / f"roomcast-data-{time.monotonic_ns()}"
        # The load generator sends far more than a client may: limits off.
        return [
            str(VENV_BIN / "python"),
            "-m",
            "roomcast",
            "serve",
            "--port",
            "0",
            "--data-dir",
            str(data),
            "--rate-limit=0",
        ]
    if name == "node":
        assert node_dir is not None
        return ["node", str(node_dir / "websocket-server.js")]
    script = BENCH / "candidates" / CANDIDATES[name]
    return [str(VENV_BIN / "python"), str(script), "--port", "0"]


def start(
    name: str, tmp: Path, node_dir: Path | None, roomcast_args: list[str], cpu: int = 0
) -> Server:
    """Start target ``name`` pinned to ``cpu``; wait (max 20 s) for its listening line."""
    cmd = command(name, tmp, node_dir, roomcast_args)
    if name in ROOMCAST_TARGETS:
        cmd += roomcast_args
    env = dict(os.environ, QUIET="1", PORT=str(free_port()))
    if name == "roomcast-base":
        base = os.environ.get("ROOMCAST_BASE_SRC")
        if not base:
            raise RuntimeError(
                "roomcast-base needs ROOMCAST_BASE_SRC: the src folder of a base tree"
            )
        env["PYTHONPATH"] = base
    log = tmp / f"{name}-{time.monotonic_ns()}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            ["taskset", "-c", str(cpu), *cmd],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=tmp,
            preexec_fn=raise_fd_limit,
        )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        match = LISTENING.search(log.read_bytes())
        if match:
            port = int(match.group(1) or match.group(2))
            path = "/" if name == "node" else "/ws"
            return Server(name, proc, f"ws://127.0.0.1:{port}{path}", log)
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    stop(Server(name, proc, "", log))
    raise RuntimeError(f"{name} did not start: {log.read_text(errors='replace')[-2000:]}")


def stop(server: Server) -> None:
    """SIGTERM the server by PID; SIGKILL it after 5 s."""
    if server.proc.poll() is None:
        server.proc.send_signal(signal.SIGTERM)
        try:
            server.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait(timeout=5)


def log_problems(log: Path, limit: int = 20) -> dict[str, object]:
    """The warning/error lines (and tracebacks) of a server log: count and the first few."""
    lines = log.read_text(errors="replace").splitlines()
    bad = [
        line
        for line in lines
        if " WARNING " in line or " ERROR " in line or " CRITICAL " in line or "Traceback" in line
    ]
    return {"count": len(bad), "first": [line[:300] for line in bad[:limit]]}
