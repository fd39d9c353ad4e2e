"""The Redis broker: nodes share one Redis for fan-out and presence.

Fan-out: every node publishes to one channel, ``PREFIX pub``, and subscribes
to it; a node skips its own echo. A node's writer task sends everything
queued since its last write as *one* ``PUBLISH`` (publications framed by
length), so a busy node costs Redis one command per batch, not one per
message, and one writer keeps the node's publications in order. Redis sends
a channel's messages to every subscriber in the order it received them.

Presence, with keys that need no cleanup by a living node:

* ``PREFIX room:ROOM`` (hash) user -> on how many nodes the user is in ROOM;
* ``PREFIX node:ID`` (set) ``ROOM\\nUSER`` for every pair node ID counted;
* ``PREFIX nodes`` (sorted set) node id -> the time (Redis's clock, ms) by
  which it must refresh itself, or be taken for dead.

A user's join or leave changes the counts in a Lua script, which returns
whether the user entered or left the room in the whole service; only then
does the node tell the room, so each event is sent once. Every node
refreshes its entry every ``presence_ttl / 3`` seconds and reaps the nodes
whose time passed: one script removes a dead node's users and returns
those who left, and because it deletes what it read, only one node gets
them and sends the leave events.

Faults: the subscriber, the writer and the refresher each reconnect with
backoff and jitter. While any of them is cut off, :meth:`RedisBroker.ping`
fails (``/ready`` says 503). The writer keeps what it could not send and
sends it when Redis is back; after the subscriber reconnects the node is
told (:meth:`~roomcast.broker.base.BrokerEvents.on_resync`) to catch up
from the store on what it may have missed, and the node's presence is
rebuilt from its own connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import struct
import time
from collections import deque
from typing import Any, Final

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, TimeoutError as RedisTimeoutError

from ..exceptions import BrokerError
from .base import BrokerEvents, Members, Publication, decode_publication, encode_publication

__all__ = ["RedisBroker"]

logger = logging.getLogger("roomcast.broker.redis")

#: Most bytes sent in one PUBLISH.
MAX_BATCH_BYTES: Final = 512 * 1024
#: Publications kept while Redis is unreachable; older ones are dropped
#: (they are stored: nodes catch up from the store).
MAX_BACKLOG: Final = 100_000
#: Seconds between reconnection attempts: first, and at most.
RETRY_FIRST: Final = 0.05
RETRY_MAX: Final = 2.0
#: Seconds one Redis command may take before it counts as failed.
COMMAND_TIMEOUT: Final = 2.0

_LENGTH: Final = struct.Struct("!I")

_JOIN: Final = """
if redis.call('SADD', KEYS[1], ARGV[1]) == 1 then
  local n = redis.call('HINCRBY', KEYS[2], ARGV[2], 1)
  if n == 1 then return {1, redis.call('HLEN', KEYS[2])} end
end
return {0, redis.call('HLEN', KEYS[2])}
"""

_LEAVE: Final = """
if redis.call('SREM', KEYS[1], ARGV[1]) == 1 then
  local n = redis.call('HINCRBY', KEYS[2], ARGV[2], -1)
  if n <= 0 then
    redis.call('HDEL', KEYS[2], ARGV[2])
    return {1, redis.call('HLEN', KEYS[2])}
  end
end
return {0, redis.call('HLEN', KEYS[2])}
"""

_ALIVE: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
"""

# KEYS[1] the nodes sorted set; ARGV[1] the prefix. Returns room, user,
# users left in the room, for every user who left a room in the service.
_REAP: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {}
for _, node in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)) do
  local key = ARGV[1] .. 'node:' .. node
  for _, pair in ipairs(redis.call('SMEMBERS', key)) do
    local cut = string.find(pair, '\\n', 1, true)
    local room = string.sub(pair, 1, cut - 1)
    local user = string.sub(pair, cut + 1)
    local hkey = ARGV[1] .. 'room:' .. room
    if redis.call('HINCRBY', hkey, user, -1) <= 0 then
      redis.call('HDEL', hkey, user)
      table.insert(out, room)
      table.insert(out, user)
      table.insert(out, redis.call('HLEN', hkey))
    end
  end
  redis.call('DEL', key)
  redis.call('ZREM', KEYS[1], node)
end
return out
"""


def pack_batch(publications: list[bytes]) -> bytes:
    """Frame encoded publications by length into one payload."""
    parts = []
    for item in publications:
        parts.append(_LENGTH.pack(len(item)))
        parts.append(item)
    return b"".join(parts)


def unpack_batch(payload: bytes) -> list[bytes]:
    """The encoded publications in a payload of :func:`pack_batch`.

    Raises:
        ValueError: the payload is truncated or not one.
    """
    items = []
    offset, size = 0, len(payload)
    view = memoryview(payload)
    while offset < size:
        if offset + 4 > size:
            raise ValueError("truncated publication length")
        (length,) = _LENGTH.unpack_from(payload, offset)
        offset += 4
        if offset + length > size:
            raise ValueError("truncated publication")
        items.append(bytes(view[offset : offset + length]))
        offset += length
    return items


class RedisBroker:
    """Publications and presence through one Redis server.

    Args:
        url: ``redis://[user:password@]host:port/db`` (``rediss://`` for TLS).
        prefix: the start of every key and channel name.
        presence_ttl: seconds within which a live node refreshes its
            presence; a node silent for longer is taken for dead.
    """

    def __init__(self, url: str, *, prefix: str = "roomcast:", presence_ttl: float = 30.0) -> None:
        if presence_ttl <= 0:
            raise ValueError("presence_ttl must be positive")
        self.url = url
        self.prefix = prefix
        self.presence_ttl = presence_ttl
        self._channel = f"{prefix}pub"
        self._nodes_key = f"{prefix}nodes"
        self._redis: aioredis.Redis | None = None
        self._subscriber: aioredis.Redis | None = None
        self._node_id = ""
        self._events: BrokerEvents | None = None
        self._outbox: deque[bytes] = deque()
        self._wakeup = asyncio.Event()
        self._presence_ops: deque[tuple[str, str, bool]] = deque()
        self._presence_wakeup = asyncio.Event()
        self._needs_presence_sync = False
        self._tasks: list[asyncio.Task[None]] = []
        self._subscribed = False
        self._publishing_ok = True
        self._refresh_ok = True
        self._listener: asyncio.Task[None] | None = None
        self._closing = False
        self._scripts: dict[str, Any] = {}

    # -- life cycle ----------------------------------------------------------

    async def start(self, node_id: str, events: BrokerEvents) -> None:
        self._node_id = node_id
        self._events = events
        try:
            # Commands get one quick retry on a fresh connection (a pooled one
            # may have been dropped); the loops here do the rest.
            # Named after the service and node (CLIENT LIST shows who is who).
            name = f"{self.prefix}{node_id}"
            self._redis = _client(self.url, name=name, retries=1)
            # The subscriber gets none: redis-py would resubscribe by itself,
            # and the node must know when it has to catch up.
            self._subscriber = _client(self.url, name=f"{name}:sub", retries=0)
        except ValueError as exc:
            raise BrokerError(f"bad --redis-url: {exc}") from None
        redis = self._redis
        for name, source in (
            ("join", _JOIN),
            ("leave", _LEAVE),
            ("alive", _ALIVE),
            ("reap", _REAP),
        ):
            self._scripts[name] = redis.register_script(source)
        try:
            await redis.ping()
            await self._alive()
        except (RedisError, OSError) as exc:
            await self._disconnect()
            raise BrokerError(f"cannot reach Redis at {_where(self.url)}: {_reason(exc)}") from exc
        subscribed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._listener = asyncio.ensure_future(self._listen(subscribed))
        self._tasks = [
            asyncio.ensure_future(self._write_forever()),
            asyncio.ensure_future(self._presence_forever()),
            asyncio.ensure_future(self._refresh_forever()),
        ]
        done, _ = await asyncio.wait(
            [subscribed, self._listener], timeout=COMMAND_TIMEOUT * 2, return_when="FIRST_COMPLETED"
        )
        if subscribed not in done:
            await self.close()
            raise BrokerError(f"cannot subscribe to Redis at {_where(self.url)}")
        logger.info("node %s uses Redis at %s", node_id, _where(self.url))

    async def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        # Leave the service's presence (telling the rooms), send what is
        # queued (briefly), then stop.
        # Every step is bounded: a Redis that does not answer must not keep
        # the node from exiting (the others reap it).
        if self._redis is not None and self._events is not None:
            try:
                async with asyncio.timeout(COMMAND_TIMEOUT * 2):
                    await self._leave_service()
            except (RedisError, OSError, TimeoutError) as exc:
                logger.warning("cannot leave presence in Redis: %s", _reason(exc))
        deadline = time.monotonic() + COMMAND_TIMEOUT
        while self._outbox and self._publishing_ok and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        tasks = [*self._tasks, *([self._listener] if self._listener else [])]
        for task in tasks:
            task.cancel()
        if tasks:
            _, stuck = await asyncio.wait(tasks, timeout=COMMAND_TIMEOUT)
            if stuck:
                logger.warning("%d Redis tasks did not stop in time", len(stuck))
        await self._disconnect()

    async def _disconnect(self) -> None:
        for client in (self._redis, self._subscriber):
            if client is not None:
                with contextlib.suppress(RedisError, OSError, TimeoutError):
                    async with asyncio.timeout(COMMAND_TIMEOUT):
                        await client.aclose()
        self._redis = self._subscriber = None

    async def ping(self) -> None:
        if self._redis is None:
            raise BrokerError("the broker is not started")
        if not self._subscribed:
            raise BrokerError("not subscribed to Redis; reconnecting")
        if not self._publishing_ok or not self._refresh_ok:
            raise BrokerError("Redis is not answering; reconnecting")
        try:
            await self._redis.ping()
        except (RedisError, OSError) as exc:
            raise BrokerError(f"Redis is not answering: {_reason(exc)}") from exc

    # -- publications --------------------------------------------------------

    def publish(self, publication: Publication) -> None:
        outbox = self._outbox
        outbox.append(encode_publication(publication))
        if len(outbox) > MAX_BACKLOG:
            outbox.popleft()
            logger.warning("Redis backlog full: a publication was dropped (it is stored)")
        self._wakeup.set()

    async def _write_forever(self) -> None:
        redis = self._redis
        assert redis is not None
        outbox = self._outbox
        delay = RETRY_FIRST
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while outbox:
                batch: list[bytes] = []
                size = 0
                for item in outbox:
                    if batch and size + len(item) > MAX_BATCH_BYTES:
                        break
                    batch.append(item)
                    size += len(item) + 4
                try:
                    await redis.publish(self._channel, pack_batch(batch))
                except (RedisError, OSError) as exc:
                    if self._publishing_ok:
                        logger.warning("cannot publish to Redis: %s; retrying", _reason(exc))
                    self._publishing_ok = False
                    await asyncio.sleep(_jitter(delay))
                    delay = min(delay * 2, RETRY_MAX)
                    continue
                for _ in batch:
                    outbox.popleft()
                if not self._publishing_ok:
                    logger.info("publishing to Redis again")
                    self._publishing_ok = True
                delay = RETRY_FIRST

    async def _listen(self, subscribed: asyncio.Future[None]) -> None:
        """Receive other nodes' publications; resubscribe after any failure."""
        redis = self._subscriber
        assert redis is not None and self._events is not None
        events = self._events
        own = self._node_id
        delay = RETRY_FIRST
        first = True
        while True:
            pubsub = redis.pubsub()
            try:
                async with asyncio.timeout(COMMAND_TIMEOUT * 2):
                    await pubsub.subscribe(self._channel)
                    # Wait for Redis to confirm: from here on nothing is
                    # missed, so catching up from the store leaves no gap.
                    confirmed = await pubsub.get_message(timeout=COMMAND_TIMEOUT)
                if confirmed is None:
                    raise RedisTimeoutError("Redis did not confirm the subscription")
                self._subscribed = True
                delay = RETRY_FIRST
                if first:
                    first = False
                    subscribed.set_result(None)
                else:
                    logger.info("subscribed to Redis again: catching up")
                    self._needs_presence_sync = True
                    self._presence_wakeup.set()
                    events.on_resync()
                async for message in pubsub.listen():
                    if message.get("type") != "message":
                        continue
                    self._receive(message["data"], own, events)
            except (RedisError, OSError, TimeoutError) as exc:
                if self._subscribed or first:
                    logger.warning("Redis subscription lost: %s; resubscribing", _reason(exc))
            finally:
                self._subscribed = False
                with contextlib.suppress(RedisError, OSError, RuntimeError, TimeoutError):
                    async with asyncio.timeout(COMMAND_TIMEOUT):
                        await asyncio.shield(pubsub.aclose())  # type: ignore[no-untyped-call]
            await asyncio.sleep(_jitter(delay))
            delay = min(delay * 2, RETRY_MAX)

    def _receive(self, payload: bytes, own: str, events: BrokerEvents) -> None:
        try:
            items = unpack_batch(payload)
            publications = [decode_publication(item) for item in items]
        except ValueError as exc:
            logger.error("ignored a malformed message on %s: %s", self._channel, exc)
            return
        for publication in publications:
            if publication.node_id != own:
                try:
                    events.on_publication(publication)
                except Exception:  # a bug must not stop the subscriber
                    logger.exception("delivering a publication failed")

    # -- presence ----------------------------------------------------------------

    def presence_changed(self, room: str, user: str, present: bool) -> None:
        self._presence_ops.append((room, user, present))
        self._presence_wakeup.set()

    async def members(self, room: str, limit: int) -> Members:
        redis = self._redis
        if redis is None:
            raise BrokerError("the broker is not started")
        key = f"{self.prefix}room:{room}"
        try:
            # One round trip for a room that fits in one scan (most rooms);
            # a big room is scanned only until ``limit`` names are found.
            async with redis.pipeline(transaction=False) as pipe:
                pipe.hlen(key)
                pipe.hscan(key, 0, count=limit)
                count, (cursor, found) = await pipe.execute()
            names = dict.fromkeys(found)  # a scan may return a field twice
            while cursor and len(names) < limit:
                cursor, found = await redis.hscan(key, cursor, count=limit)
                names.update(dict.fromkeys(found))
        except (RedisError, OSError) as exc:
            raise BrokerError(f"cannot read presence from Redis: {_reason(exc)}") from exc
        return Members(sorted(_text(name) for name in list(names)[:limit]), int(count))

    async def present(self, room: str, user: str) -> bool:
        redis = self._redis
        if redis is None:
            raise BrokerError("the broker is not started")
        try:
            return bool(await redis.hexists(f"{self.prefix}room:{room}", user))
        except (RedisError, OSError) as exc:
            raise BrokerError(f"cannot read presence from Redis: {_reason(exc)}") from exc

    async def _presence_forever(self) -> None:
        delay = RETRY_FIRST
        while True:
            await self._presence_wakeup.wait()
            self._presence_wakeup.clear()
            try:
                if self._needs_presence_sync:
                    self._needs_presence_sync = False
                    self._presence_ops.clear()
                    await self._sync_presence()
                while self._presence_ops:
                    ops = list(self._presence_ops)
                    await self._apply(ops)
                    for _ in ops:
                        self._presence_ops.popleft()
                delay = RETRY_FIRST
            except (RedisError, OSError) as exc:
                logger.warning("cannot update presence in Redis: %s", _reason(exc))
                # What changed meanwhile is rebuilt from the connections.
                self._needs_presence_sync = True
                await asyncio.sleep(_jitter(delay))
                delay = min(delay * 2, RETRY_MAX)
                self._presence_wakeup.set()

    async def _apply(self, ops: list[tuple[str, str, bool]]) -> None:
        redis = self._redis
        assert redis is not None and self._events is not None
        node_key = f"{self.prefix}node:{self._node_id}"
        async with redis.pipeline(transaction=False) as pipe:
            for room, user, present in ops:
                script = self._scripts["join" if present else "leave"]
                await script(
                    keys=[node_key, f"{self.prefix}room:{room}"],
                    args=[f"{room}\n{user}", user],
                    client=pipe,
                )
            results = await pipe.execute()
        for (room, user, present), (changed, count) in zip(ops, results, strict=True):
            if changed:
                _tell(self._events, room, user, present, int(count))

    async def _sync_presence(self) -> None:
        """Make this node's presence in Redis match its connections.

        Pairs missing from Redis (it restarted, or this node was reaped while
        cut off) are put back without events; pairs that left while Redis
        was unreachable leave now, with their events.
        """
        redis = self._redis
        assert redis is not None and self._events is not None
        node_key = f"{self.prefix}node:{self._node_id}"
        want = {f"{room}\n{user}" for room, user in self._events.local_presence()}
        have = {_text(pair) for pair in await redis.smembers(node_key)}
        missing = [pair.split("\n", 1) for pair in want - have]
        gone = [pair.split("\n", 1) for pair in have - want]
        if missing:
            async with redis.pipeline(transaction=False) as pipe:
                for room, user in missing:
                    await self._scripts["join"](
                        keys=[node_key, f"{self.prefix}room:{room}"],
                        args=[f"{room}\n{user}", user],
                        client=pipe,
                    )
                await pipe.execute()
        if gone:
            await self._apply([(room, user, False) for room, user in gone])
        logger.info("presence rebuilt: %d restored, %d left", len(missing), len(gone))

    async def _alive(self) -> bool:
        """Refresh this node's time; True when Redis did not know the node (any more)."""
        added = await self._scripts["alive"](
            keys=[self._nodes_key], args=[self._node_id, int(self.presence_ttl * 1000)]
        )
        return bool(added)

    async def _refresh_forever(self) -> None:
        """Keep this node alive in Redis and reap the nodes that are not."""
        events = self._events
        assert events is not None
        interval = self.presence_ttl / 3
        while True:
            await asyncio.sleep(_jitter(interval))
            try:
                forgotten = await self._alive()
                left = await self._scripts["reap"](keys=[self._nodes_key], args=[self.prefix])
            except (RedisError, OSError) as exc:
                if self._refresh_ok:
                    logger.warning("cannot refresh presence in Redis: %s", _reason(exc))
                self._refresh_ok = False
                continue
            self._refresh_ok = True
            if forgotten:
                # Redis lost its data (a restart) or took this node for dead.
                logger.warning("Redis did not know this node any more: rebuilding presence")
                self._needs_presence_sync = True
                self._presence_wakeup.set()
            for i in range(0, len(left), 3):
                room, user = left[i].decode(), left[i + 1].decode()
                logger.info("%s left %s: its node stopped answering", user, room)
                _tell(events, room, user, False, int(left[i + 2]))

    async def _leave_service(self) -> None:
        """Take this node and whatever presence it still holds out of Redis."""
        redis = self._redis
        assert redis is not None
        node_key = f"{self.prefix}node:{self._node_id}"
        pairs = [_text(pair).split("\n", 1) for pair in await redis.smembers(node_key)]
        if pairs:
            await self._apply([(room, user, False) for room, user in pairs])
        async with redis.pipeline(transaction=False) as pipe:
            pipe.delete(node_key)
            pipe.zrem(self._nodes_key, self._node_id)
            await pipe.execute()


def _tell(events: BrokerEvents, room: str, user: str, joined: bool, count: int) -> None:
    """Pass a presence change to the node; a bug there must not stop the broker's loops."""
    try:
        events.on_presence(room, user, joined, count)
    except Exception:
        logger.exception("telling %s about %s failed", room, user)


def _client(url: str, *, name: str, retries: int) -> aioredis.Redis:
    return aioredis.Redis.from_url(
        url,
        client_name="".join(c if c.isprintable() and not c.isspace() else "_" for c in name),
        socket_connect_timeout=COMMAND_TIMEOUT,
        socket_timeout=COMMAND_TIMEOUT,
        retry=Retry(NoBackoff(), retries),
        health_check_interval=0,
    )


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _jitter(delay: float) -> float:
    """``delay`` give or take a quarter, so nodes do not retry in step."""
    return delay * random.uniform(0.75, 1.25)


def _where(url: str) -> str:
    """``host:port`` of a Redis URL, without credentials."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        return f"{parts.hostname or 'localhost'}:{parts.port or 6379}"
    except ValueError:
        return "the given address"


def _reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0] if text else type(exc).__name__
