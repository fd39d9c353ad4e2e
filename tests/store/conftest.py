"""The ``store`` fixture: every store implementation, opened on a fake clock."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from roomcast.store.base import Store
from tests.fakes import Clock
from tests.store.backends import opened


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def store(
    request: pytest.FixtureRequest, clock: Clock, tmp_path: Path
) -> AsyncIterator[Store]:
    async with opened(request.param, tmp_path, clock=clock) as backend:
        yield backend
