"""Quotas in Redis: guest nicknames, connections per user and the login throttle, for every node.

Keys (``P`` is the prefix; every key has a hash tag, so each command and
script touches one slot and all of it works on a Redis Cluster):

* ``P{q:nodes}`` (sorted set) claimant -> the time (Redis's clock, ms) by
  which it must refresh itself, or be taken for dead. A claimant is
  ``NODE-N``: the node's id and an incarnation, new whenever Redis forgot
  the node (it restarted, or took the node for dead while it was cut off),
  so a reaper busy with the old incarnation never touches the new one's
  claims.
* ``P{q:node:CLAIMANT}`` (set) what the claimant holds, for its reaper:
  ``g\\nNAME\\nCONN`` and ``c\\nUSER\\nCONN``. Written before the claim
  (in the same pipeline) and removed after its release, so a node that
  dies in between leaves nothing its reaper would miss.
* ``P{q:guest:NAME}`` (string) ``CLAIMANT/CONN``: who uses the lower-cased
  guest nickname.
* ``P{q:conns:USER}`` (hash) ``CLAIMANT/CONN`` -> 1 for each of the user's
  connections; the check against the cap and the count are one script.
* ``P{q:login:NAME}`` (hash, expires :data:`~roomcast.quota.memory.ACCOUNT_FORGET`
  after the last failure) the failures of a login name and the time its
  next attempt may start; ``P{q:login:NAME}:known`` (list) the addresses it
  signed in from lately (:data:`KNOWN_MEMORY`).
* ``P{q:addr:ADDRESS}`` (string, expires when full again) the address's
  login bucket as a GCRA theoretical arrival time.

Every node refreshes its claimant every ``ttl / 3`` seconds and takes the
ones whose time passed out of ``P{q:nodes}`` (one script: one node reaps
each) and releases what they held. A claim that meets a holder whose time
passed takes its place at once, without waiting for the reaper: a
crashed node keeps a name at most ``ttl`` seconds.

Redis away: each operation falls back to this node's own tables (the
:class:`~roomcast.quota.memory.MemoryQuotas` it keeps anyway, the truth for
what this node holds), logged once; no connection is refused because Redis
is down. The refresher tries again every ``ttl / 3`` seconds; when Redis
answers it makes Redis match this node's tables again (what was claimed
meanwhile is added, what was released is removed) and the limits count
over every node again.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
from collections import deque
from collections.abc import Iterable
from typing import Any, Final

from ..broker.redis_client import (
    COMMAND_TIMEOUT,
    REDIS_ERRORS,
    RedisClient,
    open_client,
    redis_reason,
)
from .memory import (
    ACCOUNT_FIRST_DELAY,
    ACCOUNT_FORGET,
    ACCOUNT_FREE_FAILURES,
    ACCOUNT_MAX_DELAY,
    ADDRESS_LOGIN_BURST,
    ADDRESS_LOGIN_RATE,
    LoginThrottle,
    MemoryQuotas,
    address_key,
)

__all__ = ["KNOWN_MEMORY", "RedisQuotas"]

logger = logging.getLogger("roomcast.quota")

#: Seconds an account remembers the addresses it signed in from (the last
#: :attr:`LoginThrottle.KNOWN_PER_ACCOUNT`): a month, so its owner's usual
#: places stay exempt from its delay; in memory they stayed until 100,000
#: other accounts pushed them out.
KNOWN_MEMORY: Final = 30 * 86400.0
#: Commands sent in one pipeline when a whole table is written (a resync, a reap).
BATCH: Final = 1000
#: The address bucket's arguments: ms between attempts, and the burst.
_BUCKET: Final = (round(1000 / ADDRESS_LOGIN_RATE), ADDRESS_LOGIN_BURST)

_NOW: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS: the claimants sorted set. ARGV: the claimant, its time to live in
# ms, '1' to register it. 1 when refreshed; 0 when Redis does not know it
# (any more), or its time passed: others may have taken its claims.
_ALIVE: Final = (
    _NOW
    + """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if ARGV[3] == '1' or (score and tonumber(score) >= now) then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
  return 1
end
return 0
"""
)

# KEYS: the claimants sorted set. The claimants whose time passed, taken
# out: the one caller that gets one reaps it.
_EXPIRED: Final = (
    _NOW
    + """
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. now)
for _, node in ipairs(dead) do redis.call('ZREM', KEYS[1], node) end
return dead
"""
)

# KEYS: the claimants sorted set. ARGV: claimants. 1 for each one alive.
_LIVE: Final = (
    _NOW
    + """
local out = {}
for i, node in ipairs(ARGV) do
  local score = redis.call('ZSCORE', KEYS[1], node)
  out[i] = (score and tonumber(score) >= now) and 1 or 0
end
return out
"""
)

# KEYS: a guest name. ARGV: the claim, a holder it may replace ('' none).
# {1} when the name is the claim's now; {0, holder} otherwise.
_CLAIM_GUEST: Final = """
local holder = redis.call('GET', KEYS[1])
if (not holder) or holder == ARGV[1] or holder == ARGV[2] then
  redis.call('SET', KEYS[1], ARGV[1])
  return {1}
end
return {0, holder}
"""

# KEYS: a guest name. ARGV: the claim to give back (only if it still holds).
_RELEASE_GUEST: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 0
"""

# KEYS: a user's connections hash. ARGV: this connection's field, the cap,
# then fields of dead holders to drop first. {1} when counted; {0, fields}
# when the user has ``cap`` already.
_ADD_CONNECTION: Final = """
for i = 3, #ARGV do redis.call('HDEL', KEYS[1], ARGV[i]) end
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return {1} end
local cap = tonumber(ARGV[2])
if cap > 0 and redis.call('HLEN', KEYS[1]) >= cap then
  return {0, redis.call('HKEYS', KEYS[1])}
end
redis.call('HSET', KEYS[1], ARGV[1], 1)
return {1}
"""

# KEYS: a name's failures hash and known addresses. ARGV: the address.
# Milliseconds its next attempt waits (0 from a known address).
_LOGIN_CHECK: Final = (
    _NOW
    + """
local wait = tonumber(redis.call('HGET', KEYS[1], 'next') or '0') - now
if wait <= 0 or redis.call('LPOS', KEYS[2], ARGV[1]) then return 0 end
return wait
"""
)

# KEYS: a name's failures hash and known addresses. ARGV: the address,
# '1' if the account exists, free failures, first delay, longest delay and
# forgetting time (ms). {wait ms, 0} when refused; {0, failures} when let in.
_LOGIN_ATTEMPT: Final = (
    _NOW
    + """
local nxt = tonumber(redis.call('HGET', KEYS[1], 'next') or '0')
local trusted = ARGV[2] == '1' and redis.call('LPOS', KEYS[2], ARGV[1])
if (not trusted) and nxt > now then return {nxt - now, 0} end
if trusted then redis.call('LREM', KEYS[2], 0, ARGV[1]) end
local n = redis.call('HINCRBY', KEYS[1], 'n', 1)
local past = n - tonumber(ARGV[3])
if past >= 0 then
  local delay = math.min(tonumber(ARGV[4]) * 2 ^ math.min(past, 16), tonumber(ARGV[5]))
  redis.call('HSET', KEYS[1], 'next', now + math.floor(delay))
end
redis.call('PEXPIRE', KEYS[1], ARGV[6])
return {0, n}
"""
)

# KEYS: a name's failures hash and known addresses. ARGV: the address, how
# many addresses to keep, for how long (ms).
_LOGIN_OK: Final = """
redis.call('DEL', KEYS[1])
redis.call('LREM', KEYS[2], 0, ARGV[1])
redis.call('RPUSH', KEYS[2], ARGV[1])
redis.call('LTRIM', KEYS[2], -tonumber(ARGV[2]), -1)
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return 0
"""

# KEYS: an address's bucket (a GCRA theoretical arrival time, ms). ARGV:
# ms between attempts, the burst, '1' to take an attempt. Milliseconds until
# one may go (0: now; taken if asked).
_ADDRESS_BUCKET: Final = (
    _NOW
    + """
local interval, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local wait = tat - now - (burst - 1) * interval
if wait > 0 then return wait end
if ARGV[3] == '1' then
  redis.call('SET', KEYS[1], tat + interval, 'PX', tat + interval - now)
end
return 0
"""
)

#: A release waiting to be sent: ``("g", name, conn)`` or ``("c", user, conn)``.
_Release = tuple[str, str, str]


class RedisQuotas:
    """:class:`~roomcast.quota.base.Quotas` shared by every node on one Redis (or Cluster).

    Args:
        url: the ``--redis-url`` (one server, a cluster node, or Sentinels).
        prefix: what every key starts with.
        ttl: seconds after which a node that stopped refreshing is taken for
            dead and what it held is free (its claims are refreshed every
            ``ttl / 3`` seconds, as presence is).
    """

    def __init__(self, url: str, *, prefix: str = "roomcast:", ttl: float = 30.0) -> None:
        if ttl <= 0:
            raise ValueError("ttl must be positive")
        self.url = url
        self.prefix = prefix
        self.ttl = ttl
        #: What this node holds (the truth Redis is made to match), and the
        #: fallback while Redis cannot be reached.
        self._local = MemoryQuotas(LoginThrottle())
        self._redis: RedisClient | None = None
        self._node_id = ""
        self._incarnation = 0
        self._claimant = ""
        self._nodes_key = f"{prefix}{{q:nodes}}"
        #: Redis answered the last operation; False: this node counts alone.
        self._healthy = False
        #: Redis must be made to match the local tables (claims and releases
        #: made while it could not be reached).
        self._needs_sync = False
        #: The fallback was logged (once an outage).
        self._said_down = False
        self._releases: deque[_Release] = deque()
        self._wakeup = asyncio.Event()
        #: The releases being sent now, and a future set when they are.
        self._inflight: set[_Release] = set()
        self._inflight_done: asyncio.Future[None] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        #: close() began: the loops stop (a cancellation alone may be lost: redis-py's
        #: pipelines can swallow one).
        self._closing = False

    # -- keys ---------------------------------------------------------------------------

    def _index_key(self, claimant: str) -> str:
        return f"{self.prefix}{{q:node:{claimant}}}"

    def _guest_key(self, name: str) -> str:
        return f"{self.prefix}{{q:guest:{name}}}"

    def _conns_key(self, user: str) -> str:
        return f"{self.prefix}{{q:conns:{user}}}"

    def _login_keys(self, name: str) -> tuple[str, str]:
        key = f"{self.prefix}{{q:login:{name.lower()}}}"
        return key, f"{key}:known"

    def _address_key(self, address: str) -> str:
        return f"{self.prefix}{{q:addr:{address_key(address)}}}"

    # -- life cycle -----------------------------------------------------------------------

    async def start(self, node_id: str) -> None:
        """Register this node; when Redis does not answer, count alone until it does."""
        self._node_id = node_id
        self._new_incarnation()
        try:
            await self._open()
            await self._alive(register=True)
            self._healthy = True
        except REDIS_ERRORS as exc:
            self._failed(exc)
        self._tasks = [
            asyncio.ensure_future(self._refresh_forever()),
            asyncio.ensure_future(self._release_forever()),
        ]

    async def close(self) -> None:
        """Give back everything this node holds and leave ``P{q:nodes}``."""
        self._closing = True
        self._wakeup.set()
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=COMMAND_TIMEOUT)
        redis = self._redis
        if redis is None:
            return
        if self._healthy:
            try:
                async with asyncio.timeout(COMMAND_TIMEOUT * 2):
                    await self._reap_claimant(self._claimant)
                    await redis.zrem(self._nodes_key, self._claimant)
            except (*REDIS_ERRORS, TimeoutError) as exc:
                # The others reap this node once its time passes.
                logger.warning(
                    "cannot give back this node's quotas in Redis: %s", redis_reason(exc)
                )
        self._redis = None
        with contextlib.suppress(*REDIS_ERRORS):
            await redis.aclose()

    async def _open(self) -> RedisClient:
        if self._redis is None:
            self._redis = await open_client(
                self.url, name=f"{self.prefix}{self._node_id}:quota", retries=1
            )
        return self._redis

    def _new_incarnation(self) -> None:
        self._incarnation += 1
        self._claimant = f"{self._node_id}-{self._incarnation}"

    def _failed(self, exc: BaseException) -> None:
        """Redis did not answer: count on this node alone until it does (said once)."""
        if not self._said_down:
            self._said_down = True
            logger.warning(
                "cannot reach Redis for the shared limits (%s): guest names, connections per "
                "user and logins are counted on this node only until it answers",
                redis_reason(exc),
            )
        self._healthy = False
        self._needs_sync = True
        self._releases.clear()

    # -- guest nicknames ---------------------------------------------------------------

    async def claim_guest(self, name: str, conn: str) -> bool:
        local = self._local
        if not local.claim_guest_now(name, conn):
            return False  # on this node already
        if not self._healthy:
            self._needs_sync = True
            return True
        lower = name.lower()
        await self._settled(("g", lower, conn))
        try:
            claimed = await self._claim_guest(lower, conn)
        except REDIS_ERRORS as exc:
            self._failed(exc)
            return local.guest_holder(name) == conn
        if not claimed:
            local.release_guest(name, conn)
        return claimed

    async def _claim_guest(self, lower: str, conn: str) -> bool:
        """Claim ``lower`` in Redis (one round trip, more only when a holder must be checked)."""
        redis = self._redis
        assert redis is not None
        claimant = self._claimant
        key, entry, value = self._guest_key(lower), f"g\n{lower}\n{conn}", f"{claimant}/{conn}"
        index = self._index_key(claimant)
        async with redis.pipeline(transaction=False) as pipe:
            pipe.sadd(index, entry)
            pipe.eval(_CLAIM_GUEST, 1, key, value, "")
            _, answer = await pipe.execute()
        if int(answer[0]):
            return True
        holder = _text(answer[1])
        owner = holder.split("/", 1)[0]
        # This node's own other claim is one given back (the local table says
        # who holds the name here); another node's counts while it is alive.
        if owner == claimant or not (await self._live([owner]))[0]:
            answer = await redis.eval(_CLAIM_GUEST, 1, key, value, holder)
            if int(answer[0]):
                if owner != claimant:
                    logger.info("guest name %s taken over from %s, gone", lower, owner)
                return True
        await redis.srem(index, entry)
        return False

    def release_guest(self, name: str, conn: str) -> None:
        local = self._local
        if local.guest_holder(name) != conn:
            return
        local.release_guest(name, conn)
        self._release(("g", name.lower(), conn))

    # -- connections per user ----------------------------------------------------------

    async def add_connection(self, user: str, conn: str, cap: int) -> bool:
        local = self._local
        if conn in local.connections_of(user):
            return True
        if not local.add_connection_now(user, conn, cap):
            return False  # this node alone has the cap
        if not self._healthy:
            self._needs_sync = True
            return True
        await self._settled(("c", user, conn))
        try:
            counted = await self._add_connection(user, conn, cap)
        except REDIS_ERRORS as exc:
            self._failed(exc)
            return conn in local.connections_of(user)
        if not counted:
            local.remove_connection(user, conn)
        return counted

    async def _add_connection(self, user: str, conn: str, cap: int) -> bool:
        """Count ``conn`` in Redis if the user has fewer than ``cap`` on all nodes."""
        redis = self._redis
        assert redis is not None
        claimant = self._claimant
        key, entry, field = self._conns_key(user), f"c\n{user}\n{conn}", f"{claimant}/{conn}"
        index = self._index_key(claimant)
        async with redis.pipeline(transaction=False) as pipe:
            pipe.sadd(index, entry)
            pipe.eval(_ADD_CONNECTION, 1, key, field, cap)
            _, answer = await pipe.execute()
        if int(answer[0]):
            return True
        # At the cap: unless some of those are this node's given back, or a
        # dead node's, not reaped yet.
        fields = [_text(item) for item in answer[1]]
        mine = {f"{claimant}/{c}" for c in self._local.connections_of(user)}
        others = sorted({f.split("/", 1)[0] for f in fields} - {claimant})
        alive = dict(zip(others, await self._live(others), strict=True)) if others else {}
        stale = [
            f
            for f in fields
            if (f.split("/", 1)[0] == claimant and f not in mine)
            or not alive.get(f.split("/", 1)[0], True)
        ]
        if stale:
            answer = await redis.eval(_ADD_CONNECTION, 1, key, field, cap, *stale)
            if int(answer[0]):
                return True
        await redis.srem(index, entry)
        return False

    def remove_connection(self, user: str, conn: str) -> None:
        local = self._local
        if conn not in local.connections_of(user):
            return
        local.remove_connection(user, conn)
        self._release(("c", user, conn))

    async def _live(self, claimants: list[str]) -> list[bool]:
        """Whether each of ``claimants`` refreshed itself in time."""
        redis = self._redis
        assert redis is not None
        answer = await redis.eval(_LIVE, 1, self._nodes_key, *claimants)
        return [bool(int(item)) for item in answer]

    # -- releases ------------------------------------------------------------------------

    def _release(self, op: _Release) -> None:
        """Send ``op`` soon (with others); while Redis is away, the resync will."""
        if self._healthy:
            self._releases.append(op)
            self._wakeup.set()
        else:
            self._needs_sync = True

    async def _settled(self, op: _Release) -> None:
        """Wait while a release of the same claim is being sent (it would undo this one)."""
        while op in self._inflight and self._inflight_done is not None:
            await asyncio.shield(self._inflight_done)

    def _held(self, op: _Release) -> bool:
        """Whether ``op``'s claim is held here again (then it is not released)."""
        kind, name, conn = op
        if kind == "g":
            return self._local.guest_holder(name) == conn
        return conn in self._local.connections_of(name)

    async def _release_forever(self) -> None:
        """Send the releases queued since the last batch, in one pipeline."""
        while not self._closing:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._releases and self._healthy and not self._closing:
                batch: list[_Release] = []
                while self._releases and len(batch) < BATCH:
                    op = self._releases.popleft()
                    if not self._held(op):
                        batch.append(op)
                if not batch:
                    continue
                done = asyncio.get_running_loop().create_future()
                self._inflight, self._inflight_done = set(batch), done
                try:
                    await self._send_releases(self._claimant, batch)
                except REDIS_ERRORS as exc:
                    self._failed(exc)
                except Exception:  # a bug here must not stop the releases
                    logger.exception("giving back quota claims in Redis failed")
                    self._needs_sync = True
                finally:
                    self._inflight, self._inflight_done = set(), None
                    done.set_result(None)

    async def _send_releases(self, claimant: str, ops: Iterable[_Release]) -> None:
        """Give back ``claimant``'s claims ``ops``, then forget them in its index."""
        redis = self._redis
        assert redis is not None
        index = self._index_key(claimant)
        for chunk in _chunks(list(ops), BATCH):
            async with redis.pipeline(transaction=False) as pipe:
                for kind, name, conn in chunk:
                    value = f"{claimant}/{conn}"
                    if kind == "g":
                        pipe.eval(_RELEASE_GUEST, 1, self._guest_key(name), value)
                    else:
                        pipe.hdel(self._conns_key(name), value)
                pipe.srem(index, *(f"{kind}\n{name}\n{conn}" for kind, name, conn in chunk))
                await pipe.execute()

    # -- refresh, resync, reaping -----------------------------------------------------------

    async def _alive(self, *, register: bool = False) -> bool:
        """Refresh this node's time; False when Redis did not know it (any more)."""
        redis = await self._open()
        ttl = int(self.ttl * 1000)
        flag = "1" if register else "0"
        answer = await redis.eval(_ALIVE, 1, self._nodes_key, self._claimant, ttl, flag)
        return bool(int(answer))

    async def _refresh_forever(self) -> None:
        """Keep this node alive in Redis, resync after an outage, and reap dead nodes."""
        while not self._closing:
            await asyncio.sleep(self.ttl / 3 * random.uniform(0.75, 1.25))
            if self._closing:
                break
            try:
                await self.refresh()
            except Exception:  # a bug here must not stop the refreshing
                logger.exception("refreshing the quotas in Redis failed")

    async def refresh(self) -> None:
        """One turn of the refresher (the tests call it to skip the wait)."""
        try:
            if not await self._alive():
                if self._healthy:
                    logger.warning("Redis did not know this node any more: claiming anew")
                self._new_incarnation()
                await self._alive(register=True)
                self._needs_sync = True
            if self._needs_sync or not self._healthy:
                await self._sync()
            await self._reap()
        except REDIS_ERRORS as exc:
            self._failed(exc)

    async def _sync(self) -> None:
        """Make Redis hold what the local tables hold, and nothing else of this node's."""
        redis = self._redis
        assert redis is not None
        claimant = self._claimant
        index = self._index_key(claimant)
        have = {_text(item) for item in await redis.smembers(index)}
        # From here the operations go to Redis again; what is read now is what is written.
        self._healthy, self._needs_sync = True, False
        self._releases.clear()
        local = self._local
        want = {f"g\n{name}\n{conn}": (name, conn) for name, conn in local.guests().items()}
        conns = {
            f"c\n{user}\n{conn}": (user, conn)
            for user, held in local.connections().items()
            for conn in held
        }
        gone: list[_Release] = []
        for entry in have - want.keys() - conns.keys():
            kind, name, conn = entry.split("\n", 2)
            gone.append((kind, name, conn))
        new_guests = [want[entry] for entry in want.keys() - have]
        new_conns = [conns[entry] for entry in conns.keys() - have]
        clashes = 0
        for chunk in _chunks(new_guests, BATCH):
            async with redis.pipeline(transaction=False) as pipe:
                pipe.sadd(index, *(f"g\n{name}\n{conn}" for name, conn in chunk))
                for name, conn in chunk:
                    pipe.eval(_CLAIM_GUEST, 1, self._guest_key(name), f"{claimant}/{conn}", "")
                answers = (await pipe.execute())[1:]
            for (name, conn), answer in zip(chunk, answers, strict=True):
                if not int(answer[0]) and not await self._claim_guest(name, conn):
                    clashes += 1
        for chunk in _chunks(new_conns, BATCH):
            async with redis.pipeline(transaction=False) as pipe:
                pipe.sadd(index, *(f"c\n{user}\n{conn}" for user, conn in chunk))
                for user, conn in chunk:
                    pipe.hset(self._conns_key(user), f"{claimant}/{conn}", 1)
                await pipe.execute()
        if gone:
            await self._send_releases(claimant, gone)
        if clashes:
            logger.warning(
                "%d guest names used here were taken on other nodes while Redis was away",
                clashes,
            )
        for name, conn in new_guests:
            if not self._held(("g", name, conn)):  # given back while this was written
                self._release(("g", name, conn))
        for user, conn in new_conns:
            if not self._held(("c", user, conn)):
                self._release(("c", user, conn))
        if self._said_down:
            self._said_down = False
            logger.warning(
                "Redis answers again: guest names, connections per user and logins are counted "
                "over every node (%d claims restored, %d given back)",
                len(new_guests) + len(new_conns),
                len(gone),
            )

    async def _reap(self) -> None:
        """Release what the nodes that stopped refreshing held (one node reaps each)."""
        redis = self._redis
        assert redis is not None
        dead = await redis.eval(_EXPIRED, 1, self._nodes_key)
        for claimant in (_text(item) for item in dead):
            released = await self._reap_claimant(claimant)
            logger.info("released %d quota claims of %s: it stopped answering", released, claimant)

    async def _reap_claimant(self, claimant: str) -> int:
        """Release every claim ``claimant`` holds and drop its index; how many there were."""
        redis = self._redis
        assert redis is not None
        index = self._index_key(claimant)
        entries = [_text(item).split("\n", 2) for item in await redis.smembers(index)]
        ops = [(kind, name, conn) for kind, name, conn in entries]
        if ops:
            await self._send_releases(claimant, ops)
        await redis.delete(index)
        return len(ops)

    # -- logins --------------------------------------------------------------------------

    async def login_check(self, address: str, name: str) -> float:
        if not self._healthy:
            return await self._local.login_check(address, name)
        redis = self._redis
        assert redis is not None
        where = address_key(address)
        try:
            async with redis.pipeline(transaction=False) as pipe:
                pipe.eval(_LOGIN_CHECK, 2, *self._login_keys(name), where)
                pipe.eval(_ADDRESS_BUCKET, 1, self._address_key(address), *_BUCKET, "0")
                account, bucket = await pipe.execute()
        except REDIS_ERRORS as exc:
            self._failed(exc)
            return await self._local.login_check(address, name)
        return max(int(account), int(bucket)) / 1000

    async def login_attempt(self, address: str, name: str, *, exists: bool) -> float:
        if not self._healthy:
            return await self._local.login_attempt(address, name, exists=exists)
        redis = self._redis
        assert redis is not None
        try:
            # The address first: an attempt it refuses counts for no account.
            wait = await redis.eval(_ADDRESS_BUCKET, 1, self._address_key(address), *_BUCKET, "1")
            if int(wait) > 0:
                return int(wait) / 1000
            answer = await redis.eval(
                _LOGIN_ATTEMPT,
                2,
                *self._login_keys(name),
                address_key(address),
                "1" if exists else "0",
                ACCOUNT_FREE_FAILURES,
                int(ACCOUNT_FIRST_DELAY * 1000),
                int(ACCOUNT_MAX_DELAY * 1000),
                int(ACCOUNT_FORGET * 1000),
            )
        except REDIS_ERRORS as exc:
            self._failed(exc)
            return await self._local.login_attempt(address, name, exists=exists)
        wait, failures = int(answer[0]), int(answer[1])
        if exists and failures == ACCOUNT_FREE_FAILURES:
            logger.warning("%d failed logins for %s; later attempts wait", failures, name.lower())
        return wait / 1000

    async def login_succeeded(self, address: str, name: str) -> None:
        if not self._healthy:
            await self._local.login_succeeded(address, name)
            return
        redis = self._redis
        assert redis is not None
        try:
            await redis.eval(
                _LOGIN_OK,
                2,
                *self._login_keys(name),
                address_key(address),
                LoginThrottle.KNOWN_PER_ACCOUNT,
                int(KNOWN_MEMORY * 1000),
            )
        except REDIS_ERRORS as exc:
            self._failed(exc)
            await self._local.login_succeeded(address, name)


def _chunks(items: list[Any], size: int) -> Iterable[list[Any]]:
    it = iter(items)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
