"""How the HTTP API answers a failing store: JSON errors a client can act on."""

from __future__ import annotations

from roomcast import api
from roomcast.exceptions import StoreBusy, StoreError


def test_a_full_store_is_503_rate_limited_with_retry_after() -> None:
    """StoreBusy becomes 503 rate_limited carrying the store's retry_after (Retry-After)."""
    failure = api.backend_failure(StoreBusy("10000 messages are waiting", retry_after=0.8))
    assert (failure.status, failure.code, failure.retry_after) == (503, "rate_limited", 0.8)


def test_a_failed_store_is_503_internal_without_retry_after() -> None:
    """Any other backend failure stays 503 internal, with no retry hint."""
    failure = api.backend_failure(StoreError("disk on fire"))
    assert (failure.status, failure.code, failure.retry_after) == (503, "internal", None)


# -- the login throttle (times are plain numbers) -------------------------------------


def fail(throttle: api.LoginThrottle, address: str, name: str, now: float) -> float:
    """One attempt for an existing account that then fails; its wait (0: it was let in)."""
    return throttle.attempt(address, name, exists=True, now=now)


def test_an_accounts_failures_count_over_all_addresses_and_the_wait_doubles_to_a_cap() -> None:
    """Five free failures from anywhere; then 1 s, 2 s, 4 s ... never more than the cap."""
    throttle = api.LoginThrottle()
    now = 100.0
    for n in range(api.ACCOUNT_FREE_FAILURES):
        assert fail(throttle, f"192.0.2.{n}", "Alice", now) == 0.0
    assert fail(throttle, "192.0.2.99", "ALICE", now + 0.5) == 0.5
    waits = []
    for _ in range(10):
        now += api.ACCOUNT_MAX_DELAY  # always past the wait: every attempt is let in
        assert fail(throttle, "192.0.2.98", "alice", now) == 0.0
        waits.append(fail(throttle, "192.0.2.97", "alice", now))
    assert waits[:6] == [2.0, 4.0, 8.0, 16.0, 32.0, 60.0] and set(waits[5:]) == {60.0}


def test_a_flood_of_other_names_cannot_push_an_account_out() -> None:
    """After 100,000 unknown names the account's count is intact; unknown names stay bounded."""
    throttle = api.LoginThrottle()
    for _ in range(api.ACCOUNT_FREE_FAILURES):
        fail(throttle, "192.0.2.1", "alice", 0.0)
    for n in range(100_000):
        throttle.attempt(f"10.{n >> 16}.{(n >> 8) & 255}.{n & 255}", f"x{n}", exists=False, now=0)
    assert fail(throttle, "198.51.100.1", "alice", 0.5) == 0.5
    assert len(throttle._unknown) == throttle.MAX_UNKNOWN


def test_unknown_names_are_throttled_like_accounts() -> None:
    """A name that does not exist gets the same answers, so a 429 tells no one it exists."""
    throttle = api.LoginThrottle()
    waits = [throttle.attempt("192.0.2.1", "nobody", exists=False, now=0) for _ in range(6)]
    assert waits == [0.0] * 5 + [1.0]


def test_success_resets_the_count_and_its_address_skips_the_wait() -> None:
    """The owner's address is let in during a guesser's wait, once per success; others wait."""
    throttle = api.LoginThrottle()
    assert fail(throttle, "198.51.100.1", "alice", 0) == 0.0
    throttle.succeeded("198.51.100.1", "Alice")
    for _ in range(api.ACCOUNT_FREE_FAILURES + 1):
        fail(throttle, "203.0.113.1", "alice", 1)
    assert fail(throttle, "203.0.113.2", "alice", 1) > 0
    assert fail(throttle, "198.51.100.1", "alice", 1) == 0.0  # the owner, still counted
    assert fail(throttle, "198.51.100.1", "alice", 1) > 0  # a failure there: no longer known
    throttle.succeeded("198.51.100.1", "alice")
    assert fail(throttle, "203.0.113.1", "alice", 1) == 0.0  # the count starts afresh


def test_failures_are_forgotten_after_a_quiet_spell() -> None:
    """An account with no failure for ACCOUNT_FORGET starts again with free attempts."""
    throttle = api.LoginThrottle()
    for _ in range(api.ACCOUNT_FREE_FAILURES + 1):
        fail(throttle, "192.0.2.1", "alice", 0)
    later = api.ACCOUNT_FORGET + 1
    assert [fail(throttle, "192.0.2.1", "alice", later) for _ in range(6)] == [0.0] * 5 + [1.0]


def test_one_address_gets_a_burst_of_logins_then_one_every_two_seconds() -> None:
    """Per address, over all names: a burst of 30, then the rate; another address is apart."""
    throttle = api.LoginThrottle()
    waits = [
        throttle.attempt("192.0.2.1", f"name{n}", exists=False, now=0)
        for n in range(api.ADDRESS_LOGIN_BURST + 1)
    ]
    assert waits[:-1] == [0.0] * api.ADDRESS_LOGIN_BURST and waits[-1] == 2.0
    assert throttle.attempt("192.0.2.2", "name0", exists=False, now=0) == 0.0


def test_ipv6_addresses_count_per_64() -> None:
    """Addresses of one /64 share a bucket (one host has them all); IPv4 counts as it is."""
    assert api.address_key("2001:db8:1:2:aaaa::1") == "2001:db8:1:2::/64"
    assert api.address_key("2001:db8:1:2:bbbb::9") == "2001:db8:1:2::/64"
    assert api.address_key("198.51.100.7") == "198.51.100.7"
    assert api.address_key("not an address") == "not an address"
    buckets = api.AddressBuckets(api.REGISTER_RATE, 1)
    assert buckets.take("2001:db8:1:2::1", 0) == 0.0
    assert buckets.take("2001:db8:1:2::2", 0) > 0
    assert buckets.take("2001:db8:1:3::1", 0) == 0.0


def test_check_refuses_what_attempt_would_without_the_store() -> None:
    """check() finds a delayed name or an empty address bucket, and takes nothing itself."""
    throttle = api.LoginThrottle()
    assert throttle.check("192.0.2.1", "alice", 0) == 0.0
    for _ in range(api.ACCOUNT_FREE_FAILURES):
        fail(throttle, "192.0.2.1", "alice", 0)
    assert throttle.check("203.0.113.5", "ALICE", 0.25) == 0.75
    assert throttle.check("192.0.2.1", "bob", 0) == 0.0  # another name: free
    throttle.succeeded("198.51.100.1", "alice")
    for _ in range(api.ACCOUNT_FREE_FAILURES + 1):
        fail(throttle, "192.0.2.1", "alice", 1)
    assert throttle.check("198.51.100.1", "alice", 1) == 0.0  # the owner: attempt decides
    for n in range(api.ADDRESS_LOGIN_BURST):
        throttle.attempt("192.0.2.9", f"n{n}", exists=False, now=5)
    assert throttle.check("192.0.2.9", "zed", 5) == throttle.check("192.0.2.9", "zed", 5) == 2.0


def test_each_refusal_of_the_core_has_its_status_and_code() -> None:
    """api.refused maps every DomainError kind to one HTTP status and error code."""
    from roomcast import exceptions as e

    expected = {
        e.Forbidden: (403, "forbidden"),
        e.NotFound: (404, "not_found"),
        e.UnknownUser: (400, "unknown_user"),
        e.NameTaken: (409, "name_taken"),
        e.RoomExists: (409, "room_exists"),
        e.InvalidRequest: (400, "invalid_message"),
        e.TooLarge: (413, "too_large"),
        e.QuotaExceeded: (413, "quota_exceeded"),
    }
    assert set(expected) | {e.TooFrequent} == set(e.DomainError.__subclasses__())
    for kind, (status, code) in expected.items():
        answer = api.refused(kind("why"))
        assert (answer.status, answer.code, answer.message) == (status, code, "why")
    answer = api.refused(e.TooFrequent("why", retry_after=1.5))
    assert (answer.status, answer.code, answer.retry_after) == (429, "rate_limited", 1.5)
