"""``roomcast admin`` on SQLite and PostgreSQL: each command; bad input is exit 2, one line."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from argon2 import PasswordHasher

from roomcast.model import StoredSession
from roomcast.store import open_store
from roomcast.store.base import Store
from tests.integration.admins import admin
from tests.integration.users import PASSWORD
from tests.services import fresh_database

ISO_Z = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


@dataclass
class Backend:
    """Where the CLI works: its flags, and the URL a test opens the same store with."""

    flags: list[str]
    url: str
    data_dir: Path

    @asynccontextmanager
    async def store(self) -> AsyncIterator[Store]:
        """The store the CLI works on, opened for the test to look at."""
        store = open_store(self.url, data_dir=self.data_dir)
        await store.open()
        try:
            yield store
        finally:
            await store.close()

    async def run(self, *args: str, stdin: str = "") -> tuple[int, str, str]:
        done = await admin(*self.flags, *args, stdin=stdin)
        return done.returncode, done.stdout, done.stderr

    async def refused(self, *args: str, stdin: str = "") -> str:
        """Run a command that must fail with exit 2 and one line on stderr; that line."""
        code, out, err = await self.run(*args, stdin=stdin)
        assert code == 2, (args, out, err)
        assert out == "" and err.count("\n") == 1 and "Traceback" not in err, err
        assert err.startswith("roomcast: error: ")
        return err


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """The CLI on a SQLite data dir, or on a fresh PostgreSQL database."""
    if request.param == "sqlite":
        data_dir = tmp_path / "data"
        yield Backend(
            ["--data-dir", str(data_dir)], f"sqlite:///{data_dir / 'roomcast.db'}", data_dir
        )
        return
    with fresh_database() as url:
        yield Backend(["--database-url", url], url, tmp_path)


async def registered(backend: Backend, *names: str) -> None:
    """Register ``names`` with the password :data:`PASSWORD` (the CLI makes the database)."""
    assert (await backend.run("create-admin", "root", stdin=PASSWORD + "\n"))[0] == 0
    async with backend.store() as store:
        for name in names:
            assert await store.create_user(name, PasswordHasher().hash(PASSWORD))


async def test_create_admin_from_stdin_and_promote_demote(backend: Backend) -> None:
    """create-admin reads a password from stdin or promotes; promote and demote flip the flag."""
    code, out, err = await backend.run("create-admin", "root", stdin="a root password\n")
    assert (code, out) == (0, "root is an admin\n"), err
    async with backend.store() as store:
        root = await store.get_user("ROOT")
        assert root is not None and root.admin
        assert PasswordHasher().verify(root.password_hash, "a root password")
        assert await store.create_user("alice", PasswordHasher().hash(PASSWORD))
    assert (await backend.run("create-admin", "Alice"))[:2] == (0, "alice is an admin\n")
    assert (await backend.run("demote", "alice"))[:2] == (0, "alice is no admin\n")
    async with backend.store() as store:
        alice = await store.get_user("alice")
        assert alice is not None and not alice.admin
    assert (await backend.run("promote", "alice"))[:2] == (0, "alice is an admin\n")
    async with backend.store() as store:
        alice = await store.get_user("alice")
        assert alice is not None and alice.admin


async def test_ban_and_unban(backend: Backend) -> None:
    """ban --for and --until set the ban and its reason and end the sessions; unban lifts it."""
    await registered(backend, "bob")
    async with backend.store() as store:
        now = int(time.time() * 1000)
        await store.create_session(StoredSession("B" * 22, "bob", "0" * 64, now, now + 10**9))
    code, out, _ = await backend.run("ban", "bob", "--for", "12h", "--reason", "spam")
    assert code == 0 and out.startswith("bob is banned until ")
    assert ISO_Z.fullmatch(out.split()[-1])
    async with backend.store() as store:
        bob = await store.get_user("bob")
        assert bob is not None and bob.ban_reason == "spam" and bob.banned_until_ms is not None
        assert abs(bob.banned_until_ms - (now + 12 * 3600 * 1000)) < 60_000
        found = await store.session_user("B" * 22)
        assert found is not None and found[0].revoked_ms is not None
    code, out, _ = await backend.run("ban", "bob", "--until", "2099-05-01T12:00:00Z")
    assert (code, out) == (0, "bob is banned until 2099-05-01T12:00:00.000Z\n")
    assert (await backend.run("ban", "bob"))[:2] == (0, "bob is banned until unbanned\n")
    assert (await backend.run("unban", "bob"))[:2] == (0, "bob is not banned\n")
    async with backend.store() as store:
        bob = await store.get_user("bob")
        assert bob is not None and not bob.banned(int(time.time() * 1000))


async def test_reset_password(backend: Backend) -> None:
    """reset-password takes stdin or prints a generated password, and ends every session."""
    await registered(backend, "bob")
    async with backend.store() as store:
        now = int(time.time() * 1000)
        await store.create_session(StoredSession("C" * 22, "bob", "0" * 64, now, now + 10**9))
    code, out, _ = await backend.run("reset-password", "bob", stdin="chosen password\n")
    assert (code, out) == (0, "bob's password is changed\n")
    async with backend.store() as store:
        bob = await store.get_user("bob")
        assert bob is not None and PasswordHasher().verify(bob.password_hash, "chosen password")
        found = await store.session_user("C" * 22)
        assert found is not None and found[0].revoked_ms is not None
    code, out, _ = await backend.run("reset-password", "bob")
    assert code == 0 and out.startswith("new password for bob: ")
    generated = out.split(": ", 1)[1].strip()
    async with backend.store() as store:
        bob = await store.get_user("bob")
        assert bob is not None and PasswordHasher().verify(bob.password_hash, generated)


async def test_delete_user(backend: Backend) -> None:
    """delete-user erases the account."""
    await registered(backend, "bob")
    assert (await backend.run("delete-user", "BOB"))[:2] == (0, "bob is deleted\n")
    async with backend.store() as store:
        assert await store.get_user("bob") is None


async def test_list_and_delete_rooms(backend: Backend) -> None:
    """list-rooms prints every room (tab-separated); delete-room erases one."""
    await registered(backend, "alice", "bob")
    async with backend.store() as store:
        assert await store.create_room(
            "secret", owner="alice", private=True, members=frozenset({"bob"})
        )
        assert await store.create_room("open", owner="bob", private=False, members=frozenset())
    code, out, _ = await backend.run("list-rooms")
    assert code == 0
    lines = sorted(out.splitlines())
    assert "open\tpublic\tbob\t-\topen" in lines
    assert "secret\tprivate\talice\t-\tsecret" in lines
    assert (await backend.run("delete-room", "secret"))[:2] == (0, "secret is deleted\n")
    code, out, _ = await backend.run("list-rooms")
    assert "secret" not in out and "open" in out
    await backend.refused("delete-room", "secret")


async def test_bad_input_is_one_line_and_exit_2(backend: Backend) -> None:
    """Unknown users and rooms, bad names, times and passwords: exit 2, one line, no traceback."""
    await registered(backend, "bob")
    # What the store answers, on each store.
    bad = [
        ["promote", "nobody"],
        ["ban", "nobody"],
        ["reset-password", "nobody"],
        ["delete-user", "nobody"],
        ["delete-room", "nowhere"],
    ]
    if backend.url.startswith("sqlite"):
        # What the arguments alone decide: once is enough.
        bad += _BAD_ARGUMENTS
    # Each is a process of its own: run them side by side.
    await asyncio.gather(*(backend.refused(*args) for args in bad))
    async with backend.store() as store:
        bob = await store.get_user("bob")
        assert bob is not None and bob.banned_until_ms is None
    assert "password" in await backend.refused("create-admin", "newbie")  # empty stdin
    assert "8 to 256" in await backend.refused("create-admin", "newbie", stdin="short\n")
    assert "8 to 256" in await backend.refused("reset-password", "bob", stdin="short\n")


#: Arguments refused before the store is asked anything (or whatever it holds).
_BAD_ARGUMENTS: list[list[str]] = [
    ["demote", "nobody"],
    ["unban", "nobody"],
    ["delete-room", "Not A Room"],
    ["delete-room", "lobby"],
    ["ban", "bob", "--for", "forever"],
    ["ban", "bob", "--for", "0s"],
    ["ban", "bob", "--until", "yesterday"],
    ["ban", "bob", "--until", "2001-01-01T00:00:00Z"],
    ["ban", "bob", "--for", "1h", "--until", "2099-01-01T00:00:00Z"],
    ["ban", "bob", "--reason", "line\nbreak"],
    ["create-admin", "guest-zed"],
    ["frobnicate"],
    [],
]


async def test_nothing_to_work_on_is_refused(tmp_path: Path) -> None:
    """No database in the data dir, memory:, or a bad Redis URL: exit 2, one line."""
    for flags in (
        ["--data-dir", str(tmp_path / "none"), "list-rooms"],
        ["--database-url", "memory:", "list-rooms"],
        ["--database-url", "mysql://x/y", "list-rooms"],
        ["--data-dir", str(tmp_path), "--redis-url", "http://x", "create-admin", "a"],
    ):
        done = await admin(*flags)
        assert done.returncode == 2, (flags, done.stderr)
        assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert not (tmp_path / "none").exists()
