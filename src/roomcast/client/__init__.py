"""roomcast's Python client: ``Client`` keeps one connection alive and loses nothing.

    async with Client("ws://127.0.0.1:8765/ws", username="ann", password="...") as chat:
        await chat.send_chat("hello")          # returns once the server stored it
        async for event in chat:                # every message once, in order
            print(event)
        await chat.mark_read("lobby")          # read up to the newest seq delivered
        print(chat.unread.rooms["lobby"].unread)  # counts kept without asking again
        page = await chat.search("deploy*", room="dev")  # what the user may read now
        await chat.ban("dev", "spammer", for_seconds=3600, reason="spam")  # moderation: HTTP

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
    SignedOut,
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
    Removed,
    Reply,
    RoomMessage,
    RoomUpdated,
    SearchPage,
    SearchResult,
    ServerError,
    SessionTokens,
    StateChange,
    Typing,
    Unread,
    UnreadCounts,
    parse_server_frame,
)
from .moderation import (
    AuditEntry,
    AuditPage,
    BanInfo,
    MuteInfo,
    RoomInfo,
    parse_duration,
)
from .signin import AccountInfo

__all__ = [
    "AccountInfo",
    "AuditEntry",
    "AuditPage",
    "AuthRefused",
    "Backoff",
    "BanInfo",
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
    "MuteInfo",
    "Presence",
    "QueueFull",
    "Quote",
    "Reaction",
    "ReadMarker",
    "Receipt",
    "Removed",
    "Reply",
    "RoomInfo",
    "RoomMessage",
    "RoomUpdated",
    "SearchPage",
    "SearchResult",
    "SendError",
    "ServerError",
    "SessionTokens",
    "SignedOut",
    "StateChange",
    "Typing",
    "Unread",
    "UnreadCounts",
    "parse_duration",
    "parse_server_frame",
]
