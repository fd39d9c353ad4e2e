"""The room rules both edges call: access, listing, creating, adding members."""

from __future__ import annotations

import pytest

from roomcast.exceptions import Forbidden, InvalidRequest, NotFound, RoomExists, UnknownUser
from roomcast.protocol.messages import LOBBY, UserInfo
from roomcast.rooms import MAX_MEMBERS, Rooms
from roomcast.rules import RulesBook
from roomcast.store.memory import MemoryStore

ANN, BOB, CAROL = UserInfo("ann", False), UserInfo("bob", False), UserInfo("carol", False)
GUEST = UserInfo("visitor", True)


class Occupied:
    """Rooms in use on this node, with a member count each."""

    def __init__(self, counts: dict[str, int] | None = None) -> None:
        self.counts = counts or {}

    def local_rooms(self) -> list[str]:
        return list(self.counts)

    async def member_count(self, room: str) -> int:
        return self.counts.get(room, 0)


async def rooms_with_users(occupied: Occupied | None = None) -> Rooms:
    store = MemoryStore()
    for user in ("ann", "bob", "carol"):
        await store.create_user(user, "hash")
    occupancy = occupied or Occupied()
    return Rooms(store, occupancy, RulesBook(store, occupancy.local_rooms))


async def test_a_private_room_is_for_its_owner_and_members_only() -> None:
    """Owner and members may access a private room; others and guests get Forbidden."""
    rooms = await rooms_with_users()
    access = await rooms.create(ANN, "team", private=True, members=["BOB"])
    assert access.members == frozenset({"bob"}) and access.owner == "ann"
    assert await rooms.may_access(ANN, "team") and await rooms.may_access(BOB, "team")
    assert not await rooms.may_access(CAROL, "team")
    assert not await rooms.may_access(UserInfo("bob", True), "team")  # a guest named bob
    with pytest.raises(Forbidden, match="private"):
        await rooms.check_access(CAROL, "team")
    assert await rooms.may_access(GUEST, LOBBY) and await rooms.may_access(GUEST, "anything")


async def test_creating_refuses_guests_bad_names_unknown_members_and_rooms_in_use() -> None:
    """Each refusal is its own domain error; nothing is created by a refused request."""
    rooms = await rooms_with_users(Occupied({"busy": 2}))
    with pytest.raises(Forbidden):
        await rooms.create(GUEST, "mine", private=False, members=[])
    with pytest.raises(InvalidRequest):
        await rooms.create(ANN, "Not A Room", private=False, members=[])
    with pytest.raises(UnknownUser, match="nobody"):
        await rooms.create(ANN, "team", private=True, members=["bob", "nobody"])
    for taken in (LOBBY, "busy"):
        with pytest.raises(RoomExists):
            await rooms.create(ANN, taken, private=False, members=[])
    await rooms.create(ANN, "team", private=True, members=[])
    with pytest.raises(RoomExists):
        await rooms.create(BOB, "team", private=False, members=[])
    with pytest.raises(InvalidRequest):
        await rooms.registered(["bob"] * (MAX_MEMBERS + 1))


async def test_only_the_owner_adds_members_to_a_private_room() -> None:
    """add_members: NotFound for no such private room, Forbidden for others, then it adds."""
    rooms = await rooms_with_users()
    await rooms.create(ANN, "open", private=False, members=[])
    await rooms.create(ANN, "team", private=True, members=[])
    with pytest.raises(NotFound):
        await rooms.add_members(ANN, "open", ["bob"])
    with pytest.raises(Forbidden):
        await rooms.add_members(BOB, "team", ["bob"])
    with pytest.raises(InvalidRequest):
        await rooms.add_members(ANN, "team", [])
    updated = await rooms.add_members(ANN, "team", ["Carol"])
    assert updated.members == frozenset({"carol"})
    assert await rooms.may_access(CAROL, "team")


async def test_the_listing_shows_rooms_in_use_and_private_rooms_to_members_only() -> None:
    """Public, in-use and lobby rooms are listed to all; a private room only to its people."""
    occupied = Occupied()
    rooms = await rooms_with_users(occupied)
    await rooms.create(ANN, "team", private=True, members=["bob"])
    await rooms.create(ANN, "open", private=False, members=[])
    occupied.counts.update({"chatter": 1, "team": 1})
    names = {None: ["chatter", "lobby", "open"], CAROL: ["chatter", "lobby", "open"]}
    for user, expected in names.items():
        assert [r.name for r in await rooms.visible(user)] == expected
    assert [r.name for r in await rooms.visible(BOB)] == ["chatter", "lobby", "open", "team"]
