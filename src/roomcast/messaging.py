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
from collections.abc import Coroutine, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Final, NamedTuple, TypeVar

from .broker.base import Broker, Publication
from .config import Limits
from .emoji import valid_emoji
from .exceptions import (
    BackendError,
    DomainError,
    Forbidden,
    InvalidRequest,
    NoSuchMessage,
    NotFound,
    ProtocolError,
    QuotaExceeded,
    StoreBusy,
    StoreError,
    TooLarge,
    UnknownUser,
)
from .files import FileLinks, FileStore, safe_file_name, with_link
from .hub import Hub, Peer
from .metrics import Metrics
from .model import Change, ChatMessage, DirectMessage, FileInfo, Mention, Quote, UserInfo
from .moderation import Moderation
from .notify import Notifier
from .outbox import Outbox
from .protocol.codes import ErrorCode
from .protocol.messages import (
    Ack,
    Chat,
    Delete,
    Direct,
    DirectHistoryReply,
    Edit,
    ErrorReply,
    FileHeader,
    HistoryReply,
    React,
    Typing,
    TypingEvent,
    encode,
)
from .protocol.wsframe import text_frame
from .readstate import ReadState, direct_stream
from .rooms import Rooms
from .store.base import AppendResult, DirectResult, Draft, Store
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

#: What a frame sent with an id asked for, to tell a resend from another
#: frame reusing the id: ``("chat", text, file's SHA-256 or "")`` for a
#: message, ``(kind, message_id, text or emoji)`` for a change.
Sent = tuple[str, str, str]

#: Messages :class:`Messaging` remembers as stored lately (``_recent``): about
#: 1.5 MB, the last few seconds of a busy node or hours of a quiet one.
RECENT_MESSAGES: Final = 10_000


class _Facts(NamedTuple):
    """What a change needs to know of its message before it is queued."""

    #: Its room, or None for a direct message (then ``to`` is its recipient).
    room: str | None
    sender: str
    to: str | None
    has_file: bool
    #: Deleted when it was read (never for one remembered as just stored).
    deleted: bool
    #: When it was sent (epoch ms).
    ts_ms: int

    @classmethod
    def of(cls, message: ChatMessage | DirectMessage) -> _Facts:
        """The facts of ``message`` as it is."""
        room = message.room if isinstance(message, ChatMessage) else None
        to = message.to if isinstance(message, DirectMessage) else None
        has_file = message.file is not None
        return cls(room, message.sender, to, has_file, message.deleted, message.ts_ms)


#: ``@name`` in a message's text: a registered user's name (accounts.USERNAME),
#: not inside a word or an e-mail address.
MENTION: Final = re.compile(r"(?<![\w@])@([A-Za-z0-9_][A-Za-z0-9_-]{2,31})(?![\w-])")
#: Most users one message mentions (the rest are not looked up): each is a
#: store read before the message is stored, and a mention event after.
MAX_MENTIONS: Final = 20


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
        read_state: a sender has read what they sent; receipts in history.
        notifier: tells users away of direct messages and mentions; None tells no one.
        moderation: mutes and slow mode; who may delete others' messages.
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
        read_state: ReadState,
        moderation: Moderation,
        notifier: Notifier | None = None,
    ) -> None:
        self._node_id = node_id
        self._moderation = moderation
        self._read_state = read_state
        self._notifier = notifier
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
        #: The messages stored here lately, by id, and what never changes about
        #: them: a change of one (a typo fixed, a reaction to what just came)
        #: is checked without a store read.
        self._recent: dict[str, _Facts] = {}
        #: When the last "store busy" warning was logged (loop time).
        self._busy_warned = -BUSY_WARN_EVERY

    # -- room messages -----------------------------------------------------------

    def chat(self, peer: Peer, cmd: Chat) -> Coroutine[Any, Any, None] | None:
        """Store a chat from a connection; publish and ack it when stored.

        A plain chat is handed to the store at once. One that answers
        another or names someone (``@``) must first read what it answers
        and who is named: that part is the coroutine returned.
        """
        user = peer.session.user
        assert user is not None
        if not self._moderation.check_send(user, cmd.room):
            return self._chat_once_checked(peer, cmd)  # the room's rules must be read first
        if cmd.reply_to is not None or _may_mention(cmd.message):
            return self._chat_with_context(peer, cmd)
        # Not awaited: the store batches this connection's (and everyone's)
        # messages; the callbacks run in store order, which is seq order.
        stored = self._store.append(cmd.room, user.name, cmd.message, client_id=cmd.id)
        self._when_stored(peer, cmd.id, stored, ("chat", cmd.message, ""), None)
        return None

    async def _chat_once_checked(self, peer: Peer, cmd: Chat) -> None:
        user = peer.session.user
        assert user is not None
        await self._may_send(user, cmd.room)
        await self._chat_with_context(peer, cmd)

    async def _may_send(self, user: UserInfo, room: str) -> None:
        """Refuse a message ``user`` may not send in ``room`` (muted, slow mode)."""
        if not self._moderation.check_send(user, room):
            await self._moderation.load(room)
            self._moderation.check_send(user, room)

    async def _chat_with_context(self, peer: Peer, cmd: Chat) -> None:
        user = peer.session.user
        assert user is not None
        draft, quote = await self._chat_draft(user, cmd.room, cmd.message, cmd.id, cmd.reply_to)
        stored = self._store.submit(draft)
        self._when_stored(peer, cmd.id, stored, ("chat", cmd.message, ""), quote)

    async def _chat_draft(
        self, user: UserInfo, room: str, text: str, client_id: str | None, reply_to: str | None
    ) -> tuple[Draft, Quote | None]:
        """A chat's draft with what it answers and whom it names, read from the store.

        Raises:
            NoSuchMessage: ``reply_to`` names no message ``user`` may read.
            InvalidRequest: ``reply_to`` is in another room, or deleted.
        """
        thread = quote = None
        if reply_to is not None:
            answered = await self._store.message_by_id(reply_to)
            if not isinstance(answered, ChatMessage) or not await self._rooms.may_access(
                user, answered.room
            ):
                raise NoSuchMessage(f"there is no message {reply_to} to reply to")
            if answered.room != room:
                raise InvalidRequest(f"reply_to names a message in another room than {room}")
            if answered.deleted:
                raise InvalidRequest("the message was deleted; it cannot be answered")
            thread = answered.thread or answered.message_id
            quote = Quote.of(answered.sender, answered.message, answered.deleted)
        mentions = await self._mentioned(text, room=room)
        draft = Draft(
            user.name,
            room=room,
            text=text,
            client_id=client_id,
            reply_to=reply_to,
            thread=thread,
            mentions=mentions,
        )
        return draft, quote

    async def _mentioned(
        self, text: str, *, room: str | None = None, peers: tuple[str, str] | None = None
    ) -> tuple[str, ...]:
        """The registered users ``text`` names with ``@name`` who may read its conversation.

        In ``room``: any registered user for a public room, its owner and
        members for a private one. In a direct conversation: the two ``peers``.
        """
        names = list(dict.fromkeys(m.lower() for m in MENTION.findall(text)))[:MAX_MENTIONS]
        if not names:
            return ()
        found: list[str] = []
        if peers is not None:
            by_key = {peer.lower(): peer for peer in peers}
            return tuple(by_key[name] for name in names if name in by_key)
        assert room is not None
        access = await self._store.room_access(room)
        for name in names:
            account = await self._store.get_user(name)
            if account is not None and (access is None or access.allows(account.name)):
                found.append(account.name)
        return tuple(dict.fromkeys(found))

    def _when_stored(
        self,
        peer: Peer,
        frame_id: str | None,
        stored: asyncio.Future[Any],
        sent: Sent,
        quote: Quote | None,
    ) -> None:
        received = asyncio.get_running_loop().time()
        stored.add_done_callback(
            functools.partial(self._chat_stored, peer, frame_id, received, sent, quote)
        )

    def _chat_stored(
        self,
        peer: Peer,
        frame_id: str | None,
        received: float,
        sent: Sent,
        quote: Quote | None,
        stored: asyncio.Future[AppendResult],
    ) -> None:
        result = self._stored(peer, frame_id, stored)
        if result is None or self._id_reused(peer, frame_id, result, sent):
            return
        message = result.message
        assert isinstance(message, ChatMessage)
        if not result.duplicate:
            user = peer.session.user
            assert user is not None
            self._publish_chat(user, result, quote)
        if frame_id is not None:
            self._outbox.reply(peer, Ack(message.message_id, message.room, message.seq), frame_id)
        self._metrics.ack_seconds.observe(asyncio.get_running_loop().time() - received)

    def _publish_chat(self, sender: UserInfo, result: AppendResult, quote: Quote | None) -> None:
        """Send a newly stored room message on, and a mention to each user it names.

        Its sender has read the room up to it; a user it names who is away
        is notified.
        """
        message = result.message
        assert isinstance(message, ChatMessage)
        if quote is not None:
            message = replace(message, quote=quote)
        frame = text_frame(encode(with_link(message, self.links)))
        self._streams.publish(message.room, frame, message.seq)
        self._metrics.chat_out.inc()
        self._remember(message)
        self._read_state.sent(sender, message.room, message.seq)
        for name, seq in result.mentioned:
            self._metrics.mention_out.inc()
            mention = Mention(message.room, message.message_id, message.sender, seq, message.ts_ms)
            self._streams.publish_direct(name, text_frame(encode(mention)), seq)
            # A guest's name is anyone's: it does not reach a phone.
            if self._notifier is not None and not sender.guest and name != message.sender:
                self._notifier.mention(name, message)

    async def post(
        self,
        user: UserInfo,
        room: str,
        text: str,
        *,
        client_id: str | None = None,
        reply_to: str | None = None,
    ) -> ChatMessage:
        """Store and broadcast a chat message from outside a connection (HTTP).

        Raises:
            Forbidden: a private room ``user`` is not in.
            NoSuchMessage: ``reply_to`` names no message ``user`` may read.
            InvalidRequest: ``client_id`` was used for another message, or
                ``reply_to`` is in another room.
            BackendError: the store failed; nothing was broadcast.
        """
        await self._rooms.check_access(user, room)
        await self._may_send(user, room)
        draft, quote = await self._chat_draft(user, room, text, client_id, reply_to)
        result = await self._store.submit(draft)
        assert isinstance(result, AppendResult)
        message = result.message
        # An id used before for something else (an edit, a reaction) is refused
        # before the stored event is read as a chat, as on the WebSocket.
        if result.duplicate and not same_message(message, ("chat", text, "")):
            raise InvalidRequest(id_reused(client_id))
        assert isinstance(message, ChatMessage)
        if not result.duplicate:
            self._publish_chat(user, result, quote)
        return message

    def typing(self, peer: Peer, cmd: Typing) -> None:
        """Tell ``cmd.room``'s other members, here and elsewhere, that the sender types."""
        user = peer.session.user
        assert user is not None
        if self._moderation.muted(user, cmd.room):
            return  # a muted member's typing would say nothing anyone will read
        frame = text_frame(encode(TypingEvent(cmd.room, user.name)))
        self._hub.deliver(cmd.room, frame, skip_user=user.name)
        self._broker.publish(Publication(self._node_id, cmd.room, None, frame, skip_user=user.name))

    async def history(
        self,
        user: UserInfo,
        room: str,
        *,
        before: int | None,
        limit: int,
        thread: str | None = None,
        around: int | None = None,
    ) -> HistoryReply:
        """A page of ``room``'s messages for ``user`` (WebSocket and HTTP).

        Before ``before`` (the newest without it), of one ``thread`` only,
        or ``around`` a seq.

        Raises:
            Forbidden: ``user`` may not read ``room``.
            BackendError: the store failed.
        """
        await self._rooms.check_access(user, room)
        newer = None
        if around is not None:
            messages, has_more, newer = await self._store.around(room, around, limit=limit)
        else:
            messages, has_more = await self._store.history(
                room, before=before, limit=limit, thread=thread
            )
        linked = [with_link(m, self.links) for m in messages]
        receipts, counts = await self._read_state.room_receipts(room, messages)
        return HistoryReply(room, linked, has_more, thread, newer, receipts, counts)

    # -- changes: edit, delete, react --------------------------------------------

    async def change(self, peer: Peer, cmd: Edit | Delete | React) -> None:
        """Store a change from a connection; publish and ack it when stored.

        The connection must be in the message's room (as it must to chat there).
        """
        user = peer.session.user
        assert user is not None
        kind, text = _kind_and_text(cmd)
        draft, author = await self._change_draft(
            user, kind, cmd.message_id, text, cmd.id, joined=peer.session.rooms
        )
        stored = self._store.submit(draft)
        sent = (kind, cmd.message_id, text)
        stored.add_done_callback(functools.partial(self._change_stored, peer, cmd.id, sent))
        if author is not None:
            stored.add_done_callback(functools.partial(self._audit_delete, user, author))

    def _change_stored(
        self,
        peer: Peer,
        frame_id: str | None,
        sent: Sent,
        stored: asyncio.Future[AppendResult | DirectResult],
    ) -> None:
        result = self._stored(peer, frame_id, stored)
        if result is None or self._id_reused(peer, frame_id, result, sent):
            return
        ack = self._publish_change(result)
        if frame_id is not None:
            self._outbox.reply(peer, ack, frame_id)

    async def change_now(
        self,
        user: UserInfo,
        kind: str,
        message_id: str,
        text: str = "",
        *,
        client_id: str | None = None,
    ) -> Ack:
        """Make a change from outside a connection (HTTP); what a WebSocket ``ack`` says.

        Raises:
            NoSuchMessage: no such message, or not one ``user`` may read.
            Forbidden: not ``user``'s to change.
            InvalidRequest: a bad emoji or text, or the message's state
                refuses it (deleted, too many reactions); ``client_id``
                was used for something else.
            BackendError: the store failed; nothing was published.
        """
        draft, author = await self._change_draft(user, kind, message_id, text, client_id)
        stored = self._store.submit(draft)
        if author is not None:
            stored.add_done_callback(functools.partial(self._audit_delete, user, author))
        result = await stored
        if result.duplicate and not same_message(result.message, (kind, message_id, text)):
            raise InvalidRequest(id_reused(client_id))
        return self._publish_change(result)

    def _audit_delete(
        self, user: UserInfo, author: str, stored: asyncio.Future[AppendResult | DirectResult]
    ) -> None:
        """A moderator deleted ``author``'s room message: log it (once, not for a resend)."""
        if stored.cancelled() or stored.exception() is not None:
            return
        result = stored.result()
        change = result.message
        if result.duplicate or not isinstance(change, Change) or change.room is None:
            return
        work = self._moderation.message_deleted(user, change.room, change.target, author)
        asyncio.get_running_loop().create_task(work)

    async def _change_draft(
        self,
        user: UserInfo,
        kind: str,
        message_id: str,
        text: str,
        client_id: str | None,
        *,
        joined: set[str] | None = None,
    ) -> tuple[Draft, str | None]:
        """The draft of a change, once ``user`` may make it (the message's state aside),
        and the author of a room message ``user`` deletes as its moderator.

        Who may: the author edits; the author, or the room's owner, moderators
        and admins, delete; anyone who may read the conversation and is not
        muted there reacts. A message
        ``user`` may not read is no message at all to them. A connection
        (``joined``: its rooms) must be in the message's room, as it must to
        chat there; being in it says it may read it (checked at its join).

        Raises:
            NoSuchMessage, Forbidden, InvalidRequest: as :meth:`change_now` says.
            ProtocolError: ``not_member``: the connection is not in the room.
        """
        if kind in ("edit", "delete") and user.guest:
            # A guest's name is anyone's once it leaves: authorship by name
            # would let the next guest of that name change the messages.
            raise Forbidden("guests cannot edit or delete messages; sign in")
        if kind in ("react", "unreact") and not valid_emoji(text):
            raise InvalidRequest(
                "emoji must be one emoji (one grapheme cluster) or :name: "
                "(lower-case letters, digits, _ + -, at most 32)"
            )
        facts = await self._facts(message_id)
        if facts is None:
            raise NoSuchMessage(f"there is no message {message_id}")
        if facts.room is not None:
            if joined is None or facts.room not in joined:
                if not await self._rooms.may_access(user, facts.room):
                    raise NoSuchMessage(f"there is no message {message_id}")
                if joined is not None:
                    raise ProtocolError(
                        ErrorCode.NOT_MEMBER, f"not a member of {facts.room}", frame_id=client_id
                    )
            if kind == "delete" and facts.sender != user.name:
                if not await self._moderation.may_delete_any(user, facts.room):
                    raise Forbidden(
                        "only its author, or the room's owner or moderators, may delete a message"
                    )
            elif kind != "delete":
                await self._moderation.check_muted(user, facts.room)
            where: dict[str, str] = {"room": facts.room}
        else:
            assert facts.to is not None
            if user.guest or user.name not in (facts.sender, facts.to):
                raise NoSuchMessage(f"there is no message {message_id}")
            if kind == "delete" and facts.sender != user.name:
                raise Forbidden("only its author may delete a direct message")
            where = {"to": facts.to if user.name == facts.sender else facts.sender}
        if kind in ("edit", "delete") and facts.sender == user.name:
            # A guest may have used the name before it was registered: what
            # was said under it then is not this user's to change.
            account = await self._store.get_user(user.name)
            if account is None or facts.ts_ms < account.created_ms:
                raise Forbidden("this message was sent by a guest of that name, not by you")
        if kind == "edit":
            if facts.sender != user.name:
                raise Forbidden("only its author may edit a message")
            if facts.has_file:
                raise InvalidRequest("a file message has no text to edit")
            if facts.deleted:
                raise InvalidRequest("the message was deleted; it cannot be edited")
        draft = Draft(
            user.name,
            room=where.get("room"),
            to=where.get("to"),
            text=text,
            client_id=client_id,
            kind=kind,
            target=message_id,
        )
        moderated = kind == "delete" and facts.room is not None and facts.sender != user.name
        return draft, facts.sender if moderated else None

    async def _facts(self, message_id: str) -> _Facts | None:
        """Where a message is and who wrote it: from :attr:`_recent`, else from the store.

        What the cache holds never changes; whether the message was deleted
        since does, and the store's transaction decides that anyway.
        """
        facts = self._recent.get(message_id)
        if facts is not None:
            return facts
        message = await self._store.message_by_id(message_id)
        return _Facts.of(message) if message is not None else None

    def _remember(self, message: ChatMessage | DirectMessage) -> None:
        """Keep a message just stored here in :attr:`_recent` (the oldest goes past its bound)."""
        recent = self._recent
        recent[message.message_id] = _Facts.of(message)
        if len(recent) > RECENT_MESSAGES:
            del recent[next(iter(recent))]

    def _publish_change(self, result: AppendResult | DirectResult) -> Ack:
        """Send a newly stored change on (unless it is a resend); the ack for its sender."""
        change = result.message
        assert isinstance(change, Change)
        if isinstance(result, AppendResult):
            if change.seq is not None and not result.duplicate:
                assert change.room is not None
                self._streams.publish(change.room, text_frame(encode(change)), change.seq)
                self._metrics.change_out.inc()
            return Ack(change.target, change.room, change.seq)
        if result.sender_seq and not result.duplicate:
            self._metrics.change_out.inc()
            assert change.peers is not None
            sender, other = change.peers
            inboxes = [(sender, result.sender_seq)]
            if other != sender:
                inboxes.append((other, result.recipient_seq))
            for owner, seq in inboxes:
                frame = text_frame(encode(replace(change, seq=seq)))
                self._streams.publish_direct(owner, frame, seq)
        return Ack(change.target, None, result.sender_seq or None)

    # -- direct messages ---------------------------------------------------------

    async def direct(self, peer: Peer, cmd: Direct) -> None:
        """Store a direct message from a connection; deliver and ack it when stored."""
        user = peer.session.user
        assert user is not None and not user.guest
        recipient = await self._store.get_user(cmd.to)
        if recipient is None:
            raise UnknownUser(f"there is no user {cmd.to}")
        peers = (user.name, recipient.name)
        mentions = (
            await self._mentioned(cmd.message, peers=peers) if _may_mention(cmd.message) else ()
        )
        draft = Draft(
            user.name, to=recipient.name, text=cmd.message, client_id=cmd.id, mentions=mentions
        )
        stored = self._store.submit(draft)
        sent = ("chat", cmd.message, "")
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
        assert isinstance(result.message, DirectMessage)
        message = with_link(result.message, self.links)
        if not result.duplicate:
            self._metrics.direct_out.inc()
            self._remember(message)
            user = peer.session.user
            assert user is not None
            self._read_state.sent(user, direct_stream(message.to), result.sender_seq)
            if self._notifier is not None:
                self._notifier.direct(message)
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
        self,
        user: UserInfo,
        *,
        before: int | None,
        since: int | None,
        limit: int,
        around: int | None = None,
        peer: str | None = None,
    ) -> DirectHistoryReply:
        """A page of ``user``'s direct messages: after ``since``, before ``before``,
        or ``around`` a seq (where a search result opens); the last two of the
        conversation with ``peer`` only, when given.

        Raises:
            Forbidden: ``user`` is a guest.
            UnknownUser: ``peer`` is not registered.
        """
        if user.guest:
            raise Forbidden("direct messages need a registered user")
        if peer is not None:
            [peer] = await self._rooms.registered([peer])
        last = await self._store.direct_last_seq(user.name)
        messages: Sequence[DirectMessage | Change | Mention]
        newer = None
        if since is not None:
            messages, more = await self._store.direct_since(user.name, since, limit=limit)
        elif around is not None:
            messages, more, newer = await self._store.direct_around(
                user.name, around, limit=limit, peer=peer
            )
        else:
            messages, more = await self._store.direct_history(
                user.name, before=before, limit=limit, peer=peer
            )
        receipts = await self._read_state.direct_receipts(user.name, messages)
        linked = [with_link(m, self.links) for m in messages]
        return DirectHistoryReply(linked, more, last, receipts, newer)

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
        if header.room is not None:
            await self._may_send(user, header.room)
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
            self._when_stored(peer, header.id, stored, ("chat", "", digest), None)
        else:
            direct = self._store.append_direct(
                user.name, recipient.name, "", client_id=header.id, file=info
            )
            direct.add_done_callback(
                functools.partial(self._direct_stored, peer, header.id, ("chat", "", digest))
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
        except DomainError as exc:  # a change the message's state refused
            self._outbox.refused(peer, exc, frame_id)
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


def same_message(stored: ChatMessage | DirectMessage | Change, sent: Sent) -> bool:
    """Whether ``stored`` (found under a resent id) is what ``sent`` asked for again.

    A client resending after a reconnect sends the same text (or file, or
    change); a different one under the same id is another message, never to
    be dropped as a resend. An edit of a message deleted since has lost its
    text: the same edit of the same message counts as the same.
    """
    if isinstance(stored, Change):
        if (stored.kind, stored.target) != sent[:2]:
            return False
        return stored.text == sent[2] or (stored.kind == "edit" and not stored.text)
    if stored.deleted:
        return sent[0] == "chat"  # erased: the id is all that is left to compare
    digest = stored.file.sha256 if stored.file is not None else ""
    return ("chat", stored.message, digest) == sent


def _may_mention(text: str) -> bool:
    """Whether ``text`` names anyone with ``@name`` (a plain chat skips the lookups)."""
    return "@" in text and MENTION.search(text) is not None


def _kind_and_text(cmd: Edit | Delete | React) -> tuple[str, str]:
    """A change frame's kind (``edit``, ``delete``, ``react``, ``unreact``) and its text."""
    if isinstance(cmd, Edit):
        return "edit", cmd.message
    if isinstance(cmd, Delete):
        return "delete", ""
    return ("react" if cmd.added else "unreact"), cmd.emoji


def id_reused(frame_id: str | None) -> str:
    """The error text for an id already used for another message."""
    return f"id {frame_id} was used for another message in the last 24 h; use a new id"
