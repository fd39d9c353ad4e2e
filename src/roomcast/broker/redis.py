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
is not waited for: the broker subscribes everything again, then tells the
node to catch up (:meth:`~roomcast.broker.base.BrokerEvents.on_resync`).
Subscribing and unsubscribing are queued and written by one task per
connection, so Redis sees them in the order the node asked for them.

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
seconds and reaps the nodes whose time passed: moving a dead node from
``P{nodes}`` to ``P{nodes}:reaping``, leased to the caller, is one script,
so one node reaps it at a time; it removes the dead node's pairs room by
room with the same leave script, and only then lets the node go (a reaper
that fails halfway leaves the rest to the next, when its lease lapses). A
live node that finds itself forgotten counts its presence again under a
new id, out of a reaper's way.

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
from collections.abc import Coroutine, Iterable
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
    redis_reason,
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
#: Seconds between PINGs on a subscriber connection: three unanswered and it
#: is taken for dead. A master that vanished (a host lost, a partition)
#: closes nothing; its Sentinel or cluster fails over in seconds, so the
#: node hears the new master within about 15 s of that.
SUBSCRIBER_PING: Final = 5.0
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

# KEYS: the nodes sorted set, the reaping sorted set. ARGV: the lease in ms.
# The nodes whose time passed move to the reaping set, leased to the caller;
# a lease that lapsed (its reaper failed) goes to this caller. One caller
# gets each node at a time.
_EXPIRED: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = now + tonumber(ARGV[1])
local out = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)
for _, node in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)) do
  redis.call('ZREM', KEYS[1], node)
  table.insert(out, node)
end
for _, node in ipairs(out) do redis.call('ZADD', KEYS[2], lease, node) end
return out
"""

#: Milliseconds a reaper has to take a dead node's users out of presence
#: before another node may try: thousands of pairs take well under a second.
REAP_LEASE_MS: Final = 30_000


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

    Commands go out in the order they were asked for (``SSUBSCRIBE``,
    ``SUNSUBSCRIBE``, ``PING``): :meth:`send` only queues, and one task
    writes, so a leave and a join of one room reach Redis in the order the
    node made them. The one reader, :meth:`read`, gets every answer and
    message in order. A ``PING`` every :data:`SUBSCRIBER_PING` seconds
    proves the connection alive: one that answers nothing for three of
    them is taken for dead (a master that vanished without closing it).
    """

    def __init__(self, client: aioredis.Redis, name: str) -> None:
        #: The client whose pool the connection comes from (closed with it).
        self.client = client
        #: The shard's name (``host:port``), or ``redis`` for a single server.
        self.name = name
        #: The connection, once opened.
        self._connection: AbstractConnection | None = None
        #: Commands waiting for the writer, oldest first.
        self._commands: deque[tuple[str, ...]] = deque()
        self._wakeup = asyncio.Event()
        #: When the reader last got anything (monotonic seconds).
        self._last_read = time.monotonic()

    async def open(self) -> None:
        """Connect (bounded by the client's connect timeout)."""
        pool = self.client.connection_pool
        self._connection = await pool.get_connection()  # type: ignore[no-untyped-call]
        self._last_read = time.monotonic()

    def send(self, command: str, channels: Iterable[str] = ()) -> None:
        """Queue ``command`` for the writer (its answer comes to :meth:`read`)."""
        self._commands.append((command, *channels))
        self._wakeup.set()

    async def write_forever(self) -> None:
        """Write the queued commands, all waiting ones at once; raise when that fails."""
        connection = self._connection
        if connection is None:
            raise BrokerError("the subscriber is not connected")
        commands = self._commands
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            if not commands:
                continue
            if not connection.is_connected:
                # redis-py would connect again by itself: a connection nobody reads.
                raise BrokerError("the subscriber's connection is closed")
            batch = list(commands)
            commands.clear()
            packed = connection.pack_commands(batch)
            await connection.send_packed_command(packed, check_health=False)

    async def ping_forever(self) -> None:
        """PING now and then; raise once the connection has been silent too long."""
        while True:
            await asyncio.sleep(SUBSCRIBER_PING)
            if time.monotonic() - self._last_read > SUBSCRIBER_PING * 3:
                raise BrokerError(
                    f"no answer from Redis ({self.name}) in {SUBSCRIBER_PING * 3:g} s"
                )
            self.send("PING")

    async def read(self) -> Any:
        """The next message or answer; raises when the connection fails."""
        connection = self._connection
        if connection is None:
            raise BrokerError("the subscriber is not connected")
        # RESP3 (redis-py's default) sends these as pushes: asked for, they are returned.
        message = await connection.read_response(disable_decoding=True, push_request=True)
        self._last_read = time.monotonic()
        return message

    async def close(self) -> None:
        with contextlib.suppress(*REDIS_ERRORS, TimeoutError):
            async with asyncio.timeout(COMMAND_TIMEOUT):
                if self._connection is not None:
                    await self._connection.disconnect()
        with contextlib.suppress(*REDIS_ERRORS, TimeoutError):
            async with asyncio.timeout(COMMAND_TIMEOUT):
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
        #: Dead nodes being reaped, each leased to one reaper (same slot as the nodes).
        self._reaping_key = f"{prefix}{{nodes}}:reaping"
        self._node_id = ""
        #: The id this node's presence is counted under: its node id, then a new
        #: one each time Redis forgot it (a reaper may still be at the old one).
        self._presence_id = ""
        self._incarnation = 0
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
        #: Set while the subscriptions hold every wanted channel.
        self._ready = asyncio.Event()
        #: Set to make the subscriptions again (a slot moved, Redis too slow).
        self._restart = asyncio.Event()

    # -- life cycle ----------------------------------------------------------

    async def start(self, node_id: str, events: BrokerEvents) -> None:
        self._node_id = self._presence_id = node_id
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
            raise BrokerError(f"cannot reach Redis at {where}: {redis_reason(exc)}") from exc
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
                logger.warning("cannot leave presence in Redis: %s", redis_reason(exc))
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
            raise BrokerError(f"Redis is not answering: {redis_reason(exc)}") from exc

    # -- publications --------------------------------------------------------

    def publish(self, publication: Publication) -> None:
        outbox = self._outbox
        outbox.append((channel_of(self.prefix, publication), encode_publication(publication)))
        if len(outbox) > MAX_BACKLOG:
            outbox.popleft()
            logger.warning("Redis backlog full: a publication was dropped (it is stored)")
        self._wakeup.set()

    async def _write_forever(self) -> None:
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
                error: Exception | None = None
                try:
                    failed = await self._send(batches)
                except REDIS_ERRORS as exc:
                    failed, error = set(batches), exc
                except Exception as exc:  # a bug must not stop the writer for good
                    logger.exception("publishing to Redis failed")
                    failed, error = set(batches), exc
                # What Redis took is done; each failed channel's publications stay
                # first, in order, for the next try.
                kept = [
                    entry
                    for entry in (outbox.popleft() for _ in range(taken))
                    if entry[0] in failed
                ]
                outbox.extendleft(reversed(kept))
                if failed:
                    if self._publishing_ok:
                        reason = redis_reason(error) if error is not None else "a shard refused"
                        logger.warning("cannot publish to Redis: %s; retrying", reason)
                    self._publishing_ok = False
                    if len(failed) == len(batches):
                        await asyncio.sleep(_jitter(delay))
                        delay = min(delay * 2, RETRY_MAX)
                    continue
                if not self._publishing_ok:
                    logger.info("publishing to Redis again")
                    self._publishing_ok = True
                delay = RETRY_FIRST

    async def _send(self, batches: dict[str, list[bytes]]) -> set[str]:
        """SPUBLISH each channel's publications as one payload; the channels that failed.

        On a cluster one shard may fail while the others take theirs: only
        the failed channels are tried again, so nothing reaches a room twice.
        """
        redis = self._redis
        assert redis is not None
        if len(batches) == 1:
            ((channel, items),) = batches.items()
            await redis.spublish(channel, pack_batch(items))
            return set()
        async with redis.pipeline(transaction=False) as pipe:
            for channel, items in batches.items():
                pipe.spublish(channel, pack_batch(items))
            results = await pipe.execute(raise_on_error=False)
        return {
            channel
            for channel, result in zip(batches, results, strict=True)
            if isinstance(result, Exception)
        }

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
        """Hear ``channel`` from now on; return once Redis confirmed it (or gave up waiting).

        While the subscriptions are being made again, wait for them (they
        include every wanted channel); a Redis that stays away is not waited
        for past :data:`COMMAND_TIMEOUT`: the node catches up when it is back.
        """
        self._wanted.add(channel)
        if not self._subscribed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ready.wait(), COMMAND_TIMEOUT)
            if not self._subscribed:
                return
        if channel in self._subscribed_on:
            pending = self._pending.get(channel)
            if not pending:
                return  # confirmed already
            waiter = pending[-1]
        else:
            try:
                subscriber = self._subscriber_for(channel)
            except _Restart as exc:
                logger.warning("cannot subscribe to %s: %s", channel, exc)
                self._restart.set()
                return
            waiter = self._expect(channel, subscriber)
            subscriber.send("SSUBSCRIBE", [channel])
        try:
            await asyncio.wait_for(asyncio.shield(waiter), COMMAND_TIMEOUT)
        except TimeoutError:
            # Redis is not answering: subscribe everything again, then catch up.
            logger.warning("Redis has not confirmed %s: subscribing again", channel)
            self._restart.set()
        except BrokerError:
            pass  # the connection went: the next generation subscribes it

    def _unsubscribe(self, channel: str) -> None:
        """Stop hearing ``channel`` (queued after any subscribe before it; not waited for)."""
        self._wanted.discard(channel)
        subscriber = self._subscribed_on.pop(channel, None)
        if subscriber is None:
            return
        self._leaving[channel] = self._leaving.get(channel, 0) + 1
        subscriber.send("SUNSUBSCRIBE", [channel])

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
            tasks: list[asyncio.Task[None]] = []
            try:
                # Redis confirms tens of thousands of subscriptions a second.
                async with asyncio.timeout(COMMAND_TIMEOUT * 2 + len(self._wanted) / 5000):
                    await self._open_subscribers()
                    for subscriber in self._subscribers.values():
                        tasks += [
                            asyncio.ensure_future(self._read_forever(subscriber)),
                            asyncio.ensure_future(subscriber.write_forever()),
                            asyncio.ensure_future(subscriber.ping_forever()),
                        ]
                    await _first_of(self._subscribe_wanted(), tasks)
                self._subscribed = True
                self._ready.set()
                delay = RETRY_FIRST
                if first:
                    first = False
                    subscribed.set_result(None)
                else:
                    logger.info("subscribed to Redis again: catching up")
                    self._needs_presence_sync = True
                    self._presence_wakeup.set()
                    events.on_resync()
                await _first_of(self._restart.wait(), tasks)
                logger.warning("subscribing to Redis again")
            except (*REDIS_ERRORS, TimeoutError, BrokerError, _Restart) as exc:
                if self._subscribed or first:
                    logger.warning("Redis subscription lost: %s; resubscribing", redis_reason(exc))
            except Exception:  # a bug must not leave the node deaf for good
                logger.exception("the Redis subscriber failed; resubscribing")
            finally:
                self._subscribed = False
                self._ready.clear()
                self._restart.clear()
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
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
        """Subscribe every wanted channel on its shard and wait for Redis to confirm.

        Channels wanted while these were confirmed are subscribed too: the
        subscriptions are ready only once they hold every wanted channel.
        """
        while missing := sorted(self._wanted - self._subscribed_on.keys()):
            by_subscriber: dict[str, list[str]] = defaultdict(list)
            waiters = []
            for channel in missing:
                subscriber = self._subscriber_for(channel)
                by_subscriber[subscriber.name].append(channel)
                waiters.append(self._expect(channel, subscriber))
            for name, channels in by_subscriber.items():
                subscriber = self._subscribers[name]
                if self._cluster:
                    # One SSUBSCRIBE may name channels of one slot only.
                    for channel in channels:
                        subscriber.send("SSUBSCRIBE", [channel])
                else:
                    for start in range(0, len(channels), 1000):
                        subscriber.send("SSUBSCRIBE", channels[start : start + 1000])
            # Confirmed: from here on nothing is missed, so catching up from
            # the store leaves no gap.
            await asyncio.gather(*waiters)

    async def _close_subscribers(self) -> None:
        lost = BrokerError("the subscriber connection was lost")
        for waiters in self._pending.values():
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_exception(lost)
                    waiter.exception()  # retrieved: nobody may be waiting any more
        self._pending.clear()
        self._leaving.clear()
        self._subscribed_on.clear()
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
            raise BrokerError(f"cannot read presence from Redis: {redis_reason(exc)}") from exc
        return Members(sorted(_text(name) for name in list(names)[:limit]), int(count))

    async def present(self, room: str, user: str) -> bool:
        redis = self._redis
        if redis is None:
            raise BrokerError("the broker is not started")
        try:
            return bool(await redis.hexists(self._room_keys(room)[0], user))
        except REDIS_ERRORS as exc:
            raise BrokerError(f"cannot read presence from Redis: {redis_reason(exc)}") from exc

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
            except Exception as exc:  # Redis errors, and a bug: neither may stop presence
                if isinstance(exc, REDIS_ERRORS):
                    logger.warning("cannot update presence in Redis: %s", redis_reason(exc))
                else:
                    logger.exception("updating presence in Redis failed")
                # What changed meanwhile is rebuilt from the connections.
                self._needs_presence_sync = True
                await asyncio.sleep(_jitter(delay))
                delay = min(delay * 2, RETRY_MAX)
                self._presence_wakeup.set()

    async def _apply(self, ops: list[tuple[str, str, bool]], presence_id: str = "") -> None:
        """Count ``(room, user, present)`` for ``presence_id`` (this node's); tell what changed.

        Three steps, each done before the next starts (a cluster runs one
        pipeline's shards at once): joins go into the node's own set, the
        room scripts run, leaves go out of the set. So a pair in a room is
        always in its node's set, where the reaper or a rebuild finds it.
        """
        redis = self._redis
        assert redis is not None and self._events is not None
        node = presence_id or self._presence_id
        node_key = self._node_key(node)
        joins = [f"{room}\n{user}" for room, user, present in ops if present]
        if joins:
            await redis.sadd(node_key, *joins)
        async with redis.pipeline(transaction=False) as pipe:
            for room, user, present in ops:
                script = _JOIN if present else _LEAVE
                pipe.eval(script, 2, *self._room_keys(room), f"{node}\n{user}", user)
            results = await pipe.execute()
        leaves = [f"{room}\n{user}" for room, user, present in ops if not present]
        if leaves:
            await redis.srem(node_key, *leaves)
        for (room, user, present), (changed, count) in zip(ops, results, strict=True):
            if changed:
                _tell(self._events, room, user, present, int(count))

    async def _sync_presence(self) -> None:
        """Make this node's presence in Redis match its connections.

        Every pair of its connections is counted again (the scripts count a
        pair once, so this only mends what is missing: Redis restarted, this
        node was reaped while cut off, or a write was cut halfway), with a
        join event where that brings the user back into the room in the
        service; pairs that left while Redis was unreachable leave now, with
        their events.
        """
        redis = self._redis
        assert redis is not None and self._events is not None
        want = {f"{room}\n{user}" for room, user in self._events.local_presence()}
        have = {_text(pair) for pair in await redis.smembers(self._node_key(self._presence_id))}
        if want:
            pairs = (pair.split("\n", 1) for pair in sorted(want))
            await self._apply([(room, user, True) for room, user in pairs])
        gone = [pair.split("\n", 1) for pair in have - want]
        if gone:
            await self._apply([(room, user, False) for room, user in gone])
        logger.info(
            "presence rebuilt: %d counted, %d restored, %d left",
            len(want),
            len(want - have),
            len(gone),
        )

    async def _alive(self) -> bool:
        """Refresh this node's time; True when Redis did not know it (any more)."""
        redis = self._redis
        assert redis is not None
        ttl = int(self.presence_ttl * 1000)
        added = await redis.eval(_ALIVE, 1, self._nodes_key, self._presence_id, ttl)
        return bool(added)

    async def _reap(self) -> None:
        """Take the nodes that stopped refreshing out of presence, telling who left.

        The expiry script hands each dead node to one reaper for
        :data:`REAP_LEASE_MS`; the node leaves the reaping set only once its
        pairs are gone, so a reaper that fails halfway leaves it to another.
        """
        redis = self._redis
        assert redis is not None
        dead = await redis.eval(_EXPIRED, 2, self._nodes_key, self._reaping_key, REAP_LEASE_MS)
        for node in (_text(item) for item in dead):
            key = self._node_key(node)
            pairs = [_text(pair).split("\n", 1) for pair in await redis.smembers(key)]
            if pairs:
                for room, user in pairs:
                    logger.info("%s left %s: its node stopped answering", user, room)
                await self._apply([(room, user, False) for room, user in pairs], presence_id=node)
            await redis.delete(key)
            await redis.zrem(self._reaping_key, node)

    async def _refresh_forever(self) -> None:
        """Keep this node alive in Redis and reap the nodes that are not."""
        interval = self.presence_ttl / 3
        while True:
            await asyncio.sleep(_jitter(interval))
            try:
                forgotten = await self._alive()
                if forgotten:
                    await self._start_afresh()
                await self._reap()
            except Exception as exc:  # Redis errors, and a bug: neither may stop the refresh
                if isinstance(exc, REDIS_ERRORS):
                    if self._refresh_ok:
                        logger.warning("cannot refresh presence in Redis: %s", redis_reason(exc))
                else:
                    logger.exception("refreshing presence in Redis failed")
                self._refresh_ok = False
                continue
            self._refresh_ok = True

    async def _start_afresh(self) -> None:
        """Redis lost its data (a restart) or took this node for dead: count its presence
        again under a new id, which a reaper still at work on the old one cannot touch."""
        redis = self._redis
        assert redis is not None
        logger.warning("Redis did not know this node any more: rebuilding presence")
        old = self._presence_id
        self._incarnation += 1
        self._presence_id = f"{self._node_id}.{self._incarnation}"
        await redis.zrem(self._nodes_key, old)
        await self._alive()
        self._needs_presence_sync = True
        self._presence_wakeup.set()

    async def _leave_service(self) -> None:
        """Take this node and whatever presence it still holds out of Redis."""
        redis = self._redis
        assert redis is not None
        node_key = self._node_key(self._presence_id)
        pairs = [_text(pair).split("\n", 1) for pair in await redis.smembers(node_key)]
        if pairs:
            await self._apply([(room, user, False) for room, user in pairs])
        await redis.delete(node_key)
        await redis.zrem(self._nodes_key, self._presence_id)


async def _first_of(work: Coroutine[Any, Any, Any], tasks: list[asyncio.Task[None]]) -> None:
    """Await ``work`` unless one of ``tasks`` (a connection's reader or writer) fails first."""
    job = asyncio.ensure_future(work)
    try:
        done, _ = await asyncio.wait([job, *tasks], return_when="FIRST_COMPLETED")
    finally:
        job.cancel()
    if job in done:
        job.result()
        return
    for task in done:
        task.result()  # raises what ended it
    raise BrokerError("a subscriber task ended")


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
