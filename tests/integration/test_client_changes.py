"""Messages that change (issue 18) through the Python client, against real server processes.

A client that was away sees every edit, reaction and delete it missed once
and in order, across a server restart; a change whose ack the network lost
is sent again with the same id and applied once. The network is a real TCP
proxy; the restarts are real signals.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from typing import Any

import pytest

from roomcast.client import (
    Client,
    ConnectionState,
    DirectMessage,
    Mention,
    MessageDeleted,
    MessageEdited,
    Reaction,
    RoomMessage,
)
from tests.integration.clients import collect, fast_backoff, wait_for
from tests.integration.serverproc import ServerFactory, ServerProcess
from tests.integration.users import SECRET, call, sign_up
from tests.netproxy import TcpProxy

THUMBS = "\U0001f44d"


def in_room(events: list[Any], room: str) -> list[Any]:
    """The messages and changes delivered for ``room``, in delivery order."""
    kinds = RoomMessage | MessageEdited | MessageDeleted | Reaction
    return [e for e in events if isinstance(e, kinds) and e.room == room]


def restart(server_factory: ServerFactory, server: ServerProcess) -> ServerProcess:
    """SIGKILL ``server`` and start it again on the same port and data dir."""
    server.stop(signal.SIGKILL)
    return server_factory("--secret", SECRET, "--port", str(server.port))


@pytest.fixture
async def proxied(server_factory: ServerFactory) -> AsyncIterator[tuple[ServerProcess, TcpProxy]]:
    """A server with a fixed secret, and a proxy in front of it that a test can take down."""
    server = server_factory("--secret", SECRET)
    proxy = TcpProxy(server.port)
    await proxy.start()
    yield server, proxy
    await proxy.stop()


async def test_a_client_away_sees_each_change_once_in_order_across_a_restart(
    proxied: tuple[ServerProcess, TcpProxy], server_factory: ServerFactory
) -> None:
    """Away while a message is edited, reacted to, deleted, the server restarted: each once."""
    server, proxy = proxied
    tokens = {name: await sign_up(server, name) for name in ("amy", "ben")}
    amy = Client(server.ws_url(), token=tokens["amy"], backoff=fast_backoff(1), rooms=("dev",))
    ben = Client(
        f"ws://127.0.0.1:{proxy.port}/ws",
        token=tokens["ben"],
        backoff=fast_backoff(2),
        rooms=("dev",),
        open_timeout=2.0,
    )
    seen = collect(ben)
    async with amy, ben:
        sent = await amy.send_chat("first draft", "dev")
        doomed = sent.payload["message_id"]
        kept = (await amy.send_chat("keep me", "dev")).payload["message_id"]
        await wait_for(lambda: len(in_room(seen, "dev")) == 2)

        proxy.down()
        await wait_for(lambda: ben.state is ConnectionState.RECONNECTING)
        acks = [await amy.edit(doomed, "second draft"), await amy.react(doomed, THUMBS)]
        server = await asyncio.to_thread(restart, server_factory, server)
        await wait_for(lambda: amy.state is ConnectionState.CONNECTED, timeout=20)
        acks.append(await amy.edit(kept, "kept, edited"))
        acks.append(await amy.react(doomed, ":tada:"))
        acks.append(await amy.unreact(doomed, THUMBS))
        acks.append(await amy.delete(doomed))
        again = await amy.delete(doomed)  # deleted already: acked, changes nothing
        assert again.type == "ack" and "seq" not in again.payload
        proxy.up()
        await wait_for(lambda: len(in_room(seen, "dev")) == 8, timeout=20)
        await wait_for(lambda: ben.state is ConnectionState.CONNECTED)
        # History shows the current state: deleted, no text; edited.
        messages, _ = await ben.history("dev")
        around = await ben.history_page("dev", around=in_room(seen, "dev")[1].seq, limit=2)
        await asyncio.sleep(0.3)  # nothing more may come
    events = in_room(seen, "dev")
    assert len(events) == 8
    assert [m.message_id for m in around.messages] == [doomed, kept]
    assert not around.has_newer
    first, second, edit, add, edit_kept, other, remove, delete = events
    assert isinstance(first, RoomMessage) and first.text == "first draft"
    assert isinstance(second, RoomMessage) and second.text == "keep me"
    # The delete erased the text of the edit before it: its replay has none.
    assert isinstance(edit, MessageEdited) and (edit.text, edit.by) == ("", "amy")
    assert isinstance(add, Reaction) and (add.emoji, add.added, add.user) == (THUMBS, True, "amy")
    assert isinstance(edit_kept, MessageEdited) and edit_kept.text == "kept, edited"
    assert isinstance(other, Reaction) and (other.emoji, other.added) == (":tada:", True)
    assert isinstance(remove, Reaction) and (remove.emoji, remove.added) == (THUMBS, False)
    assert isinstance(delete, MessageDeleted) and delete.by == "amy"
    assert [e.message_id for e in events] == [doomed, kept, doomed, doomed, kept] + [doomed] * 3
    seqs = [e.seq for e in events]
    assert seqs == list(range(seqs[0], seqs[0] + 8))  # one stream with the chat, no gap
    assert [a.payload["seq"] for a in acks] == seqs[2:]
    assert [a.payload["message_id"] for a in acks] == [e.message_id for e in events[2:]]
    assert ben.last_seq("dev") == seqs[-1]
    stored = {m.message_id: m for m in messages}
    assert stored[doomed].deleted and stored[doomed].text == "" and stored[doomed].seq == seqs[0]
    assert stored[kept].text == "kept, edited" and stored[kept].edited_at is not None


async def test_an_edit_whose_ack_was_lost_is_sent_again_and_applied_once(
    server_factory: ServerFactory,
) -> None:
    """The ack of an edit is lost, the connection reset: the resent edit is acked, applied once."""
    server = server_factory("--secret", SECRET)
    tokens = {name: await sign_up(server, name) for name in ("cal", "dee")}
    proxy = TcpProxy(server.port)
    await proxy.start()
    url = f"ws://127.0.0.1:{proxy.port}/ws"
    cal = Client(url, token=tokens["cal"], backoff=fast_backoff(3))
    dee = Client(server.ws_url(), token=tokens["dee"], backoff=fast_backoff(4))
    cal_seen, dee_seen = collect(cal), collect(dee)
    try:
        async with cal, dee:
            sent = await cal.send_chat("helo")
            message_id = sent.payload["message_id"]
            await wait_for(lambda: len(in_room(dee_seen, "lobby")) == 1)

            proxy.muted = True
            editing = asyncio.ensure_future(cal.edit(message_id, "hello"))
            # The server applied it (dee sees it) but cal never hears back.
            await wait_for(lambda: any(isinstance(e, MessageEdited) for e in dee_seen))
            await asyncio.sleep(0.2)
            assert not editing.done()
            proxy.cut()
            proxy.muted = False
            ack = await asyncio.wait_for(editing, 20)
            assert len(cal.attempts) >= 2  # it reconnected, and sent the edit again
            await cal.send_chat("after")  # what came before it has arrived by then
            await wait_for(lambda: any(e.text == "after" for e in in_room(dee_seen, "lobby")))
            await wait_for(lambda: any(e.text == "after" for e in in_room(cal_seen, "lobby")))
            status, body = await call(
                server, "GET", "/api/rooms/lobby/messages", bearer=tokens["dee"]
            )
    finally:
        await proxy.stop()
    # Resent with the same id: acked with the seq of the one edit, applied once.
    dee_edits = [e for e in dee_seen if isinstance(e, MessageEdited)]
    cal_edits = [e for e in cal_seen if isinstance(e, MessageEdited)]
    assert len(dee_edits) == 1 and len(cal_edits) == 1
    assert ack.payload["seq"] == dee_edits[0].seq == cal_edits[0].seq
    assert ack.payload["message_id"] == message_id
    dee_seqs = [e.seq for e in in_room(dee_seen, "lobby")]
    assert dee_seqs == list(range(dee_seqs[0], dee_seqs[0] + 3))  # chat, edit, chat
    assert status == 200
    [stored] = [m for m in body["messages"] if m["message_id"] == message_id]
    assert stored["message"] == "hello" and "edited_at" in stored


async def test_direct_changes_and_mentions_are_caught_up_once_in_order(
    proxied: tuple[ServerProcess, TcpProxy], server_factory: ServerFactory
) -> None:
    """Away from a direct message's edit, reaction, a mention: direct_history brings each once."""
    server, proxy = proxied
    tokens = {name: await sign_up(server, name) for name in ("eli", "fay")}
    eli = Client(server.ws_url(), token=tokens["eli"], backoff=fast_backoff(5))
    fay = Client(
        f"ws://127.0.0.1:{proxy.port}/ws",
        token=tokens["fay"],
        backoff=fast_backoff(6),
        open_timeout=2.0,
    )
    seen = collect(fay)

    def direct_stream() -> list[Any]:
        changes = MessageEdited | MessageDeleted | Reaction
        return [
            e
            for e in seen
            if isinstance(e, DirectMessage | Mention) or (isinstance(e, changes) and e.room is None)
        ]

    async with eli, fay:
        proxy.down()
        await wait_for(lambda: fay.state is ConnectionState.RECONNECTING)
        sent = await eli.send_direct("fay", "see you at 3")
        direct_id = sent.payload["message_id"]
        await eli.edit(direct_id, "see you at 4")
        server = await asyncio.to_thread(restart, server_factory, server)
        await wait_for(lambda: eli.state is ConnectionState.CONNECTED, timeout=20)
        await eli.react(direct_id, THUMBS)
        mentioned = await eli.send_chat("@fay the plan changed")
        proxy.up()
        await wait_for(lambda: len(direct_stream()) == 4, timeout=20)
        # The chat itself arrives in the lobby, naming fay among its mentions.
        await wait_for(lambda: any(isinstance(e, RoomMessage) and e.mentions for e in seen))
        await asyncio.sleep(0.3)  # nothing more may come
    events = direct_stream()
    assert [type(e).__name__ for e in events] == [
        "DirectMessage",
        "MessageEdited",
        "Reaction",
        "Mention",
    ]
    message, edit, reaction, mention = events
    # A replay shows the message as it is now; the changes follow in their order.
    assert isinstance(message, DirectMessage) and message.text == "see you at 4"
    assert message.edited_at is not None and message.message_id == direct_id
    assert isinstance(edit, MessageEdited) and (edit.sender, edit.to) == ("eli", "fay")
    assert edit.text == "see you at 4" and edit.message_id == direct_id
    assert isinstance(reaction, Reaction) and reaction.added and reaction.emoji == THUMBS
    assert isinstance(mention, Mention) and mention.room == "lobby" and mention.sender == "eli"
    assert mention.message_id == mentioned.payload["message_id"]
    seqs = [e.seq for e in events]
    assert seqs == list(range(seqs[0], seqs[0] + 4))
    [chat] = [e for e in seen if isinstance(e, RoomMessage) and e.mentions]
    assert chat.mentions == ("fay",) and chat.message_id == mention.message_id
