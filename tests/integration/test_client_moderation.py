"""Moderation, sign-in with refresh and revocation (issue 21) through the Python client,
against real server processes.

Mutes, bans and removals are seen by the client as the spec says (refusals
with ``until``, a ``Removed`` event, no rejoin after a reconnect); an expired
token is refreshed on the live connection; a password change, a logout
everywhere, a deleted account and a server-wide ban close the other
clients for good. The network faults are a real TCP proxy.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest

from roomcast.client import (
    AuthRefused,
    Client,
    ConnectionState,
    Removed,
    RoomMessage,
    RoomUpdated,
    SendError,
    SessionTokens,
)
from tests.integration.clients import collect, fast_backoff, wait_for
from tests.integration.serverproc import ServerFactory, ServerProcess
from tests.integration.users import PASSWORD, SECRET, call, mint, register
from tests.netproxy import TcpProxy

NEW_PASSWORD = "a new horse battery staple"


def removals(events: list[Any]) -> list[Removed]:
    return [e for e in events if isinstance(e, Removed)]


def near(when: datetime | None, seconds: float, slack: float = 30.0) -> bool:
    """Whether ``when`` is about ``seconds`` from now."""
    target = datetime.now(UTC) + timedelta(seconds=seconds)
    return when is not None and abs((when - target).total_seconds()) < slack


def signed_in(server: ServerProcess, name: str, **options: Any) -> Client:
    """A client of ``name`` that logs in with the password (and refreshes after)."""
    options.setdefault("backoff", fast_backoff(hash(name) % 1000))
    return Client(server.ws_url(), username=name, password=PASSWORD, **options)


@pytest.fixture
def server(server_factory: ServerFactory) -> ServerProcess:
    """A server with the tests' secret (so that short tokens can be minted)."""
    return server_factory("--secret", SECRET)


async def test_mutes_bans_and_kicks_reach_the_client_with_until(server: ServerProcess) -> None:
    """Muted: sends refused with until; banned: Removed, join and reads refused; kicked: out."""
    for name in ("ann", "bob"):
        await register(server, name)
    ann = signed_in(server, "ann", rooms=("dev",))  # the first to join dev owns it
    async with ann:
        bob = signed_in(server, "bob", rooms=("dev",))
        seen = collect(bob)
        async with bob:
            mute = await ann.mute("dev", "bob", for_seconds=600)
            assert mute.user == "bob" and near(mute.until, 600) and mute.by == "ann"
            with pytest.raises(SendError) as muted:
                await bob.send_chat("can you hear me", "dev")
            assert muted.value.code == "muted" and muted.value.until == mute.until
            await bob.send_chat("the lobby still hears me")  # a mute is per room
            await ann.unmute("dev", "bob")
            await bob.send_chat("back", "dev")

            ban = await ann.ban("dev", "bob", for_seconds=3600, reason="spam")
            assert near(ban.until, 3600) and ban.reason == "spam"
            await wait_for(lambda: bool(removals(seen)))
            [removed] = removals(seen)
            assert removed == Removed("dev", "ann", "spam", True, ban.until)
            assert "dev" not in bob.rooms
            with pytest.raises(SendError) as refused:
                await bob.join("dev")
            assert (refused.value.code, refused.value.until) == ("banned", ban.until)
            assert refused.value.reason == "spam"
            with pytest.raises(SendError) as over_http:
                await bob.room_info("dev")
            assert over_http.value.status == 403 and over_http.value.code == "banned"
            assert over_http.value.until == ban.until
            info = await ann.room_info("dev")
            assert info.role == "owner" and [b.user for b in info.bans] == ["bob"]
            actions = [entry.action async for entry in ann.audit("dev", limit=2)]
            assert actions == ["ban", "unmute", "mute"]

            await ann.unban("dev", "bob")
            await bob.join("dev")
            await ann.remove_member("dev", "bob", reason="cool off")
            await wait_for(lambda: len(removals(seen)) == 2)
            assert removals(seen)[1] == Removed("dev", "ann", "cool off")
            await bob.join("dev")  # a public room: a kick, not a ban
            with pytest.raises(SendError) as forbidden:
                await bob.ban("dev", "ann")
            assert forbidden.value.code == "forbidden" and forbidden.value.status == 403


async def test_settings_changes_reach_the_members(server: ServerProcess) -> None:
    """update_room and set_moderator answer the room; members get RoomUpdated frames."""
    for name in ("cal", "dee"):
        await register(server, name)
    cal = signed_in(server, "cal", rooms=("ops",))
    async with cal:
        dee = signed_in(server, "dee", rooms=("ops",))
        seen = collect(dee)
        async with dee:
            info = await cal.update_room("ops", topic="deploys", slow_mode=5, title="Ops")
            assert (info.topic, info.slow_mode, info.title) == ("deploys", 5, "Ops")
            info = await cal.set_moderator("ops", "dee")
            assert info.moderators == ("dee",)
            await wait_for(lambda: len([e for e in seen if isinstance(e, RoomUpdated)]) >= 2)
            last = [e for e in seen if isinstance(e, RoomUpdated)][-1]
            assert last == RoomUpdated("ops", False, "cal", ("dee",), "deploys", "Ops", 5, True)
            assert (await dee.room_info("ops")).role == "moderator"
            info = await cal.update_room("ops", owner="dee")
            assert (info.owner, info.moderators, info.role) == ("dee", ("cal",), "moderator")


async def test_a_removed_room_is_not_joined_again_after_reconnects(server: ServerProcess) -> None:
    """Removed live, or banned while away: the room is forgotten and never rejoined."""
    for name in ("eve", "fay"):
        await register(server, name)
    eve = signed_in(server, "eve")
    proxy = TcpProxy(server.port)
    await proxy.start()
    try:
        async with eve:
            for room in ("team", "crew"):
                status, body = await call(
                    server,
                    "POST",
                    "/api/rooms",
                    json={"name": room, "private": True, "members": ["fay"]},
                    bearer=eve.token,
                )
                assert status == 201, body
            fay = Client(
                f"ws://127.0.0.1:{proxy.port}/ws",
                username="fay",
                password=PASSWORD,
                rooms=("team", "crew"),
                backoff=fast_backoff(7),
                open_timeout=2.0,
            )
            seen = collect(fay)
            async with fay:
                assert fay.rooms == ["lobby", "team", "crew"]
                await eve.remove_member("team", "fay", reason="wrong team")
                await wait_for(lambda: bool(removals(seen)))
                assert removals(seen) == [Removed("team", "eve", "wrong team")]

                proxy.down()
                await wait_for(lambda: fay.state is ConnectionState.RECONNECTING)
                ban = await eve.ban("crew", "fay", reason="while away")
                proxy.up()
                await wait_for(lambda: len(removals(seen)) == 2, timeout=20)
                await wait_for(lambda: fay.state is ConnectionState.CONNECTED)
                away = removals(seen)[1]
                assert (away.room, away.by, away.banned, away.until) == ("crew", "", True, None)
                assert ban.until is None
                assert fay.rooms == ["lobby"]

                proxy.cut()  # once more: nothing is refused, nothing removed again
                await wait_for(lambda: fay.state is ConnectionState.RECONNECTING)
                await wait_for(lambda: fay.state is ConnectionState.CONNECTED, timeout=20)
                await asyncio.sleep(0.3)
                assert len(removals(seen)) == 2 and fay.rooms == ["lobby"]
                # Messages of the room it was taken out of never reach it.
                await eve.join("team")
                await eve.send_chat("team only", "team")
                await fay.send_chat("still here")
                await wait_for(
                    lambda: any(isinstance(e, RoomMessage) and e.text == "still here" for e in seen)
                )
                assert not any(isinstance(e, RoomMessage) and e.room == "team" for e in seen)
    finally:
        await proxy.stop()


async def test_an_expired_token_is_refreshed_on_the_live_connection(
    server: ServerProcess,
) -> None:
    """token_expired: the client refreshes, sends auth, stays on its one connection."""
    await register(server, "gus")
    status, body = await call(
        server, "POST", "/api/login", json={"username": "gus", "password": PASSWORD}
    )
    assert status == 200, body
    claims = jwt.decode(body["token"], options={"verify_signature": False})
    short = mint("gus", sid=claims["sid"], exp=int(time.time()) + 2)
    first_refresh = body["refresh_token"]
    gus = Client(
        server.ws_url(), token=short, refresh_token=first_refresh, backoff=fast_backoff(11)
    )
    seen = collect(gus)
    async with gus:
        await wait_for(lambda: any(isinstance(e, SessionTokens) for e in seen), timeout=10)
        assert gus.token != short and gus.refresh_token not in (None, first_refresh)
        await asyncio.sleep(1.0)  # past the server's grace period had auth not come
        ack = await gus.send_chat("still connected")
        assert ack.type == "ack"
        assert len(gus.attempts) == 1 and gus.state is ConnectionState.CONNECTED
        # The spent refresh token presented again: taken as stolen, the session ends.
        status, _ = await call(
            server, "POST", "/api/refresh", json={"refresh_token": first_refresh}
        )
        assert status == 401
        await wait_for(lambda: gus.state is ConnectionState.CLOSED, timeout=10)
    assert gus.closed_reason == "the server ended this session: signed out"


async def test_a_client_made_from_a_refresh_token_signs_in_with_it(server: ServerProcess) -> None:
    """Client(refresh_token=...) refreshes first, then connects as its user."""
    await register(server, "hal")
    status, body = await call(
        server, "POST", "/api/login", json={"username": "hal", "password": PASSWORD}
    )
    assert status == 200, body
    hal = Client(server.ws_url(), refresh_token=body["refresh_token"], backoff=fast_backoff(12))
    async with hal:
        assert hal.user == "hal" and hal.refresh_token != body["refresh_token"]
        assert (await hal.me()).name == "hal"
    spent = Client(server.ws_url(), refresh_token="nobody.secret", backoff=fast_backoff(13))
    with pytest.raises(AuthRefused, match="sign in again"):
        await spent.connect()


async def test_password_change_and_logout_everywhere_close_the_other_clients(
    server: ServerProcess,
) -> None:
    """A password change ends the other sessions; logout everywhere ends them all, for good."""
    await register(server, "ivy")
    here, other = signed_in(server, "ivy"), signed_in(server, "ivy")
    async with here, other:
        with pytest.raises(SendError) as wrong:
            await here.change_password("not the password", NEW_PASSWORD)
        assert wrong.value.code == "auth_failed"
        assert await here.change_password(PASSWORD, NEW_PASSWORD) >= 1
        await wait_for(lambda: other.state is ConnectionState.CLOSED, timeout=10)
        assert other.closed_reason == "the server ended this session: signed out"
        assert (await here.send_chat("this one stays")).type == "ack"

        third = Client(server.ws_url(), username="ivy", password=NEW_PASSWORD)
        async with third:
            await here.logout(everywhere=True)
            assert here.state is ConnectionState.CLOSED
            assert here.closed_reason == "signed out everywhere"
            await wait_for(lambda: third.state is ConnectionState.CLOSED, timeout=10)
            assert third.closed_reason == "the server ended this session: signed out"
            with pytest.raises(Exception) as ended:
                await third.send_chat("too late")
            assert "signed out" in str(ended.value)
    with pytest.raises(AuthRefused):
        await signed_in(server, "ivy").connect()  # the old password is gone


async def test_delete_account_ends_every_session_and_leaves_tombstones(
    server: ServerProcess,
) -> None:
    """A wrong password is refused; then the account, its sessions and its texts are gone."""
    for name in ("jon", "kim"):
        await register(server, name)
    jon, jon_too, kim = signed_in(server, "jon"), signed_in(server, "jon"), signed_in(server, "kim")
    async with jon, jon_too, kim:
        sent = await jon.send_chat("soon gone")
        with pytest.raises(SendError) as wrong:
            await jon.delete_account("not it")
        assert wrong.value.code == "auth_failed" and jon.state is ConnectionState.CONNECTED
        await jon.delete_account(PASSWORD)
        assert jon.state is ConnectionState.CLOSED and jon.closed_reason == "account deleted"
        await wait_for(lambda: jon_too.state is ConnectionState.CLOSED, timeout=10)
        assert jon_too.closed_reason == "the server ended this session: account deleted"
        messages, _ = await kim.history("lobby")
        [gone] = [m for m in messages if m.message_id == sent.payload["message_id"]]
        assert gone.deleted and gone.text == ""
    with pytest.raises(AuthRefused, match="login refused"):
        await signed_in(server, "jon").connect()


async def test_admin_calls_and_a_server_wide_ban(server: ServerProcess) -> None:
    """An admin (made by the CLI) lists rooms, bans a user everywhere, resets a password."""
    for name in ("root", "lee"):
        await register(server, name)
    made = subprocess.run(
        [sys.executable, "-m", "roomcast", "admin", "--data-dir", str(server.data_dir)]
        + ["create-admin", "root"],
        input="",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert made.returncode == 0, made.stderr
    root, lee = signed_in(server, "root", rooms=("ops",)), signed_in(server, "lee")
    async with root, lee:
        assert root.admin and not lee.admin
        assert "ops" in [room.name for room in await root.admin_rooms()]
        with pytest.raises(SendError) as not_admin:
            await lee.admin_rooms()
        assert not_admin.value.code == "forbidden"
        ban = await root.admin_ban_user("lee", for_seconds=600, reason="abuse")
        assert ban.user == "lee" and near(ban.until, 600)
        await wait_for(lambda: lee.state is ConnectionState.CLOSED, timeout=10)
        assert (lee.closed_reason or "").startswith("the server ended this session: banned")
        account = await root.admin_user("lee")
        assert account.banned and account.ban_reason == "abuse"
        await root.admin_unban_user("lee")
        password = await root.admin_reset_password("lee")
        again = Client(server.ws_url(), username="lee", password=password)
        async with again:
            assert again.user == "lee"
        await root.admin_delete_room("ops")
        assert "ops" not in [room.name for room in await root.admin_rooms()]
