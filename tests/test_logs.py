"""Log formats, connection and request ids, and redaction (no server process)."""

from __future__ import annotations

import asyncio
import io
import logging
import re
import sqlite3
import sys
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from roomcast import logs
from roomcast.broker.memory import MemoryBroker
from roomcast.config import Limits
from roomcast.logs import CONN_ID, REQUEST_ID, ContextFilter, JsonFormatter, TextFormatter
from roomcast.node import Node
from roomcast.store.sqlite import SQLiteStore
from tests.fakes import FakePeer, receive_text

TOKEN = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJhbm4ifQ.c2lnbmF0dXJlLXBhcnQtb25seQ"
TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def record(
    message: str = "connection %s opened",
    *args: object,
    level: int = logging.INFO,
    exc_info: logging._SysExcInfoType | None = None,
    **extra: object,
) -> logging.LogRecord:
    """A record as ``roomcast.server`` would make it, with ``extra`` attributes."""
    made = logging.getLogger("roomcast.server").makeRecord(
        "roomcast.server", level, __file__, 1, message, args or ("c1",), exc_info, extra=extra
    )
    return made


class Capture(logging.Handler):
    """Keeps the records it is given, after the CLI's filter."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.addFilter(ContextFilter())
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def about(self, text: str) -> list[logging.LogRecord]:
        return [r for r in self.records if text in r.getMessage()]


@pytest.fixture
def captured() -> Iterator[Capture]:
    """Every ``roomcast.*`` record logged during the test, ids copied on."""
    handler = Capture()
    logger = logging.getLogger("roomcast")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


# -- formats ------------------------------------------------------------------------


def test_json_line_has_the_fields() -> None:
    """A JSON line is one object: ts in UTC with ms and Z, level, logger, message, conn."""
    line = JsonFormatter().format(record(conn="c1"))
    assert "\n" not in line
    entry = orjson.loads(line)
    assert set(entry) == {"ts", "level", "logger", "message", "conn"}
    assert TS.match(entry["ts"]), entry["ts"]
    assert entry["level"] == "info"
    assert entry["logger"] == "roomcast.server"
    assert entry["message"] == "connection c1 opened"
    assert entry["conn"] == "c1"


def test_json_timestamp_is_utc_with_milliseconds() -> None:
    """ts is the record's time in UTC, to the millisecond."""
    assert logs.utc_timestamp(1_700_000_000.1234) == "2023-11-14T22:13:20.123Z"
    assert logs.utc_timestamp(0.0) == "1970-01-01T00:00:00.000Z"


def test_json_line_without_ids_has_no_id_keys_and_carries_req() -> None:
    """conn and req appear only when known; an HTTP request's line has req."""
    assert set(orjson.loads(JsonFormatter().format(record()))) == {
        "ts",
        "level",
        "logger",
        "message",
    }
    entry = orjson.loads(JsonFormatter().format(record(req="r1", level=logging.ERROR)))
    assert (entry["req"], entry["level"]) == ("r1", "error")
    assert "conn" not in entry


def test_json_line_has_the_traceback_in_exc() -> None:
    """With exc_info the line carries the formatted traceback in exc, still one line."""
    try:
        raise ValueError("boom")
    except ValueError:
        exc_info = sys.exc_info()
    line = JsonFormatter().format(record("internal error on %s", "c1", exc_info=exc_info))
    assert "\n" not in line
    entry = orjson.loads(line)
    assert entry["exc"].startswith("Traceback (most recent call last):")
    assert entry["exc"].rstrip().endswith("ValueError: boom")


def test_json_line_survives_a_lone_surrogate() -> None:
    """A message with a lone surrogate (a file name) is still one valid JSON line."""
    entry = orjson.loads(JsonFormatter().format(record("cannot write to %s", "db-\udcff")))
    assert entry["message"] == "cannot write to db-\\udcff"


def test_text_line_is_the_old_format_plus_ids() -> None:
    """Text lines keep 'TIME LEVEL LOGGER: MESSAGE' and add [conn=ID] or [req=ID] when known."""
    formatter = TextFormatter()
    plain = formatter.format(record())
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO roomcast\.server: connection c1 opened", plain
    ), plain
    assert formatter.format(record(conn="c1")).endswith(
        " INFO roomcast.server [conn=c1]: connection c1 opened"
    )
    assert formatter.format(record(req="r1")).endswith(
        " roomcast.server [req=r1]: connection c1 opened"
    )


# -- ids from the context -----------------------------------------------------------


def test_filter_copies_the_ids_of_the_context() -> None:
    """The filter puts the context's CONN_ID and REQUEST_ID on the record; none outside."""
    outside = record()
    assert ContextFilter().filter(outside)
    assert (outside.conn, outside.req) == (None, None)  # type: ignore[attr-defined]
    conn, req = CONN_ID.set("c9"), REQUEST_ID.set("r9")
    try:
        inside = record()
        assert ContextFilter().filter(inside)
        assert (inside.conn, inside.req) == ("c9", "r9")  # type: ignore[attr-defined]
    finally:
        CONN_ID.reset(conn)
        REQUEST_ID.reset(req)


def test_filter_keeps_an_id_the_call_gave() -> None:
    """extra={'conn': ...} (a line about another connection) wins over the context."""
    token = CONN_ID.set("current")
    try:
        given = record(conn="other")
        ContextFilter().filter(given)
    finally:
        CONN_ID.reset(token)
    assert given.conn == "other"  # type: ignore[attr-defined]


def test_configure_installs_one_handler_with_the_filter() -> None:
    """configure() logs JSON with the context's id to the stream it is given."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    root.handlers.clear()
    stream = io.StringIO()
    try:
        handler = logs.configure("warning", "json", stream)
        token = CONN_ID.set("c5")
        try:
            logging.getLogger("roomcast.node").warning("seen")
            logging.getLogger("roomcast.node").info("not seen")
        finally:
            CONN_ID.reset(token)
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    assert isinstance(handler.formatter, JsonFormatter)
    [line] = stream.getvalue().splitlines()
    entry = orjson.loads(line)
    assert (entry["message"], entry["conn"], entry["level"]) == ("seen", "c5", "warning")


# -- which lines carry an id --------------------------------------------------------


async def test_store_failure_lines_name_the_sender_not_the_batch(
    tmp_path: Path, captured: Capture
) -> None:
    """A failed write: the node's line carries the sender's conn, the store's batch line none."""
    path = tmp_path / "roomcast.db"
    node = Node(store=SQLiteStore(path, busy_timeout=0.2), broker=MemoryBroker(), limits=Limits())
    await node.start()
    try:
        peer = FakePeer(node.new_session())
        await node.connect(peer)
        locker = sqlite3.connect(path, isolation_level=None)
        locker.execute("BEGIN EXCLUSIVE")

        async def handle_frame() -> None:
            CONN_ID.set(peer.session.id)  # as the server's connection handler does
            await receive_text(node, peer, b'{"type":"chat","payload":{"message":"hi"},"id":"c"}')

        try:
            await asyncio.create_task(handle_frame())
            await node.flush()
            await asyncio.sleep(0.05)  # the callbacks resolving the batch's futures
        finally:
            locker.execute("ROLLBACK")
            locker.close()
    finally:
        await node.close()
    [node_line] = captured.about(f"message from {peer.session.id} not stored")
    assert node_line.conn == peer.session.id  # type: ignore[attr-defined]
    [store_line] = captured.about("cannot write to")
    assert store_line.conn is None  # type: ignore[attr-defined]
    assert "hi" not in node_line.getMessage() + store_line.getMessage()


# -- secrets ------------------------------------------------------------------------


def test_bearer_tokens_and_jwts_are_redacted() -> None:
    """Bearer tokens and JWT-shaped strings become [redacted] in messages and tracebacks."""
    assert logs.redact(f"b'Authorization: Bearer {TOKEN}\\x01'") == (
        "b'Authorization: Bearer [redacted]\\x01'"
    )
    assert logs.redact(f"token={TOKEN} rest") == "token=[redacted] rest"
    assert logs.redact(f"b'{TOKEN[:60]}...'") == "b'[redacted]'"
    assert logs.redact("send Authorization: Bearer TOKEN") == (
        "send Authorization: Bearer [redacted]"
    )
    assert logs.redact("connection 4d51 opened from 127.0.0.1") == (
        "connection 4d51 opened from 127.0.0.1"
    )
    try:
        raise ValueError(f"Invalid HTTP header: b'Bearer {TOKEN}'")
    except ValueError:
        exc_info = sys.exc_info()
    for formatter in (JsonFormatter(), TextFormatter()):
        line = formatter.format(record("bad header from %s", TOKEN, exc_info=exc_info))
        assert TOKEN not in line and TOKEN.rsplit(".", 1)[1] not in line
        assert "[redacted]" in line


# -- injection (CWE-117) --------------------------------------------------------------

#: A header value a client could send: a bare LF and CR, ESC, NEL, a line
#: separator and a right-to-left override.
FORGED = (
    "https://evil\n2024-05-01 12:00:00,000 INFO roomcast.server: forged\r\x1b[2J\x85\u2028\u202e"
)


def test_escape_shows_every_control_line_break_and_bidi_character() -> None:
    """C0, DEL, C1, U+2028/9 and bidi controls become escapes; other text is kept as it is."""
    assert logs.escape("a\nb\rc\td") == "a\\nb\\rc\\td"
    assert logs.escape("\x00\x1b\x7f\x85\x9f") == "\\x00\\x1b\\x7f\\x85\\x9f"
    assert logs.escape("\u2028\u2029\u202e\u2066\u200f\u061c") == (
        "\\u2028\\u2029\\u202e\\u2066\\u200f\\u061c"
    )
    kept = "Zoë 😀 \u200d C:\\path b'\\x01' 名前"
    assert logs.escape(kept) == kept


def test_text_lines_cannot_be_forged_by_a_message_argument() -> None:
    """Interpolated text with LF, CR and controls stays on its record's one line, escaped."""
    line = TextFormatter().format(record("refused handshake from origin %s", FORGED))
    assert line.splitlines() == [line]
    assert "\r" not in line and "\x1b" not in line and "\u202e" not in line
    assert line.endswith(
        "origin https://evil\\n2024-05-01 12:00:00,000 INFO roomcast.server: "
        "forged\\r\\x1b[2J\\x85\\u2028\\u202e"
    )


def test_text_tracebacks_are_indented_so_no_line_passes_for_a_record() -> None:
    """Every traceback line starts with two spaces; a forged line in an exception stays inside."""
    try:
        raise ValueError(FORGED)
    except ValueError:
        exc_info = sys.exc_info()
    formatter = TextFormatter()
    made = record("internal error on %s", "c1", exc_info=exc_info, level=logging.ERROR)
    JsonFormatter().format(made)  # caches an unindented exc_text on the record
    first, *rest = formatter.format(made).split("\n")
    assert first.endswith(": internal error on c1")
    assert rest and all(line.startswith("  ") for line in rest), rest
    assert rest[0] == "  Traceback (most recent call last):"
    assert "\r" not in "".join(rest) and "\u2028" not in "".join(rest)
    stacked_record = record()
    stacked_record.stack_info = "Stack (most recent call last):\n  here"
    stacked = formatter.format(stacked_record)
    assert [line[:2] for line in stacked.split("\n")[1:]] == ["  ", "  "]


def test_json_lines_escape_what_line_readers_split_on_and_decode_the_same() -> None:
    """JSON lines hold no raw control, U+0085, U+2028/9 or bidi character; the value is exact."""
    line = JsonFormatter().format(record("refused handshake from origin %s", FORGED))
    assert len(line.splitlines()) == 1
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F or c in "\u2028\u202e" for c in line)
    assert orjson.loads(line)["message"] == f"refused handshake from origin {FORGED}"
