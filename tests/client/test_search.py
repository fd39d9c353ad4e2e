"""Search (issue 20) in the client, without sockets: the answers parsed, the frames sent.

The server is a :class:`~tests.client.wire.FakeConnection`: what the client
writes is recorded and answered by a function of the test, and what the
"server" sends goes through the client's own parser and handler.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import pytest

from roomcast.client import (
    Client,
    ClientClosed,
    DirectHistoryPage,
    DirectMessage,
    SearchPage,
    SearchResult,
    SendError,
)
from roomcast.client.events import search_page
from tests.client.wire import FakeConnection, connected, resume

#: The ``search`` answer of the spec: a room result and a direct one.
SPEC_ANSWER: dict[str, Any] = {
    "results": [
        {
            "room": "general",
            "seq": 42,
            "message_id": "m42",
            "from": "alice",
            "at": "2026-12-01T10:00:00.000Z",
            "message": "the whole text",
            "snippet": "\u2026part of the text\u2026",
            "highlights": [[4, 10], [20, 26]],
            "thread": "m40",
        },
        {
            "direct": True,
            "with": "bob",
            "seq": 7,
            "message_id": "d7",
            "from": "bob",
            "at": "2026-12-01T09:00:00Z",
            "message": "deploy done",
            "snippet": "deploy done",
            "highlights": [[0, 6]],
            "edited_at": "2026-12-01T09:01:00Z",
        },
    ],
    "cursor": "opaque",
}


def search_reply(sent: dict[str, Any], payload: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"type": "search", "id": sent["id"], "payload": payload}]


def error(sent: dict[str, Any], code: str, message: str, **extra: Any) -> list[dict[str, Any]]:
    payload = {"code": code, "message": message, **extra}
    return [{"type": "error", "id": sent["id"], "payload": payload}]


def result(seq: int, **fields: Any) -> dict[str, Any]:
    """A room result in dev at ``seq``."""
    base = {"room": "dev", "seq": seq, "message_id": f"m{seq}", "from": "ann", "at": None}
    return {**base, "message": f"deploy {seq}", "snippet": f"deploy {seq}", "highlights": [[0, 6]]}


# -- parsing ---------------------------------------------------------------------------------


def test_the_spec_answer_parses_to_typed_results() -> None:
    """A room result and a direct one: where, seq, who, when, text, snippet, spans, cursor."""
    page = search_page(SPEC_ANSWER)
    ten = datetime(2026, 12, 1, 10, tzinfo=UTC)
    assert page == SearchPage(
        [
            SearchResult(
                42,
                "m42",
                "alice",
                ten,
                "the whole text",
                "\u2026part of the text\u2026",
                ((4, 10), (20, 26)),
                room="general",
                thread="m40",
            ),
            SearchResult(
                7,
                "d7",
                "bob",
                ten - timedelta(hours=1),
                "deploy done",
                "deploy done",
                ((0, 6),),
                with_="bob",
                edited_at=ten - timedelta(minutes=59),
            ),
        ],
        "opaque",
    )
    room, direct = page.results
    assert not room.direct and direct.direct and direct.room is None
    assert direct.snippet[slice(*direct.highlights[0])] == "deploy"
    assert search_page({"results": []}) == SearchPage([], None)  # the last page: no cursor


@pytest.mark.parametrize(
    "payload",
    [
        {},
        {"results": {"room": "dev"}},
        {"results": ["not an object"]},
        {"results": [{"room": "dev", "message_id": "m1"}]},  # no seq
        {"results": [{"room": "dev", "seq": "x", "message_id": "m1"}]},
        {"results": [{"seq": 1, "message_id": "m1"}]},  # neither room nor direct
        {"results": [{"direct": True, "seq": 1, "message_id": "m1"}]},  # direct without with
        {"results": [{**result(1), "highlights": "0-6"}]},
        {"results": [{**result(1), "highlights": [[0, 6, 9]]}]},
        {"results": [{**result(1), "highlights": [["0", 6]]}]},
    ],
)
def test_a_search_answer_that_cannot_be_read_raises_value_error(payload: dict[str, Any]) -> None:
    """A malformed answer is one ValueError, not a half-read page or another exception."""
    with pytest.raises(ValueError, match="malformed search reply"):
        search_page(payload)


# -- asking ----------------------------------------------------------------------------------


async def test_search_sends_the_filters_as_the_spec_names_them() -> None:
    """with_ is with (and direct), sender is from; times become UTC ISO strings; defaults unsent."""
    client = Client("ws://127.0.0.1:9/ws")
    conn = connected(client, lambda sent: search_reply(sent, SPEC_ANSWER))
    page = await client.search("deploy*")
    assert [r.message_id for r in page.results] == ["m42", "d7"] and page.cursor == "opaque"
    paris = timezone(timedelta(hours=1))
    await client.search(
        '"the deploy" -staging',
        with_="bob",
        sender="bob",
        after=datetime(2026, 12, 1, 11, 30, tzinfo=paris),
        before=date(2026, 12, 2),
        limit=5,
        cursor="opaque",
        order="relevance",
    )
    await client.search("x", room="dev", after=datetime(2026, 12, 1, 8), before="2026-12-03")
    await client.search("x", direct=True)
    assert [s["payload"] for s in conn.of_type("search")] == [
        {"q": "deploy*"},
        {
            "q": '"the deploy" -staging',
            "direct": True,
            "with": "bob",
            "from": "bob",
            "after": "2026-12-01T10:30:00.000Z",
            "before": "2026-12-02",
            "limit": 5,
            "cursor": "opaque",
            "order": "relevance",
        },
        {"q": "x", "room": "dev", "after": "2026-12-01T08:00:00.000Z", "before": "2026-12-03"},
        {"q": "x", "direct": True},
    ]


async def test_arguments_the_server_would_refuse_are_refused_before_sending() -> None:
    """room with direct or with_, and an unknown order, raise ValueError; nothing is sent."""
    client = Client("ws://127.0.0.1:9/ws")
    conn = connected(client, lambda sent: search_reply(sent, SPEC_ANSWER))
    with pytest.raises(ValueError, match="room or direct"):
        await client.search("x", room="dev", direct=True)
    with pytest.raises(ValueError, match="room or direct"):
        await client.search("x", room="dev", with_="bob")
    with pytest.raises(ValueError, match="order"):
        await client.search("x", order="oldest")
    assert not conn.sent


async def test_server_errors_raise_send_error_and_rate_limited_is_waited_out() -> None:
    """invalid_message and forbidden are SendErrors; rate_limited is sent again and answered."""
    client = Client("ws://127.0.0.1:9/ws")
    limited: list[str] = []

    def answer(sent: dict[str, Any]) -> list[dict[str, Any]]:
        q = sent["payload"]["q"]
        if q == '"open':
            return error(sent, "invalid_message", "a quote is not closed")
        if q == "secret":
            return error(sent, "forbidden", "not a member of team")
        if q == "busy" and not limited:
            limited.append(sent["id"])
            return error(sent, "rate_limited", "too many searches", retry_after=20)
        return search_reply(sent, {"results": [result(3)]})

    conn = connected(client, answer)
    with pytest.raises(SendError) as unclosed:
        await client.search('"open')
    assert (unclosed.value.code, unclosed.value.message) == (
        "invalid_message",
        "a quote is not closed",
    )
    with pytest.raises(SendError) as forbidden:
        await client.search("secret", room="team")
    assert forbidden.value.code == "forbidden"
    page = await asyncio.wait_for(client.search("busy"), 2)
    assert [r.seq for r in page.results] == [3]
    busy = [s for s in conn.of_type("search") if s["payload"]["q"] == "busy"]
    assert [s["id"] for s in busy] == limited * 2  # the same frame, sent again
    assert not client._outbox


async def test_a_search_made_offline_waits_and_is_answered_once_connected(
    reader: asyncio.Future[None],
) -> None:
    """Like every request: queued while disconnected, sent on connect; closing fails it."""
    client = Client("ws://127.0.0.1:9/ws")
    searching = asyncio.ensure_future(client.search("deploy"))
    await asyncio.sleep(0)
    assert len(client._outbox) == 1 and not searching.done()

    def answer(sent: dict[str, Any]) -> list[dict[str, Any]]:
        if sent["type"] == "join":
            return [{"type": "joined", "id": sent["id"], "payload": {"room": "lobby", "seq": 0}}]
        return search_reply(sent, {"results": [result(9)]})

    conn = FakeConnection(client, answer)
    await resume(client, conn, reader)
    page = await asyncio.wait_for(searching, 1)
    assert [r.seq for r in page.results] == [9]
    assert [s["type"] for s in conn.sent] == ["join", "search"]

    waiting = asyncio.ensure_future(client.search("never answered", timeout=None))
    conn.answer = None
    await asyncio.sleep(0)
    await client.close()
    with pytest.raises(ClientClosed):
        await waiting
    with pytest.raises(ClientClosed):
        await client.search("after the end")


async def test_search_all_follows_the_cursor_to_the_last_page() -> None:
    """Every result once, in the pages' order; the cursor goes back with the same filters."""
    client = Client("ws://127.0.0.1:9/ws")
    pages: dict[str | None, dict[str, Any]] = {
        None: {"results": [result(9), result(8)], "cursor": "c1"},
        "c1": {"results": [result(7), result(6)], "cursor": "c2"},
        "c2": {"results": [result(5)]},
    }
    conn = connected(client, lambda sent: search_reply(sent, pages[sent["payload"].get("cursor")]))
    found = [r.seq async for r in client.search_all("deploy", room="dev", limit=2)]
    assert found == [9, 8, 7, 6, 5]
    assert [s["payload"] for s in conn.of_type("search")] == [
        {"q": "deploy", "room": "dev", "limit": 2},
        {"q": "deploy", "room": "dev", "limit": 2, "cursor": "c1"},
        {"q": "deploy", "room": "dev", "limit": 2, "cursor": "c2"},
    ]


async def test_search_all_stops_at_a_cursor_it_was_given_before() -> None:
    """A server that hands back the same cursor again does not make the iteration endless."""
    client = Client("ws://127.0.0.1:9/ws")
    connected(client, lambda sent: search_reply(sent, {"results": [result(1)], "cursor": "same"}))
    assert [r.seq async for r in client.search_all("deploy")] == [1, 1]


# -- direct history around a result ------------------------------------------------------


async def test_direct_history_reads_around_a_seq_with_has_newer() -> None:
    """around and before are sent; the page has messages, has_newer, last_seq and receipts."""
    client = Client("ws://127.0.0.1:9/ws", token="t")
    items = [
        {"type": "direct", "from": "bob", "to": "me", "message": "a", "seq": 6, "message_id": "d6"},
        {"type": "direct", "from": "me", "to": "bob", "message": "b", "seq": 7, "message_id": "d7"},
        {"type": "poll", "seq": 8},  # not a message: not on the page
    ]

    def answer(sent: dict[str, Any]) -> list[dict[str, Any]]:
        payload = {
            "messages": items,
            "has_more": True,
            "has_newer": True,
            "last_seq": 30,
            "receipts": {"bob": 7},
        }
        return [{"type": "direct_history", "id": sent["id"], "payload": payload}]

    conn = connected(client, answer)
    page = await client.direct_history_page(around=7, limit=10)
    assert page == DirectHistoryPage(page.messages, True, True, 30, page.receipts)
    assert [(m.seq, m.sender, m.to) for m in page.messages] == [(6, "bob", "me"), (7, "me", "bob")]
    assert all(isinstance(m, DirectMessage) for m in page.messages)
    assert dict(page.receipts) == {"bob": 7}
    messages, more = await client.direct_history(before=6, limit=5)
    assert [m.seq for m in messages] == [6, 7] and more is True
    assert [s["payload"] for s in conn.of_type("direct_history")] == [
        {"limit": 10, "around": 7},
        {"limit": 5, "before": 6},
    ]
    with pytest.raises(ValueError, match="before or around"):
        await client.direct_history_page(before=3, around=7)
