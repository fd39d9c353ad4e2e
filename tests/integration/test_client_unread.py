"""Read markers, unread counts and receipts (issue 19) through the Python client, real sockets.

Each test starts a real server (SQLite, a known ``--secret``) and signs its
users up over HTTP; the clients sign in on the handshake. Nothing is mocked.
"""

from __future__ import annotations

import asyncio

import pytest

from roomcast.client import (
    Client,
    ReadMarker,
    Receipt,
    SendError,
    Unread,
)
from tests.integration.clients import collect, fast_backoff, wait_for
from tests.integration.serverproc import ServerFactory, ServerProcess
from tests.integration.users import SECRET, call, create_team, sign_up


@pytest.fixture
async def server(server_factory: ServerFactory) -> ServerProcess:
    """A server with a known secret."""
    return server_factory("--secret", SECRET)


async def tokens_of(server: ServerProcess, *names: str) -> dict[str, str]:
    """``names`` registered and logged in: their tokens."""
    signed = await asyncio.gather(*(sign_up(server, name) for name in names))
    return dict(zip(names, signed, strict=True))


def client(server: ServerProcess, token: str, seed: int, *rooms: str) -> Client:
    return Client(server.ws_url(), token=token, backoff=fast_backoff(seed), rooms=rooms)


def counts(unread: Unread | None) -> tuple[int, int] | None:
    """(unread, mentions) of an entry, None when there is none."""
    return None if unread is None else (unread.unread, unread.mentions)


async def test_a_read_on_one_device_lowers_the_counts_on_the_other(server: ServerProcess) -> None:
    """ann on two clients: both count bob's messages; one marks read, the other's counts drop."""
    tokens = await tokens_of(server, "ann", "bob")
    phone, laptop = (client(server, tokens["ann"], seed, "dev") for seed in (1, 2))
    bob = client(server, tokens["bob"], 3, "dev")
    laptop_events = collect(laptop)
    async with phone, laptop, bob:
        assert counts(phone.unread.rooms.get("dev")) == (0, 0)  # a first join: nothing past
        await bob.send_chat("standup in 5", "dev")
        await bob.send_chat("@ann can you run it?", "dev")
        last = (await bob.send_chat("thanks", "dev")).payload["seq"]
        for ann in (phone, laptop):
            await wait_for(lambda ann=ann: ann.last_seq("dev") == last)
            assert counts(ann.unread.rooms["dev"]) == (3, 1)

        marker = await phone.mark_read("dev")
        assert marker == ReadMarker(last, 0, 0, room="dev")
        assert counts(phone.unread.rooms["dev"]) == (0, 0)
        await wait_for(lambda: any(isinstance(e, ReadMarker) for e in laptop_events))
        [moved] = [e for e in laptop_events if isinstance(e, ReadMarker)]
        assert moved == ReadMarker(last, 0, 0, room="dev")
        dev = laptop.unread.rooms["dev"]
        assert (dev.unread, dev.mentions, dev.last_read, dev.last_seq) == (0, 0, last, last)

        # A marker never moves back: an older seq is answered with the marker as it is.
        again = await laptop.mark_read("dev", 1)
        assert again.seq == last and laptop.unread.rooms["dev"].last_read == last
        from_server = await laptop.unread_counts()
        assert from_server.rooms["dev"].unread == 0 and from_server.rooms["dev"].last_read == last
        assert from_server.rooms["dev"].last_seq == last

        await bob.send_chat("one more", "dev")
        await wait_for(lambda: counts(phone.unread.rooms["dev"]) == (1, 0))
        await wait_for(lambda: counts(laptop.unread.rooms["dev"]) == (1, 0))
        with pytest.raises(SendError) as outside:
            await phone.mark_read("elsewhere", 1)
        assert outside.value.code == "not_member"


async def test_joined_brings_the_counts_missed_while_away(server: ServerProcess) -> None:
    """Messages sent while ann was away are counted in joined; a private room from its start."""
    tokens = await tokens_of(server, "alice", "bob", "ann")
    async with client(server, tokens["ann"], 4, "dev"):
        pass  # ann has read dev: her marker is at its end
    await create_team(server, tokens)  # alice's private room with member bob
    async with client(server, tokens["alice"], 5, "dev", "team") as alice:
        await alice.send_chat("@ann look at this", "dev")
        await alice.send_chat("and this", "dev")
        await alice.send_chat("hi team", "team")
        await alice.send_chat("@bob for you", "team")
    away = client(server, tokens["ann"], 6, "dev")
    bob = client(server, tokens["bob"], 7, "team")
    async with away, bob:
        dev = away.unread.rooms["dev"]
        assert (dev.unread, dev.mentions) == (2, 1)
        assert dev.last_read == 0  # read up to the room's start, when it was empty
        team = bob.unread.rooms["team"]
        assert (team.unread, team.mentions, team.last_read) == (2, 1, 0)
        # The same numbers from the server, with the newest message's seq and time.
        listed = await away.unread_counts()
        assert counts(listed.rooms["dev"]) == (2, 1)
        assert listed.rooms["dev"].last_seq == 2 and listed.rooms["dev"].last_at is not None
        assert listed.direct is not None and counts(listed.direct) == (0, 0)
        # Marked read here, the next join starts at nothing unread.
        await away.mark_read("dev")
    async with client(server, tokens["ann"], 8, "dev") as back:
        assert counts(back.unread.rooms["dev"]) == (0, 0)


async def test_receipts_reach_the_sender_in_a_small_room_and_in_direct(
    server: ServerProcess,
) -> None:
    """ann reads bob's message: bob gets a Receipt, and history lists ann's marker."""
    tokens = await tokens_of(server, "ann", "bob")
    ann = client(server, tokens["ann"], 9, "dev")
    bob = client(server, tokens["bob"], 10, "dev")
    bob_events = collect(bob)
    async with ann, bob:
        seq = (await bob.send_chat("did you see the plan?", "dev")).payload["seq"]
        await wait_for(lambda: ann.last_seq("dev") == seq)
        await ann.mark_read("dev")
        await wait_for(lambda: Receipt("ann", seq, "dev") in bob_events)
        page = await bob.history_page("dev")
        assert page.receipts.get("ann") == seq and not page.read_counts

        sent = await bob.send_direct("ann", "and this one?")
        bob_seq = sent.payload["seq"]  # the message's seq in bob's own stream
        await ann.unread_counts()  # the direct stream's numbers, so the client counts it
        await wait_for(lambda: counts(ann.unread.conversations.get("bob")) == (1, 0))
        assert ann.unread.direct is not None and ann.unread.direct.unread == 1
        marker = await ann.mark_read_direct(with_="bob")
        assert (marker.with_, marker.unread) == ("bob", 0)
        assert counts(ann.unread.conversations["bob"]) == (0, 0)
        assert counts(ann.unread.direct) == (0, 0)  # bob's was the only conversation
        await wait_for(lambda: Receipt("ann", bob_seq) in bob_events)


async def test_a_guest_reads_on_its_connection_and_has_no_unread(server: ServerProcess) -> None:
    """A guest's read is answered with its marker; unread is forbidden to it."""
    async with Client(server.ws_url(), guest="gus", backoff=fast_backoff(11)) as gus:
        seq = (await gus.send_chat("hello")).payload["seq"]
        await wait_for(lambda: gus.last_seq("lobby") == seq)
        marker = await gus.mark_read("lobby")
        assert (marker.room, marker.seq) == ("lobby", seq)
        assert gus.unread.direct is None
        with pytest.raises(SendError) as refused:
            await gus.unread_counts()
        assert refused.value.code == "forbidden"
        with pytest.raises(SendError) as direct:
            await gus.mark_read_direct(1)
        assert direct.value.code == "forbidden"


async def test_http_unread_matches_what_the_client_counts(server: ServerProcess) -> None:
    """GET /api/unread and the client's own counts agree after live messages and a read."""
    tokens = await tokens_of(server, "ann", "bob")
    ann = client(server, tokens["ann"], 12, "dev")
    bob = client(server, tokens["bob"], 13, "dev")
    async with ann, bob:
        for text in ("a", "@ann b", "c", "d"):
            await bob.send_chat(text, "dev")
        await wait_for(lambda: counts(ann.unread.rooms["dev"]) == (4, 1))
        newest = ann.last_seq("dev")
        assert newest is not None
        await ann.mark_read("dev", newest - 2)  # read up to "@ann b"
        assert counts(ann.unread.rooms["dev"]) == (2, 0)
        assert await http_counts(server, tokens["ann"], "dev") == (2, 0)
        # Sending reads the room up to what is sent (the server says nothing of it).
        sent = (await ann.send_chat("on it", "dev")).payload["seq"]
        await wait_for(lambda: ann.last_seq("dev") == sent)
        assert counts(ann.unread.rooms["dev"]) == (0, 0)
        assert ann.unread.rooms["dev"].last_read == sent
        assert await http_counts(server, tokens["ann"], "dev") == (0, 0)


async def http_counts(server: ServerProcess, token: str, room: str) -> tuple[int, int]:
    """(unread, mentions) of ``room`` from ``GET /api/unread``."""
    status, body = await call(server, "GET", "/api/unread", bearer=token)
    assert status == 200, body
    [entry] = [item for item in body["rooms"] if item["room"] == room]
    return entry["unread"], entry["mentions"]
