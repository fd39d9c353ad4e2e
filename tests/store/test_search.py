"""The Store contract for full-text search, run against every store.

Memory, SQLite (FTS5) and PostgreSQL (a GIN tsvector index) must find the
same messages for the same search: only what the reader may read as the
store says now, by the messages' current text, from the moment an append
resolves; newest first or best first, in pages that join up exactly. A
query is parsed once (``roomcast.query``): whatever a user types reaches
an engine as text to find, so no query makes a store fail.
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from roomcast.exceptions import InvalidRequest
from roomcast.model import ChatMessage, DirectMessage, SearchHit
from roomcast.query import MAX_QUERY_CHARS, parse_query
from roomcast.store.base import AppendResult, DirectResult, Draft, SearchFilter, Store
from roomcast.store.memory import MemoryStore
from roomcast.store.schema import LATEST_VERSION
from tests.fakes import Clock
from tests.store.backends import Database, database, opened
from tests.store.test_contract import schema_at


async def users(store: Store, *names: str) -> None:
    for name in names:
        assert await store.create_user(name, "hash")


async def search(
    store: Store, q: str, reader: str | None, **filters: Any
) -> tuple[list[SearchHit], str | None]:
    """One page of ``q`` for ``reader``."""
    return await store.search(SearchFilter(parse_query(q), reader, **filters))


async def texts(store: Store, q: str, reader: str | None, **filters: Any) -> list[str]:
    """The texts of the first page (up to 50) of ``q`` for ``reader``, in order."""
    hits, _ = await search(store, q, reader, limit=50, **filters)
    return [hit.message.message for hit in hits]


async def every_page(store: Store, wanted: SearchFilter) -> list[list[SearchHit]]:
    """Each page of ``wanted``, following the cursors to the last page."""
    pages = []
    cursor = None
    while True:
        hits, cursor = await store.search(replace(wanted, cursor=cursor))
        pages.append(hits)
        if cursor is None:
            return pages
        assert len(pages) < 100, "the cursors never end"


def ident(hit: SearchHit) -> tuple[str, int | None]:
    return hit.message.message_id, hit.message.seq


async def room_change(store: Store, kind: str, target: str, by: str, text: str = "") -> None:
    result = await store.submit(Draft(by, room="lobby", text=text, kind=kind, target=target))
    assert isinstance(result, AppendResult) and result.message.seq is not None


async def direct_change(
    store: Store, kind: str, target: str, by: str, to: str, text: str = ""
) -> None:
    result = await store.submit(Draft(by, to=to, text=text, kind=kind, target=target))
    assert isinstance(result, DirectResult) and result.sender_seq > 0


# -- found as soon as stored ---------------------------------------------------------------


async def test_a_message_is_found_as_soon_as_its_append_resolves(store: Store) -> None:
    """Each queued append is searchable the moment its future resolves (when it is acked)."""
    await users(store, "ann", "bob")
    futures = [store.append("lobby", "ann", f"batch word{i}") for i in range(20)]
    for i, future in enumerate(futures):
        stored = (await future).message
        hits, _ = await search(store, f"word{i}", None)
        assert [hit.message.message_id for hit in hits] == [stored.message_id]
    for i in range(5):
        sent = await store.append_direct("ann", "bob", f"direct word{i}")
        for side in ("ann", "bob"):
            hits, _ = await search(store, f"word{i}", side, direct=True)
            assert [hit.message.message_id for hit in hits] == [sent.message.message_id]


# -- the query --------------------------------------------------------------------------------


async def test_words_prefixes_phrases_and_exclusions(store: Store, clock: Clock) -> None:
    """Every word must match in any case; a prefix, a phrase in order; an exclusion must not."""
    for text in (
        "The deploy failed at noon",
        "deployment finished",
        "failed to deploy",
        "noon: the DEPLOY went fine",
    ):
        clock.now += 1
        await store.append("lobby", "ann", text)
    found = sorted(await texts(store, "deploy failed", None))
    assert found == ["The deploy failed at noon", "failed to deploy"]
    assert len(await texts(store, "deplo*", None)) == 4
    assert await texts(store, '"deploy failed"', None) == ["The deploy failed at noon"]
    assert await texts(store, '"failed deploy"', None) == []
    assert await texts(store, '"the deploy"', None) == [
        "noon: the DEPLOY went fine",
        "The deploy failed at noon",
    ]
    assert await texts(store, "deploy -failed", None) == ["noon: the DEPLOY went fine"]
    assert await texts(store, 'deploy -"deploy failed"', None) == [
        "noon: the DEPLOY went fine",
        "failed to deploy",
    ]
    assert await texts(store, "deplo* -deploy*", None) == []
    assert await texts(store, "rollback", None) == []


async def test_a_mention_is_found_once_as_its_room_message(store: Store) -> None:
    """A room message naming a user is one result, not also one in their direct stream."""
    await users(store, "ann", "bob")
    result = await store.submit(
        Draft("ann", room="lobby", text="@bob the deploy", mentions=("bob",))
    )
    assert isinstance(result, AppendResult)
    hits, _ = await search(store, "deploy", "bob")
    assert [(hit.message.message_id, hit.peer) for hit in hits] == [
        (result.message.message_id, None)
    ]


# -- who may read what ------------------------------------------------------------------------


async def test_a_guest_finds_public_rooms_only(store: Store) -> None:
    """Reader None: public rooms; never a private room's messages nor anyone's direct ones."""
    await users(store, "ann", "bob")
    await store.create_room("team", owner="ann", private=True, members=frozenset({"bob"}))
    await store.create_room("open", owner="ann", private=False, members=frozenset())
    await store.append("lobby", "ann", "deploy in the lobby")
    await store.append("open", "ann", "deploy in open")
    await store.append("team", "ann", "deploy in the team")
    await store.append_direct("ann", "bob", "deploy between us")
    assert sorted(await texts(store, "deploy", None)) == ["deploy in open", "deploy in the lobby"]
    assert await texts(store, "deploy", None, room="team") == []


async def test_a_private_room_is_found_by_its_owner_and_members_only(store: Store) -> None:
    """The owner and members find a private room's messages; others, even by room, do not."""
    await users(store, "ann", "bob", "cyd")
    await store.create_room("team", owner="ann", private=True, members=frozenset({"bob"}))
    await store.append("team", "ann", "the secret plan")
    for reader in ("ann", "bob"):
        assert await texts(store, "secret", reader) == ["the secret plan"]
        assert await texts(store, "secret", reader, room="team") == ["the secret plan"]
    assert await texts(store, "secret", "cyd") == []
    assert await texts(store, "secret", "cyd", room="team") == []
    await store.add_room_members("team", frozenset({"cyd"}))
    assert await texts(store, "secret", "cyd") == ["the secret plan"]


@dataclass
class Backend:
    """A store, and the database under it (None for the memory store)."""

    store: Store
    db: Database | None


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def backend(
    request: pytest.FixtureRequest, clock: Clock, tmp_path: Path
) -> AsyncIterator[Backend]:
    """Each store, with raw access to its database for what no store method does yet."""
    if request.param == "memory":
        async with opened("memory", tmp_path, clock=clock) as store:
            yield Backend(store, None)
        return
    async with database(request.param, tmp_path) as db, db.opened(clock=clock) as store:
        yield Backend(store, db)


async def remove_member(backend: Backend, room: str, name: str) -> None:
    """Take ``name`` out of private ``room``, as the removal route of issue 21 will."""
    if backend.db is None:
        assert isinstance(backend.store, MemoryStore)
        access = backend.store._access[room]
        backend.store._access[room] = replace(access, members=access.members - {name})
        return
    await backend.db.execute(f"DELETE FROM room_members WHERE room = '{room}' AND name = '{name}'")


async def test_a_member_taken_out_of_a_private_room_stops_finding_it(
    backend: Backend, clock: Clock
) -> None:
    """Who may read a room is read at each search: a removed member's next search misses it."""
    store = backend.store
    await users(store, "ann", "bob")
    await store.create_room("team", owner="ann", private=True, members=frozenset({"bob"}))
    await store.append("team", "ann", "the secret plan")
    clock.now += 1
    await store.append("lobby", "ann", "the public plan")
    assert await texts(store, "plan", "bob") == ["the public plan", "the secret plan"]
    await remove_member(backend, "team", "bob")
    assert await texts(store, "plan", "bob") == ["the public plan"]
    assert await texts(store, "plan", "bob", room="team") == []
    assert await texts(store, "plan", "ann") == ["the public plan", "the secret plan"]


async def test_direct_messages_are_found_by_their_two_sides_only(
    store: Store, clock: Clock
) -> None:
    """A direct message is found by its sender and recipient, with its seq in their stream."""
    await users(store, "ann", "bob", "cyd")
    await store.append_direct("cyd", "ann", "deploy from cyd")  # ann's seq 1
    clock.now += 1
    sent = await store.append_direct("ann", "bob", "deploy from ann")
    for reader, seq, peer in (("ann", sent.sender_seq, "bob"), ("bob", sent.recipient_seq, "ann")):
        hits, _ = await search(store, "deploy", reader, direct=True, peer=peer)
        assert [(hit.message.message, hit.message.seq, hit.peer) for hit in hits] == [
            ("deploy from ann", seq, peer)
        ]
        assert isinstance(hits[0].message, DirectMessage)
    assert (sent.sender_seq, sent.recipient_seq) == (2, 1)
    assert await texts(store, "deploy", "cyd") == ["deploy from cyd"]
    assert await texts(store, "deploy", "ann", direct=True) == [
        "deploy from ann",
        "deploy from cyd",
    ]
    assert await texts(store, "deploy", "ann", direct=True, peer="cyd") == ["deploy from cyd"]
    assert await texts(store, "deploy", "bob", direct=True, peer="cyd") == []
    assert await texts(store, "deploy", None) == []


async def test_a_note_to_self_is_one_result_with_the_writer_as_peer(store: Store) -> None:
    """A message to oneself is found once, its peer the writer, by peer=self too."""
    await users(store, "ann", "bob")
    note = await store.append_direct("ann", "ann", "remember the deploy")
    await store.append_direct("ann", "bob", "the deploy is done")
    hits, _ = await search(store, "deploy", "ann", direct=True, peer="ann")
    assert [(hit.message.message, hit.message.seq, hit.peer) for hit in hits] == [
        ("remember the deploy", note.sender_seq, "ann")
    ]
    hits, _ = await search(store, "remember", "ann")
    assert len(hits) == 1 and hits[0].peer == "ann"
    assert await texts(store, "remember", "bob") == []


async def test_filters_by_sender_time_and_room(store: Store, clock: Clock) -> None:
    """sender, after_ms and before_ms (both excluded) and room narrow the results."""
    await users(store, "ann", "bob")
    stamps = []
    for room, sender in (("lobby", "ann"), ("dev", "bob"), ("lobby", "bob"), ("dev", "ann")):
        clock.now += 10
        stamps.append((await store.append(room, sender, f"deploy {room} {sender}")).message.ts_ms)
    clock.now += 10
    direct = await store.append_direct("bob", "ann", "deploy direct bob")
    assert await texts(store, "deploy", "ann", sender="bob") == [
        "deploy direct bob",
        "deploy lobby bob",
        "deploy dev bob",
    ]
    assert await texts(store, "deploy", "ann", room="dev") == ["deploy dev ann", "deploy dev bob"]
    assert await texts(store, "deploy", "ann", room="dev", sender="ann") == ["deploy dev ann"]
    assert await texts(store, "deploy", "ann", after_ms=stamps[1], before_ms=stamps[3]) == [
        "deploy lobby bob"
    ]
    assert await texts(store, "deploy", "ann", after_ms=stamps[3]) == ["deploy direct bob"]
    assert await texts(store, "deploy", "ann", before_ms=stamps[0]) == []
    assert await texts(store, "deploy", "ann", before_ms=stamps[0] + 1) == ["deploy lobby ann"]
    assert await texts(store, "deploy", "ann", direct=True, before_ms=direct.message.ts_ms) == []


async def test_newest_first_across_rooms_and_direct_messages(store: Store, clock: Clock) -> None:
    """Results from rooms and direct conversations are merged by time, newest first."""
    await users(store, "ann", "bob")
    await store.create_room("team", owner="ann", private=True, members=frozenset())
    sent = []
    for i, where in enumerate(["lobby", "@bob", "team", "@bob", "lobby", "team", "@ann"]):
        clock.now += 1
        if where.startswith("@"):
            await store.append_direct("ann", where[1:], f"step {i}")
        else:
            await store.append(where, "ann", f"step {i}")
        sent.append(f"step {i}")
    assert await texts(store, "step", "ann") == list(reversed(sent))


# -- pages ------------------------------------------------------------------------------------


async def mixed(store: Store, clock: Clock) -> list[tuple[str, str]]:
    """Matches of "deploy" ann may read in two rooms (one private) and three conversations,
    interleaved with ones that do not match or that ann may not read (ann, bob and cyd
    registered): where each readable one is (``lobby``, ``team``, ``direct``) and its text,
    oldest first."""
    await store.create_room("team", owner="bob", private=True, members=frozenset({"ann"}))
    await store.create_room("hide", owner="bob", private=True, members=frozenset())
    kept = []
    for i in range(21):
        clock.now += 1
        text = f"deploy number {i}"
        match i % 7:
            case 0 | 3:
                await store.append("lobby", "bob", text)
                kept.append(("lobby", text))
            case 1:
                await store.append("team", "cyd" if i % 2 else "bob", text)
                kept.append(("team", text))
            case 2:
                await store.append_direct("bob", "ann", text)
                kept.append(("direct", text))
            case 4:
                await store.append_direct("ann", "cyd" if i % 2 else "ann", text)
                kept.append(("direct", text))
            case 5:
                await store.append("hide", "bob", text)  # ann may not read it
                await store.append_direct("bob", "cyd", text)  # nor this
            case _:
                await store.append("lobby", "bob", f"rollback number {i}")
    return kept


@pytest.mark.parametrize("limit", [1, 2, 3])
@pytest.mark.parametrize("where", ["everywhere", "direct", "team"])
async def test_pages_join_up_with_no_gap_and_no_repeat(
    store: Store, clock: Clock, limit: int, where: str
) -> None:
    """Following the cursors gives the one-page result list, split into pages of the limit."""
    await users(store, "ann", "bob", "cyd")
    kept = await mixed(store, clock)
    expected = [text for place, text in reversed(kept) if where in ("everywhere", place)]
    filters = {"everywhere": {}, "direct": {"direct": True}, "team": {"room": "team"}}[where]
    wanted = SearchFilter(parse_query("deploy"), "ann", limit=limit, **filters)
    whole, cursor = await store.search(replace(wanted, limit=50))
    assert [hit.message.message for hit in whole] == expected and cursor is None
    pages = await every_page(store, wanted)
    assert all(1 <= len(page) <= limit for page in pages)
    joined = [ident(hit) for page in pages for hit in page]
    assert joined == [ident(hit) for hit in whole]
    assert len(set(joined)) == len(joined) == len(expected)


async def test_new_messages_do_not_shift_the_pages_already_begun(
    store: Store, clock: Clock
) -> None:
    """A match stored between two pages is not in the later page, and nothing repeats."""
    await users(store, "ann", "bob", "cyd")
    kept = await mixed(store, clock)
    wanted = SearchFilter(parse_query("deploy"), "ann", limit=4)
    first, cursor = await store.search(wanted)
    clock.now += 1
    await store.append("lobby", "bob", "deploy number late")
    await store.append_direct("bob", "ann", "deploy number late too")
    rest: list[SearchHit] = []
    while cursor is not None:
        hits, cursor = await store.search(replace(wanted, cursor=cursor))
        rest += hits
    assert [hit.message.message for hit in first + rest] == [text for _, text in reversed(kept)]


async def relevance_corpus(store: Store, clock: Clock) -> None:
    """Messages matching "deploy" fewer or more times, in a room and a conversation."""
    for where, text in (
        ("lobby", "deploy deploy deploy now"),
        ("@bob", "deploy deploy and test"),
        ("lobby", "a deploy of the whole cluster today"),
        ("@bob", "one deploy"),
        ("lobby", "nothing to see"),
    ):
        clock.now += 1
        if where == "@bob":
            await store.append_direct("ann", "bob", text)
        else:
            await store.append(where, "ann", text)


async def test_best_matches_first_with_relevance(store: Store, clock: Clock) -> None:
    """relevance puts the messages with more of the words first, across rooms and direct."""
    await users(store, "ann", "bob")
    await relevance_corpus(store, clock)
    hits, cursor = await search(store, "deploy", "ann", relevance=True)
    found = [hit.message.message for hit in hits]
    assert cursor is None and len(found) == 4
    assert found[:2] == ["deploy deploy deploy now", "deploy deploy and test"]
    assert set(found[2:]) == {"a deploy of the whole cluster today", "one deploy"}
    newest, _ = await search(store, "deploy", "ann")
    assert [hit.message.message for hit in newest][0] == "one deploy"


@pytest.mark.parametrize("limit", [1, 2, 3])
async def test_relevance_pages_join_up(store: Store, clock: Clock, limit: int) -> None:
    """Best-first pages, followed by their cursors, are the one-page list in order."""
    await users(store, "ann", "bob", "cyd")
    await relevance_corpus(store, clock)
    await mixed(store, clock)
    wanted = SearchFilter(parse_query("deploy"), "ann", limit=limit, relevance=True)
    whole, _ = await store.search(replace(wanted, limit=50))
    paged = [ident(hit) for page in await every_page(store, wanted) for hit in page]
    assert paged == [ident(hit) for hit in whole] and len(set(paged)) == len(paged) > 10


# -- cursors ----------------------------------------------------------------------------------


async def test_a_cursor_from_another_search_is_refused(store: Store) -> None:
    """A cursor is bound to its query, reader, filters and order: another search refuses it."""
    await users(store, "ann", "bob")
    for i in range(3):
        await store.append("lobby", "ann", f"deploy alpha {i}")
    wanted = SearchFilter(parse_query("deploy"), "ann", limit=1)
    _, cursor = await store.search(wanted)
    assert cursor is not None
    for other in (
        replace(wanted, query=parse_query("alpha")),
        replace(wanted, reader="bob"),
        replace(wanted, reader=None),
        replace(wanted, room="lobby"),
        replace(wanted, direct=True),
        replace(wanted, sender="ann"),
        replace(wanted, after_ms=0),
        replace(wanted, before_ms=2**40),
        replace(wanted, relevance=True),
    ):
        with pytest.raises(InvalidRequest, match="another search"):
            await store.search(replace(other, cursor=cursor))
    more, _ = await store.search(replace(wanted, limit=5, cursor=cursor))
    assert len(more) == 2  # a new limit keeps the cursor


def encoded(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


@pytest.mark.parametrize(
    "cursor",
    [
        "garbage",
        "!!!!",
        "é",
        "a",
        encoded(b"not json"),
        encoded(b'{"a": 1}'),
        encoded(b"[1, 2, 3]"),
        encoded(b'["k"]'),
        encoded(b"\xff\xfe"),
        encoded(b'["0000000000000000", 1]'),
    ],
)
async def test_a_garbled_cursor_is_refused(store: Store, cursor: str) -> None:
    """A cursor no search gave is InvalidRequest, never a store failure."""
    await store.append("lobby", "ann", "deploy")
    for relevance in (False, True):
        with pytest.raises(InvalidRequest, match="cursor"):
            await search(store, "deploy", None, cursor=cursor, relevance=relevance)


def forged(cursor: str, position: str) -> str:
    """``cursor`` with its position replaced by the JSON ``position`` (its key kept)."""
    key, _ = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    return encoded(f'["{key}", {position}]'.encode())


#: A cursor's key is a hash of the search, not a secret: anyone may edit a position.
FORGED_POSITIONS = [
    '{"rooms": [9223372036854775808]}',
    '{"rooms": [18446744073709551615, "x"], "direct": [1, "y"]}',
    '{"direct": [9223372036854775808, "x"]}',
    '{"rooms": [-9223372036854775809]}',
    '{"rooms": [1, "\\u0000"]}',
    '{"rooms": [1.5]}',
    '{"rooms": "x"}',
    '{"rooms": [true]}',
    "[1]",
    '"x"',
    "-1",
    "18446744073709551615",
    "1.5",
]


@pytest.fixture(
    params=[
        "memory",
        "sqlite",
        pytest.param("postgres", marks=pytest.mark.postgres),
    ]
)
async def forgeable(
    request: pytest.FixtureRequest, clock: Clock, tmp_path: Path
) -> AsyncIterator[Store]:
    async with opened(request.param, tmp_path, clock=clock) as store:
        yield store


async def test_a_cursor_with_an_edited_position_is_refused(forgeable: Store) -> None:
    """Any position a client writes into a cursor is a result page or InvalidRequest."""
    store = forgeable
    await users(store, "ann", "bob")
    for i in range(3):
        await store.append("lobby", "ann", f"deploy {i}")
        await store.append_direct("ann", "bob", f"deploy {i}")
    failures = []
    for relevance in (False, True):
        wanted = SearchFilter(parse_query("deploy"), "ann", limit=1, relevance=relevance)
        _, cursor = await store.search(wanted)
        assert cursor is not None
        for position in FORGED_POSITIONS:
            try:
                await store.search(replace(wanted, cursor=forged(cursor, position)))
            except InvalidRequest:
                pass
            except Exception as exc:
                failures.append((relevance, position, type(exc).__name__))
    assert failures == []


# -- changes ----------------------------------------------------------------------------------


async def test_an_edited_message_is_found_by_its_new_text_only(store: Store, clock: Clock) -> None:
    """After an edit the old words find nothing and the new ones find the message, once."""
    await users(store, "ann", "bob")
    room = (await store.append("lobby", "ann", "the walrus deploy")).message
    clock.now += 1
    direct = (await store.append_direct("ann", "bob", "the walrus direct")).message
    await room_change(store, "edit", room.message_id, "ann", "the narwhal deploy")
    await direct_change(store, "edit", direct.message_id, "ann", "bob", "the narwhal direct")
    for reader in ("ann", "bob"):
        assert await texts(store, "walrus", reader) == []
        hits, _ = await search(store, "narwhal", reader)
        assert [hit.message.message_id for hit in hits] == [direct.message_id, room.message_id]
        assert all(hit.message.edited_ms is not None for hit in hits)
    assert await texts(store, "narwhal", None) == ["the narwhal deploy"]


async def test_a_deleted_message_is_never_found(store: Store) -> None:
    """A delete takes the message out of search at once, edited or not, room or direct."""
    await users(store, "ann", "bob")
    room = (await store.append("lobby", "ann", "the walrus deploy")).message
    edited = (await store.append("lobby", "ann", "an okapi")).message
    direct = (await store.append_direct("ann", "bob", "the walrus direct")).message
    kept = (await store.append("lobby", "ann", "a walrus kept")).message
    await room_change(store, "edit", edited.message_id, "ann", "a walrus edited")
    for message_id in (room.message_id, edited.message_id):
        await room_change(store, "delete", message_id, "ann")
    await direct_change(store, "delete", direct.message_id, "ann", "bob")
    for reader in ("ann", "bob", None):
        hits, _ = await search(store, "walrus", reader)
        assert [hit.message.message_id for hit in hits] == [kept.message_id]
    assert await texts(store, "okapi", "ann") == []
    assert await texts(store, "edited", "ann") == []


# -- hostile queries --------------------------------------------------------------------------

HOSTILE_QUERIES = [
    'NEAR(deploy failed) OR "x" AND NOT y',
    "NEAR(a b, 3)",
    "body:deploy",
    "{body}:deploy",
    "-body:x deploy",
    "deploy:*",
    "^deploy",
    "deploy + failed",
    "a & b | !c <-> (d)",
    "'deploy'",
    "''deploy''",
    "deploy\\",
    "\\'\\\"",
    "it's o'clock",
    'say "it\'s"',
    '"" deploy',
    '"deploy"*',
    "deploy*:",
    "de*ploy",
    "deploy <2> failed",
    "deploy:A",
    "deploy:*AB",
    "AND OR NOT",
    "rank:bm25()",
    "'\\'' OR 1=1 --",
    "'; DROP TABLE messages; --",
    "$1 $2 ?1 :name @p",
    "\u0301\u0301",
    "\ue000deploy",
    "\u200bdeploy\ufeff",
    "ﷺ ꙮ 𒀀",
    "x" * MAX_QUERY_CHARS,
    "(" * MAX_QUERY_CHARS,
    '"' * MAX_QUERY_CHARS,
    "a*" * (MAX_QUERY_CHARS // 2),
    " ".join(["deploy*"] * 16),
    " ".join(['"NEAR(x"'] * 16),
    ("ab:* " * 52)[:MAX_QUERY_CHARS],
]


def random_queries(count: int) -> list[str]:
    """Queries drawn from every operator character of both engines, words and spaces."""
    pick = random.Random(20)
    alphabet = list("\"'\\*-:^(){}[]&|!<>~+,.;/?@$#%= ") + ["deploy", "OR", "NEAR", "é", "東京"]
    return ["".join(pick.choices(alphabet, k=pick.randint(1, 60))) for _ in range(count)]


async def test_no_query_makes_a_store_fail(store: Store) -> None:
    """Every hostile query is refused by the parser or searched: never a store error."""
    await users(store, "ann", "bob")
    await store.append("lobby", "ann", "the deploy failed: body NEAR x AND y, it's o'clock")
    await store.append_direct("ann", "bob", "deploy \\ ' \" ^ ( ) * : -")
    searched = 0
    for q in HOSTILE_QUERIES + random_queries(300):
        try:
            query = parse_query(q)
        except InvalidRequest:
            continue
        searched += 1
        for relevance in (False, True):
            for where in ({}, {"direct": True}, {"room": "lobby"}):
                await store.search(SearchFilter(query, "ann", relevance=relevance, **where))
            await store.search(SearchFilter(query, None, relevance=relevance))
    assert searched > 150


@pytest.mark.parametrize(
    "q",
    [
        "NEAR(x",
        "y,",
        '"NEAR(x y,"',
        "body:secret",
        "OR",
        "AND",
        "NOT",
        "'quoted'",
        "\\back",
        "a&b|c!d",
        "(paren)",
        "col:*",
        "^caret",
        "-rollback secret",
    ],
)
async def test_operator_characters_search_for_the_words_around_them(store: Store, q: str) -> None:
    """A query made of operator syntax finds the message holding those words, on every store."""
    text = "say NEAR(x y, 3) OR body:secret AND NOT 'quoted' \\back a&b|c!d (paren) col:*x ^caret"
    await store.append("lobby", "ann", text)
    await store.append("lobby", "ann", "unrelated words only")
    assert await texts(store, q, None) == [text]


# -- every script -----------------------------------------------------------------------------

SCRIPTS = [
    ("Привет, мир! Как дела?", ["привет", "МИР", "дел*", '"привет мир"']),
    ("Καλημέρα κόσμε, τι κάνεις;", ["καλημέρα", "ΚΌΣΜΕ", "καλη*", '"καλημέρα κόσμε"']),
    ("今日は東京タワーへ行く。明日は京都", ["今日は東京タワーへ行く", "明日は京都", "今日は東*"]),
    ("مرحبا بالعالم الجميل", ["مرحبا", "بالعالم", "مرح*", '"مرحبا بالعالم"']),
    ("a café in Zürich", ["café", "zürich", "ZÜRICH", "caf*"]),
]


@pytest.mark.parametrize(
    ("text", "queries"), SCRIPTS, ids=["cyrillic", "greek", "cjk", "arabic", "latin"]
)
async def test_words_of_every_script_are_found(store: Store, text: str, queries: list[str]) -> None:
    """Cyrillic, Greek, Arabic and accented words, a CJK run as a whole: found on every store."""
    await store.append("lobby", "ann", text)
    await store.append("lobby", "ann", "plain english text")
    for q in queries:
        assert await texts(store, q, None) == [text], q


async def test_part_of_a_cjk_run_is_not_a_word(store: Store) -> None:
    """A CJK run is one token to every engine: part of it finds nothing, its start as a prefix."""
    await store.append("lobby", "ann", "今日は東京タワーへ行く。")
    assert await texts(store, "東京", None) == []
    assert await texts(store, "今日は東京*", None) == ["今日は東京タワーへ行く。"]


@pytest.fixture(params=["memory", "sqlite"])
async def folding(
    request: pytest.FixtureRequest, clock: Clock, tmp_path: Path
) -> AsyncIterator[Store]:
    """The stores that ignore accents (PostgreSQL keeps them: docs/protocol.md, Search)."""
    async with opened(request.param, tmp_path, clock=clock) as store:
        yield store


async def test_a_word_without_its_accents_finds_it(folding: Store) -> None:
    """On SQLite (as in memory) cafe finds café and eclair a decomposed éclair."""
    await folding.append("lobby", "ann", "un café noir")
    await folding.append("lobby", "ann", "un e\u0301clair")
    assert await texts(folding, "cafe", None) == ["un café noir"]
    assert await texts(folding, "eclair", None) == ["un e\u0301clair"]


@pytest.mark.parametrize(
    ("q", "text"),
    [
        ("example.com", "visit example.com now"),
        ("4.2", "release 4.2 is out"),
        ('"release 4.2"', "release 4.2 is out"),
        ("user@example.org", "mail user@example.org please"),
        ("https://example.net/a/b?c=d", "see https://example.net/a/b?c=d"),
    ],
)
async def test_a_dotted_word_typed_as_written_is_found(store: Store, q: str, text: str) -> None:
    """Hosts, versions and addresses, which PostgreSQL reads as one word, are found as typed."""
    for other in ("visit example.com now", "release 4.2 is out", "mail user@example.org please"):
        if other != text:
            await store.append("lobby", "ann", other)
    await store.append("lobby", "ann", text)
    assert await texts(store, q, None) == [text]


@pytest.fixture(
    params=[
        "memory",
        "sqlite",
        pytest.param("postgres", marks=pytest.mark.postgres),
    ]
)
async def phrasing(
    request: pytest.FixtureRequest, clock: Clock, tmp_path: Path
) -> AsyncIterator[Store]:
    async with opened(request.param, tmp_path, clock=clock) as store:
        yield store


async def test_punctuation_inside_a_phrase_is_no_word(phrasing: Store) -> None:
    """ "deploy - failed" finds "deploy failed" as "deploy failed" does, on every store."""
    await phrasing.append("lobby", "ann", "the deploy failed")
    for q in ('"deploy failed"', '"deploy - failed"', '"deploy ... failed!"'):
        assert await texts(phrasing, q, None) == ["the deploy failed"], q


# -- an older database ------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    """An empty database that stores are opened on, one after another."""
    async with database(request.param, tmp_path) as fresh:
        yield fresh


async def test_a_version_6_database_finds_its_old_messages(db: Database) -> None:
    """Upgrading to version 7 indexes the messages already kept: current text, chat rows only."""
    room = "INSERT INTO messages (room, seq, message_id, sender, body, ts_ms, kind, target,"
    room += " edited_ms, deleted_ms) VALUES"
    direct = "INSERT INTO direct_messages (message_id, sender, recipient, body, ts_ms, kind,"
    direct += " target, deleted_ms) VALUES"
    await db.execute(
        *schema_at(6),
        "INSERT INTO users (name, name_key, password_hash, dm_seq, created_ms)"
        " VALUES ('ann', 'ann', 'h', 3, 0), ('bob', 'bob', 'h', 3, 0)",
        "INSERT INTO rooms (name, last_seq, created_ms, private, owner)"
        " VALUES ('lobby', 4, 0, 0, NULL), ('team', 1, 0, 1, 'ann')",
        f"{room} ('lobby', 1, 'r1', 'ann', 'the old deploy', 10, 'chat', NULL, NULL, NULL),"
        " ('lobby', 2, 'r2', 'ann', 'the edited deploy', 20, 'chat', NULL, 25, NULL),"
        " ('lobby', 3, 'e2', 'ann', 'the edited deploy', 25, 'edit', 'r2', NULL, NULL),"
        " ('lobby', 4, 'r3', 'ann', '', 30, 'chat', NULL, NULL, 35),"
        " ('team', 1, 't1', 'ann', 'the private deploy', 40, 'chat', NULL, NULL, NULL)",
        f"{direct} ('d1', 'ann', 'bob', 'a direct deploy', 50, 'chat', NULL, NULL),"
        " ('d2', 'bob', 'ann', 'another direct deploy', 60, 'chat', NULL, NULL),"
        " ('d3', 'bob', 'ann', '', 70, 'delete', 'd2', NULL)",
        "INSERT INTO inbox (owner, seq, message_id) VALUES ('ann', 1, 'd1'), ('bob', 1, 'd1'),"
        " ('bob', 2, 'd2'), ('ann', 2, 'd2'), ('ann', 3, 'd3'), ('bob', 3, 'd3')",
    )
    async with db.opened() as store:
        assert await texts(store, "deploy", "bob") == [
            "another direct deploy",
            "a direct deploy",
            "the edited deploy",
            "the old deploy",
        ]
        hits, _ = await search(store, "deploy", "ann", direct=True)
        assert [(hit.message.message_id, hit.message.seq, hit.peer) for hit in hits] == [
            ("d2", 2, "bob"),
            ("d1", 1, "bob"),
        ]
        assert await texts(store, "private", "ann") == ["the private deploy"]
        assert await texts(store, "private", "bob") == []
        added = await store.append("lobby", "bob", "a new deploy")
        assert (await search(store, "new", None))[0][0].message == added.message
        assert isinstance(added.message, ChatMessage)
    rows = await db.fetch("SELECT max(version) FROM schema_version")
    assert rows == [(LATEST_VERSION,)] and LATEST_VERSION == 8


async def test_many_searches_at_once_share_the_store(store: Store) -> None:
    """Searches run side by side with appends answer each with its own results."""
    await users(store, "ann")
    for i in range(10):
        await store.append("lobby", "ann", f"deploy w{i}")
    appends = [store.append("lobby", "ann", f"later v{i}") for i in range(10)]
    answers = await asyncio.gather(*(search(store, f"w{i}", None) for i in range(10)))
    await asyncio.gather(*appends)
    for i, (hits, _) in enumerate(answers):
        assert [hit.message.message for hit in hits] == [f"deploy w{i}"]
