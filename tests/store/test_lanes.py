"""Writer lanes: one node's batches written at once (issue 22), and what must still hold.

The lane of a draft (:func:`~roomcast.store.batch.lane_of`) and the queue's
lanes are checked alone; then a PostgreSQL store with several lanes is
driven hard: seqs stay gapless and in order per room and per inbox, a
resend is stored once, a change lands after its message, ``flush`` and
``close`` wait for every lane, and a batch PostgreSQL aborts to break a
deadlock is tried again.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from roomcast.exceptions import StoreBusy
from roomcast.model import Change
from roomcast.store.base import AppendResult, DirectResult, Draft
from roomcast.store.batch import WriteQueue, lane_of
from roomcast.store.postgres import WRITE_LANES, PostgresStore
from roomcast.store.sqlite import SQLiteStore
from tests.services import afresh_database
from tests.store.backends import opened

LANES = 4


# -- which lane ---------------------------------------------------------------------------


def test_one_lane_is_lane_zero() -> None:
    """With one lane (SQLite) every room and conversation is in lane 0."""
    assert {lane_of(f"r{i}", "ann", None, 1) for i in range(50)} == {0}
    assert lane_of(None, "ann", "bob", 1) == 0


def test_a_room_has_one_lane_whoever_sends() -> None:
    """Every draft of a room, from any sender, is in the same lane, within range."""
    for i in range(200):
        lanes = {lane_of(f"room-{i}", sender, None, LANES) for sender in ("ann", "bob", "cat")}
        assert len(lanes) == 1 and 0 <= lanes.pop() < LANES


def test_a_conversation_has_one_lane_whichever_side_sends() -> None:
    """ann to bob and bob to ann (a message and the other side's reaction to it) share a lane."""
    for i in range(200):
        one, two = f"user{i}", f"peer{i * 7}"
        assert lane_of(None, one, two, LANES) == lane_of(None, two, one, LANES)


def test_a_change_goes_to_its_messages_lane() -> None:
    """A room change names the room, a direct one the other side: the message's lane either way."""
    chat = Draft("ann", room="kitchen", text="hi")
    edit = Draft("bob", room="kitchen", kind="react", target="m1", text="👍")
    assert lane_of(chat.room, chat.sender, chat.to, LANES) == lane_of(
        edit.room, edit.sender, edit.to, LANES
    )
    sent = Draft("ann", to="bob", text="hi")
    reacted = Draft("bob", to="ann", kind="react", target="m2", text="👍")
    assert lane_of(sent.room, sent.sender, sent.to, LANES) == lane_of(
        reacted.room, reacted.sender, reacted.to, LANES
    )


def test_rooms_spread_over_the_lanes() -> None:
    """200 rooms fill every lane, none with more than twice its share."""
    counts = Counter(lane_of(f"room-{i}", "s", None, LANES) for i in range(200))
    assert set(counts) == set(range(LANES))
    assert max(counts.values()) <= 2 * 200 // LANES


def test_odd_names_have_a_lane() -> None:
    """Names with any characters (a lone surrogate too) get a lane, the same each time."""
    for name in ("", "ü", "🙂", "\ud800", "a\0b"):
        assert lane_of(name, "s", None, LANES) == lane_of(name, "t", None, LANES)


# -- the queue's lanes and batches ------------------------------------------------------


def queue_of(loop: asyncio.AbstractEventLoop, drafts: int, rooms: int) -> WriteQueue:
    """A 4-lane queue (overlap 4) with ``drafts`` drafts over ``rooms`` rooms, in turn."""
    queue = WriteQueue(lanes=LANES, overlap=4)
    for i in range(drafts):
        room = f"room-{i % rooms}"
        _, lane = queue.add(loop, Draft("ann", room=room, text=f"{room}/{i // rooms}"))
        assert lane == lane_of(room, "ann", None, LANES)
    return queue


async def test_little_waiting_is_one_batch_in_append_order() -> None:
    """Under the overlap, every lane's drafts go in one batch, in the order they came."""
    queue = queue_of(asyncio.get_running_loop(), 3, 3)
    ((batch, lanes),) = queue.take(LANES)
    assert [item.text for item in batch] == ["room-0/0", "room-1/0", "room-2/0"]
    assert sorted(lanes) == sorted({lane_of(f"room-{i}", "", None, LANES) for i in range(3)})
    assert queue.writing == 1 and queue.queued == 0 and all(queue.busy[lane] for lane in lanes)


async def test_much_waiting_is_shared_out_by_lane() -> None:
    """Past the overlap, up to one batch per writer; a lane (and room) in one batch only."""
    queue = queue_of(asyncio.get_running_loop(), 120, 12)
    batches = queue.take(LANES)
    assert len(batches) == LANES and queue.writing == LANES and queue.queued == 0
    held = [lane for _, lanes in batches for lane in lanes]
    assert sorted(held) == list(range(LANES))
    for batch, lanes in batches:
        assert {lane_of(item.room, "", None, LANES) for item in batch} == set(lanes)
        for room in {item.room for item in batch}:
            texts = [item.text for item in batch if item.room == room]
            assert texts == [f"{room}/{k}" for k in range(10)]
    assert queue.take(LANES) == []


async def test_a_held_lane_waits_and_a_small_rest_waits_for_the_batch() -> None:
    """While a batch is written, its lanes wait; fewer than overlap elsewhere wait too."""
    loop = asyncio.get_running_loop()
    queue = WriteQueue(lanes=LANES, overlap=4)
    rooms = [f"room-{i}" for i in range(40)]
    home = lane_of(rooms[0], "", None, LANES)
    same = [r for r in rooms if lane_of(r, "", None, LANES) == home]
    other = [r for r in rooms if lane_of(r, "", None, LANES) != home]
    queue.add(loop, Draft("ann", room=same[0], text="first"))
    ((first, lanes),) = queue.take(LANES)
    assert lanes == (home,)
    for room in same[:5]:
        queue.add(loop, Draft("ann", room=room, text="held"))
    for room in other[:3]:
        queue.add(loop, Draft("ann", room=room, text="few"))
    assert queue.take(LANES) == []  # its lane is held; 3 elsewhere are under the overlap
    queue.add(loop, Draft("ann", room=other[3], text="enough"))
    beside = queue.take(LANES)
    assert sum(len(batch) for batch, _ in beside) == 4
    assert all(home not in held for _, held in beside)
    queue.finish(first, [RuntimeError("x")], lanes=lanes)
    ((after, _),) = queue.take(LANES)
    assert [item.text for item in after] == ["held"] * 5


async def test_queue_is_idle_only_when_every_batch_is_done() -> None:
    """wait_idle() returns once the last batch being written is finished, not the first."""
    queue = queue_of(asyncio.get_running_loop(), 120, 12)
    batches = queue.take(LANES)
    waiter = asyncio.ensure_future(queue.wait_idle())
    for batch, lanes in batches[:-1]:
        queue.finish(batch, [RuntimeError("x")] * len(batch), lanes=lanes)
        await asyncio.sleep(0)
        assert not queue.idle() and not waiter.done()
    batch, lanes = batches[-1]
    queue.finish(batch, [RuntimeError("x")] * len(batch), lanes=lanes)
    assert queue.idle()
    queue.wake_idle()
    await asyncio.wait_for(waiter, 1)


async def test_queue_bound_counts_every_lane() -> None:
    """The bound on waiting drafts is over all lanes; a resend of a queued one is still folded."""
    loop = asyncio.get_running_loop()
    queue = WriteQueue(limit=5, lanes=LANES)
    futures = [
        queue.add(loop, Draft("ann", room=f"r{i}", text="x", client_id=f"c{i}"))[0]
        for i in range(5)
    ]
    refused, lane = queue.add(loop, Draft("ann", room="r9", text="x", client_id="c9"))
    assert lane is None and isinstance(refused.exception(), StoreBusy)
    resend, lane = queue.add(loop, Draft("ann", room="r0", text="x", client_id="c0"))
    assert lane is None and not resend.done()
    assert queue.queued == 5 and not any(f.done() for f in futures)


# -- PostgreSQL with several lanes ---------------------------------------------------------


@pytest.fixture
async def url() -> AsyncIterator[str]:
    """The URL of an empty database of this test's own."""
    async with afresh_database() as fresh:
        yield fresh


async def open_nodes(stack: AsyncExitStack, url: str, count: int) -> list[PostgresStore]:
    """``count`` stores with :data:`LANES` lanes on ``url``, closed when ``stack`` ends."""
    stores = [PostgresStore(url, write_lanes=LANES) for _ in range(count)]
    for store in stores:
        await store.open()
        stack.push_async_callback(store.close)
    return stores


def gapless(seqs: list[int]) -> bool:
    """Whether ``seqs``, sorted, are 1..n."""
    return sorted(seqs) == list(range(1, len(seqs) + 1))


def increasing(seqs: list[int]) -> bool:
    """Whether ``seqs`` strictly increase."""
    return all(a < b for a, b in zip(seqs, seqs[1:], strict=False))


def watch_overlap(store: PostgresStore) -> list[int]:
    """The most batches seen being written at once, kept current in the returned list."""
    most = [0]

    def on_batch(_size: int, _seconds: float) -> None:
        most[0] = max(most[0], store._queue.writing)

    store.on_batch = on_batch
    return most


@pytest.mark.postgres
async def test_postgres_store_writes_with_its_lanes(url: str) -> None:
    """A PostgresStore has WRITE_LANES lanes, at most half its pool, at least one."""
    assert WRITE_LANES >= 2
    assert PostgresStore(url)._queue.lanes == WRITE_LANES
    assert PostgresStore(url, pool_size=4)._queue.lanes == 2
    assert PostgresStore(url, pool_size=2)._queue.lanes == 1
    assert PostgresStore(url, write_lanes=1)._queue.lanes == 1
    with pytest.raises(ValueError, match="write_lanes"):
        PostgresStore(url, write_lanes=0)


@pytest.mark.postgres
async def test_many_writers_over_many_rooms_and_conversations_get_gapless_ordered_seqs(
    url: str,
) -> None:
    """60 rooms, 30 conversations, mentions, two 4-lane nodes at once: each seq once, in order."""
    rng = random.Random(22)
    users = [f"u{i:02d}" for i in range(16)]
    rooms = [f"room-{i}" for i in range(60)]
    pairs = sorted({tuple(sorted(rng.sample(users, 2))) for _ in range(40)})[:30]
    async with AsyncExitStack() as stack:
        one, two = await open_nodes(stack, url, 2)
        for name in users:
            await one.create_user(name, "h")
        overlap = [watch_overlap(one), watch_overlap(two)]
        sent: dict[str, list[AppendResult]] = defaultdict(list)
        direct: dict[tuple[str, str], list[DirectResult]] = defaultdict(list)

        async def room_sender(node: PostgresStore, room: str, name: str, n: int) -> None:
            # Four at a time without waiting: the lane must keep their order.
            futures: list[asyncio.Future[Any]] = []
            for i in range(n):
                mentions = (users[(i + len(room)) % len(users)],) if i % 3 == 0 else ()
                text, frame = f"{name} {i}", f"{room}-{i}"
                draft = Draft(name, room=room, text=text, client_id=frame, mentions=mentions)
                futures.append(node.submit(draft))
                if i % 4 == 3:
                    sent[f"{room}/{name}"] += await asyncio.gather(*futures[-4:])

        async def direct_sender(node: PostgresStore, name: str, peer: str, n: int) -> None:
            futures = [
                node.append_direct(name, peer, f"{i}", client_id=f"{peer}-{i}") for i in range(n)
            ]
            direct[(name, peer)] += await asyncio.gather(*futures)

        jobs = []
        for r, room in enumerate(rooms):
            for k in range(3):
                node = one if (r + k) % 2 else two
                jobs.append(room_sender(node, room, users[(r + k) % len(users)], 8))
        for p, (a, b) in enumerate(pairs):
            jobs.append(direct_sender(one if p % 2 else two, a, b, 6))
            jobs.append(direct_sender(two if p % 2 else one, b, a, 6))
        await asyncio.gather(*jobs)

        assert max(overlap[0][0], overlap[1][0]) >= 2  # batches were written at once
        for room in rooms:
            results = [r for key, rs in sent.items() if key.startswith(room + "/") for r in rs]
            seqs = [r.message.seq for r in results if r.message.seq is not None]
            assert gapless(seqs), room
            assert await two.last_seq(room) == len(seqs)
        for key, results in sent.items():
            assert increasing([r.message.seq or 0 for r in results]), key
            assert not any(r.duplicate for r in results)
        for (a, b), replies in direct.items():
            assert increasing([r.sender_seq for r in replies]), (a, b)
            assert increasing([r.recipient_seq for r in replies]), (a, b)
        for name in users:
            inbox, _ = await one.direct_since(name, 0, limit=10_000)
            assert [event.seq for event in inbox] == list(range(1, len(inbox) + 1)), name
            assert await two.direct_last_seq(name) == len(inbox)


@pytest.mark.postgres
async def test_a_resend_sent_at_once_to_lanes_and_nodes_is_stored_once(url: str) -> None:
    """A frame id given three times at once to each of two nodes is one message, five copies."""
    async with AsyncExitStack() as stack:
        one, two = await open_nodes(stack, url, 2)
        for name in ("ann", "bob"):
            await one.create_user(name, "h")
        room_futures: dict[tuple[str, str], list[asyncio.Future[Any]]] = defaultdict(list)
        for i in range(40):
            room, frame = f"room-{i % 20}", f"f{i}"
            for node in (one, two, one, two, two, one):
                room_futures[(room, frame)].append(node.append(room, "ann", frame, client_id=frame))
        # The same frame id in two rooms (two lanes, one sender) is two messages.
        twice = [one.append(f"room-{i}", "ann", "same", client_id="same") for i in range(4)]
        direct_futures = [
            [
                node.append_direct("ann", "bob", f"d{i}", client_id=f"d{i}")
                for node in (two, one) * 3
            ]
            for i in range(20)
        ]
        for key, futures in room_futures.items():
            results = await asyncio.gather(*futures)
            assert len({r.message for r in results}) == 1, key
            assert [r.duplicate for r in results].count(False) == 1, key
        for futures in direct_futures:
            direct = await asyncio.gather(*futures)
            assert len({(r.message, r.sender_seq, r.recipient_seq) for r in direct}) == 1
            assert [r.duplicate for r in direct].count(False) == 1
        assert not any(r.duplicate for r in await asyncio.gather(*twice))
        rows = await fetch(url, "SELECT room, client_id, count(*) FROM messages GROUP BY 1, 2")
        assert all(count == 1 for _, _, count in rows) and len(rows) == 44
        assert await two.direct_last_seq("bob") == 20


@pytest.mark.postgres
async def test_changes_queued_at_once_land_after_their_message_in_queue_order(url: str) -> None:
    """Changes queued at once over 40 rooms and 10 conversations keep their queue order."""
    async with AsyncExitStack() as stack:
        (store,) = await open_nodes(stack, url, 1)
        for name in ("ann", "bob"):
            await store.create_user(name, "h")
        peers = [f"p{i}" for i in range(10)]
        for name in peers:
            await store.create_user(name, "h")
        rooms = [f"room-{i}" for i in range(40)]
        firsts = {room: (await store.append(room, "ann", "first")).message for room in rooms}
        dms = {peer: (await store.append_direct("ann", peer, "first")).message for peer in peers}
        queued: dict[str, list[asyncio.Future[Any]]] = {}
        for room, first in firsts.items():
            target = first.message_id
            queued[room] = [
                store.append(room, "bob", "before"),
                store.submit(Draft("ann", room=room, kind="edit", target=target, text="edited")),
                store.submit(Draft("bob", room=room, kind="react", target=target, text="👍")),
                store.append(room, "bob", "between"),
                store.submit(Draft("ann", room=room, kind="delete", target=target)),
                store.submit(Draft("bob", room=room, kind="react", target=target, text="🎉")),
            ]
        direct_queued = {
            peer: [
                store.submit(Draft("ann", to=peer, kind="edit", target=dm.message_id, text="e")),
                store.submit(Draft(peer, to="ann", kind="react", target=dm.message_id, text="👍")),
                store.submit(Draft("ann", to=peer, kind="delete", target=dm.message_id)),
            ]
            for peer, dm in dms.items()
        }
        # A message and, the moment it is stored, an edit of it: the edit comes after.
        late: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        def edit_at_once(stored: asyncio.Future[Any]) -> None:
            message = stored.result().message
            edit = Draft("ann", room="late", kind="edit", target=message.message_id, text="b")
            store.submit(edit).add_done_callback(lambda done: late.set_result(done.result()))

        store.append("late", "ann", "a").add_done_callback(edit_at_once)
        for room, futures in queued.items():
            outcomes = await asyncio.gather(*futures, return_exceptions=True)
            assert [getattr(o.message, "seq", None) for o in outcomes[:5]] == [2, 3, 4, 5, 6]
            assert isinstance(outcomes[5], Exception)  # a reaction to a deleted message
            page, _ = await store.history(room)
            assert [(m.seq, m.message, m.deleted) for m in page] == [
                (1, "", True),
                (2, "before", False),
                (5, "between", False),
            ]
        for peer, futures in direct_queued.items():
            edit, react, delete = await asyncio.gather(*futures)
            in_peers = [edit.recipient_seq, react.sender_seq, delete.recipient_seq]
            assert in_peers == [2, 3, 4], peer
        anns, _ = await store.direct_since("ann", 0, limit=100)
        assert [event.seq for event in anns] == list(range(1, 41))
        edit = await asyncio.wait_for(late, 10)
        assert isinstance(edit.message, Change) and edit.message.seq == 2
        (message,), _ = await store.history("late")
        assert message.message == "b" and message.seq == 1


@pytest.mark.postgres
async def test_flush_and_close_wait_for_every_lane(url: str) -> None:
    """flush() returns with every lane's batch stored; close() stores what is queued, then ends."""
    store = PostgresStore(url, write_lanes=LANES)
    await store.open()
    futures = [store.append(f"room-{i % 50}", "ann", f"m{i}") for i in range(500)]
    assert len({lane_of(f"room-{i}", "", None, LANES) for i in range(50)}) == LANES
    await store.flush()
    assert all(f.done() and not f.exception() for f in futures)
    assert store._queue.idle()
    more = [store.append(f"room-{i % 50}", "bob", f"n{i}") for i in range(500)]
    await store.close()
    assert all(f.done() and not f.exception() for f in more)
    async with AsyncExitStack() as stack:
        (again,) = await open_nodes(stack, url, 1)
        for i in range(50):
            assert await again.last_seq(f"room-{i}") == 20


async def test_sqlite_flush_and_close_wait_for_its_one_lane(tmp_path: Path) -> None:
    """SQLite keeps its single writer; flush and close still wait for everything queued."""
    async with opened("sqlite", tmp_path) as store:
        assert isinstance(store, SQLiteStore) and store._queue.lanes == 1
        futures = [store.append(f"room-{i % 5}", "ann", f"m{i}") for i in range(100)]
        await store.flush()
        assert all(f.done() and not f.exception() for f in futures)
        more = [store.append("room-0", "ann", f"n{i}") for i in range(50)]
    assert all(f.done() and not f.exception() for f in more)


@pytest.mark.postgres
async def test_a_batch_aborted_to_break_a_deadlock_is_tried_again(
    url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A batch PostgreSQL aborts as a deadlock's victim is retried and stored once."""
    caplog.set_level(logging.INFO, logger="roomcast.store.postgres")
    store = PostgresStore(url, write_lanes=LANES)
    await store.open()
    holder = await asyncpg.connect(url)
    try:
        await store.create_user("bob", "h")
        assert (await store.append("r", "ann", "one")).message.seq == 1
        tx = holder.transaction()
        await tx.start()
        await holder.execute("SELECT 1 FROM users WHERE name = 'bob' FOR UPDATE")
        # The batch locks room r, then waits for bob's inbox, which the holder has.
        pending = store.submit(Draft("ann", room="r", text="hi @bob", mentions=("bob",)))
        await waiting_for_a_lock(holder)
        # The holder now waits for room r: a cycle, and the batch is its victim.
        await holder.execute("SELECT 1 FROM rooms WHERE name = 'r' FOR UPDATE")
        await tx.commit()
        result = await asyncio.wait_for(pending, 10)
        assert result.message.seq == 2 and result.mentioned == (("bob", 1),)
        assert "deadlock" in caplog.text
        assert [m.seq for m in await store.since("r", 0, limit=10)] == [1, 2]
    finally:
        await holder.close()
        await store.close()


async def waiting_for_a_lock(conn: asyncpg.Connection) -> None:
    """Until some roomcast session of this database waits for a lock (10 s at most)."""
    for _ in range(200):
        waiting = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND application_name = 'roomcast' AND wait_event_type = 'Lock'"
        )
        if waiting:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("no roomcast session waited for the lock")


async def fetch(url: str, query: str, *args: Any) -> list[tuple[Any, ...]]:
    """Rows of ``query`` on ``url``, read straight from the server."""
    conn = await asyncpg.connect(url)
    try:
        return [tuple(row) for row in await conn.fetch(query, *args)]
    finally:
        await conn.close()
