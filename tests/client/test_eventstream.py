"""The HTTP fallback's pure parts: reading Server-Sent Events, batching frames (no sockets)."""

from __future__ import annotations

from collections import deque

import orjson
from hypothesis import given, settings, strategies as st

from roomcast.client.eventstream import (
    MAX_BATCH_BYTES,
    MAX_LINES,
    SseEvent,
    SseParser,
    _close_event,
    events_url,
    take_batch,
)


def parse(text: str) -> list[SseEvent]:
    parser = SseParser()
    found = [parser.feed(line) for line in text.split("\n")]
    return [event for event in found if event is not None]


def test_the_stream_of_the_spec_reads_as_open_frames_and_close() -> None:
    """open, two frames, a ping comment and close: the events in order, the comment skipped."""
    stream = (
        "event: open\n"
        'data: {"stream":"abc","heartbeat":30}\n'
        "\n"
        'data: {"type":"welcome","payload":{}}\n'
        "\n"
        ": ping\n"
        "\n"
        'data: {"type":"chat","payload":{"text":"a: b"}}\n'
        "\n"
        "event: close\n"
        'data: {"code":1008,"reason":"signed out"}\n'
        "\n"
    )
    assert parse(stream) == [
        SseEvent("open", '{"stream":"abc","heartbeat":30}'),
        SseEvent("message", '{"type":"welcome","payload":{}}'),
        SseEvent("message", '{"type":"chat","payload":{"text":"a: b"}}'),
        SseEvent("close", '{"code":1008,"reason":"signed out"}'),
    ]


def test_data_lines_add_up_and_unknown_fields_are_skipped() -> None:
    """Two data lines are one event joined by a newline; id, retry and a bare name are ignored."""
    stream = "id: 7\nretry: 100\ndata:one\ndata: two\nnonsense\n\n\n"
    assert parse(stream) == [SseEvent("message", "one\ntwo")]


def test_an_event_name_does_not_leak_into_the_next_event() -> None:
    """After an ``event: close`` block, a block with only data is a frame again."""
    assert parse("event: x\ndata: 1\n\ndata: 2\n\n") == [
        SseEvent("x", "1"),
        SseEvent("message", "2"),
    ]


def test_an_event_without_its_blank_line_is_not_delivered() -> None:
    """A stream cut before the blank line that ends an event delivers nothing of it."""
    assert parse('data: {"type":"chat"}') == []


def test_the_close_event_gives_its_code_and_reason_and_junk_is_1006() -> None:
    """A readable close event is its code and reason; anything else counts as a lost connection."""
    close = _close_event('{"code":1008,"reason":"token expired"}')
    assert (close.code, close.reason) == (1008, "token expired")
    for junk in ("", "[]", '{"code":"1008"}', "not json"):
        assert _close_event(junk).code == 1006


def test_the_events_url_follows_the_websocket_url() -> None:
    """ws -> http, wss -> https, a /ws path (with a prefix) becomes /events."""
    assert events_url("ws://127.0.0.1:8765/ws") == "http://127.0.0.1:8765/events"
    assert events_url("wss://chat.example.org/chat/ws") == "https://chat.example.org/chat/events"
    assert events_url("ws://h:1") == "http://h:1/events"


def test_text_frames_go_together_and_a_file_goes_alone() -> None:
    """Queued text frames form one NDJSON body; a file in between starts a POST of its own."""
    queue: deque[str | bytes] = deque(['{"a":1}', '{"b":2}', b"\x00file", '{"c":3}'])
    assert take_batch(queue) == (b'{"a":1}\n{"b":2}\n', "application/x-ndjson")
    assert take_batch(queue) == (b"\x00file", "application/octet-stream")
    assert take_batch(queue) == (b'{"c":3}\n', "application/x-ndjson")
    assert not queue


def test_a_frame_with_line_breaks_stays_one_line() -> None:
    """A JSON text with line breaks between its tokens is sent as one line, still the same JSON."""
    frame = '{\n  "type": "chat",\r\n  "payload": {"text": "x\\ny"}\n}'
    body, _ = take_batch(deque([frame]))
    assert body.count(b"\n") == 1
    assert orjson.loads(body) == orjson.loads(frame)


def test_a_big_frame_goes_alone_and_the_next_waits() -> None:
    """Past the byte budget the batch ends; a single frame over it still goes (alone)."""
    big = '"' + "x" * MAX_BATCH_BYTES + '"'
    queue: deque[str | bytes] = deque(['{"a":1}', big, '{"b":2}'])
    assert take_batch(queue)[0] == b'{"a":1}\n'
    assert take_batch(queue)[0] == big.encode() + b"\n"
    assert take_batch(queue)[0] == b'{"b":2}\n'


@settings(max_examples=200)
@given(st.lists(st.one_of(st.integers(0, 10**6).map(str), st.binary(max_size=8)), max_size=300))
def test_batches_keep_every_frame_once_in_order(frames: list[str | bytes]) -> None:
    """Any mix of frames: the batches hold each once, in order, at most 64 lines each."""
    queue: deque[str | bytes] = deque(frames)
    out: list[str | bytes] = []
    while queue:
        body, kind = take_batch(queue)
        if kind == "application/octet-stream":
            out.append(body)
            continue
        lines = body.decode().split("\n")
        assert lines[-1] == "" and 1 <= len(lines) - 1 <= MAX_LINES
        out.extend(lines[:-1])
    assert out == frames
