"""Brokers: how a node's publications reach the other nodes.

:class:`~roomcast.broker.base.Broker` is the interface; choose an
implementation with :func:`open_broker`.
"""

from .base import Broker, Publication, open_broker

__all__ = ["Broker", "Publication", "open_broker"]
