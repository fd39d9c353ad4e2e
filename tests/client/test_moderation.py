"""Moderation, sign-in with refresh, and revocation (issue 21) in the client, without sockets.

Frames go through the client's own parser and handler
(:class:`~tests.client.wire.FakeConnection`); the HTTP calls through a
stand-in for :func:`roomcast.client.signin.http_call` that answers as the
server's routes do, so that the renewal logic (refresh first, the password
after, one renewal at a time) runs whole.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from roomcast.client import (
    AuditPage,
    AuthRefused,
    BanInfo,
    Client,
    ConnectionState,
    MuteInfo,
    Removed,
    RoomInfo,
    RoomUpdated,
    SendError,
    ServerError,
    SessionTokens,
    SignedOut,
    parse_duration,
    parse_server_frame,
    signin,
)
from roomcast.client.errors import send_error
from roomcast.client.moderation import audit_page, room_info
from roomcast.client.signin import account_info, http_error, jwt_expiry
from tests.client.wire import FakeConnection, collect, connected, frame, resume

UNTIL = "2026-05-01T12:00:00.000Z"
UNTIL_AT = datetime(2026, 5, 1, 12, tzinfo=UTC)


def fake_jwt(exp: float, **claims: Any) -> str:
    """A token shaped like the server's (unsigned: the client never checks signatures)."""
    body = base64.urlsafe_b64encode(orjson.dumps({"exp": exp, **claims})).rstrip(b"=")
    return f"eyJhbGciOiJIUzI1NiJ9.{body.decode()}.c2ln"


# -- frames -----------------------------------------------------------------------------


def test_removed_frames_name_the_room_who_why_and_a_ban_s_end() -> None:
    """removed parses to Removed; a ban carries banned and until (null: until lifted)."""
    kick = parse_server_frame(frame("removed", {"room": "dev", "by": "ann", "reason": "spam"}))
    assert kick == Removed("dev", "ann", "spam")
    ban = parse_server_frame(
        frame("removed", {"room": "dev", "by": "ann", "banned": True, "until": UNTIL})
    )
    assert ban == Removed("dev", "ann", None, True, UNTIL_AT)
    forever = parse_server_frame(
        frame("removed", {"room": "dev", "by": "ann", "banned": True, "until": None})
    )
    assert isinstance(forever, Removed) and forever.banned and forever.until is None
    with pytest.raises(ValueError, match="malformed removed"):
        parse_server_frame(frame("removed", {"by": "ann"}))


def test_room_frames_carry_every_setting() -> None:
    """A room frame parses to RoomUpdated with all the settings; an empty title is the name."""
    payload = {
        "room": "dev",
        "private": True,
        "owner": "ann",
        "moderators": ["bob", "cat"],
        "topic": "ship it",
        "title": "Development",
        "slow_mode": 30,
        "receipts": False,
    }
    assert parse_server_frame(frame("room", payload)) == RoomUpdated(
        "dev", True, "ann", ("bob", "cat"), "ship it", "Development", 30, False
    )
    bare = parse_server_frame(frame("room", {"room": "lobby", "owner": None}))
    assert bare == RoomUpdated("lobby", False, None, (), "", "lobby", 0, True)
    with pytest.raises(ValueError, match="malformed room"):
        parse_server_frame(frame("room", {"room": "dev", "slow_mode": "fast"}))


def test_banned_and_muted_errors_say_until_when() -> None:
    """error banned/muted: ServerError with until and reason; SendError from a payload too."""
    banned = parse_server_frame(
        frame("error", {"code": "banned", "message": "no", "until": UNTIL, "reason": "spam"})
    )
    assert banned == ServerError("banned", "no", None, UNTIL_AT, "spam")
    muted = parse_server_frame(frame("error", {"code": "muted", "message": "hush", "until": None}))
    assert isinstance(muted, ServerError) and muted.until is None and muted.reason is None
    error = send_error({"code": "rate_limited", "message": "slow", "retry_after": 1500})
    assert (error.code, error.retry_after, error.status) == ("rate_limited", 1.5, None)
    error = send_error({"code": "muted", "message": "hush", "until": UNTIL})
    assert error.until == UNTIL_AT and str(error) == "muted: hush"


def test_http_errors_keep_the_code_until_reason_and_retry_after() -> None:
    """An HTTP error body gives code, message, until, reason; Retry-After the wait; else status."""
    body = orjson.dumps(
        {"error": {"code": "banned", "message": "out", "until": UNTIL, "reason": "spam"}}
    )
    error = http_error(403, {}, body)
    assert (error.code, error.message, error.until, error.reason, error.status) == (
        "banned",
        "out",
        UNTIL_AT,
        "spam",
        403,
    )
    slow = http_error(429, {"retry-after": "2"}, orjson.dumps({"error": {"code": "rate_limited"}}))
    assert slow.retry_after == 2.0 and slow.code == "rate_limited"
    proxy = http_error(502, {}, b"<html>bad gateway</html>")
    assert (proxy.code, proxy.message, proxy.status) == ("502", "<html>bad gateway</html>", 502)


def test_a_token_s_expiry_is_read_without_checking_it() -> None:
    """jwt_expiry reads exp from a JWT's claims; anything else is None."""
    assert jwt_expiry(fake_jwt(1234.0, sub="ann")) == 1234.0
    assert jwt_expiry("not-a-jwt") is None
    assert jwt_expiry("a.!!!.c") is None
    assert jwt_expiry(fake_jwt("soon")) is None  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("30m", 1800), ("12h", 43200), ("7d", 604800), ("2w", 1209600), ("45", 45)],
)
def test_durations_are_read_in_seconds(text: str, seconds: int) -> None:
    """90s, 30m, 12h, 7d, 2w and plain seconds are read as seconds."""
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "0s", "1.5h", "h", "3y", "-5m", "1h30m"])
def test_bad_durations_are_refused(text: str) -> None:
    """Zero, fractions, unknown units and compound forms raise ValueError."""
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_room_info_audit_and_account_answers_are_read() -> None:
    """GET room, audit and me answers parse into RoomInfo, AuditPage and AccountInfo."""
    info = room_info(
        {
            "name": "dev",
            "title": "dev",
            "private": True,
            "owner": "ann",
            "moderators": ["bob"],
            "topic": "",
            "slow_mode": 10,
            "receipts": True,
            "member_count": 3,
            "members": ["ann", "bob", "cat"],
            "role": "moderator",
            "muted_until": None,
            "bans": [{"user": "eve", "until": None, "reason": "spam", "by": "ann", "at": UNTIL}],
            "mutes": [{"user": "cat", "until": UNTIL, "by": "bob", "at": UNTIL}],
        }
    )
    assert info == RoomInfo(
        "dev",
        "dev",
        True,
        "ann",
        ("bob",),
        "",
        10,
        True,
        3,
        ("ann", "bob", "cat"),
        "moderator",
        None,
        (BanInfo("eve", None, "spam", "ann", UNTIL_AT),),
        (MuteInfo("cat", UNTIL_AT, "bob", UNTIL_AT),),
    )
    assert info.moderates
    assert not room_info({"name": "lobby", "role": "member"}).moderates
    page = audit_page(
        {
            "entries": [
                {"id": 9, "at": UNTIL, "by": "ann", "action": "ban", "target": "eve"},
                {"id": 4, "at": UNTIL, "by": "ann", "action": "settings", "detail": {"topic": "x"}},
            ],
            "has_more": True,
        }
    )
    assert isinstance(page, AuditPage) and page.before == 4
    assert page.entries[1].detail == {"topic": "x"} and page.entries[0].target == "eve"
    assert audit_page({"entries": [], "has_more": False}).before is None
    with pytest.raises(ValueError, match="malformed audit"):
        audit_page({"entries": [{"action": "ban"}]})
    me = account_info({"name": "ann", "admin": True, "created_at": UNTIL})
    assert (me.name, me.admin, me.created_at, me.banned) == ("ann", True, UNTIL_AT, False)
    banned = account_info({"name": "eve", "admin": False, "banned_until": None, "ban_reason": "x"})
    assert banned.banned and banned.banned_until is None and banned.ban_reason == "x"


# -- the connection ---------------------------------------------------------------------


async def test_a_removed_room_is_forgotten_and_not_joined_again(
    reader: asyncio.Future[None],
) -> None:
    """After removed, the room's messages are dropped and a resume joins only the others."""
    client = Client("ws://127.0.0.1:9/ws", rooms=("dev",))
    events = collect(client)
    conn = connected(client)
    conn.push({"type": "joined", "payload": {"room": "dev", "seq": 4}})
    conn.push({"type": "removed", "payload": {"room": "dev", "by": "ann", "reason": "spam"}})
    conn.push({"type": "chat", "payload": {"room": "dev", "message": "x", "seq": 5, "from": "a"}})
    assert client.rooms == ["lobby"]
    assert [e for e in events if isinstance(e, Removed)] == [Removed("dev", "ann", "spam")]
    assert not any(getattr(e, "room", None) == "dev" and hasattr(e, "seq") for e in events)

    def answer(sent: dict[str, Any]) -> list[dict[str, Any]]:
        room = sent["payload"]["room"]
        return [{"type": "joined", "id": sent["id"], "payload": {"room": room, "seq": 1}}]

    again = FakeConnection(client, answer)
    await resume(client, again, reader)
    assert [s["payload"]["room"] for s in again.of_type("join")] == ["lobby"]


async def test_a_resume_join_refused_for_a_ban_forgets_the_room(
    reader: asyncio.Future[None],
) -> None:
    """Banned while away: the resume join is refused, the room forgotten, a Removed delivered."""
    client = Client("ws://127.0.0.1:9/ws", rooms=("dev", "ops"))
    events = collect(client)

    def answer(sent: dict[str, Any]) -> list[dict[str, Any]]:
        room = sent["payload"]["room"]
        if room == "dev":
            payload = {"code": "banned", "message": "banned from dev", "until": UNTIL}
            return [{"type": "error", "id": sent["id"], "payload": payload}]
        if room == "ops":
            payload = {"code": "internal", "message": "try again"}
            return [{"type": "error", "id": sent["id"], "payload": payload}]
        return [{"type": "joined", "id": sent["id"], "payload": {"room": room, "seq": 1}}]

    await resume(client, FakeConnection(client, answer), reader)
    assert client.rooms == ["lobby", "ops"]  # a passing failure keeps the room
    [removed] = [e for e in events if isinstance(e, Removed)]
    assert removed == Removed("dev", "", "banned from dev", True, UNTIL_AT)


async def test_a_refused_send_carries_until() -> None:
    """A chat refused muted raises SendError with the mute's end."""
    client = Client("ws://127.0.0.1:9/ws")

    def answer(sent: dict[str, Any]) -> list[dict[str, Any]]:
        payload = {"code": "muted", "message": "you are muted", "until": UNTIL}
        return [{"type": "error", "id": sent["id"], "payload": payload}]

    connected(client, answer)
    with pytest.raises(SendError) as caught:
        await client.send_chat("hi", "dev")
    assert caught.value.code == "muted" and caught.value.until == UNTIL_AT


@pytest.mark.parametrize("reason", ["signed out", "banned", "account deleted"])
def test_a_revocation_close_stops_the_client_with_signed_out(reason: str) -> None:
    """1008 signed out / banned / account deleted: CLOSED with a clear reason, no reconnect."""
    client = Client("ws://127.0.0.1:9/ws", username="ann", password="pw")
    loop = asyncio.new_event_loop()
    try:
        client._ready_once = loop.create_future()
        client._closed_by_policy(reason)
        assert client.state is ConnectionState.CLOSED
        assert client.closed_reason == f"the server ended this session: {reason}"
        error = client._ready_once.exception()
        assert isinstance(error, SignedOut) and isinstance(error, AuthRefused)
        assert error.reason == reason
    finally:
        loop.close()


def test_a_late_token_is_renewed_on_reconnect_other_policy_closes_stop() -> None:
    """1008 token expired: the next attempt renews (when it can); another 1008 stops."""
    renewing = Client("ws://127.0.0.1:9/ws", token="old", refresh_token="r1")
    renewing._closed_by_policy("token expired")
    assert renewing.state is not ConnectionState.CLOSED and renewing.token is None
    stuck = Client("ws://127.0.0.1:9/ws", token="old")
    stuck._closed_by_policy("token expired")
    assert stuck.closed_reason == "closed by the server with 1008: token expired"
    leaving = Client("ws://127.0.0.1:9/ws", token="t")
    leaving._leaving = "signed out"
    leaving._closed_by_policy("signed out")
    assert leaving.closed_reason == "signed out"


# -- sign-in over HTTP --------------------------------------------------------------------


class FakeHttp:
    """Answers the client's HTTP calls as the server's routes do; records them."""

    def __init__(self, *, refresh_ok: bool = True, login_ok: bool = True) -> None:
        self.refresh_ok = refresh_ok
        self.login_ok = login_ok
        self.calls: list[tuple[str, str, Any, str | None]] = []
        self.issued = 0
        self.routes: dict[tuple[str, str], Callable[[Any], tuple[int, Any]]] = {}

    def tokens(self, user: str = "ann") -> dict[str, Any]:
        self.issued += 1
        return {
            "token": fake_jwt(time.time() + 900, n=self.issued),
            "expires_at": UNTIL,
            "refresh_token": f"sid.secret{self.issued}",
            "refresh_expires_at": UNTIL,
            "user": {"name": user, "admin": True},
        }

    def __call__(
        self, method: str, url: str, body: bytes | None, headers: dict[str, str]
    ) -> tuple[int, dict[str, str], bytes]:
        path = url.split("://", 1)[1].split("/", 1)[1]
        sent = orjson.loads(body) if body else None
        self.calls.append((method, "/" + path, sent, headers.get("Authorization")))
        status, answer = self.answer(method, "/" + path, sent)
        return status, {}, orjson.dumps(answer) if answer is not None else b""

    def answer(self, method: str, path: str, sent: Any) -> tuple[int, Any]:
        if path == "/api/refresh":
            if self.refresh_ok:
                return 200, self.tokens()
            return 401, {"error": {"code": "auth_failed", "message": "used"}}
        if path == "/api/login":
            if self.login_ok:
                return 200, self.tokens()
            return 401, {"error": {"code": "auth_failed", "message": "wrong password"}}
        route = self.routes.get((method, path.split("?")[0]))
        assert route is not None, f"unexpected {method} {path}"
        return route(sent)

    def paths(self) -> list[str]:
        return [f"{method} {path}" for method, path, _, _ in self.calls]


@pytest.fixture
def http(monkeypatch: pytest.MonkeyPatch) -> FakeHttp:
    """The client's HTTP calls go to a FakeHttp."""
    fake = FakeHttp()
    monkeypatch.setattr(signin, "http_call", fake)
    return fake


async def test_renewals_racing_spend_the_refresh_token_once(http: FakeHttp) -> None:
    """Three callers find the token stale at once: one refresh, all get its token."""
    stale = fake_jwt(time.time() - 5)
    client = Client("ws://127.0.0.1:9/ws", token=stale, refresh_token="sid.secret0")
    seen = collect(client)
    await asyncio.gather(*(client._renew(stale) for _ in range(3)))
    assert http.paths() == ["POST /api/refresh"]
    assert http.calls[0][2] == {"refresh_token": "sid.secret0"}
    assert client.refresh_token == "sid.secret1" and client.token != stale and client.admin
    [tokens] = [e for e in seen if isinstance(e, SessionTokens)]
    assert tokens.refresh_token == "sid.secret1" and tokens.user == "ann"
    assert "secret" not in repr(tokens)  # tokens stay out of logs


async def test_a_refused_refresh_falls_back_to_the_password_then_gives_up(
    http: FakeHttp,
) -> None:
    """Refresh refused: log in with the password; without one, AuthRefused."""
    http.refresh_ok = False
    client = Client("ws://127.0.0.1:9/ws", username="ann", password="pw")
    client.refresh_token = "sid.used"
    await client._renew(None)
    assert http.paths() == ["POST /api/refresh", "POST /api/login"]
    assert client.refresh_token == "sid.secret1"  # the login's
    alone = Client("ws://127.0.0.1:9/ws", refresh_token="sid.used")
    with pytest.raises(AuthRefused, match="sign in again"):
        await alone._renew(None)
    assert alone.refresh_token is None  # a refused one never works again


async def test_token_expired_refreshes_and_sends_auth_with_the_new_token(http: FakeHttp) -> None:
    """token_expired on the connection: one refresh, then auth with the new token."""
    client = Client("ws://127.0.0.1:9/ws", token=fake_jwt(time.time() + 1), refresh_token="s.0")

    def answer(sent: dict[str, Any]) -> list[dict[str, Any]]:
        user = {"name": "ann", "admin": False}
        return [{"type": "auth", "id": sent["id"], "payload": {"ok": True, "user": user}}]

    conn = connected(client, answer)
    conn.push({"type": "error", "payload": {"code": "token_expired", "message": "renew"}})
    for _ in range(100):
        if conn.of_type("auth"):
            break
        await asyncio.sleep(0.01)
    [auth] = conn.of_type("auth")
    assert http.paths() == ["POST /api/refresh"]
    assert auth["payload"] == {"token": client.token} and client.refresh_token == "sid.secret1"
    await asyncio.sleep(0.01)
    assert client.admin is False  # as the auth answer says


async def test_moderation_calls_send_the_spec_s_requests(http: FakeHttp) -> None:
    """Each moderation call is its route, with its body, the bearer token, and its answer."""
    token = fake_jwt(time.time() + 900)
    client = Client("ws://127.0.0.1:9/ws", token=token)
    client.user = "ann"
    room = {"name": "dev", "owner": "ann", "moderators": ["bob"], "role": "owner"}
    ban = {"user": "eve", "until": UNTIL, "reason": "spam", "by": "ann", "at": UNTIL}
    mute = {"user": "cat", "until": UNTIL, "by": "ann", "at": UNTIL}
    audit = {"entries": [{"id": 3, "at": UNTIL, "by": "ann", "action": "ban"}], "has_more": False}
    http.routes = {
        ("GET", "/api/rooms/dev"): lambda _: (200, {"room": room}),
        ("PATCH", "/api/rooms/dev"): lambda _: (200, {"room": room}),
        ("PUT", "/api/rooms/dev/moderators/bob"): lambda _: (200, {"room": room}),
        ("DELETE", "/api/rooms/dev/moderators/bob"): lambda _: (200, {"room": room}),
        ("DELETE", "/api/rooms/dev/members/eve"): lambda _: (204, None),
        ("DELETE", "/api/rooms/dev/members/ann"): lambda _: (204, None),
        ("PUT", "/api/rooms/dev/bans/eve"): lambda _: (200, {"ban": ban}),
        ("DELETE", "/api/rooms/dev/bans/eve"): lambda _: (204, None),
        ("PUT", "/api/rooms/dev/mutes/cat"): lambda _: (200, {"mute": mute}),
        ("DELETE", "/api/rooms/dev/mutes/cat"): lambda _: (204, None),
        ("GET", "/api/rooms/dev/audit"): lambda _: (200, audit),
        ("DELETE", "/api/rooms/dev"): lambda _: (204, None),
        ("GET", "/api/me"): lambda _: (200, {"user": {"name": "ann", "admin": False}}),
        ("POST", "/api/password"): lambda _: (200, {"revoked": 2}),
        ("GET", "/api/admin/rooms"): lambda _: (200, {"rooms": [room]}),
        ("PUT", "/api/admin/users/eve/ban"): lambda _: (200, {"ban": ban}),
        ("POST", "/api/admin/users/eve/password"): lambda _: (200, {"password": "new-pw"}),
        ("PUT", "/api/admin/users/eve/admin"): lambda _: (204, None),
    }
    assert (await client.room_info("dev")).owner == "ann"
    await client.update_room("dev", topic="", slow_mode=30)
    await client.set_moderator("dev", "bob")
    await client.set_moderator("dev", "bob", on=False)
    await client.remove_member("dev", "eve", reason="spam")
    assert await client.ban("dev", "eve", for_seconds=3600, reason="spam") == BanInfo(
        "eve", UNTIL_AT, "spam", "ann", UNTIL_AT
    )
    await client.ban("dev", "eve", until=datetime(2026, 5, 1, 12))
    await client.unban("dev", "eve")
    assert (await client.mute("dev", "cat", until=UNTIL_AT)).until == UNTIL_AT
    await client.unmute("dev", "cat")
    assert [e.id async for e in client.audit("dev", limit=10)] == [3]
    assert await client.change_password("old", "new") == 2
    assert (await client.me()).name == "ann"
    assert [r.name for r in await client.admin_rooms()] == ["dev"]
    assert (await client.admin_ban_user("eve", for_seconds=60)).user == "eve"
    assert await client.admin_reset_password("eve") == "new-pw"
    await client.admin_set_admin("eve")
    await client.leave_for_good("dev")
    await client.delete_room("dev")
    assert all(auth == f"Bearer {token}" for *_, auth in http.calls)
    bodies = [(path, sent) for _, path, sent, _ in http.calls if sent is not None]
    assert bodies == [
        ("/api/rooms/dev", {"topic": "", "slow_mode": 30}),
        ("/api/rooms/dev/members/eve", {"reason": "spam"}),
        ("/api/rooms/dev/bans/eve", {"for": 3600, "reason": "spam"}),
        ("/api/rooms/dev/bans/eve", {"until": "2026-05-01T12:00:00.000Z"}),
        ("/api/rooms/dev/mutes/cat", {"until": "2026-05-01T12:00:00.000Z"}),
        ("/api/password", {"old": "old", "new": "new"}),
        ("/api/admin/users/eve/ban", {"for": 60}),
        ("/api/admin/users/eve/password", {}),
    ]
    assert "GET /api/rooms/dev/audit?limit=10" in http.paths()
    assert "dev" not in client.rooms


async def test_bad_moderation_arguments_are_refused_before_sending(http: FakeHttp) -> None:
    """A mute without an end, both until and for, nothing to update: ValueError, no request."""
    client = Client("ws://127.0.0.1:9/ws", token=fake_jwt(time.time() + 900))
    with pytest.raises(ValueError, match="mute ends"):
        await client.mute("dev", "cat")
    with pytest.raises(ValueError, match="not both"):
        await client.ban("dev", "eve", until=UNTIL_AT, for_seconds=5)
    with pytest.raises(ValueError, match="above 0"):
        await client.mute("dev", "cat", for_seconds=0)
    with pytest.raises(ValueError, match="at least one"):
        await client.update_room("dev")
    assert http.calls == []


async def test_a_401_is_renewed_once_but_not_on_password_routes(http: FakeHttp) -> None:
    """A refused bearer is renewed and the call made again; a wrong password is not retried."""
    client = Client("ws://127.0.0.1:9/ws", token=fake_jwt(time.time() + 900), refresh_token="s.0")
    refused = {"error": {"code": "auth_failed", "message": "the session has ended"}}
    answers = iter([(401, refused), (200, {"user": {"name": "ann"}})])
    http.routes[("GET", "/api/me")] = lambda _: next(answers)
    http.routes[("POST", "/api/password")] = lambda _: (401, refused)
    assert (await client.me()).name == "ann"
    assert http.paths() == ["GET /api/me", "POST /api/refresh", "GET /api/me"]
    with pytest.raises(SendError) as caught:
        await client.change_password("wrong", "new password here")
    assert caught.value.code == "auth_failed" and caught.value.status == 401
    assert http.paths()[-1] == "POST /api/password"


async def test_an_http_refusal_raises_send_error_with_until(http: FakeHttp) -> None:
    """room_info of a room one is banned from: SendError banned with until and reason."""
    client = Client("ws://127.0.0.1:9/ws", token=fake_jwt(time.time() + 900))
    body = {"error": {"code": "banned", "message": "b", "until": None, "reason": "spam"}}
    http.routes[("GET", "/api/rooms/dev")] = lambda _: (403, body)
    with pytest.raises(SendError) as caught:
        await client.room_info("dev")
    assert (caught.value.code, caught.value.until, caught.value.reason) == ("banned", None, "spam")


async def test_logout_forgets_the_tokens_and_closes(http: FakeHttp) -> None:
    """logout posts everywhere, forgets every credential, closes with "signed out everywhere"."""
    client = Client("ws://127.0.0.1:9/ws", username="ann", password="pw")
    client.token, client.refresh_token = fake_jwt(time.time() + 900), "s.1"
    http.routes[("POST", "/api/logout")] = lambda _: (204, None)
    await client.logout(everywhere=True)
    assert http.calls[-1][:3] == ("POST", "/api/logout", {"everywhere": True})
    assert client.state is ConnectionState.CLOSED
    assert client.closed_reason == "signed out everywhere"
    assert (client.token, client.refresh_token, client._password) == (None, None, None)


async def test_a_failed_delete_account_keeps_the_client(http: FakeHttp) -> None:
    """delete_account with a wrong password raises; the client is not closed."""
    client = Client("ws://127.0.0.1:9/ws", token=fake_jwt(time.time() + 900))
    wrong = {"error": {"code": "auth_failed", "message": "wrong password"}}
    http.routes[("DELETE", "/api/me")] = lambda _: (401, wrong)
    with pytest.raises(SendError, match="auth_failed"):
        await client.delete_account("nope")
    assert client.state is not ConnectionState.CLOSED and client._leaving is None
    assert http.calls[-1][2] == {"password": "nope"}
