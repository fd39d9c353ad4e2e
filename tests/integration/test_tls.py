"""TLS: https:// and wss:// with a throwaway CA, and nothing older than TLS 1.2."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import warnings
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
import trustme
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidHandshake

from tests.integration.serverproc import ServerFactory, ServerProcess
from tests.integration.wsclient import RECV_TIMEOUT, recv_type, send_json, welcome


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    """A certificate authority that exists only for these tests."""
    return trustme.CA()


@pytest.fixture
def tls_server(ca: trustme.CA, tmp_path: Path, server_factory: ServerFactory) -> ServerProcess:
    """A server with a certificate for 127.0.0.1 and localhost, signed by ``ca``."""
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert_path, key_path = tmp_path / "server.pem", tmp_path / "server.key"
    for blob in cert.cert_chain_pems:
        with cert_path.open("ab") as f:
            f.write(blob.bytes())
    cert.private_key_pem.write_to_path(str(key_path))
    return server_factory("--tls-cert", str(cert_path), "--tls-key", str(key_path))


def client_context(ca: trustme.CA) -> ssl.SSLContext:
    """A client context that trusts ``ca``."""
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


@contextlib.contextmanager
def legacy_tls_allowed() -> Iterator[None]:
    """Silence the deprecation of TLS 1.0/1.1 while building a probe context."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


def tls11_context(ca: trustme.CA) -> ssl.SSLContext:
    """A client context that offers TLS 1.1 only (and ciphers that allow it)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ca.configure_trust(context)
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    with legacy_tls_allowed():
        context.minimum_version = ssl.TLSVersion.TLSv1_1
        context.maximum_version = ssl.TLSVersion.TLSv1_1
    return context


async def handshake(port: int, context: ssl.SSLContext) -> str:
    """Complete a TLS handshake with 127.0.0.1:``port``; return the version used."""
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, ssl=context), RECV_TIMEOUT
    )
    try:
        version = writer.get_extra_info("ssl_object").version()
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await writer.wait_closed()
    return str(version)


async def local_tls11_works(ca: trustme.CA) -> bool:
    """Whether this machine's OpenSSL can do TLS 1.1 at all (against a local server)."""
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    try:
        server_context.set_ciphers("DEFAULT:@SECLEVEL=0")
        with legacy_tls_allowed():
            server_context.minimum_version = ssl.TLSVersion.TLSv1_1
            server_context.maximum_version = ssl.TLSVersion.TLSv1_1
        client = tls11_context(ca)
    except (ssl.SSLError, ValueError):
        return False

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    probe = await asyncio.start_server(hang_up, "127.0.0.1", 0, ssl=server_context)
    try:
        port = probe.sockets[0].getsockname()[1]
        return await handshake(port, client) == "TLSv1.1"
    except (OSError, ssl.SSLError):
        return False
    finally:
        probe.close()
        await probe.wait_closed()


async def test_listening_line_says_https_and_health_answers(
    tls_server: ServerProcess, ca: trustme.CA
) -> None:
    """With a cert and key the server listens on https://, and /health works over it."""
    assert tls_server.url.startswith("https://127.0.0.1:")
    assert tls_server.stdout_lines[0].strip() == f"roomcast listening on {tls_server.url}"
    connector = aiohttp.TCPConnector(ssl=client_context(ca))
    async with aiohttp.ClientSession(connector=connector) as http:
        async with http.get(tls_server.http_url("/health")) as resp:
            assert resp.status == 200
            assert await resp.text() == "WebSocket server is running"


async def test_wss_chat_between_two_clients(tls_server: ServerProcess, ca: trustme.CA) -> None:
    """Two wss:// clients chat with each other."""
    context = client_context(ca)
    url = tls_server.ws_url()
    assert url.startswith("wss://")
    async with connect(url, ssl=context) as a, connect(url, ssl=context) as b:
        (system_a, _), _ = await welcome(a), await welcome(b)
        await send_json(a, "chat", {"message": "over tls"}, id="t1")
        got = await recv_type(b, "chat")
        assert got["payload"]["message"] == "over tls"
        assert got["payload"]["from"] == system_a["payload"]["user"]["name"]
        ack = await recv_type(a, "ack")
        assert ack["id"] == "t1"
        await send_json(b, "chat", {"message": "and back"})
        back = await recv_type(a, "chat")
        assert back["payload"]["message"] == "and back"


async def test_plain_ws_to_the_tls_port_fails(tls_server: ServerProcess, ca: trustme.CA) -> None:
    """A plain ws:// handshake on the TLS port gets no WebSocket; the server stays up."""
    with pytest.raises((OSError, InvalidHandshake)):
        async with connect(f"ws://127.0.0.1:{tls_server.port}/ws", open_timeout=RECV_TIMEOUT):
            pass
    assert await handshake(tls_server.port, client_context(ca)) in ("TLSv1.2", "TLSv1.3")


async def test_tls_1_1_is_refused_and_1_2_accepted(
    tls_server: ServerProcess, ca: trustme.CA
) -> None:
    """A TLS 1.1-only client cannot connect; TLS 1.2 and 1.3 clients can."""
    tls12 = client_context(ca)
    tls12.maximum_version = ssl.TLSVersion.TLSv1_2
    assert await handshake(tls_server.port, tls12) == "TLSv1.2"
    tls13 = client_context(ca)
    tls13.minimum_version = ssl.TLSVersion.TLSv1_3
    assert await handshake(tls_server.port, tls13) == "TLSv1.3"
    if await local_tls11_works(ca):
        # This OpenSSL speaks TLS 1.1 (shown against a local server): the
        # refusal below comes from roomcast.
        with pytest.raises((OSError, ssl.SSLError)):
            await handshake(tls_server.port, tls11_context(ca))
    else:
        # No TLS 1.1 client can be built here: the server must still take
        # nothing below 1.2, so a client capped at 1.2 gets exactly 1.2.
        assert await handshake(tls_server.port, tls12) == "TLSv1.2"
