"""Search (issue 20) through the Python client, against real server processes.

Each test starts a real server (SQLite, a known ``--secret``) and signs its
users up over HTTP; the clients sign in on the handshake. Nothing is mocked.
"""

from __future__ import annotations

import asyncio
import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from roomcast.client import (
    Client,
    ConnectionState,
    DirectMessage,
    SearchResult,
    SendError,
)
from tests.integration.clients import collect, fast_backoff, wait_for
from tests.integration.serverproc import ServerFactory, ServerProcess, start_server
from tests.integration.users import SECRET, create_team


@pytest.fixture
async def server(server_factory: ServerFactory) -> ServerProcess:
    """A server with a known secret (the ``tokens`` fixture signs alice, bob, carol up on it)."""
    return server_factory("--secret", SECRET)


def client(server: ServerProcess, token: str | None, seed: int, *rooms: str) -> Client:
    return Client(server.ws_url(), token=token, backoff=fast_backoff(seed), rooms=rooms)


def ids(results: list[SearchResult]) -> list[str]:
    return [r.message_id for r in results]


async def test_results_are_typed_and_name_the_stored_message(
    server: ServerProcess, tokens: dict[str, str]
) -> None:
    """A result names the acked message; highlights slice out the words; edits, deletes followed."""
    async with client(server, tokens["alice"], 1, "dev") as alice:
        before = datetime.now(UTC)
        ack = await alice.send_chat("the deploy failed at noon, deploying again", "dev")
        await alice.send_chat("lunch at noon?", "dev")
        page = await alice.search("deploy*")
        assert page.cursor is None
        [found] = page.results
        assert (found.room, found.with_, found.direct) == ("dev", None, False)
        assert (found.seq, found.message_id) == (ack.payload["seq"], ack.payload["message_id"])
        assert found.sender == "alice" and found.edited_at is None
        assert found.message == "the deploy failed at noon, deploying again"
        assert found.at is not None and before - timedelta(seconds=1) <= found.at
        assert found.at <= datetime.now(UTC) + timedelta(seconds=1)
        assert [found.snippet[a:b] for a, b in found.highlights] == ["deploy", "deploying"]

        await alice.edit(found.message_id, "the release failed")
        assert not (await alice.search("deploy*")).results  # found by its current text only
        [edited] = (await alice.search("release")).results
        assert edited.message_id == found.message_id and edited.edited_at is not None
        await alice.delete(found.message_id)
        assert not (await alice.search("release")).results


async def test_paging_with_the_cursor_gives_every_match_once_newest_first(
    server: ServerProcess, tokens: dict[str, str]
) -> None:
    """23 matches in pages of 5 via the cursor: none repeated or missed, newest first."""
    async with client(server, tokens["alice"], 2) as alice:
        sent = []
        for n in range(23):
            ack = await alice.send_chat(f"status report {n}")
            sent.append(ack.payload["message_id"])
            await alice.send_chat(f"unrelated chatter {n}")
        pages = []
        cursor = None
        while True:
            page = await alice.search("report", limit=5, cursor=cursor)
            pages.append(page.results)
            if page.cursor is None:
                break
            cursor = page.cursor
        assert [len(p) for p in pages] == [5, 5, 5, 5, 3]
        found = [r.message_id for p in pages for r in p]
        assert found == list(reversed(sent))
        seqs = [r.seq for p in pages for r in p]
        assert seqs == sorted(seqs, reverse=True) and len(set(seqs)) == 23
        assert [r.message_id async for r in alice.search_all("report", limit=7)] == found


async def test_filters_room_sender_time_and_what_each_user_may_read(
    server: ServerProcess, tokens: dict[str, str]
) -> None:
    """room, sender, after/before narrow results; private rooms for members only; guests public."""
    await create_team(server, tokens)  # alice's private room, with bob
    alice = client(server, tokens["alice"], 3, "dev", "team")
    bob = client(server, tokens["bob"], 4)
    carol = client(server, tokens["carol"], 5)
    guest = client(server, None, 6)
    async with alice, bob, carol, guest:
        in_dev = (await alice.send_chat("budget meeting at 3", "dev")).payload["message_id"]
        in_team = (await alice.send_chat("budget is tight", "team")).payload["message_id"]
        in_lobby = (await bob.send_chat("budget numbers are in")).payload["message_id"]

        assert ids((await alice.search("budget", room="dev")).results) == [in_dev]
        assert ids((await alice.search("budget", sender="bob")).results) == [in_lobby]
        assert ids((await bob.search("budget")).results) == [in_lobby, in_team, in_dev]
        assert ids((await carol.search("budget")).results) == [in_lobby, in_dev]
        assert ids((await guest.search("budget")).results) == [in_lobby, in_dev]
        with pytest.raises(SendError) as not_hers:
            await carol.search("budget", room="team")
        assert not_hers.value.code == "forbidden"
        with pytest.raises(SendError) as no_direct:
            await guest.search("budget", direct=True)
        assert no_direct.value.code == "forbidden"

        hour = timedelta(hours=1)
        now = datetime.now(UTC)
        assert len((await alice.search("budget", after=now - hour)).results) == 3
        assert not (await alice.search("budget", before=now - hour)).results
        assert not (await alice.search("budget", after=now + hour)).results
        today = now.date()
        assert len((await alice.search("budget", after=today, before=now + hour)).results) == 3


async def test_direct_results_name_the_peer_and_with_narrows_to_one_conversation(
    server: ServerProcess, tokens: dict[str, str]
) -> None:
    """Direct results carry with_ and the caller's stream seq; with_ keeps one conversation."""
    alice = client(server, tokens["alice"], 7)
    bob = client(server, tokens["bob"], 8)
    carol = client(server, tokens["carol"], 9)
    delivered = collect(alice)
    async with alice, bob, carol:
        await alice.send_chat("deploy in the lobby")
        await bob.send_direct("alice", "deploy keys rotated")
        await carol.send_direct("alice", "deploy tomorrow?")
        await alice.send_direct("alice", "deploy checklist")
        await wait_for(lambda: len([e for e in delivered if isinstance(e, DirectMessage)]) == 3)
        seq_of = {e.message_id: e.seq for e in delivered if isinstance(e, DirectMessage)}

        direct = (await alice.search("deploy", direct=True)).results
        assert [(r.with_, r.sender, r.direct) for r in direct] == [
            ("alice", "alice", True),
            ("carol", "carol", True),
            ("bob", "bob", True),
        ]
        assert {r.message_id: r.seq for r in direct} == seq_of
        everything = (await alice.search("deploy")).results
        assert len(everything) == 4 and everything[-1].room == "lobby"
        [from_bob] = (await alice.search("deploy", with_="bob")).results
        assert from_bob.message == "deploy keys rotated"
        [to_alice] = (await bob.search("deploy", direct=True)).results
        assert (to_alice.with_, to_alice.sender) == ("alice", "bob")
        assert to_alice.message_id == from_bob.message_id
        with pytest.raises(SendError) as nobody:
            await alice.search("deploy", with_="nobody")
        assert nobody.value.code == "unknown_user"


async def test_relevance_puts_the_best_match_first(
    server: ServerProcess, tokens: dict[str, str]
) -> None:
    """The same matches, newest first by default and best first with order="relevance"."""
    async with client(server, tokens["alice"], 10) as alice:
        dense = (await alice.send_chat("outage outage outage")).payload["message_id"]
        long = "we talked about many things today and one of them was the outage of the old service"
        sparse = (await alice.send_chat(long)).payload["message_id"]
        assert ids((await alice.search("outage")).results) == [sparse, dense]
        assert ids((await alice.search("outage", order="relevance")).results) == [dense, sparse]


@pytest.mark.parametrize(
    ("query", "why"),
    [('"deploy failed', "quote is not closed"), ("-staging", ""), ("x" * 257, "")],
)
async def test_a_query_that_cannot_be_parsed_is_invalid_message(
    server: ServerProcess, tokens: dict[str, str], query: str, why: str
) -> None:
    """An unclosed quote, a query of exclusions only, one too long: SendError invalid_message."""
    async with client(server, tokens["alice"], 11) as alice:
        with pytest.raises(SendError) as refused:
            await alice.search(query)
        assert refused.value.code == "invalid_message"
        assert why in refused.value.message
        assert (await alice.search("fine")).results == []  # the client carries on


async def test_a_result_opens_its_conversation_around_its_seq(
    server: ServerProcess, tokens: dict[str, str]
) -> None:
    """A direct result's seq opens direct_history around it (has_newer); a room's, history."""
    alice = client(server, tokens["alice"], 12, "dev")
    bob = client(server, tokens["bob"], 13)
    async with alice, bob:
        for n in range(30):
            text = "the needle is here" if n == 14 else f"hay {n}"
            await bob.send_direct("alice", text)
            await alice.send_chat(text, "dev")
        [in_dm] = (await alice.search("needle", direct=True)).results
        page = await alice.direct_history_page(around=in_dm.seq, limit=10)
        seqs = [m.seq for m in page.messages]
        assert seqs == list(range(in_dm.seq - 5, in_dm.seq + 5))
        assert page.has_more and page.has_newer and page.last_seq == 30
        [hit] = [m for m in page.messages if m.message_id == in_dm.message_id]
        assert (hit.sender, hit.to, hit.text) == ("bob", "alice", "the needle is here")
        at_end = await alice.direct_history_page(around=30, limit=10)
        assert not at_end.has_newer and at_end.messages[-1].seq == 30
        await alice.send_direct("carol", "another conversation")  # seq 31, not bob's
        with_bob = await alice.direct_history_page(around=in_dm.seq, limit=40, with_="bob")
        assert [m.seq for m in with_bob.messages] == list(range(1, 31))
        assert not with_bob.has_more and not with_bob.has_newer

        [in_room] = (await alice.search("needle", room="dev")).results
        room_page = await alice.history_page("dev", around=in_room.seq, limit=10)
        assert in_room.message_id in [m.message_id for m in room_page.messages]
        assert room_page.has_more and room_page.has_newer


async def test_a_search_made_while_the_server_is_down_is_answered_once_it_is_back(
    tmp_path: Path,
) -> None:
    """A search made while reconnecting waits, like other requests, and the restart answers it."""
    first = start_server(tmp_path, "--secret", SECRET)
    port = str(first.port)
    again: ServerProcess | None = None
    try:
        async with client(first, None, 14) as guest:
            await guest.send_chat("persisted before the crash")
            first.stop(signal.SIGKILL)
            await wait_for(lambda: guest.state is ConnectionState.RECONNECTING)
            searching = asyncio.ensure_future(guest.search("crash"))
            await asyncio.sleep(0.5)
            assert not searching.done()
            again = await asyncio.to_thread(
                start_server, tmp_path, "--secret", SECRET, "--port", port
            )
            page = await asyncio.wait_for(searching, 20)
            assert [r.message for r in page.results] == ["persisted before the crash"]
    finally:
        first.stop(signal.SIGKILL)
        if again is not None:
            again.stop(signal.SIGKILL)
