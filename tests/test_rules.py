"""Each room's rules kept in memory: read once, read again after a change, bounded."""

from __future__ import annotations

import asyncio

import pytest

from roomcast import rules as rules_module
from roomcast.model import Ban, RoomRules
from roomcast.rules import NO_RULES, RulesBook


class CountingStore:
    """Answers ``room_rules`` from a dict, counting reads; a read may be held open."""

    def __init__(self) -> None:
        self.rules: dict[str, RoomRules] = {}
        self.reads = 0
        self.gate: asyncio.Event | None = None

    async def room_rules(self, room: str, now_ms: int) -> RoomRules:
        self.reads += 1
        answer = self.rules.get(room, RoomRules())
        if self.gate is not None:
            await self.gate.wait()
        return answer


def book(store: CountingStore, in_use: list[str] | None = None) -> RulesBook:
    return RulesBook(store, lambda: in_use or [])  # type: ignore[arg-type]


async def test_rules_are_read_once_and_names_compared_in_lower_case() -> None:
    """Two gets read the store once; names come back lower-cased; an empty room shares NO_RULES."""
    store = CountingStore()
    ban = Ban("Bob", 10**13, "spam", "ann", 1)
    store.rules["dev"] = RoomRules(5, frozenset({"Ann"}), {"Carol": 10**13}, {"Bob": ban})
    rules = book(store)
    first = await rules.get("dev", 0)
    assert await rules.get("dev", 0) is first and store.reads == 1
    assert first.exempt == {"ann"} and set(first.mutes) == {"carol"} and first.bans["bob"] == ban
    assert await rules.get("quiet", 0) is NO_RULES and rules.cached("quiet") is NO_RULES


async def test_concurrent_gets_share_one_read() -> None:
    """Joins arriving together wait for the same read."""
    store = CountingStore()
    store.gate = asyncio.Event()
    rules = book(store)
    waiting = [asyncio.ensure_future(rules.get("dev", 0)) for _ in range(3)]
    await asyncio.sleep(0)
    store.gate.set()
    answers = await asyncio.gather(*waiting)
    assert store.reads == 1 and all(answer is answers[0] for answer in answers)


async def test_a_change_during_a_read_is_not_lost() -> None:
    """A read that began before a change is used once but not kept: the next get reads again."""
    store = CountingStore()
    store.gate = asyncio.Event()
    rules = book(store)
    reading = asyncio.ensure_future(rules.get("dev", 0))
    await asyncio.sleep(0)
    store.rules["dev"] = RoomRules(slow_mode=30)
    rules.forget("dev")
    store.gate.set()
    assert (await reading).slow_mode == 0
    assert rules.cached("dev") is None
    assert (await rules.get("dev", 0)).slow_mode == 30


async def test_forget_and_clear_make_the_next_get_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """forget drops one room, clear every room; past the cap only rooms in use stay."""
    store = CountingStore()
    rules = book(store, in_use=["kept"])
    for room in ("a", "b", "kept"):
        await rules.get(room, 0)
    rules.forget("a")
    assert rules.cached("a") is None and rules.cached("b") is NO_RULES
    rules.clear()
    assert rules.cached("b") is None and rules.cached("kept") is None
    monkeypatch.setattr(rules_module, "MAX_CACHED_ROOMS", 2)
    for room in ("x", "kept", "y"):
        await rules.get(room, 0)
    assert rules.cached("kept") is not None and rules.cached("x") is None
