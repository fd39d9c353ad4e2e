"""The Redis broker's faults: dead nodes reaped once, subscriptions and Redis itself lost."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio as aioredis

from roomcast.broker.base import Members, Publication
from roomcast.broker.redis import RedisBroker
from roomcast.exceptions import BrokerError
from tests.broker.test_contract import Recorder, eventually, settle
from tests.netproxy import TcpProxy
from tests.services import REDIS_URL, kill_redis_clients, redis_prefix

pytestmark = pytest.mark.redis


@pytest.fixture
def prefix() -> Iterator[str]:
    with redis_prefix() as value:
        yield value


@pytest.fixture
async def raw() -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(REDIS_URL)
    yield client
    await client.aclose()


async def started(
    url: str, prefix: str, node_id: str, ttl: float = 1.0
) -> tuple[RedisBroker, Recorder]:
    broker = RedisBroker(url, prefix=prefix, presence_ttl=ttl)
    recorder = Recorder()
    await broker.start(node_id, recorder)
    return broker, recorder


async def test_a_dead_nodes_users_leave_once(prefix: str, raw: aioredis.Redis) -> None:
    """A node that stopped refreshing is reaped by one live node, which tells each leave once."""
    # What a node killed mid-run leaves behind: its presence, and a time already past.
    await raw.zadd(f"{prefix}{{nodes}}", {"dead": 1})
    await raw.sadd(f"{prefix}{{n:dead}}", "r\nann", "r\nbob", "s\nann")
    await raw.hset(f"{prefix}{{r:r}}:users", mapping={"ann": 1, "bob": 2})
    await raw.sadd(f"{prefix}{{r:r}}:nodes", "dead\nann", "dead\nbob", "live\nbob")
    await raw.hset(f"{prefix}{{r:s}}:users", mapping={"ann": 1})
    await raw.sadd(f"{prefix}{{r:s}}:nodes", "dead\nann")
    brokers = [await started(REDIS_URL, prefix, n) for n in ("b", "c")]
    try:
        everyone = lambda: [e for _, got in brokers for e in got.presence]  # noqa: E731
        await eventually(lambda: len(everyone()) == 2)
        await settle()
        assert sorted(everyone()) == [("r", "ann", False, 1), ("s", "ann", False, 0)]
        assert await brokers[0][0].members("r", 10) == Members(["bob"], 1)
        assert await raw.exists(f"{prefix}{{n:dead}}") == 0
        assert await raw.zscore(f"{prefix}{{nodes}}", "dead") is None
    finally:
        for broker, _ in brokers:
            await broker.close()


async def test_killed_subscription_resubscribes_and_asks_to_catch_up(prefix: str) -> None:
    """A broker whose subscription Redis killed resubscribes, asks to catch up, delivers again."""
    (a, _), (b, got_b) = (
        await started(REDIS_URL, prefix, "a"),
        await started(REDIS_URL, prefix, "b"),
    )
    try:
        await b.subscribe_room("r")
        assert await kill_redis_clients(prefix, subscribers_only=True) == 2
        await eventually(lambda: got_b.resyncs >= 1)
        await b.ping()
        a.publish(Publication("a", "r", None, b"after", seq=1))
        await eventually(lambda: [p.frame for p in got_b.publications] == [b"after"])
    finally:
        await a.close()
        await b.close()


async def test_redis_unreachable_then_back(prefix: str) -> None:
    """While Redis is cut off ping fails; publications made meanwhile arrive once it is back."""
    port = int(REDIS_URL.rsplit(":", 1)[1].split("/")[0])
    proxy = TcpProxy(port)
    await proxy.start()
    url = f"redis://127.0.0.1:{proxy.port}/0"
    a, got_a = await started(url, prefix, "a")
    b, got_b = await started(REDIS_URL, prefix, "b")
    try:
        got_a.local = [("r", "ann")]
        a.presence_changed("r", "ann", True)
        await eventually(lambda: len(got_a.presence) == 1)
        proxy.down()
        with pytest.raises(BrokerError):
            for _ in range(100):
                await a.ping()
                await asyncio.sleep(0.05)
        await b.subscribe_room("r")
        a.publish(Publication("a", "r", None, b"while-down", seq=1))
        await asyncio.sleep(0.3)
        proxy.up()
        await eventually(lambda: [p.frame for p in got_b.publications] == [b"while-down"])
        await eventually(lambda: got_a.resyncs >= 1)
        await answers(a)
        # a may have been taken for dead meanwhile; its users are present again.
        await eventually(lambda: got_a.resyncs >= 1)
        for _ in range(100):
            if await b.members("r", 10) == Members(["ann"], 1):
                break
            await asyncio.sleep(0.05)
        assert await b.members("r", 10) == Members(["ann"], 1)
    finally:
        await a.close()
        await b.close()
        await proxy.stop()


async def answers(broker: RedisBroker, timeout: float = 10.0) -> None:
    """Wait until ``broker.ping()`` succeeds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            await broker.ping()
            return
        except BrokerError:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.05)


async def test_unreachable_redis_at_start_is_a_broker_error(prefix: str) -> None:
    """Starting against an address where no Redis listens fails with a clear BrokerError."""
    broker = RedisBroker("redis://127.0.0.1:1/0", prefix=prefix)
    with pytest.raises(BrokerError, match="cannot reach Redis at 127.0.0.1:1"):
        await broker.start("a", Recorder())
