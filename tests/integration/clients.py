"""Helpers for tests that drive the Python client against a real server."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Any

from roomcast.client import Client
from roomcast.client.backoff import Backoff


def fast_backoff(seed: int = 0) -> Backoff:
    """Reconnects within 0.4 s, for tests (the defaults are 0.5 s first, 30 s cap)."""
    return Backoff(first=0.05, cap=0.4, stable=60.0, rng=random.Random(seed))


async def wait_for(predicate: Callable[[], bool], timeout: float = 15.0) -> None:
    """Poll ``predicate`` every 20 ms until it holds; fail after ``timeout`` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def collect(client: Client) -> list[Any]:
    """Every event the client delivers, in order, through a callback."""
    seen: list[Any] = []
    client.on(None, seen.append)
    return seen
