"""Numbers past what the store can hold are refused by the parser, over real sockets.

JSON decodes integers up to 2**64 - 1 as ints, and no database binds one
past 2**63 - 1: a ``before``/``since`` that large used to reach the store
and come back as ``internal``, with an OverflowError traceback in the log.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.integration.serverproc import ServerFactory, ServerProcess
from tests.integration.users import SECRET, expect_pong, sign_up, user_ws
from tests.integration.wsclient import RECV_TIMEOUT, recv_json, send_json

#: Each frame, and the field its error must name.
HUGE_SEQS = [
    ("history", {"room": "lobby", "before": 2**63}, "before"),
    ("history", {"room": "lobby", "before": 2**64 - 1}, "before"),
    ("join", {"room": "lobby", "since": 2**63}, "since"),
    ("join", {"room": "fresh", "since": 2**64 - 1}, "since"),
    ("direct_history", {"since": 2**63}, "since"),
    ("direct_history", {"before": 2**64 - 1}, "before"),
    ("history", {"room": "lobby", "before": 2**64}, "before"),  # decoded as a float
]


@pytest.fixture
def server(server_factory: ServerFactory) -> ServerProcess:
    """A server with a known secret, so a registered user can ask for direct_history."""
    return server_factory("--secret", SECRET)


async def test_seqs_past_2_62_are_invalid_message_and_log_no_traceback(
    server: ServerProcess,
) -> None:
    """history, join and direct_history with a seq past 2**62 get invalid_message naming it."""
    ws = await user_ws(server, await sign_up(server, "alice"))
    for n, (kind, payload, field) in enumerate(HUGE_SEQS):
        await send_json(ws, kind, payload, id=f"s{n}")
        async with asyncio.timeout(RECV_TIMEOUT):
            # The answer, or an error without an id (as ``internal`` was).
            while (reply := await recv_json(ws)).get("id") != f"s{n}" and reply["type"] != "error":
                pass
        assert reply["type"] == "error", (kind, payload, reply)
        assert reply["payload"]["code"] == "invalid_message", (kind, payload, reply)
        assert f"payload.{field}" in reply["payload"]["message"]
    await expect_pong(ws, "still-open")
    await ws.close()
    log = server.stderr()
    assert "Traceback" not in log and "OverflowError" not in log, log
    assert "internal error" not in log, log
