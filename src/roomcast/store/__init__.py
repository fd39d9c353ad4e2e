"""Message stores: where every room message is kept before it is acked.

:class:`~roomcast.store.base.Store` is the interface; choose an
implementation with :func:`open_store`.
"""

from .base import AppendResult, Store, open_store

__all__ = ["AppendResult", "Store", "open_store"]
