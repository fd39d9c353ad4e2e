"""Quotas counted in this process: today's one-node behaviour, and the fallback.

:class:`MemoryQuotas` answers the :class:`~roomcast.quota.base.Quotas`
questions from dictionaries: right for one node, and what a node falls
back on while Redis cannot be reached. :class:`LoginThrottle` is the login
throttle's arithmetic (per account, per address, known addresses) in
memory; :mod:`roomcast.quota.redis` keeps the same rules in Redis.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from typing import Final

from ..ratelimit import KeyedBuckets

__all__ = [
    "ACCOUNT_FIRST_DELAY",
    "ACCOUNT_FORGET",
    "ACCOUNT_FREE_FAILURES",
    "ACCOUNT_MAX_DELAY",
    "ADDRESS_LOGIN_BURST",
    "ADDRESS_LOGIN_RATE",
    "AddressBuckets",
    "LoginThrottle",
    "MemoryQuotas",
    "address_key",
]

logger = logging.getLogger("roomcast.quota")

#: Failed logins an account may have before its next attempts must wait: typos
#: and a forgotten caps lock.
ACCOUNT_FREE_FAILURES: Final = 5
#: The wait after the next failure; each further failure doubles it ...
ACCOUNT_FIRST_DELAY: Final = 1.0
#: ... up to this. A guesser spread over any number of addresses gets one
#: attempt a minute at an account (after the first five: about 70 in the
#: first hour, then 60 an hour), and someone failing on purpose can make its
#: owner wait at most this long, never lock it (nor at all from an address
#: it signed in from, :attr:`LoginThrottle.KNOWN_PER_ACCOUNT`).
ACCOUNT_MAX_DELAY: Final = 60.0
#: An account with no failed login for this long starts afresh.
ACCOUNT_FORGET: Final = 15 * 60.0
#: Login attempts per client address: a burst (a class or an office behind one
#: NAT signing in at once), then one every 2 s. Each costs an argon2id hash
#: (about 0.1 s of a core), so one address keeps at most 5 % of a core busy,
#: and spraying one password over many accounts goes at 1,800 names an hour.
ADDRESS_LOGIN_BURST: Final = 30
ADDRESS_LOGIN_RATE: Final = 1 / 2


def address_key(address: str) -> str:
    """What per-address limits count under: the address; for IPv6 its /64.

    One IPv6 host usually holds a whole /64 (64 bits of addresses to choose from).
    """
    if ":" not in address:
        return address
    try:
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    except ValueError:
        return address


class AddressBuckets(KeyedBuckets):
    """A token bucket per client address, counted under :func:`address_key`."""

    __slots__ = ()

    def take(self, key: str, now: float) -> float:
        return super().take(address_key(key), now)

    def wait(self, key: str, now: float) -> float:
        return super().wait(address_key(key), now)


class _Failures:
    """An account's (or a name's) failed logins since its last success."""

    __slots__ = ("count", "last", "next_try")

    def __init__(self) -> None:
        self.count = 0
        #: When the last one was counted.
        self.last = 0.0
        #: The next attempt may not start before this.
        self.next_try = 0.0


class LoginThrottle:
    """Slows password guessing per account and per address; a lockout stays short.

    - **Per account**: failures are counted per lower-cased name, whatever
      address they come from. Past :data:`ACCOUNT_FREE_FAILURES`, the next
      attempt waits :data:`ACCOUNT_FIRST_DELAY`, doubling with each failure
      up to :data:`ACCOUNT_MAX_DELAY`; a success starts afresh. Names that
      exist are kept in a table only they enter (so no flood of other names
      can push them out); names that do not are throttled alike in a
      bounded table (so a 429 does not tell which names exist).
    - **Known addresses**: an address an account signed in from recently
      is not held up by that account's delay, so failing on purpose cannot
      lock its owner out. An attempt from it that fails makes it unknown.
    - **Per address**: :data:`ADDRESS_LOGIN_BURST` attempts, then
      :data:`ADDRESS_LOGIN_RATE` a second, over all names.

    An attempt counts as failed from when it starts (:meth:`attempt`) until
    it succeeds (:meth:`succeeded`), so parallel guesses are counted before
    the password hashes finish. Times are the caller's monotonic seconds.
    """

    __slots__ = ("_accounts", "_addresses", "_known", "_sweep_at", "_unknown")

    #: Names that do not exist, kept before the least recent is forgotten.
    MAX_UNKNOWN: Final = 10_000
    #: Addresses remembered per account, and accounts remembered.
    KNOWN_PER_ACCOUNT: Final = 4
    MAX_KNOWN: Final = 100_000

    def __init__(self) -> None:
        self._accounts: dict[str, _Failures] = {}
        self._unknown: dict[str, _Failures] = {}
        self._known: dict[str, list[str]] = {}
        self._addresses = AddressBuckets(ADDRESS_LOGIN_RATE, ADDRESS_LOGIN_BURST)
        #: Size of ``_accounts`` at which quiet accounts are swept out.
        self._sweep_at = 1024

    def check(self, address: str, name: str, now: float) -> float:
        """Seconds this attempt will wait, as far as is known without the store (0: ask it).

        A refused attempt is answered before the store is asked whether the
        name exists, so a flood of refused attempts costs no read;
        :meth:`attempt` decides.
        """
        key = name.lower()
        wait = 0.0
        for table in (self._accounts, self._unknown):
            failures = table.get(key)
            if failures is not None and now - failures.last < ACCOUNT_FORGET:
                wait = max(wait, failures.next_try - now)
        if wait > 0 and address_key(address) in self._known.get(key, ()):
            wait = 0.0  # the owner's address: :meth:`attempt` lets it in
        return max(wait, self._addresses.wait(address, now))

    def attempt(self, address: str, name: str, *, exists: bool, now: float) -> float:
        """Seconds until this login may be tried; 0: go ahead (counted as failed until it works)."""
        key = name.lower()
        where = address_key(address)
        table = self._accounts if exists else self._unknown
        failures = table.get(key)
        if failures is not None and now - failures.last >= ACCOUNT_FORGET:
            del table[key]
            failures = None
        known = self._known.get(key)
        trusted = exists and known is not None and where in known
        if failures is not None and not trusted and failures.next_try > now:
            return failures.next_try - now
        wait = self._addresses.take(address, now)
        if wait > 0:
            return wait
        if trusted and known is not None:
            known.remove(where)  # until this attempt succeeds
        if failures is None:
            failures = table[key] = _Failures()
        elif not exists:
            table[key] = table.pop(key)  # most recent last
        failures.count += 1
        failures.last = now
        past = failures.count - ACCOUNT_FREE_FAILURES
        if past >= 0:
            delay = min(ACCOUNT_FIRST_DELAY * 2 ** min(past, 16), ACCOUNT_MAX_DELAY)
            failures.next_try = now + delay
            if past == 0 and exists:
                logger.warning("%d failed logins for %s; later attempts wait", failures.count, key)
        if exists:
            self._sweep(now)
        elif len(table) > self.MAX_UNKNOWN:
            del table[next(iter(table))]
        return 0.0

    def succeeded(self, address: str, name: str) -> None:
        """The attempt for ``name`` worked: forget its failures, remember the address."""
        key = name.lower()
        self._accounts.pop(key, None)
        self._unknown.pop(key, None)
        known = self._known.pop(key, None) or []
        where = address_key(address)
        if where in known:
            known.remove(where)
        known.append(where)
        self._known[key] = known[-self.KNOWN_PER_ACCOUNT :]  # most recent last
        if len(self._known) > self.MAX_KNOWN:
            del self._known[next(iter(self._known))]

    def _sweep(self, now: float) -> None:
        """Drop accounts quiet for :data:`ACCOUNT_FORGET`, once the table doubled."""
        if len(self._accounts) < self._sweep_at:
            return
        for key in [k for k, f in self._accounts.items() if now - f.last >= ACCOUNT_FORGET]:
            del self._accounts[key]
        self._sweep_at = max(1024, 2 * len(self._accounts))


class MemoryQuotas:
    """:class:`~roomcast.quota.base.Quotas` for one process: what this node sees is all there is.

    Guest nicknames are compared lower-cased (``Ann`` and ``ann`` are one
    name to a reader). Connections are counted per user by their session
    ids, so counting one twice or giving one back twice changes nothing.
    """

    __slots__ = ("_conns", "_guests", "throttle")

    def __init__(self, throttle: LoginThrottle | None = None) -> None:
        #: Lower-cased guest nickname -> the connection using it.
        self._guests: dict[str, str] = {}
        #: User -> the connections counted for them.
        self._conns: dict[str, set[str]] = {}
        #: The login throttle's state.
        self.throttle = throttle if throttle is not None else LoginThrottle()

    async def start(self, node_id: str) -> None:
        """Nothing to start: the tables are this object's."""

    async def close(self) -> None:
        """Nothing to give back: the tables go with the process."""

    # -- guest nicknames ---------------------------------------------------------------

    async def claim_guest(self, name: str, conn: str) -> bool:
        return self.claim_guest_now(name, conn)

    def claim_guest_now(self, name: str, conn: str) -> bool:
        """:meth:`claim_guest` without waiting: this process's tables only."""
        holder = self._guests.setdefault(name.lower(), conn)
        return holder == conn

    def release_guest(self, name: str, conn: str) -> None:
        key = name.lower()
        if self._guests.get(key) == conn:
            del self._guests[key]

    def guest_holder(self, name: str) -> str | None:
        """The connection using guest nickname ``name`` here, or None."""
        return self._guests.get(name.lower())

    def guests(self) -> dict[str, str]:
        """Every guest nickname held here (lower-cased) -> its connection."""
        return dict(self._guests)

    # -- connections per user ----------------------------------------------------------

    async def add_connection(self, user: str, conn: str, cap: int) -> bool:
        return self.add_connection_now(user, conn, cap)

    def add_connection_now(self, user: str, conn: str, cap: int) -> bool:
        """:meth:`add_connection` without waiting: this process's tables only."""
        conns = self._conns.setdefault(user, set())
        if conn in conns:
            return True
        if cap > 0 and len(conns) >= cap:
            if not conns:
                del self._conns[user]
            return False
        conns.add(conn)
        return True

    def remove_connection(self, user: str, conn: str) -> None:
        conns = self._conns.get(user)
        if conns is not None:
            conns.discard(conn)
            if not conns:
                del self._conns[user]

    def connections_of(self, user: str) -> set[str]:
        """The connections counted here for ``user``."""
        return set(self._conns.get(user, ()))

    def connections(self) -> dict[str, set[str]]:
        """Every user counted here -> their connections."""
        return {user: set(conns) for user, conns in self._conns.items()}

    # -- logins ------------------------------------------------------------------------

    async def login_check(self, address: str, name: str) -> float:
        return self.throttle.check(address, name, time.monotonic())

    async def login_attempt(self, address: str, name: str, *, exists: bool) -> float:
        return self.throttle.attempt(address, name, exists=exists, now=time.monotonic())

    async def login_succeeded(self, address: str, name: str) -> None:
        self.throttle.succeeded(address, name)
