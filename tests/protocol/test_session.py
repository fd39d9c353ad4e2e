"""The per-connection state machine, fed frames with no socket and no loop."""

from __future__ import annotations

import json
import struct

from roomcast.protocol.codes import CloseCode, ErrorCode
from roomcast.protocol.messages import (
    AuthFrame,
    Chat,
    Direct,
    ErrorReply,
    FileHeader,
    Join,
    Leave,
    Pong,
    Read,
    SentBack,
    Typing,
    UnreadRequest,
    UserInfo,
)
from roomcast.protocol.session import CLOSED, OPEN, Close, Reply, Session


def guest_session(**kwargs: int) -> Session:
    session = Session("s1", UserInfo("guest-1", True), **kwargs)
    session.joined("lobby")
    return session


#: The time every frame of these tests arrives at, unless a test says otherwise.
NOW = 1000.0


def send(session: Session, **frame: object) -> object:
    return session.receive_text(json.dumps(frame), NOW)


def assert_error(outcome: object, code: ErrorCode, frame_id: str | None = None) -> None:
    assert isinstance(outcome, Reply)
    assert isinstance(outcome.frame, ErrorReply)
    assert outcome.frame.code is code
    assert outcome.id == frame_id


def test_ping_is_answered_by_the_session() -> None:
    """ping becomes a pong reply with the same id and payload."""
    assert send(guest_session(), type="ping", id="p", payload={"a": 1}) == Reply(
        Pong({"a": 1}), "p"
    )


def test_unknown_types_are_echoed() -> None:
    """Unknown types become an echo of the whole frame."""
    outcome = send(guest_session(), type="what", payload=[1])
    assert outcome == Reply(SentBack({"type": "what", "payload": [1]}), None)


def test_parse_errors_become_error_replies() -> None:
    """Malformed frames are answered with an error frame, keeping the id when valid."""
    assert_error(guest_session().receive_text("{nope", NOW), ErrorCode.INVALID_JSON)
    assert_error(
        send(guest_session(), type="join", id="j", payload={}), ErrorCode.INVALID_MESSAGE, "j"
    )


def test_chat_needs_membership() -> None:
    """A chat for a joined room goes to the node; for another room it is not_member."""
    session = guest_session()
    assert send(session, type="chat", payload={"message": "hi"}) == Chat(None, "lobby", "hi")
    assert_error(
        send(session, type="chat", id="c", payload={"message": "hi", "room": "x"}),
        ErrorCode.NOT_MEMBER,
        "c",
    )
    assert_error(send(session, type="typing", payload={"room": "x"}), ErrorCode.NOT_MEMBER)
    assert send(session, type="typing", payload={"room": "lobby"}) == Typing(None, "lobby")


def test_leave_needs_membership() -> None:
    """Leaving a room you are not in is not_member; leaving one you are in goes to the node."""
    session = guest_session()
    assert_error(send(session, type="leave", payload={"room": "x"}), ErrorCode.NOT_MEMBER)
    assert send(session, type="leave", payload={"room": "lobby"}) == Leave(None, "lobby")


def test_room_cap() -> None:
    """Past max_rooms a join is refused, but re-joining a room you are in is allowed."""
    session = guest_session(max_rooms=2)
    session.joined("a")
    assert_error(send(session, type="join", payload={"room": "b"}), ErrorCode.FORBIDDEN)
    assert send(session, type="join", payload={"room": "a", "since": 0}) == Join(None, "a", 0)


def test_guests_cannot_send_direct_messages_or_files() -> None:
    """Direct messages and files need a registered user."""
    session = guest_session()
    assert_error(
        send(session, type="direct", payload={"to": "b", "message": "m"}), ErrorCode.FORBIDDEN
    )
    header = json.dumps({"room": "lobby", "name": "a", "mime": "text/plain", "id": "f"}).encode()
    outcome = session.receive_binary(struct.pack(">I", len(header)) + header + b"x", NOW)
    assert_error(outcome, ErrorCode.FORBIDDEN, "f")


def test_registered_users_pass_direct_and_files_to_the_node() -> None:
    """A registered user's direct message and file frame go to the node."""
    session = Session("s", UserInfo("ann", False))
    session.joined("lobby")
    assert send(session, type="direct", payload={"to": "b", "message": "m"}) == Direct(
        None, "b", "m"
    )
    header = json.dumps({"room": "lobby", "name": "a", "mime": "text/plain"}).encode()
    frame = struct.pack(">I", len(header)) + header
    assert isinstance(session.receive_binary(frame, NOW), FileHeader)
    other = json.dumps({"room": "x", "name": "a", "mime": "text/plain"}).encode()
    assert_error(
        session.receive_binary(struct.pack(">I", len(other)) + other, NOW), ErrorCode.NOT_MEMBER
    )


def test_binary_garbage_is_an_error_reply() -> None:
    """A malformed binary frame is answered with invalid_message."""
    assert_error(guest_session().receive_binary(b"\x00\x01", NOW), ErrorCode.INVALID_MESSAGE)


def test_unauthenticated_may_only_auth_or_ping() -> None:
    """Without a user, only auth and ping are accepted."""
    session = Session("s", None)
    assert_error(send(session, type="chat", payload={"message": "m"}), ErrorCode.FORBIDDEN)
    assert_error(send(session, type="foo"), ErrorCode.FORBIDDEN)
    assert isinstance(send(session, type="ping"), Reply)
    assert send(session, type="auth", payload={"guest": "ann"}) == AuthFrame(None, guest="ann")


def test_three_auth_failures_close_with_1008() -> None:
    """The third failed auth closes the connection with a policy violation."""
    session = Session("s", None)
    for _ in range(2):
        reply, close = session.auth_failed("bad", "a")
        assert_error(reply, ErrorCode.AUTH_FAILED, "a")
        assert close is None
    reply, close = session.auth_failed("bad", None)
    assert close == Close(CloseCode.POLICY_VIOLATION, "too many failed auth attempts")


def test_success_resets_auth_failures() -> None:
    """A successful auth forgives earlier failures."""
    session = Session("s", None)
    session.auth_failed("bad", None)
    session.auth_failed("bad", None)
    session.authenticated(UserInfo("ann", True))
    assert session.auth_failed("bad", None)[1] is None


def test_close_returns_rooms_and_ends_the_session() -> None:
    """Closing reports the rooms the connection was in and empties them."""
    session = guest_session()
    session.joined("a")
    assert session.state is OPEN
    assert session.closed() == {"lobby", "a"}
    assert session.state is CLOSED
    assert session.rooms == set()


# -- rate limits ------------------------------------------------------------------


def limited_session(rate: float = 20.0, burst: int = 40) -> Session:
    session = Session("s", UserInfo("ann", False), rate_limit=rate, rate_burst=burst)
    session.joined("lobby")
    return session


def chat_at(session: Session, now: float, fid: str | None = None) -> object:
    frame: dict[str, object] = {"type": "chat", "payload": {"message": "m"}}
    if fid is not None:
        frame["id"] = fid
    return session.receive_text(json.dumps(frame), now)


def test_chat_past_the_burst_is_rate_limited_with_retry_after() -> None:
    """The 41st chat at one instant is refused rate_limited with its id and retry_after in ms."""
    session = limited_session()
    for i in range(40):
        assert isinstance(chat_at(session, NOW, f"c{i}"), Chat)
    outcome = chat_at(session, NOW, "c40")
    assert_error(outcome, ErrorCode.RATE_LIMITED, "c40")
    assert isinstance(outcome, Reply) and isinstance(outcome.frame, ErrorReply)
    assert outcome.frame.extra == {"retry_after": 50}
    assert outcome.frame.payload()["retry_after"] == 50
    # One token comes back every 1/20 s.
    assert isinstance(chat_at(session, NOW + 0.05, "c41"), Chat)
    assert_error(chat_at(session, NOW + 0.05, "c42"), ErrorCode.RATE_LIMITED, "c42")


def test_commands_have_five_times_the_budget_and_their_own_bucket() -> None:
    """200 pings at once pass, the 201st is refused, and chats are still allowed."""
    session = limited_session()
    for i in range(200):
        assert send_ping(session, f"p{i}") == Reply(Pong({}), f"p{i}")
    assert_error(send_ping(session, "p200"), ErrorCode.RATE_LIMITED, "p200")
    assert isinstance(chat_at(session, NOW), Chat)


def send_ping(session: Session, fid: str) -> object:
    return session.receive_text(json.dumps({"type": "ping", "id": fid}), NOW)


def test_rejoining_128_rooms_after_a_reconnect_is_not_refused() -> None:
    """A client joining its 128 rooms at once stays within the commands bucket."""
    session = limited_session()
    for i in range(128):
        frame = {"type": "join", "payload": {"room": f"r{i}"}}
        outcome = session.receive_text(json.dumps(frame), NOW)
        assert isinstance(outcome, Join), outcome


def test_malformed_and_binary_frames_draw_from_the_messages_bucket() -> None:
    """Garbage, echoes and binary frames spend the messages budget like chats."""
    session = limited_session(burst=3)
    assert_error(session.receive_text("{nope", NOW), ErrorCode.INVALID_JSON)
    assert isinstance(session.receive_text(json.dumps({"type": "what"}), NOW), Reply)
    header = json.dumps({"room": "lobby", "name": "a", "mime": "text/plain", "id": "f"}).encode()
    binary = struct.pack(">I", len(header)) + header
    assert isinstance(session.receive_binary(binary, NOW), FileHeader)
    assert_error(session.receive_text("{nope", NOW), ErrorCode.RATE_LIMITED)
    assert_error(session.receive_binary(binary, NOW), ErrorCode.RATE_LIMITED, "f")
    assert_error(chat_at(session, NOW, "c"), ErrorCode.RATE_LIMITED, "c")


def test_ten_seconds_of_flooding_closes_with_1008() -> None:
    """Refusals that keep coming for 10 s end in a policy-violation close, not earlier."""
    session = limited_session()
    closed_at = None
    for step in range(2000):  # 100 frames a second for 20 s
        now = NOW + step / 100
        outcome = chat_at(session, now)
        if isinstance(outcome, Close):
            assert outcome == Close(CloseCode.POLICY_VIOLATION, "rate limit exceeded for 10 s")
            closed_at = now
            break
        if isinstance(outcome, Reply):
            assert_error(outcome, ErrorCode.RATE_LIMITED)
        else:
            assert isinstance(outcome, Chat)
    assert closed_at is not None
    # The burst of 40 lasts 0.5 s at 100/s (20/s refilled); refusals start then.
    assert 10.4 <= closed_at - NOW <= 10.6


def test_bursts_with_quiet_gaps_are_never_closed() -> None:
    """Going over the limit now and then, with 2+ s of calm between, only earns errors."""
    session = limited_session(burst=5)
    refused = 0
    for burst_no in range(30):  # 60 s of bursts of 10 every 2.5 s
        start = NOW + burst_no * 2.5
        for i in range(10):
            outcome = chat_at(session, start + i * 0.001)
            assert not isinstance(outcome, Close)
            refused += isinstance(outcome, Reply)
    assert refused > 0


def test_rate_zero_is_unlimited() -> None:
    """With rate_limit 0 no frame is ever refused."""
    session = limited_session(rate=0)
    assert session.limiter is None
    for _ in range(10_000):
        assert isinstance(chat_at(session, NOW), Chat)


# -- two steps: on arrival, then in turn ----------------------------------------------


def file_frame(room: str, fid: str | None = None) -> bytes:
    header: dict[str, object] = {"room": room, "name": "a", "mime": "text/plain"}
    if fid is not None:
        header["id"] = fid
    encoded = json.dumps(header).encode()
    return struct.pack(">I", len(encoded)) + encoded + b"body"


def test_the_two_steps_together_are_receive() -> None:
    """decide(arrive_*(frame)) is what receive_text/receive_binary answer, frame by frame."""
    texts = [
        "{nope",
        "[]",
        json.dumps({"type": "ping", "id": "p", "payload": {"a": 1}}),
        json.dumps({"type": "what", "payload": [1]}),
        json.dumps({"type": "chat", "id": "c", "payload": {"message": "hi"}}),
        json.dumps({"type": "chat", "id": "x", "payload": {"message": "hi", "room": "x"}}),
        json.dumps({"type": "join", "payload": {"room": "b", "since": 3}}),
        json.dumps({"type": "leave", "payload": {"room": "x"}}),
        json.dumps({"type": "direct", "payload": {"to": "b", "message": "m"}}),
        json.dumps({"type": "auth", "payload": {"guest": "ann"}}),
    ]
    binaries = [b"\x00\x01", file_frame("lobby", "f"), file_frame("x", "g")]
    for user in (UserInfo("guest-1", True), UserInfo("ann", False), None):
        one, two = Session("a", user, rate_burst=5), Session("b", user, rate_burst=5)
        for session in (one, two):
            session.joined("lobby")
        for step, text in enumerate(texts * 3):  # past the burst: refusals too
            now = NOW + step * 0.01
            assert two.decide(two.arrive_text(text, now)) == one.receive_text(text, now), text
        for binary in binaries * 4:
            assert two.decide(two.arrive_binary(binary, NOW)) == one.receive_binary(binary, NOW)


def test_the_rate_limit_is_taken_when_frames_arrive_not_when_decided() -> None:
    """60 chats arriving at 15/s are all allowed though decided at one instant, 4 s later."""
    session = limited_session()
    frame = json.dumps({"type": "chat", "payload": {"message": "m"}})
    arrived = [session.arrive_text(frame, NOW + i / 15) for i in range(60)]
    assert all(isinstance(a, Chat) for a in arrived)
    decided = [session.decide(a) for a in arrived]
    assert decided == [Chat(None, "lobby", "m")] * 60
    # Taken all at once instead, past the burst of 40 they are refused.
    late = limited_session()
    outcomes = [late.receive_text(frame, NOW + 4) for _ in range(60)]
    assert sum(isinstance(o, Reply) for o in outcomes) == 20


def test_a_flood_is_refused_on_arrival_and_the_refusal_is_kept_for_its_turn() -> None:
    """Past the burst, arrive_text refuses; decide passes the refusal on unchanged."""
    session = limited_session(burst=2)
    arrived = [
        session.arrive_text(json.dumps({"type": "chat", "id": f"c{i}", "payload": {}}), NOW)
        for i in range(3)
    ]
    assert_error(arrived[0], ErrorCode.INVALID_MESSAGE, "c0")  # malformed: still counted
    assert isinstance(arrived[1], Reply)
    assert_error(arrived[2], ErrorCode.RATE_LIMITED, "c2")
    assert [session.decide(a) for a in arrived] == arrived
    close = Close(CloseCode.POLICY_VIOLATION, "rate limit exceeded for 10 s")
    assert session.decide(close) is close


def test_membership_is_checked_in_turn_after_a_pending_join() -> None:
    """A chat and a file for a room arrive while its join waits: decided after it, they pass."""
    session = limited_session()
    join = session.arrive_text(json.dumps({"type": "join", "payload": {"room": "new"}}), NOW)
    chat = session.arrive_text(
        json.dumps({"type": "chat", "payload": {"message": "m", "room": "new"}}), NOW
    )
    upload = session.arrive_binary(file_frame("new", "f"), NOW)
    assert session.decide(join) == Join(None, "new")
    session.joined("new")  # what the node reports once the join is done
    assert session.decide(chat) == Chat(None, "new", "m")
    assert isinstance(session.decide(upload), FileHeader)
    # Without the join the same frames are refused in their turn.
    other = limited_session()
    assert_error(other.decide(chat), ErrorCode.NOT_MEMBER)
    assert_error(other.decide(upload), ErrorCode.NOT_MEMBER, "f")


def test_identity_is_checked_in_turn_after_a_pending_auth() -> None:
    """With no user yet, a chat behind an auth is decided after the auth signs the user in."""
    session = Session("s", None)
    session.joined("lobby")
    auth = session.arrive_text(json.dumps({"type": "auth", "payload": {"token": "t"}}), NOW)
    chat = session.arrive_text(json.dumps({"type": "chat", "payload": {"message": "m"}}), NOW)
    upload = session.arrive_binary(file_frame("lobby"), NOW)
    assert session.decide(auth) == AuthFrame(None, token="t")
    session.authenticated(UserInfo("ann", False))
    assert session.decide(chat) == Chat(None, "lobby", "m")
    assert isinstance(session.decide(upload), FileHeader)
    assert_error(Session("t", None).decide(chat), ErrorCode.FORBIDDEN)


# -- read markers ---------------------------------------------------------------------


def test_read_of_a_room_needs_membership() -> None:
    """A read of a joined room goes to the node; of another room it is not_member."""
    for session in (guest_session(), limited_session()):
        assert send(session, type="read", payload={"room": "lobby", "seq": 4}) == Read(
            None, 4, room="lobby"
        )
        outcome = send(session, type="read", id="r", payload={"room": "dev", "seq": 4})
        assert_error(outcome, ErrorCode.NOT_MEMBER, "r")


def test_guests_may_not_read_direct_messages_or_ask_for_unread_counts() -> None:
    """A guest's direct read (whole or one conversation) and unread are forbidden."""
    session = guest_session()
    for payload in ({"direct": True, "seq": 3}, {"direct": True, "with": "bob", "seq": 3}):
        assert_error(send(session, type="read", id="d", payload=payload), ErrorCode.FORBIDDEN, "d")
    assert_error(send(session, type="unread", id="u"), ErrorCode.FORBIDDEN, "u")


def test_registered_users_pass_direct_reads_and_unread_to_the_node() -> None:
    """A registered user's direct read and unread request go to the node."""
    session = limited_session()
    assert send(session, type="read", payload={"direct": True, "with": "bob", "seq": 3}) == Read(
        None, 3, peer="bob"
    )
    assert send(session, type="read", payload={"direct": True, "seq": 5}) == Read(None, 5)
    assert send(session, type="unread", id="u", payload={}) == UnreadRequest("u")


def test_read_and_unread_draw_from_the_commands_bucket() -> None:
    """200 reads and unreads at once pass, the next is refused, and chats are still allowed."""
    session = limited_session()
    for i in range(100):
        assert isinstance(send(session, type="read", payload={"room": "lobby", "seq": i}), Read)
        assert send(session, type="unread", id=f"u{i}") == UnreadRequest(f"u{i}")
    assert_error(send(session, type="unread", id="u"), ErrorCode.RATE_LIMITED, "u")
    assert_error(
        send(session, type="read", id="r", payload={"room": "lobby", "seq": 1}),
        ErrorCode.RATE_LIMITED,
        "r",
    )
    assert_error(send_ping(session, "p"), ErrorCode.RATE_LIMITED, "p")
    assert isinstance(chat_at(session, NOW), Chat)
