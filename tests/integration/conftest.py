"""End-to-end fixtures: real servers on port 0, stopped by their own PID."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.integration.redis_nodes import Clients
from tests.integration.serverproc import ServerFactory, ServerProcess, start_server
from tests.integration.users import sign_up

#: The users the ``tokens`` fixture registers.
USERS = ("alice", "bob", "carol")


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[ServerFactory]:
    """Start servers with extra flags; every one is stopped after the test."""
    started: list[ServerProcess] = []

    def factory(*args: str, env: dict[str, str] | None = None) -> ServerProcess:
        server = start_server(tmp_path, *args, env=env)
        started.append(server)
        return server

    yield factory
    for server in started:
        server.stop()


@pytest.fixture
def server(server_factory: ServerFactory) -> ServerProcess:
    """A server with default settings."""
    return server_factory()


@pytest.fixture
async def tokens(server: ServerProcess) -> dict[str, str]:
    """alice, bob and carol registered and logged in on the test's ``server``: tokens by name."""
    signed = await asyncio.gather(*(sign_up(server, name) for name in USERS))
    return dict(zip(USERS, signed, strict=True))


@pytest.fixture
async def ws_clients() -> AsyncIterator[Clients]:
    """The test's WebSocket connections, closed after it."""
    group = Clients()
    try:
        yield group
    finally:
        await group.close()
