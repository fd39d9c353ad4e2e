"""MessageSearch, the service both edges call, on the in-memory store (no sockets).

It limits each user's rate of searches, refuses what a user may not search
(direct messages for a guest, a private room for an outsider, a peer who
does not exist) before the store is asked, and fills in every result's
snippet and highlights.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from roomcast.exceptions import Forbidden, InvalidRequest, TooFrequent, UnknownUser
from roomcast.metrics import Metrics
from roomcast.model import ChatMessage, DirectMessage, UserInfo
from roomcast.protocol.messages import SearchRequest
from roomcast.query import SNIPPET_CHARS
from roomcast.rooms import Rooms
from roomcast.rules import RulesBook
from roomcast.search import SEARCH_BURST, SEARCH_RATE, MessageSearch
from roomcast.store.memory import MemoryStore
from tests.fakes import Clock

ANN, BOB, CAROL = UserInfo("ann", False), UserInfo("bob", False), UserInfo("carol", False)
GUEST = UserInfo("visitor", True)


class NobodyHere:
    """Occupancy of a node with no connection: rooms exist by the store alone."""

    def local_rooms(self) -> list[str]:
        return []

    async def member_count(self, room: str) -> int:
        return 0


class Monotonic:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def store() -> AsyncIterator[MemoryStore]:
    """A memory store with ann, bob and carol registered."""
    store = MemoryStore(clock=Clock())
    await store.open()
    for name in ("ann", "bob", "carol"):
        assert await store.create_user(name, "hash")
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture
def monotonic() -> Monotonic:
    return Monotonic()


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
def search(store: MemoryStore, monotonic: Monotonic, metrics: Metrics) -> MessageSearch:
    rooms = Rooms(store, NobodyHere(), RulesBook(store, list))
    return MessageSearch(store, rooms, metrics, clock=monotonic)


def ask(q: str, **fields: Any) -> SearchRequest:
    return SearchRequest("s", q, **fields)


async def test_a_burst_of_searches_then_too_frequent_with_when_to_retry(
    search: MessageSearch, monotonic: Monotonic
) -> None:
    """A user gets SEARCH_BURST searches at once, then TooFrequent saying how long to wait."""
    for _ in range(SEARCH_BURST):
        await search.search(ANN, ask("anything"))
    with pytest.raises(TooFrequent) as refused:
        await search.search(ANN, ask("anything"))
    assert refused.value.retry_after == pytest.approx(1 / SEARCH_RATE)
    await search.search(BOB, ask("anything"))  # another user's rate is their own
    monotonic.now += refused.value.retry_after
    await search.search(ANN, ask("anything"))
    with pytest.raises(TooFrequent):
        await search.search(ANN, ask("anything"))


async def test_refused_queries_count_against_the_rate(search: MessageSearch) -> None:
    """Queries that cannot be parsed use up the burst too: hostile input is no faster."""
    for _ in range(SEARCH_BURST):
        with pytest.raises(InvalidRequest, match="quote is not closed"):
            await search.search(ANN, ask('"open'))
    with pytest.raises(TooFrequent):
        await search.search(ANN, ask("deploy"))


async def test_a_guest_may_not_search_direct_messages(
    search: MessageSearch, store: MemoryStore
) -> None:
    """direct from a guest is Forbidden; without it a guest finds public rooms only."""
    await store.append("lobby", "ann", "deploy in public")
    await store.create_room("team", owner="ann", private=True, members=frozenset({"bob"}))
    await store.append("team", "ann", "deploy in private")
    await store.append_direct("ann", "bob", "deploy in direct")
    with pytest.raises(Forbidden, match="registered"):
        await search.search(GUEST, ask("deploy", direct=True))
    reply = await search.search(GUEST, ask("deploy"))
    assert [hit.message.message for hit in reply.results] == ["deploy in public"]
    as_guest_bob = await search.search(UserInfo("bob", True), ask("deploy"))
    assert [hit.message.message for hit in as_guest_bob.results] == ["deploy in public"]


async def test_a_private_room_is_searched_by_its_owner_and_members_only(
    search: MessageSearch, store: MemoryStore
) -> None:
    """room naming a private room is Forbidden to outsiders and guests, found by members."""
    await store.create_room("team", owner="ann", private=True, members=frozenset({"bob"}))
    await store.append("team", "ann", "the secret plan")
    for outsider in (CAROL, GUEST, UserInfo("ann", True)):
        with pytest.raises(Forbidden, match="private"):
            await search.search(outsider, ask("secret", room="team"))
    for member in (ANN, BOB):
        reply = await search.search(member, ask("secret", room="team"))
        assert [hit.message.message for hit in reply.results] == ["the secret plan"]
    assert (await search.search(CAROL, ask("secret"))).results == []


async def test_a_peer_must_be_a_registered_user_named_in_any_case(
    search: MessageSearch, store: MemoryStore
) -> None:
    """with names no user: UnknownUser; in another case it is the user as registered."""
    await store.append_direct("ann", "bob", "deploy notes")
    await store.append_direct("ann", "carol", "deploy notes too")
    with pytest.raises(UnknownUser, match="zed"):
        await search.search(ANN, ask("deploy", direct=True, peer="zed"))
    reply = await search.search(ANN, ask("deploy", direct=True, peer="BOB"))
    assert [(hit.peer, hit.message.message) for hit in reply.results] == [("bob", "deploy notes")]


async def test_every_result_has_its_snippet_and_highlights(
    search: MessageSearch, store: MemoryStore
) -> None:
    """The store finds; the service cuts each text to a snippet and marks the matched words."""
    long = "lead " * 80 + "the Deploy failed " + "tail " * 80
    await store.append("lobby", "bob", long)
    await store.append_direct("bob", "ann", "🎉 deploy done")
    reply = await search.search(ANN, ask("deploy"))
    direct, room = reply.results
    assert isinstance(direct.message, DirectMessage) and direct.peer == "bob"
    assert direct.snippet == "🎉 deploy done" and direct.highlights == ((2, 8),)
    assert isinstance(room.message, ChatMessage) and room.message.message == long
    assert room.snippet.startswith("…") and room.snippet.endswith("…")
    assert len(room.snippet) <= SNIPPET_CHARS + 2
    assert [room.snippet[a:b] for a, b in room.highlights] == ["Deploy"]
    payload = reply.payload()
    assert [result["highlights"] for result in payload["results"]] == [
        [[2, 8]],
        [list(room.highlights[0])],
    ]
    assert payload["results"][0]["with"] == "bob" and "cursor" not in payload


async def test_a_query_that_cannot_be_parsed_is_invalid(search: MessageSearch) -> None:
    """The query's own rules are the service's to apply, whichever edge asked."""
    with pytest.raises(InvalidRequest, match="no words"):
        await search.search(ANN, ask("!!!"))
    with pytest.raises(InvalidRequest, match="control characters"):
        await search.search(ANN, ask("deploy\x00"))


async def test_pages_follow_the_cursor_the_reply_gives(
    search: MessageSearch, store: MemoryStore
) -> None:
    """A page with more after it has a cursor; the next page continues with no overlap."""
    for i in range(5):
        await store.append("lobby", "bob", f"deploy {i}")
    first = await search.search(ANN, ask("deploy", limit=3))
    assert first.cursor is not None
    rest = await search.search(ANN, ask("deploy", limit=3, cursor=first.cursor))
    assert rest.cursor is None
    texts = [hit.message.message for hit in first.results + rest.results]
    assert texts == [f"deploy {i}" for i in reversed(range(5))]
    with pytest.raises(InvalidRequest, match="another search"):
        await search.search(BOB, ask("deploy", limit=3, cursor=first.cursor))


async def test_from_names_a_registered_user_in_any_case_and_a_guest_exactly(
    search: MessageSearch, store: MemoryStore
) -> None:
    """from BOB finds bob's messages; a guest's name is taken as it is written."""
    await store.append("lobby", "bob", "deploy by bob")
    await store.append("lobby", "Visitor-7", "deploy by a guest")
    reply = await search.search(ANN, ask("deploy", sender="BOB"))
    assert [hit.message.message for hit in reply.results] == ["deploy by bob"]
    reply = await search.search(ANN, ask("deploy", sender="Visitor-7"))
    assert [hit.message.message for hit in reply.results] == ["deploy by a guest"]
    assert (await search.search(ANN, ask("deploy", sender="visitor-7"))).results == []


async def test_each_search_that_reaches_the_store_is_timed(
    search: MessageSearch, metrics: Metrics
) -> None:
    """roomcast_search_seconds counts the searches the store ran, not the ones refused first."""

    def counted() -> float:
        value = metrics.registry.get_sample_value("roomcast_search_seconds_count")
        return value or 0.0

    await search.search(ANN, ask("deploy"))
    await search.search(GUEST, ask("deploy"))
    with pytest.raises(InvalidRequest):
        await search.search(ANN, ask("!!!"))
    with pytest.raises(Forbidden):
        await search.search(GUEST, ask("deploy", direct=True))
    assert counted() == 2
