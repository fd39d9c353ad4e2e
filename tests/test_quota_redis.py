"""RedisQuotas against a real Redis: limits shared by nodes, a dead node's claims expiring, outages.

Each "node" is a :class:`RedisQuotas` of its own on one fresh key prefix. A
node that crashed is one whose tasks stopped and whose client went away
without giving anything back (what a killed process leaves).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import pytest
import redis.asyncio as aioredis

from roomcast.quota.memory import ACCOUNT_FREE_FAILURES, ADDRESS_LOGIN_BURST
from roomcast.quota.redis import RedisQuotas
from tests.netproxy import TcpProxy
from tests.redis_servers import RedisClusterRig
from tests.services import REDIS_URL, redis_prefix

pytestmark = pytest.mark.redis

#: Seconds a test node lives without refreshing: short, so expiry is quick to see.
TTL = 0.6


@pytest.fixture
def prefix() -> Iterator[str]:
    with redis_prefix() as value:
        yield value


Start = Callable[..., Awaitable[RedisQuotas]]


@pytest.fixture
async def start(prefix: str) -> AsyncIterator[Start]:
    """Start RedisQuotas nodes on the test's prefix; closed (or already crashed) at the end."""
    nodes: list[RedisQuotas] = []

    async def node(node_id: str, url: str = REDIS_URL, ttl: float = TTL) -> RedisQuotas:
        quotas = RedisQuotas(url, prefix=prefix, ttl=ttl)
        await quotas.start(node_id)
        nodes.append(quotas)
        return quotas

    yield node
    for quotas in nodes:
        await quotas.close()


async def crash(quotas: RedisQuotas) -> None:
    """Stop ``quotas`` as a killed process would: nothing given back."""
    quotas._closing = True  # a cancellation may be lost in a redis-py pipeline
    for task in quotas._tasks:
        task.cancel()
    quotas._tasks = []
    client, quotas._redis = quotas._redis, None
    if client is not None:
        await client.aclose()


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    """Wait until ``await check()`` holds; fail after ``timeout`` seconds."""
    async with asyncio.timeout(timeout):
        while not await check():
            await asyncio.sleep(0.02)


async def keys(prefix: str) -> list[str]:
    """Every key under ``prefix``, sorted."""
    client = aioredis.Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        return sorted([key async for key in client.scan_iter(match=f"{prefix}*")])
    finally:
        await client.aclose()


# -- guest nicknames ---------------------------------------------------------------------


async def test_a_guest_nickname_is_unique_over_nodes_in_any_case(start: Start) -> None:
    """A nickname taken on one node is refused on another, whatever its case."""
    a, b = await start("a"), await start("b")
    assert await a.claim_guest("Ann", "c1")
    assert not await b.claim_guest("ann", "c2")
    assert not await b.claim_guest("ANN", "c3")
    assert not await a.claim_guest("aNN", "c4")
    assert await b.claim_guest("bob", "c2")


async def test_a_released_nickname_is_free_on_every_node(start: Start) -> None:
    """Once its connection ends on one node, another node may give the name out."""
    a, b = await start("a"), await start("b")
    assert await a.claim_guest("ann", "c1")
    a.release_guest("ann", "c1")
    await eventually(lambda: b.claim_guest("ann", "c2"))
    assert not await a.claim_guest("ann", "c3")


async def test_a_nickname_given_back_and_taken_again_on_one_node_stays_taken(
    start: Start,
) -> None:
    """Released and claimed again at once by the same connection: the release does not undo it."""
    a, b = await start("a"), await start("b")
    for _ in range(20):
        assert await a.claim_guest("ann", "c1")
        a.release_guest("ann", "c1")
    assert await a.claim_guest("ann", "c1")
    await asyncio.sleep(0.1)  # the releases are sent
    assert not await b.claim_guest("ann", "c2")


async def test_another_connection_on_the_same_node_takes_a_name_given_back(start: Start) -> None:
    """A name released on a node goes to its next connection there before Redis hears of it."""
    a, b = await start("a"), await start("b")
    assert await a.claim_guest("ann", "c1")
    a.release_guest("ann", "c1")
    assert await a.claim_guest("ann", "c2")
    await asyncio.sleep(0.1)
    assert not await b.claim_guest("ann", "c3")


async def test_a_crashed_nodes_nickname_is_free_after_its_ttl(start: Start, prefix: str) -> None:
    """A node that died without giving back holds a name at most TTL; the reaper cleans up."""
    a, b = await start("a"), await start("b")
    assert await a.claim_guest("ann", "c1")
    assert await a.add_connection("dora", "c9", 5)
    await crash(a)
    assert not await b.claim_guest("ann", "c2")
    loop = asyncio.get_running_loop()
    crashed = loop.time()
    await eventually(lambda: b.claim_guest("ann", "c2"))
    assert loop.time() - crashed <= TTL + 0.5
    await b.refresh()  # reaps what is left of a
    assert [key for key in await keys(prefix) if "{q:node:a-" in key or "dora" in key] == []


# -- connections per user -------------------------------------------------------------------


async def test_the_cap_counts_a_users_connections_on_every_node(start: Start) -> None:
    """One connection on each of two nodes fills a cap of 2 for both nodes."""
    a, b = await start("a"), await start("b")
    assert await a.add_connection("dora", "c1", 2)
    assert await b.add_connection("dora", "c2", 2)
    assert not await a.add_connection("dora", "c3", 2)
    assert not await b.add_connection("dora", "c4", 2)
    assert await b.add_connection("eve", "c5", 2)


async def test_a_closed_connection_frees_its_place_on_every_node(start: Start) -> None:
    """When one node's connection ends, another node may count a new one."""
    a, b = await start("a"), await start("b")
    assert await a.add_connection("dora", "c1", 2)
    assert await b.add_connection("dora", "c2", 2)
    a.remove_connection("dora", "c1")
    await eventually(lambda: b.add_connection("dora", "c3", 2))
    assert not await a.add_connection("dora", "c4", 2)


async def test_a_place_given_back_here_is_reused_here_at_once(start: Start) -> None:
    """A node at the cap that closes a connection counts a new one before Redis hears of it."""
    a = await start("a")
    assert await a.add_connection("dora", "c1", 1)
    a.remove_connection("dora", "c1")
    assert await a.add_connection("dora", "c2", 1)
    assert not await a.add_connection("dora", "c3", 1)


async def test_parallel_connects_never_pass_the_cap(start: Start) -> None:
    """Forty connects at once over two nodes: exactly the cap of them count."""
    a, b = await start("a"), await start("b")
    results = await asyncio.gather(
        *((a if n % 2 else b).add_connection("dora", f"c{n}", 3) for n in range(40))
    )
    assert sum(results) == 3


async def test_a_crashed_nodes_connections_stop_counting_after_its_ttl(start: Start) -> None:
    """A dead node's connections count until its TTL passes, then no more."""
    a, b = await start("a"), await start("b")
    assert await a.add_connection("dora", "c1", 2)
    assert await a.add_connection("dora", "c2", 2)
    await crash(a)
    assert not await b.add_connection("dora", "c3", 2)
    await asyncio.sleep(TTL + 0.1)
    assert await b.add_connection("dora", "c3", 2)
    assert await b.add_connection("dora", "c4", 2)
    assert not await b.add_connection("dora", "c5", 2)


async def test_a_closed_node_gives_everything_back(start: Start, prefix: str) -> None:
    """close() releases the node's names and counts and takes it out of the node list."""
    a, b = await start("a"), await start("b")
    assert await a.claim_guest("ann", "c1")
    assert await a.add_connection("dora", "c2", 1)
    await a.close()
    assert await b.claim_guest("ann", "c3")
    assert await b.add_connection("dora", "c4", 1)
    assert [key for key in await keys(prefix) if "{q:node:a-" in key] == []


# -- logins --------------------------------------------------------------------------------


async def test_failed_logins_on_one_node_delay_the_account_on_another(start: Start) -> None:
    """Five failures on node a; node b makes the account's next attempt wait."""
    a, b = await start("a"), await start("b")
    for _ in range(ACCOUNT_FREE_FAILURES):
        assert await a.login_check("192.0.2.1", "alice") == 0.0
        assert await a.login_attempt("192.0.2.1", "alice", exists=True) == 0.0
    wait = await b.login_check("203.0.113.5", "ALICE")
    assert 0.5 < wait <= 1.0
    assert 0.5 < await b.login_attempt("203.0.113.5", "Alice", exists=True) <= 1.0
    assert await b.login_check("203.0.113.5", "bob") == 0.0


async def test_the_wait_doubles_with_each_failure_over_nodes(start: Start) -> None:
    """Failures past the free ones, alternating nodes, double the wait: 1 s, then 2 s."""
    a, b = await start("a"), await start("b")
    for n in range(ACCOUNT_FREE_FAILURES):
        assert await (a if n % 2 else b).login_attempt("192.0.2.1", "alice", exists=True) == 0
    await asyncio.sleep(1.05)
    assert await a.login_attempt("192.0.2.1", "alice", exists=True) == 0.0
    assert 1.5 < await b.login_check("192.0.2.1", "alice") <= 2.0


async def test_a_success_forgets_failures_and_trusts_the_address_everywhere(start: Start) -> None:
    """A login that worked on a clears the failures; its address skips the delay on b."""
    a, b = await start("a"), await start("b")
    await a.login_succeeded("198.51.100.1", "alice")
    for _ in range(ACCOUNT_FREE_FAILURES + 1):
        await b.login_attempt("192.0.2.1", "alice", exists=True)
    assert await b.login_check("192.0.2.1", "alice") > 0
    assert await b.login_check("198.51.100.1", "alice") == 0.0
    assert await b.login_attempt("198.51.100.1", "alice", exists=True) == 0.0
    # Trusted once: an attempt from it that fails makes it unknown until it succeeds.
    assert await a.login_check("198.51.100.1", "alice") > 0
    await a.login_succeeded("198.51.100.1", "alice")
    assert await b.login_check("192.0.2.1", "alice") == 0.0


async def test_an_address_bucket_is_shared_by_the_nodes(start: Start) -> None:
    """An address's burst is spent over both nodes together, then it waits 2 s a try."""
    a, b = await start("a"), await start("b")
    for n in range(ADDRESS_LOGIN_BURST):
        node = a if n % 2 else b
        assert await node.login_attempt("192.0.2.1", f"name{n}", exists=False) == 0.0
    wait = await a.login_attempt("192.0.2.1", "another", exists=False)
    assert 1.9 < wait <= 2.0
    assert 1.9 < await b.login_check("192.0.2.1", "more") <= 2.0
    assert await b.login_check("192.0.2.2", "more") == 0.0


async def test_ipv6_logins_count_per_64(start: Start) -> None:
    """Addresses of one IPv6 /64 share one bucket in Redis too."""
    a = await start("a")
    for n in range(ADDRESS_LOGIN_BURST):
        assert await a.login_attempt(f"2001:db8:1:2::{n + 1:x}", f"n{n}", exists=False) == 0.0
    assert await a.login_attempt("2001:db8:1:2:ffff::1", "x", exists=False) > 0
    assert await a.login_attempt("2001:db8:1:3::1", "x", exists=False) == 0.0


# -- Redis away ----------------------------------------------------------------------------


async def test_without_redis_a_node_counts_alone_and_says_so_once(
    start: Start, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis unreachable at start: names and caps hold on the node; one warning."""
    proxy = TcpProxy(6379)
    await proxy.start()
    proxy.down()
    try:
        with caplog.at_level(logging.WARNING, logger="roomcast.quota"):
            a = await start("a", url=f"redis://127.0.0.1:{proxy.port}/0")
            assert await a.claim_guest("ann", "c1")
            assert not await a.claim_guest("ANN", "c2")
            assert await a.add_connection("dora", "c3", 1)
            assert not await a.add_connection("dora", "c4", 1)
            for _ in range(ACCOUNT_FREE_FAILURES):
                assert await a.login_attempt("192.0.2.1", "alice", exists=True) == 0.0
            assert await a.login_check("192.0.2.1", "alice") > 0
        warnings = [r for r in caplog.records if "cannot reach Redis" in r.getMessage()]
        assert len(warnings) == 1
    finally:
        await proxy.stop()


async def test_after_an_outage_redis_learns_what_happened_meanwhile(start: Start) -> None:
    """Claims made while Redis was away are written back; releases are sent."""
    proxy = TcpProxy(6379)
    await proxy.start()
    try:
        a = await start("a", url=f"redis://127.0.0.1:{proxy.port}/0", ttl=5.0)
        b = await start("b", ttl=5.0)
        assert await a.claim_guest("ann", "c1")
        assert await a.add_connection("dora", "c2", 1)
        proxy.down()
        assert await a.claim_guest("bob", "c3")  # counted on a alone
        a.release_guest("ann", "c1")
        assert await a.add_connection("eve", "c4", 1)
        proxy.up()
        await a.refresh()
        assert not await b.claim_guest("bob", "c5")
        assert not await b.add_connection("eve", "c6", 1)
        assert not await b.add_connection("dora", "c7", 1)
        assert await b.claim_guest("ann", "c8")
    finally:
        await proxy.stop()


async def test_a_redis_that_lost_its_data_is_filled_again(start: Start, prefix: str) -> None:
    """Every key gone (a Redis restart): the next refresh claims anew under a new incarnation."""
    a, b = await start("a", ttl=5.0), await start("b", ttl=5.0)
    assert await a.claim_guest("ann", "c1")
    assert await a.add_connection("dora", "c2", 1)
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        await client.delete(*await keys(prefix))
    finally:
        await client.aclose()
    await a.refresh()
    assert not await b.claim_guest("ann", "c3")
    assert not await b.add_connection("dora", "c4", 1)
    assert any("{q:node:a-2}" in key for key in await keys(prefix))


# -- Redis Cluster -------------------------------------------------------------------------


async def test_on_a_redis_cluster_every_limit_holds(
    redis_cluster: RedisClusterRig, prefix: str
) -> None:
    """Against three masters: names, caps, logins and a dead node's expiry all work."""
    nodes = []
    try:
        for node_id in ("a", "b"):
            quotas = RedisQuotas(redis_cluster.url(), prefix=prefix, ttl=TTL)
            await quotas.start(node_id)
            nodes.append(quotas)
        a, b = nodes
        assert a._healthy and b._healthy
        assert await a.claim_guest("ann", "c1")
        assert not await b.claim_guest("ANN", "c2")
        assert await a.add_connection("dora", "c3", 2)
        assert await b.add_connection("dora", "c4", 2)
        assert not await a.add_connection("dora", "c5", 2)
        for _ in range(ACCOUNT_FREE_FAILURES):
            assert await a.login_attempt("192.0.2.1", "alice", exists=True) == 0.0
        assert await b.login_check("203.0.113.5", "alice") > 0
        await b.login_succeeded("203.0.113.5", "alice")
        await crash(a)
        await eventually(lambda: b.claim_guest("ann", "c2"))
        assert await b.add_connection("dora", "c5", 2)
        await b.refresh()
        assert b._healthy
    finally:
        for quotas in nodes:
            with contextlib.suppress(Exception):
                await quotas.close()
