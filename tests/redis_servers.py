"""Real Redis Clusters and Sentinel setups for tests: ``redis-server`` processes on free ports.

The shared Redis on 6379 is one server; a Redis Cluster (sharded pub/sub,
slots, failover) and Sentinel (a master that moves) need processes of
their own. :class:`RedisClusterRig` and :class:`SentinelRig` start them
from ``redis-server`` (``ROOMCAST_TEST_REDIS_SERVER``, else the one on
``PATH``) in a temporary directory, on ports nothing else holds, and stop
only the processes they started, by pid. Nothing is written to disk but the
cluster's ``nodes.conf`` files and Sentinel's config.

Settings are chosen so that a failover takes a few seconds, not the
default's tens (see :data:`CLUSTER_SETTINGS` and :data:`SENTINEL_SETTINGS`).
The fixtures at the end (``redis_cluster``, ``redis_sentinel``) are loaded
for every test by ``pytest_plugins`` in tests/conftest.py. When
``redis-server`` is missing, :func:`tests.services.service_down` skips, or
fails under ``CI=true``.

The rigs are synchronous (they use ``subprocess`` and redis-py's blocking
client): an async test calls the slow ones with ``asyncio.to_thread``.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar

import pytest
import redis
from redis.crc import key_slot

from tests.services import service_down

__all__ = [
    "CLUSTER_SETTINGS",
    "REDIS_SERVER",
    "RedisClusterRig",
    "RigError",
    "SentinelRig",
    "free_ports",
    "redis_cluster",
    "redis_cluster_rig",
    "redis_sentinel",
    "slot_of",
]

T = TypeVar("T")

#: The ``redis-server`` binary; ``redis-cli`` is looked for next to it.
REDIS_SERVER: Final = (
    os.environ.get("ROOMCAST_TEST_REDIS_SERVER")
    or shutil.which("redis-server")
    or "/usr/bin/redis-server"
)

HOST: Final = "127.0.0.1"

#: A cluster node's bus port is its port plus this (Redis's fixed offset).
BUS_OFFSET: Final = 10_000

#: Seconds a started ``redis-server`` gets to answer PING (it answers in ~10 ms here).
START_TIMEOUT: Final = 10.0
#: Seconds a new cluster gets to agree on its slots and sync its replicas (~2 s here).
CLUSTER_TIMEOUT: Final = 30.0
#: Seconds a failover may take before a rig calls it failed (3 s measured, see below).
FAILOVER_TIMEOUT: Final = 20.0

#: ``redis-server`` flags for every node of a cluster, and why:
#:
#: * ``cluster-node-timeout 1000``: a master silent for 1 s is suspected and,
#:   once the other masters agree, failed; its replica is elected after
#:   0.5-1 s more. A failover takes about 3 s here (the default, 15 s,
#:   would take 16 s or more).
#: * ``cluster-replica-validity-factor 0``: a replica may always be promoted,
#:   however long since it last heard its master (a node just restarted by
#:   :meth:`RedisClusterRig.heal` would otherwise be refused for a while).
#: * ``cluster-require-full-coverage no``: while one shard fails over, the
#:   others keep answering, as in a deployment that wants availability;
#:   only the failing shard's rooms pause.
#: * ``cluster-allow-replica-migration no``: the topology stays as created
#:   (a test that kills a node knows which replica will take over).
#: * ``repl-diskless-sync-delay 0``: a replica's first sync starts at once
#:   (the default waits 5 s for more replicas, on every start and heal).
#: * ``repl-ping-replica-period 1``: a master pings its replicas every
#:   second (default 10), so a new replica's offset moves off 0 within a
#:   second; until it does, ``CLUSTER SLOTS`` does not list the replica
#:   (Redis 7 hides replicas it cannot tell are synced), and the cluster
#:   took 9 s to show whole instead of 1.
#: * ``save ""``, ``appendonly no``: nothing kept on disk; a test's data
#:   lives only as long as the processes.
CLUSTER_SETTINGS: Final = (
    ("cluster-enabled", "yes"),
    ("cluster-config-file", "nodes.conf"),
    ("cluster-node-timeout", "1000"),
    ("cluster-replica-validity-factor", "0"),
    ("cluster-require-full-coverage", "no"),
    ("cluster-allow-replica-migration", "no"),
    ("repl-diskless-sync-delay", "0"),
    ("repl-ping-replica-period", "1"),
    ("save", ""),
    ("appendonly", "no"),
)

#: Settings of a Sentinel-watched pair (master and replica).
SERVER_SETTINGS: Final = (
    ("repl-diskless-sync-delay", "0"),
    ("save", ""),
    ("appendonly", "no"),
)

#: The Sentinel's settings for its service, and why: the master is down after
#: 1 s without an answer (default 30 s); with a quorum of 1 the one Sentinel
#: fails over alone; a failover that stalls is retried after 2 x 3 s
#: (default 2 x 3 min). A failover takes about 3 s here.
SENTINEL_SETTINGS: Final = (
    ("down-after-milliseconds", "1000"),
    ("failover-timeout", "3000"),
    ("parallel-syncs", "1"),
)


class RigError(AssertionError):
    """A rig did not come up, or did not fail over, in time (the message has the logs)."""


def slot_of(slot_or_key: int | str | bytes) -> int:
    """The cluster slot of a key (or channel), or ``slot_or_key`` itself when it is a slot."""
    if isinstance(slot_or_key, int):
        return slot_or_key
    key = slot_or_key.encode() if isinstance(slot_or_key, str) else slot_or_key
    return int(key_slot(key))


def free_ports(count: int, *, bus: bool = False) -> list[int]:
    """``count`` distinct ports free on 127.0.0.1 (and, with ``bus``, port + 10000 free too).

    Each is found by binding port 0; all sockets are held until the last is
    found, so no port is given twice. Another process may still take one
    before ``redis-server`` binds it: :class:`RedisNode` then retries on a
    new port.
    """
    held: list[socket.socket] = []
    ports: list[int] = []
    try:
        while len(ports) < count:
            probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            held.append(probe)
            probe.bind((HOST, 0))
            port = int(probe.getsockname()[1])
            if bus:
                if port + BUS_OFFSET > 65535:
                    continue
                other = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                held.append(other)
                try:
                    other.bind((HOST, port + BUS_OFFSET))
                except OSError:
                    continue
            ports.append(port)
    finally:
        for sock in held:
            sock.close()
    return ports


def require_redis_server() -> str:
    """The ``redis-server`` binary, or :func:`service_down` (a failure under ``CI=true``)."""
    if not os.access(REDIS_SERVER, os.X_OK):
        service_down("redis-server", f"{REDIS_SERVER} is not an executable")
    return REDIS_SERVER


def _redis_cli() -> str:
    """``redis-cli``, next to ``redis-server``."""
    beside = Path(REDIS_SERVER).with_name("redis-cli")
    found = str(beside) if os.access(beside, os.X_OK) else shutil.which("redis-cli")
    if found is None:
        service_down("redis-server", f"no redis-cli next to {REDIS_SERVER} or on PATH")
    return found


def _client(port: int) -> redis.Redis:
    """A blocking client for the server on ``port``, quick to give up."""
    return redis.Redis(
        host=HOST, port=port, socket_timeout=1.0, socket_connect_timeout=1.0, decode_responses=True
    )


def _ask(port: int, *command: Any) -> Any:
    """One command to the server on ``port``; ``None`` when it does not answer."""
    client = _client(port)
    try:
        return client.execute_command(*command)  # type: ignore[no-untyped-call]
    except (redis.RedisError, OSError):
        return None
    finally:
        client.close()


def _wait(what: str, check: Callable[[], T | None], timeout: float, logs: Callable[[], str]) -> T:
    """Poll ``check`` every 50 ms until it gives a value; :class:`RigError` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value is not None and value is not False:
            return value
        if time.monotonic() > deadline:
            raise RigError(f"{what}: not within {timeout:.0f} s\n{logs()}")
        time.sleep(0.05)


#: Every process the rigs started and have not reaped: killed at exit if a
#: test run ends without its fixtures' teardown (an interrupt).
_STARTED: set[subprocess.Popen[bytes]] = set()


@atexit.register
def _kill_leftovers() -> None:
    for proc in list(_STARTED):
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@dataclass
class RedisNode:
    """One ``redis-server`` process: its port, directory and flags."""

    port: int
    directory: Path
    settings: tuple[tuple[str, str], ...]
    config: Path | None = None
    sentinel: bool = False
    proc: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> Path:
        return self.directory / "redis.log"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def command(self) -> list[str]:
        """The command line that starts this node."""
        args = [REDIS_SERVER]
        if self.config is not None:
            args.append(str(self.config))
        if self.sentinel:
            args.append("--sentinel")
        args += ["--port", str(self.port), "--bind", HOST, "--dir", str(self.directory)]
        args += ["--logfile", str(self.log), "--daemonize", "no"]
        for name, value in self.settings:
            args += [f"--{name}", value]
        return args

    def start(self) -> None:
        """Start the process and wait until it answers PING.

        Raises:
            RigError: it exited (its port was taken) or did not answer.
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=self.directory,
        )
        _STARTED.add(self.proc)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RigError(f"redis-server on {self.port} exited:\n{self.tail()}")
            if _ask(self.port, "PING") is not None:
                return
            time.sleep(0.02)
        self.kill()
        raise RigError(f"redis-server on {self.port} did not answer PING:\n{self.tail()}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to this node's own process (by pid) and reap it."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        _STARTED.discard(self.proc)

    def tail(self, lines: int = 15) -> str:
        """The last ``lines`` of the node's log, for failure messages."""
        try:
            text = self.log.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            text = []
        return "\n".join(f"  [{self.port}] {line}" for line in text)


def _start_on_free_ports(
    make: Callable[[list[int]], list[RedisNode]], count: int, *, bus: bool
) -> list[RedisNode]:
    """Start the nodes ``make`` builds on ``count`` free ports; new ports if one was taken."""
    for attempt in range(3):
        nodes = make(free_ports(count, bus=bus))
        try:
            for node in nodes:
                node.start()
        except RigError:
            for node in nodes:
                node.kill()
            if attempt == 2:
                raise
            continue
        return nodes
    raise AssertionError("unreachable")


# -- Redis Cluster ------------------------------------------------------------------


@dataclass(frozen=True)
class SlotRange:
    """Slots ``start..end`` (inclusive), the master serving them and its replicas."""

    start: int
    end: int
    master: int
    replicas: tuple[int, ...]


class RedisClusterRig:
    """A Redis Cluster of 3 masters with one replica each, on free ports in a temp directory.

    ``start`` creates it with ``redis-cli --cluster create`` and returns once
    every node says ``cluster_state:ok`` and every replica is in sync.
    """

    MASTERS: Final = 3

    def __init__(self, root: Path | None = None) -> None:
        self.root: Path | None = root
        self._own_root = root is None
        self.nodes: dict[int, RedisNode] = {}

    def __enter__(self) -> RedisClusterRig:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- life -----------------------------------------------------------------

    def start(self) -> RedisClusterRig:
        """Start six nodes, make them a cluster, and wait until it is whole.

        Raises:
            RigError: a node did not start or the cluster did not form in time.
        """
        require_redis_server()
        cli = _redis_cli()
        if self.root is None:
            self.root = Path(tempfile.mkdtemp(prefix="roomcast-redis-cluster-"))
        count = self.MASTERS * 2
        try:
            nodes = _start_on_free_ports(self._make, count, bus=True)
            self.nodes = {node.port: node for node in nodes}
            created = subprocess.run(
                [cli, "--cluster", "create", *(f"{HOST}:{port}" for port in self.nodes)]
                + ["--cluster-replicas", "1", "--cluster-yes"],
                capture_output=True,
                text=True,
                timeout=CLUSTER_TIMEOUT,
                check=False,
            )
            if created.returncode != 0:
                raise RigError(
                    f"redis-cli --cluster create failed ({created.returncode}):\n"
                    f"{created.stdout}\n{created.stderr}"
                )
            self.wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def _make(self, ports: list[int]) -> list[RedisNode]:
        assert self.root is not None
        return [RedisNode(port, self.root / str(port), CLUSTER_SETTINGS) for port in ports]

    def stop(self) -> None:
        """Kill this rig's processes (by pid) and remove its directory."""
        for node in self.nodes.values():
            node.kill()
        if self._own_root and self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)

    def heal(self, timeout: float = CLUSTER_TIMEOUT) -> list[int]:
        """Restart every killed node and wait until the cluster is whole again.

        A restarted master finds its slots taken by its promoted replica and
        becomes that node's replica. Returns the ports restarted.
        """
        restarted = [port for port, node in self.nodes.items() if not node.alive]
        for port in restarted:
            self.nodes[port].start()
        self.wait_healthy(timeout)
        return restarted

    # -- what the cluster says ------------------------------------------------

    @property
    def ports(self) -> list[int]:
        """Ports of the nodes running now."""
        return [port for port, node in self.nodes.items() if node.alive]

    def url(self, index: int = 0) -> str:
        """``redis://`` URL of one running node (any node names the whole cluster)."""
        return f"redis://{HOST}:{self.ports[index % len(self.ports)]}"

    def urls(self) -> list[str]:
        """One URL per running node."""
        return [f"redis://{HOST}:{port}" for port in self.ports]

    def slots(self, port: int | None = None) -> list[SlotRange]:
        """The slot map as node ``port`` (default: the first running node) sees it."""
        reply = _ask(port if port is not None else self.ports[0], "CLUSTER", "SLOTS")
        if not reply:
            return []
        return [
            SlotRange(int(start), int(end), int(master[1]), tuple(int(r[1]) for r in replicas))
            for start, end, master, *replicas in reply
        ]

    def master_of(self, slot_or_key: int | str | bytes) -> int:
        """The port of the master serving ``slot_or_key``'s slot."""
        slot = slot_of(slot_or_key)
        for rng in self.slots():
            if rng.start <= slot <= rng.end:
                return rng.master
        raise RigError(f"no node serves slot {slot}\n{self.logs()}")

    def one_per_shard(self, key: Callable[[str], str], base: str = "n") -> list[str]:
        """Names ``base0``, ``base1``, ... chosen so that ``key(name)`` falls in each shard in turn.

        One name per shard, in slot order: a test that needs its rooms (or
        users) spread over every master asks for ``key=lambda room: the
        room's channel``.
        """
        ranges = sorted(self.slots(), key=lambda r: r.start)
        found: dict[int, str] = {}
        for n in range(10_000):
            name = f"{base}{n}"
            slot = slot_of(key(name))
            shard = next(i for i, r in enumerate(ranges) if r.start <= slot <= r.end)
            found.setdefault(shard, name)
            if len(found) == len(ranges):
                return [found[i] for i in range(len(ranges))]
        raise RigError(f"no names {base}N fill every shard")

    def masters(self) -> list[int]:
        """Ports of the masters serving slots, in slot order."""
        return sorted({rng.master for rng in self.slots()}, key=self._first_slot)

    def _first_slot(self, port: int) -> int:
        return min(rng.start for rng in self.slots() if rng.master == port)

    def info(self, port: int, section: str) -> dict[str, str]:
        """``INFO section`` of node ``port`` as a dict (empty when it does not answer)."""
        text = _ask(port, "INFO", section)
        if not isinstance(text, dict):
            return {}
        return {str(k): str(v) for k, v in text.items()}

    # -- faults -----------------------------------------------------------------

    def kill_master_of(self, slot_or_key: int | str | bytes) -> int:
        """SIGKILL the master of ``slot_or_key``'s slot; its port."""
        port = self.master_of(slot_or_key)
        self.nodes[port].kill()
        return port

    def wait_for_failover(
        self, slot_or_key: int | str | bytes, dead: int, timeout: float = FAILOVER_TIMEOUT
    ) -> int:
        """Wait until a replica of ``dead`` serves ``slot_or_key``'s slot; the new master's port.

        Done means: every running node names the same new master for the
        slot, that node says ``role:master``, and every running node says
        ``cluster_state:ok``.
        """
        slot = slot_of(slot_or_key)

        def promoted() -> int | None:
            owners = set()
            for port in self.ports:
                for rng in self.slots(port):
                    if rng.start <= slot <= rng.end:
                        owners.add(rng.master)
            if len(owners) != 1 or dead in owners:
                return None
            (owner,) = owners
            if self.info(owner, "replication").get("role") != "master":
                return None
            if not all(self._state_ok(port) for port in self.ports):
                return None
            return owner

        return _wait(f"failover of slot {slot} from {dead}", promoted, timeout, self.logs)

    def _state_ok(self, port: int) -> bool:
        """Whether node ``port`` says ``cluster_state:ok``."""
        return "cluster_state:ok" in str(_ask(port, "CLUSTER", "INFO") or "")

    def wait_healthy(self, timeout: float = CLUSTER_TIMEOUT) -> None:
        """Wait until all six nodes run, agree on a full slot map of 3 masters with one
        replica each, say ``cluster_state:ok``, and every replica's link is up."""

        def whole() -> bool:
            if len(self.ports) != self.MASTERS * 2:
                return False
            views = [self.slots(port) for port in self.ports]
            first = views[0]
            if any(view != first for view in views):
                return False
            if sum(r.end - r.start + 1 for r in first) != 16384:
                return False
            if len({r.master for r in first}) != self.MASTERS:
                return False
            if any(len(r.replicas) != 1 for r in first):
                return False
            for port in self.ports:
                if not self._state_ok(port):
                    return False
                known = str(_ask(port, "CLUSTER", "INFO") or "")
                if f"cluster_known_nodes:{self.MASTERS * 2}" not in known:
                    return False
            for rng in first:
                for replica in rng.replicas:
                    info = self.info(replica, "replication")
                    if info.get("role") != "slave" or info.get("master_link_status") != "up":
                        return False
            return True

        _wait("the cluster to be whole", whole, timeout, self.logs)

    def cleanup(self, prefix: str) -> int:
        """Delete every key under ``prefix`` on every master; how many went."""
        removed = 0
        for port in self.masters():
            client = _client(port)
            try:
                keys = list(client.scan_iter(match=_glob_escape(prefix) + "*", count=500))
                for key in keys:
                    removed += int(client.unlink(key))
            except (redis.RedisError, OSError):
                pass
            finally:
                client.close()
        return removed

    def logs(self) -> str:
        """The last lines of every node's log."""
        return "\n".join(node.tail() for node in self.nodes.values())


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


# -- Sentinel ----------------------------------------------------------------------


class SentinelRig:
    """A master, its replica and one Sentinel watching them as service ``svc``.

    :attr:`url` is the ``redis+sentinel://`` URL roomcast takes.
    """

    SERVICE: Final = "svc"

    def __init__(self, root: Path | None = None) -> None:
        self.root: Path | None = root
        self._own_root = root is None
        self.servers: dict[int, RedisNode] = {}
        self.sentinel: RedisNode | None = None

    def __enter__(self) -> SentinelRig:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> SentinelRig:
        """Start the master, the replica, then the Sentinel; wait until it sees both.

        Raises:
            RigError: a process did not start or the Sentinel did not see the pair.
        """
        require_redis_server()
        if self.root is None:
            self.root = Path(tempfile.mkdtemp(prefix="roomcast-redis-sentinel-"))
        try:
            master, replica = _start_on_free_ports(self._make_pair, 2, bus=False)
            self.servers = {master.port: master, replica.port: replica}
            (self.sentinel,) = _start_on_free_ports(
                lambda ports: [self._make_sentinel(ports[0], master.port)], 1, bus=False
            )
            self.wait_watched(master.port)
        except BaseException:
            self.stop()
            raise
        return self

    def _make_pair(self, ports: list[int]) -> list[RedisNode]:
        master_port, replica_port = ports
        assert self.root is not None
        master = RedisNode(master_port, self.root / str(master_port), SERVER_SETTINGS)
        replica = RedisNode(
            replica_port,
            self.root / str(replica_port),
            (*SERVER_SETTINGS, ("replicaof", f"{HOST} {master_port}")),
        )
        return [master, replica]

    def _make_sentinel(self, port: int, master_port: int) -> RedisNode:
        assert self.root is not None
        directory = self.root / f"sentinel-{port}"
        directory.mkdir(parents=True, exist_ok=True)
        config = directory / "sentinel.conf"  # Sentinel rewrites it: a file of its own
        lines = [f"sentinel monitor {self.SERVICE} {HOST} {master_port} 1"]
        lines += [f"sentinel {name} {self.SERVICE} {value}" for name, value in SENTINEL_SETTINGS]
        config.write_text("\n".join(lines) + "\n")
        return RedisNode(port, directory, (), config=config, sentinel=True)

    def stop(self) -> None:
        """Kill this rig's processes (by pid) and remove its directory."""
        if self.sentinel is not None:
            self.sentinel.kill()
        for node in self.servers.values():
            node.kill()
        if self._own_root and self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)

    @property
    def sentinel_port(self) -> int:
        assert self.sentinel is not None
        return self.sentinel.port

    @property
    def url(self) -> str:
        """``redis+sentinel://127.0.0.1:SPORT/svc``."""
        return f"redis+sentinel://{HOST}:{self.sentinel_port}/{self.SERVICE}"

    def master_port(self) -> int:
        """The port of the master as the Sentinel names it now."""
        reply = _ask(self.sentinel_port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.SERVICE)
        if not reply:
            raise RigError(f"the Sentinel names no master\n{self.logs()}")
        return int(reply[1])

    def wait_watched(self, master: int, timeout: float = CLUSTER_TIMEOUT) -> None:
        """Wait until the Sentinel names ``master``, sees it up, and sees a replica in sync."""

        def watched() -> bool:
            reply = _ask(self.sentinel_port, "SENTINEL", "MASTER", self.SERVICE)
            if not isinstance(reply, dict) or int(reply.get("port", 0)) != master:
                return False
            if reply.get("flags") != "master" or int(reply.get("num-slaves", 0)) < 1:
                return False
            replicas = _ask(self.sentinel_port, "SENTINEL", "REPLICAS", self.SERVICE) or []
            return any(
                r.get("flags") == "slave"
                and r.get("master-link-status") == "ok"
                and int(r.get("master-port", 0)) == master
                for r in replicas
            )

        _wait(f"the Sentinel to watch master {master}", watched, timeout, self.logs)

    def kill_master(self) -> int:
        """SIGKILL the current master; its port."""
        port = self.master_port()
        self.servers[port].kill()
        return port

    def wait_for_failover(self, dead: int, timeout: float = FAILOVER_TIMEOUT) -> int:
        """Wait until the Sentinel names a new master that says ``role:master``; its port."""

        def promoted() -> int | None:
            reply = _ask(self.sentinel_port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.SERVICE)
            if not reply or int(reply[1]) == dead:
                return None
            port = int(reply[1])
            info = _ask(port, "INFO", "replication")
            if not isinstance(info, dict) or info.get("role") != "master":
                return None
            return port

        return _wait(f"Sentinel failover from {dead}", promoted, timeout, self.logs)

    def fail_over(self) -> tuple[int, int]:
        """Kill the master and wait for the Sentinel to promote the replica: (old, new) ports."""
        dead = self.kill_master()
        return dead, self.wait_for_failover(dead)

    def logs(self) -> str:
        """The last lines of every process's log."""
        nodes = [*self.servers.values(), *([self.sentinel] if self.sentinel else [])]
        return "\n".join(node.tail() for node in nodes)


# -- fixtures (loaded by tests/conftest.py) ----------------------------------------


@pytest.fixture(scope="session")
def redis_cluster_rig() -> Iterator[RedisClusterRig]:
    """One Redis Cluster per test process: creating one takes seconds."""
    with RedisClusterRig() as rig:
        yield rig


@pytest.fixture
def redis_cluster(redis_cluster_rig: RedisClusterRig) -> Iterator[RedisClusterRig]:
    """The session's Redis Cluster, whole again after the test (killed nodes restarted)."""
    redis_cluster_rig.heal()
    yield redis_cluster_rig
    redis_cluster_rig.heal()


@pytest.fixture
def redis_sentinel() -> Iterator[SentinelRig]:
    """A master, a replica and a Sentinel of the test's own (they start in about a second)."""
    with SentinelRig() as rig:
        yield rig
