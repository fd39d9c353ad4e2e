"""roomcast's Python client: ``Client`` keeps one connection alive and loses nothing.

    async with Client("ws://127.0.0.1:8765/ws", username="ann", password="...") as chat:
        await chat.send_chat("hello")          # returns once the server stored it
        async for event in chat:                # every message once, in order
            print(event)
        await chat.mark_read("lobby")          # read up to the newest seq delivered
        print(chat.unread.rooms["lobby"].unread)  # counts kept without asking again
        page = await chat.search("deploy*", room="dev")  # what the user may read now

It imports only :mod:`roomcast.protocol`'s neighbours it needs (nothing of
the server), :mod:`websockets` and :mod:`orjson`. See docs/client.md.
"""

from .backoff import Backoff
from .core import (
    AuthRefused,
    Client,
    ClientClosed,
    ClientError,
    DirectHistoryPage,
    HistoryPage,
    QueueFull,
    SendError,
)
from .events import (
    Change,
    ConnectionState,
    DirectMessage,
    Event,
    FileRef,
    Mention,
    MessageDeleted,
    MessageEdited,
    Presence,
    Quote,
    Reaction,
    ReadMarker,
    Receipt,
    Reply,
    RoomMessage,
    SearchPage,
    SearchResult,
    ServerError,
    StateChange,
    Typing,
    Unread,
    UnreadCounts,
    parse_server_frame,
)

__all__ = [
    "AuthRefused",
    "Backoff",
    "Change",
    "Client",
    "ClientClosed",
    "ClientError",
    "ConnectionState",
    "DirectHistoryPage",
    "DirectMessage",
    "Event",
    "FileRef",
    "HistoryPage",
    "Mention",
    "MessageDeleted",
    "MessageEdited",
    "Presence",
    "QueueFull",
    "Quote",
    "Reaction",
    "ReadMarker",
    "Receipt",
    "Reply",
    "RoomMessage",
    "SearchPage",
    "SearchResult",
    "SendError",
    "ServerError",
    "StateChange",
    "Typing",
    "Unread",
    "UnreadCounts",
    "parse_server_frame",
]
