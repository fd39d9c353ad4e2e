"""Property-based hostile client: random RFC 6455 frame sequences against the real server.

Hypothesis builds sequences of frames no library would send (text, binary,
continuation, ping, pong, close and reserved opcodes; fragments with FIN on
and off; RSV bits; masked and unmasked; payloads at 0/125/126/65535/65536/
65537 bytes; header lengths that lie; valid and invalid UTF-8; valid and
broken JSON; roomcast frames with wrong field types, huge and negative
numbers, floats, deep nesting, U+0000 and lone surrogates; binary file
headers) and writes them, by hand, on a bare TCP connection
(:class:`~tests.integration.wsclient.RawWebSocket`) to one real ``roomcast
serve`` subprocess per server configuration.

Each example is judged against a small model of RFC 6455 and of the
contract's limits (:func:`expect`): it says whether the sequence must make
the server close the connection, with which codes, or whether the trailing
probe ``{"type":"ping","id":"probe-N"}`` (sent unless the example has a
close frame) must be answered with ``pong``. Where RFC 6455 or the contract
leave a choice (1012-1014 and codes from 5000 echoed or refused, a fail-fast
UTF-8 check, a cap on fragments past 64, guests' binary frames refused past
64 KiB, a later frame's header fault reported first) the model allows each.
The server must, within :data:`ANSWER_TIMEOUT`:

- answer the probe with ``pong`` when the sequence broke no rule, or close
  with a code the model allows (a client close is echoed; a protocol error
  is 1002, bad UTF-8 1007, too big 1009; 1008/1011/1013 may end any
  connection whose messages reached the application), and then end the TCP
  connection; never answer the probe after a frame that must fail the
  connection, never drop it without a close frame, never hang;
- answer every ping before the end with a pong carrying its payload;
- send only well-formed text frames (JSON objects with a ``type``), and no
  ``error`` with code ``internal``;
- write no ERROR line, no traceback and no "internal error" to its log
  (``--log-format json``: any line that is not one JSON object counts too).

After every example a well-behaved bystander, connected to the lobby for the
whole test, sends a chat and must get its own broadcast and its ack within
:data:`BYSTANDER_TIMEOUT`.

Two servers: one with rate limits off, a 64 KiB file limit (so binary frames
over the limit fit in an example's 200 KiB) and no per-user connection cap,
for :data:`EXAMPLES` examples; one with the default limits for
:data:`DEFAULT_LIMITS_EXAMPLES` (rate limiting is then a valid answer).

Randomness: under CI (``CI`` set to anything but ``0``/``false``/empty)
the examples are derandomized (the seed derives from the test, so every CI
run tests the same examples and no example database is used) so CI cannot
flake between runs of one commit. Locally every run draws new examples and
failures are kept in the ``.hypothesis`` example database (and a
``@reproduce_failure`` blob is printed) so they replay first next time.
``ROOMCAST_FUZZ_EXAMPLES`` scales both runs (e.g. 3000 for a long local
soak); ``ROOMCAST_FUZZ_SEED`` pins a seed.

A passing run takes about 20 s. A failing one takes longer: Hypothesis
shrinks the failure (at most 5 minutes), and an example that hangs costs
:data:`ANSWER_TIMEOUT` each time, hence the 600 s pytest timeout.
"""

from __future__ import annotations

import asyncio
import codecs
import collections
import contextlib
import itertools
import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, Phase, event, given, seed, settings, strategies as st
from websockets.asyncio.client import ClientConnection, connect

from tests.integration.serverproc import ServerProcess, start_server
from tests.integration.users import SECRET, sign_up
from tests.integration.wsclient import (
    MASK_KEY,
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    RawWebSocket,
    mask,
    recv_json,
    send_json,
)

T = TypeVar("T", bound=Callable[..., Any])

# -- settings ------------------------------------------------------------------

CI = os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")
#: Examples of the main run (rate limits off); the default-limits run gets a fifth.
EXAMPLES = int(os.environ.get("ROOMCAST_FUZZ_EXAMPLES", "300"))
DEFAULT_LIMITS_EXAMPLES = max(10, EXAMPLES // 5)
_SEED = os.environ.get("ROOMCAST_FUZZ_SEED")


def fuzz_settings(max_examples: int) -> Callable[[T], T]:
    """Hypothesis settings for a fuzz run (see the module docstring)."""
    configured = settings(
        max_examples=max_examples,
        deadline=None,
        derandomize=CI and _SEED is None,
        print_blob=True,
        # No explain phase: it replays failing examples many times, and a
        # failing example here can cost seconds (a hang waits out a timeout).
        phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.filter_too_much,
            HealthCheck.large_base_example,
        ],
    )

    def decorate(test: T) -> T:
        test = configured(test)
        if _SEED is not None:
            test = seed(int(_SEED))(test)
        return test

    return decorate


#: How long the server has, after the last byte of an example, to answer or close.
ANSWER_TIMEOUT = 3.0
#: How long the server has, after its close frame and ours, to end the TCP connection.
EOF_TIMEOUT = 3.0
#: How long the bystander waits for its own broadcast and ack.
BYSTANDER_TIMEOUT = 2.0
#: The most payload bytes one example sends.
MAX_BYTES = 200 * 1024

# -- the contract's limits, as the fuzzed servers are configured ---------------

TEXT_LIMIT = 64 * 1024
#: ``--max-file-size`` of the main fuzz server: binary frames past it fit in an example.
FUZZ_FILE_SIZE = 64 * 1024
DEFAULT_FILE_SIZE = 8 * 1024 * 1024
#: A binary frame carries a 4-byte length and a JSON header besides the file;
#: how big the header may be is the server's choice. A binary message up to the
#: file size must be read; one past the file size plus this slack must close 1009;
#: in between either is right.
HEADER_SLACK = 4 + 4096
#: Close codes the server may end a connection with on its own (contract section 4).
CONTRACT_CLOSE_CODES = frozenset({1000, 1002, 1003, 1007, 1008, 1009, 1011, 1013})
#: Codes the application may close with after it was handed a message (auth
#: failures and abuse 1008, internal error 1011, slow consumer 1013).
APP_CLOSES = frozenset({1008, 1011, 1013})
#: Past this many fragments in one message a server may refuse it (1008/1009)
#: instead of reading on; the contract does not set a number.
FRAGMENT_SOFT_CAP = 64
#: "No status code" in a close frame (RFC 6455 section 7.4.1): never on the wire.
NO_STATUS = 1005

OPNAMES = {
    OP_CONT: "CONT",
    OP_TEXT: "TEXT",
    OP_BINARY: "BINARY",
    OP_CLOSE: "CLOSE",
    OP_PING: "PING",
    OP_PONG: "PONG",
}
RESERVED_OPCODES = [3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF]
#: Replaced, just before sending, by the token of the registered user ``fuzzer``.
TOKEN_PLACEHOLDER = "$token"
ERROR_CODE = re.compile(r"[a-z][a-z_]*")


# -- frames ----------------------------------------------------------------------


class Frame:
    """One client frame, possibly broken on purpose.

    A plain class, not a dataclass: Hypothesis prints dataclasses field by
    field, and this ``repr`` shortens 64 KiB payloads.
    """

    __slots__ = ("declared", "fin", "mask_key", "opcode", "payload", "rsv")

    def __init__(
        self,
        opcode: int,
        payload: bytes = b"",
        *,
        fin: bool = True,
        rsv: int = 0,
        mask_key: bytes | None = MASK_KEY,
        declared: int | None = None,
    ) -> None:
        self.opcode = opcode
        self.payload = payload
        self.fin = fin
        self.rsv = rsv
        #: The masking key; ``None`` sends the frame unmasked.
        self.mask_key = mask_key
        #: A payload length for the header other than ``len(payload)`` (it lies).
        self.declared = declared

    def replace(self, **changes: Any) -> Frame:
        fields = {name: getattr(self, name) for name in self.__slots__}
        fields.update(changes)
        return Frame(**fields)

    @property
    def length(self) -> int:
        return len(self.payload) if self.declared is None else self.declared

    def encode(self) -> bytes:
        n = self.length
        first = (0x80 if self.fin else 0) | (self.rsv << 4) | self.opcode
        bit = 0x80 if self.mask_key is not None else 0
        if n < 126:
            head = bytes((first, bit | n))
        elif n < 65536:
            head = bytes((first, bit | 126)) + n.to_bytes(2, "big")
        else:
            head = bytes((first, bit | 127)) + n.to_bytes(8, "big")
        if self.mask_key is None:
            return head + self.payload
        return head + self.mask_key + mask(self.payload, self.mask_key)

    def __repr__(self) -> str:
        parts = [OPNAMES.get(self.opcode, f"opcode={self.opcode:#x}")]
        if not self.fin:
            parts.append("fin=False")
        if self.rsv:
            parts.append(f"rsv={self.rsv:#05b}")
        if self.mask_key is None:
            parts.append("unmasked")
        elif self.mask_key != MASK_KEY:
            parts.append(f"mask_key={self.mask_key!r}")
        if self.declared is not None:
            parts.append(f"declared={self.declared}")
        if len(self.payload) <= 100:
            parts.append(repr(self.payload))
        else:
            parts.append(f"{self.payload[:60]!r}...{self.payload[-20:]!r} ({len(self.payload)} B)")
        return f"Frame({', '.join(parts)})"


class Frames(list[Frame]):
    """An example's frames; the ``repr`` folds runs of alike frames (fragment storms)."""

    def __repr__(self) -> str:
        runs: list[list[Any]] = []
        for frame in self:
            text = repr(frame)
            if runs and runs[-1][0] == text:
                runs[-1][1] += 1
            else:
                runs.append([text, 1])
        items = [text if n == 1 else f"{text} * {n}" for text, n in runs]
        if len(items) > 60:
            items = [*items[:30], f"... {len(items) - 50} more runs ...", *items[-20:]]
        return "[" + ",\n ".join(items) + "]"


def probe_frame(n: int) -> Frame:
    """The trailing JSON ping of example ``n``."""
    return Frame(OP_TEXT, json.dumps({"type": "ping", "id": f"probe-{n}"}).encode())


# -- the model: what the server must do with a sequence --------------------------


@dataclass
class Expected:
    """What a frame sequence (the probe included) obliges the server to do."""

    #: The server must close with one of these; ``None``: it must answer the probe.
    must_close: frozenset[int] | None = None
    #: Further codes the server may close with instead (see APP_CLOSES etc.).
    may_close: set[int] = field(default_factory=set)
    #: Ping payloads the server must have answered with pongs (if ``pings_owed``).
    pings: list[bytes] = field(default_factory=list)
    pings_owed: bool = True
    #: Why it must close, for failure messages.
    why: str = ""

    @property
    def close_codes(self) -> set[int]:
        return set(self.must_close or ()) | self.may_close

    def __str__(self) -> str:
        if self.must_close is None:
            wanted = "the probe's pong"
            if self.may_close:
                wanted += f" (or a close with {sorted(self.may_close)})"
            return wanted
        wanted = f"a close with {sorted(self.must_close)}"
        if self.may_close - self.must_close:
            wanted += f" (or {sorted(self.may_close - self.must_close)})"
        return f"{wanted}, for {self.why}"


def _valid_close_code(code: int) -> bool | None:
    """RFC 6455 section 7.4: True valid, False invalid, None either (newer or undefined)."""
    if code < 1000 or code in (1004, NO_STATUS, 1006, 1015) or 1016 <= code <= 2999:
        return False
    if code in (1012, 1013, 1014) or code >= 5000:
        return None  # registered after RFC 6455, or not defined at all
    return True


def _utf8_prefix_ok(data: bytes) -> bool:
    """Whether ``data`` can still be the start of valid UTF-8."""
    try:
        codecs.getincrementaldecoder("utf-8")().decode(data, final=False)
    except UnicodeDecodeError:
        return False
    return True


def violations(f: Frame, kind: str | None, size: int, file_size: int) -> dict[str, set[int]]:
    """The rules frame ``f`` breaks (with the close codes each allows), given the
    fragmented message in progress (``kind``, ``size`` bytes so far)."""
    control = f.opcode >= 8
    rules = {
        "RSV bits set with no extension negotiated": (f.rsv != 0, {1002}),
        "unmasked client frame": (f.mask_key is None, {1002}),
        "reserved opcode": (f.opcode not in OPNAMES, {1002}),
        "64-bit length with its top bit set": (f.length >= 2**63, {1002, 1009}),
        "fragmented control frame": (control and not f.fin, {1002}),
        "control frame over 125 bytes": (control and f.length > 125, {1002}),
        "continuation with no message started": (f.opcode == OP_CONT and kind is None, {1002}),
        "new message before the fragmented one ended": (
            f.opcode in (OP_TEXT, OP_BINARY) and kind is not None,
            {1002},
        ),
    }
    broken = {reason: codes for reason, (hit, codes) in rules.items() if hit}
    if f.opcode in (OP_TEXT, OP_BINARY, OP_CONT):
        # Size limits are checked too when another rule is broken: a server
        # may read the length before the rest of the header.
        this = kind if f.opcode == OP_CONT else "text" if f.opcode == OP_TEXT else "binary"
        total = f.length + (size if f.opcode == OP_CONT else 0)
        # No fuzzed connection presents a token at the handshake, so every
        # frame, a file's included, is held to the text limit (PROTOCOL 4).
        limit = TEXT_LIMIT
        if total > limit:
            broken[f"{this or 'data'} message of {total} bytes > {limit}"] = {1009}
    return broken


def read_ahead(later: list[Frame]) -> set[int]:
    """Codes for header faults of frames after the first fault.

    A server parses what one read brought before it acts on a message, so
    it may fail on a later frame's header first: those codes are right too.
    """
    codes: set[int] = set()
    for f in later:
        control = f.opcode >= 8
        if f.rsv or f.mask_key is None or f.opcode not in OPNAMES or f.length >= 2**63:
            codes.add(1002)
        if control and (not f.fin or f.length > 125):
            codes.add(1002)
        if not control and f.length > TEXT_LIMIT:
            codes.add(1009)
        if f.opcode == OP_CLOSE and _close_answer(f.payload) <= {1002, 1007}:
            codes |= _close_answer(f.payload)  # picows checks close frames as it parses
    return codes


def expect(frames: list[Frame], file_size: int) -> Expected:
    """Model RFC 6455 and the contract's limits over ``frames`` (the probe is the last)."""
    exp = Expected()
    # picows parses all the frames of one read before it hands any over: a
    # header fault anywhere may end the connection before earlier pings are
    # answered. Pongs are only owed when no frame has one.
    exp.pings_owed = not read_ahead(frames)

    def stop(index: int, codes: frozenset[int], why: str) -> Expected:
        exp.must_close, exp.why = codes, f"frame {index}: {why}"
        exp.may_close |= read_ahead(frames[index + 1 :])
        return exp

    kind: str | None = None  # the fragmented message in progress: "text" or "binary"
    parts: list[bytes] = []
    size = 0
    for index, f in enumerate(frames):
        broken = violations(f, kind, size, file_size)
        if broken:
            return stop(index, frozenset(set().union(*broken.values())), "; ".join(broken))
        assert f.declared is None, f"generator bug: {f} breaks no rule"

        if f.opcode == OP_PING:
            exp.pings.append(f.payload)
        elif f.opcode == OP_CLOSE:
            if index + 1 < len(frames):  # frames after a close may count as an error
                exp.may_close.add(1002)
            return stop(index, _close_answer(f.payload), "client close")
        elif f.opcode in (OP_TEXT, OP_BINARY, OP_CONT):
            if kind is None:
                kind = "text" if f.opcode == OP_TEXT else "binary"
            parts.append(f.payload)
            size += len(f.payload)
            if kind == "binary" and size > min(file_size, TEXT_LIMIT):
                # Past the file size (within the header's slack), or past the
                # text limit from a guest, who may not send files at all.
                exp.may_close.add(1009)
            if len(parts) > FRAGMENT_SOFT_CAP:
                exp.may_close |= {1008, 1009}
            if kind == "text" and not _utf8_prefix_ok(b"".join(parts)):
                exp.may_close.add(1007)  # a server may fail fast on bad UTF-8
            if f.fin:
                data = b"".join(parts)
                message_kind, kind, parts, size = kind, None, [], 0
                if message_kind == "text":
                    try:
                        data.decode("utf-8")
                    except UnicodeDecodeError:
                        return stop(index, frozenset({1007}), "text message is not UTF-8")
                exp.may_close |= APP_CLOSES  # handed to the application
    return exp


def _close_answer(payload: bytes) -> frozenset[int]:
    """The codes a server may answer a client's close frame with."""
    if not payload:
        return frozenset({NO_STATUS, 1000})
    if len(payload) == 1:
        return frozenset({1002})
    code = int.from_bytes(payload[:2], "big")
    valid = _valid_close_code(code)
    faults = set() if valid is not False else {1002}
    try:
        payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        faults |= {1007, 1002}
    if faults:
        return frozenset(faults)
    return frozenset({code, 1000} if valid else {code, 1000, 1002})


# -- strategies ------------------------------------------------------------------

HUGE_NUMBERS: list[Any] = [
    2**64,
    2**64 - 1,
    2**63,
    2**63 - 1,
    -(2**63),
    -(2**63) - 1,
    -(2**64),
    10**40,
    -1,
    0,
    1,
    0.5,
    -0.0,
    1e308,
    2.0**64,
]
TRICKY_STRINGS = [
    "",
    "lobby",
    "fuzz-room",
    "Lobby",
    "a" * 64,
    "a" * 65,
    "a b",
    "\x00",
    "lobby\x00",
    "fuzzer",
    "guest-0000",
    TOKEN_PLACEHOLDER,
    "\u202egnp.exe",
    "\ud800",
    "\udfff\ud800",
    "\U0001f600",
    "é" * 4000,
    "é" * 4001,
    "\U0001f600" * 4001,
    "../../etc/passwd",
    "<script>alert(1)</script>",
    "a.txt",
    "text/plain",
    "1e999",
    "👍",
]
ROOMCAST_TYPES = [
    "ping",
    "chat",
    "join",
    "leave",
    "history",
    "auth",
    "direct",
    "direct_history",
    "typing",
    "presence",
    "echo",
    "edit",
    "delete",
    "react",
    "unreact",
    "read",
    "unread",
    "search",
    "pong",
    "ack",
    "error",
    "system",
    "file",
]
#: Types whose payload carries a sequence number or a count (the first three twice as often).
SEQ_TYPES = ["history", "join", "direct_history"] * 2 + ["read", "search"]
#: Numbers at the edges of 64 bits, negative, or not integers.
SEQ_NUMBERS: list[Any] = [2**63, 2**64 - 1, 2**64, 2**63 - 1, -1, -(2**63) - 1, 0, 1.5, 10**40]
FIELDS = [
    "room",
    "message",
    "since",
    "before",
    "limit",
    "to",
    "token",
    "guest",
    "reply_to",
    "message_id",
    "emoji",
    "q",
    "seq",
    "direct",
    "with",
    "thread",
    "around",
    "mentions",
    "from",
    "name",
    "mime",
    "id",
]

scalars = st.one_of(
    st.sampled_from(TRICKY_STRINGS),
    st.sampled_from(HUGE_NUMBERS),
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=12),
)
json_values = st.recursive(
    scalars,
    lambda kids: (
        st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=6), kids, max_size=3)
    ),
    max_leaves=8,
)
field_values = st.one_of(st.sampled_from(TRICKY_STRINGS + HUGE_NUMBERS), json_values)
ids = st.one_of(
    st.sampled_from(["f1", "i" * 64, "i" * 65, "\x00", ""]), st.text(max_size=70), scalars
)
payloads = st.one_of(
    st.dictionaries(st.sampled_from(FIELDS), field_values, max_size=4),
    st.builds(
        lambda room, n: {"room": room, "since": n, "before": n, "limit": n},
        st.sampled_from(["lobby", "fuzz-room"]),
        st.sampled_from(HUGE_NUMBERS),
    ),
    json_values,
)
roomcast_objects = st.fixed_dictionaries(
    {"type": st.one_of(st.sampled_from(ROOMCAST_TYPES), scalars)},
    optional={"id": ids, "payload": payloads, "timestamp": scalars, "extra": json_values},
)
#: Bytes that are never valid UTF-8 where they stand.
BAD_UTF8 = [
    b"\xff",
    b"\xfe",
    b"\x80",
    b"\xc0\xaf",  # overlong "/"
    b"\xe0\x80\xaf",  # overlong
    b"\xed\xa0\x80",  # a surrogate, UTF-8 encoded
    b"\xf4\x90\x80\x80",  # past U+10FFFF
    b"\xe2\x82",  # truncated, then more text
    b"\xce\xba\xff\xfe",
]
TEXT_SIZES = [0, 1, 2, 125, 126, 127, 65535, 65536, 65537]


def rarely(draw: st.DrawFn, n: int) -> bool:
    """True one time in ``n``; False in shrunk examples, unless the failure needs it."""
    return draw(st.integers(0, n - 1)) == n - 1


def draw_json(draw: st.DrawFn) -> bytes:
    """A JSON text (or nearly: NaN, Infinity, lone surrogates) of a roomcast-like frame."""
    choice = draw(st.integers(0, 9))
    obj: Any
    if choice <= 5:
        obj = draw(roomcast_objects)
    elif choice == 6:
        obj = draw(json_values)
    elif choice <= 8:  # a sequence number or count at or past 64 bits, or negative
        key = draw(st.sampled_from(["since", "before", "limit", "around"]))
        obj = {
            "type": draw(st.sampled_from(SEQ_TYPES)),
            "id": "seq",
            "payload": {
                "room": draw(st.sampled_from(["lobby", "fuzz-room"])),
                key: draw(st.sampled_from(SEQ_NUMBERS)),
            },
        }
    else:  # nested deeper than JSON libraries like
        depth = draw(st.sampled_from([2, 64, 254, 255, 256, 1000, 1024, 1025, 4096]))
        kind = draw(st.sampled_from(["echo", "ping", "chat", "join", "whatever"]))
        open_, close = draw(st.sampled_from([("[", "]"), ('{"a":', "}")]))
        inner = open_ * depth + ("1" if open_ != "[" else "") + close * depth
        return f'{{"type":"{kind}","id":"deep","payload":{{"x":{inner}}}}}'.encode()
    text = json.dumps(obj, ensure_ascii=draw(st.booleans()))
    return text.encode("utf-8", "surrogatepass")


def draw_text_payload(draw: st.DrawFn, budget: int, *, clean: bool = False) -> bytes:
    """The payload of a text message: mostly JSON, sometimes junk or bad UTF-8.

    ``clean``: valid UTF-8 of at most 64 KiB (the frame reaches the application).
    """
    choice = draw(st.integers(0, 5 if clean else 7))
    if choice <= 4:
        data = draw_json(draw)
    elif choice == 5:
        data = draw(st.text(max_size=40)).encode("utf-8", "surrogatepass")
    elif choice == 6:
        data = draw_json(draw)
        cut = draw(st.integers(0, len(data)))
        data = data[:cut] + draw(st.sampled_from(BAD_UTF8)) + data[cut:]
    else:
        data = draw(st.binary(max_size=60))
    if rarely(draw, 4):
        n = draw(st.sampled_from(TEXT_SIZES[:-1] if clean else TEXT_SIZES))
        if n <= budget:
            data = resize(data, n, spaces=draw(st.booleans()))
    if clean:
        data = data.decode("utf-8", "replace").encode()[:TEXT_LIMIT]
        data = data.decode("utf-8", "ignore").encode()  # the cut may split a character
    return data


def resize(data: bytes, n: int, *, spaces: bool) -> bytes:
    """``data`` cut or padded to exactly ``n`` bytes (JSON stays JSON when it can)."""
    if len(data) >= n:
        return data[:n]
    if spaces:  # trailing whitespace after a JSON value is still JSON
        return data + b" " * (n - len(data))
    if data.startswith(b"{") and len(data) >= 2:
        comma = b"" if data[1:2] == b"}" else b","
        k = n - (len(b'{"pad":"') + 1 + len(comma) + len(data) - 1)
        if k >= 0:
            return b'{"pad":"' + b"p" * k + b'"' + comma + data[1:]
    return ((data or b"x") * (n // max(1, len(data)) + 1))[:n]


def draw_binary_payload(
    draw: st.DrawFn, budget: int, file_size: int, *, clean: bool = False
) -> bytes:
    """A binary message: a file frame (4-byte header length, JSON header, bytes) or noise.

    ``clean``: at most 64 KiB (and the file size), so the application reads it.
    """
    if rarely(draw, 3):
        data = draw(st.binary(max_size=80))
    else:
        header = draw(
            st.fixed_dictionaries(
                {},
                optional={
                    "room": field_values,
                    "to": field_values,
                    "name": field_values,
                    "mime": field_values,
                    "id": ids,
                },
            )
        )
        if rarely(draw, 5):
            encoded = draw_json(draw)
        else:
            encoded = json.dumps(header, ensure_ascii=draw(st.booleans())).encode(
                "utf-8", "surrogatepass"
            )
        stated = draw(
            st.sampled_from(
                [len(encoded), 0, len(encoded) + 1, max(0, len(encoded) - 1), 4097, 2**32 - 1]
            )
        )
        data = stated.to_bytes(4, "big") + encoded + draw(st.binary(max_size=40))
    if rarely(draw, 4):
        hi = file_size + HEADER_SLACK
        sizes = [0, 3, 4, 125, 126, 65536, file_size, hi, hi + 1]
        n = draw(
            st.sampled_from(
                [n for n in sizes if n <= min(TEXT_LIMIT, file_size)] if clean else sizes
            )
        )
        if n <= budget:
            data = resize(data, n, spaces=False)
    return data


def draw_mutated(draw: st.DrawFn, frame: Frame) -> Frame:
    """``frame``, now and then with RSV bits, no mask or another masking key."""
    rsv = draw(st.integers(1, 7)) if rarely(draw, 10) else 0
    if rarely(draw, 25):
        key: bytes | None = None
    elif rarely(draw, 10):
        key = draw(
            st.sampled_from([b"\0\0\0\0", b"\xff\xff\xff\xff"]) | st.binary(min_size=4, max_size=4)
        )
    else:
        key = frame.mask_key
    return frame.replace(rsv=rsv, mask_key=key)


def draw_control(draw: st.DrawFn, *, clean: bool = False) -> Frame:
    opcode = draw(
        st.sampled_from([OP_PING, OP_PONG] if clean else [OP_PING, OP_PONG, OP_CLOSE, OP_CLOSE])
    )
    if opcode != OP_CLOSE:
        payload = draw(st.binary(max_size=20))
        if not clean and rarely(draw, 5):
            payload = resize(payload, draw(st.sampled_from([125, 126])), spaces=False)
        return Frame(opcode, payload)
    form = draw(st.integers(0, 5))
    if form == 0:
        return Frame(OP_CLOSE)
    if form == 1:
        return Frame(OP_CLOSE, draw(st.binary(min_size=1, max_size=1)))
    code = draw(
        st.sampled_from(
            [1000, 1001, 1003, 1007, 1008, 1011, 1012, 1014, 3000, 4999, 0, 999, 1004]
            + [NO_STATUS, 1006, 1015, 1016, 2999, 5000, 65535]
        )
        | st.integers(0, 65535)
    )
    if rarely(draw, 4):
        reason = draw(st.sampled_from(BAD_UTF8))
    else:
        reason = draw(st.text(max_size=20)).encode("utf-8", "surrogatepass")
    if rarely(draw, 5):
        reason = resize(reason, draw(st.sampled_from([123, 124])), spaces=True)
    return Frame(OP_CLOSE, code.to_bytes(2, "big") + reason)


def draw_fragmented(
    draw: st.DrawFn, budget: int, file_size: int, *, clean: bool = False
) -> list[Frame]:
    """One message in pieces, maybe with pings between them, maybe never finished."""
    text = draw(st.booleans())
    if text:
        data = draw_text_payload(draw, budget, clean=clean)
    else:
        data = draw_binary_payload(draw, budget, file_size, clean=clean)
    if rarely(draw, 10):  # a storm of tiny fragments
        count = draw(st.sampled_from([FRAGMENT_SOFT_CAP + 1, 200, 1000, 3000]))
        step = max(1, len(data) // count)
        pieces = [data[i * step : (i + 1) * step] for i in range(count - 1)]
        pieces.append(data[(count - 1) * step :])
    else:
        cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=4)))
        bounds = [0, *cuts, len(data)]
        pieces = [data[a:b] for a, b in itertools.pairwise(bounds)]
    finished = clean or not rarely(draw, 10)
    frames: list[Frame] = []
    for i, piece in enumerate(pieces):
        first = OP_TEXT if text else OP_BINARY
        last = i == len(pieces) - 1
        frames.append(Frame(first if i == 0 else OP_CONT, piece, fin=last and finished))
        if not last and len(pieces) < 10 and rarely(draw, 5):
            frames.append(Frame(OP_PING, draw(st.binary(max_size=8))))
    return frames


def draw_lie(draw: st.DrawFn, file_size: int) -> Frame:
    """A last frame whose header announces more than any limit allows (the rest never comes)."""
    opcode = draw(st.sampled_from([OP_TEXT, OP_BINARY, OP_CONT, OP_PING, OP_CLOSE, OP_PONG]))
    if opcode >= 8:
        declared = draw(st.sampled_from([126, 127, 65535, 65536, 65537]))
    else:
        over_binary = file_size + HEADER_SLACK + 1
        choices = [over_binary, 2**32, 2**63 - 1, 2**63, 2**64 - 1]
        if opcode == OP_TEXT:
            choices = [TEXT_LIMIT + 1, 2**20, *choices]
        declared = draw(st.sampled_from(choices))
    return Frame(opcode, draw(st.binary(max_size=16)), declared=declared)


@st.composite
def frame_sequences(draw: st.DrawFn, file_size: int) -> Frames:
    """A few frames of every kind, at most :data:`MAX_BYTES` of payload in all.

    One example in three frames cleanly (masked, no RSV, UTF-8 text up to
    64 KiB, fragments finished, no close), so that its JSON reaches the
    application rather than a protocol error; the others break any rule.
    """
    clean = draw(st.integers(0, 2)) == 0  # 0, the shrunk value: clean
    frames: list[Frame] = []
    for _ in range(draw(st.integers(0, 6))):
        budget = MAX_BYTES - sum(len(f.payload) for f in frames)
        kinds = ["text", "text", "binary", "fragmented", "control"]
        kind = draw(st.sampled_from(kinds if clean else [*kinds, "raw"]))
        if kind == "text":
            new = [Frame(OP_TEXT, draw_text_payload(draw, budget, clean=clean))]
        elif kind == "binary":
            new = [Frame(OP_BINARY, draw_binary_payload(draw, budget, file_size, clean=clean))]
        elif kind == "fragmented":
            new = draw_fragmented(draw, budget, file_size, clean=clean)
        elif kind == "control":
            new = [draw_control(draw, clean=clean)]
        else:
            opcode = draw(st.sampled_from([*OPNAMES, *RESERVED_OPCODES]))
            new = [Frame(opcode, draw(st.binary(max_size=130)), fin=draw(st.booleans()))]
        frames += new if clean else [draw_mutated(draw, f) for f in new]
    if not clean and rarely(draw, 6):
        frames.append(draw_mutated(draw, draw_lie(draw, file_size)))
    return Frames(frames)


# -- the servers, the bystander, one example -------------------------------------


class Target:
    """A fuzzed server and what its examples share (a plain class: a short repr)."""

    def __init__(
        self,
        server: ServerProcess,
        runner: asyncio.Runner,
        bystander: ClientConnection,
        bystander_name: str,
        token: str,
        file_size: int,
        bystander_interval: float,
    ) -> None:
        self.server = server
        self.runner = runner
        self.bystander = bystander
        self.bystander_name = bystander_name
        #: The token of the registered user ``fuzzer``.
        self.token = token
        self.file_size = file_size
        #: Least seconds between two bystander chats (to stay under its rate limit).
        self.bystander_interval = bystander_interval
        self.log_offset = 0
        self.last_check = 0.0
        self.examples = itertools.count()

    def __repr__(self) -> str:
        return f"<roomcast serve on port {self.server.port}, log {self.server.stderr_path}>"


@dataclass
class Outcome:
    """How the server ended an example."""

    kind: str  # "answered", "closed" or "eof"
    code: int | None = None
    reason: bytes = b""
    texts: list[dict[str, Any]] = field(default_factory=list)
    pongs: list[bytes] = field(default_factory=list)


def check_server_frame(frame: Any, raw: bytes) -> None:
    """A text frame from the server: one well-formed JSON object, no internal error."""
    assert isinstance(frame, dict) and isinstance(frame.get("type"), str), raw[:300]
    assert isinstance(frame.get("timestamp"), str), raw[:300]
    if frame["type"] == "error":
        payload = frame.get("payload")
        assert isinstance(payload, dict), raw[:300]
        code, message = payload.get("code"), payload.get("message")
        assert isinstance(code, str) and ERROR_CODE.fullmatch(code), raw[:300]
        assert isinstance(message, str) and message, raw[:300]
        assert code != "internal", f"the server answered with an internal error: {raw[:300]!r}"


async def read_outcome(raw: RawWebSocket, probe_id: str) -> Outcome:
    """Read until the probe's pong, a close frame or the end of the connection."""
    outcome = Outcome("eof")
    while True:
        try:
            opcode, payload = await raw.read_frame(timeout=3600)
        except (asyncio.IncompleteReadError, ConnectionError):
            return outcome
        if opcode == OP_TEXT:
            try:
                frame = json.loads(payload.decode("utf-8"))
            except ValueError as exc:
                raise AssertionError(f"server text frame is not JSON: {payload[:300]!r}") from exc
            check_server_frame(frame, payload)
            outcome.texts.append(frame)
            if frame["type"] == "pong" and frame.get("id") == probe_id:
                outcome.kind = "answered"
                return outcome
        elif opcode == OP_PONG:
            outcome.pongs.append(payload)
        elif opcode == OP_CLOSE:
            assert len(payload) != 1, f"malformed close frame from the server: {payload!r}"
            outcome.kind = "closed"
            outcome.code = int.from_bytes(payload[:2], "big") if payload else NO_STATUS
            outcome.reason = payload[2:]
            payload[2:].decode("utf-8")  # a close reason is UTF-8 too
            return outcome
        else:
            assert opcode == OP_PING, f"unexpected opcode {opcode:#x} from the server"


def describe(outcome: Outcome) -> str:
    texts = [json.dumps(t)[:160] for t in outcome.texts[-5:]]
    return f"{outcome.kind} code={outcome.code} reason={outcome.reason!r}; last replies {texts}"


async def exchange(target: Target, frames: list[Frame]) -> None:
    """Send one example on a fresh connection and judge what the server does."""
    token = target.token.encode()
    frames = [
        f.replace(payload=f.payload.replace(TOKEN_PLACEHOLDER.encode(), token)) for f in frames
    ]
    n = next(target.examples)
    probe_id = f"probe-{n}"
    # A client that sent a close frame has nothing more to ask: no probe then.
    closing = any(f.opcode == OP_CLOSE for f in frames)
    wire = frames if closing else [*frames, probe_frame(n)]
    exp = expect(wire, target.file_size)

    raw = await RawWebSocket.connect(target.server.port)
    try:
        system = await raw.read_json()
        assert system["type"] == "system", system
        joined = await raw.read_json()
        assert joined["type"] == "joined", joined
        reader = asyncio.create_task(read_outcome(raw, probe_id))
        try:
            raw.writer.write(b"".join(f.encode() for f in wire))
            # The server may close before it read everything: that is its right.
            with contextlib.suppress(ConnectionError):
                await asyncio.wait_for(raw.writer.drain(), ANSWER_TIMEOUT)
            try:
                outcome = await asyncio.wait_for(asyncio.shield(reader), ANSWER_TIMEOUT)
            except TimeoutError:
                raise AssertionError(
                    f"no answer and no close within {ANSWER_TIMEOUT} s; expected {exp}; "
                    f"the server sent {raw.frames[2:][-3:]}"
                ) from None
        finally:
            # The reader's own failure, if any, was raised above: only stop it.
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)

        event(f"server: {outcome.kind} {'' if outcome.code is None else outcome.code}".strip())
        event(f"model: {sorted(exp.must_close) if exp.must_close else 'answer'}")
        if outcome.kind == "answered":
            assert exp.must_close is None, f"the server answered the probe; expected {exp}"
        elif outcome.kind == "closed":
            assert outcome.code in exp.close_codes, (
                f"the server closed with {outcome.code} {outcome.reason!r}; expected {exp}"
            )
            assert outcome.code in CONTRACT_CLOSE_CODES | (exp.must_close or set()), outcome.code
            # Complete the close handshake; the server must then end TCP.
            with contextlib.suppress(ConnectionError):
                raw.writer.write(Frame(OP_CLOSE, (1000).to_bytes(2, "big")).encode())
            try:
                await raw.read_to_eof(timeout=EOF_TIMEOUT)
            except TimeoutError:
                raise AssertionError(
                    f"TCP still open {EOF_TIMEOUT} s after the close handshake"
                ) from None
        else:
            raise AssertionError(
                f"the connection ended without a close frame ({describe(outcome)}); expected {exp}"
            )
        # A close the model only allows (``may_close``) can come at any frame,
        # so the pings after it are owed nothing; a required close comes at
        # a known frame, and every ping before it is owed its pong.
        decided = outcome.kind == "answered" or outcome.code in (exp.must_close or set())
        if exp.pings_owed and decided:
            missing = collections.Counter(exp.pings) - collections.Counter(outcome.pongs)
            assert not missing, f"pings never answered with a pong: {list(missing)}"
    finally:
        await raw.close()


def new_log_problems(target: Target) -> list[str]:
    """Complete log lines written since the last call that show a server-side failure."""
    with target.server.stderr_path.open("rb") as log:
        log.seek(target.log_offset)
        data = log.read()
    end = data.rfind(b"\n") + 1
    target.log_offset += end
    problems = []
    for line in data[:end].decode("utf-8", "replace").splitlines():
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            entry = None
        if (
            not isinstance(entry, dict)
            or entry.get("level") in ("error", "critical")
            or "exc" in entry
            or "Traceback" in line
            or "internal error" in line.lower()
        ):
            problems.append(line[:2000])
    return problems


async def bystander_is_served(target: Target) -> None:
    """The bystander's chat is broadcast back to it and acked, within the timeout."""
    loop = asyncio.get_running_loop()
    await asyncio.sleep(max(0.0, target.last_check + target.bystander_interval - loop.time()))
    target.last_check = loop.time()
    n = next(target.examples)
    text, fid = f"bystander check {n}", f"by-{n}"
    ws = target.bystander
    await send_json(ws, "chat", {"message": text}, id=fid)
    broadcast = acked = False
    try:
        async with asyncio.timeout(BYSTANDER_TIMEOUT):
            while not (broadcast and acked):
                frame = await recv_json(ws, BYSTANDER_TIMEOUT)
                assert frame["type"] != "error", f"the bystander got an error: {frame}"
                payload = frame.get("payload") or {}
                if frame["type"] == "chat" and payload.get("message") == text:
                    assert payload.get("from") == target.bystander_name, frame
                    broadcast = True
                elif frame["type"] == "ack" and frame.get("id") == fid:
                    acked = True
    except TimeoutError:
        raise AssertionError(
            f"the bystander was not served within {BYSTANDER_TIMEOUT} s "
            f"(broadcast={broadcast}, ack={acked})"
        ) from None


def run_example(target: Target, frames: list[Frame]) -> None:
    """One hypothesis example, on the target's event loop."""
    assert target.server.proc.poll() is None, "the server has exited"
    try:
        target.runner.run(exchange(target, frames))
    finally:
        problems = new_log_problems(target)
    assert not problems, "the server logged a failure:\n" + "\n".join(problems)
    target.runner.run(bystander_is_served(target))
    assert target.server.proc.poll() is None, "the server has exited"


@pytest.fixture(scope="module")
def runner() -> Iterator[asyncio.Runner]:
    """One event loop for a module's examples (the bystander lives across them)."""
    with asyncio.Runner(loop_factory=asyncio.new_event_loop) as loop_runner:
        yield loop_runner


def serve(
    runner: asyncio.Runner, tmp: Path, file_size: int, interval: float, *args: str
) -> Iterator[Target]:
    """Start a server and the bystander; stop both; the server must exit cleanly."""
    server = start_server(
        tmp, "--secret", SECRET, "--log-format", "json", "--max-file-size", str(file_size), *args
    )

    async def open_bystander() -> tuple[str, ClientConnection, str]:
        token = await sign_up(server, "fuzzer")
        ws = await connect(server.ws_url(), max_queue=None, max_size=None)
        system = await recv_json(ws)
        assert system["type"] == "system", system
        assert (await recv_json(ws))["type"] == "joined"
        return token, ws, str(system["payload"]["user"]["name"])

    target: Target | None = None
    try:
        token, ws, name = runner.run(open_bystander())
        target = Target(server, runner, ws, name, token, file_size, interval)
        yield target
        runner.run(ws.close())
    finally:
        code = server.stop()
    assert code == 0, f"the server exited with {code}"
    if target is not None:  # what it logged after the last example, shutdown included
        problems = new_log_problems(target)
        assert not problems, "the server logged a failure:\n" + "\n".join(problems)


@pytest.fixture(scope="module")
def fuzz_target(
    runner: asyncio.Runner, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Target]:
    """A server with rate limits off, a 64 KiB file limit and no per-user connection cap."""
    yield from serve(
        runner,
        tmp_path_factory.mktemp("fuzz"),
        FUZZ_FILE_SIZE,
        0.0,
        "--rate-limit",
        "0",
        "--max-connections-per-user",
        "0",
    )


@pytest.fixture(scope="module")
def default_target(
    runner: asyncio.Runner, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Target]:
    """A server with the default limits (8 MiB files, 20 chats/s, 10 connections a user)."""
    # The bystander chats at most 10 times a second: under the default 20/s.
    yield from serve(runner, tmp_path_factory.mktemp("fuzz-default"), DEFAULT_FILE_SIZE, 0.1)


@pytest.mark.timeout(600)
@fuzz_settings(EXAMPLES)
@given(frames=frame_sequences(FUZZ_FILE_SIZE))
def test_fuzzed_frames_are_answered_or_closed_and_others_are_served(
    fuzz_target: Target, frames: list[Frame]
) -> None:
    """Rate limits off: any frame sequence gets its answer or its close; the bystander chats."""
    run_example(fuzz_target, frames)


@pytest.mark.timeout(600)
@fuzz_settings(DEFAULT_LIMITS_EXAMPLES)
@given(frames=frame_sequences(DEFAULT_FILE_SIZE))
def test_fuzzed_frames_with_default_limits(default_target: Target, frames: list[Frame]) -> None:
    """Default limits: the same property (rate_limited errors are answers too)."""
    run_example(default_target, frames)
