"""Log lines for the ``roomcast`` command: text or JSON, with connection and request ids.

Library modules only get their logger (``roomcast.server``, ``roomcast.node``
...) and never install a handler; the CLI calls :func:`configure`, which puts
one handler on the root logger. The server sets :data:`CONN_ID` (the session
id) in each WebSocket connection's handler task and :data:`REQUEST_ID` in
each plain HTTP request's; :class:`ContextFilter`, on the handler, copies
them onto every record logged in that context. A line may also name its
connection itself with ``extra={"conn": ...}`` when it is logged outside the
connection's context (a heartbeat, a flush).

Both formats pass the finished line through :func:`redact`: a bearer token
or anything shaped like a JWT becomes ``[redacted]``. roomcast's own log
calls never include tokens, passwords or message text; this catches other
libraries' lines (aiohttp logs a malformed request's header line whole).

Log lines quote what clients send (an ``Origin``, a user name, a header
aiohttp could not parse), so neither format lets that text forge a line
(CWE-117): the text format shows every control character of a message as
an escape (:func:`escape`: ``\n``, ``\x1b``, ``\u202e``) and indents a
traceback's lines, so every line that starts in column 0 is a record; the
JSON format escapes them inside its strings, including the line breaks
JSON allows raw (U+0085, U+2028, U+2029) that some line readers split on.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from contextvars import ContextVar
from typing import Final, TextIO

import orjson

__all__ = [
    "CONN_ID",
    "FORMATS",
    "LEVELS",
    "REQUEST_ID",
    "ContextFilter",
    "JsonFormatter",
    "TextFormatter",
    "configure",
    "escape",
    "redact",
]

#: The session id of the WebSocket connection being handled, if any.
CONN_ID: ContextVar[str | None] = ContextVar("roomcast_conn", default=None)
#: The id of the plain HTTP request being handled, if any (``X-Request-Id``).
REQUEST_ID: ContextVar[str | None] = ContextVar("roomcast_req", default=None)

LEVELS: Final = ("debug", "info", "warning", "error")
FORMATS: Final = ("text", "json")

#: The text line, as before ids existed; ``[conn=ID]``/``[req=ID]`` go after the logger.
TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"

_SECRET: Final = re.compile(
    r"(\b(?i:bearer)\s+)[A-Za-z0-9._~+/=-]+"  # RFC 6750 b64token
    r"|\beyJ[A-Za-z0-9_-]{4,}(?:\.[A-Za-z0-9_-]*)*"  # a JWT: base64url('{"') ...
)


#: What a log message may not carry as it is: C0 controls (LF and CR forge
#: lines, ESC starts terminal escape sequences), DEL, C1 controls (U+0085 is
#: a line break to some readers), the Unicode line and paragraph separators,
#: and the bidirectional controls, which make a viewer show text in another
#: order than it was written (U+061C, U+200E/F, U+202A-E, U+2066-9).
_UNSAFE: Final = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]")
#: The same, less what JSON strings escape by themselves (code points below U+0020).
_JSON_UNSAFE: Final = re.compile("[\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]")
_SHORT_ESCAPES: Final = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escaped(match: re.Match[str]) -> str:
    char = match.group()
    short = _SHORT_ESCAPES.get(char)
    if short is not None:
        return short
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape(text: str) -> str:
    """``text`` with each control, line-breaking or bidi character as an escape.

    ``\\n``, ``\\r``, ``\\t``, else ``\\xNN`` or ``\\uNNNN``, as Python writes
    them: whatever a client put in a quoted header, the line stays one line
    and reads in order. A backslash is left as it is (a message could already
    contain ``\\n`` as two characters); what matters is that a record is one line.
    """
    return _UNSAFE.sub(_escaped, text)


def _json_escaped(match: re.Match[str]) -> str:
    return f"\\u{ord(match.group()):04x}"


def _redacted(match: re.Match[str]) -> str:
    return (match.group(1) or "") + "[redacted]"


def redact(text: str) -> str:
    """``text`` with bearer tokens and JWT-shaped strings replaced by ``[redacted]``."""
    return _SECRET.sub(_redacted, text)


def utc_timestamp(created: float) -> str:
    """ISO 8601 UTC with milliseconds: ``2024-05-01T12:00:00.123Z``."""
    seconds = int(created)
    millis = int((created - seconds) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


def _ids(record: logging.LogRecord) -> dict[str, str]:
    ids = {}
    for key in ("conn", "req"):
        value = getattr(record, key, None)
        if value is not None:
            ids[key] = str(value)
    return ids


class ContextFilter(logging.Filter):
    """Copies the connection and request ids of the current context onto records.

    An id the call gave itself (``extra={"conn": ...}``) is kept.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        fields = record.__dict__
        if fields.get("conn") is None:
            fields["conn"] = CONN_ID.get()
        if fields.get("req") is None:
            fields["req"] = REQUEST_ID.get()
        return True


class TextFormatter(logging.Formatter):
    """``TIME LEVEL LOGGER [conn=ID]: MESSAGE``, the traceback on the lines below.

    The message is one line (:func:`escape`); the traceback's lines are
    indented by two spaces and their other control characters escaped, so a
    line that starts in column 0 is always a record, never text a client sent.
    """

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        ids = "".join(f" [{key}={value}]" for key, value in _ids(record).items())
        message = escape(record.message)
        return f"{record.asctime} {record.levelname} {record.name}{ids}: {message}"

    def formatException(self, ei: logging._SysExcInfoType) -> str:
        return _indented(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:
        return _indented(super().formatStack(stack_info))

    def format(self, record: logging.LogRecord) -> str:
        # Not logging.Formatter.format: it would reuse a traceback another
        # formatter cached on the record (``exc_text``) without indenting it.
        record.message = record.getMessage()
        record.asctime = self.formatTime(record, self.datefmt)
        parts = [self.formatMessage(record)]
        if record.exc_info:
            parts.append(self.formatException(record.exc_info))
        elif record.exc_text:
            parts.append(_indented(record.exc_text))
        if record.stack_info:
            parts.append(self.formatStack(record.stack_info))
        return redact("\n".join(parts))


def _indented(text: str) -> str:
    """A traceback's lines, each escaped and indented: none can pass for a record."""
    return "\n".join("  " + escape(line) for line in text.split("\n"))


class JsonFormatter(logging.Formatter):
    """One JSON object per line.

    Keys: ``ts`` (ISO 8601 UTC, milliseconds), ``level`` (lower case),
    ``logger``, ``message``; ``conn`` or ``req`` when known; ``exc`` (the
    formatted traceback) when the call passed ``exc_info``; ``stack`` for
    ``stack_info``.
    """

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": utc_timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact(record.getMessage()),
            **_ids(record),
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exc"] = redact(record.exc_text)
        if record.stack_info:
            entry["stack"] = redact(self.formatStack(record.stack_info))
        try:
            line = orjson.dumps(entry).decode()
        except orjson.JSONEncodeError:  # a lone surrogate, e.g. from a file name
            line = orjson.dumps(
                {
                    key: value.encode("utf-8", "backslashreplace").decode()
                    for key, value in entry.items()
                }
            ).decode()
        # orjson writes these raw (valid JSON); as \uNNNN they decode the same.
        return _JSON_UNSAFE.sub(_json_escaped, line)


def configure(level: str, fmt: str, stream: TextIO | None = None) -> logging.Handler:
    """Log ``level`` and above to ``stream`` (stderr) as ``fmt`` (``text`` or ``json``)."""
    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    handler.addFilter(ContextFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    logging.basicConfig(level=getattr(logging, level.upper()), handlers=[handler])
    return handler
