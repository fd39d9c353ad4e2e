"""The per-connection state machine, fed frames with no socket and no loop."""

from __future__ import annotations

import json
import struct

from roomcast.protocol.codes import CloseCode, ErrorCode
from roomcast.protocol.messages import (
    AuthFrame,
    Chat,
    Direct,
    EchoReply,
    ErrorReply,
    FileHeader,
    Join,
    Leave,
    Pong,
    Typing,
    UserInfo,
)
from roomcast.protocol.session import CLOSED, OPEN, Close, Reply, Session


def guest_session(**kwargs: int) -> Session:
    session = Session("s1", UserInfo("guest-1", True), **kwargs)
    session.joined("lobby")
    return session


def send(session: Session, **frame: object) -> object:
    return session.receive_text(json.dumps(frame))


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
    assert outcome == Reply(EchoReply({"type": "what", "payload": [1]}), None)


def test_parse_errors_become_error_replies() -> None:
    """Malformed frames are answered with an error frame, keeping the id when valid."""
    assert_error(guest_session().receive_text("{nope"), ErrorCode.INVALID_JSON)
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
    outcome = session.receive_binary(struct.pack(">I", len(header)) + header + b"x")
    assert_error(outcome, ErrorCode.FORBIDDEN, "f")


def test_registered_users_pass_direct_and_files_to_the_node() -> None:
    """A registered user's direct message and file frame go to the node."""
    session = Session("s", UserInfo("ann", False))
    session.joined("lobby")
    assert send(session, type="direct", payload={"to": "b", "message": "m"}) == Direct(
        None, "b", "m"
    )
    header = json.dumps({"room": "lobby", "name": "a", "mime": "text/plain"}).encode()
    assert isinstance(session.receive_binary(struct.pack(">I", len(header)) + header), FileHeader)
    other = json.dumps({"room": "x", "name": "a", "mime": "text/plain"}).encode()
    assert_error(
        session.receive_binary(struct.pack(">I", len(other)) + other), ErrorCode.NOT_MEMBER
    )


def test_binary_garbage_is_an_error_reply() -> None:
    """A malformed binary frame is answered with invalid_message."""
    assert_error(guest_session().receive_binary(b"\x00\x01"), ErrorCode.INVALID_MESSAGE)


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
