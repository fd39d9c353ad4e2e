"""Moderation: roles in a room, removals, bans, mutes, slow mode, settings, the audit log.

Who may do what (docs/security.md has the table): a room's **owner** names
moderators, hands the room over, changes any setting and deletes the room;
its **moderators** remove, ban and mute members and delete any message in
it; an **admin** may do all of it in every room, and looks after the rooms
nobody owns (the lobby, rooms a guest made). Owners, moderators and admins
are never banned, muted or slowed in their room, and moderators do not act
on each other.

Every change is stored with its audit entry in one transaction, then told
to every node with an order (``removed``, ``rules``, ``room_deleted``) so
that a removed or banned user's connections leave the room at once
wherever they are, and every node's :class:`~roomcast.rules.RulesBook`
reads the new rules. The node that made the change applies it before it
answers, so its caller sees it in force.

What sending is held to (mutes, slow mode) is checked from memory:
:meth:`Moderation.check_send` reads no store.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from typing import Any, Final

import orjson

from .broker.base import Broker, Publication
from .exceptions import (
    BackendError,
    Banned,
    Forbidden,
    InvalidRequest,
    Muted,
    NotFound,
    TooFrequent,
    UnknownUser,
)
from .hub import Hub, Peer
from .model import FOREVER_MS, AuditEntry, Ban, Mute, RoomRules, RoomSettings, UserInfo
from .outbox import Outbox
from .protocol.messages import (
    LOBBY,
    ErrorReply,
    Removed,
    RoomUpdate,
    encode,
    format_timestamp,
    now_ms,
)
from .protocol.wsframe import text_frame
from .rooms import Rooms, banned_from
from .rules import RulesBook
from .store.base import Store
from .streams import Streams

__all__ = [
    "MAX_BAN_SECONDS",
    "MAX_MUTE_SECONDS",
    "MAX_REASON",
    "MAX_SLOW_MODE",
    "MAX_TITLE",
    "MAX_TOPIC",
    "Moderation",
    "RoomView",
    "checked_text",
]

logger = logging.getLogger("roomcast.moderation")

#: Longest topic, in characters: a line or two under the room's name.
MAX_TOPIC: Final = 500
#: Longest display name, in characters (a room's name is at most 64 too).
MAX_TITLE: Final = 64
#: Longest reason for a removal or ban.
MAX_REASON: Final = 500
#: Longest slow mode, in seconds: an hour between messages is a read-only room.
MAX_SLOW_MODE: Final = 3600
#: Longest ban with an end (100 years); longer is "until lifted".
MAX_BAN_SECONDS: Final = 100 * 365 * 24 * 3600
#: Longest mute: past a month, a ban says it better.
MAX_MUTE_SECONDS: Final = 30 * 24 * 3600
#: Slow mode remembers when each member last sent; past this many members in a
#: room it forgets those whose wait is over.
_SLOW_MEMORY: Final = 10_000

#: What a room's deletion tells its members.
ROOM_DELETED: Final = "the room was deleted"


@dataclass(frozen=True, slots=True)
class RoomView:
    """A room as ``GET /api/rooms/{room}`` shows it to one viewer."""

    settings: RoomSettings
    #: The viewer's role: ``owner``, ``moderator``, ``member``, ``admin`` or None.
    role: str | None
    #: When the viewer's mute ends (epoch ms), if muted.
    muted_until: int | None
    #: The room's bans and mutes, for those who may lift them (None for others).
    bans: list[Ban] | None
    mutes: list[Mute] | None
    #: A private room's members, for those in it.
    members: frozenset[str] | None


class Moderation:
    """Roles, removals, bans, mutes, slow mode, settings and the audit log of rooms.

    Args:
        node_id: this node's id, on its orders.
        store: where rules, roles and the audit log are kept.
        broker: carries orders and room updates to the other nodes.
        hub: this node's connections, to find those a removal takes out.
        streams: takes a connection out of a room.
        rooms: room access, and each room's rules (``rooms.rules``).
        outbox: ``removed`` frames.
    """

    def __init__(
        self,
        *,
        node_id: str,
        store: Store,
        broker: Broker,
        hub: Hub,
        streams: Streams,
        rooms: Rooms,
        outbox: Outbox,
    ) -> None:
        self._node_id = node_id
        self._store = store
        self._broker = broker
        self._hub = hub
        self._streams = streams
        self._rooms = rooms
        self._outbox = outbox
        #: Each room's rules, kept in memory (shared with ``rooms``).
        self.rules: RulesBook = rooms.rules
        #: Slow mode: room -> lower-cased name -> loop time of their last message.
        self._last_sent: dict[str, dict[str, float]] = {}

    # -- the send path -------------------------------------------------------------

    def check_send(self, user: UserInfo, room: str) -> bool:
        """Refuse a message (or reaction) ``user`` may not send in ``room`` now.

        Mutes end by the wall clock; slow mode counts on the monotonic one, read
        only in a room that has it. Returns False when this node does not have the room's rules yet:
        the caller awaits :meth:`load` and asks again.

        Raises:
            Muted: ``user`` is muted in ``room``.
            TooFrequent: slow mode: ``user`` sent less than its seconds ago.
        """
        rules = self.rules.cached(room)
        if rules is None:
            return False
        if (not rules.mutes and not rules.slow_mode and not rules.bans) or user.admin:
            return True
        key = user.name.lower()
        if key in rules.exempt:
            return True
        # A ban whose removal missed this node (an order lost while Redis was away).
        self.check_ban(user, room, rules)
        until = rules.mutes.get(key)
        if until is not None and until > now_ms():
            raise _muted(room, until)
        if rules.slow_mode:
            self._slow(room, key, rules.slow_mode, time.monotonic())
        return True

    def check_ban(self, user: UserInfo, room: str, rules: RoomRules) -> None:
        """Refuse ``user`` if ``rules`` ban them from ``room``.

        Raises:
            Banned: a ban that has not ended.
        """
        if user.admin or not rules.bans:
            return
        ban = rules.bans.get(user.name.lower())
        if ban is not None and ban.until_ms > now_ms():
            raise banned_from(room, ban)

    async def load(self, room: str) -> RoomRules:
        """Read ``room``'s rules into memory (for :meth:`check_send`)."""
        return await self.rules.get(room, now_ms())

    async def check_muted(self, user: UserInfo, room: str) -> None:
        """Refuse what a muted member may not do in ``room`` (react, edit) but that slow
        mode does not count.

        Raises:
            Muted: ``user`` is muted in ``room``.
        """
        rules = self.rules.cached(room) or await self.load(room)
        if user.admin or user.name.lower() in rules.exempt:
            return
        until = rules.mutes.get(user.name.lower())
        if until is not None and until > now_ms():
            raise _muted(room, until)

    def muted(self, user: UserInfo, room: str) -> bool:
        """Whether ``user`` is muted in ``room`` as this node knows now (typing is
        dropped without a word)."""
        rules = self.rules.cached(room)
        if rules is None or not rules.mutes or user.admin:
            return False
        until = rules.mutes.get(user.name.lower())
        return until is not None and until > now_ms()

    def _slow(self, room: str, key: str, seconds: int, now: float) -> None:
        sent = self._last_sent.setdefault(room, {})
        last = sent.get(key)
        if last is not None and now - last < seconds:
            wait = seconds - (now - last)
            raise TooFrequent(
                f"slow mode in {room}: one message every {seconds} s", retry_after=wait
            )
        if len(sent) >= _SLOW_MEMORY:
            for name in [n for n, at in sent.items() if now - at >= seconds]:
                del sent[name]
        sent[key] = now

    # -- who may -------------------------------------------------------------------

    async def _settings(self, room: str) -> RoomSettings:
        """The room's settings; a public room never stored has defaults and no owner."""
        settings = await self._store.room_settings(room)
        if settings is None:
            return RoomSettings(room, False, None, frozenset())
        return settings

    async def _role(self, user: UserInfo | None, settings: RoomSettings) -> str | None:
        """``user``'s role in the room: admin, owner, moderator, member, or None."""
        if user is None or user.guest:
            return None if settings.private else "member"
        if user.admin:
            return "admin"
        if settings.owner is not None and settings.owner.lower() == user.name.lower():
            return "owner"
        if user.name.lower() in {name.lower() for name in settings.moderators}:
            return "moderator"
        if settings.private:
            access = await self._store.room_access(settings.name)
            return "member" if access is not None and access.allows(user.name) else None
        return "member"

    async def _authority(
        self, actor: UserInfo, room: str, allowed: tuple[str, ...], what: str
    ) -> RoomSettings:
        """The room's settings once ``actor``'s role there is one of ``allowed``.

        Raises:
            NotFound: a private room ``actor`` is not in (it does not exist for them).
            Forbidden: any other role.
        """
        settings = await self._settings(room)
        role = await self._role(actor, settings)
        if role is None:
            raise NotFound(f"there is no room {room}")
        if role not in allowed:
            who = " or ".join(allowed)
            raise Forbidden(f"only the room's {who} may {what}")
        return settings

    async def may_delete_any(self, user: UserInfo, room: str) -> bool:
        """Whether ``user`` may delete anyone's message in ``room`` (owner, moderator, admin)."""
        if user.guest:
            return False
        role = await self._role(user, await self._settings(room))
        return role in ("owner", "moderator", "admin")

    async def _target(self, name: str) -> tuple[str, bool]:
        """A user to act on, as registered (and whether they are an admin); a name
        that is not registered is a guest's.

        Raises:
            UnknownUser: not a name anyone could use.
        """
        stored = await self._store.get_user(name)
        if stored is not None:
            return stored.name, stored.admin
        if not _GUEST_NAME_CHARS.issuperset(name) or not 0 < len(name) <= 64:
            raise UnknownUser(f"there is no user {name}")
        return name, False

    async def _check_target(
        self, actor: UserInfo, settings: RoomSettings, name: str, admin: bool
    ) -> None:
        """Refuse acting on the owner, an admin, a moderator (unless the owner or an
        admin acts), or oneself."""
        key = name.lower()
        if key == actor.name.lower():
            raise InvalidRequest("you cannot do that to yourself")
        if admin:
            raise Forbidden(f"{name} is an admin")
        if settings.owner is not None and key == settings.owner.lower() and not actor.admin:
            raise Forbidden(f"{name} owns {settings.name}")
        role = await self._role(actor, settings)
        moderators = {m.lower() for m in settings.moderators}
        if key in moderators and role == "moderator":
            raise Forbidden(f"{name} is a moderator of {settings.name}: ask its owner")

    # -- reading -------------------------------------------------------------------

    async def view(self, viewer: UserInfo | None, room: str) -> RoomView:
        """``room`` as ``viewer`` may see it.

        Raises:
            NotFound: a private room ``viewer`` is not in.
            Banned: ``viewer`` is banned from it.
        """
        if viewer is not None:
            refusal = await self._rooms.refusal(viewer, room)
            if isinstance(refusal, Banned):
                raise refusal
            if refusal is not None:
                raise NotFound(f"there is no room {room}")
        settings = await self._settings(room)
        role = await self._role(viewer, settings)
        if settings.private and role is None:
            raise NotFound(f"there is no room {room}")
        now = now_ms()
        rules = await self.rules.get(room, now)
        muted_until = None
        if viewer is not None and role not in ("owner", "moderator", "admin"):
            until = rules.mutes.get(viewer.name.lower())
            muted_until = until if until is not None and until > now else None
        bans = mutes = None
        if role in ("owner", "moderator", "admin"):
            bans = await self._store.bans(room, now)
            mutes = await self._store.mutes(room, now)
        members = None
        if settings.private:
            access = await self._store.room_access(room)
            members = access.members if access is not None else frozenset()
        return RoomView(settings, role, muted_until, bans, mutes, members)

    async def audit(
        self, actor: UserInfo, room: str, *, before: int | None, limit: int
    ) -> tuple[list[AuditEntry], bool]:
        """A page of ``room``'s audit log, newest first, and whether older entries remain.

        Raises:
            NotFound, Forbidden: ``actor`` is not the room's owner, a moderator or an admin.
        """
        if not actor.admin:  # admins read any room's log, a deleted room's too
            await self._authority(actor, room, ("owner", "moderator"), "read its audit log")
        entries = await self._store.audit_log(room, before=before, limit=limit + 1)
        if not actor.admin:
            # A room made again under a deleted one's name: its owner reads from the
            # deletion on, not what was done in the room that was.
            for index, entry in enumerate(entries):
                if entry.action == "delete_room":
                    return entries[: min(index, limit)], False
        return entries[:limit], len(entries) > limit

    # -- roles ---------------------------------------------------------------------

    async def set_moderator(self, actor: UserInfo, room: str, name: str, on: bool) -> RoomSettings:
        """Make ``name`` a moderator of ``room`` (or not): its owner or an admin.

        Raises:
            NotFound, Forbidden: ``actor`` may not; UnknownUser: ``name`` is not registered.
            InvalidRequest: ``name`` owns the room, or is not a member of a private room.
        """
        settings = await self._authority(actor, room, ("owner", "admin"), "name moderators")
        stored = await self._store.get_user(name)
        if stored is None:
            raise UnknownUser(f"there is no user {name}")
        if settings.owner is not None and stored.name.lower() == settings.owner.lower():
            raise InvalidRequest(f"{stored.name} owns {room}")
        if on and settings.private:
            access = await self._store.room_access(room)
            if access is None or not access.allows(stored.name):
                raise InvalidRequest(f"{stored.name} is not a member of {room}; add them first")
        action = "moderator" if on else "unmoderator"
        entry = self._entry(room, actor, action, stored.name)
        if await self._store.set_moderator(room, stored.name, on, entry):
            await self._changed(room)
        return await self._settings(room)

    async def update(
        self,
        actor: UserInfo,
        room: str,
        *,
        topic: str | None = None,
        title: str | None = None,
        slow_mode: int | None = None,
        receipts: bool | None = None,
        owner: str | None = None,
    ) -> RoomSettings:
        """Change ``room``'s settings, or hand it to ``owner``.

        Topic and slow mode: owner, moderators, admins; title, receipts and
        ownership: owner and admins.

        Raises:
            NotFound, Forbidden: ``actor`` may not; InvalidRequest: a bad value;
            UnknownUser: ``owner`` is not registered.
        """
        owner_only = title is not None or receipts is not None or owner is not None
        allowed = ("owner", "admin") if owner_only else ("owner", "moderator", "admin")
        settings = await self._authority(actor, room, allowed, "change that")
        detail: dict[str, Any] = {}
        if topic is not None:
            detail["topic"] = checked_text(topic, "topic", MAX_TOPIC, lines=True)
        if title is not None:
            detail["title"] = checked_text(title, "title", MAX_TITLE, lines=False)
        if slow_mode is not None:
            if not 0 <= slow_mode <= MAX_SLOW_MODE:
                raise InvalidRequest(f"slow_mode must be 0 to {MAX_SLOW_MODE} seconds")
            detail["slow_mode"] = slow_mode
        if receipts is not None:
            detail["receipts"] = receipts
        new_owner = None
        if owner is not None:
            stored = await self._store.get_user(owner)
            if stored is None:
                raise UnknownUser(f"there is no user {owner}")
            if room == LOBBY:
                raise InvalidRequest("the lobby has no owner: admins look after it")
            new_owner = stored.name
        if not detail and new_owner is None:
            raise InvalidRequest("give topic, title, slow_mode, receipts or owner")
        if detail:
            entry = self._entry(room, actor, "settings", None, detail=detail)
            await self._store.update_room(
                room,
                entry,
                topic=detail.get("topic"),
                title=detail.get("title"),
                slow_mode=detail.get("slow_mode"),
            )
            if receipts is not None:
                await self._store.set_room_receipts(room, receipts)
        if new_owner is not None and (
            settings.owner is None or new_owner.lower() != settings.owner.lower()
        ):
            entry = self._entry(room, actor, "owner", new_owner)
            if await self._store.room_access(room) is not None:
                await self._store.set_owner(room, new_owner, entry)
            elif await self._store.claim_room(room, new_owner, entry.at_ms):
                await self._store.add_audit(entry)  # never stored, and no messages yet
            else:
                raise InvalidRequest(f"{room} cannot be handed over now; try again")
        await self._changed(room)
        return await self._settings(room)

    # -- removals, bans, mutes -----------------------------------------------------

    async def remove(self, actor: UserInfo, room: str, name: str, reason: str = "") -> None:
        """Take ``name`` out of ``room`` now, on every node (a kick in a public room; a
        private room's member loses it). A member may remove themself from a
        private room (leave it for good).

        Raises:
            NotFound, Forbidden: ``actor`` may not; UnknownUser: no such user.
            InvalidRequest: the owner leaving their own room (hand it over first).
        """
        reason = checked_text(reason, "reason", MAX_REASON, lines=False)
        if name.lower() == actor.name.lower() and not actor.guest:
            settings = await self._settings(room)
            if not settings.private:
                raise InvalidRequest(f"leave {room} with a leave frame; it is a public room")
            role = await self._role(actor, settings)
            if role is None:
                raise NotFound(f"there is no room {room}")
            if role == "owner":
                raise InvalidRequest(f"you own {room}: hand it over before you leave it")
            target = actor.name
        else:
            settings = await self._authority(
                actor, room, ("owner", "moderator", "admin"), "remove members"
            )
            target, admin = await self._target(name)
            await self._check_target(actor, settings, target, admin)
        entry = self._entry(room, actor, "remove", target, reason=reason)
        await self._store.remove_member(room, target, entry)
        self._remove_everywhere(room, target, actor, reason)
        await self._changed(room)

    async def ban(
        self,
        actor: UserInfo,
        room: str,
        name: str,
        *,
        until_ms: int | None,
        reason: str = "",
    ) -> Ban:
        """Ban ``name`` from ``room`` until ``until_ms`` (None: until lifted); they are out
        of it at once on every node.

        Raises:
            NotFound, Forbidden, UnknownUser, InvalidRequest: as :meth:`remove`; a time past.
        """
        settings = await self._authority(actor, room, ("owner", "moderator", "admin"), "ban")
        target, admin = await self._target(name)
        await self._check_target(actor, settings, target, admin)
        reason = checked_text(reason, "reason", MAX_REASON, lines=False)
        now = now_ms()
        if until_ms is not None and until_ms <= now:
            raise InvalidRequest("until must be in the future")
        ban = Ban(target, FOREVER_MS if until_ms is None else until_ms, reason, actor.name, now)
        detail = {"until": _until(ban.until_ms)}
        entry = self._entry(room, actor, "ban", target, reason=reason, detail=detail)
        await self._store.set_ban(room, ban, entry)
        self._remove_everywhere(room, target, actor, reason, banned=True, until_ms=until_ms)
        await self._changed(room)
        return ban

    async def unban(self, actor: UserInfo, room: str, name: str) -> None:
        """Lift ``name``'s ban from ``room``.

        Raises:
            NotFound: no such ban (or a room ``actor`` may not see); Forbidden: ``actor`` may not.
        """
        await self._authority(actor, room, ("owner", "moderator", "admin"), "lift bans")
        target, _ = await self._target(name)
        if not await self._store.lift_ban(room, target, self._entry(room, actor, "unban", target)):
            raise NotFound(f"{target} is not banned from {room}")
        await self._changed(room)

    async def mute(self, actor: UserInfo, room: str, name: str, *, until_ms: int) -> Mute:
        """Mute ``name`` in ``room`` until ``until_ms``: they read, but cannot send or react.

        Raises:
            NotFound, Forbidden, UnknownUser, InvalidRequest: as :meth:`ban`; past
            :data:`MAX_MUTE_SECONDS`.
        """
        settings = await self._authority(actor, room, ("owner", "moderator", "admin"), "mute")
        target, admin = await self._target(name)
        await self._check_target(actor, settings, target, admin)
        now = now_ms()
        if until_ms <= now:
            raise InvalidRequest("until must be in the future")
        if until_ms > now + MAX_MUTE_SECONDS * 1000:
            raise InvalidRequest(f"a mute lasts at most {MAX_MUTE_SECONDS // 86400} days; ban")
        mute = Mute(target, until_ms, actor.name, now)
        entry = self._entry(room, actor, "mute", target, detail={"until": _until(until_ms)})
        await self._store.set_mute(room, mute, entry)
        await self._changed(room)
        self._order({"op": "muted", "room": room, "user": target, "until": until_ms})
        return mute

    async def unmute(self, actor: UserInfo, room: str, name: str) -> None:
        """Lift ``name``'s mute in ``room``.

        Raises:
            NotFound: not muted; Forbidden: ``actor`` may not.
        """
        await self._authority(actor, room, ("owner", "moderator", "admin"), "lift mutes")
        target, _ = await self._target(name)
        entry = self._entry(room, actor, "unmute", target)
        if not await self._store.lift_mute(room, target, entry):
            raise NotFound(f"{target} is not muted in {room}")
        await self._changed(room)

    async def delete_room(self, actor: UserInfo, room: str) -> None:
        """Erase ``room`` and everything said in it; its members are out of it at once.

        Raises:
            NotFound, Forbidden: only its owner or an admin; InvalidRequest: the lobby.
        """
        if room == LOBBY:
            raise InvalidRequest("the lobby cannot be deleted")
        await self._authority(actor, room, ("owner", "admin"), "delete it")
        if not await self._store.delete_room(room, self._entry(room, actor, "delete_room", None)):
            raise NotFound(f"there is no room {room}")
        self.rules.forget(room)
        self._order({"op": "room_deleted", "room": room, "by": actor.name})

    async def message_deleted(
        self, actor: UserInfo, room: str, message_id: str, author: str
    ) -> None:
        """Log a moderator's delete of ``author``'s message (stored as a change already)."""
        entry = self._entry(room, actor, "delete_message", message_id, detail={"author": author})
        try:
            await self._store.add_audit(entry)
        except Exception:  # the delete happened; the log line says the entry is missing
            logger.exception("could not log %s's delete of %s in %s", actor.name, message_id, room)

    # -- orders from every node (the node routes them here) ---------------------------

    def on_order(self, order: dict[str, Any]) -> None:
        """Carry out a moderation order from any node, this one included."""
        op, room = order.get("op"), order.get("room")
        if not isinstance(room, str):
            return
        if op == "rules":
            self.rules.forget(room)
        elif op == "removed":
            user, by = order.get("user"), order.get("by")
            if isinstance(user, str) and isinstance(by, str):
                until = order.get("until")
                removed = Removed(
                    room,
                    by,
                    str(order.get("reason") or ""),
                    banned=bool(order.get("banned")),
                    until_ms=until if isinstance(until, int) else None,
                )
                self._take_out(room, self._peers_in(room, user), removed)
        elif op == "muted":
            user, until = order.get("user"), order.get("until")
            if isinstance(user, str) and isinstance(until, int):
                # Told at once, not at their next message: an error frame without an id,
                # with the room, like the refusal their next message would get.
                notice = ErrorReply.refused(_muted(room, until))
                notice = replace(notice, extra={**notice.extra, "room": room})
                for peer in self._peers_in(room, user):
                    self._outbox.reply(peer, notice)
        elif op == "room_deleted":
            self.rules.forget(room)
            self._last_sent.pop(room, None)
            by = str(order.get("by") or "")
            peers = [p for p in list(self._hub.peers.values()) if room in p.session.rooms]
            self._take_out(room, peers, Removed(room, by, ROOM_DELETED))

    async def recheck(self) -> None:
        """Orders may have been missed: take every local connection out of the rooms its
        user may no longer be in (removed, banned, a room deleted)."""
        self.rules.clear()
        for peer in list(self._hub.peers.values()):
            user = peer.session.user
            if user is None:
                continue
            for room in sorted(peer.session.rooms):
                try:
                    refusal = await self._rooms.refusal(user, room)
                except BackendError:
                    return  # the store is away too: the next resync tries again
                if refusal is not None and room in peer.session.rooms:
                    self._take_out(room, [peer], Removed(room, "", str(refusal)))

    def _peers_in(self, room: str, name: str) -> list[Peer]:
        key = name.lower()
        return [
            peer
            for peer in list(self._hub.peers.values())
            if room in peer.session.rooms
            and peer.session.user is not None
            and peer.session.user.name.lower() == key
        ]

    def _take_out(self, room: str, peers: list[Peer], removed: Removed) -> None:
        for peer in peers:
            if room in peer.session.rooms:
                self._streams.leave(peer, room)
                self._outbox.reply(peer, removed)

    def _remove_everywhere(
        self,
        room: str,
        user: str,
        actor: UserInfo,
        reason: str,
        *,
        banned: bool = False,
        until_ms: int | None = None,
    ) -> None:
        """Take ``user``'s connections out of ``room`` here and on every node."""
        order = {"op": "removed", "room": room, "user": user, "by": actor.name}
        self._order({**order, "reason": reason, "banned": banned, "until": until_ms})

    def _order(self, order: dict[str, Any]) -> None:
        """Carry out ``order`` here now, and on every other node that it concerns.

        A removal goes on the room's channel, in order with its messages, so
        no message sent after it reaches the removed member on another node,
        and on the member's own channel, which a node hears before any join
        of theirs (a join still subscribing to the room would miss the first):
        taking out twice is taking out once. A mute concerns the muted
        user's connections: their channel. Rules and deletions go to every
        node (any may keep a room's rules).
        """
        self.on_order(order)
        data = orjson.dumps(order)
        op, node = order.get("op"), self._node_id
        if op == "removed":
            self._broker.publish(Publication(node, order["room"], None, data, order=True))
            self._broker.publish(Publication(node, None, order["user"], data, order=True))
        elif op == "muted":
            self._broker.publish(Publication(node, None, order["user"], data, order=True))
        else:
            self._broker.publish(Publication(node, None, None, data, order=True))

    async def _changed(self, room: str) -> None:
        """``room``'s rules or settings changed: every node reads its rules again (this
        one before it answers), and its members get the settings."""
        self._order({"op": "rules", "room": room})
        await self.rules.get(room, now_ms())
        settings = await self._settings(room)
        frame = text_frame(encode(RoomUpdate(settings)))
        self._hub.deliver(room, frame)
        self._broker.publish(Publication(self._node_id, room, None, frame))

    def _entry(
        self,
        room: str,
        actor: UserInfo,
        action: str,
        target: str | None,
        *,
        reason: str = "",
        detail: dict[str, Any] | None = None,
    ) -> AuditEntry:
        return AuditEntry(room, now_ms(), actor.name, action, target, reason, detail or {})


#: Letters a guest's nickname may use (connections.GUEST_NAME), and ``guest-`` names'.
_GUEST_NAME_CHARS: Final = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-"
)


def _muted(room: str, until: int) -> Muted:
    return Muted(
        f"you are muted in {room} until {format_timestamp(until)}",
        until_ms=None if until >= FOREVER_MS else until,
    )


def _until(until_ms: int) -> str | None:
    return None if until_ms >= FOREVER_MS else format_timestamp(until_ms)


def checked_text(value: str, field: str, most: int, *, lines: bool) -> str:
    """A topic, title or reason, trimmed: printable (line breaks and tabs too when
    ``lines``), at most ``most`` characters.

    Raises:
        InvalidRequest: longer, or not printable.
    """
    value = value.strip()
    if len(value) > most:
        raise InvalidRequest(f"{field} is longer than {most} characters")
    for char in value:
        if (char in "\n\t" and lines) or char.isprintable():
            continue
        raise InvalidRequest(f"{field} must be printable text")
    return value
