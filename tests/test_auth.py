"""Tokens: what verify accepts and what it refuses (no sockets)."""

from __future__ import annotations

import base64
import json

import jwt
import pytest
from hypothesis import given, settings, strategies as st

from roomcast.auth import Tokens, bearer_token
from roomcast.exceptions import AuthError

SECRET = "s3cret-for-tests-only-" + "0123456789abcdef" * 3
NOW = 1_790_000_000


def claims(**over: object) -> dict[str, object]:
    base: dict[str, object] = {
        "sub": "alice",
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
    """A token the server issued names its user and expires after the ttl."""
    token, expires = tokens.issue("alice")
    assert expires == NOW + 24 * 3600
    verified = tokens.verify(token)
    assert (verified.user, verified.expires_at) == ("alice", expires)


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
