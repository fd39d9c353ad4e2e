"""Accounts with sessions: sign-in, refresh, sign-out, password change, admins' actions
(the memory store, no sockets)."""

from __future__ import annotations

import jwt
import pytest

from roomcast.accounts import Accounts, RefreshReused
from roomcast.auth import ACCESS_TTL, REFRESH_TTL, Tokens
from roomcast.exceptions import AuthError, Banned, InvalidRequest, NotFound
from roomcast.model import FOREVER_MS
from roomcast.store.memory import MemoryStore
from tests.fakes import Clock
from tests.nodes import fast_accounts

PASSWORD = "long enough password"


@pytest.fixture
async def accounts() -> Accounts:
    accounts = fast_accounts(MemoryStore())
    for name in ("alice", "bob"):
        await accounts.register(name, PASSWORD)
    return accounts


async def test_login_opens_a_session(accounts: Accounts) -> None:
    """A login gives a 15-minute token naming a new session and a 30-day refresh token."""
    signed = await accounts.login("ALICE", PASSWORD)
    claims = jwt.decode(signed.token, options={"verify_signature": False})
    assert claims["sub"] == "alice" and claims["sid"] == signed.session_id
    assert signed.expires_at - claims["iat"] == ACCESS_TTL
    assert signed.refresh_token.startswith(signed.session_id + ".")
    assert signed.refresh_expires_at - claims["iat"] in (REFRESH_TTL, REFRESH_TTL - 1)
    assert (signed.user.name, signed.user.guest, signed.user.admin) == ("alice", False, False)
    credential = await accounts.user_for_token(signed.token)
    assert credential.user == signed.user
    assert (credential.session_id, credential.expires_at) == (signed.session_id, signed.expires_at)
    again = await accounts.login("alice", PASSWORD)
    assert again.session_id != signed.session_id


async def test_wrong_passwords_and_unknown_names_say_the_same(accounts: Accounts) -> None:
    """A wrong password and an unknown name are one AuthError."""
    for name, password in (("alice", "wrong password"), ("nobody", PASSWORD)):
        with pytest.raises(AuthError, match="wrong username or password"):
            await accounts.login(name, password)


async def test_refresh_rotates_and_a_reused_token_ends_the_session(accounts: Accounts) -> None:
    """A refresh rotates the refresh token; presenting the old one again revokes the session."""
    first = await accounts.login("alice", PASSWORD)
    second = await accounts.refresh(first.refresh_token)
    assert second.session_id == first.session_id
    assert second.refresh_token != first.refresh_token
    assert (await accounts.user_for_token(second.token)).session_id == first.session_id
    with pytest.raises(RefreshReused) as reused:
        await accounts.refresh(first.refresh_token)
    assert reused.value.revoked == [first.session_id] and reused.value.user == "alice"
    for token in (first.token, second.token):
        with pytest.raises(AuthError, match="signed out"):
            await accounts.user_for_token(token)
    with pytest.raises(AuthError, match="signed out"):
        await accounts.refresh(second.refresh_token)


async def test_a_made_up_secret_for_a_known_session_ends_nothing(accounts: Accounts) -> None:
    """The session id is in every access token: a guessed secret is refused, not a theft."""
    signed = await accounts.login("alice", PASSWORD)
    forged = f"{signed.session_id}.{'A' * 43}"
    for _ in range(2):
        with pytest.raises(AuthError, match="unknown refresh token") as refused:
            await accounts.refresh(forged)
        assert not isinstance(refused.value, RefreshReused)
    assert (await accounts.user_for_token(signed.token)).session_id == signed.session_id
    assert (await accounts.refresh(signed.refresh_token)).session_id == signed.session_id


async def test_refresh_refuses_garbage_unknown_and_expired_tokens() -> None:
    """A malformed, unknown or expired refresh token is refused, and revokes nothing."""
    clock = Clock()
    store = MemoryStore()
    accounts = Accounts(
        store, Tokens("k" * 40, clock=clock), hasher=fast_accounts(store)._hasher, clock=clock
    )
    await accounts.register("alice", PASSWORD)
    signed = await accounts.login("alice", PASSWORD)
    with pytest.raises(AuthError, match="invalid refresh token"):
        await accounts.refresh("nonsense")
    with pytest.raises(AuthError, match="unknown refresh token"):
        await accounts.refresh("Z" * 22 + "." + "x" * 43)
    clock.now += REFRESH_TTL + 1
    with pytest.raises(AuthError, match="expired"):
        await accounts.refresh(signed.refresh_token)


async def test_a_token_is_refused_once_its_session_or_user_is_gone(accounts: Accounts) -> None:
    """Logout ends one session (or all of them); a deleted user's tokens are refused."""
    one, two, three = [await accounts.login("alice", PASSWORD) for _ in range(3)]
    credential = await accounts.user_for_token(one.token)
    assert await accounts.logout(credential) == [one.session_id]
    with pytest.raises(AuthError, match="signed out"):
        await accounts.user_for_token(one.token)
    assert (await accounts.user_for_token(two.token)).user.name == "alice"
    credential = await accounts.user_for_token(two.token)
    assert sorted(await accounts.logout(credential, everywhere=True)) == sorted(
        [two.session_id, three.session_id]
    )
    with pytest.raises(AuthError):
        await accounts.user_for_token(three.token)
    bob = await accounts.login("bob", PASSWORD)
    credential = await accounts.user_for_token(bob.token)
    with pytest.raises(AuthError, match="wrong password"):
        await accounts.delete_account(credential, "not bob's")
    assert await accounts.delete_account(credential, PASSWORD) == [bob.session_id]
    with pytest.raises(AuthError):
        await accounts.user_for_token(bob.token)
    with pytest.raises(AuthError):
        await accounts.login("bob", PASSWORD)


async def test_a_forged_session_id_is_refused(accounts: Accounts) -> None:
    """A token signed right but naming a session that does not exist is refused."""
    token, _ = accounts.tokens.issue("alice", "N" * 22)
    with pytest.raises(AuthError, match="sign in again"):
        await accounts.user_for_token(token)
    alice = await accounts.login("alice", PASSWORD)
    token, _ = accounts.tokens.issue("bob", alice.session_id)  # alice's session, bob's name
    with pytest.raises(AuthError, match="invalid token"):
        await accounts.user_for_token(token)


async def test_password_change_keeps_this_session_and_ends_the_others(accounts: Accounts) -> None:
    """The old password is needed; the new one must be valid; other sessions end."""
    here, elsewhere = [await accounts.login("alice", PASSWORD) for _ in range(2)]
    credential = await accounts.user_for_token(here.token)
    with pytest.raises(AuthError, match="wrong password"):
        await accounts.change_password(credential, "not it at all", "a new password")
    with pytest.raises(InvalidRequest, match="8 to 256"):
        await accounts.change_password(credential, PASSWORD, "short")
    revoked = await accounts.change_password(credential, PASSWORD, "a new password")
    assert revoked == [elsewhere.session_id]
    assert (await accounts.user_for_token(here.token)).user.name == "alice"
    with pytest.raises(AuthError):
        await accounts.user_for_token(elsewhere.token)
    with pytest.raises(AuthError):
        await accounts.login("alice", PASSWORD)
    await accounts.login("alice", "a new password")


async def test_a_ban_everywhere_signs_out_and_refuses_sign_in(accounts: Accounts) -> None:
    """A ban ends every session and refuses sign-in (banned, until when); unbanned, back in."""
    bob = await accounts.login("bob", PASSWORD)
    with pytest.raises(InvalidRequest, match="yourself"):
        await accounts.ban_user("alice", None, by="alice")
    user, revoked = await accounts.ban_user("BOB", None, "spam", by="alice")
    assert user.name == "bob" and revoked == [bob.session_id]
    stored = await accounts.user("bob")
    assert stored.banned_until_ms == FOREVER_MS and stored.ban_reason == "spam"
    with pytest.raises(AuthError, match="banned from this server: spam"):
        await accounts.user_for_token(bob.token)
    with pytest.raises(Banned) as banned:
        await accounts.login("bob", PASSWORD)
    assert banned.value.until_ms is None and banned.value.reason == "spam"
    with pytest.raises(AuthError, match="wrong username or password"):
        await accounts.login("bob", "not the password")  # nothing said without it
    await accounts.unban_user("bob", by="alice")
    await accounts.login("bob", PASSWORD)
    with pytest.raises(NotFound):
        await accounts.ban_user("nobody", None, by="alice")


async def test_admins_reset_passwords_promote_demote_and_delete(accounts: Accounts) -> None:
    """Each admin action ends the sessions it must, and refuses an unknown user."""
    bob = await accounts.login("bob", PASSWORD)
    user, password, revoked = await accounts.reset_password("bob", by="alice")
    assert user.name == "bob" and len(password) == 16 and revoked == [bob.session_id]
    await accounts.login("bob", password)
    _, chosen, _ = await accounts.reset_password("bob", "chosen password", by="alice")
    assert chosen == "chosen password"
    with pytest.raises(InvalidRequest):
        await accounts.reset_password("bob", "short", by="alice")
    bob = await accounts.login("bob", chosen)
    promoted, revoked = await accounts.set_admin("bob", True, by="alice")
    assert promoted.name == "bob" and revoked == []
    admin = await accounts.login("bob", chosen)
    assert admin.user.admin and (await accounts.user_for_token(bob.token)).user.admin
    _, revoked = await accounts.set_admin("bob", False, by="alice")
    assert sorted(revoked) == sorted([bob.session_id, admin.session_id])
    _, revoked = await accounts.set_admin("bob", False, by="alice")
    assert revoked == []  # not an admin: nothing to take back
    last = await accounts.login("bob", chosen)
    assert not last.user.admin
    deleted, revoked = await accounts.delete_user("bob", by="alice")
    assert deleted.name == "bob" and revoked == [last.session_id]
    for action in (
        accounts.user("bob"),
        accounts.reset_password("bob", by="alice"),
        accounts.set_admin("bob", True, by="alice"),
        accounts.delete_user("bob", by="alice"),
        accounts.unban_user("bob", by="alice"),
    ):
        with pytest.raises(NotFound):
            await action
