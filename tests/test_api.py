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
