"""Messages that change (issue 18) in the client, without sockets: frames, streams, the outbox.

The server is a :class:`~tests.client.wire.FakeConnection`: what the client
writes is recorded and answered by a function of the test.
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
    ConnectionState,
    DirectMessage,
    HistoryPage,
    Mention,
    MessageDeleted,
    MessageEdited,
    Quote,
    Reaction,
    Reply,
    RoomMessage,
    SendError,
    parse_server_frame,
)
from roomcast.client.core import SeqStream
from roomcast.client.events import direct_item
from tests.client.wire import FakeConnection, ack, collect, connected, frame, resume

# -- frames -----------------------------------------------------------------------------


def test_room_change_frames_become_events() -> None:
    """edit, delete and reaction frames in a room parse to their events with the room's seq."""
    edit = parse_server_frame(
        frame(
            "edit",
            {
                "room": "dev",
                "message_id": "m1",
                "message": "fixed",
                "by": "ann",
                "seq": 7,
                "edited_at": "2026-01-02T03:04:05.600Z",
            },
        )
    )
    assert edit == MessageEdited(
        "m1", "fixed", "ann", 7, datetime(2026, 1, 2, 3, 4, 5, 600000, tzinfo=UTC), room="dev"
    )
    delete = parse_server_frame(
        frame(
            "delete",
            {"room": "dev", "message_id": "m1", "by": "own", "seq": 8},
            timestamp="2026-01-02T03:04:06.000Z",
        )
    )
    assert isinstance(delete, MessageDeleted)
    assert (delete.room, delete.message_id, delete.by, delete.seq) == ("dev", "m1", "own", 8)
    assert delete.timestamp == datetime(2026, 1, 2, 3, 4, 6, tzinfo=UTC)
    erased = parse_server_frame(
        frame("edit", {"room": "dev", "message_id": "m1", "by": "a", "seq": 8})
    )
    assert isinstance(erased, MessageEdited) and erased.text == ""  # replayed after a delete
    gone = {"room": "dev", "message_id": "m1", "emoji": "\U0001f44d", "user": "bob", "seq": 9}
    reaction = parse_server_frame(frame("reaction", {**gone, "added": False}))
    assert reaction == Reaction("m1", "\U0001f44d", "bob", False, 9, room="dev")


def test_direct_change_and_mention_frames_name_the_conversation() -> None:
    """A direct message's changes carry from/to instead of a room; mention names the room."""
    edit = parse_server_frame(
        frame(
            "edit",
            {"from": "ann", "to": "bob", "message_id": "d1", "message": "x", "by": "ann", "seq": 3},
        )
    )
    assert isinstance(edit, MessageEdited)
    assert (edit.room, edit.sender, edit.to, edit.seq) == (None, "ann", "bob", 3)
    reaction = parse_server_frame(
        frame(
            "reaction",
            {
                "from": "ann",
                "to": "bob",
                "message_id": "d1",
                "emoji": ":tada:",
                "user": "bob",
                "added": True,
                "seq": 4,
            },
        )
    )
    assert reaction == Reaction("d1", ":tada:", "bob", True, 4, sender="ann", to="bob")
    mention = parse_server_frame(
        frame("mention", {"room": "dev", "message_id": "c9", "from": "cat", "seq": 5})
    )
    assert mention == Mention("dev", "c9", "cat", 5)


def test_replies_mentions_and_history_state_are_read() -> None:
    """A chat's reply_to, thread, quote and mentions; a history item's edit, delete, reactions."""
    reply = parse_server_frame(
        frame(
            "chat",
            {
                "room": "dev",
                "message": "@bob yes",
                "from": "ann",
                "seq": 4,
                "message_id": "r1",
                "reply_to": "m1",
                "thread": "m0",
                "quote": {"from": "bob", "message": "really?"},
                "mentions": ["bob"],
            },
        )
    )
    assert isinstance(reply, RoomMessage)
    assert (reply.reply_to, reply.thread, reply.mentions) == ("m1", "m0", ("bob",))
    assert reply.quote == Quote("bob", "really?")
    assert (reply.edited_at, reply.deleted, dict(reply.reactions), reply.reply_count) == (
        None,
        False,
        {},
        0,
    )
    deleted_quote = parse_server_frame(
        frame(
            "chat",
            {
                "room": "dev",
                "message": "hm",
                "seq": 5,
                "reply_to": "m2",
                "quote": {"from": "bob", "deleted": True},
            },
        )
    )
    assert isinstance(deleted_quote, RoomMessage)
    assert deleted_quote.quote == Quote("bob", None, deleted=True)
    items = [
        {
            "type": "chat",
            "room": "dev",
            "from": "ann",
            "message": "v2",
            "seq": 1,
            "message_id": "m0",
            "edited_at": "2026-01-02T03:04:05Z",
            "reactions": {"\U0001f44d": ["bob", "cat"], ":tada:": ["ann"]},
            "reply_count": 2,
        },
        {"type": "file", "room": "dev", "from": "ann", "seq": 2, "deleted": True},
    ]
    edited = parse_server_frame(frame("chat", items[0]))
    assert isinstance(edited, RoomMessage) and edited.text == "v2"
    assert edited.edited_at == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert dict(edited.reactions) == {"\U0001f44d": ("bob", "cat"), ":tada:": ("ann",)}
    assert edited.reply_count == 2
    gone = parse_server_frame(frame("file", items[1]))
    assert isinstance(gone, RoomMessage) and gone.deleted
    assert (gone.text, gone.file) == ("", None)
    direct = parse_server_frame(
        frame("direct", {"from": "a", "to": "b", "message": "hi @b", "seq": 1, "mentions": ["b"]})
    )
    assert isinstance(direct, DirectMessage) and direct.mentions == ("b",)
    assert hash(edited) == hash(parse_server_frame(frame("chat", items[0])))


def test_direct_history_items_parse_by_type() -> None:
    """direct_history items are messages, changes or mentions by their type; others are Replies."""
    assert isinstance(
        direct_item({"type": "direct", "from": "a", "to": "b", "message": "x", "seq": 1}),
        DirectMessage,
    )
    assert isinstance(
        direct_item(
            {"type": "delete", "from": "a", "to": "b", "message_id": "d", "by": "a", "seq": 2}
        ),
        MessageDeleted,
    )
    assert isinstance(
        direct_item({"type": "mention", "room": "r", "message_id": "c", "from": "a", "seq": 3}),
        Mention,
    )
    assert direct_item({"type": "pin", "seq": 4}) == Reply("pin", {"type": "pin", "seq": 4}, None)
    with pytest.raises(ValueError, match="malformed edit"):
        direct_item({"type": "edit", "seq": 5})


def test_an_unknown_frame_type_is_a_reply() -> None:
    """A frame type the client does not know is handed over as a Reply, not an error."""
    event = parse_server_frame(frame("pinned", {"room": "dev", "seq": 3}))
    assert event == Reply("pinned", {"room": "dev", "seq": 3}, None)


@given(
    st.dictionaries(
        st.sampled_from(
            ["room", "message", "from", "to", "seq", "message_id", "by", "emoji", "user", "added"]
            + ["edited_at", "quote", "mentions", "reactions", "reply_count", "deleted"]
        ),
        st.none()
        | st.booleans()
        | st.integers(-(2**63), 2**63 - 1)
        | st.text(max_size=5)
        | st.lists(st.integers(0, 9), max_size=2)
        | st.dictionaries(st.text(max_size=3), st.integers(0, 3) | st.text(max_size=3)),
    ),
    st.sampled_from(["edit", "delete", "reaction", "mention", "chat", "direct", "file"]),
)
def test_malformed_change_frames_raise_value_error(payload: dict[str, object], kind: str) -> None:
    """A change or message frame with missing or wrong fields is a ValueError, nothing else."""
    try:
        parse_server_frame(orjson.dumps({"type": kind, "payload": payload}))
    except ValueError:
        pass


# -- the ordered streams -------------------------------------------------------------------


def test_a_stream_passes_over_placeholders_in_order() -> None:
    """A seq offered with no event takes its place in the order and delivers nothing."""
    stream = SeqStream(expected=1)
    m1, m3 = (RoomMessage("r", "a", f"m{s}", s, f"id{s}", None) for s in (1, 3))
    assert stream.offer(3, m3) == []
    assert stream.offer(2, None) == []
    assert stream.offer(1, m1) == [m1, m3]
    assert stream.expected == 4 and not stream.early
    assert stream.offer(5, None) == [] and stream.offer(5, m1) == []
    assert stream.early == {5: m1}  # an event replaces a placeholder, never the reverse
    assert stream.offer(5, None) == [] and stream.early == {5: m1}


async def test_room_changes_are_ordered_and_deduplicated_with_the_chat() -> None:
    """Changes share the room's seqs with chat: delivered in seq order, each once."""
    client = Client("ws://127.0.0.1:9/ws")
    events = collect(client)
    conn = connected(client)
    conn.push({"type": "joined", "payload": {"room": "lobby", "seq": 10}})
    edit = {"room": "lobby", "message_id": "m11", "message": "v2", "by": "a", "seq": 13}
    react = {"room": "lobby", "message_id": "m11", "emoji": "x", "user": "b", "added": True}
    chat = {"room": "lobby", "message": "v1", "from": "a", "seq": 11, "message_id": "m11"}
    conn.push({"type": "edit", "payload": edit})
    conn.push({"type": "reaction", "payload": {**react, "seq": 12}})
    assert not [e for e in events if hasattr(e, "seq")]  # they wait for seq 11
    conn.push({"type": "chat", "payload": chat})
    conn.push({"type": "edit", "payload": edit})  # a repeat (a replay after a reconnect)
    conn.push(
        {"type": "delete", "payload": {"room": "lobby", "message_id": "m11", "by": "a", "seq": 14}}
    )
    conn.push({"type": "edit", "payload": {**edit, "room": "elsewhere"}})  # a room not joined
    delivered = [e for e in events if hasattr(e, "seq")]
    assert [(type(e).__name__, e.seq) for e in delivered] == [
        ("RoomMessage", 11),
        ("Reaction", 12),
        ("MessageEdited", 13),
        ("MessageDeleted", 14),
    ]
    assert client.last_seq("lobby") == 14


async def test_direct_changes_and_mentions_follow_the_direct_stream() -> None:
    """Direct changes and mentions take the direct stream's seqs, in order, once."""
    client = Client("ws://127.0.0.1:9/ws", token="t")
    events = collect(client)
    client._streams["@direct"] = SeqStream(expected=5)
    conn = connected(client)
    mention = {"room": "far", "message_id": "c1", "from": "cat", "seq": 7}
    direct_edit = {"from": "ann", "to": "bob", "message_id": "d1", "message": "x", "by": "ann"}
    conn.push({"type": "mention", "payload": mention})
    conn.push({"type": "edit", "payload": {**direct_edit, "seq": 6}})
    conn.push({"type": "direct", "payload": {"from": "a", "to": "b", "message": "m", "seq": 5}})
    conn.push({"type": "mention", "payload": mention})
    assert [type(e).__name__ for e in events if hasattr(e, "seq")] == [
        "DirectMessage",
        "MessageEdited",
        "Mention",
    ]


async def test_unknown_frames_are_handed_over_and_the_client_carries_on() -> None:
    """An unknown event type reaches the application as a Reply; the next chat still arrives."""
    client = Client("ws://127.0.0.1:9/ws")
    events = collect(client)
    conn = connected(client)
    conn.push({"type": "joined", "payload": {"room": "lobby", "seq": 0}})
    conn.push({"type": "sparkle", "payload": {"room": "lobby", "what": [1, 2]}})
    chat = {"room": "lobby", "message": "hi", "from": "a", "seq": 1, "message_id": "m"}
    conn.push({"type": "chat", "payload": chat})
    assert Reply("sparkle", {"room": "lobby", "what": [1, 2]}, None) in events
    assert [e.text for e in events if isinstance(e, RoomMessage)] == ["hi"]


# -- sending ---------------------------------------------------------------------------------


async def test_change_methods_send_the_spec_frames_and_return_the_ack() -> None:
    """edit, delete, react, unreact and a reply send the spec's frames; each returns its ack."""
    client = Client("ws://127.0.0.1:9/ws")

    def answer(sent: dict[str, Any]) -> list[dict[str, Any]]:
        if sent["type"] == "delete" and sent["payload"]["message_id"] == "gone":
            return ack(sent, message_id="gone")  # deleted already: no seq
        if sent["type"] == "edit" and sent["payload"]["message_id"] == "theirs":
            return [
                {
                    "type": "error",
                    "id": sent["id"],
                    "payload": {"code": "forbidden", "message": "not yours"},
                }
            ]
        return ack(sent, room="lobby", seq=len(conn.sent), message_id="m1")

    conn = connected(client, answer)
    assert (await client.edit("m1", "better")).payload == {
        "room": "lobby",
        "seq": 1,
        "message_id": "m1",
    }
    await client.react("m1", "\U0001f44d")
    await client.unreact("m1", ":tada:")
    await client.send_chat("me too", "lobby", reply_to="m1")
    await client.send_chat("plain")
    assert "seq" not in (await client.delete("gone")).payload
    with pytest.raises(SendError) as refused:
        await client.edit("theirs", "mine now")
    assert refused.value.code == "forbidden"
    assert [(s["type"], s["payload"]) for s in conn.sent] == [
        ("edit", {"message_id": "m1", "message": "better"}),
        ("react", {"message_id": "m1", "emoji": "\U0001f44d"}),
        ("unreact", {"message_id": "m1", "emoji": ":tada:"}),
        ("chat", {"room": "lobby", "message": "me too", "reply_to": "m1"}),
        ("chat", {"room": "lobby", "message": "plain"}),
        ("delete", {"message_id": "gone"}),
        ("edit", {"message_id": "theirs", "message": "mine now"}),
    ]
    assert len({s["id"] for s in conn.sent}) == len(conn.sent)
    assert not client._outbox


async def test_history_asks_for_a_thread_or_around_a_seq() -> None:
    """history() sends thread and around; history_page() also says whether newer ones exist."""
    client = Client("ws://127.0.0.1:9/ws")
    root = {"type": "chat", "from": "a", "message": "q", "seq": 3, "message_id": "m3"}

    def answer(sent: dict[str, Any]) -> list[dict[str, Any]]:
        payload = {"room": "dev", "messages": [root], "has_more": False, "has_newer": True}
        return [{"type": "history", "id": sent["id"], "payload": payload}]

    conn = connected(client, answer)
    messages, more = await client.history("dev", thread="m3", limit=10)
    assert [m.message_id for m in messages] == ["m3"] and messages[0].room == "dev"
    assert more is False
    page = await client.history_page("dev", around=40, limit=20)
    assert page == HistoryPage("dev", page.messages, False, True)
    assert [s["payload"] for s in conn.sent] == [
        {"room": "dev", "limit": 10, "thread": "m3"},
        {"room": "dev", "limit": 20, "around": 40},
    ]


async def test_a_change_made_offline_is_resent_with_the_same_id(
    reader: asyncio.Future[None],
) -> None:
    """An edit waits offline, is lost once, is resent with the same id and returns the one ack."""
    client = Client("ws://127.0.0.1:9/ws")
    events = collect(client)
    editing = asyncio.ensure_future(client.edit("m1", "v2"))
    await asyncio.sleep(0)
    assert len(client._outbox) == 1 and not editing.done()

    def joined(sent: dict[str, Any], seq: int) -> list[dict[str, Any]]:
        return [{"type": "joined", "id": sent["id"], "payload": {"room": "lobby", "seq": seq}}]

    lost = FakeConnection(client, lambda sent: joined(sent, 5) if sent["type"] == "join" else [])
    await resume(client, lost, reader)
    assert client.last_seq("lobby") == 5 and not editing.done()

    edit_event = {"room": "lobby", "message_id": "m1", "message": "v2", "by": "me", "seq": 6}

    def answer(sent: dict[str, Any]) -> list[dict[str, Any]]:
        if sent["type"] == "join":
            # The change made while the first ack was lost is replayed after since.
            assert sent["payload"] == {"room": "lobby", "since": 5}
            return [*joined(sent, 6), {"type": "edit", "payload": edit_event}]
        # The server applied the first copy: it acks again and broadcasts nothing new.
        return ack(sent, room="lobby", seq=6, message_id="m1")

    again = FakeConnection(client, answer)
    await resume(client, again, reader)
    reply = await asyncio.wait_for(editing, 1)
    assert reply.payload == {"room": "lobby", "seq": 6, "message_id": "m1"}
    [first] = lost.of_type("edit")
    [second] = again.of_type("edit")
    assert first == second  # the same frame, the same id
    again.push({"type": "edit", "payload": edit_event})  # and live once more: dropped
    assert [e for e in events if isinstance(e, MessageEdited)] == [
        MessageEdited("m1", "v2", "me", 6, None, room="lobby")
    ]


async def test_a_capped_replay_passes_over_the_changes_history_leaves_out(
    reader: asyncio.Future[None],
) -> None:
    """Paging back a capped replay: history lists messages only; the change seqs do not stall it."""
    client = Client("ws://127.0.0.1:9/ws")
    events = collect(client)
    client._streams["lobby"] = SeqStream(expected=5)

    def item(seq: int) -> dict[str, Any]:
        return {
            "type": "chat",
            "from": "a",
            "message": f"m{seq}",
            "seq": seq,
            "message_id": f"{seq}",
        }

    def answer(sent: dict[str, Any]) -> list[dict[str, Any]]:
        if sent["type"] == "join":
            assert sent["payload"] == {"room": "lobby", "since": 4}
            replay = [
                {
                    "type": "reaction",
                    "payload": {
                        "room": "lobby",
                        "message_id": "7",
                        "emoji": "x",
                        "user": "b",
                        "added": True,
                        "seq": 12,
                    },
                },
                {"type": "chat", "payload": {"room": "lobby", **item(13)}},
            ]
            payload = {"room": "lobby", "seq": 13, "replay_from": 12, "recovered": True}
            return [{"type": "joined", "id": sent["id"], "payload": payload}, *replay]
        assert sent["type"] == "history" and sent["payload"]["before"] == 12
        # Seqs 6, 8, 9 and 11 were changes; 4 is older than the gap.
        page = [item(s) for s in (4, 5, 7, 10)]
        return [
            {
                "type": "history",
                "id": sent["id"],
                "payload": {"room": "lobby", "messages": page, "has_more": True},
            }
        ]

    await resume(client, FakeConnection(client, answer), reader)
    assert [(type(e).__name__, e.seq) for e in events if hasattr(e, "seq")] == [
        ("RoomMessage", 5),
        ("RoomMessage", 7),
        ("RoomMessage", 10),
        ("Reaction", 12),
        ("RoomMessage", 13),
    ]
    assert client.last_seq("lobby") == 13 and client.state is ConnectionState.CONNECTED


async def test_direct_catch_up_replays_changes_and_mentions_in_order(
    reader: asyncio.Future[None],
) -> None:
    """direct_history since: messages, changes, mentions in seq order; a bad item is skipped."""
    client = Client("ws://127.0.0.1:9/ws", token="t")
    events = collect(client)
    client._streams["@direct"] = SeqStream(expected=3)
    items = [
        {
            "type": "direct",
            "from": "a",
            "to": "me",
            "message": "hi @me",
            "seq": 3,
            "message_id": "d",
        },
        {
            "type": "edit",
            "from": "a",
            "to": "me",
            "message_id": "d",
            "message": "hey",
            "by": "a",
            "seq": 4,
        },
        {"type": "edit", "seq": 5},  # unreadable: passed over
        {"type": "poll", "seq": 6, "question": "?"},  # unknown: handed over in its place
        {"type": "mention", "room": "far", "message_id": "c", "from": "b", "seq": 7},
    ]

    def answer(sent: dict[str, Any]) -> list[dict[str, Any]]:
        if sent["type"] == "join":
            return [{"type": "joined", "id": sent["id"], "payload": {"room": "lobby", "seq": 0}}]
        assert sent["type"] == "direct_history" and sent["payload"]["since"] == 2
        payload = {"messages": items, "has_more": False, "last_seq": 7}
        return [{"type": "direct_history", "id": sent["id"], "payload": payload}]

    conn = FakeConnection(client, answer)
    await resume(client, conn, reader)
    conn.push({"type": "direct", "payload": {"from": "b", "to": "me", "message": "x", "seq": 8}})
    ordered = [
        e
        for e in events
        if isinstance(e, DirectMessage | MessageEdited | Mention | Reply)
        and not (isinstance(e, Reply) and e.type != "poll")
    ]
    assert [type(e).__name__ for e in ordered] == [
        "DirectMessage",
        "MessageEdited",
        "Reply",
        "Mention",
        "DirectMessage",
    ]
