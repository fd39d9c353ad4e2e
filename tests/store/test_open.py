"""open_store: the --database-url picks the store (nothing connects yet)."""

from __future__ import annotations

from pathlib import Path

import pytest

from roomcast.exceptions import ConfigError
from roomcast.store import open_store
from roomcast.store.memory import MemoryStore
from roomcast.store.postgres import PostgresStore
from roomcast.store.sqlite import SQLiteStore


@pytest.mark.parametrize(
    ("url", "kind", "where"),
    [
        (None, SQLiteStore, "data/roomcast.db"),
        ("sqlite:other.db", SQLiteStore, "other.db"),
        ("sqlite:///abs/x.db", SQLiteStore, "/abs/x.db"),
        ("memory:", MemoryStore, None),
        ("postgresql://u@h/db", PostgresStore, None),
        ("postgres://u@h/db", PostgresStore, None),
    ],
)
def test_open_store_urls(url: str | None, kind: type, where: str | None) -> None:
    """open_store picks the store and file from --database-url."""
    store = open_store(url, data_dir=Path("data"))
    assert isinstance(store, kind)
    if where is not None:
        assert isinstance(store, SQLiteStore)
        assert store.path == Path(where)


@pytest.mark.parametrize("url", ["mysql://x", "sqlite://host/x.db", "sqlite:"])
def test_open_store_refuses_unusable_urls(url: str) -> None:
    """Unknown schemes and malformed SQLite URLs are ConfigErrors."""
    with pytest.raises(ConfigError):
        open_store(url, data_dir=Path("data"))


@pytest.mark.parametrize("scheme", ["postgres", "postgresql", "PostgreSQL"])
def test_open_store_picks_postgres(scheme: str) -> None:
    """open_store gives a PostgresStore (not yet connected) for postgres:// and postgresql://."""
    store = open_store(
        f"{scheme}://u:pw@db.example:5433/chat", data_dir=Path("data"), history_days=7
    )
    assert isinstance(store, PostgresStore)
    assert store.history_days == 7
    assert "pw" not in repr(store)
