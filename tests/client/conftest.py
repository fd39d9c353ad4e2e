"""Fixtures of the client's unit tests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest


@pytest.fixture
async def reader() -> AsyncIterator[asyncio.Future[None]]:
    """A reader task that never ends (the connection stays up)."""
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    yield future
    future.cancel()
