"""The front door's request-head parsing, which routes a connection (no sockets)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from roomcast.frontdoor import (
    HEADS_FACTOR,
    ConnectionCounts,
    RequestHead,
    TrustedProxies,
    bare_line_break,
    parse_head,
)


def head(*lines: str) -> bytes:
    return "\r\n".join(lines).encode("latin-1")


def test_a_websocket_handshake_on_ws_is_routed_to_websocket() -> None:
    """GET /ws with Upgrade: websocket (any case, with a query) is a WebSocket handshake."""
    parsed = parse_head(
        head("GET /ws?token=x HTTP/1.1", "Host: a:1", "UPGRADE:  WebSocket ", "Connection: Upgrade")
    )
    assert parsed == RequestHead(
        "GET", "/ws", {"host": "a:1", "upgrade": "WebSocket", "connection": "Upgrade"}
    )
    assert parsed.is_websocket


def test_the_root_path_also_takes_websockets() -> None:
    """A handshake on / is a WebSocket handshake, as on the original server."""
    parsed = parse_head(head("GET / HTTP/1.1", "Upgrade: websocket"))
    assert parsed is not None and parsed.is_websocket


def test_other_requests_go_to_http() -> None:
    """Plain requests, other paths and other methods are not WebSocket handshakes."""
    for lines in (
        ("GET /ws HTTP/1.1", "Host: a"),
        ("GET /api/rooms HTTP/1.1", "Upgrade: websocket"),
        ("POST /ws HTTP/1.1", "Upgrade: websocket"),
        ("GET /ws HTTP/1.1", "Upgrade: h2c"),
    ):
        parsed = parse_head(head(*lines))
        assert parsed is not None and not parsed.is_websocket, lines


def test_what_is_not_http_1_parses_as_none() -> None:
    """A request line not ``METHOD TARGET HTTP/1.x``, or a header without a colon: None."""
    assert parse_head(b"GET /ws") is None
    assert parse_head(b"GET /ws HTTP/2.0") is None
    assert parse_head(b"\x16\x03\x01\x02\x00") is None  # a TLS hello on a plain port
    assert parse_head(head("GET /ws HTTP/1.1", "no colon here")) is None


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=400))
def test_any_bytes_parse_to_a_head_or_none(data: bytes) -> None:
    """Whatever arrives, parsing returns a head or None; it never raises."""
    parsed = parse_head(data)
    assert parsed is None or isinstance(parsed.is_websocket, bool)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(["GET", "POST", "get"]),
    st.sampled_from(["/ws", "/", "/ws?x=1", "/other"]),
    st.dictionaries(
        st.from_regex(r"[A-Za-z-]{1,12}", fullmatch=True),
        st.from_regex(r"[ -~]{0,20}", fullmatch=True).map(str.strip),
        max_size=5,
    ),
)
def test_heads_built_from_parts_parse_back(
    method: str, target: str, headers: dict[str, str]
) -> None:
    """A well-formed head parses back to its method, path and lower-cased headers."""
    lines = [f"{method} {target} HTTP/1.1", *(f"{k}: {v}" for k, v in headers.items())]
    parsed = parse_head(head(*lines))
    assert parsed is not None
    assert (parsed.method, parsed.path) == (method, target.partition("?")[0])
    expected: dict[str, str] = {}
    for k, v in headers.items():
        expected[k.lower()] = v
    assert parsed.headers == expected


# -- bare CR or LF --------------------------------------------------------------------


def test_a_cr_or_lf_outside_a_crlf_is_bare() -> None:
    """Only CRLF pairs are line ends; a lone LF or CR anywhere is bare, a trailing CR not yet."""
    assert not bare_line_break(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert bare_line_break(b"GET / HTTP/1.1\nHost: a")
    assert bare_line_break(b"GET / HTTP/1.1\r\nOrigin: x\nforged: y\r\n")
    assert bare_line_break(b"GET / HTTP/1.1\r\nOrigin: x\rforged\r\n")
    assert bare_line_break(b"a\n\r")  # LF then CR is no CRLF
    assert not bare_line_break(b"GET / HTTP/1.1\r")  # its LF may be in the next read
    assert bare_line_break(b"GET / HTTP/1.1\r\r")
    # A range that starts on the CR a previous read ended with.
    assert not bare_line_break(b"Host: a\r\nB: c", 7)
    assert bare_line_break(b"xx\r\nA: b\n", 2, 9)


def test_parse_head_refuses_a_bare_cr_or_lf() -> None:
    """A head with a bare LF or CR in a header is not parsed into something routable."""
    assert parse_head(head("GET /ws HTTP/1.1", "Upgrade: websocket", "Origin: a\nb: c")) is None
    assert parse_head(head("GET /ws HTTP/1.1", "Origin: a\rb")) is None
    assert parse_head(b"GET /ws HTTP/1.1\r\nOrigin: a\r") is None


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.integers(min_value=1, max_value=20))
def test_reading_in_pieces_finds_what_reading_at_once_finds(data: bytes, size: int) -> None:
    """Checking each new piece (from the CR that ended the last) agrees with checking it all."""
    found = False
    for end in range(size, len(data) + size, size):
        stop = min(end, len(data))
        seen = max(stop - size, 0)
        start = seen - 1 if data.endswith(b"\r", 0, seen) else seen
        found = found or bare_line_break(data, start, stop)
    assert found == bare_line_break(data)


# -- the client's address behind trusted proxies --------------------------------------


def test_the_client_is_the_right_most_untrusted_hop() -> None:
    """Behind trusted proxies the client is the right-most hop not trusted; else the peer."""
    proxies = TrustedProxies(["127.0.0.1", "10.0.0.0/8", "2001:db8::1"])
    assert proxies.client("127.0.0.1", ["6.6.6.6, 198.51.100.4"]) == "198.51.100.4"
    assert proxies.client("127.0.0.1", ["6.6.6.6", "198.51.100.4, 10.1.2.3"]) == "198.51.100.4"
    assert proxies.client("10.9.9.9", ["198.51.100.4,10.0.0.2"]) == "198.51.100.4"
    assert proxies.client("::ffff:127.0.0.1", [" 2001:DB8::5 "]) == "2001:db8::5"
    assert proxies.client("2001:db8::1", ["198.51.100.4"]) == "198.51.100.4"
    # Not from a trusted proxy: the header is anyone's to write, so it is ignored.
    assert proxies.client("198.51.100.9", ["1.2.3.4"]) == "198.51.100.9"
    # No header, or nothing but trusted hops: the last trusted hop.
    assert proxies.client("127.0.0.1", []) == "127.0.0.1"
    assert proxies.client("127.0.0.1", ["10.0.0.7"]) == "10.0.0.7"
    # A hop that is not an address stops the walk (it came from the client).
    assert proxies.client("127.0.0.1", ["garbage, 10.0.0.7"]) == "10.0.0.7"
    assert proxies.client("127.0.0.1", ["1.2.3.4, unknown"]) == "127.0.0.1"
    assert not TrustedProxies() and "127.0.0.1" not in TrustedProxies()


def test_a_trusted_proxy_must_be_an_address_or_a_network() -> None:
    """Anything else is a ValueError (the CLI turns it into one line and exit 2)."""
    for bad in ("nginx", "10.0.0.0/33", "", "1.2.3.4:80"):
        with pytest.raises(ValueError):
            TrustedProxies([bad])


# -- connections per address ----------------------------------------------------------


def test_connection_counts_cap_each_address_and_skip_trusted_proxies() -> None:
    """Over the cap is over (HTTP); heads wait up to a multiple; trusted ones uncounted."""
    counts = ConnectionCounts(2, TrustedProxies(["127.0.0.1"]))
    opened = [counts.open("192.0.2.1") for _ in range(2 * HEADS_FACTOR + 1)]
    assert opened == [True] * (2 * HEADS_FACTOR) + [False]
    assert counts.over("192.0.2.1")
    for _ in range(2 * HEADS_FACTOR - 2):
        counts.close("192.0.2.1")
    assert counts["192.0.2.1"] == 2 and not counts.over("192.0.2.1")
    assert counts.open("192.0.2.2") is True
    assert counts.open("127.0.0.1") is None and counts["127.0.0.1"] == 0
    for _ in range(2):
        counts.close("192.0.2.1")
    counts.close("192.0.2.2")
    assert counts["192.0.2.1"] == counts["192.0.2.2"] == 0
    assert ConnectionCounts(0).open("192.0.2.1") is None  # no cap: nothing counted
