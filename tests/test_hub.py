"""The hub's membership bookkeeping and fan-out, with fake peers."""

from __future__ import annotations

from roomcast.hub import Hub
from roomcast.protocol.messages import UserInfo
from roomcast.protocol.session import Session
from tests.fakes import FakePeer


def enter(hub: Hub, room: str, peer: FakePeer) -> bool:
    """Put ``peer`` in ``room`` as the membership does: its session, then the hub."""
    peer.session.joined(room)
    return hub.join(room, peer)


def test_join_reports_a_users_first_connection() -> None:
    """join is True only for a user's first connection in a room."""
    hub = Hub()
    a1 = FakePeer(Session("1", UserInfo("ann", False)))
    a2 = FakePeer(Session("2", UserInfo("ann", False)))
    for peer in (a1, a2):
        hub.add(peer)
    assert enter(hub, "r", a1) is True
    assert enter(hub, "r", a2) is False
    assert enter(hub, "r", a1) is False  # already in
    assert hub.members("r") == ["ann"]
    assert hub.member_count("r") == 1
    assert a1.session.rooms == {"r"}


def test_leave_reports_a_users_last_connection() -> None:
    """leave is True only when the user's last connection leaves."""
    hub = Hub()
    a1 = FakePeer(Session("1", UserInfo("ann", False)))
    a2 = FakePeer(Session("2", UserInfo("ann", False)))
    for peer in (a1, a2):
        hub.add(peer)
        enter(hub, "r", peer)
    assert hub.leave("r", a1) is False
    assert hub.leave("r", a1) is False  # not in it any more
    assert hub.leave("r", a2) is True
    assert hub.members("r") == []
    assert hub.rooms() == {}


def test_remove_leaves_every_room() -> None:
    """Removing a connection reports each room it was in and whether its user left."""
    hub = Hub()
    ann, bob = FakePeer.named("ann"), FakePeer.named("bob")
    for peer in (ann, bob):
        hub.add(peer)
        enter(hub, "lobby", peer)
    enter(hub, "x", ann)
    assert sorted(hub.remove(ann, ann.session.closed())) == [("lobby", True), ("x", True)]
    assert hub.members("lobby") == ["bob"]
    assert "s-ann" not in hub.peers
    assert not hub.name_in_use("ann")


def test_deliver_writes_the_same_bytes_to_every_member() -> None:
    """A broadcast hands one bytes object to each member, and can skip a user."""
    hub = Hub()
    peers = [FakePeer.named(n) for n in ("a", "b", "c")]
    for peer in peers:
        hub.add(peer)
        enter(hub, "r", peer)
    outsider = FakePeer.named("z")
    hub.add(outsider)
    frame = b"\x81\x02{}"
    assert hub.deliver("r", frame) == 3
    assert all(p.frames == [frame] and p.frames[0] is frame for p in peers)
    assert outsider.frames == []
    assert hub.deliver("r", frame, skip_user="b") == 2
    assert [len(p.frames) for p in peers] == [2, 1, 2]
    assert hub.deliver("nobody-here", frame) == 0


def test_members_are_capped() -> None:
    """members() lists at most the limit, in join order."""
    hub = Hub()
    for name in "abcde":
        peer = FakePeer.named(name)
        hub.add(peer)
        enter(hub, "r", peer)
    assert hub.members("r", 3) == ["a", "b", "c"]
    assert hub.member_count("r") == 5


def test_rename_moves_the_user_in_every_room() -> None:
    """After an auth changes the name, rooms and the name index follow."""
    hub = Hub()
    peer = FakePeer.named("guest-1", guest=True)
    hub.add(peer)
    enter(hub, "lobby", peer)
    hub.rename(peer, UserInfo("guest-1", True), UserInfo("ann", False))
    peer.session.authenticated(UserInfo("ann", False))
    assert hub.members("lobby") == ["ann"]
    assert hub.name_in_use("ann") and not hub.name_in_use("guest-1")
    assert hub.guests_named("guest-1") == []
    assert hub.send_to_user("ann", b"\x81\x00") == 1


def test_held_member_gets_frames_kept_with_their_seqs() -> None:
    """A held member's frames are kept aside, with seqs, until release; others get them now."""
    hub = Hub()
    a = FakePeer.named("ann")
    b = FakePeer.named("bob")
    for peer in (a, b):
        hub.add(peer)
        enter(hub, "r", peer)
    hub.hold("r", b, max_bytes=1000)
    assert hub.deliver("r", b"one", seq=1) == 2
    hub.deliver("r", b"typing", skip_user="ann")
    hub.deliver("other", b"elsewhere")
    assert a.frames == [b"one"]
    assert b.frames == []
    held = hub.release("r", b)
    assert held is not None and not held.overflowed
    assert held.frames == [(1, b"one"), (None, b"typing")]
    assert hub.release("r", b) is None
    hub.deliver("r", b"two", seq=2)
    assert b.frames == [b"two"]


def test_hold_overflow_drops_the_frames_and_says_so() -> None:
    """Past max_bytes a hold keeps nothing more and is marked overflowed."""
    hub = Hub()
    a = FakePeer.named("ann")
    hub.add(a)
    enter(hub, "r", a)
    hub.hold("r", a, max_bytes=10)
    hub.deliver("r", b"12345", seq=1)
    hub.deliver("r", b"123456", seq=2)
    hub.deliver("r", b"1", seq=3)
    held = hub.release("r", a)
    assert held is not None and held.overflowed and held.frames == []
    assert a.frames == []


def test_leaving_drops_a_hold() -> None:
    """A member that leaves (or disconnects) while held leaves no hold behind."""
    hub = Hub()
    a = FakePeer.named("ann")
    hub.add(a)
    enter(hub, "r", a)
    hub.hold("r", a, max_bytes=100)
    hub.remove(a, a.session.closed())
    assert hub.release("r", a) is None


def test_what_is_addressed_to_a_user_never_reaches_a_guest_with_the_name() -> None:
    """send_to_user and user_online count registered connections only."""
    hub = Hub()
    guest = FakePeer.named("carol", guest=True)
    hub.add(guest)
    assert not hub.user_online("carol")
    assert hub.send_to_user("carol", b"\x81\x00") == 0
    assert guest.frames == []
    user = FakePeer.named("carol", guest=False)
    hub.add(user)
    assert hub.user_online("carol")
    assert hub.send_to_user("carol", b"\x81\x00") == 1
    assert guest.frames == [] and len(user.frames) == 1


def test_guests_named_matches_any_case() -> None:
    """A registered name is unique in any case: guest Carol is found for carol."""
    hub = Hub()
    guest = FakePeer.named("Carol", guest=True)
    hub.add(guest)
    hub.add(FakePeer.named("carol", guest=False))
    assert hub.guests_named("carol") == [guest]
    hub.remove(guest, guest.session.closed())
    assert hub.guests_named("CAROL") == []


def test_connections_of_counts_a_names_local_connections() -> None:
    """connections_of follows add, rename and remove (the per-user cap reads it)."""
    hub = Hub()
    a1 = FakePeer(Session("1", UserInfo("ann", False)))
    a2 = FakePeer(Session("2", UserInfo("ann", False)))
    guest = FakePeer(Session("3", UserInfo("guest-1", True)))
    for peer in (a1, a2, guest):
        hub.add(peer)
    assert (hub.connections_of("ann"), hub.connections_of("bob")) == (2, 0)
    hub.rename(guest, UserInfo("guest-1", True), UserInfo("ann", False))
    assert hub.connections_of("ann") == 3
    assert hub.connections_of("guest-1") == 0
    hub.remove(a1, a1.session.closed())
    assert hub.connections_of("ann") == 2


def test_name_used_counts_every_case_until_the_last_connection_goes() -> None:
    """name_used answers for any case while a connection uses the name (its channel is heard)."""
    hub = Hub()
    guest = FakePeer.named("Carol", guest=True)
    user = FakePeer.named("carol", guest=False)
    mixed = FakePeer.named("Dave", guest=False)
    for peer in (guest, user, mixed):
        hub.add(peer)
    assert hub.name_used("CAROL") and hub.name_used("dave") and not hub.name_used("erin")
    hub.remove(user, user.session.closed())
    assert hub.name_used("carol")  # the guest Carol still uses it
    hub.remove(guest, guest.session.closed())
    assert not hub.name_used("carol")
    hub.rename(mixed, UserInfo("Dave", False), UserInfo("erin", False))
    assert not hub.name_used("dave") and hub.name_used("Erin")
