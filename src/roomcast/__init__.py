"""roomcast: real-time chat over WebSocket.

One command runs it on a laptop with nothing else installed; the same code
runs as many nodes behind Redis and PostgreSQL.
"""

from .config import Limits, ServerConfig
from .exceptions import (
    BackendError,
    BrokerError,
    ConfigError,
    ProtocolError,
    RoomcastError,
    StoreError,
)

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
