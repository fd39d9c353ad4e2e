"""The client's pure parts: ordered streams, backoff, parsing server frames (no sockets)."""

from __future__ import annotations

import random

import orjson
from hypothesis import given, settings, strategies as st

from roomcast.client import Backoff, Reply, RoomMessage, ServerError, parse_server_frame
from roomcast.client.core import SeqStream
from roomcast.client.events import DirectMessage, Presence


def message(seq: int) -> RoomMessage:
    return RoomMessage("r", "ann", f"m{seq}", seq, f"id{seq}", None)


@settings(max_examples=300)
@given(st.integers(1, 40), st.data())
def test_any_order_with_repeats_is_delivered_once_in_order(n: int, data: st.DataObject) -> None:
    """Seqs 1..n offered in any order, some several times: each delivered once, in order."""
    offers = data.draw(st.permutations(list(range(1, n + 1)) * 2))
    stream = SeqStream(expected=1)
    delivered = [event for seq in offers for event in stream.offer(seq, message(seq))]
    assert [e.seq for e in delivered if isinstance(e, RoomMessage)] == list(range(1, n + 1))
    assert stream.expected == n + 1 and not stream.early


def test_a_stream_that_starts_late_drops_what_came_before() -> None:
    """Before its start is known a stream keeps events; start_at drops older, delivers the rest."""
    stream = SeqStream()
    assert stream.offer(5, message(5)) == [] and stream.offer(3, message(3)) == []
    assert stream.start_at(4) == []
    assert stream.offer(4, message(4)) == [message(4), message(5)]
    assert stream.offer(3, message(3)) == []


def test_backoff_is_full_jitter_under_a_doubling_cap_and_resets_when_stable() -> None:
    """Delays lie in [0, min(cap, first * 2**n)]; a stable connection starts over."""
    backoff = Backoff(first=0.5, cap=30.0, rng=random.Random(1))
    for attempt in range(12):
        delay = backoff.next_delay()
        assert 0 <= delay <= min(30.0, 0.5 * 2**attempt)
    backoff.connected_for(10.0)
    assert backoff.attempt == 12
    backoff.connected_for(60.0)
    assert backoff.attempt == 0
    for _ in range(2000):
        backoff.next_delay()  # never overflows
    delays = [Backoff(rng=random.Random(i)).next_delay() for i in range(1000)]
    assert max(delays) <= 0.5 and sum(d < 0.25 for d in delays) > 400  # spread over the window


def test_server_frames_become_events() -> None:
    """chat, file, direct, presence, errors without id, and replies parse to their events."""
    chat = parse_server_frame(
        b'{"type":"chat","payload":{"room":"r","message":"hi","from":"a","seq":3,'
        b'"message_id":"m"},"timestamp":"2026-11-25T20:12:45.123Z"}'
    )
    assert isinstance(chat, RoomMessage) and (chat.text, chat.seq, chat.file) == ("hi", 3, None)
    assert chat.timestamp is not None and chat.timestamp.microsecond == 123000
    file = parse_server_frame(
        b'{"type":"file","payload":{"room":"r","from":"a","name":"x.png","mime":"image/png",'
        b'"size":5,"url":"/files/m","seq":4,"message_id":"m"}}'
    )
    assert isinstance(file, RoomMessage) and file.file is not None and file.file.size == 5
    direct = parse_server_frame(
        b'{"type":"direct","payload":{"from":"a","to":"b","message":"x","message_id":"d","seq":2}}'
    )
    assert isinstance(direct, DirectMessage) and (direct.to, direct.seq) == ("b", 2)
    presence = parse_server_frame(
        b'{"type":"presence","payload":{"room":"r","user":"a","event":"join"}}'
    )
    assert presence == Presence("r", "a", "join")
    error = parse_server_frame(b'{"type":"error","payload":{"code":"token_expired","message":"m"}}')
    assert error == ServerError("token_expired", "m")
    reply = parse_server_frame(b'{"type":"ack","id":"x","payload":{"seq":1}}')
    assert reply == Reply("ack", {"seq": 1}, "x")


@settings(max_examples=500)
@given(st.binary(max_size=300) | st.text(max_size=300))
def test_any_frame_parses_or_raises_value_error(data: bytes | str) -> None:
    """Whatever the server sends, parsing gives an event or raises ValueError, nothing else."""
    try:
        parse_server_frame(data)
    except ValueError:
        pass


@given(
    st.dictionaries(
        st.sampled_from(["room", "message", "from", "seq", "message_id", "user", "event"]),
        st.none()
        | st.integers(-(2**63), 2**63 - 1)
        | st.text(max_size=5)
        | st.lists(st.integers(0, 9), max_size=2),
    ),
    st.sampled_from(["chat", "file", "direct", "presence", "typing"]),
)
def test_malformed_message_frames_raise_value_error(payload: dict[str, object], kind: str) -> None:
    """A message frame with missing or wrong fields is a ValueError, never another exception."""
    try:
        parse_server_frame(orjson.dumps({"type": kind, "payload": payload}))
    except ValueError:
        pass
