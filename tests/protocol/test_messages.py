"""Parsing and encoding of wire frames, without sockets."""

from __future__ import annotations

import json
import struct

import orjson
import pytest
from hypothesis import given, settings, strategies as st

from roomcast.exceptions import ProtocolError
from roomcast.model import Change, Mention, Quote, SearchHit, Unread
from roomcast.protocol.codes import ErrorCode
from roomcast.protocol.messages import (
    MAX_SEQ,
    Ack,
    AuthFrame,
    Chat,
    ChatMessage,
    Delete,
    Direct,
    DirectHistoryReply,
    DirectHistoryRequest,
    DirectMessage,
    Edit,
    ErrorReply,
    FileInfo,
    HistoryReply,
    HistoryRequest,
    Join,
    Joined,
    Leave,
    Ping,
    PresenceRequest,
    React,
    Read,
    ReadEvent,
    Receipt,
    SearchReply,
    SearchRequest,
    SendBack,
    SentBack,
    Typing,
    UnreadReply,
    UnreadRequest,
    UserInfo,
    Welcome,
    encode,
    format_timestamp,
    parse_binary_frame,
    parse_client_frame,
    parse_search,
    valid_room,
)


def frame(**obj: object) -> str:
    return json.dumps(obj)


def refused(data: str | bytes) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        parse_client_frame(data)
    return info.value


class TestParseValid:
    def test_chat_defaults_to_lobby(self) -> None:
        """A chat without a room is for lobby and keeps its id."""
        parsed = parse_client_frame(frame(type="chat", id="c1", payload={"message": "hi"}))
        assert parsed == Chat("c1", "lobby", "hi")

    def test_chat_in_named_room(self) -> None:
        """A chat names its room in the payload."""
        parsed = parse_client_frame(frame(type="chat", payload={"message": "x", "room": "r-1"}))
        assert parsed == Chat(None, "r-1", "x")

    def test_ping_keeps_any_payload(self) -> None:
        """ping accepts any payload, including none."""
        assert parse_client_frame(frame(type="ping", payload=[1, "a"])) == Ping(None, [1, "a"])
        assert parse_client_frame(frame(type="ping")) == Ping(None, {})

    def test_timestamp_and_extra_keys_are_ignored(self) -> None:
        """A client's timestamp and unknown top-level keys do not matter."""
        parsed = parse_client_frame(
            frame(type="chat", payload={"message": "m", "from": "admin"}, timestamp=0, x=1)
        )
        assert parsed == Chat(None, "lobby", "m")

    def test_unknown_type_is_echoed_whole(self) -> None:
        """Unknown types become SendBack carrying the whole received frame."""
        data = {"type": "foo", "id": "e", "payload": {"a": 1}}
        assert parse_client_frame(json.dumps(data)) == SendBack("e", data)

    def test_echo_type(self) -> None:
        """The echo type is echoed like an unknown type, whatever its payload."""
        data = {"type": "echo", "payload": "text"}
        assert parse_client_frame(json.dumps(data)) == SendBack(None, data)

    def test_every_command(self) -> None:
        """Each command type parses into its own class."""
        cases = {
            frame(type="join", payload={"room": "a", "since": 4}): Join(None, "a", 4),
            frame(type="join", payload={"room": "a"}): Join(None, "a", None),
            frame(type="leave", payload={"room": "a"}): Leave(None, "a"),
            frame(type="typing", payload={"room": "a"}): Typing(None, "a"),
            frame(type="presence", payload={"room": "a"}): PresenceRequest(None, "a"),
            frame(type="direct", payload={"to": "bob", "message": "m"}): Direct(None, "bob", "m"),
            frame(type="history", payload={"room": "a"}): HistoryRequest(None, "a", None, 50),
            frame(type="history", payload={"room": "a", "before": 9, "limit": 500}): (
                HistoryRequest(None, "a", 9, 100)
            ),
            frame(type="auth", payload={"token": "t"}): AuthFrame(None, token="t"),
            frame(type="auth", payload={"guest": "ann"}): AuthFrame(None, guest="ann"),
        }
        for data, expected in cases.items():
            assert parse_client_frame(data) == expected

    def test_bytes_input(self) -> None:
        """UTF-8 bytes parse like text."""
        assert parse_client_frame(b'{"type":"ping"}') == Ping(None, {})

    def test_message_at_the_length_limit(self) -> None:
        """A message of exactly the limit is accepted."""
        text = "é" * 4000
        assert parse_client_frame(frame(type="chat", payload={"message": text})) == Chat(
            None, "lobby", text
        )


class TestParseRefused:
    def test_not_json(self) -> None:
        """Non-JSON is invalid_json."""
        assert refused("hello{").code is ErrorCode.INVALID_JSON
        assert refused(b"\xff\xfe").code is ErrorCode.INVALID_JSON

    @pytest.mark.parametrize("data", ["[]", '"x"', "5", "null", "{}", '{"type":5}'])
    def test_wrong_shapes(self, data: str) -> None:
        """JSON that is not an object with a string type is invalid_message."""
        assert refused(data).code is ErrorCode.INVALID_MESSAGE

    def test_payload_must_be_an_object(self) -> None:
        """A known type with a non-object payload is invalid_message, keeping the id."""
        exc = refused(frame(type="chat", id="x", payload="hi"))
        assert (exc.code, exc.frame_id) == (ErrorCode.INVALID_MESSAGE, "x")

    @pytest.mark.parametrize("room", ["Lobby", "-x", "_x", "a b", "a" * 65, "", 5, "é"])
    def test_bad_room_names(self, room: object) -> None:
        """Room names outside [a-z0-9][a-z0-9_-]{0,63} are invalid_message."""
        exc = refused(frame(type="join", id="j", payload={"room": room}))
        assert (exc.code, exc.frame_id) == (ErrorCode.INVALID_MESSAGE, "j")

    def test_room_name_bounds(self) -> None:
        """64-character names are valid; the first character may be a digit."""
        assert valid_room("a" * 64)
        assert valid_room("0_-")
        assert not valid_room("a" * 65)
        assert not valid_room("lobby\n")

    @pytest.mark.parametrize("fid", [123, "x" * 65, ["a"], True])
    def test_bad_ids(self, fid: object) -> None:
        """An id that is not a string of at most 64 characters is refused, and not copied."""
        exc = refused(frame(type="ping", id=fid))
        assert (exc.code, exc.frame_id) == (ErrorCode.INVALID_MESSAGE, None)

    @pytest.mark.parametrize("message", [5, None, "", "   ", ["a"]])
    def test_bad_chat_text(self, message: object) -> None:
        """A chat needs a non-blank string message."""
        assert refused(frame(type="chat", payload={"message": message})).code is (
            ErrorCode.INVALID_MESSAGE
        )

    def test_text_too_long(self) -> None:
        """A message over 4000 characters is too_large."""
        exc = refused(frame(type="chat", id="l", payload={"message": "x" * 4001}))
        assert (exc.code, exc.frame_id) == (ErrorCode.TOO_LARGE, "l")

    @pytest.mark.parametrize(
        "payload",
        [{"room": "a", "since": -1}, {"room": "a", "since": "3"}, {"room": "a", "since": True}],
    )
    def test_bad_since(self, payload: dict[str, object]) -> None:
        """since must be a non-negative integer."""
        assert refused(frame(type="join", payload=payload)).code is ErrorCode.INVALID_MESSAGE

    @pytest.mark.parametrize(
        "payload", [{}, {"token": "t", "guest": "g"}, {"token": ""}, {"guest": "x" * 65}]
    )
    def test_bad_auth(self, payload: dict[str, object]) -> None:
        """auth needs exactly one of a token or a guest name."""
        assert refused(frame(type="auth", payload=payload)).code is ErrorCode.INVALID_MESSAGE

    def test_history_limit_must_be_positive(self) -> None:
        """history limit below 1 is invalid; above 100 it is capped."""
        assert refused(frame(type="history", payload={"room": "a", "limit": 0})).code is (
            ErrorCode.INVALID_MESSAGE
        )

    @pytest.mark.parametrize(
        ("kind", "payload", "field"),
        [
            # JSON decodes up to 2**64 - 1 as an int (past 2**63 no store binds it),
            # and from 2**64 on as a float.
            ("history", {"room": "a", "before": 2**64 - 1}, "before"),
            ("join", {"room": "a", "since": 2**63}, "since"),
            ("direct_history", {"before": 2**63}, "before"),
            ("direct_history", {"since": 2**64 - 1}, "since"),
            ("join", {"room": "a", "since": MAX_SEQ + 1}, "since"),
            ("join", {"room": "a", "since": 2**64}, "since"),
            ("history", {"room": "a", "before": -(2**63)}, "before"),
        ],
    )
    def test_seqs_past_the_bound_name_their_field(
        self, kind: str, payload: dict[str, object], field: str
    ) -> None:
        """A before/since outside [0, 2**62] is invalid_message naming the field, id kept."""
        exc = refused(frame(type=kind, id="s", payload=payload))
        assert (exc.code, exc.frame_id) == (ErrorCode.INVALID_MESSAGE, "s")
        assert f"payload.{field}" in exc.message and str(MAX_SEQ) in exc.message

    def test_seqs_at_the_bound_are_accepted(self) -> None:
        """2**62, the HTTP API's bound too, is still a valid before/since."""
        assert MAX_SEQ == 2**62
        history = frame(type="history", payload={"room": "a", "before": MAX_SEQ})
        assert parse_client_frame(history) == HistoryRequest(None, "a", MAX_SEQ, 50)
        join = frame(type="join", payload={"room": "a", "since": MAX_SEQ})
        assert parse_client_frame(join) == Join(None, "a", MAX_SEQ)
        direct = frame(type="direct_history", payload={"since": MAX_SEQ})
        assert parse_client_frame(direct) == DirectHistoryRequest(None, None, MAX_SEQ, 50)

    def test_a_huge_history_limit_is_still_lowered(self) -> None:
        """limit is no seq: the largest JSON integer is lowered to 100, as any large limit."""
        limit = 2**64 - 1
        parsed = parse_client_frame(frame(type="history", payload={"room": "a", "limit": limit}))
        assert parsed == HistoryRequest(None, "a", None, 100)

    @settings(max_examples=200, deadline=None)
    @given(
        st.integers() | st.sampled_from([-1, 0, 2**62, 2**62 + 1, 2**63, 2**64 - 1]),
        st.sampled_from(["join", "direct_history"]),
    )
    def test_since_parses_exactly_within_its_bounds(self, since: int, kind: str) -> None:
        """Any integer since parses iff it is in [0, 2**62]; otherwise it is refused by name."""
        payload = {"room": "a", "since": since}
        try:
            parsed = parse_client_frame(frame(type=kind, payload=payload))
        except ProtocolError as exc:
            assert not 0 <= since <= MAX_SEQ
            assert exc.code is ErrorCode.INVALID_MESSAGE and "payload.since" in exc.message
        else:
            assert 0 <= since <= MAX_SEQ
            assert isinstance(parsed, Join | DirectHistoryRequest) and parsed.since == since

    @settings(max_examples=200, deadline=None)
    @given(st.integers() | st.sampled_from([0, 1, 2**62, 2**62 + 1, 2**63, 2**64 - 1]))
    def test_before_parses_exactly_within_its_bounds(self, before: int) -> None:
        """Any integer before parses iff it is in [1, 2**62]; otherwise it is refused by name."""
        try:
            parsed = parse_client_frame(
                frame(type="history", payload={"room": "a", "before": before})
            )
        except ProtocolError as exc:
            assert not 1 <= before <= MAX_SEQ
            assert exc.code is ErrorCode.INVALID_MESSAGE and "payload.before" in exc.message
        else:
            assert isinstance(parsed, HistoryRequest) and parsed.before == before
            assert 1 <= before <= MAX_SEQ


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
#: Values a search payload's fields take, right and wrong.
search_values = st.sampled_from(
    [
        "deploy",
        '"unclosed',
        "x" * 257,
        "2026-12-01",
        "2026-12-01T10:00:00Z",
        "not a time",
        "newest",
        "relevance",
        "bob",
        "WyJrIiwgMV0",
        "c" * 513,
        "a\x00b",
    ]
)
frame_like = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from(
            [
                "chat",
                "ping",
                "join",
                "leave",
                "auth",
                "direct",
                "typing",
                "history",
                "direct_history",
                "presence",
                "edit",
                "delete",
                "react",
                "unreact",
                "search",
            ]
        )
        | json_values,
        "id": st.text(max_size=70) | json_values,
        "payload": st.dictionaries(
            st.sampled_from(
                ["message", "room", "since", "to", "before", "limit", "token", "guest"]
                + ["message_id", "emoji", "reply_to", "thread", "around"]
                + ["q", "direct", "with", "from", "after", "cursor", "order"]
            ),
            json_values | search_values,
        )
        | json_values,
    },
)


class TestFuzz:
    @settings(max_examples=400, deadline=None)
    @given(st.binary(max_size=300) | st.text(max_size=300))
    def test_arbitrary_input_raises_only_protocol_errors(self, data: bytes | str) -> None:
        """No input makes the parser raise anything but ProtocolError."""
        try:
            parse_client_frame(data)
        except ProtocolError:
            pass

    @settings(max_examples=600, deadline=None)
    @given(frame_like)
    def test_frame_shaped_input(self, obj: dict[str, object]) -> None:
        """Frame-shaped JSON either parses or is refused with an error code, never crashes."""
        try:
            parsed = parse_client_frame(json.dumps(obj))
        except ProtocolError as exc:
            assert exc.code in set(ErrorCode)
        else:
            assert parsed.id is None or (isinstance(parsed.id, str) and len(parsed.id) <= 64)
            if isinstance(parsed, SendBack):
                # Whatever was accepted can be sent back.
                assert orjson.loads(encode(SentBack(parsed.frame)))["type"] == "echo"

    @settings(max_examples=400, deadline=None)
    @given(st.binary(max_size=200))
    def test_binary_frames_raise_only_protocol_errors(self, data: bytes) -> None:
        """No binary frame makes the header parser raise anything but ProtocolError."""
        try:
            parse_binary_frame(data)
        except ProtocolError:
            pass

    @settings(max_examples=300, deadline=None)
    @given(json_values, st.binary(max_size=20))
    def test_binary_headers(self, header: object, body: bytes) -> None:
        """Any JSON header is parsed or refused with invalid_message."""
        raw = json.dumps(header).encode()
        try:
            parsed = parse_binary_frame(struct.pack(">I", len(raw)) + raw + body)
        except ProtocolError as exc:
            assert exc.code is ErrorCode.INVALID_MESSAGE
        else:
            assert parsed.body_offset == 4 + len(raw)


class TestBinaryHeader:
    def test_valid_file_frame(self) -> None:
        """A well-formed file frame yields its header and where the bytes start."""
        header = orjson.dumps({"room": "lobby", "name": "a.png", "mime": "image/png", "id": "f"})
        data = struct.pack(">I", len(header)) + header + b"\x89PNG"
        parsed = parse_binary_frame(data)
        assert (parsed.room, parsed.name, parsed.mime, parsed.id) == (
            "lobby",
            "a.png",
            "image/png",
            "f",
        )
        assert data[parsed.body_offset :] == b"\x89PNG"

    @pytest.mark.parametrize(
        "data",
        [
            b"",
            b"\x00\x00",
            b"\x00\x00\x00\x00",
            b"\x00\x00\x00\x10{}",
            b"\x00\x00\x00\x02[]",
            b"\x00\x00\x00\x02{x",
        ],
    )
    def test_malformed(self, data: bytes) -> None:
        """Short, lying or non-object headers are invalid_message."""
        with pytest.raises(ProtocolError) as info:
            parse_binary_frame(data)
        assert info.value.code is ErrorCode.INVALID_MESSAGE


class TestEncode:
    def test_envelope(self) -> None:
        """Encoded frames carry type, the answered id, payload and a server timestamp."""
        out = orjson.loads(encode(Ack("m1", "lobby", 3), id="c1", ts_ms=0))
        assert out == {
            "type": "ack",
            "id": "c1",
            "payload": {"room": "lobby", "seq": 3, "message_id": "m1"},
            "timestamp": "1970-01-01T00:00:00.000Z",
        }

    def test_chat_uses_its_stored_time(self) -> None:
        """A stored message is stamped with the time it was stored."""
        message = ChatMessage("lobby", "hi", "ann", 1, "id1", 1_764_101_565_123)
        out = orjson.loads(encode(message))
        assert out["timestamp"] == "2025-11-25T20:12:45.123Z"
        assert out["payload"] == {
            "room": "lobby",
            "message": "hi",
            "from": "ann",
            "seq": 1,
            "message_id": "id1",
        }
        assert "id" not in out

    def test_system_frame(self) -> None:
        """The welcome frame names the session, the user and the heartbeat."""
        out = orjson.loads(encode(Welcome("s1", UserInfo("guest-ab", True), 30.0)))
        assert out["payload"] == {
            "message": "Connected to WebSocket server",
            "session": "s1",
            "user": {"name": "guest-ab", "guest": True},
            "heartbeat": 30,
        }

    def test_error_with_extra_fields(self) -> None:
        """Error frames carry code, message and any extra fields."""
        reply = ErrorReply(ErrorCode.RATE_LIMITED, "slow down", {"retry_after": 50})
        out = orjson.loads(encode(reply))
        assert out["payload"] == {"code": "rate_limited", "message": "slow down", "retry_after": 50}

    def test_history_items_are_full_messages(self) -> None:
        """History lists messages oldest first, each with its type and timestamp."""
        messages = [ChatMessage("r", f"m{i}", "a", i, f"id{i}", 1000 * i) for i in (1, 2)]
        out = orjson.loads(encode(HistoryReply("r", messages, False)))
        assert [m["seq"] for m in out["payload"]["messages"]] == [1, 2]
        assert out["payload"]["messages"][0]["timestamp"] == "1970-01-01T00:00:01.000Z"
        assert out["payload"]["has_more"] is False

    def test_timestamps_change_with_the_second(self) -> None:
        """The cached second is refreshed when the second changes."""
        assert format_timestamp(1_999) == "1970-01-01T00:00:01.999Z"
        assert format_timestamp(2_000) == "1970-01-01T00:00:02.000Z"
        assert format_timestamp(61_005) == "1970-01-01T00:01:01.005Z"


PHOTO = FileInfo("cat.png", "image/png", 1234, "ab" * 32, url="/files/m1?sig=s")


class TestFileMessages:
    def test_room_file_message_is_type_file(self) -> None:
        """A ChatMessage with a file is sent as type file with its metadata, url and no text."""
        message = ChatMessage("lobby", "", "ann", 4, "m1", 0, PHOTO)
        out = orjson.loads(encode(message))
        assert out["type"] == "file"
        assert out["payload"] == {
            "room": "lobby",
            "from": "ann",
            "name": "cat.png",
            "mime": "image/png",
            "size": 1234,
            "url": "/files/m1?sig=s",
            "seq": 4,
            "message_id": "m1",
        }

    def test_file_without_url_omits_it(self) -> None:
        """A file message whose url is not set yet has no url key."""
        stored = FileInfo("a.txt", "text/plain", 3, "cd" * 32)
        payload = orjson.loads(encode(ChatMessage("r", "", "ann", 1, "m1", 0, stored)))["payload"]
        assert "url" not in payload and "message" not in payload
        direct = DirectMessage("ann", "bob", "", "m2", 0, file=stored)
        payload = orjson.loads(encode(direct))["payload"]
        assert set(payload) == {"from", "to", "name", "mime", "size", "message_id"}

    def test_direct_file_message_is_type_file(self) -> None:
        """A DirectMessage with a file is sent as type file, with its seq when it has one."""
        message = DirectMessage("ann", "bob", "", "m2", 0, 7, PHOTO)
        out = orjson.loads(encode(message))
        assert out["type"] == "file"
        assert out["payload"] == {
            "from": "ann",
            "to": "bob",
            "name": "cat.png",
            "mime": "image/png",
            "size": 1234,
            "url": "/files/m1?sig=s",
            "message_id": "m2",
            "seq": 7,
        }
        plain = orjson.loads(encode(DirectMessage("ann", "bob", "hi", "m3", 0)))
        assert plain["type"] == "direct" and plain["payload"]["message"] == "hi"

    def test_history_items_of_file_messages_are_type_file(self) -> None:
        """History lists file messages as type file among chat and direct messages."""
        room = [
            ChatMessage("r", "hi", "ann", 1, "m1", 0),
            ChatMessage("r", "", "ann", 2, "m2", 0, PHOTO),
        ]
        items = orjson.loads(encode(HistoryReply("r", room, False)))["payload"]["messages"]
        assert [i["type"] for i in items] == ["chat", "file"]
        assert items[1]["name"] == "cat.png" and "message" not in items[1]
        direct = [
            DirectMessage("ann", "bob", "hi", "d1", 0, 1),
            DirectMessage("ann", "bob", "", "d2", 0, 2, PHOTO),
        ]
        reply = DirectHistoryReply(direct, False, 2)
        items = orjson.loads(encode(reply))["payload"]["messages"]
        assert [(i["type"], i["seq"]) for i in items] == [("direct", 1), ("file", 2)]


def test_nul_characters_are_refused_in_text_and_ids() -> None:
    """U+0000 in a chat or direct text, or in a frame id, is refused as invalid_message."""
    for frame in (
        b'{"type":"chat","payload":{"message":"a\\u0000b"}}',
        b'{"type":"direct","payload":{"to":"bob","message":"\\u0000"}}',
        b'{"type":"chat","id":"x\\u0000","payload":{"message":"hi"}}',
    ):
        with pytest.raises(ProtocolError) as caught:
            parse_client_frame(frame)
        assert caught.value.code is ErrorCode.INVALID_MESSAGE


def test_each_refusal_of_the_core_has_an_error_code() -> None:
    """ErrorReply.refused maps every DomainError kind to the error frame's code."""
    from roomcast import exceptions as e
    from roomcast.protocol.messages import REFUSAL_CODES, ErrorReply

    kinds = set(e.DomainError.__subclasses__())
    kinds |= {sub for kind in list(kinds) for sub in kind.__subclasses__()}
    assert set(REFUSAL_CODES) == kinds
    assert ErrorReply.refused(e.NoSuchMessage("gone")).code is ErrorCode.NOT_FOUND
    assert ErrorReply.refused(e.NotFound("no room")).code is ErrorCode.FORBIDDEN
    reply = ErrorReply.refused(e.UnknownUser("there is no user zed"))
    assert (reply.code, reply.message) == (ErrorCode.UNKNOWN_USER, "there is no user zed")
    assert ErrorReply.refused(e.QuotaExceeded("full")).code is ErrorCode.QUOTA_EXCEEDED
    banned = ErrorReply.refused(e.Banned("out", until_ms=None, reason="spam"))
    assert (banned.code, banned.extra) == (ErrorCode.BANNED, {"until": None, "reason": "spam"})
    muted = ErrorReply.refused(e.Muted("quiet", until_ms=1_800_000_000_000))
    assert (muted.code, muted.extra) == (ErrorCode.MUTED, {"until": "2027-01-15T08:00:00.000Z"})


# -- messages that change --------------------------------------------------------------


def test_change_frames_parse() -> None:
    """edit, delete, react and unreact name a message; chat may answer one."""
    edit = parse_client_frame(
        frame(type="edit", id="e", payload={"message_id": "m1", "message": "x"})
    )
    assert edit == Edit("e", "m1", "x")
    assert parse_client_frame(frame(type="delete", payload={"message_id": "m1"})) == Delete(
        None, "m1"
    )
    react = parse_client_frame(frame(type="react", payload={"message_id": "m1", "emoji": "👍"}))
    assert react == React(None, "m1", "👍", True)
    unreact = parse_client_frame(frame(type="unreact", payload={"message_id": "m1", "emoji": "👍"}))
    assert unreact == React(None, "m1", "👍", False)
    reply = parse_client_frame(frame(type="chat", payload={"message": "hi", "reply_to": "m1"}))
    assert reply == Chat(None, "lobby", "hi", "m1")
    history = parse_client_frame(frame(type="history", payload={"room": "r", "thread": "m1"}))
    assert history == HistoryRequest(None, "r", None, 50, "m1", None)
    around = parse_client_frame(frame(type="history", payload={"room": "r", "around": 7}))
    assert around == HistoryRequest(None, "r", None, 50, None, 7)


@pytest.mark.parametrize(
    ("kind", "payload"),
    [
        ("edit", {"message": "x"}),
        ("edit", {"message_id": "m1"}),
        ("edit", {"message_id": "m1", "message": "  "}),
        ("delete", {"message_id": ""}),
        ("delete", {"message_id": "m" * 65}),
        ("delete", {"message_id": 7}),
        ("react", {"message_id": "m1"}),
        ("react", {"message_id": "m1", "emoji": "x" * 65}),
        ("chat", {"message": "hi", "reply_to": None}),
        ("history", {"room": "r", "around": 3, "before": 4}),
        ("history", {"room": "r", "around": 3, "thread": "m1"}),
        ("history", {"room": "r", "thread": ""}),
    ],
)
def test_bad_change_frames_are_invalid(kind: str, payload: dict[str, object]) -> None:
    """A change without its message, or with a bad text, emoji or page, is invalid_message."""
    assert refused(frame(type=kind, id="f", payload=payload)).code is ErrorCode.INVALID_MESSAGE


def test_an_edit_too_long_is_too_large() -> None:
    """An edit's text obeys the chat's limit."""
    data = frame(type="edit", payload={"message_id": "m1", "message": "x" * 4001})
    assert refused(data).code is ErrorCode.TOO_LARGE


def test_changes_and_mentions_encode_as_their_frames() -> None:
    """A room change names its room; a direct one its two people; a mention its room."""
    edit = Change("edit", "m1", "ann", 1_790_000_000_000, 5, "r", None, "new")
    assert orjson.loads(encode(edit)) == {
        "type": "edit",
        "payload": {
            "room": "r",
            "message_id": "m1",
            "message": "new",
            "by": "ann",
            "seq": 5,
            "edited_at": "2026-09-21T14:13:20.000Z",
        },
        "timestamp": "2026-09-21T14:13:20.000Z",
    }
    react = Change("unreact", "m1", "bob", 1_790_000_000_000, 3, None, ("bob", "ann"), "👍")
    assert orjson.loads(encode(react))["payload"] == {
        "from": "bob",
        "to": "ann",
        "message_id": "m1",
        "emoji": "👍",
        "user": "bob",
        "added": False,
        "seq": 3,
    }
    delete = orjson.loads(encode(Change("delete", "m1", "ann", 1, 9, "r")))
    assert delete["type"] == "delete" and delete["payload"]["by"] == "ann"
    mention = orjson.loads(encode(Mention("r", "m1", "ann", 4, 1)))
    assert mention["type"] == "mention"
    assert mention["payload"] == {"room": "r", "message_id": "m1", "from": "ann", "seq": 4}


def test_a_plain_chat_frame_is_unchanged_and_a_reply_adds_its_fields() -> None:
    """Only set fields are sent: a plain chat stays as short as ever."""
    plain = ChatMessage("r", "hi", "ann", 1, "m1", 1)
    assert list(orjson.loads(encode(plain))["payload"]) == [
        "room",
        "message",
        "from",
        "seq",
        "message_id",
    ]
    reply = ChatMessage(
        "r",
        "yes",
        "bob",
        2,
        "m2",
        1,
        reply_to="m1",
        thread="m1",
        mentions=("ann",),
        quote=Quote("ann", "hi"),
    )
    payload = orjson.loads(encode(reply))["payload"]
    assert payload["reply_to"] == "m1" and payload["thread"] == "m1"
    assert payload["quote"] == {"from": "ann", "message": "hi"} and payload["mentions"] == ["ann"]


def test_history_items_show_the_current_state() -> None:
    """A tombstone has no text; reactions, edits and reply counts are listed."""
    gone = ChatMessage("r", "", "ann", 1, "m1", 1, deleted=True)
    kept = ChatMessage(
        "r", "x", "ann", 2, "m2", 1, edited_ms=2, reactions=(("👍", ("bob", "cy")),), reply_count=3
    )
    items = orjson.loads(encode(HistoryReply("r", [gone, kept], False)))["payload"]["messages"]
    assert "message" not in items[0] and items[0]["deleted"] is True
    assert items[1]["reactions"] == {"👍": ["bob", "cy"]} and items[1]["reply_count"] == 3
    assert items[1]["edited_at"] == "1970-01-01T00:00:00.002Z"


# -- read markers and unread counts ----------------------------------------------------


def test_read_frames_parse_for_a_room_the_direct_stream_or_one_conversation() -> None:
    """read names a room, or direct true (with a peer or not), and a seq of 0 or more."""
    room = parse_client_frame(frame(type="read", id="r", payload={"room": "dev", "seq": 41}))
    assert room == Read("r", 41, room="dev")
    direct = parse_client_frame(frame(type="read", payload={"direct": True, "seq": 0}))
    assert direct == Read(None, 0, room=None, peer=None)
    one = parse_client_frame(
        frame(type="read", payload={"direct": True, "with": "bob", "seq": MAX_SEQ})
    )
    assert one == Read(None, MAX_SEQ, peer="bob")


@pytest.mark.parametrize(
    "payload",
    [
        {"room": "lobby"},
        {"room": "lobby", "seq": None},
        {"room": "lobby", "seq": -1},
        {"room": "lobby", "seq": "3"},
        {"room": "lobby", "seq": 1.5},
        {"room": "lobby", "seq": True},
        {"room": "lobby", "seq": MAX_SEQ + 1},
        {"seq": 3},
        {"room": "Lobby", "seq": 3},
        {"room": "a b", "seq": 3},
        {"room": "lobby", "direct": True, "seq": 3},
        {"direct": False, "seq": 3},
        {"direct": 1, "seq": 3},
        {"direct": "true", "seq": 3},
        {"with": "bob", "seq": 3},
        {"room": "lobby", "with": "bob", "seq": 3},
        {"direct": True, "with": "", "seq": 3},
        {"direct": True, "with": 7, "seq": 3},
        {"direct": True, "with": "b" * 65, "seq": 3},
        {"direct": True},
    ],
)
def test_bad_read_frames_are_invalid(payload: dict[str, object]) -> None:
    """A read needs a seq of 0 or more and one room or the direct stream, else it is refused."""
    exc = refused(frame(type="read", id="r", payload=payload))
    assert (exc.code, exc.frame_id) == (ErrorCode.INVALID_MESSAGE, "r")


def test_unread_parses_with_or_without_a_payload() -> None:
    """unread asks for the counts; it carries only its id."""
    assert parse_client_frame(frame(type="unread", id="u", payload={})) == UnreadRequest("u")
    assert parse_client_frame(frame(type="unread")) == UnreadRequest(None)
    assert refused(frame(type="unread", id="u", payload=[])).code is ErrorCode.INVALID_MESSAGE


def test_read_events_name_a_room_the_direct_stream_or_one_conversation() -> None:
    """A read event carries the marker and what is left unread there, and the answered id."""
    out = orjson.loads(encode(ReadEvent(41, 2, 1, room="lobby"), id="r1", ts_ms=0))
    assert out == {
        "type": "read",
        "id": "r1",
        "payload": {"room": "lobby", "seq": 41, "unread": 2, "mentions": 1},
        "timestamp": "1970-01-01T00:00:00.000Z",
    }
    direct = orjson.loads(encode(ReadEvent(17, 0, 0)))
    assert direct["payload"] == {"direct": True, "seq": 17, "unread": 0, "mentions": 0}
    assert "id" not in direct
    one = orjson.loads(encode(ReadEvent(19, 3, 2, peer="bob")))["payload"]
    assert one == {"direct": True, "with": "bob", "seq": 19, "unread": 3, "mentions": 2}


def test_receipts_name_a_room_or_the_direct_stream() -> None:
    """A receipt says who read up to which seq, in a room or of the receiver's direct stream."""
    room = orjson.loads(encode(Receipt("bob", 41, room="lobby")))
    assert room["type"] == "receipt"
    assert room["payload"] == {"room": "lobby", "user": "bob", "seq": 41}
    direct = orjson.loads(encode(Receipt("bob", 7)))["payload"]
    assert direct == {"direct": True, "user": "bob", "seq": 7}


def test_the_unread_reply_lists_rooms_the_direct_stream_and_its_conversations() -> None:
    """Each entry has its counts, marker and newest message; last_at is null when none."""
    at = 1_790_000_000_123
    reply = UnreadReply(
        rooms=[Unread(3, 1, 40, 43, at, room="lobby"), Unread(0, 0, 0, 0, None, room="dev")],
        direct=Unread(2, 0, 17, 19, at),
        conversations=[Unread(2, 0, 17, 19, at, peer="bob")],
    )
    out = orjson.loads(encode(reply, id="u"))
    assert out["type"] == "unread" and out["id"] == "u"
    stamp = "2026-09-21T14:13:20.123Z"
    counts = {"unread": 2, "mentions": 0, "last_read": 17, "last_seq": 19, "last_at": stamp}
    assert out["payload"] == {
        "rooms": [
            {
                "room": "lobby",
                "unread": 3,
                "mentions": 1,
                "last_read": 40,
                "last_seq": 43,
                "last_at": stamp,
            },
            {
                "room": "dev",
                "unread": 0,
                "mentions": 0,
                "last_read": 0,
                "last_seq": 0,
                "last_at": None,
            },
        ],
        "direct": {**counts, "conversations": [{"with": "bob", **counts}]},
    }
    empty = UnreadReply([], Unread(0, 0, 0, 0, None), [])
    assert orjson.loads(encode(empty))["payload"] == {
        "rooms": [],
        "direct": {
            "unread": 0,
            "mentions": 0,
            "last_read": 0,
            "last_seq": 0,
            "last_at": None,
            "conversations": [],
        },
    }


def test_joined_adds_the_unread_counts_only_when_it_has_them() -> None:
    """A registered user's joined carries unread, mentions and last_read; a guest's does not."""
    counts = Unread(3, 1, 40, 43, 1, room="lobby")
    out = orjson.loads(encode(Joined("lobby", 43, ["ann"], 1, unread=counts)))["payload"]
    assert out == {
        "room": "lobby",
        "seq": 43,
        "members": ["ann"],
        "member_count": 1,
        "unread": 3,
        "mentions": 1,
        "last_read": 40,
    }
    guest = orjson.loads(encode(Joined("lobby", 43, ["ann"], 1)))["payload"]
    assert not {"unread", "mentions", "last_read"} & set(guest)


def test_history_replies_carry_receipts_or_read_counts_when_given() -> None:
    """receipts by reader, read_counts as [seq, n] pairs; neither key when not given."""
    messages = [ChatMessage("r", "m", "ann", 1, "id1", 1)]
    named = orjson.loads(encode(HistoryReply("r", messages, False, receipts={"bob": 1})))
    assert named["payload"]["receipts"] == {"bob": 1} and "read_counts" not in named["payload"]
    counted = HistoryReply("r", messages, False, read_counts=[(1, 2), (2, 0)])
    payload = orjson.loads(encode(counted))["payload"]
    assert payload["read_counts"] == [[1, 2], [2, 0]] and "receipts" not in payload
    plain = orjson.loads(encode(HistoryReply("r", messages, False)))["payload"]
    assert not {"receipts", "read_counts"} & set(plain)
    empty = orjson.loads(encode(HistoryReply("r", [], False, receipts={})))["payload"]
    assert empty["receipts"] == {}


def test_direct_history_replies_carry_receipts_when_given() -> None:
    """receipts say, for each peer, up to which seq of the reader's stream they read."""
    page = [DirectMessage("bob", "ann", "hi", "d1", 1, seq=3)]
    out = orjson.loads(encode(DirectHistoryReply(page, False, 3, receipts={"bob": 3})))
    assert out["payload"]["receipts"] == {"bob": 3}
    assert out["payload"]["last_seq"] == 3 and out["payload"]["messages"][0]["seq"] == 3
    plain = orjson.loads(encode(DirectHistoryReply(page, False, 3)))["payload"]
    assert "receipts" not in plain


# -- search ----------------------------------------------------------------------------

#: 2026-12-01T10:00:00Z in epoch milliseconds.
DEC_1_10H = 1_796_119_200_000


def test_a_search_frame_parses_every_field() -> None:
    """Each field of the payload lands in SearchRequest; order relevance sets relevance."""
    payload = {
        "q": "deploy failed",
        "direct": True,
        "with": "bob",
        "from": "ann",
        "after": "2026-12-01T10:00:00.000Z",
        "before": "2026-12-02",
        "limit": 7,
        "cursor": "abc",
        "order": "relevance",
    }
    parsed = parse_client_frame(frame(type="search", id="s1", payload=payload))
    assert parsed == SearchRequest(
        "s1",
        "deploy failed",
        None,
        True,
        "bob",
        "ann",
        DEC_1_10H,
        DEC_1_10H + 14 * 3600 * 1000,
        7,
        "abc",
        True,
    )
    room = parse_client_frame(frame(type="search", payload={"q": "x", "room": "dev"}))
    assert room == SearchRequest(None, "x", room="dev")


def test_a_search_has_defaults_and_a_large_limit_is_lowered() -> None:
    """Newest first, 20 results by default; any larger limit becomes 50."""
    assert parse_search({"q": "x"}) == SearchRequest(None, "x", limit=20, relevance=False)
    assert parse_search({"q": "x", "order": "newest"}).relevance is False
    assert parse_search({"q": "x", "limit": 500}).limit == 50
    assert parse_search({"q": "x", "limit": 2**64 - 1}).limit == 50
    assert parse_search({"q": "x", "limit": 1}).limit == 1
    assert parse_search({"q": "x", "direct": False, "room": "dev"}).room == "dev"
    nulls = {"room": None, "direct": None, "with": None, "from": None, "cursor": None}
    assert parse_search({"q": "x", **nulls}) == SearchRequest(None, "x")


@pytest.mark.parametrize(
    ("when", "ms"),
    [
        ("2026-12-01T10:00:00.000Z", DEC_1_10H),
        ("2026-12-01T10:00:00Z", DEC_1_10H),
        ("2026-12-01T10:00:00", DEC_1_10H),
        ("2026-12-01T12:00:00+02:00", DEC_1_10H),
        ("2026-12-01T10:00:00.250Z", DEC_1_10H + 250),
        ("2026-12-01", DEC_1_10H - 10 * 3600 * 1000),
    ],
)
def test_search_times_are_iso_8601_utc_unless_they_say_otherwise(when: str, ms: int) -> None:
    """after and before take a time (UTC without an offset) or a date (its midnight UTC)."""
    parsed = parse_search({"q": "x", "after": when, "before": when})
    assert parsed.after_ms == parsed.before_ms == ms


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({}, "payload.q"),
        ({"q": ""}, "payload.q"),
        ({"q": "   "}, "payload.q"),
        ({"q": 5}, "payload.q"),
        ({"q": ["deploy"]}, "payload.q"),
        ({"q": None}, "payload.q"),
        ({"q": "x" * 257}, "256 characters"),
        ({"q": "x", "room": "Not A Room"}, "room"),
        ({"q": "x", "room": 5}, "room"),
        ({"q": "x", "direct": "true"}, "payload.direct"),
        ({"q": "x", "direct": 1}, "payload.direct"),
        ({"q": "x", "direct": 0}, "payload.direct"),
        ({"q": "x", "direct": 1.0}, "payload.direct"),
        ({"q": "x", "with": "bob"}, "payload.with needs payload.direct"),
        ({"q": "x", "direct": False, "with": "bob"}, "payload.with needs payload.direct"),
        ({"q": "x", "direct": True, "with": ""}, "with"),
        ({"q": "x", "direct": True, "with": "b" * 65}, "with"),
        ({"q": "x", "direct": True, "room": "dev"}, "not both"),
        ({"q": "x", "from": 7}, "from"),
        ({"q": "x", "from": ""}, "from"),
        ({"q": "x", "after": "yesterday"}, "payload.after"),
        ({"q": "x", "after": "2026-13-01"}, "payload.after"),
        ({"q": "x", "before": 1796119200000}, "payload.before"),
        ({"q": "x", "before": "2026-12-01T10:00:00Z" + " " * 30}, "payload.before"),
        ({"q": "x", "limit": 0}, "payload.limit"),
        ({"q": "x", "limit": -1}, "payload.limit"),
        ({"q": "x", "limit": "5"}, "payload.limit"),
        ({"q": "x", "limit": 1.5}, "payload.limit"),
        ({"q": "x", "cursor": ""}, "payload.cursor"),
        ({"q": "x", "cursor": 5}, "payload.cursor"),
        ({"q": "x", "cursor": "c" * 513}, "payload.cursor"),
        ({"q": "x", "order": "oldest"}, "payload.order"),
        ({"q": "x", "order": None}, "payload.order"),
    ],
)
def test_a_bad_search_payload_names_its_field(payload: dict[str, object], field: str) -> None:
    """Each refusal is invalid_message, keeps the frame id and says which field and why."""
    exc = refused(frame(type="search", id="s", payload=payload))
    assert (exc.code, exc.frame_id) == (ErrorCode.INVALID_MESSAGE, "s")
    assert field in exc.message


def test_a_search_query_keeps_its_syntax_for_the_search_to_check() -> None:
    """The frame checks types and bounds only: quotes, operators and 256 characters pass."""
    for q in ('"unclosed', "NEAR(a b) OR c", "-only", "x" * 256, "d*"):
        assert parse_search({"q": q}).q == q


def test_a_search_reply_lists_room_and_direct_results_and_its_cursor() -> None:
    """Rooms give room (and thread), direct results with; code point highlights as pairs."""
    room = ChatMessage("dev", "the deploy", "ann", 42, "m1", 1, thread="m0", edited_ms=2)
    direct = DirectMessage("bob", "ann", "🎉 deploy", "d1", 3, seq=7)
    hits = [
        SearchHit(room, snippet="the deploy", highlights=((4, 10),)),
        SearchHit(direct, "bob", "🎉 deploy", ((2, 8),)),
    ]
    out = orjson.loads(encode(SearchReply(hits, "next"), id="s1", ts_ms=0))
    assert (out["type"], out["id"]) == ("search", "s1")
    assert out["payload"] == {
        "results": [
            {
                "room": "dev",
                "thread": "m0",
                "seq": 42,
                "message_id": "m1",
                "from": "ann",
                "at": "1970-01-01T00:00:00.001Z",
                "message": "the deploy",
                "edited_at": "1970-01-01T00:00:00.002Z",
                "snippet": "the deploy",
                "highlights": [[4, 10]],
            },
            {
                "direct": True,
                "with": "bob",
                "seq": 7,
                "message_id": "d1",
                "from": "bob",
                "at": "1970-01-01T00:00:00.003Z",
                "message": "🎉 deploy",
                "snippet": "🎉 deploy",
                "highlights": [[2, 8]],
            },
        ],
        "cursor": "next",
    }
    last = orjson.loads(encode(SearchReply([])))["payload"]
    assert last == {"results": []}


def test_direct_history_around_a_seq_parses_alone() -> None:
    """around is a seq of 1 or more, with a limit, and never with before or since."""
    parsed = parse_client_frame(
        frame(type="direct_history", id="h", payload={"around": 7, "limit": 10})
    )
    assert parsed == DirectHistoryRequest("h", None, None, 10, 7)
    for payload in (
        {"around": 7, "before": 9},
        {"around": 7, "since": 1},
        {"around": 0},
        {"around": -1},
        {"around": "7"},
        {"around": MAX_SEQ + 1},
    ):
        exc = refused(frame(type="direct_history", id="h", payload=payload))
        assert exc.code is ErrorCode.INVALID_MESSAGE and "payload." in exc.message


def test_direct_history_around_says_whether_newer_messages_follow() -> None:
    """has_newer is in the reply only when the page was read around a seq."""
    page = [DirectMessage("bob", "ann", "hi", "d1", 1, seq=3)]
    around = orjson.loads(encode(DirectHistoryReply(page, True, 9, has_newer=True)))["payload"]
    assert (around["has_more"], around["has_newer"], around["last_seq"]) == (True, True, 9)
    plain = orjson.loads(encode(DirectHistoryReply(page, False, 3)))["payload"]
    assert "has_newer" not in plain


def test_too_frequent_is_rate_limited_with_retry_after_in_ms() -> None:
    """A refusal for asking too often is rate_limited, retry_after in whole milliseconds."""
    from roomcast.exceptions import TooFrequent
    from roomcast.protocol.messages import ErrorReply

    reply = ErrorReply.refused(TooFrequent("too many searches", retry_after=0.2))
    assert reply.code is ErrorCode.RATE_LIMITED
    assert reply.payload() == {
        "code": "rate_limited",
        "message": "too many searches",
        "retry_after": 200,
    }
    tiny = ErrorReply.refused(TooFrequent("x", retry_after=0.0001)).payload()
    assert tiny["retry_after"] == 1


@settings(max_examples=400, deadline=None)
@given(
    st.fixed_dictionaries(
        {},
        optional={
            key: json_values | search_values
            for key in ("q", "room", "direct", "with", "from", "after", "before")
            + ("limit", "cursor", "order")
        },
    )
)
def test_any_search_payload_parses_within_bounds_or_is_invalid(payload: dict[str, object]) -> None:
    """A search payload either parses to bounded fields or is refused as invalid_message."""
    try:
        parsed = parse_client_frame(json.dumps({"type": "search", "payload": payload}))
    except ProtocolError as exc:
        # Infinity is no JSON: such a frame is refused before its payload is read.
        assert exc.code in (ErrorCode.INVALID_MESSAGE, ErrorCode.INVALID_JSON)
        return
    assert isinstance(parsed, SearchRequest)
    assert 1 <= len(parsed.q) <= 256 and 1 <= parsed.limit <= 50
    assert parsed.cursor is None or 1 <= len(parsed.cursor) <= 512
    assert not (parsed.direct and parsed.room is not None)
    assert parsed.peer is None or parsed.direct
