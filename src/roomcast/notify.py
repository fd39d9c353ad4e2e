"""Notifications for users who are away: a signed webhook, at least once.

When a registered user with no open connection on any node gets a direct
message or is mentioned, the server posts a notification to the deployer's
URL, which can send a push or an e-mail. Each is kept in the store's outbox
before it is tried, so a restart loses none; it is posted until the
receiver answers 2xx, with backoff, and its ``id`` (also the
``X-Roomcast-Delivery`` header) lets the receiver drop a repeat. The body is
signed with HMAC-SHA256 (``X-Roomcast-Signature: sha256=<hex>``) with the
configured secret, so the receiver knows it came from this server.

Chat never waits for any of this: a message hands its notifications to a
bounded queue and goes on; a slow or failing receiver holds only this
module's own tasks, at most :data:`CONCURRENCY` requests at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Final

import aiohttp
import orjson

from .exceptions import BackendError
from .metrics import Metrics
from .model import ChatMessage, DirectMessage
from .protocol.messages import format_timestamp
from .ratelimit import KeyedBuckets
from .store.base import Notifications

__all__ = ["CONCURRENCY", "Notifier", "backoff", "sign"]

logger = logging.getLogger("roomcast.notify")

#: Seconds one attempt may take before it counts as failed.
ATTEMPT_TIMEOUT: Final = 10.0
#: Seconds an attempt holds its notification: past it (its node died
#: mid-post) another node tries again.
LEASE: Final = ATTEMPT_TIMEOUT + 5.0
#: Requests in flight at once: a receiver that hangs holds these, not chat.
CONCURRENCY: Final = 4
#: Notifications waiting for their presence check; past it new ones are
#: dropped (and counted) rather than grow memory.
MAX_QUEUED: Final = 10_000
#: The first retry's delay in seconds; each next one doubles, up to :data:`MAX_DELAY`.
FIRST_DELAY: Final = 1.0
MAX_DELAY: Final = 300.0
#: Attempts before a notification is given up: about a day of retries.
MAX_ATTEMPTS: Final = 300
#: Notifications one user may get: a burst, then one every this many seconds
#: (per node). A flood of mentions of one person would otherwise fill the
#: outbox and their phone; past it they are dropped and counted.
PER_USER_BURST: Final = 20
PER_USER_EVERY: Final = 3.0
#: Users whose notification rate is tracked at once (the least recent forgotten).
TRACKED_USERS: Final = 100_000
#: Seconds a stopping server gives the notifications still queued to be kept.
CLOSE_WAIT: Final = 5.0

#: Seconds between two looks at the outbox for notifications due (a new one
#: wakes the sender at once; this finds retries and other nodes' leftovers).
POLL_INTERVAL: Final = 1.0

#: Whether a user has an open connection on any node.
Presence = Callable[[str], Awaitable[bool]]


def sign(secret: bytes, body: bytes) -> str:
    """The ``X-Roomcast-Signature`` of ``body``: ``sha256=`` and the hex HMAC-SHA256."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def backoff(attempts: int) -> float:
    """Seconds before the next try, after ``attempts`` failed ones (with 10 % jitter)."""
    delay: float = min(FIRST_DELAY * 2.0 ** max(attempts - 1, 0), MAX_DELAY)
    return delay * random.uniform(0.9, 1.1)


class Notifier:
    """Queues notifications for users away and posts them to the webhook.

    Args:
        url: where notifications are posted.
        secret: the HMAC key of their signature.
        store: the durable outbox.
        present: whether a user has an open connection anywhere.
        metrics: queued, delivered, failed and dropped notifications.
    """

    def __init__(
        self,
        *,
        url: str,
        secret: str,
        store: Notifications,
        present: Presence,
        metrics: Metrics,
    ) -> None:
        self.url = url
        self._secret = secret.encode()
        self._store = store
        self._present = present
        self._metrics = metrics
        #: Notifications waiting for their user's presence check: (user, body).
        self._queue: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue(MAX_QUEUED)
        #: Each recipient's allowance (:data:`PER_USER_BURST`).
        self._allowances = KeyedBuckets(1 / PER_USER_EVERY, PER_USER_BURST, TRACKED_USERS)
        #: Set when a notification was kept: the sender looks at once.
        self._wake = asyncio.Event()
        self._slots = asyncio.Semaphore(CONCURRENCY)
        #: Attempts in flight, by notification id.
        self._attempts: dict[str, asyncio.Task[None]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None

    # -- lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        """Begin keeping and sending notifications."""
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=ATTEMPT_TIMEOUT),
            headers={"User-Agent": "roomcast"},
        )
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._keep_forever()),
            loop.create_task(self._send_forever()),
        ]

    async def close(self) -> None:
        """Keep what is queued (for a while), stop; an attempt cut short is due again at once."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._queue.join(), CLOSE_WAIT)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        cut = list(self._attempts)
        for task in self._attempts.values():
            task.cancel()
        await asyncio.gather(*self._attempts.values(), return_exceptions=True)
        for notification_id in cut:
            try:
                await self._store.retry_notification(notification_id, 0.0)
            except BackendError:
                break  # its lease runs out instead
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- what happened -------------------------------------------------------------

    def direct(self, message: DirectMessage) -> None:
        """``message`` was sent: notify its recipient if they are away."""
        if message.to == message.sender:
            return
        self._queue_for(
            message.to,
            {
                "event": "direct",
                "user": message.to,
                "from": message.sender,
                "message_id": message.message_id,
                "message": _text(message),
                "at": format_timestamp(message.ts_ms),
            },
        )

    def mention(self, user: str, message: ChatMessage) -> None:
        """``message`` names ``user``: notify them if they are away."""
        self._queue_for(
            user,
            {
                "event": "mention",
                "user": user,
                "room": message.room,
                "from": message.sender,
                "message_id": message.message_id,
                "message": _text(message),
                "at": format_timestamp(message.ts_ms),
            },
        )

    def _queue_for(self, user: str, body: dict[str, Any]) -> None:
        if self._allowances.take(user, time.monotonic()) > 0:
            self._metrics.notifications.labels("dropped").inc()
            logger.warning("notification for %s dropped: too many for them lately", user)
            return
        try:
            self._queue.put_nowait((user, body))
        except asyncio.QueueFull:
            self._metrics.notifications.labels("dropped").inc()
            logger.warning("notification for %s dropped: %d are waiting", user, MAX_QUEUED)

    # -- keeping ------------------------------------------------------------------

    async def _keep_forever(self) -> None:
        """Keep each queued notification whose user is away, in the outbox."""
        while True:
            user, body = await self._queue.get()
            try:
                if await self._present(user):
                    continue
                notification_id = uuid.uuid4().hex
                data = orjson.dumps({"id": notification_id, **body})
                await self._store.add_notification(notification_id, body["message_id"], data)
            except BackendError as exc:
                self._metrics.notifications.labels("dropped").inc()
                logger.error("notification for %s not kept: %s", user, exc)
                continue
            finally:
                self._queue.task_done()
            self._metrics.notifications.labels("queued").inc()
            self._wake.set()

    # -- sending ------------------------------------------------------------------

    async def _send_forever(self) -> None:
        while True:
            try:
                due = await self._store.due_notifications(CONCURRENCY * 4)
            except BackendError as exc:
                logger.error("cannot read the notifications due: %s", exc)
                due = []
            for notification_id, body, attempts in due:
                if notification_id in self._attempts:
                    continue
                await self._slots.acquire()
                try:
                    claimed = await self._store.claim_notification(notification_id, attempts, LEASE)
                except BackendError as exc:
                    logger.error("cannot claim a notification: %s", exc)
                    claimed = False
                if not claimed:
                    self._slots.release()
                    continue
                task = asyncio.get_running_loop().create_task(
                    self._attempt(notification_id, body, attempts + 1)
                )
                self._attempts[notification_id] = task
            self._wake.clear()
            if not due:
                try:
                    await asyncio.wait_for(self._wake.wait(), POLL_INTERVAL)
                except TimeoutError:
                    pass
            else:
                await asyncio.sleep(0)

    async def _attempt(self, notification_id: str, body: bytes, attempt: int) -> None:
        """Post one notification once; forget it on a 2xx, else have it retried."""
        try:
            status = await self._post(notification_id, body)
            if 200 <= status < 300:
                await self._store.finish_notification(notification_id)
                self._metrics.notifications.labels("delivered").inc()
                return
            reason = f"HTTP {status}"
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            reason = str(exc) or type(exc).__name__
        except BackendError as exc:
            logger.error("notification %s delivered but not forgotten: %s", notification_id, exc)
            return
        finally:
            self._attempts.pop(notification_id, None)
            self._slots.release()
        self._metrics.notifications.labels("failed").inc()
        try:
            if attempt >= MAX_ATTEMPTS:
                self._metrics.notifications.labels("dropped").inc()
                logger.error("notification %s given up after %d attempts", notification_id, attempt)
                await self._store.finish_notification(notification_id)
            else:
                delay = backoff(attempt)
                logger.warning(
                    "notification %s not delivered (%s); retrying in %.1f s",
                    notification_id,
                    reason,
                    delay,
                )
                await self._store.retry_notification(notification_id, delay)
        except BackendError as exc:
            logger.error("cannot reschedule notification %s: %s", notification_id, exc)

    async def _post(self, notification_id: str, body: bytes) -> int:
        session = self._session
        assert session is not None
        headers = {
            "Content-Type": "application/json",
            "X-Roomcast-Delivery": notification_id,
            "X-Roomcast-Signature": sign(self._secret, body),
        }
        # A redirect is a failed attempt: followed, a 303 would turn the post into
        # a GET without the body (its 2xx taken for a delivery), a 307 would
        # send the signed text to wherever it points. The answer's body is not read.
        async with session.post(
            self.url, data=body, headers=headers, allow_redirects=False
        ) as response:
            return response.status


def _text(message: ChatMessage | DirectMessage) -> str:
    """What a notification says of a message: its text, or the name of its file."""
    if message.file is not None:
        return message.file.name
    return message.message
