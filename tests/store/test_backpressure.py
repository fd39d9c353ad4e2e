"""The batching stores' bound on waiting messages, against SQLite and PostgreSQL.

When more messages arrive than the database takes, a store refuses what
goes past ``max_queued`` with :class:`StoreBusy` (the node turns it into
``rate_limited``) instead of queueing without end.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from roomcast.exceptions import StoreBusy, StoreError
from roomcast.store.batch import BUSY_RETRY_AFTER
from roomcast.store.postgres import PostgresStore
from roomcast.store.sqlite import SQLiteStore
from tests.store.backends import opened

LIMIT = 5


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def store(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[SQLiteStore | PostgresStore]:
    async with opened(request.param, tmp_path, max_queued=LIMIT) as backend:
        assert isinstance(backend, SQLiteStore | PostgresStore)
        yield backend


async def test_appends_past_the_bound_are_refused_and_the_rest_stored(
    store: SQLiteStore | PostgresStore,
) -> None:
    """Of 20 appends queued at once, the first 5 are stored gapless and 15 fail with StoreBusy."""
    futures = [store.append("r", "ann", f"m{i}", client_id=f"c{i}") for i in range(20)]
    outcomes = await asyncio.gather(*futures, return_exceptions=True)
    stored = [o for o in outcomes if not isinstance(o, BaseException)]
    refused = [o for o in outcomes if isinstance(o, BaseException)]
    assert [r.message.message for r in stored] == [f"m{i}" for i in range(LIMIT)]
    assert [r.message.seq for r in stored] == list(range(1, LIMIT + 1))
    assert len(refused) == 20 - LIMIT
    for failure in refused:
        assert isinstance(failure, StoreBusy) and isinstance(failure, StoreError)
        assert 0.5 * BUSY_RETRY_AFTER <= failure.retry_after <= 1.5 * BUSY_RETRY_AFTER
    assert await store.last_seq("r") == LIMIT
    assert [m.message for m in (await store.history("r"))[0]] == [f"m{i}" for i in range(LIMIT)]


async def test_a_refused_message_is_stored_when_sent_again(
    store: SQLiteStore | PostgresStore,
) -> None:
    """After the queue drains, the refused message sent again is stored once, with the next seq."""
    futures = [store.append("r", "ann", f"m{i}", client_id=f"c{i}") for i in range(LIMIT + 1)]
    outcomes = await asyncio.gather(*futures, return_exceptions=True)
    assert isinstance(outcomes[-1], StoreBusy)
    again = await store.append("r", "ann", f"m{LIMIT}", client_id=f"c{LIMIT}")
    assert not again.duplicate and again.message.seq == LIMIT + 1
    assert [m.seq for m in (await store.history("r"))[0]] == list(range(1, LIMIT + 2))


async def test_a_resend_of_a_queued_message_is_not_refused(
    store: SQLiteStore | PostgresStore,
) -> None:
    """A full queue still folds a resend of a message it holds into the first copy."""
    futures = [store.append("r", "ann", f"m{i}", client_id=f"c{i}") for i in range(LIMIT)]
    resend = store.append("r", "ann", "m0", client_id="c0")
    first = await futures[0]
    again = await resend
    assert again.duplicate and again.message == first.message
    await asyncio.gather(*futures)
    assert await store.last_seq("r") == LIMIT
