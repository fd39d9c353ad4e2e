"""Messages that change, over real sockets: edit, delete, react, reply, threads, mentions.

The server runs on SQLite with a known ``--secret``; alice, bob and carol
are registered and signed in on the handshake.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect

from tests.integration.serverproc import ServerFactory, ServerProcess
from tests.integration.users import SECRET, call, create_team, sign_up, user_ws
from tests.integration.wsclient import ask, recv_json, welcome

#: How long a test waits to be sure a frame does not arrive.
QUIET = 0.4


@pytest.fixture
async def server(server_factory: ServerFactory) -> ServerProcess:
    """A server with a known secret."""
    return server_factory("--secret", SECRET)


async def chat(ws: ClientConnection, text: str, fid: str, room: str = "lobby", **more: Any) -> str:
    """Send a chat and wait for its ack; its message id."""
    reply = await ask(ws, "chat", {"room": room, "message": text, **more}, fid)
    assert reply["type"] == "ack", reply
    return str(reply["payload"]["message_id"])


async def frames_until_quiet(ws: ClientConnection) -> list[dict[str, Any]]:
    """Every frame that arrives until none has for :data:`QUIET` seconds."""
    frames = []
    try:
        while True:
            frames.append(await recv_json(ws, QUIET))
    except TimeoutError:
        return frames


async def history(ws: ClientConnection, fid: str, **payload: Any) -> dict[str, Any]:
    reply = await ask(ws, "history", {"room": "lobby", **payload}, fid)
    assert reply["type"] == "history", reply
    return reply["payload"]  # type: ignore[no-any-return]


async def test_edit_react_delete_reach_members_in_one_order(
    server: ServerProcess, tokens: dict[str, str]
) -> None:
    """Each change takes the room's next seq, reaches every member, and history shows the state."""
    alice, bob = await user_ws(server, tokens["alice"]), await user_ws(server, tokens["bob"])
    carol = await user_ws(server, tokens["carol"])
    message_id = await chat(alice, "helo", "c1")
    edited = await ask(alice, "edit", {"message_id": message_id, "message": "hello"}, "e1")
    assert edited["type"] == "ack" and edited["payload"] == {
        "room": "lobby",
        "seq": 2,
        "message_id": message_id,
    }
    reacted = await ask(bob, "react", {"message_id": message_id, "emoji": "👍"}, "r1")
    assert reacted["payload"]["seq"] == 3
    page = await history(bob, "h1")
    (item,) = page["messages"]
    assert item["message"] == "hello" and "edited_at" in item
    assert item["reactions"] == {"👍": ["bob"]}
    deleted = await ask(alice, "delete", {"message_id": message_id}, "d1")
    assert deleted["payload"]["seq"] == 4
    again = await ask(alice, "delete", {"message_id": message_id}, "d2")
    assert again["type"] == "ack" and "seq" not in again["payload"]
    # Receipts (how far others read) come when a marker is written, whenever that is.
    seen = [f for f in await frames_until_quiet(carol) if f["type"] not in ("presence", "receipt")]
    kinds = [(f["type"], f["payload"].get("seq")) for f in seen]
    assert kinds == [("chat", 1), ("edit", 2), ("reaction", 3), ("delete", 4)]
    assert seen[1]["payload"]["message"] == "hello" and seen[1]["payload"]["by"] == "alice"
    assert seen[2]["payload"] == {
        "room": "lobby",
        "message_id": message_id,
        "emoji": "👍",
        "user": "bob",
        "added": True,
        "seq": 3,
    }
    (tombstone,) = (await history(bob, "h2"))["messages"]
    assert tombstone["deleted"] is True and "message" not in tombstone
    assert "reactions" not in tombstone
    for ws in (alice, bob, carol):
        await ws.close()


async def test_an_offline_member_catches_up_on_exactly_the_changes(
    server: ServerProcess, tokens: dict[str, str]
) -> None:
    """A member away while a message is edited, reacted to and deleted replays exactly that."""
    alice, bob = await user_ws(server, tokens["alice"]), await user_ws(server, tokens["bob"])
    message_id = await chat(alice, "first", "c1")
    await frames_until_quiet(bob)
    await bob.close()
    await ask(alice, "edit", {"message_id": message_id, "message": "second"}, "e1")
    await ask(alice, "react", {"message_id": message_id, "emoji": ":tada:"}, "r1")
    await ask(alice, "unreact", {"message_id": message_id, "emoji": ":tada:"}, "r2")
    await ask(alice, "delete", {"message_id": message_id}, "d1")
    bob = await user_ws(server, tokens["bob"])
    joined = await ask(bob, "join", {"room": "lobby", "since": 1}, "j1")
    assert joined["type"] == "joined" and joined["payload"]["seq"] == 5
    # Receipts (how far others read) come when a marker is written, whenever that is.
    replay = [f for f in await frames_until_quiet(bob) if f["type"] not in ("presence", "receipt")]
    assert [(f["type"], f["payload"]["seq"]) for f in replay] == [
        ("edit", 2),
        ("reaction", 3),
        ("reaction", 4),
        ("delete", 5),
    ]
    # The edit's text went with the message.
    assert replay[0]["payload"]["message"] == ""
    assert [f["payload"]["added"] for f in replay[1:3]] == [True, False]
    for ws in (alice, bob):
        await ws.close()


async def test_only_the_author_edits_and_the_owner_may_delete(
    server: ServerProcess, tokens: dict[str, str]
) -> None:
    """Another member's edit or delete is forbidden; a private room's owner deletes any message."""
    await create_team(server, tokens)
    alice, bob = await user_ws(server, tokens["alice"]), await user_ws(server, tokens["bob"])
    lobby_id = await chat(alice, "mine", "c1")
    refused = await ask(bob, "edit", {"message_id": lobby_id, "message": "yours"}, "e1")
    assert refused["payload"]["code"] == "forbidden"
    refused = await ask(bob, "delete", {"message_id": lobby_id}, "d1")
    assert refused["payload"]["code"] == "forbidden"
    for ws in (alice, bob):
        assert (await ask(ws, "join", {"room": "team"}, "j"))["type"] == "joined"
    bobs = await chat(bob, "in the team", "c2", room="team")
    removed = await ask(alice, "delete", {"message_id": bobs}, "d2")
    assert removed["type"] == "ack" and removed["payload"]["room"] == "team"
    missing = await ask(alice, "edit", {"message_id": "f" * 32, "message": "x"}, "e2")
    assert missing["payload"]["code"] == "not_found"
    for ws in (alice, bob):
        await ws.close()


async def test_an_outsider_can_neither_react_nor_reply_to_a_private_room(
    server: ServerProcess, tokens: dict[str, str]
) -> None:
    """carol, not in team, gets not_found for its messages; a reply across rooms is refused."""
    await create_team(server, tokens)
    alice, carol = await user_ws(server, tokens["alice"]), await user_ws(server, tokens["carol"])
    await ask(alice, "join", {"room": "team"}, "j1")
    secret = await chat(alice, "team only", "c1", room="team")
    for kind, payload in (
        ("react", {"message_id": secret, "emoji": "👀"}),
        ("delete", {"message_id": secret}),
        ("edit", {"message_id": secret, "message": "x"}),
        ("chat", {"room": "lobby", "message": "re", "reply_to": secret}),
    ):
        refused = await ask(carol, kind, payload, kind)
        assert refused["payload"]["code"] == "not_found", (kind, refused)
    other = await ask(alice, "chat", {"room": "lobby", "message": "x", "reply_to": secret}, "x")
    assert other["payload"]["code"] == "invalid_message"
    # Joined elsewhere only: a reaction needs the room joined, as a chat does.
    await ask(alice, "leave", {"room": "team"}, "l1")
    away = await ask(alice, "react", {"message_id": secret, "emoji": "👀"}, "r2")
    assert away["payload"]["code"] == "not_member"
    status, body = await call(
        server,
        "PUT",
        f"/api/messages/{secret}/reactions/%F0%9F%91%80",
        bearer=tokens["carol"],
    )
    assert (status, body["error"]["code"]) == (404, "not_found")
    for ws in (alice, carol):
        await ws.close()


async def test_a_resent_change_is_applied_once(
    server: ServerProcess, tokens: dict[str, str]
) -> None:
    """The same edit and reaction resent with their ids after a reconnect are acked, not redone."""
    alice = await user_ws(server, tokens["alice"])
    message_id = await chat(alice, "one", "c1")
    first = await ask(alice, "edit", {"message_id": message_id, "message": "two"}, "e1")
    react = await ask(alice, "react", {"message_id": message_id, "emoji": "🎉"}, "r1")
    await alice.close()
    alice = await user_ws(server, tokens["alice"])
    again = await ask(alice, "edit", {"message_id": message_id, "message": "two"}, "e1")
    assert again["payload"] == first["payload"]
    react_again = await ask(alice, "react", {"message_id": message_id, "emoji": "🎉"}, "r1")
    assert react_again["payload"] == react["payload"]
    reused = await ask(alice, "edit", {"message_id": message_id, "message": "three"}, "e1")
    assert reused["payload"]["code"] == "invalid_message"
    joined = await ask(alice, "join", {"room": "lobby"}, "j")
    assert joined["payload"]["seq"] == 3
    await alice.close()


async def test_reactions_are_checked_counted_and_capped(
    server: ServerProcess, tokens: dict[str, str]
) -> None:
    """A bad emoji is refused; a second identical reaction changes nothing; 20 emoji at most."""
    alice = await user_ws(server, tokens["alice"])
    message_id = await chat(alice, "react to me", "c1")
    for bad in ("ab", " ", ":Nope:", "👍👍"):
        refused = await ask(alice, "react", {"message_id": message_id, "emoji": bad}, "bad")
        assert refused["payload"]["code"] == "invalid_message", bad
    emoji = [chr(0x1F600 + i) for i in range(20)]
    for i, one in enumerate(emoji):
        reply = await ask(alice, "react", {"message_id": message_id, "emoji": one}, f"r{i}")
        assert reply["payload"]["seq"] == i + 2
    same = await ask(alice, "react", {"message_id": message_id, "emoji": emoji[0]}, "same")
    assert same["type"] == "ack" and "seq" not in same["payload"]
    over = await ask(alice, "react", {"message_id": message_id, "emoji": "🦄"}, "over")
    assert over["payload"]["code"] == "invalid_message"
    absent = await ask(alice, "unreact", {"message_id": message_id, "emoji": "🦄"}, "absent")
    assert absent["type"] == "ack" and "seq" not in absent["payload"]
    (item,) = (await history(alice, "h"))["messages"]
    assert list(item["reactions"]) == emoji
    await alice.close()


async def test_replies_make_threads_with_quotes(
    server: ServerProcess, tokens: dict[str, str]
) -> None:
    """A reply names its thread and quotes what it answers; history pages one thread and around."""
    alice, bob = await user_ws(server, tokens["alice"]), await user_ws(server, tokens["bob"])
    carol = await user_ws(server, tokens["carol"])
    root = await chat(alice, "shall we ship on friday?", "c1")
    await chat(bob, "unrelated", "c2")
    reply = await chat(bob, "yes", "c3", reply_to=root)
    await chat(alice, "great", "c4", reply_to=reply)
    live = [f for f in await frames_until_quiet(carol) if f["type"] == "chat"]
    assert live[2]["payload"]["reply_to"] == root and live[2]["payload"]["thread"] == root
    assert live[2]["payload"]["quote"] == {"from": "alice", "message": "shall we ship on friday?"}
    assert live[3]["payload"]["thread"] == root
    page = await history(alice, "h1", thread=root)
    assert [m["message"] for m in page["messages"]] == ["shall we ship on friday?", "yes", "great"]
    assert page["thread"] == root and page["messages"][0]["reply_count"] == 2
    assert page["messages"][2]["quote"] == {"from": "bob", "message": "yes"}
    around = await history(alice, "h2", around=3, limit=2)
    assert [m["seq"] for m in around["messages"]] == [2, 3]
    assert around["has_more"] is True and around["has_newer"] is True
    missing = await ask(alice, "chat", {"message": "?", "reply_to": "0" * 32}, "c5")
    assert missing["payload"]["code"] == "not_found"
    for ws in (alice, bob, carol):
        await ws.close()


async def test_mentions_are_resolved_and_reach_the_named_user(
    server: ServerProcess, tokens: dict[str, str]
) -> None:
    """@bob lists bob and sends bob a mention on his direct stream; outsiders are not listed."""
    await create_team(server, tokens)
    alice, bob = await user_ws(server, tokens["alice"]), await user_ws(server, tokens["bob"])
    await ask(bob, "leave", {"room": "lobby"}, "l1")
    message_id = await chat(alice, "hi @BOB and @nobody, mail me@alice.example", "c1")
    mention = next(f for f in await frames_until_quiet(bob) if f["type"] == "mention")
    assert mention["payload"] == {
        "room": "lobby",
        "message_id": message_id,
        "from": "alice",
        "seq": 1,
    }
    (item,) = (await history(alice, "h"))["messages"]
    assert item["mentions"] == ["bob"]
    await ask(alice, "join", {"room": "team"}, "j1")
    await chat(alice, "@carol @bob", "c2", room="team")
    page = await ask(alice, "history", {"room": "team"}, "h2")
    assert page["payload"]["messages"][0]["mentions"] == ["bob"]
    replay = await ask(bob, "direct_history", {"since": 0}, "dh")
    assert [m["type"] for m in replay["payload"]["messages"]] == ["mention", "mention"]
    for ws in (alice, bob):
        await ws.close()


async def test_direct_messages_change_between_the_two_only(
    server: ServerProcess, tokens: dict[str, str]
) -> None:
    """Both sides see an edit and a reaction with their own seqs; a third user cannot touch it."""
    alice, bob = await user_ws(server, tokens["alice"]), await user_ws(server, tokens["bob"])
    carol, bobs_phone = await user_ws(server, tokens["carol"]), await user_ws(server, tokens["bob"])
    sent = await ask(alice, "direct", {"to": "bob", "message": "psst"}, "d1")
    message_id = sent["payload"]["message_id"]
    await ask(alice, "edit", {"message_id": message_id, "message": "psst!"}, "e1")
    await ask(bob, "react", {"message_id": message_id, "emoji": "🤫"}, "r1")
    for kind, payload in (
        ("react", {"message_id": message_id, "emoji": "👀"}),
        ("edit", {"message_id": message_id, "message": "mine"}),
    ):
        refused = await ask(carol, kind, payload, kind)
        assert refused["payload"]["code"] == "not_found"
    refused = await ask(bob, "delete", {"message_id": message_id}, "d2")
    assert refused["payload"]["code"] == "forbidden"
    seen = [
        f
        for f in await frames_until_quiet(bobs_phone)
        if f["type"] in ("direct", "edit", "reaction")
    ]
    assert [(f["type"], f["payload"]["seq"]) for f in seen] == [
        ("direct", 1),
        ("edit", 2),
        ("reaction", 3),
    ]
    assert seen[2]["payload"]["from"] == "bob" and seen[2]["payload"]["to"] == "alice"
    page = await ask(bob, "direct_history", {}, "dh")
    (item,) = page["payload"]["messages"]
    assert item["message"] == "psst!" and item["reactions"] == {"🤫": ["bob"]}
    for ws in (alice, bob, carol, bobs_phone):
        await ws.close()


async def test_changes_over_http(server: ServerProcess, tokens: dict[str, str]) -> None:
    """PATCH, PUT and DELETE under /api/messages do what the frames do, with the same rules."""
    alice = await user_ws(server, tokens["alice"])
    message_id = await chat(alice, "via http", "c1")
    path = f"/api/messages/{message_id}"
    status, body = await call(
        server, "PATCH", path, json={"message": "edited"}, bearer=tokens["alice"]
    )
    assert (status, body) == (200, {"room": "lobby", "seq": 2, "message_id": message_id})
    status, body = await call(server, "PATCH", path, json={"message": "x"}, bearer=tokens["bob"])
    assert (status, body["error"]["code"]) == (403, "forbidden")
    status, body = await call(server, "PUT", f"{path}/reactions/%E2%9C%85", bearer=tokens["bob"])
    assert (status, body["seq"]) == (200, 3)
    status, body = await call(server, "PUT", f"{path}/reactions/nope", bearer=tokens["bob"])
    assert (status, body["error"]["code"]) == (400, "invalid_message")
    status, body = await call(server, "DELETE", f"{path}/reactions/%E2%9C%85", bearer=tokens["bob"])
    assert (status, body["seq"]) == (200, 4)
    status, body = await call(server, "GET", "/api/rooms/lobby/messages", bearer=tokens["bob"])
    assert body["messages"][0]["message"] == "edited" and "reactions" not in body["messages"][0]
    status, body = await call(server, "DELETE", path, bearer=tokens["alice"])
    assert (status, body["seq"]) == (200, 5)
    status, body = await call(server, "DELETE", "/api/messages/" + "a" * 65, bearer=tokens["alice"])
    assert (status, body["error"]["code"]) == (400, "invalid_message")
    await alice.close()


async def test_a_deleted_message_is_gone_from_the_sqlite_files(
    server: ServerProcess, tokens: dict[str, str]
) -> None:
    """The text of a deleted message and of its edits is in neither the database nor its log."""
    alice = await user_ws(server, tokens["alice"])
    secret, edit = "zebra-quartz-" * 3, "walrus-onyx-" * 3
    message_id = await chat(alice, secret, "c1")
    files = [p for p in server.data_dir.iterdir() if p.name.startswith("roomcast.db")]
    # Stored, so in the files (an edit may already erase the text it replaces).
    assert any(secret.encode() in p.read_bytes() for p in files)
    await ask(alice, "edit", {"message_id": message_id, "message": edit}, "e1")
    await chat(alice, "padding", "c2")
    await ask(alice, "delete", {"message_id": message_id}, "d1")
    await asyncio.sleep(0.2)
    for path in server.data_dir.iterdir():
        if path.name.startswith("roomcast.db"):
            data = path.read_bytes()
            assert secret.encode() not in data and edit.encode() not in data, path.name
    await alice.close()


async def test_a_deleted_messages_words_leave_the_search_index_files(
    server: ServerProcess, tokens: dict[str, str]
) -> None:
    """A word is found until deleted or edited away; then no database file holds it."""
    alice = await user_ws(server, tokens["alice"])
    for n in range(30):  # separate batches: the index has many segments
        await chat(alice, f"filler {n} plain words", f"f{n}")
    deleted, edited = "quokkaplinthzebra", "walrusonyxmarble"
    message_id = await chat(alice, f"the word is {deleted}", "c1")
    other_id = await chat(alice, f"and this one {edited}", "c2")
    await chat(alice, "padding after", "c3")
    for word, wanted in ((deleted, message_id), (edited, other_id)):
        hits = await ask(alice, "search", {"q": word}, "s1")
        assert [r["message_id"] for r in hits["payload"]["results"]] == [wanted]
    await ask(alice, "delete", {"message_id": message_id}, "d1")
    await ask(alice, "edit", {"message_id": other_id, "message": "now it says lemur"}, "e1")
    for word in (deleted, edited):
        assert (await ask(alice, "search", {"q": word}, "s2"))["payload"]["results"] == []
    found = await ask(alice, "search", {"q": "lemur"}, "s3")
    assert [r["message_id"] for r in found["payload"]["results"]] == [other_id]

    def copies() -> int:
        files = [p for p in server.data_dir.iterdir() if p.name.startswith("roomcast.db")]
        return sum(word.encode() in p.read_bytes() for p in files for word in (deleted, edited))

    for _ in range(200):
        if copies() == 0:
            break
        await asyncio.sleep(0.05)
    assert copies() == 0
    await alice.close()


async def test_a_name_registered_later_cannot_change_what_a_guest_said_under_it(
    server: ServerProcess,
) -> None:
    """A guest's messages stay the guest's: whoever registers the name later may not edit them."""
    async with connect(server.ws_url(), open_timeout=5) as guest:
        await welcome(guest)
        taken = await ask(guest, "auth", {"guest": "dora"}, "a1")
        assert taken["type"] == "auth"
        message_id = await chat(guest, "said as a guest", "c1")
    token = await sign_up(server, "dora")
    dora = await user_ws(server, token)
    for kind, payload in (
        ("edit", {"message_id": message_id, "message": "forged"}),
        ("delete", {"message_id": message_id}),
    ):
        refused = await ask(dora, kind, payload, kind)
        assert refused["payload"]["code"] == "forbidden", kind
    status, body = await call(
        server, "PATCH", f"/api/messages/{message_id}", json={"message": "x"}, bearer=token
    )
    assert (status, body["error"]["code"]) == (403, "forbidden")
    own = await chat(dora, "said as dora", "c2")
    edited = await ask(dora, "edit", {"message_id": own, "message": "edited"}, "e2")
    assert edited["type"] == "ack"
    first = (await history(dora, "h"))["messages"][0]
    assert first["message"] == "said as a guest"
    await dora.close()


async def test_an_id_that_is_not_unicode_is_refused_alone(
    server: ServerProcess, tokens: dict[str, str]
) -> None:
    """An Idempotency-Key that is not UTF-8 is a 400, and others' messages are still stored."""
    alice = await user_ws(server, tokens["alice"])
    message_id = await chat(alice, "react to me", "c1")
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    head = (
        f"PUT /api/messages/{message_id}/reactions/x HTTP/1.1\r\nHost: localhost\r\n"
        f"Authorization: Bearer {tokens['bob']}\r\nContent-Length: 0\r\n"
    ).encode() + b"Idempotency-Key: \xff\xfe\r\nConnection: close\r\n\r\n"
    writer.write(head)
    status_line = await asyncio.wait_for(reader.readline(), 5)
    writer.close()
    assert status_line.split()[1] == b"400"
    assert (await ask(alice, "chat", {"message": "still fine"}, "c2"))["type"] == "ack"
    await alice.close()
