"""``roomcast serve --workers N``: N nodes on one host, one process each, on one port.

A node is one Python process with one event loop, so it uses one core. With
``--workers N`` the ``roomcast serve`` process runs no node itself: it
checks and reserves the port, then starts N workers, each the same
``roomcast serve`` command (the same flags and environment) as a whole node
of its own (its own node id, event loop, store pool and broker connection),
and supervises them. Each worker listens on the one host:port with its own
SO_REUSEPORT socket and the kernel spreads new connections over them; they
act as one server the way nodes on several hosts do, through Redis and
PostgreSQL (docs/design.md, "Many cores on one host", says why this rather
than one process accepting and handing connections on).

What the parent does for its workers:

- **the port**: it binds the port once (``--port 0``: it picks it), so
  every worker listens on the same one, and keeps that socket bound (not
  listening: it takes no connections) until it exits, so the port stays
  this server's while a worker restarts;
- **the secret**: without ``--secret`` it reads (or generates once) the one
  kept in the data dir and hands it to the workers in their environment,
  never on a command line;
- **the listening line**: once every worker listens it prints the one
  ``roomcast listening on URL`` line;
- **signals**: SIGTERM or SIGINT stops every worker as a node stops (each
  stores and acks what it received, closes its clients with 1001) and exits
  0; the workers are in a session of their own, so a terminal's Ctrl-C
  reaches the parent only, and a worker whose parent died (its stdin, a
  pipe from the parent, ends) stops itself the same way;
- **a worker that dies** is logged and started again: its clients reconnect
  (to any worker) and resume from the database, as when one node of several
  dies. More than :data:`MAX_RESTARTS` deaths within
  :data:`RESTART_WINDOW` seconds is a fault that restarting does not mend:
  the parent stops every worker and exits 1, for systemd or the operator.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Sequence
from typing import Final

from .config import ServerConfig, load_secret, prepare_data_dir
from .exceptions import ConfigError

__all__ = [
    "MAX_WORKERS",
    "WORKER_ENV",
    "available_cpus",
    "reserve_port",
    "stop_when_orphaned",
    "supervise",
]

logger = logging.getLogger("roomcast.workers")

#: The variable the parent sets in each worker's environment: its number,
#: 1 to N. A ``roomcast serve`` that finds it is a worker: it listens with
#: SO_REUSEPORT and starts no workers of its own.
WORKER_ENV: Final = "ROOMCAST_WORKER_ID"
#: The most ``--workers``: each is a process of 65-75 MB with a pool of up to
#: 8 PostgreSQL connections (docs/deploy.md, "Sizing"), so 256 is 18 GB and
#: 2,048 connections, past any one host this runs on; more is a typo.
MAX_WORKERS: Final = 256
#: Worker deaths within :data:`RESTART_WINDOW` seconds that are restarted; one
#: more and the parent gives up. A worker dies of a bug or of the kernel's
#: OOM killer, rarely: five a minute is a crash loop, which restarting only
#: hides (and each death drops its clients).
MAX_RESTARTS: Final = 5
RESTART_WINDOW: Final = 60.0
#: Seconds between a worker's death and its restart: a crash at start does
#: not spin, and the others take its share of new connections meanwhile.
RESTART_DELAY: Final = 1.0
#: Seconds a worker may take to print its listening line: a node starts in
#: 1-2 s on PostgreSQL and Redis on this host (tables migrated under a lock);
#: its own connection retries to an unreachable database give up well within.
START_TIMEOUT: Final = 60.0
#: Seconds the workers get to stop after SIGTERM before they are killed: a
#: node stops within about 10 s, 15 s with notifications still waiting
#: (docs/protocol.md, section 1).
STOP_TIMEOUT: Final = 20.0
#: What a node's first line on stdout starts with.
LISTENING: Final = "roomcast listening on "


def available_cpus() -> int:
    """The CPUs this process may run on (``--workers auto``): its affinity mask,
    which ``taskset`` and cgroup cpusets narrow, where the system has one."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1  # pragma: no cover - macOS, Windows


def _passive_addresses(host: str, port: int) -> list[tuple[socket.AddressFamily, str]]:
    """The (family, address) pairs a server listening on ``host`` binds, as asyncio's
    ``create_server`` resolves them (``""`` is every interface)."""
    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    found: list[tuple[socket.AddressFamily, str]] = []
    for family, _, _, _, address in infos:
        if family in (socket.AF_INET, socket.AF_INET6) and (family, address[0]) not in found:
            found.append((family, str(address[0])))
    return found


def _bound(family: socket.AddressFamily, address: str, port: int, *, shared: bool) -> socket.socket:
    """A TCP socket bound to ``address:port`` as a node binds it (SO_REUSEADDR, IPv6 only
    on IPv6), with SO_REUSEPORT when ``shared``."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if shared:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((address, port))
    except BaseException:
        sock.close()
        raise
    return sock


def reserve_port(host: str, port: int) -> tuple[list[socket.socket], int]:
    """Hold ``host:port`` (``port`` 0: a free one) for the workers; the sockets and the port.

    First each address is bound *without* SO_REUSEPORT and closed: that fails
    when anything listens there, a second ``--workers`` server among them,
    which with SO_REUSEPORT alone would quietly share the port and take half
    its connections. Then each is bound with SO_REUSEPORT and kept, not
    listening: the kernel gives connections to listening sockets only, and
    the workers (SO_REUSEPORT too) may bind beside it.

    Raises:
        ConfigError: the port is taken, or the host has no such address.
    """
    if not hasattr(socket, "SO_REUSEPORT"):  # pragma: no cover - Windows
        raise ConfigError("--workers needs SO_REUSEPORT, which this system does not have")
    addresses = _passive_addresses(host, port)
    held: list[socket.socket] = []
    try:
        for family, address in addresses:
            _bound(family, address, port, shared=False).close()
            held.append(_bound(family, address, port, shared=True))
            port = port or held[0].getsockname()[1]
    except OSError as exc:
        for sock in held:
            sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return held, port


def supervise(config: ServerConfig, argv: Sequence[str]) -> int:
    """Run ``config.workers`` workers until SIGTERM or SIGINT; the exit status.

    ``argv`` is the command line that asked for them (``serve ...``): each
    worker runs it again, with the reserved port.

    Raises:
        ConfigError: the port is taken, or the data dir or its secret is unusable.
    """
    held, port = reserve_port(config.host, config.port)
    try:
        env = dict(os.environ)
        if config.secret is None:
            # One secret for all, as nodes of one server must share it; in the
            # environment, which only this user (and root) may read.
            env["ROOMCAST_SECRET"] = load_secret(prepare_data_dir(config.data_dir), None)
        command = [sys.executable, "-m", "roomcast", *argv, "--port", str(port)]
        return asyncio.run(_Supervisor(config.workers, command, env).run())
    finally:
        for sock in held:
            sock.close()


class _Supervisor:
    """Starts the workers, waits for them to listen, restarts one that dies, stops all."""

    def __init__(self, count: int, command: list[str], env: dict[str, str]) -> None:
        self.count = count
        self.command = command
        self.env = env
        self.procs: dict[int, asyncio.subprocess.Process] = {}
        self.url = ""
        self.stopping = asyncio.Event()
        self._deaths: collections.deque[float] = collections.deque()
        self._drains: set[asyncio.Task[None]] = set()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        status: int | None = 1
        try:
            status = await self._start(1)  # first alone: it creates or migrates the tables
            if status is None:
                started = await asyncio.gather(*(self._start(k) for k in range(2, self.count + 1)))
                status = next((s for s in started if s is not None), None)
            if status is None:
                print(f"{LISTENING}{self.url}", flush=True)
                pids = ", ".join(str(proc.pid) for proc in self.procs.values())
                logger.info("%d workers listening on %s (pids %s)", self.count, self.url, pids)
                status = await self._watch()
        finally:
            stopped = await self._stop_all()
        return status or stopped

    async def _start(self, worker: int) -> int | None:
        """Start ``worker`` and wait for its listening line: None, or the status to exit
        with (0 when a signal came first; the worker's own when it failed, having said why
        on stderr as a node does)."""
        proc = await asyncio.create_subprocess_exec(
            *self.command,
            stdin=asyncio.subprocess.PIPE,  # never written: its end tells the worker we live
            stdout=asyncio.subprocess.PIPE,
            env={**self.env, WORKER_ENV: str(worker)},
            start_new_session=True,  # Ctrl-C reaches the parent, which stops the workers
        )
        self.procs[worker] = proc
        listening = asyncio.ensure_future(self._listening(proc))
        stop = asyncio.ensure_future(self.stopping.wait())
        await asyncio.wait({listening, stop}, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        if not listening.done():
            listening.cancel()
            return 0
        try:
            url = listening.result()
        except TimeoutError:
            logger.error("worker %d did not listen within %.0f s", worker, START_TIMEOUT)
            return 1
        if url is None:
            return await proc.wait() or 1
        self.url = self.url or url
        logger.debug("worker %d (pid %d) listening", worker, proc.pid)
        return None

    async def _listening(self, proc: asyncio.subprocess.Process) -> str | None:
        """The URL of ``proc``'s listening line; None if its stdout ended first.

        Its stdout is read to the end afterwards, so a write never blocks it.

        Raises:
            TimeoutError: no line within :data:`START_TIMEOUT` seconds.
        """
        stdout = proc.stdout
        assert stdout is not None
        async with asyncio.timeout(START_TIMEOUT):
            while line := await stdout.readline():
                text = line.decode(errors="replace").strip()
                if text.startswith(LISTENING):
                    drain = asyncio.ensure_future(_drain(stdout))
                    self._drains.add(drain)
                    drain.add_done_callback(self._drains.discard)
                    return text.split()[-1]
        return None

    async def _watch(self) -> int:
        """Until a signal (0), restarting workers that die; 1 past the restart budget."""
        waits = {asyncio.ensure_future(proc.wait()): k for k, proc in self.procs.items()}
        stop = asyncio.ensure_future(self.stopping.wait())
        try:
            while True:
                done, _ = await asyncio.wait({stop, *waits}, return_when=asyncio.FIRST_COMPLETED)
                if stop in done:
                    return 0
                for task in done:
                    worker = waits.pop(task)
                    if not await self._restart(worker, task.result()):
                        return 1
                    if self.stopping.is_set():
                        return 0
                    waits[asyncio.ensure_future(self.procs[worker].wait())] = worker
        finally:
            for task in (stop, *waits):
                task.cancel()

    async def _restart(self, worker: int, status: int) -> bool:
        """Start ``worker`` again after it exited with ``status``; False past the budget."""
        while True:
            pid = self.procs[worker].pid
            how = f"was killed by signal {-status}" if status < 0 else f"exited with {status}"
            now = time.monotonic()
            self._deaths.append(now)
            while self._deaths and self._deaths[0] < now - RESTART_WINDOW:
                self._deaths.popleft()
            if len(self._deaths) > MAX_RESTARTS:
                logger.error(
                    "worker %d (pid %d) %s: more than %d deaths in %.0f s, stopping every worker",
                    worker,
                    pid,
                    how,
                    MAX_RESTARTS,
                    RESTART_WINDOW,
                )
                return False
            logger.error("worker %d (pid %d) %s; starting it again", worker, pid, how)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), RESTART_DELAY)
            if self.stopping.is_set():
                return True
            failed = await self._start(worker)
            if failed is None:
                logger.info("worker %d listening again (pid %d)", worker, self.procs[worker].pid)
                return True
            if self.stopping.is_set():
                return True
            status = self.procs[worker].returncode or failed

    async def _stop_all(self) -> int:
        """SIGTERM every worker, wait for them (killing any left after STOP_TIMEOUT s);
        0 when each stopped with 0, else 1."""
        live = [proc for proc in self.procs.values() if proc.returncode is None]
        for proc in live:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        status = 0
        try:
            async with asyncio.timeout(STOP_TIMEOUT):
                codes = await asyncio.gather(*(proc.wait() for proc in live))
        except TimeoutError:
            for proc in live:
                if proc.returncode is None:
                    logger.error(
                        "worker pid %d did not stop in %.0f s: killed", proc.pid, STOP_TIMEOUT
                    )
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
                    await proc.wait()
            status = 1
        else:
            for proc, code in zip(live, codes, strict=True):
                if code != 0:
                    logger.error("worker pid %d stopped with status %d", proc.pid, code)
                    status = 1
        for drain in list(self._drains):
            drain.cancel()
        return status


async def _drain(stream: asyncio.StreamReader) -> None:
    """Read ``stream`` to its end, dropping what it says (a node prints one line)."""
    while await stream.read(65536):
        pass


def stop_when_orphaned() -> None:
    """In a worker: stop as on SIGTERM when the parent is gone (its end of stdin closed).

    Call it in the worker's event loop before the server awaits anything: its
    SIGTERM handler is installed by then, since the callback cannot run sooner.
    """
    if sys.stdin is None:  # pragma: no cover - the parent always gives a pipe
        return
    loop = asyncio.get_running_loop()
    fd = sys.stdin.fileno()

    def readable() -> None:
        try:
            data = os.read(fd, 4096)
        except OSError as exc:
            if exc.errno == errno.EAGAIN:
                return
            data = b""
        if not data:
            loop.remove_reader(fd)
            logger.error("the parent process is gone: stopping")
            os.kill(os.getpid(), signal.SIGTERM)

    loop.add_reader(fd, readable)
