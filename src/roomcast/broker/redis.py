"""The Redis broker: nodes share one Redis (or a Redis Cluster) for fan-out and presence.

Fan-out follows the rooms. Every room and every user name has a channel of
its own (:func:`room_channel`, :func:`user_channel`), and a node subscribes
only to the channels of the rooms its connections are in and of the names
they use, so a node hears its own members' traffic, not the whole
service's. Orders for every node (sessions revoked, a room's rules
changed) go to one channel all nodes hear (:func:`broadcast_channel`).

The channels are Redis's *sharded* pub/sub (``SPUBLISH``/``SSUBSCRIBE``,
Redis 7): on one server it works like plain pub/sub; on a Redis Cluster a
channel lives on the shard that owns its slot, so the cluster's shards
split the fan-out between them instead of every shard carrying every
message. Each channel name carries a hash tag (``{r:ROOM}``), and the room's
presence keys the same tag, so a room's traffic and presence stay on one
shard.

A node's writer task sends everything queued since its last write at
once: the publications for each channel framed by length into *one*
``SPUBLISH``, all of them in one pipeline, so a busy room costs Redis one
command per batch, and one writer keeps each channel's publications in
order. Redis sends a channel's messages to its subscribers in the order it
received them.

**Subscribing before reading.** :meth:`RedisBroker.subscribe_room` returns
once Redis has confirmed the subscription: a node that joins a room in the
middle of a burst reads the room's position from the store *after* that,
so every message stored later reaches it live and everything before comes
from the store. A confirmation that takes longer than ``COMMAND_TIMEOUT``
is not waited for; when it comes, the node is told to catch up
(:meth:`~roomcast.broker.base.BrokerEvents.on_resync`).

Presence, with keys that need no cleanup by a living node (``P`` is the prefix):

* ``P{r:ROOM}:users`` (hash) user -> on how many nodes the user is in ROOM;
* ``P{r:ROOM}:nodes`` (set) ``NODE\\nUSER`` for every node counted there;
* ``P{n:NODE}`` (set) ``ROOM\\nUSER`` for every pair the node counted;
* ``P{nodes}`` (sorted set) node id -> the time (Redis's clock, ms) by
  which it must refresh itself, or be taken for dead.

A user's join or leave changes the room's two keys in one Lua script (one
slot), which returns whether the user entered or left the room in the
whole service; only then does the node tell the room, so each event is
sent once. Every node refreshes its entry every ``presence_ttl / 3``
seconds and reaps the nodes whose time passed: taking a dead node out of
``P{nodes}`` is one script, so only one node reaps it, and it removes the
dead node's pairs room by room with the same leave script.

Faults: the subscriber, the writer and the refresher each reconnect with
backoff and jitter. While any of them is cut off, :meth:`RedisBroker.ping`
fails (``/ready`` says 503). The writer keeps what it could not send and
sends it when Redis is back. The subscriptions are one unit: when any
subscriber connection fails (or a cluster shard fails over, or moves a
slot), all of them are made again on the cluster's current shards, and
then the node is told to catch up from the store on what it may have
missed, and its presence is rebuilt from its own connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import struct
import time
from collections import defaultdict, deque
from collections.abc import Iterable
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import RedisError

from ..exceptions import BrokerError
from .base import BrokerEvents, Members, Publication, decode_publication, encode_publication
from .redis_client import (
    COMMAND_TIMEOUT,
    REDIS_ERRORS,
    RedisClient,
    close_client,
    connect,
    is_cluster,
    redis_where,
)

__all__ = [
    "COMMAND_TIMEOUT",
    "RedisBroker",
    "broadcast_channel",
    "pack_batch",
    "publish_order",
    "room_channel",
    "unpack_batch",
    "user_channel",
]

logger = logging.getLogger("roomcast.broker.redis")

#: Most bytes sent in one SPUBLISH.
MAX_BATCH_BYTES: Final = 512 * 1024
#: Publications kept while Redis is unreachable; older ones are dropped
#: (they are stored: nodes catch up from the store).
MAX_BACKLOG: Final = 100_000
#: Seconds between reconnection attempts: first, and at most.
RETRY_FIRST: Final = 0.05
RETRY_MAX: Final = 2.0

_LENGTH: Final = struct.Struct("!I")

# KEYS: the room's users hash and nodes set. ARGV: "NODE\nUSER", the user.
_JOIN: Final = """
if redis.call('SADD', KEYS[2], ARGV[1]) == 1 then
  local n = redis.call('HINCRBY', KEYS[1], ARGV[2], 1)
  if n == 1 then return {1, redis.call('HLEN', KEYS[1])} end
end
return {0, redis.call('HLEN', KEYS[1])}
"""

_LEAVE: Final = """
if redis.call('SREM', KEYS[2], ARGV[1]) == 1 then
  local n = redis.call('HINCRBY', KEYS[1], ARGV[2], -1)
  if n <= 0 then
    redis.call('HDEL', KEYS[1], ARGV[2])
    return {1, redis.call('HLEN', KEYS[1])}
  end
end
return {0, redis.call('HLEN', KEYS[1])}
"""

# KEYS: the nodes sorted set. ARGV: the node id, its time to live in ms.
_ALIVE: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
"""

# KEYS: the nodes sorted set. The nodes whose time passed, taken out: the
# one caller that gets a node reaps it.
_EXPIRED: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
for _, node in ipairs(dead) do redis.call('ZREM', KEYS[1], node) end
return dead
"""


def room_channel(prefix: str, room: str) -> str:
    """The channel of ``room``'s publications; its hash tag is the room's presence keys' too."""
    return f"{prefix}{{r:{room}}}"


def user_channel(prefix: str, user: str) -> str:
    """The channel of what is addressed to ``user`` (direct messages, name claims).

    Lower-cased: a name claim for ``Ann`` must reach the guest calling itself ``ann``.
    """
    return f"{prefix}{{u:{user.lower()}}}"


def broadcast_channel(prefix: str) -> str:
    """The channel every node hears: orders for all of them."""
    return f"{prefix}{{all}}"


def channel_of(prefix: str, publication: Publication) -> str:
    """Where ``publication`` goes: its room's channel, its user's, or every node's."""
    if publication.room is not None:
        return room_channel(prefix, publication.room)
    if publication.user is not None:
        return user_channel(prefix, publication.user)
    return broadcast_channel(prefix)


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


async def publish_order(url: str, prefix: str, publication: Publication) -> None:
    """Publish one order to every live node, without starting a broker (``roomcast admin``).

    Raises:
        RedisError, OSError: Redis did not take it.
        ValueError: the URL cannot be used.
    """
    client = connect(url, name=f"{prefix}cli", retries=1, cluster=await is_cluster(url))
    try:
        payload = pack_batch([encode_publication(publication)])
        await client.spublish(channel_of(prefix, publication), payload)
    finally:
        await close_client(client)


class _Subscriber:
    """One subscriber connection to one Redis server: the only one, or a cluster shard.

    Commands are only sent on it (``SSUBSCRIBE``, ``SUNSUBSCRIBE``); its
    one reader, :meth:`read`, gets every answer and message in order.
    """

    def __init__(self, client: aioredis.Redis, name: str) -> None:
        #: The client whose pool the connection comes from (closed with it).
        self.client = client
        #: The shard's name (``host:port``), or ``redis`` for a single server.
        self.name = name
        #: The connection, once opened.
        self._connection: AbstractConnection | None = None
        #: One command at a time on the wire.
        self._lock = asyncio.Lock()

    async def open(self) -> None:
        """Connect (bounded by the client's connect timeout)."""
        pool = self.client.connection_pool
        self._connection = await pool.get_connection()  # type: ignore[no-untyped-call]

    async def send(self, command: str, channels: Iterable[str]) -> None:
        """Send ``SSUBSCRIBE`` or ``SUNSUBSCRIBE`` (its answers come to :meth:`read`)."""
        connection = self._connection
        if connection is None:
            raise BrokerError("the subscriber is not connected")
        async with self._lock:
            await connection.send_command(command, *channels)

    async def read(self) -> Any:
        """The next message or answer; raises when the connection fails."""
        connection = self._connection
        if connection is None:
            raise BrokerError("the subscriber is not connected")
        # RESP3 (redis-py's default) sends these as pushes: asked for, they are returned.
        return await connection.read_response(disable_decoding=True, push_request=True)

    async def close(self) -> None:
        with contextlib.suppress(*REDIS_ERRORS, TimeoutError):
            async with asyncio.timeout(COMMAND_TIMEOUT):
                if self._connection is not None:
                    await self._connection.disconnect()
                await close_client(self.client)
        self._connection = None


class _Restart(Exception):
    """The subscriptions must be made again (a slot moved, or a shard went away)."""


class RedisBroker:
    """Publications and presence through one Redis server or a Redis Cluster.

    Args:
        url: ``redis://[user:password@]host:port/db`` (``rediss://`` for TLS),
            any node of a Redis Cluster, or ``redis+sentinel://host:port/service``.
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
        #: Commands, scripts and publishing (a cluster client on a cluster).
        self._redis: RedisClient | None = None
        #: Whether ``url`` names a Redis Cluster.
        self._cluster = False
        self._nodes_key = f"{prefix}{{nodes}}"
        self._node_id = ""
        self._events: BrokerEvents | None = None
        #: Encoded publications waiting for the writer, with their channels.
        self._outbox: deque[tuple[str, bytes]] = deque()
        self._wakeup = asyncio.Event()
        self._presence_ops: deque[tuple[str, str, bool]] = deque()
        self._presence_wakeup = asyncio.Event()
        self._needs_presence_sync = False
        self._tasks: list[asyncio.Task[None]] = []
        self._publishing_ok = True
        self._refresh_ok = True
        self._listener: asyncio.Task[None] | None = None
        self._closing = False

        # -- subscriptions (one generation at a time; see _listen) --
        #: The channels this node needs: its rooms', its users', every node's.
        self._wanted: set[str] = {broadcast_channel(prefix)}
        #: Whether every wanted channel was subscribed in the current generation.
        self._subscribed = False
        #: The current generation's connections, by shard name.
        self._subscribers: dict[str, _Subscriber] = {}
        #: Channel -> the shard it was subscribed on in this generation.
        self._subscribed_on: dict[str, _Subscriber] = {}
        #: Channel -> one future per SSUBSCRIBE sent and not yet confirmed, oldest first.
        self._pending: dict[str, deque[asyncio.Future[None]]] = {}
        #: Channel -> SUNSUBSCRIBE sent and not yet confirmed.
        self._leaving: dict[str, int] = {}
        #: Channels whose subscriber stopped waiting: their confirmation asks to catch up.
        self._late: set[str] = set()
        #: Set to make the subscriptions again (a slot moved).
        self._restart = asyncio.Event()

    # -- life cycle ----------------------------------------------------------

    async def start(self, node_id: str, events: BrokerEvents) -> None:
        self._node_id = node_id
        self._events = events
        name = f"{self.prefix}{node_id}"
        try:
            self._cluster = await is_cluster(self.url)
            # Commands get one quick retry on a fresh connection (a pooled one
            # may have been dropped); the loops here do the rest.
            self._redis = connect(self.url, name=name, retries=1, cluster=self._cluster)
            if isinstance(self._redis, RedisCluster):
                await self._redis.initialize()
            await self._redis.ping()
            await self._alive()
        except ValueError as exc:
            raise BrokerError(f"bad --redis-url: {exc}") from None
        except REDIS_ERRORS as exc:
            await self._disconnect()
            where = redis_where(self.url)
            raise BrokerError(f"cannot reach Redis at {where}: {_reason(exc)}") from exc
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
            raise BrokerError(f"cannot subscribe to Redis at {redis_where(self.url)}")
        kind = "a Redis Cluster" if self._cluster else "Redis"
        logger.info("node %s uses %s at %s", node_id, kind, redis_where(self.url))

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
            except (*REDIS_ERRORS, TimeoutError) as exc:
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
        if self._redis is not None:
            with contextlib.suppress(*REDIS_ERRORS, TimeoutError):
                async with asyncio.timeout(COMMAND_TIMEOUT):
                    await close_client(self._redis)
        self._redis = None

    async def ping(self) -> None:
        if self._redis is None:
            raise BrokerError("the broker is not started")
        if not self._subscribed:
            raise BrokerError("not subscribed to Redis; reconnecting")
        if not self._publishing_ok or not self._refresh_ok:
            raise BrokerError("Redis is not answering; reconnecting")
        try:
            await self._redis.ping()
        except REDIS_ERRORS as exc:
            raise BrokerError(f"Redis is not answering: {_reason(exc)}") from exc

    # -- publications --------------------------------------------------------

    def publish(self, publication: Publication) -> None:
        outbox = self._outbox
        outbox.append((channel_of(self.prefix, publication), encode_publication(publication)))
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
                batches: dict[str, list[bytes]] = defaultdict(list)
                taken = size = 0
                for channel, item in outbox:
                    if taken and size + len(item) > MAX_BATCH_BYTES:
                        break
                    batches[channel].append(item)
                    size += len(item) + 4
                    taken += 1
                try:
                    if len(batches) == 1:
                        ((channel, items),) = batches.items()
                        await redis.spublish(channel, pack_batch(items))
                    else:
                        async with redis.pipeline(transaction=False) as pipe:
                            for channel, items in batches.items():
                                pipe.spublish(channel, pack_batch(items))
                            await pipe.execute()
                except REDIS_ERRORS as exc:
                    if self._publishing_ok:
                        logger.warning("cannot publish to Redis: %s; retrying", _reason(exc))
                    self._publishing_ok = False
                    await asyncio.sleep(_jitter(delay))
                    delay = min(delay * 2, RETRY_MAX)
                    continue
                for _ in range(taken):
                    outbox.popleft()
                if not self._publishing_ok:
                    logger.info("publishing to Redis again")
                    self._publishing_ok = True
                delay = RETRY_FIRST

    # -- subscriptions -----------------------------------------------------------

    async def subscribe_room(self, room: str) -> None:
        await self._subscribe(room_channel(self.prefix, room))

    def unsubscribe_room(self, room: str) -> None:
        self._unsubscribe(room_channel(self.prefix, room))

    async def subscribe_user(self, user: str) -> None:
        await self._subscribe(user_channel(self.prefix, user))

    def unsubscribe_user(self, user: str) -> None:
        self._unsubscribe(user_channel(self.prefix, user))

    async def _subscribe(self, channel: str) -> None:
        """Hear ``channel`` from now on; return once Redis confirmed it (or gave up waiting)."""
        self._wanted.add(channel)
        if not self._subscribed:
            return  # the next generation subscribes it, then the node catches up
        pending = self._pending.get(channel)
        if channel in self._subscribed_on and not pending and not self._leaving.get(channel):
            return
        if pending:
            waiter = pending[-1]
        else:
            try:
                subscriber = self._subscriber_for(channel)
                waiter = self._expect(channel, subscriber)
                await subscriber.send("SSUBSCRIBE", [channel])
            except (*REDIS_ERRORS, BrokerError, _Restart) as exc:
                logger.warning("cannot subscribe to %s: %s", channel, _reason(exc))
                self._restart.set()
                return
        try:
            await asyncio.wait_for(asyncio.shield(waiter), COMMAND_TIMEOUT)
        except TimeoutError:
            logger.warning("Redis has not confirmed %s yet: catching up when it does", channel)
            self._late.add(channel)

    def _unsubscribe(self, channel: str) -> None:
        """Stop hearing ``channel`` (no confirmation is waited for)."""
        self._wanted.discard(channel)
        subscriber = self._subscribed_on.pop(channel, None)
        if subscriber is None or not self._subscribed:
            return
        self._leaving[channel] = self._leaving.get(channel, 0) + 1
        task = asyncio.ensure_future(self._send_quietly(subscriber, "SUNSUBSCRIBE", [channel]))
        self._tasks.append(task)
        task.add_done_callback(self._tasks.remove)

    async def _send_quietly(
        self, subscriber: _Subscriber, command: str, channels: list[str]
    ) -> None:
        try:
            await subscriber.send(command, channels)
        except (*REDIS_ERRORS, BrokerError) as exc:
            logger.warning("cannot send %s to Redis: %s", command, _reason(exc))
            self._restart.set()

    def _expect(self, channel: str, subscriber: _Subscriber) -> asyncio.Future[None]:
        """A future for the confirmation of the SSUBSCRIBE about to be sent for ``channel``."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.setdefault(channel, deque()).append(waiter)
        self._subscribed_on[channel] = subscriber
        return waiter

    def _subscriber_for(self, channel: str) -> _Subscriber:
        """The current generation's connection to the shard that owns ``channel``."""
        if isinstance(self._redis, RedisCluster):
            node = self._redis.get_node_from_key(channel)
            subscriber = self._subscribers.get(node.name) if node is not None else None
            if subscriber is None:
                raise _Restart(f"no subscriber for the shard of {channel}")
            return subscriber
        return self._subscribers["redis"]

    async def _listen(self, subscribed: asyncio.Future[None]) -> None:
        """Subscribe every wanted channel, receive, and start again after any failure."""
        events = self._events
        assert events is not None
        delay = RETRY_FIRST
        first = True
        while True:
            readers: list[asyncio.Task[None]] = []
            try:
                # Redis confirms tens of thousands of subscriptions a second.
                async with asyncio.timeout(COMMAND_TIMEOUT * 2 + len(self._wanted) / 5000):
                    await self._open_subscribers()
                    readers = [
                        asyncio.ensure_future(self._read_forever(s))
                        for s in self._subscribers.values()
                    ]
                    await self._subscribe_wanted()
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
                restart = asyncio.ensure_future(self._restart.wait())
                try:
                    done, _ = await asyncio.wait([*readers, restart], return_when="FIRST_COMPLETED")
                finally:
                    restart.cancel()
                for task in done:
                    if task is not restart and task.exception() is not None:
                        raise task.exception()  # type: ignore[misc]
                logger.warning("Redis moved a channel: subscribing again")
            except (*REDIS_ERRORS, TimeoutError, BrokerError, _Restart) as exc:
                if self._subscribed or first:
                    logger.warning("Redis subscription lost: %s; resubscribing", _reason(exc))
            finally:
                self._subscribed = False
                self._restart.clear()
                for task in readers:
                    task.cancel()
                await asyncio.gather(*readers, return_exceptions=True)
                await self._close_subscribers()
            await asyncio.sleep(_jitter(delay))
            delay = min(delay * 2, RETRY_MAX)

    async def _open_subscribers(self) -> None:
        """Connect to the only server, or to every primary of the cluster as it is now."""
        redis = self._redis
        assert redis is not None
        if isinstance(redis, RedisCluster):
            await redis.nodes_manager.initialize()
            for node in redis.get_primaries():
                client = _subscriber_client(_node_url(self.url, node.host, int(node.port)), self)
                self._subscribers[node.name] = _Subscriber(client, node.name)
        else:
            self._subscribers["redis"] = _Subscriber(_subscriber_client(self.url, self), "redis")
        for subscriber in self._subscribers.values():
            await subscriber.open()

    def _client_name(self) -> str:
        return f"{self.prefix}{self._node_id}:sub"

    async def _subscribe_wanted(self) -> None:
        """Subscribe every wanted channel on its shard and wait for Redis to confirm."""
        by_subscriber: dict[str, list[str]] = defaultdict(list)
        waiters = []
        for channel in sorted(self._wanted):
            subscriber = self._subscriber_for(channel)
            by_subscriber[subscriber.name].append(channel)
            waiters.append(self._expect(channel, subscriber))
        for name, channels in by_subscriber.items():
            subscriber = self._subscribers[name]
            if self._cluster:
                # One SSUBSCRIBE may name channels of one slot only.
                for channel in channels:
                    await subscriber.send("SSUBSCRIBE", [channel])
            else:
                for start in range(0, len(channels), 1000):
                    await subscriber.send("SSUBSCRIBE", channels[start : start + 1000])
        # Confirmed: from here on nothing is missed, so catching up from
        # the store leaves no gap.
        if waiters:
            await asyncio.gather(*waiters)
        # Channels wanted while these were confirmed are subscribed one by one.
        while missing := sorted(self._wanted - self._subscribed_on.keys()):
            waiters = []
            for channel in missing:
                subscriber = self._subscriber_for(channel)
                waiters.append(self._expect(channel, subscriber))
                await subscriber.send("SSUBSCRIBE", [channel])
            await asyncio.gather(*waiters)

    async def _close_subscribers(self) -> None:
        for waiters in self._pending.values():
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)  # nobody waits on a dead connection
        self._pending.clear()
        self._leaving.clear()
        self._subscribed_on.clear()
        self._late.clear()  # the next generation's catch-up covers them
        subscribers, self._subscribers = list(self._subscribers.values()), {}
        for subscriber in subscribers:
            await asyncio.shield(subscriber.close())

    async def _read_forever(self, subscriber: _Subscriber) -> None:
        """Receive on one connection until it fails."""
        events = self._events
        assert events is not None
        own = self._node_id
        while True:
            message = await subscriber.read()
            if isinstance(message, RedisError):
                raise message
            if not isinstance(message, list) or len(message) < 3:
                continue
            kind = message[0]
            channel = _text(message[1])
            if kind == b"smessage":
                self._receive(channel, message[2], own, events)
            elif kind == b"ssubscribe":
                self._confirmed(channel)
            elif kind == b"sunsubscribe":
                left = self._leaving.get(channel, 0)
                if left:
                    if left == 1:
                        del self._leaving[channel]
                    else:
                        self._leaving[channel] = left - 1
                elif channel in self._wanted:
                    # Not asked for: the cluster moved the channel's slot.
                    raise _Restart(f"Redis unsubscribed {channel}")

    def _confirmed(self, channel: str) -> None:
        pending = self._pending.get(channel)
        if pending:
            waiter = pending.popleft()
            if not pending:
                del self._pending[channel]
            if not waiter.done():
                waiter.set_result(None)
        if channel in self._late and channel not in self._pending:
            self._late.discard(channel)
            if self._events is not None:
                logger.info("Redis confirmed %s late: catching up", channel)
                self._events.on_resync()

    def _receive(self, channel: str, payload: bytes, own: str, events: BrokerEvents) -> None:
        try:
            items = unpack_batch(payload)
            publications = [decode_publication(item) for item in items]
        except ValueError as exc:
            logger.error("ignored a malformed message on %s: %s", channel, exc)
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

    def _room_keys(self, room: str) -> list[str]:
        tag = room_channel(self.prefix, room)
        return [f"{tag}:users", f"{tag}:nodes"]

    def _node_key(self, node_id: str) -> str:
        return f"{self.prefix}{{n:{node_id}}}"

    async def members(self, room: str, limit: int) -> Members:
        redis = self._redis
        if redis is None:
            raise BrokerError("the broker is not started")
        key = self._room_keys(room)[0]
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
        except REDIS_ERRORS as exc:
            raise BrokerError(f"cannot read presence from Redis: {_reason(exc)}") from exc
        return Members(sorted(_text(name) for name in list(names)[:limit]), int(count))

    async def present(self, room: str, user: str) -> bool:
        redis = self._redis
        if redis is None:
            raise BrokerError("the broker is not started")
        try:
            return bool(await redis.hexists(self._room_keys(room)[0], user))
        except REDIS_ERRORS as exc:
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
            except REDIS_ERRORS as exc:
                logger.warning("cannot update presence in Redis: %s", _reason(exc))
                # What changed meanwhile is rebuilt from the connections.
                self._needs_presence_sync = True
                await asyncio.sleep(_jitter(delay))
                delay = min(delay * 2, RETRY_MAX)
                self._presence_wakeup.set()

    async def _apply(self, ops: list[tuple[str, str, bool]], node_id: str | None = None) -> None:
        """Count ``(room, user, present)`` for ``node_id`` (this node); tell what changed.

        A join is written to the node's own set first and a leave last, so a
        node that dies in between leaves nothing its reaper would miss.
        """
        redis = self._redis
        assert redis is not None and self._events is not None
        node = node_id or self._node_id
        node_key = self._node_key(node)
        async with redis.pipeline(transaction=False) as pipe:
            joins = [f"{room}\n{user}" for room, user, present in ops if present]
            if joins:
                pipe.sadd(node_key, *joins)
            for room, user, present in ops:
                script = _JOIN if present else _LEAVE
                pipe.eval(script, 2, *self._room_keys(room), f"{node}\n{user}", user)
            leaves = [f"{room}\n{user}" for room, user, present in ops if not present]
            if leaves:
                pipe.srem(node_key, *leaves)
            results = await pipe.execute()
        results = results[1:] if joins else results
        for (room, user, present), (changed, count) in zip(ops, results, strict=False):
            if changed:
                _tell(self._events, room, user, present, int(count))

    async def _sync_presence(self) -> None:
        """Make this node's presence in Redis match its connections.

        Pairs missing from Redis (it restarted, or this node was reaped while
        cut off) are put back, with a join event where that brings the user
        back into the room in the service (a reaper told the room it left);
        pairs that left while Redis was unreachable leave now, with their
        events.
        """
        redis = self._redis
        assert redis is not None and self._events is not None
        want = {f"{room}\n{user}" for room, user in self._events.local_presence()}
        have = {_text(pair) for pair in await redis.smembers(self._node_key(self._node_id))}
        missing = [pair.split("\n", 1) for pair in want - have]
        gone = [pair.split("\n", 1) for pair in have - want]
        if missing:
            await self._apply([(room, user, True) for room, user in missing])
        if gone:
            await self._apply([(room, user, False) for room, user in gone])
        logger.info("presence rebuilt: %d restored, %d left", len(missing), len(gone))

    async def _alive(self) -> bool:
        """Refresh this node's time; True when Redis did not know the node (any more)."""
        redis = self._redis
        assert redis is not None
        ttl = int(self.presence_ttl * 1000)
        added = await redis.eval(_ALIVE, 1, self._nodes_key, self._node_id, ttl)
        return bool(added)

    async def _reap(self) -> None:
        """Take the nodes that stopped refreshing out of presence, telling who left."""
        redis = self._redis
        assert redis is not None
        dead = await redis.eval(_EXPIRED, 1, self._nodes_key)
        for node in (_text(item) for item in dead):
            key = self._node_key(node)
            pairs = [_text(pair).split("\n", 1) for pair in await redis.smembers(key)]
            if pairs:
                for room, user in pairs:
                    logger.info("%s left %s: its node stopped answering", user, room)
                await self._apply([(room, user, False) for room, user in pairs], node_id=node)
            await redis.delete(key)

    async def _refresh_forever(self) -> None:
        """Keep this node alive in Redis and reap the nodes that are not."""
        interval = self.presence_ttl / 3
        while True:
            await asyncio.sleep(_jitter(interval))
            try:
                forgotten = await self._alive()
                await self._reap()
            except REDIS_ERRORS as exc:
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

    async def _leave_service(self) -> None:
        """Take this node and whatever presence it still holds out of Redis."""
        redis = self._redis
        assert redis is not None
        node_key = self._node_key(self._node_id)
        pairs = [_text(pair).split("\n", 1) for pair in await redis.smembers(node_key)]
        if pairs:
            await self._apply([(room, user, False) for room, user in pairs])
        await redis.delete(node_key)
        await redis.zrem(self._nodes_key, self._node_id)


def _tell(events: BrokerEvents, room: str, user: str, joined: bool, count: int) -> None:
    """Pass a presence change to the node; a bug there must not stop the broker's loops."""
    try:
        events.on_presence(room, user, joined, count)
    except Exception:
        logger.exception("telling %s about %s failed", room, user)


def _subscriber_client(url: str, broker: RedisBroker) -> aioredis.Redis:
    """A client for one shard's subscriber connection: it waits for messages without a timeout."""
    client = connect(url, name=broker._client_name(), retries=0, cluster=False)
    assert isinstance(client, aioredis.Redis)
    client.connection_pool.connection_kwargs["socket_timeout"] = None
    return client


def _node_url(url: str, host: str, port: int) -> str:
    """``url`` pointed at one cluster node (credentials, TLS and database kept)."""
    parts = urlsplit(url)
    userinfo = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    where = f"[{host}]" if ":" in host else host
    return urlunsplit((parts.scheme, f"{userinfo}{where}:{port}", parts.path, parts.query, ""))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _jitter(delay: float) -> float:
    """``delay`` give or take a quarter, so nodes do not retry in step."""
    return delay * random.uniform(0.75, 1.25)


def _reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0] if text else type(exc).__name__
