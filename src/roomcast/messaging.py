"""Messages: chat, direct messages, files, typing and history, for both edges.

A message is stored first (the store assigns its seq), then published on
its ordered stream, then acked; a resend with the same id is acked again and
never stored or published twice, and an id reused for a different message
is refused. The WebSocket side hands a message over and is answered by a
callback when the store's batch is written (nothing waits per message);
the HTTP side awaits the same store call.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import time
from dataclasses import replace
from pathlib import Path
from typing import Final, TypeVar

from .broker.base import Broker, Publication
from .config import Limits
from .exceptions import (
    BackendError,
    Forbidden,
    InvalidRequest,
    NotFound,
    QuotaExceeded,
    StoreBusy,
    StoreError,
    TooLarge,
    UnknownUser,
)
from .files import FileLinks, FileStore, safe_file_name, with_link
from .hub import Hub, Peer
from .metrics import Metrics
from .model import ChatMessage, DirectMessage, FileInfo, UserInfo
from .outbox import Outbox
from .protocol.codes import ErrorCode
from .protocol.messages import (
    Ack,
    Chat,
    Direct,
    DirectHistoryReply,
    ErrorReply,
    FileHeader,
    HistoryReply,
    Typing,
    TypingEvent,
    encode,
)
from .protocol.wsframe import text_frame
from .rooms import Rooms
from .store.base import AppendResult, DirectResult, Store
from .streams import Streams

__all__ = ["Messaging", "id_reused", "same_message"]

logger = logging.getLogger("roomcast.node")

T = TypeVar("T")

#: A media type as a file header may give it (``type/subtype``, no parameters).
MEDIA_TYPE: Final = re.compile(
    r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}"
)
#: The media type of a file whose header gave none that is valid.
OCTET_STREAM: Final = "application/octet-stream"

#: The window of the upload quota (``Limits.upload_quota``), in seconds.
UPLOAD_WINDOW: Final = 24 * 3600.0

#: Seconds between two warnings that the store refuses messages (it is full).
BUSY_WARN_EVERY: Final = 10.0

#: What a message sent with an id was: its text, and its file's SHA-256 if any.
Sent = tuple[str, str | None]


class Messaging:
    """Stores messages and sends them on; reads history. Both edges call it.

    Args:
        node_id: this node's id, on its publications.
        store: where messages are kept; it assigns their seqs.
        streams: delivers stored messages in seq order, here and elsewhere.
        rooms: who may post in and read which room.
        hub: this node's connections (typing goes straight to them).
        broker: carries typing to the other nodes.
        limits: file size and quotas.
        metrics: ack times, direct messages.
        outbox: acks and errors to the sending connection.
        files: where files are kept; None refuses files.
        links: signs the links to files in messages; None sends none.
    """

    def __init__(
        self,
        *,
        node_id: str,
        store: Store,
        streams: Streams,
        rooms: Rooms,
        hub: Hub,
        broker: Broker,
        limits: Limits,
        metrics: Metrics,
        outbox: Outbox,
        files: FileStore | None,
        links: FileLinks | None,
    ) -> None:
        self._node_id = node_id
        self._store = store
        self._streams = streams
        self._rooms = rooms
        self._hub = hub
        self._broker = broker
        self._limits = limits
        self._metrics = metrics
        self._outbox = outbox
        self.files = files
        self.links = links
        #: When the last "store busy" warning was logged (loop time).
        self._busy_warned = -BUSY_WARN_EVERY

    # -- room messages -----------------------------------------------------------

    def chat(self, peer: Peer, cmd: Chat) -> None:
        """Store a chat from a connection; publish and ack it when stored."""
        # Not awaited: the store batches this connection's (and everyone's)
        # messages; the callbacks run in store order, which is seq order.
        user = peer.session.user
        assert user is not None
        stored = self._store.append(cmd.room, user.name, cmd.message, client_id=cmd.id)
        received = asyncio.get_running_loop().time()
        sent = (cmd.message, None)
        stored.add_done_callback(functools.partial(self._chat_stored, peer, cmd.id, received, sent))

    def _chat_stored(
        self,
        peer: Peer,
        frame_id: str | None,
        received: float,
        sent: Sent,
        stored: asyncio.Future[AppendResult],
    ) -> None:
        result = self._stored(peer, frame_id, stored)
        if result is None or self._id_reused(peer, frame_id, result, sent):
            return
        message = result.message
        if not result.duplicate:
            frame = text_frame(encode(with_link(message, self.links)))
            self._streams.publish(message.room, frame, message.seq)
        if frame_id is not None:
            self._outbox.reply(peer, Ack(message.message_id, message.room, message.seq), frame_id)
        self._metrics.ack_seconds.observe(asyncio.get_running_loop().time() - received)

    async def post(
        self, user: UserInfo, room: str, text: str, *, client_id: str | None = None
    ) -> ChatMessage:
        """Store and broadcast a chat message from outside a connection (HTTP).

        Raises:
            Forbidden: a private room ``user`` is not in.
            InvalidRequest: ``client_id`` was used for another message.
            BackendError: the store failed; nothing was broadcast.
        """
        await self._rooms.check_access(user, room)
        result = await self._store.append(room, user.name, text, client_id=client_id)
        message = result.message
        if result.duplicate and not same_message(message, (text, None)):
            raise InvalidRequest(id_reused(client_id))
        if not result.duplicate:
            self._streams.publish(room, text_frame(encode(message)), message.seq)
        return message

    def typing(self, peer: Peer, cmd: Typing) -> None:
        """Tell ``cmd.room``'s other members, here and elsewhere, that the sender types."""
        user = peer.session.user
        assert user is not None
        frame = text_frame(encode(TypingEvent(cmd.room, user.name)))
        self._hub.deliver(cmd.room, frame, skip_user=user.name)
        self._broker.publish(Publication(self._node_id, cmd.room, None, frame, skip_user=user.name))

    async def history(
        self, user: UserInfo, room: str, *, before: int | None, limit: int
    ) -> HistoryReply:
        """A page of ``room``'s messages for ``user`` (WebSocket and HTTP).

        Raises:
            Forbidden: ``user`` may not read ``room``.
            BackendError: the store failed.
        """
        await self._rooms.check_access(user, room)
        messages, has_more = await self._store.history(room, before=before, limit=limit)
        return HistoryReply(room, [with_link(m, self.links) for m in messages], has_more)

    # -- direct messages ---------------------------------------------------------

    async def direct(self, peer: Peer, cmd: Direct) -> None:
        """Store a direct message from a connection; deliver and ack it when stored."""
        user = peer.session.user
        assert user is not None and not user.guest
        recipient = await self._store.get_user(cmd.to)
        if recipient is None:
            raise UnknownUser(f"there is no user {cmd.to}")
        stored = self._store.append_direct(user.name, recipient.name, cmd.message, client_id=cmd.id)
        sent = (cmd.message, None)
        stored.add_done_callback(functools.partial(self._direct_stored, peer, cmd.id, sent))

    def _direct_stored(
        self,
        peer: Peer,
        frame_id: str | None,
        sent: Sent,
        stored: asyncio.Future[DirectResult],
    ) -> None:
        result = self._stored(peer, frame_id, stored)
        if result is None or self._id_reused(peer, frame_id, result, sent):
            return
        message = with_link(result.message, self.links)
        if not result.duplicate:
            self._metrics.direct_out.inc()
            inboxes = [(message.sender, result.sender_seq)]
            if message.to != message.sender:
                inboxes.append((message.to, result.recipient_seq))
            for owner, seq in inboxes:
                self._streams.publish_direct(
                    owner, text_frame(encode(replace(message, seq=seq))), seq
                )
        if frame_id is not None:
            self._outbox.reply(peer, Ack(message.message_id, None, result.sender_seq), frame_id)

    async def direct_history(
        self, user: UserInfo, *, before: int | None, since: int | None, limit: int
    ) -> DirectHistoryReply:
        """A page of ``user``'s direct messages: after ``since``, or before ``before``."""
        if user.guest:
            raise Forbidden("direct messages need a registered user")
        last = await self._store.direct_last_seq(user.name)
        if since is not None:
            messages, more = await self._store.direct_since(user.name, since, limit=limit)
        else:
            messages, more = await self._store.direct_history(user.name, before=before, limit=limit)
        return DirectHistoryReply([with_link(m, self.links) for m in messages], more, last)

    # -- files -------------------------------------------------------------------

    async def file(self, peer: Peer, header: FileHeader, data: bytes) -> None:
        """Keep a file, then store and send its message like a chat or direct message."""
        user = peer.session.user
        assert user is not None and not user.guest
        if self.files is None:
            raise Forbidden("this server does not keep files")
        body = data[header.body_offset :]
        if len(body) > self._limits.max_file_size:
            raise TooLarge(f"files are at most {self._limits.max_file_size} bytes")
        recipient = None
        if header.to is not None:
            recipient = await self._store.get_user(header.to)
            if recipient is None:
                raise UnknownUser(f"there is no user {header.to}")
        await self._check_quotas(user, len(body))
        mime = header.mime.lower() if MEDIA_TYPE.fullmatch(header.mime) else OCTET_STREAM
        try:
            digest = await self.files.put(body)
        except OSError as exc:
            logger.error("cannot keep a file from %s: %s", peer.session.id, exc)
            raise StoreError("the file could not be stored") from exc
        info = FileInfo(safe_file_name(header.name), mime, len(body), digest)
        if recipient is None:
            assert header.room is not None
            stored = self._store.append(header.room, user.name, "", client_id=header.id, file=info)
            received = asyncio.get_running_loop().time()
            stored.add_done_callback(
                functools.partial(self._chat_stored, peer, header.id, received, ("", digest))
            )
        else:
            direct = self._store.append_direct(
                user.name, recipient.name, "", client_id=header.id, file=info
            )
            direct.add_done_callback(
                functools.partial(self._direct_stored, peer, header.id, ("", digest))
            )

    async def _check_quotas(self, user: UserInfo, size: int) -> None:
        """Refuse a file past the sender's daily upload quota or the server's files quota."""
        assert self.files is not None
        quota = self._limits.upload_quota
        if quota > 0:
            since_ms = int((time.time() - UPLOAD_WINDOW) * 1000)
            sent = await self._store.file_bytes_since(user.name, since_ms)
            if sent + size > quota:
                raise QuotaExceeded(
                    f"you may send {quota} bytes of files in 24 hours; "
                    f"{max(0, quota - sent)} are left"
                )
        if not await self.files.fits(size):
            logger.warning("files quota of %d bytes reached: refusing files", self.files.quota)
            raise QuotaExceeded("the server keeps no more files for now")

    async def file_message(self, message_id: str) -> ChatMessage | DirectMessage:
        """The stored message that carries file ``message_id``.

        Raises:
            NotFound: no such message, it has no file, or this server keeps no files.
        """
        message = await self._store.message_by_id(message_id)
        if message is None or message.file is None or self.files is None:
            raise NotFound("no such file")
        return message

    async def open_file(
        self, message: ChatMessage | DirectMessage, reader: UserInfo | None
    ) -> tuple[FileInfo, Path]:
        """The file of ``message`` and where it is kept, if ``reader`` may read it.

        ``reader`` None is a signed link, which vouches for the reader.

        Raises:
            Forbidden: ``reader`` may not read the room, or is neither side
                of the direct message.
            NotFound: the file is not kept (any more).
        """
        info = message.file
        assert info is not None and self.files is not None
        if reader is not None:
            if isinstance(message, ChatMessage):
                await self._rooms.check_access(reader, message.room)
            elif reader.name not in (message.sender, message.to):
                raise Forbidden("this file was sent to someone else")
        try:
            path = self.files.path(info.sha256)
        except ValueError:
            raise NotFound("no such file") from None
        if not path.is_file():
            logger.error("file %s of message %s is missing", info.sha256, message.message_id)
            raise NotFound("the file is missing")
        return info, path

    async def sweep_files(self) -> int:
        """Delete kept files that no stored message names any more; return how many."""
        if self.files is None:
            return 0
        return await self.files.sweep(await self._store.file_digests())

    # -- what the store answered ----------------------------------------------------

    def _id_reused(
        self, peer: Peer, frame_id: str | None, result: AppendResult | DirectResult, sent: Sent
    ) -> bool:
        """Whether a resend's id names another message: then the sender is told so."""
        if not result.duplicate or same_message(result.message, sent):
            return False
        self._outbox.error(peer, ErrorCode.INVALID_MESSAGE, id_reused(frame_id), frame_id)
        return True

    def _stored(self, peer: Peer, frame_id: str | None, stored: asyncio.Future[T]) -> T | None:
        """What the store returned, or None once the sender is told it was not stored."""
        try:
            return stored.result()
        except StoreBusy as exc:
            self._store_busy(peer, frame_id, exc)
            return None
        except BackendError as exc:
            logger.error("message from %s not stored: %s", peer.session.id, exc)
        except Exception:
            logger.exception("message from %s not stored", peer.session.id)
        self._outbox.error(
            peer, ErrorCode.INTERNAL, "the message was not stored; send it again", frame_id
        )
        return None

    def _store_busy(self, peer: Peer, frame_id: str | None, exc: StoreBusy) -> None:
        """The store refused a message (its queue is full): ``rate_limited``, retry later."""
        now = asyncio.get_running_loop().time()
        if now - self._busy_warned >= BUSY_WARN_EVERY:
            self._busy_warned = now
            logger.warning("the store is saturated, refusing messages: %s", exc)
        message = "the server is busy storing messages; send it again later"
        self._outbox.reply(peer, ErrorReply.rate_limited(message, exc.retry_after), frame_id)


def same_message(stored: ChatMessage | DirectMessage, sent: Sent) -> bool:
    """Whether ``stored`` (found under a resent id) is the message ``sent`` again.

    A client resending after a reconnect sends the same text (or file); a
    different one under the same id is another message, never to be
    dropped as a resend.
    """
    digest = stored.file.sha256 if stored.file is not None else None
    return stored.message == sent[0] and digest == sent[1]


def id_reused(frame_id: str | None) -> str:
    """The error text for an id already used for another message."""
    return f"id {frame_id} was used for another message in the last 24 h; use a new id"
