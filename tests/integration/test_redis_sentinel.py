"""roomcast nodes on Redis behind Sentinel: chat across nodes, and a master that dies mid-chat.

The Sentinel setup is tests/redis_servers.py's (one master, one replica,
one Sentinel, of the test's own); the nodes are given its
``redis+sentinel://127.0.0.1:PORT/svc`` URL and ask the Sentinel where the
master is, again after it moves.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.redis_nodes import (
    Clients,
    Conversation,
    Nodes,
    Received,
    all_received,
    chat_through_fault,
    chats,
    join,
    numbered_chat,
    receive,
)
from tests.integration.wsclient import send_json
from tests.redis_servers import SentinelRig
from tests.services import fresh_database, fresh_redis_prefix

pytestmark = pytest.mark.redis

#: Seconds from SIGKILL of the master to every acked message at the receiver:
#: the Sentinel promotes the replica in about 3 s, the nodes reconnect within
#: their 2 s backoff and catch up from the store; 20 s leaves room for a loaded CI.
FAILOVER_DELIVERY = 20.0


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[Nodes]:
    """No nodes yet, on a fresh database and key prefix; all stopped after the test."""
    with fresh_database() as url:
        group = Nodes(tmp_path, url, fresh_redis_prefix())
        try:
            yield group
        finally:
            group.stop()


async def test_two_nodes_on_sentinel_chat_and_survive_a_master_failover(
    redis_sentinel: SentinelRig, nodes: Nodes, ws_clients: Clients
) -> None:
    """Chat crosses nodes; kill the master mid-chat: each acked message arrives once, in order."""
    a, b = await asyncio.to_thread(nodes.start_all, [redis_sentinel.url] * 2)
    sender, _ = await ws_clients.guest(a)
    receiver, _ = await ws_clients.guest(b)
    for ws in (sender, receiver):
        await join(ws, "sentry")
    await send_json(receiver, "chat", {"room": "sentry", "message": "hello from b"}, id="hi")
    (hello,) = await chats(sender, {"sentry"}, 1)
    assert (hello["seq"], hello["message"]) == (1, "hello from b")
    assert (await chats(receiver, {"sentry"}, 1)) == [hello]  # its own, read before the rest
    got = Received()
    reader = asyncio.ensure_future(receive(receiver, "sentry", got))
    sent = Conversation()
    stop = asyncio.Event()
    talker = asyncio.ensure_future(numbered_chat(sender, "sentry", sent, stop, gap=0.05))
    try:
        await all_received([got], 10, timeout=10)
        killed_at = time.monotonic()
        dead, promoted = await asyncio.to_thread(redis_sentinel.fail_over)
        failover = time.monotonic() - killed_at
        total = await chat_through_fault(
            [a, b], sent, stop, talker, [got], killed_at, FAILOVER_DELIVERY
        )
        delivered = time.monotonic() - killed_at - 0.5
    except (TimeoutError, AssertionError) as exc:
        raise AssertionError(
            f"sent {len(sent.seqs)}, received {len(got.messages)}\n{nodes.stderr()}"
        ) from exc
    finally:
        stop.set()
        for task in (reader, talker):
            task.cancel()
    assert promoted != dead
    assert sent.seqs == list(range(2, total + 2))
    assert [m["seq"] for m in got.messages] == sent.seqs
    assert [m["message"] for m in got.messages] == sent.texts
    late = max(t - sent.sent_at[i] for i, t in enumerate(got.times))
    print(
        f"sentinel failover {failover:.1f} s; all {total} acked messages at the receiver"
        f" {delivered:.1f} s after the kill; slowest ack {max(sent.ack_waits):.2f} s;"
        f" slowest delivery {late:.2f} s"
    )


def test_a_service_no_sentinel_knows_is_one_line_and_exit_2(
    redis_sentinel: SentinelRig, tmp_path: Path
) -> None:
    """Sentinels that name no master for the service: one line on stderr, exit 2."""
    with fresh_database() as database:
        result = subprocess.run(
            [
                *(sys.executable, "-m", "roomcast", "serve", "--port", "0"),
                *("--database-url", database, "--data-dir", str(tmp_path / "data")),
                *(
                    "--redis-url",
                    f"redis+sentinel://127.0.0.1:{redis_sentinel.sentinel_port}/nosuch",
                ),
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert "no Sentinel named a master" in result.stderr
