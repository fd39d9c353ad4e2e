"""For every test: under ``ROOMCAST_TEST_OFFLINE=1`` (``make unit``) no test opens a network socket.

The guard makes the promise of ``make unit`` checked rather than said: a
unit test that connects to or listens on an IP address fails with a clear
message. Unix socket pairs (the event loop's self-pipe) are allowed.
"""

from __future__ import annotations

import os
import socket
from typing import Any

import pytest

#: The Redis Cluster and Sentinel fixtures (real redis-server processes of the tests' own).
pytest_plugins = ("tests.redis_servers",)

_NETWORK = (socket.AF_INET, socket.AF_INET6)


class NetworkInUnitTest(RuntimeError):
    """A unit test reached for the network."""


def _guarded(name: str) -> Any:
    original = getattr(socket.socket, name)

    def guarded(self: socket.socket, *args: Any) -> Any:
        if self.family in _NETWORK:
            raise NetworkInUnitTest(
                f"socket.{name}{args!r} in a unit test: make unit uses no network;"
                " move the test to tests/integration or mark it postgres/redis"
            )
        return original(self, *args)

    return guarded


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get("ROOMCAST_TEST_OFFLINE") == "1":
        for name in ("connect", "connect_ex", "bind"):
            setattr(socket.socket, name, _guarded(name))
