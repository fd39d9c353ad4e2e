"""Connections: who a connection is, and until when.

A connection arrives as a guest or signed in (a token at the handshake), or
must send ``auth`` first when guests are off. :class:`Connections` welcomes
it, keeps its deadlines (authenticate in time, renew an expiring token),
changes its identity on ``auth`` (re-checking every room it is in), caps the
connections per user, and takes a name away from the guests using it when
a registered user claims it, on every node.

A guest's nickname and a registered user's connections are claimed in the
node's :class:`~roomcast.quota.base.Quotas` (in Redis when nodes share one,
so a nickname is unique and the cap holds over every node): at most one
claim, one round trip, per connect or ``auth``, given back when the
connection ends or changes identity. The random ``guest-`` names are not
claimed: nobody can choose one, and they come from 2^32.

It also remembers which sign-in (session id, the token's ``sid``) each
connection authenticated with, at the handshake or by its latest ``auth``
(a guest has none), so that :class:`~roomcast.revocation.Revocations` can
close the connections of a session that was signed out.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import time
import uuid
from collections.abc import Callable
from typing import Any, Final

from .accounts import Accounts
from .broker.base import Broker, Publication
from .config import Limits
from .exceptions import AuthError
from .hub import Hub, Peer
from .membership import Membership
from .model import UserInfo
from .outbox import Outbox
from .protocol.codes import CloseCode, ErrorCode
from .protocol.messages import AuthFrame, AuthOk, ErrorReply, Left, Welcome
from .protocol.session import Session
from .quota.base import Quotas
from .quota.memory import MemoryQuotas
from .rooms import Rooms
from .store.base import Store
from .streams import Streams

__all__ = ["AUTH_TIMEOUT", "GUEST_NAME", "REAUTH_TIMEOUT", "Connections", "SignedInSession"]

#: Nicknames a guest may choose: letters, digits, ``_`` and ``-``, 1 to 32.
GUEST_NAME: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,31}")

#: Seconds an unauthenticated connection has to ``auth`` when guests are off.
AUTH_TIMEOUT: Final = 10.0
#: Seconds a connection whose token expired has to send a fresh one.
REAUTH_TIMEOUT: Final = 30.0

#: The error and close reason when a user is over ``max_connections_per_user``.
TOO_MANY_CONNECTIONS: Final = "too many connections for this user"

#: Seconds a claimed name is remembered: longer than any store read a guest
#: ``auth`` waits on, so a registration it did not see still refuses it.
CLAIM_MEMORY: Final = 60.0

#: The close reason for a guest whose name a registered user took.
NAME_CLAIMED: Final = "your name now belongs to a registered user"


class SignedInSession(Session):
    """A new connection's protocol state, with the sign-in its handshake token named.

    The handshake is checked before there is a peer: the session carries the
    session id to :meth:`Connections.connect`, which indexes the peer by it.
    """

    __slots__ = ("sign_in",)

    def __init__(self, session_id: str, user: UserInfo | None, sign_in: str, **limits: Any) -> None:
        super().__init__(session_id, user, **limits)
        self.sign_in = sign_in


class Connections:
    """Identity and deadlines of this node's connections.

    Args:
        node_id: this node's id, on its name claims.
        hub: this node's connections.
        membership: presence follows a rename.
        streams: a refused room is left; an inbox is closed with its last connection.
        rooms: a new identity keeps only the rooms it may be in.
        store: whether a name is registered.
        broker: carries name claims to the other nodes.
        accounts: verifies tokens; None accepts no token.
        limits: ``max_rooms``, message size and rate, connections per user.
        outbox: welcome, auth answers and errors.
        guests: whether a connection without a token is a guest.
        heartbeat: the ping interval announced in the welcome frame.
        auth_timeout: seconds a connection has to ``auth`` when guests are off.
        reauth_timeout: seconds a connection whose token expired has to send a new one.
        quotas: guest nicknames and connections per user, counted over every node;
            this process's own by default.
    """

    def __init__(
        self,
        *,
        node_id: str,
        hub: Hub,
        membership: Membership,
        streams: Streams,
        rooms: Rooms,
        store: Store,
        broker: Broker,
        accounts: Accounts | None,
        limits: Limits,
        outbox: Outbox,
        guests: bool,
        heartbeat: float,
        auth_timeout: float,
        reauth_timeout: float,
        quotas: Quotas | None = None,
    ) -> None:
        self._node_id = node_id
        self._hub = hub
        self._membership = membership
        self._streams = streams
        self._rooms = rooms
        self._store = store
        self._broker = broker
        self._accounts = accounts
        self._limits = limits
        self._outbox = outbox
        self.guests = guests
        self.heartbeat = heartbeat
        self.auth_timeout = auth_timeout
        self.reauth_timeout = reauth_timeout
        self._quotas: Quotas = quotas if quotas is not None else MemoryQuotas()
        #: What each connection holds in the quotas: a guest nickname
        #: (lower-cased, True) or a count under its user (False).
        self._held: dict[Peer, tuple[str, bool]] = {}
        #: Per connection: the timer of its token's expiry or its auth deadline.
        self._deadlines: dict[Peer, asyncio.TimerHandle] = {}
        #: Names claimed lately (lower case -> loop time), for a guest ``auth``
        #: whose store read was answered before the name was registered.
        self._claims: dict[str, float] = {}
        #: The session id each signed-in connection authenticated with ...
        self._sign_ins: dict[Peer, str] = {}
        #: ... and the connections of each session id.
        self._by_sign_in: dict[str, dict[Peer, None]] = {}

    # -- arriving and leaving ---------------------------------------------------

    def new_session(self, user: UserInfo | None = None, *, sign_in: str | None = None) -> Session:
        """A session for a new connection: ``user``, else a guest unless guests are off.

        ``sign_in`` is the session id of the token ``user`` signed in with at
        the handshake, if any.
        """
        if user is None and self.guests:
            user = UserInfo(self._guest_name(), True)
        limits = self._limits
        options: dict[str, Any] = {
            "max_rooms": limits.max_rooms,
            "max_message_chars": limits.max_message_chars,
            "rate_limit": limits.rate_limit,
            "rate_burst": limits.rate_burst,
        }
        if sign_in is not None and user is not None:
            return SignedInSession(uuid.uuid4().hex, user, sign_in, **options)
        return Session(uuid.uuid4().hex, user, **options)

    def _guest_name(self) -> str:
        while True:
            name = f"guest-{secrets.token_hex(4)}"
            if not self._hub.name_in_use(name):
                return name

    async def connect(self, peer: Peer) -> bool:
        """A connection is open: welcome it; True when it enters the lobby now.

        One signed in at the handshake counts against its user's cap first
        (on every node): one past it is closed before its welcome.
        """
        session = peer.session
        want = self._claim_for(session.user)
        if want is not None:
            if not await self._claim(want, session.id):
                peer.close(CloseCode.POLICY_VIOLATION, TOO_MANY_CONNECTIONS)
                return False
            self._held[peer] = want
        if session.user is not None and not session.user.guest:
            # A token at the handshake follows the same rule as ``auth``.
            self.claim_name(session.user.name)
            if isinstance(session, SignedInSession):
                self._signed_in(peer, session.sign_in)
        self._membership.connected(peer)
        welcome = Welcome(session.id, session.user or UserInfo("", False), self.heartbeat)
        self._outbox.reply(peer, welcome)
        if session.user is None:
            self._set_deadline(peer, self.auth_timeout, self._auth_timed_out)
            return False
        return True

    def disconnect(self, peer: Peer) -> None:
        """A connection ended: forget it and tell the rooms it was in."""
        deadline = self._deadlines.pop(peer, None)
        if deadline is not None:
            deadline.cancel()
        self._signed_out(peer)
        held = self._held.pop(peer, None)
        if held is not None:
            self._release(held, peer.session.id)
        user = peer.session.user
        for room in self._membership.remove(peer):
            self._streams.forget_room(room)
        if user is not None:
            self._streams.forget_inbox(user.name)

    # -- sign-ins ----------------------------------------------------------------

    def signed_in_with(self, session_id: str) -> list[Peer]:
        """This node's connections that authenticated with session ``session_id``."""
        peers = self._by_sign_in.get(session_id)
        return list(peers) if peers else []

    def sign_in_of(self, peer: Peer) -> str | None:
        """The session id ``peer`` authenticated with, or None (a guest, or none yet)."""
        return self._sign_ins.get(peer)

    def _signed_in(self, peer: Peer, session_id: str) -> None:
        """``peer`` authenticated with ``session_id`` (replacing what it had)."""
        self._signed_out(peer)
        self._sign_ins[peer] = session_id
        self._by_sign_in.setdefault(session_id, {})[peer] = None

    def _signed_out(self, peer: Peer) -> None:
        session_id = self._sign_ins.pop(peer, None)
        if session_id is None:
            return
        peers = self._by_sign_in.get(session_id)
        if peers is not None:
            peers.pop(peer, None)
            if not peers:
                del self._by_sign_in[session_id]

    # -- deadlines ---------------------------------------------------------------

    def set_token_expiry(self, peer: Peer, expires_at: float) -> None:
        """Ask ``peer`` for a fresh token when its token expires (epoch seconds)."""
        self._set_deadline(peer, max(0.0, expires_at - time.time()), self._token_expired)

    def _set_deadline(self, peer: Peer, delay: float, action: Callable[[Peer], None]) -> None:
        old = self._deadlines.pop(peer, None)
        if old is not None:
            old.cancel()
        loop = asyncio.get_running_loop()
        self._deadlines[peer] = loop.call_later(delay, action, peer)

    def _auth_timed_out(self, peer: Peer) -> None:
        self._deadlines.pop(peer, None)
        if peer.session.user is None:
            peer.close(CloseCode.POLICY_VIOLATION, f"authenticate within {self.auth_timeout:g} s")

    def _token_expired(self, peer: Peer) -> None:
        self._outbox.reply(
            peer,
            ErrorReply(
                ErrorCode.TOKEN_EXPIRED,
                f"your token has expired: send auth with a new one within "
                f"{self.reauth_timeout:g} s",
            ),
        )
        self._set_deadline(peer, self.reauth_timeout, self._reauth_timed_out)

    def _reauth_timed_out(self, peer: Peer) -> None:
        self._deadlines.pop(peer, None)
        peer.close(CloseCode.POLICY_VIOLATION, "token expired")

    # -- names -------------------------------------------------------------------

    def claim_name(self, name: str) -> None:
        """``name`` is a registered user's: close the guests using it, on every node.

        Called when the user registers, signs in, or connects with a token.
        What is addressed to the user never reaches a guest anyway (the hub
        sends to registered connections only); this ends the impersonation
        in the rooms too.
        """
        self.evict_guests(name)
        self._broker.publish(Publication(self._node_id, None, name, b"", name_claim=True))

    def evict_guests(self, name: str) -> None:
        """Close this node's guests named ``name`` (a registered user claimed it)."""
        now = asyncio.get_running_loop().time()
        claims = self._claims
        claims[name.lower()] = now
        if len(claims) > 1024:  # forget the old ones now and then
            for key in [k for k, at in claims.items() if now - at >= CLAIM_MEMORY]:
                del claims[key]
        for peer in self._hub.guests_named(name):
            self._outbox.reply(
                peer,
                ErrorReply(
                    ErrorCode.AUTH_FAILED,
                    f"the name {name} now belongs to a registered user; connect with another",
                ),
            )
            peer.close(CloseCode.POLICY_VIOLATION, NAME_CLAIMED)

    def _claimed_lately(self, name: str) -> bool:
        """Whether ``name`` was claimed within :data:`CLAIM_MEMORY` seconds (any case)."""
        at = self._claims.get(name.lower())
        return at is not None and asyncio.get_running_loop().time() - at < CLAIM_MEMORY

    # -- auth --------------------------------------------------------------------

    async def auth(self, peer: Peer, cmd: AuthFrame) -> bool:
        """Change the connection's identity; True when it enters the lobby now.

        A connection that had to authenticate first enters the lobby once
        it has; one that changes identity leaves (with a ``left`` frame)
        every room the new identity may not be in.
        """
        session = peer.session
        old = session.user
        expires_at: float | None = None
        sign_in: str | None = None
        if cmd.guest is None:
            if self._accounts is None or cmd.token is None:
                self._auth_failed(peer, "this server accepts no tokens", cmd.id)
                return False
            try:
                credential = await self._accounts.user_for_token(cmd.token)
            except AuthError as exc:
                self._auth_failed(peer, str(exc), cmd.id)
                return False
            user, expires_at = credential.user, credential.expires_at
            sign_in = credential.session_id
        else:
            if not self.guests:
                self._auth_failed(peer, "guests are not allowed on this server", cmd.id)
                return False
            name = cmd.guest
            if GUEST_NAME.fullmatch(name) is None or name.lower().startswith("guest-"):
                self._auth_failed(peer, "nickname must be 1-32 letters, digits, _ or -", cmd.id)
                return False
            user = UserInfo(name, True)
        refused: list[str] = []
        if old is not None and old != user:
            # A new identity keeps only the rooms it may be in itself. Read
            # before anything changes, so the switch below has no await in it.
            for room in sorted(session.rooms):
                if not await self._rooms.may_access(user, room):
                    refused.append(room)
        if user.guest:
            # Heard before the store is asked: a claim of the name published
            # after that read reaches this node (``_claimed_lately`` below).
            await self._streams.open_inbox(user.name)
        if user.guest and await self._store.get_user(user.name) is not None:
            self._streams.forget_inbox(user.name)
            self._auth_failed(peer, "that name belongs to a registered user", cmd.id)
            return False
        # The nickname, or one more connection of the user, on every node: the
        # last await before the switch. A name registered (and claimed) while
        # the reads above waited is seen below, and none can be after.
        held = self._held.get(peer)
        want = self._claim_for(user)
        if want is not None and want != held:
            if not await self._claim(want, session.id):
                if user.guest:
                    self._streams.forget_inbox(user.name)
                    self._auth_failed(peer, "that name is in use", cmd.id)
                else:
                    self._outbox.error(peer, ErrorCode.FORBIDDEN, TOO_MANY_CONNECTIONS, cmd.id)
                    peer.close(CloseCode.POLICY_VIOLATION, TOO_MANY_CONNECTIONS)
                return False
        # From here to the switch nothing waits: what is checked stays true.
        renamed = old is None or old.name != user.name
        problem: str | None = None
        if user.guest and self._claimed_lately(user.name):
            # Registered after the read above answered, before this resumed.
            problem = "that name belongs to a registered user"
        elif user.guest and renamed and self._hub.name_in_use(user.name):
            problem = "that name is in use"
        if problem is not None:
            if want is not None and want != held:
                self._release(want, session.id)
            self._streams.forget_inbox(user.name)
            self._auth_failed(peer, problem, cmd.id)
            return False
        if want != held:
            if held is not None:
                self._release(held, session.id)
            if want is None:
                self._held.pop(peer, None)
            else:
                self._held[peer] = want
        for room in refused:
            self._streams.leave(peer, room)
        if old != user:
            self._membership.rename(peer, old, user)
            if old is not None:
                self._streams.forget_inbox(old.name)
        session.authenticated(user)
        if sign_in is not None:
            self._signed_in(peer, sign_in)
        else:
            self._signed_out(peer)
        if not user.guest:
            self.claim_name(user.name)
        if expires_at is not None:
            self.set_token_expiry(peer, expires_at)
        else:
            # A guest has no credential that expires.
            deadline = self._deadlines.pop(peer, None)
            if deadline is not None:
                deadline.cancel()
        self._outbox.reply(peer, AuthOk(user), cmd.id)
        for room in refused:
            self._outbox.reply(peer, Left(room, f"{user.name} may not be in {room}"))
        return old is None

    # -- quotas -------------------------------------------------------------------

    def _claim_for(self, user: UserInfo | None) -> tuple[str, bool] | None:
        """What ``user``'s connection holds in the quotas: a chosen guest nickname
        (lower-cased, True), or a count under a registered user while there is a
        cap (False); None for nothing (no user, a ``guest-`` name, no cap)."""
        if user is None:
            return None
        if user.guest:
            name = user.name.lower()
            return None if name.startswith("guest-") else (name, True)
        return (user.name, False) if self._limits.max_connections_per_user > 0 else None

    async def _claim(self, claim: tuple[str, bool], conn: str) -> bool:
        """Take ``claim`` for connection ``conn``; False: the name is in use, or the
        user has ``max_connections_per_user`` connections, on some node."""
        name, guest = claim
        if guest:
            return await self._quotas.claim_guest(name, conn)
        return await self._quotas.add_connection(name, conn, self._limits.max_connections_per_user)

    def _release(self, claim: tuple[str, bool], conn: str) -> None:
        name, guest = claim
        if guest:
            self._quotas.release_guest(name, conn)
        else:
            self._quotas.remove_connection(name, conn)

    def _auth_failed(self, peer: Peer, message: str, frame_id: str | None) -> None:
        reply, close = peer.session.auth_failed(message, frame_id)
        self._outbox.reply(peer, reply.frame, reply.id)
        if close is not None:
            peer.close(close.code, close.reason)
