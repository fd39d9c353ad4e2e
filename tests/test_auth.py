"""Tokens: what verify accepts and what it refuses; refresh tokens (no sockets)."""

from __future__ import annotations

import base64
import json

import jwt
import pytest
from hypothesis import given, settings, strategies as st

from roomcast.auth import (
    ACCESS_TTL,
    REFRESH_TTL,
    Tokens,
    bearer_token,
    hash_secret,
    make_refresh_token,
    new_session_id,
    same_hash,
    split_refresh_token,
)
from roomcast.exceptions import AuthError

SECRET = "s3cret-for-tests-only-" + "0123456789abcdef" * 3
NOW = 1_790_000_000
SID = "AAAAAAAAAAAAAAAAAAAAAA"


def claims(**over: object) -> dict[str, object]:
    base: dict[str, object] = {
        "sub": "alice",
        "sid": SID,
        "iss": "roomcast",
        "aud": "roomcast",
        "iat": NOW,
        "exp": NOW + 60,
    }
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


@pytest.fixture
def tokens() -> Tokens:
    return Tokens(SECRET, clock=lambda: NOW)


def test_issued_token_verifies(tokens: Tokens) -> None:
    """A token the server issued names its user and session, and expires after 15 minutes."""
    sid = new_session_id()
    token, expires = tokens.issue("alice", sid)
    assert ACCESS_TTL == 900
    assert expires == NOW + ACCESS_TTL
    verified = tokens.verify(token)
    assert (verified.user, verified.expires_at, verified.session_id) == ("alice", expires, sid)
    assert jwt.decode(token, options={"verify_signature": False})["sid"] == sid


@pytest.mark.parametrize("sid", [None, "", "short", 12, "A" * 21 + "!"])
def test_a_token_without_a_session_is_refused(tokens: Tokens, sid: object) -> None:
    """A token with no sid (or a malformed one), made before sessions, says to sign in again."""
    with pytest.raises(AuthError, match="sign in again"):
        tokens.verify(jwt.encode(claims(sid=sid), SECRET, algorithm="HS256"))


def test_session_ids_are_22_url_safe_characters() -> None:
    """A session id is 16 random bytes in URL-safe base64, different every time."""
    ids = {new_session_id() for _ in range(200)}
    assert len(ids) == 200
    assert all(len(sid) == 22 and sid.replace("-", "").replace("_", "").isalnum() for sid in ids)


def test_refresh_tokens_name_their_session_and_hash_their_secret() -> None:
    """A refresh token is sid.secret; the store keeps the secret's SHA-256, never the secret."""
    sid = new_session_id()
    token, stored = make_refresh_token(sid)
    session, secret = token.split(".")
    assert session == sid and len(secret) == 43
    assert stored == hash_secret(secret) and len(stored) == 64 and secret not in stored
    assert split_refresh_token(token) == (sid, stored)
    again, other = make_refresh_token(sid)
    assert again != token and other != stored
    assert REFRESH_TTL == 30 * 24 * 3600


@pytest.mark.parametrize(
    "garbage",
    [
        None,
        42,
        "",
        ".",
        "no-dot",
        f"{SID}.",
        f".{'x' * 43}",
        f"{SID}.{'x' * 42}",
        f"{SID}.{'x' * 43}.y",
        f"short.{'x' * 43}",
        f"{SID}.{'é' * 43}",
    ],
)
def test_malformed_refresh_tokens_are_refused(garbage: object) -> None:
    """Anything not shaped like sid.secret is AuthError, never another exception."""
    with pytest.raises(AuthError, match="invalid refresh token"):
        split_refresh_token(garbage)


def test_hashes_compare_in_constant_time() -> None:
    """same_hash says whether two hashes are equal (hmac.compare_digest underneath)."""
    stored = hash_secret("a")
    assert same_hash(hash_secret("a"), stored)
    assert not same_hash(hash_secret("b"), stored)
    assert not same_hash("", stored)


def test_token_minted_elsewhere_with_the_secret_verifies(tokens: Tokens) -> None:
    """A standard HS256 JWT with our issuer and audience is accepted."""
    assert tokens.verify(jwt.encode(claims(), SECRET, algorithm="HS256")).user == "alice"


@pytest.mark.parametrize(
    ("token_claims", "key", "alg"),
    [
        (claims(), "another-secret-" + "x" * 60, "HS256"),
        (claims(iss="someone-else"), SECRET, "HS256"),
        (claims(aud="someone-else"), SECRET, "HS256"),
        (claims(sub=None), SECRET, "HS256"),
        (claims(exp=None), SECRET, "HS256"),
        (claims(sub=""), SECRET, "HS256"),
        (claims(), SECRET, "HS512"),
    ],
    ids=["wrong-signature", "issuer", "audience", "no-sub", "no-exp", "empty-sub", "hs512"],
)
def test_forged_or_foreign_tokens_are_refused(
    tokens: Tokens, token_claims: dict[str, object], key: str, alg: str
) -> None:
    """Wrong key, issuer, audience, algorithm, or a missing claim: AuthError."""
    with pytest.raises(AuthError, match="invalid token"):
        tokens.verify(jwt.encode(token_claims, key, algorithm=alg))


def test_alg_none_is_refused(tokens: Tokens) -> None:
    """An unsigned token (alg none) is refused."""

    def part(obj: object) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    unsigned = f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims())}."
    with pytest.raises(AuthError):
        tokens.verify(unsigned)


def test_expired_token_is_refused(tokens: Tokens) -> None:
    """A token whose exp has passed says it expired."""
    with pytest.raises(AuthError, match="expired"):
        tokens.verify(jwt.encode(claims(exp=NOW), SECRET, algorithm="HS256"))


@pytest.mark.parametrize("garbage", ["", "x", "a.b.c", "Bearer abc", "\u00e9.\u00e9.\u00e9"])
def test_garbage_is_refused(tokens: Tokens, garbage: str) -> None:
    """Strings that are not JWTs are AuthError, never another exception."""
    with pytest.raises(AuthError):
        tokens.verify(garbage)


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer abc.def", "abc.def"),
        ("bearer  abc ", "abc"),
        ("Basic abc", None),
        ("Bearer", None),
        ("Bearer   ", None),
        (None, None),
    ],
)
def test_bearer_token(header: str | None, token: str | None) -> None:
    """Only an Authorization header with the Bearer scheme and a value yields a token."""
    assert bearer_token(header) == token


@settings(max_examples=300, deadline=None)
@given(
    st.text(max_size=300)
    | st.from_regex(r"[A-Za-z0-9_-]{0,40}\.[A-Za-z0-9_-]{0,80}\.[A-Za-z0-9_-]{0,40}")
)
def test_fuzzed_tokens_only_ever_raise_auth_error(garbage: str) -> None:
    """Whatever string arrives as a token, verify raises AuthError and nothing else."""
    tokens = Tokens(SECRET, clock=lambda: NOW)
    with pytest.raises(AuthError):
        tokens.verify(garbage)


@given(st.text(max_size=100))
def test_fuzzed_authorization_headers(header: str) -> None:
    """bearer_token never raises, and returns a stripped non-empty token or None."""
    token = bearer_token(header)
    assert token is None or (token == token.strip() and token)
