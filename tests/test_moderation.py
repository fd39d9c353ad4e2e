"""Moderation on two nodes sharing a store and a bus: roles, removals, bans, mutes,
slow mode, settings, deleting a room, the audit log (no sockets)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from roomcast.broker.memory import MemoryBroker, MemoryBus
from roomcast.exceptions import Banned, Forbidden, InvalidRequest, NotFound
from roomcast.model import AuditEntry, Ban, UserInfo
from roomcast.node import Node
from roomcast.protocol.messages import now_ms
from roomcast.store.memory import MemoryStore
from tests.fakes import FakePeer, receive_text
from tests.nodes import started, text

ANN, BOB, CAROL, DAN = (UserInfo(name, False) for name in ("ann", "bob", "carol", "dan"))
ROOT = UserInfo("root", False, admin=True)


async def two_nodes() -> tuple[Node, Node, MemoryStore]:
    bus, store = MemoryBus(), MemoryStore()
    for name in ("ann", "bob", "carol", "dan", "root"):
        await store.create_user(name, "hash")
    await store.set_admin("root", True)
    one = await started(store=store, broker=MemoryBroker(bus))
    two = await started(store=store, broker=MemoryBroker(bus))
    return one, two, store


async def signed_in(node: Node, user: UserInfo) -> FakePeer:
    peer = FakePeer(node.new_session(user))
    await node.connect(peer)
    peer.received()
    return peer


async def send(
    node: Node, peer: FakePeer, kind: str, payload: dict[str, Any], **extra: Any
) -> None:
    await receive_text(node, peer, text(kind, payload, **extra))
    await node.flush()


async def joined(node: Node, peer: FakePeer, room: str) -> None:
    await send(node, peer, "join", {"room": room})
    frames = peer.received()
    assert any(f["type"] == "joined" for f in frames), frames


def errors(peer: FakePeer) -> list[dict[str, Any]]:
    return [f["payload"] for f in peer.received() if f["type"] == "error"]


async def test_the_first_registered_user_into_a_room_owns_it_a_guest_does_not() -> None:
    """A public room made by a registered user's join is theirs; a guest's has no owner."""
    one, _, store = await two_nodes()
    ann = await signed_in(one, ANN)
    await joined(one, ann, "dev")
    settings = await store.room_settings("dev")
    assert settings is not None and settings.owner == "ann"
    guest = await signed_in(one, UserInfo("visitor", True))
    await joined(one, guest, "attic")
    assert await store.room_settings("attic") is None
    bob = await signed_in(one, BOB)
    await joined(one, bob, "attic")  # someone is in it: bob does not take it over
    assert await store.room_settings("attic") is None


async def test_a_removed_member_gets_nothing_more_on_any_node() -> None:
    """Removing bob from a private room takes his connection on the other node out at once."""
    one, two, _ = await two_nodes()
    await one.rooms.create(ANN, "team", private=True, members=["bob", "carol"])
    ann, bob = await signed_in(one, ANN), await signed_in(two, BOB)
    await joined(one, ann, "team")
    await joined(two, bob, "team")
    await one.moderation.remove(ANN, "team", "bob", "off topic")
    [removed] = bob.of_type("removed")
    assert removed["payload"] == {"room": "team", "by": "ann", "reason": "off topic"}
    assert "team" not in bob.session.rooms
    await send(one, ann, "chat", {"room": "team", "message": "after"})
    assert bob.of_type("chat") == []
    await send(two, bob, "join", {"room": "team"}, id="j")
    assert [e["code"] for e in errors(bob)] == ["forbidden"]
    entries, more = await one.moderation.audit(ANN, "team", before=None, limit=10)
    assert [(e.action, e.target, e.reason) for e in entries] == [("remove", "bob", "off topic")]
    assert not more


async def test_a_banned_user_cannot_rejoin_or_read_on_another_node_until_unbanned() -> None:
    """A ban takes bob out everywhere; join and history on the other node say banned, with until."""
    one, two, _ = await two_nodes()
    ann, bob = await signed_in(one, ANN), await signed_in(two, BOB)
    await joined(one, ann, "dev")
    await joined(two, bob, "dev")
    until = now_ms() + 3_600_000
    await one.moderation.ban(ANN, "dev", "BOB", until_ms=until, reason="spam")
    [removed] = bob.of_type("removed")
    assert removed["payload"]["banned"] is True and removed["payload"]["reason"] == "spam"
    assert removed["payload"]["until"].endswith("Z")
    await send(two, bob, "join", {"room": "dev"})
    await send(two, bob, "history", {"room": "dev"})
    refused = errors(bob)
    assert [e["code"] for e in refused] == ["banned", "banned"]
    assert refused[0]["until"] == removed["payload"]["until"] and refused[0]["reason"] == "spam"
    with pytest.raises(Banned):
        await two.rooms.check_access(BOB, "dev")
    await one.moderation.unban(ANN, "dev", "bob")
    await joined(two, bob, "dev")
    with pytest.raises(NotFound):
        await one.moderation.unban(ANN, "dev", "bob")


async def test_a_muted_member_reads_but_cannot_send_react_or_type() -> None:
    """Muted bob gets muted (with until) for chat and react; typing is dropped; unmute lifts it."""
    one, two, _ = await two_nodes()
    ann, bob = await signed_in(one, ANN), await signed_in(two, BOB)
    await joined(one, ann, "dev")
    await joined(two, bob, "dev")
    await send(one, ann, "chat", {"room": "dev", "message": "hello"}, id="m1")
    [ack] = [f for f in ann.received() if f["type"] == "ack"]
    bob.received()
    await one.moderation.mute(ANN, "dev", "bob", until_ms=now_ms() + 600_000)
    [told] = errors(bob)  # at once, on the other node: no need to send first
    assert (told["code"], told["room"]) == ("muted", "dev") and told["until"]
    await send(two, bob, "chat", {"room": "dev", "message": "spam"}, id="c")
    await send(two, bob, "react", {"message_id": ack["payload"]["message_id"], "emoji": "👍"})
    await send(two, bob, "typing", {"room": "dev"})
    refused = errors(bob)
    assert [e["code"] for e in refused] == ["muted", "muted"] and refused[0]["until"]
    assert [f["type"] for f in ann.received() if f["type"] in ("chat", "typing")] == []
    await send(one, ann, "chat", {"room": "dev", "message": "still heard"})
    assert [f["payload"]["message"] for f in bob.of_type("chat")] == ["still heard"]
    ann.received()
    await one.moderation.unmute(ANN, "dev", "bob")
    await send(two, bob, "chat", {"room": "dev", "message": "back"})
    assert [f["payload"]["message"] for f in ann.of_type("chat")] == ["back"]


async def test_a_mute_ends_by_itself() -> None:
    """A mute past its end refuses nothing."""
    one, _, _ = await two_nodes()
    ann, bob = await signed_in(one, ANN), await signed_in(one, BOB)
    await joined(one, ann, "dev")
    await joined(one, bob, "dev")
    await one.moderation.mute(ANN, "dev", "bob", until_ms=now_ms() + 150)
    assert [e["code"] for e in errors(bob)] == ["muted"]
    await asyncio.sleep(0.2)
    await send(one, bob, "chat", {"room": "dev", "message": "free"})
    assert errors(bob) == [] and [f["payload"]["message"] for f in ann.of_type("chat")] == ["free"]


async def test_slow_mode_spaces_a_members_messages_but_not_the_owners() -> None:
    """With slow mode on, bob's second message is rate_limited with retry_after; ann is exempt."""
    one, _, _ = await two_nodes()
    ann, bob = await signed_in(one, ANN), await signed_in(one, BOB)
    await joined(one, ann, "dev")
    await joined(one, bob, "dev")
    await one.moderation.update(ANN, "dev", slow_mode=30)
    bob.received()
    await send(one, bob, "chat", {"room": "dev", "message": "one"})
    await send(one, bob, "chat", {"room": "dev", "message": "two"})
    [refused] = errors(bob)
    assert refused["code"] == "rate_limited" and 29_000 <= refused["retry_after"] <= 30_000
    for n in range(3):
        await send(one, ann, "chat", {"room": "dev", "message": f"owner {n}"})
    assert errors(ann) == []
    with pytest.raises(InvalidRequest):
        await one.moderation.update(ANN, "dev", slow_mode=3601)


async def test_a_moderator_deletes_anyones_message_and_it_is_logged_once() -> None:
    """carol, a moderator, deletes bob's message: the change says by carol; the log has it once."""
    one, two, store = await two_nodes()
    ann, bob, carol = (
        await signed_in(one, ANN),
        await signed_in(two, BOB),
        await signed_in(one, CAROL),
    )
    for node, peer in ((one, ann), (two, bob), (one, carol)):
        await joined(node, peer, "dev")
    await one.moderation.set_moderator(ANN, "dev", "carol", True)
    await send(two, bob, "chat", {"room": "dev", "message": "rude"}, id="r")
    [ack] = [f for f in bob.received() if f["type"] == "ack"]
    target = ack["payload"]["message_id"]
    dan = await signed_in(one, DAN)
    await joined(one, dan, "dev")
    await send(one, dan, "delete", {"message_id": target}, id="d0")
    assert [e["code"] for e in errors(dan)] == ["forbidden"]
    await send(one, carol, "delete", {"message_id": target}, id="d1")
    await send(one, carol, "delete", {"message_id": target}, id="d1")  # a resend
    await asyncio.sleep(0.05)
    [change] = [f for f in bob.received() if f["type"] == "delete"]
    assert change["payload"]["by"] == "carol"
    entries, _ = await one.moderation.audit(CAROL, "dev", before=None, limit=10)
    deletes = [e for e in entries if e.action == "delete_message"]
    assert [(e.actor, e.target, dict(e.detail)) for e in deletes] == [
        ("carol", target, {"author": "bob"})
    ]
    message = await store.message_by_id(target)
    assert message is not None and message.deleted


async def test_who_may_act_on_whom() -> None:
    """Moderators cannot act on the owner or each other; members cannot moderate; admins can."""
    one, _, _ = await two_nodes()
    await one.rooms.create(ANN, "team", private=True, members=["bob", "carol", "dan"])
    await one.moderation.set_moderator(ANN, "team", "bob", True)
    await one.moderation.set_moderator(ANN, "team", "carol", True)
    with pytest.raises(Forbidden):
        await one.moderation.ban(BOB, "team", "ann", until_ms=None)
    with pytest.raises(Forbidden):
        await one.moderation.mute(BOB, "team", "carol", until_ms=now_ms() + 1000)
    with pytest.raises(Forbidden):
        await one.moderation.remove(DAN, "team", "bob")
    with pytest.raises(Forbidden):
        await one.moderation.set_moderator(BOB, "team", "dan", True)
    with pytest.raises(NotFound):  # not in the private room: it does not exist for eve
        await one.moderation.ban(UserInfo("eve", False), "team", "dan", until_ms=None)
    with pytest.raises(Forbidden):
        await one.moderation.ban(ANN, "team", "root", until_ms=None)
    with pytest.raises(InvalidRequest):
        await one.moderation.remove(ANN, "team", "ann")  # the owner hands it over first
    await one.moderation.remove(DAN, "team", "dan")  # a member leaves a private room
    assert not await one.rooms.may_access(DAN, "team")
    await one.moderation.ban(ROOT, "team", "ann", until_ms=None)  # an admin may ban the owner


async def test_settings_reach_members_on_every_node_and_ownership_moves() -> None:
    """A topic change reaches both nodes; handing over makes the old owner a moderator."""
    one, two, store = await two_nodes()
    ann, bob = await signed_in(one, ANN), await signed_in(two, BOB)
    await joined(one, ann, "dev")
    await joined(two, bob, "dev")
    settings = await one.moderation.update(ANN, "dev", topic="release friday", title="Dev talk")
    assert (settings.topic, settings.title) == ("release friday", "Dev talk")
    [frame] = bob.of_type("room")
    assert frame["payload"]["topic"] == "release friday" and frame["payload"]["owner"] == "ann"
    with pytest.raises(Forbidden):
        await one.moderation.update(BOB, "dev", topic="mine now")
    await one.moderation.update(ANN, "dev", owner="bob")
    moved = await store.room_settings("dev")
    assert moved is not None and moved.owner == "bob" and moved.moderators == {"ann"}
    view = await two.moderation.view(BOB, "dev")
    assert view.role == "owner" and view.bans == [] and view.mutes == []
    assert (await two.moderation.view(CAROL, "dev")).bans is None


async def test_deleting_a_room_erases_it_and_takes_everyone_out() -> None:
    """Members on both nodes get removed; history holds no text; the log keeps the deletion."""
    one, two, store = await two_nodes()
    ann, bob = await signed_in(one, ANN), await signed_in(two, BOB)
    await joined(one, ann, "dev")
    await joined(two, bob, "dev")
    for n in range(3):
        await send(one, ann, "chat", {"room": "dev", "message": f"secret {n}"})
    with pytest.raises(Forbidden):
        await two.moderation.delete_room(BOB, "dev")
    await one.moderation.delete_room(ANN, "dev")
    [removed] = bob.of_type("removed")
    assert removed["payload"]["reason"] == "the room was deleted"
    assert "dev" not in ann.session.rooms and "dev" not in bob.session.rooms
    page, _ = await store.history("dev", before=None, limit=50)
    assert all(not m.message for m in page)
    entries, _ = await one.moderation.audit(ROOT, "dev", before=None, limit=10)
    assert entries[0].action == "delete_room"


async def test_the_audit_log_pages_newest_first_one_entry_per_action() -> None:
    """Seven actions make seven entries, paged with before."""
    one, _, _ = await two_nodes()
    await one.rooms.create(ANN, "team", private=True, members=["bob", "carol"])
    moderation = one.moderation
    await moderation.set_moderator(ANN, "team", "carol", True)
    await moderation.mute(ANN, "team", "bob", until_ms=now_ms() + 60_000)
    await moderation.unmute(ANN, "team", "bob")
    await moderation.ban(ANN, "team", "bob", until_ms=None, reason="again")
    await moderation.unban(ANN, "team", "bob")
    await moderation.update(ANN, "team", topic="t")
    await moderation.set_moderator(ANN, "team", "carol", False)
    first, more = await moderation.audit(ANN, "team", before=None, limit=4)
    assert more and [e.action for e in first] == ["unmoderator", "settings", "unban", "ban"]
    rest, more = await moderation.audit(ANN, "team", before=first[-1].id, limit=4)
    assert not more and [e.action for e in rest] == ["unmute", "mute", "moderator"]
    with pytest.raises(Forbidden):
        await moderation.audit(BOB, "team", before=None, limit=4)


async def test_an_admin_looks_after_the_lobby_and_rooms_nobody_owns() -> None:
    """The lobby has no owner: an admin sets its topic and hands a guest's room to a user."""
    one, _, store = await two_nodes()
    ann = await signed_in(one, ANN)
    with pytest.raises(Forbidden):
        await one.moderation.update(ANN, "lobby", topic="mine")
    settings = await one.moderation.update(ROOT, "lobby", topic="be kind", slow_mode=2)
    assert (settings.topic, settings.slow_mode, settings.owner) == ("be kind", 2, None)
    [frame] = ann.of_type("room")
    assert frame["payload"]["topic"] == "be kind"
    guest = await signed_in(one, UserInfo("visitor", True))
    await joined(one, guest, "attic")
    await one.moderation.update(ROOT, "attic", owner="bob")
    owned = await store.room_settings("attic")
    assert owned is not None and owned.owner == "bob"
    entries, _ = await one.moderation.audit(ROOT, "attic", before=None, limit=5)
    assert [(e.action, e.target) for e in entries] == [("owner", "bob")]


async def test_a_ban_whose_order_was_missed_holds_after_a_resync() -> None:
    """A ban written while this node heard nothing: chat is refused, and a resync takes bob out."""
    one, _, store = await two_nodes()
    ann, bob = await signed_in(one, ANN), await signed_in(one, BOB)
    await joined(one, ann, "dev")  # ann owns dev
    await joined(one, bob, "dev")
    ban = Ban("bob", now_ms() + 60_000, "spam", "ann", now_ms())
    await store.set_ban("dev", ban, AuditEntry("dev", now_ms(), "ann", "ban", "bob"))
    one.moderation.rules.forget("dev")  # what a rules order would do, without the removal
    await send(one, bob, "chat", {"room": "dev", "message": "still here?"})
    assert [e["code"] for e in errors(bob)] == ["banned"]
    one.on_resync()
    await asyncio.sleep(0.05)
    [removed] = bob.of_type("removed")
    assert removed["payload"]["room"] == "dev" and "dev" not in bob.session.rooms


async def test_a_new_owner_of_a_deleted_rooms_name_reads_only_its_own_log() -> None:
    """dev is deleted and made again by carol: she reads from the deletion on; admins read all."""
    one, _, _ = await two_nodes()
    ann = await signed_in(one, ANN)
    await joined(one, ann, "dev")
    await one.moderation.ban(ANN, "dev", "bob", until_ms=None, reason="secret reason")
    await one.moderation.delete_room(ANN, "dev")
    carol = await signed_in(one, CAROL)
    await joined(one, carol, "dev")  # carol is first into dev now: she owns it
    await one.moderation.update(CAROL, "dev", topic="fresh start")
    entries, more = await one.moderation.audit(CAROL, "dev", before=None, limit=10)
    assert [e.action for e in entries] == ["settings"] and not more
    everything, _ = await one.moderation.audit(ROOT, "dev", before=None, limit=10)
    assert [e.action for e in everything] == ["settings", "delete_room", "ban"]
