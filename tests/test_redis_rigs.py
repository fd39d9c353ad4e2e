"""The Redis rigs of tests/redis_servers.py on their own: a real cluster and a real Sentinel.

No roomcast server here: these prove the rigs give the later tests what
they claim (three shards with a replica each, a failover in seconds, a
Sentinel that moves the master), and that roomcast's client
(:func:`roomcast.broker.redis_client.open_client`) follows both.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from redis.asyncio.cluster import RedisCluster

from roomcast.broker.redis_client import REDIS_ERRORS, close_client, open_client
from tests import redis_servers
from tests.redis_servers import FAILOVER_TIMEOUT, RedisClusterRig, SentinelRig, slot_of


def test_a_missing_redis_server_skips_and_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without redis-server the rigs skip a test, and fail it when CI=true."""
    monkeypatch.setattr(redis_servers, "REDIS_SERVER", "/nonexistent/redis-server")
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="ROOMCAST_TEST_REDIS_SERVER"):
        RedisClusterRig().start()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="redis-server is not available"):
        SentinelRig().start()


@pytest.mark.redis
async def test_the_cluster_has_three_shards_with_a_synced_replica_each(
    redis_cluster: RedisClusterRig,
) -> None:
    """Six nodes, three masters over all 16384 slots, and any node's URL opens a cluster client."""
    ranges = redis_cluster.slots()
    assert sum(r.end - r.start + 1 for r in ranges) == 16384
    assert len({r.master for r in ranges}) == 3 and all(len(r.replicas) == 1 for r in ranges)
    assert sorted(redis_cluster.ports) == sorted(
        [r.master for r in ranges] + [p for r in ranges for p in r.replicas]
    )
    keys = redis_cluster.one_per_shard(lambda name: f"{{rig-{name}}}:k")
    assert [redis_cluster.master_of(f"{{rig-{name}}}:k") for name in keys] == [
        r.master for r in ranges
    ]
    replica_url = f"redis://127.0.0.1:{ranges[0].replicas[0]}"
    client = await open_client(replica_url, name="rig-test")
    try:
        assert isinstance(client, RedisCluster)
        for name in keys:
            await client.set(f"{{rig-{name}}}:k", name)
        assert [await client.get(f"{{rig-{name}}}:k") for name in keys] == [
            name.encode() for name in keys
        ]
    finally:
        await client.aclose()
        redis_cluster.cleanup("{rig-")


@pytest.mark.redis
async def test_killing_a_master_promotes_its_replica_within_seconds(
    redis_cluster: RedisClusterRig,
) -> None:
    """SIGKILL a shard's master: its replica serves the slot in seconds and clients follow."""
    key = "{rig-failover}:k"
    (shard,) = [r for r in redis_cluster.slots() if r.start <= slot_of(key) <= r.end]
    client = await open_client(redis_cluster.url(), name="rig-test", retries=3)
    try:
        await client.set(key, "before")
        assert isinstance(client, RedisCluster)
        await client.execute_command("WAIT", 1, 1000, target_nodes=client.get_node_from_key(key))
        started = time.monotonic()
        dead = await asyncio.to_thread(redis_cluster.kill_master_of, key)
        assert dead == shard.master
        promoted = await asyncio.to_thread(redis_cluster.wait_for_failover, key, dead)
        took = time.monotonic() - started
        assert promoted == shard.replicas[0]
        assert took < FAILOVER_TIMEOUT
        # The client learns the new master (MOVED / a refreshed slot map) and the data is there.
        async with asyncio.timeout(10):
            while True:
                try:
                    assert await client.get(key) == b"before"
                    await client.set(key, "after")
                    break
                except REDIS_ERRORS:  # the old master's socket, while the client re-learns
                    await asyncio.sleep(0.1)
        assert await client.get(key) == b"after"
    finally:
        await client.aclose()
    # The fixture restarts the dead node; it comes back as the new master's replica.
    await asyncio.to_thread(redis_cluster.heal)
    (healed,) = [r for r in redis_cluster.slots() if r.start <= slot_of(key) <= r.end]
    assert (healed.master, healed.replicas) == (promoted, (dead,))
    redis_cluster.cleanup("{rig-")


@pytest.mark.redis
async def test_the_sentinel_promotes_the_replica_and_clients_follow(
    redis_sentinel: SentinelRig,
) -> None:
    """Kill the master behind a redis+sentinel:// URL: the replica takes over with the data."""
    client = await open_client(redis_sentinel.url, name="rig-test", retries=3)
    try:
        first = redis_sentinel.master_port()
        await client.set("{k}", "before")
        assert await client.execute_command("WAIT", 1, 1000) == 1
        started = time.monotonic()
        dead, promoted = await asyncio.to_thread(redis_sentinel.fail_over)
        assert dead == first and promoted != first
        assert time.monotonic() - started < FAILOVER_TIMEOUT
        async with asyncio.timeout(10):
            while True:
                try:
                    assert await client.get("{k}") == b"before"
                    await client.set("{k}", "after")
                    break
                except REDIS_ERRORS:  # the old master's socket, until the Sentinel is asked
                    await asyncio.sleep(0.1)
        info = await client.info("server")
        assert int(info["tcp_port"]) == promoted
    finally:
        await close_client(client)
