"""roomcast: real-time chat over WebSocket.

One command runs it on a laptop with nothing else installed; the same code
runs as many nodes behind Redis and PostgreSQL.
"""

import importlib as _importlib
import typing as _typing

from .exceptions import (
    BackendError,
    BrokerError,
    ConfigError,
    ProtocolError,
    RoomcastError,
    StoreError,
)

if _typing.TYPE_CHECKING:
    from .config import Limits, ServerConfig

__version__ = "0.1.0"

__all__ = [
    "BackendError",
    "BrokerError",
    "ConfigError",
    "Limits",
    "ProtocolError",
    "RoomcastError",
    "ServerConfig",
    "StoreError",
    "__version__",
]

# The server's settings (roomcast.config) load on first use, so that
# `import roomcast` needs no more than the client distribution ships
# (client/pyproject.toml). `roomcast.Limits`, `from roomcast import
# ServerConfig` and `roomcast.config` work as if they were imported here;
# type checkers see the imports above, not this hook.
_LAZY = {"config": "config", "Limits": "config", "ServerConfig": "config"}

if not _typing.TYPE_CHECKING:

    def __getattr__(name: str) -> object:
        if name not in _LAZY:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        module = _importlib.import_module(f"{__name__}.{_LAZY[name]}")
        value = module if name == _LAZY[name] else getattr(module, name)
        globals()[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted({*globals(), *_LAZY})
