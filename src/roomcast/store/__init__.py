"""Message stores: where every room message is kept before it is acked.

:class:`~roomcast.store.base.Store` is the interface (the small ports of
``base.py``, combined); :func:`open_store` chooses an implementation
(imported only when chosen, so no module that uses the interface loads a
database driver). SQLite and PostgreSQL share every query but their batch
writers' through :class:`~roomcast.store.sql.SQLStore`.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit

from ..exceptions import ConfigError
from .base import AppendResult, Store

__all__ = ["AppendResult", "Store", "open_store"]


def open_store(url: str | None, *, data_dir: Path, history_days: int = 0) -> Store:
    """The store for a ``--database-url``.

    ``None`` is the embedded default, a SQLite file ``roomcast.db`` in
    ``data_dir``; ``sqlite:PATH`` (``sqlite:///abs/path.db``) another SQLite
    file; ``memory:`` keeps messages in memory until the process ends;
    ``postgresql://user:password@host:port/database`` (or ``postgres://``) a
    PostgreSQL database, which several nodes can share. The store only
    connects when it is opened.

    Raises:
        ConfigError: the URL is not one roomcast can use.
    """
    from .memory import MemoryStore
    from .sqlite import SQLiteStore

    if url is None:
        return SQLiteStore(data_dir / "roomcast.db", history_days=history_days)
    if url == "memory:":
        return MemoryStore()
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "sqlite":
        if parts.netloc or not parts.path:
            raise ConfigError(
                f"a SQLite URL is sqlite:relative/path.db or sqlite:///absolute/path.db, not {url}"
            )
        return SQLiteStore(Path(unquote(parts.path)), history_days=history_days)
    if scheme in {"postgres", "postgresql"}:
        from .postgres import PostgresStore

        return PostgresStore(url, history_days=history_days)
    raise ConfigError(
        f"unsupported --database-url scheme {scheme or url!r}:"
        " use postgresql://, sqlite: or memory:"
    )
