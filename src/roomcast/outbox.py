"""Frames to one connection: encoded once, refusals counted.

Every part of the node that answers a connection (acks, replies, errors)
goes through one :class:`Outbox`, so the error metrics and the guard for
JSON too deep to encode are in one place.
"""

from __future__ import annotations

import logging

from .exceptions import BackendError, DomainError, ProtocolError
from .hub import Peer
from .metrics import Metrics
from .protocol.codes import ErrorCode
from .protocol.messages import ErrorReply, ServerFrame, encode
from .protocol.wsframe import text_frame

__all__ = ["Outbox"]

logger = logging.getLogger("roomcast.node")


class Outbox:
    """Encodes server frames for a connection and counts the errors sent."""

    def __init__(self, metrics: Metrics) -> None:
        #: Where ``error`` frames are counted, by code.
        self._metrics = metrics

    def reply(self, peer: Peer, frame: ServerFrame, frame_id: str | None = None) -> None:
        """Send ``frame`` to ``peer``, answering the frame ``frame_id``."""
        if type(frame) is ErrorReply:
            self._metrics.error(frame.code)
        try:
            data = encode(frame, id=frame_id)
        except TypeError:
            # A pong or echo carries the client's own JSON back; orjson reads
            # 1,024 levels of nesting but writes only 254.
            frame = ErrorReply(ErrorCode.INVALID_MESSAGE, "the payload is nested too deeply")
            self._metrics.error(frame.code)
            data = encode(frame, id=frame_id)
        peer.send(text_frame(data))

    def error(self, peer: Peer, code: ErrorCode, message: str, frame_id: str | None) -> None:
        """Send an ``error`` frame."""
        self.reply(peer, ErrorReply(code, message), frame_id)

    def refused(
        self,
        peer: Peer,
        exc: ProtocolError | DomainError | BackendError,
        frame_id: str | None,
    ) -> None:
        """Answer a frame the session, the core or a backend refused."""
        if isinstance(exc, ProtocolError):
            self.reply(peer, ErrorReply.from_exception(exc), exc.frame_id or frame_id)
        elif isinstance(exc, DomainError):
            self.reply(peer, ErrorReply.refused(exc), frame_id)
        else:
            logger.error("backend failure: %s", exc)
            self.error(peer, ErrorCode.INTERNAL, "the server could not do that; retry", frame_id)
