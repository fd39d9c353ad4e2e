"""Read markers, unread counts and receipts (issue 19) in the client, without sockets.

The server is a :class:`~tests.client.wire.FakeConnection`: what the client
writes is recorded and answered by a function of the test, and what the
"server" sends goes through the client's own parser and handler.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from hypothesis import given, strategies as st

from roomcast.client import (
    Client,
    HistoryPage,
    ReadMarker,
    Receipt,
    Reply,
    RoomMessage,
    SendError,
    Unread,
    UnreadCounts,
    parse_server_frame,
)
from roomcast.client.core import SeqStream, UnreadBook
from roomcast.client.events import unread_counts
from tests.client.wire import FakeConnection, collect, connected, frame, resume

#: The ``unread`` reply of the spec.
SPEC_UNREAD: dict[str, Any] = {
    "rooms": [
        {
            "room": "lobby",
            "unread": 3,
            "mentions": 1,
            "last_read": 40,
            "last_seq": 43,
            "last_at": "2026-12-02T06:01:02.123Z",
        },
        {"room": "quiet", "unread": 0, "mentions": 0, "last_read": 0, "last_seq": 0},
    ],
    "direct": {
        "unread": 2,
        "mentions": 0,
        "last_read": 17,
        "last_seq": 19,
        "last_at": "2026-12-02T06:00:00Z",
        "conversations": [
            {
                "with": "bob",
                "unread": 2,
                "mentions": 0,
                "last_read": 17,
                "last_seq": 19,
                "last_at": "2026-12-02T06:00:00Z",
            }
        ],
    },
}


def chat(room: str, seq: int, sender: str = "bob", **fields: Any) -> dict[str, Any]:
    """A ``chat`` frame from ``sender`` in ``room``."""
    payload = {"room": room, "message": f"m{seq}", "from": sender, "seq": seq}
    return {"type": "chat", "payload": {"message_id": f"{room}-{seq}", **payload, **fields}}


def direct(seq: int, sender: str, to: str, **fields: Any) -> dict[str, Any]:
    """A ``direct`` frame of this user's stream."""
    payload = {"from": sender, "to": to, "message": f"d{seq}", "seq": seq}
    return {"type": "direct", "payload": {"message_id": f"d-{seq}", **payload, **fields}}


def joined(room: str, seq: int, **counts: Any) -> dict[str, Any]:
    """A ``joined`` (no id: the lobby on connect) with the room's last seq and ``counts``."""
    return {"type": "joined", "payload": {"room": room, "seq": seq, **counts}}


def counts_of(unread: Unread) -> tuple[int, int]:
    return unread.unread, unread.mentions


def signed_in(client: Client, answer: Any = None, user: str = "me") -> FakeConnection:
    """The client on a pretend connection, signed in as ``user`` (the server's welcome)."""
    conn = connected(client, answer)
    conn.push({"type": "system", "payload": {"user": {"name": user}}})
    return conn


def read_answer(sent: dict[str, Any], **counts: Any) -> list[dict[str, Any]]:
    """The server's answer to a ``read``: the marker where the frame put it, with ``counts``."""
    return [{"type": "read", "id": sent["id"], "payload": {**sent["payload"], **counts}}]


# -- frames -------------------------------------------------------------------------------


def test_read_and_receipt_frames_become_events() -> None:
    """read (room, direct, one conversation) and receipt frames parse to their events."""
    room = {"room": "dev", "seq": 9, "unread": 2, "mentions": 1}
    assert parse_server_frame(frame("read", room)) == ReadMarker(9, 2, 1, room="dev")
    whole = {"direct": True, "seq": 4, "unread": 0, "mentions": 0}
    assert parse_server_frame(frame("read", whole)) == ReadMarker(4, 0, 0)
    bob = {**whole, "with": "bob", "unread": 1}
    assert parse_server_frame(frame("read", bob)) == ReadMarker(4, 1, 0, with_="bob")
    # With an id it answers this client's own read: a Reply for the waiting request.
    assert parse_server_frame(frame("read", room, id="r1")) == Reply("read", room, "r1")
    assert parse_server_frame(frame("receipt", {"room": "dev", "user": "ann", "seq": 7})) == (
        Receipt("ann", 7, room="dev")
    )
    assert parse_server_frame(frame("receipt", {"direct": True, "user": "ann", "seq": 3})) == (
        Receipt("ann", 3)
    )


@given(
    st.dictionaries(
        st.sampled_from(["room", "direct", "with", "seq", "unread", "mentions", "user"]),
        st.none()
        | st.booleans()
        | st.integers(-(2**63), 2**63 - 1)
        | st.text(max_size=5)
        | st.lists(st.integers(0, 9), max_size=2)
        | st.dictionaries(st.text(max_size=3), st.integers(0, 3)),
    ),
    st.sampled_from(["read", "receipt"]),
)
def test_malformed_read_frames_raise_value_error(payload: dict[str, object], kind: str) -> None:
    """A read or receipt frame with missing or wrong fields is a ValueError, nothing else."""
    try:
        parse_server_frame(orjson.dumps({"type": kind, "payload": payload}))
    except ValueError:
        pass


def test_the_unread_reply_parses_to_typed_counts() -> None:
    """The spec's unread payload: rooms, the direct stream and its conversations, typed."""
    counts = unread_counts(SPEC_UNREAD)
    stamp = datetime(2026, 12, 2, 6, 1, 2, 123000, tzinfo=UTC)
    assert counts.rooms["lobby"] == Unread(3, 1, 40, 43, stamp)
    assert counts.rooms["quiet"] == Unread(0, 0, 0, 0, None)
    at = datetime(2026, 12, 2, 6, tzinfo=UTC)
    assert counts.direct == Unread(2, 0, 17, 19, at)
    assert dict(counts.conversations) == {"bob": Unread(2, 0, 17, 19, at)}
    assert counts.total == 5
    assert unread_counts({"rooms": []}) == UnreadCounts()
    with pytest.raises(ValueError, match="malformed unread"):
        unread_counts({"rooms": [{"unread": 1}]})
    with pytest.raises(ValueError, match="malformed unread"):
        unread_counts({"rooms": [{"room": "x", "unread": "many"}]})


# -- counts kept by the client ---------------------------------------------------------------


async def test_joined_gives_counts_and_live_messages_from_others_add_to_them() -> None:
    """joined's counts; a later message from another adds one (a mention a mention); mine reads."""
    client = Client("ws://127.0.0.1:9/ws", token="t")
    conn = signed_in(client)
    conn.push(joined("lobby", 43, unread=3, mentions=1, last_read=40))
    assert client.unread.rooms["lobby"] == Unread(3, 1, 40)
    conn.push(chat("lobby", 41))  # a replay of a message joined counted: nothing new
    conn.push(chat("lobby", 44, mentions=["ME"]))  # names compare case-insensitively
    lobby = client.unread.rooms["lobby"]
    assert (lobby.unread, lobby.mentions, lobby.last_read, lobby.last_seq) == (4, 2, 40, 44)
    # The server moves a sender's marker to what they send: everything before it is read.
    conn.push(chat("lobby", 45, sender="Me"))
    conn.push(chat("lobby", 46, sender="ann", mentions=["me"]))
    lobby = client.unread.rooms["lobby"]
    assert (lobby.unread, lobby.mentions, lobby.last_read, lobby.last_seq) == (1, 1, 45, 46)
    assert client.unread.direct is None  # nothing said about the direct stream yet


async def test_a_joined_with_unreadable_counts_is_passed_over() -> None:
    """Counts that are not numbers leave the room uncounted; the stream starts all the same."""
    client = Client("ws://127.0.0.1:9/ws", token="t")
    conn = signed_in(client)
    conn.push(joined("lobby", 7, unread="many", mentions=0, last_read=2))
    assert client.unread == UnreadCounts() and client.last_seq("lobby") == 7


async def test_a_guest_has_no_counts_until_its_own_read_answers() -> None:
    """A guest's joined carries no counts; its read is answered to its connection only."""
    client = Client("ws://127.0.0.1:9/ws")
    conn = signed_in(client, lambda sent: read_answer(sent, unread=0, mentions=0), "guest-1")
    conn.push(joined("lobby", 5))
    conn.push(chat("lobby", 6))
    assert client.unread == UnreadCounts()
    marker = await client.mark_read("lobby")
    assert marker == ReadMarker(6, 0, 0, room="lobby")
    conn.push(chat("lobby", 7))
    assert client.unread.rooms["lobby"] == Unread(1, 0, 6, 7, None)


async def test_a_deleted_unread_message_is_taken_back() -> None:
    """A delete of a message counted unread here takes it (and its mention) back."""
    client = Client("ws://127.0.0.1:9/ws", token="t")
    conn = signed_in(client)
    conn.push(joined("dev", 10, unread=0, mentions=0, last_read=10))
    client._streams["dev"] = SeqStream(expected=11)
    conn.push(chat("dev", 11, mentions=["me"]))
    conn.push(chat("dev", 12))
    assert (client.unread.rooms["dev"].unread, client.unread.rooms["dev"].mentions) == (2, 1)
    deleted = {"room": "dev", "message_id": "dev-11", "by": "bob", "seq": 13}
    conn.push({"type": "delete", "payload": deleted})
    conn.push({"type": "delete", "payload": {**deleted, "message_id": "old", "seq": 14}})
    assert (client.unread.rooms["dev"].unread, client.unread.rooms["dev"].mentions) == (1, 0)


async def test_mark_read_sends_the_newest_seq_and_takes_the_answer() -> None:
    """mark_read(room) sends the last seq delivered; the answer's counts are kept and delivered."""
    client = Client("ws://127.0.0.1:9/ws", token="t")
    events = collect(client)
    conn = signed_in(client, lambda sent: read_answer(sent, unread=0, mentions=0))
    conn.push(joined("lobby", 20, unread=2, mentions=0, last_read=18))
    conn.push(chat("lobby", 21))
    assert client.unread.rooms["lobby"].unread == 3
    marker = await client.mark_read("lobby")
    assert marker == ReadMarker(21, 0, 0, room="lobby")
    assert client.unread.rooms["lobby"] == Unread(0, 0, 21, 21, None)
    assert [e for e in events if isinstance(e, ReadMarker)] == [marker]
    await client.mark_read("lobby", 15)  # the server answers the marker as it is
    assert conn.of_type("read")[-1]["payload"] == {"room": "lobby", "seq": 15}
    with pytest.raises(ValueError, match="nothing seen in dev"):
        await client.mark_read("dev")
    assert [s["payload"] for s in conn.of_type("read")] == [
        {"room": "lobby", "seq": 21},
        {"room": "lobby", "seq": 15},
    ]


async def test_mark_read_outside_the_room_raises_not_member() -> None:
    """The server's not_member reaches the caller as a SendError; the counts stay."""
    client = Client("ws://127.0.0.1:9/ws", token="t")

    def answer(sent: dict[str, Any]) -> list[dict[str, Any]]:
        error = {"code": "not_member", "message": "join dev first"}
        return [{"type": "error", "id": sent["id"], "payload": error}]

    connected(client, answer)
    with pytest.raises(SendError) as refused:
        await client.mark_read("dev", 3)
    assert refused.value.code == "not_member"
    assert client.unread == UnreadCounts()


async def test_another_devices_read_moves_the_counts_and_a_stale_one_is_dropped() -> None:
    """A read frame from another device sets the counts (ReadMarker); an older one is ignored."""
    client = Client("ws://127.0.0.1:9/ws", token="t")
    events = collect(client)
    conn = signed_in(client)
    conn.push(joined("lobby", 30, unread=5, mentions=2, last_read=25))
    conn.push({"type": "read", "payload": {"room": "lobby", "seq": 28, "unread": 2, "mentions": 1}})
    conn.push({"type": "read", "payload": {"room": "lobby", "seq": 26, "unread": 4, "mentions": 2}})
    assert client.unread.rooms["lobby"] == Unread(2, 1, 28)
    assert [e for e in events if isinstance(e, ReadMarker)] == [ReadMarker(28, 2, 1, room="lobby")]
    conn.push(chat("lobby", 31))
    assert client.unread.rooms["lobby"].unread == 3
    # A room this client never had counts for: taken as the server says.
    conn.push({"type": "read", "payload": {"room": "far", "seq": 8, "unread": 1, "mentions": 0}})
    assert client.unread.rooms["far"] == Unread(1, 0, 8)


async def test_receipts_are_delivered_and_history_pages_carry_them() -> None:
    """receipt frames are events; history replies' receipts and read_counts are on the page."""
    client = Client("ws://127.0.0.1:9/ws", token="t")
    events = collect(client)
    pages = [
        {"messages": [], "has_more": False, "receipts": {"alice": 41, "bob": 40, "bad": "x"}},
        {"messages": [], "has_more": False, "read_counts": [[40, 3], [41, 0], ["x", 1], [2]]},
        {"messages": [], "has_more": False},
    ]

    def answer(sent: dict[str, Any]) -> list[dict[str, Any]]:
        return [{"type": "history", "id": sent["id"], "payload": pages.pop(0)}]

    conn = signed_in(client, answer)
    conn.push({"type": "receipt", "payload": {"room": "dev", "user": "ann", "seq": 12}})
    conn.push({"type": "receipt", "payload": {"direct": True, "user": "ann", "seq": 4}})
    assert [e for e in events if isinstance(e, Receipt)] == [
        Receipt("ann", 12, "dev"),
        Receipt("ann", 4),
    ]
    small = await client.history_page("dev")
    assert dict(small.receipts) == {"alice": 41, "bob": 40} and not small.read_counts
    big = await client.history_page("big")
    assert dict(big.read_counts) == {40: 3, 41: 0} and not big.receipts
    assert await client.history_page("off") == HistoryPage("off", [], False)


async def test_unread_counts_asks_the_server_and_refreshes_the_cache() -> None:
    """unread_counts() sends unread, returns typed counts; later messages count on top."""
    client = Client("ws://127.0.0.1:9/ws", token="t")
    client._streams["@direct"] = SeqStream(expected=20)

    def answer(sent: dict[str, Any]) -> list[dict[str, Any]]:
        assert sent["payload"] == {}
        return [{"type": "unread", "id": sent["id"], "payload": SPEC_UNREAD}]

    conn = signed_in(client, answer)
    counts = await client.unread_counts()
    assert conn.of_type("unread") and counts == client.unread
    assert counts.rooms["lobby"].unread == 3 and counts.direct is not None
    conn.push(direct(20, "bob", "me", mentions=["me"]))
    conn.push(direct(21, "cat", "me"))  # a conversation the reply did not list
    after = client.unread
    assert after.direct is not None
    assert (after.direct.unread, after.direct.mentions, after.direct.last_seq) == (4, 1, 21)
    assert after.conversations["cat"] == Unread(1, 0, 17, 21, None)
    conn.push(direct(22, "me", "cat"))  # mine: the conversation with cat is read, not bob's
    after = client.unread
    assert after.direct is not None
    assert (after.direct.unread, after.direct.mentions, after.direct.last_read) == (3, 1, 17)
    assert counts_of(after.conversations["bob"]) == (3, 1)
    assert after.conversations["cat"] == Unread(0, 0, 22, 22, None)
    assert after.total == 3 + 3


async def test_an_unread_reply_keeps_messages_it_did_not_count_yet() -> None:
    """A message delivered after the server counted (seq past its last_seq) stays unread."""
    client = Client("ws://127.0.0.1:9/ws", token="t")
    conn = signed_in(client)
    conn.push(joined("lobby", 43, unread=3, mentions=1, last_read=40))
    conn.push(chat("lobby", 44, mentions=["me"]))
    client._book.replace(unread_counts(SPEC_UNREAD))  # counted as of seq 43
    lobby = client.unread.rooms["lobby"]
    assert (lobby.unread, lobby.mentions, lobby.last_seq) == (4, 2, 44)
    conn.push(chat("lobby", 44))  # delivered again: no change
    assert client.unread.rooms["lobby"].unread == 4


async def test_direct_reads_move_the_stream_and_its_conversations() -> None:
    """A conversation's read lowers the whole stream; a whole-stream read clears conversations."""
    client = Client("ws://127.0.0.1:9/ws", token="t")
    client._streams["@direct"] = SeqStream(expected=20)
    events = collect(client)
    answers = [{"unread": 0, "mentions": 0}, {"unread": 0, "mentions": 0}]

    def answer(sent: dict[str, Any]) -> list[dict[str, Any]]:
        if sent["type"] == "unread":
            return [{"type": "unread", "id": sent["id"], "payload": SPEC_UNREAD}]
        return read_answer(sent, **answers.pop(0))

    conn = signed_in(client, answer)
    await client.unread_counts()
    conn.push(direct(20, "cat", "me"))
    conn.push(direct(21, "bob", "me"))
    conn.push(direct(22, "cat", "me"))
    assert client.unread.direct is not None and client.unread.direct.unread == 5
    bob = await client.mark_read_direct(with_="bob")
    assert bob == ReadMarker(21, 0, 0, with_="bob")
    assert client.unread.direct.unread == 2  # bob's 3 are read
    assert client.unread.conversations["cat"].unread == 2
    whole = await client.mark_read_direct()
    assert whole == ReadMarker(22, 0, 0)
    assert client.unread.conversations["cat"] == Unread(0, 0, 22, 22, None)
    assert [s["payload"] for s in conn.of_type("read")] == [
        {"direct": True, "seq": 21, "with": "bob"},
        {"direct": True, "seq": 22},
    ]
    assert [e for e in events if isinstance(e, ReadMarker)] == [bob, whole]


async def test_mark_read_direct_without_a_stream_needs_a_seq() -> None:
    """Before the direct stream is known (a guest) there is no newest seq to read up to."""
    client = Client("ws://127.0.0.1:9/ws")
    connected(client)
    with pytest.raises(ValueError, match="no direct message seen"):
        await client.mark_read_direct()


async def test_a_resume_takes_fresh_counts_and_does_not_count_the_replay(
    reader: asyncio.Future[None],
) -> None:
    """After a reconnect joined brings new counts; the messages replayed after it add nothing."""
    client = Client("ws://127.0.0.1:9/ws", token="t")
    client._streams["lobby"] = SeqStream(expected=11)
    client._streams["@direct"] = SeqStream(expected=18)
    client.user = "me"
    seen = {"unread": 0, "mentions": 0, "last_read": 17, "last_seq": 17}
    client._book.replace(unread_counts({"rooms": [], "direct": seen}))
    asked: list[str] = []

    def answer(sent: dict[str, Any]) -> list[dict[str, Any]]:
        asked.append(sent["type"])
        if sent["type"] == "join":
            assert sent["payload"] == {"room": "lobby", "since": 10}
            counts = {"unread": 2, "mentions": 0, "last_read": 10}
            reply = {"type": "joined", "id": sent["id"], "payload": {"room": "lobby", "seq": 12}}
            reply["payload"].update(counts)
            return [reply, chat("lobby", 11), chat("lobby", 12)]
        if sent["type"] == "direct_history":
            payload = {"messages": [direct(18, "bob", "me")["payload"]], "last_seq": 18}
            return [{"type": "direct_history", "id": sent["id"], "payload": payload}]
        # Read on another device meanwhile: nothing unread in direct messages.
        lobby = {"room": "lobby", "unread": 2, "mentions": 0, "last_read": 10, "last_seq": 12}
        fresh = {"rooms": [lobby], "direct": {"unread": 0, "mentions": 0, "last_read": 18}}
        return [{"type": "unread", "id": sent["id"], "payload": fresh}]

    await resume(client, FakeConnection(client, answer), reader)
    assert asked == ["join", "direct_history", "unread"]
    assert client.unread.rooms["lobby"] == Unread(2, 0, 10, 12, None)
    assert client.unread.direct is not None and client.unread.direct.unread == 0


async def test_a_new_identity_starts_the_counts_over() -> None:
    """auth to another user forgets the counts of the one before."""
    client = Client("ws://127.0.0.1:9/ws", token="t")
    conn = signed_in(client, user="ann")
    conn.push(joined("lobby", 5, unread=1, mentions=0, last_read=4))
    conn.push({"type": "auth", "payload": {"ok": True, "user": {"name": "ann"}}})
    assert "lobby" in client.unread.rooms
    conn.push({"type": "auth", "payload": {"ok": True, "user": {"name": "bob"}}})
    assert client.unread == UnreadCounts() and client.user == "bob"


# -- the book alone ---------------------------------------------------------------------------


@given(st.lists(st.tuples(st.integers(1, 30), st.booleans(), st.booleans()), max_size=40))
def test_each_message_counts_once_whatever_is_replayed(
    offers: list[tuple[int, bool, bool]],
) -> None:
    """Offered in any order, repeated: each new one from another counts once; mine reads all."""
    book = UnreadBook()
    book.joined({"room": "r", "seq": 5, "unread": 0, "mentions": 0, "last_read": 5})
    newest, unread, mentions = 5, 0, 0
    for seq, mine, named in offers:
        message = RoomMessage(
            "r", "me" if mine else "bob", "x", seq, f"m{seq}", None, mentions=("me",) * named
        )
        book.message(message, "me")
        if seq > newest:  # past what was counted: new (an older seq is a replay)
            newest = seq
            unread, mentions = (0, 0) if mine else (unread + 1, mentions + named)
    room = book.snapshot().rooms["r"]
    assert (room.unread, room.mentions) == (unread, mentions)
