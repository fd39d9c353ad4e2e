"""A search that reads for too long is cut off and refused, and the store goes on answering."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from roomcast.exceptions import InvalidRequest
from roomcast.query import parse_query
from roomcast.store import postgres, sqlite
from roomcast.store.base import SearchFilter, Store
from roomcast.store.sql import SEARCH_TOO_LONG
from tests.store.backends import opened


async def many(store: Store, count: int) -> None:
    for start in range(0, count, 500):
        await asyncio.gather(
            *(store.append("room", "alice", f"shared words {n}") for n in range(start, start + 500))
        )


async def test_sqlite_interrupts_a_search_past_its_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past the deadline the search is InvalidRequest saying why; the next search works."""
    async with opened("sqlite", tmp_path) as store:
        await many(store, 2000)
        everything = SearchFilter(parse_query("shared"), None, limit=50, relevance=True)
        monkeypatch.setattr(sqlite, "SEARCH_TIMEOUT", -1.0)
        with pytest.raises(InvalidRequest, match="took too long") as refused:
            await store.search(everything)
        assert str(refused.value) == SEARCH_TOO_LONG
        monkeypatch.undo()
        hits, _cursor = await store.search(everything)
        assert len(hits) == 50


@pytest.mark.postgres
async def test_postgres_cancels_a_search_past_its_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL's statement timeout cancels it: InvalidRequest, and the pool still answers."""
    async with opened("postgres", tmp_path) as store:
        await many(store, 20000)
        everything = SearchFilter(parse_query("shared"), None, limit=50, relevance=True)
        monkeypatch.setattr(postgres, "SEARCH_TIMEOUT", 0.001)
        with pytest.raises(InvalidRequest, match="took too long"):
            await store.search(everything)
        monkeypatch.undo()
        hits, _cursor = await store.search(everything)
        assert len(hits) == 50
