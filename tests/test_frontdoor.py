"""The front door's request-head parsing, which routes a connection (no sockets)."""

from __future__ import annotations

from hypothesis import given, settings, strategies as st

from roomcast.frontdoor import RequestHead, parse_head


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
