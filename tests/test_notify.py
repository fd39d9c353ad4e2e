"""Webhook notifications: the signature, the backoff, and the notifier over a memory store.

No sockets: the notifier's own HTTP call (``_post``) is replaced by a fake
that answers with chosen statuses, and the store's clock is a fake one, so
a retry is due only when the test moves the clock.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from collections.abc import AsyncIterator, Callable

import aiohttp
import orjson
import pytest

from roomcast import notify
from roomcast.exceptions import StoreError
from roomcast.metrics import Metrics
from roomcast.model import ChatMessage, DirectMessage, FileInfo
from roomcast.notify import MAX_ATTEMPTS, MAX_QUEUED, PER_USER_BURST, Notifier, backoff, sign
from roomcast.store.memory import MemoryStore
from tests.fakes import Clock

SECRET = "webhook-secret"
AT_MS = 1_790_000_000_123
AT = "2026-09-21T14:13:20.123Z"


def test_the_signature_is_the_hex_hmac_sha256_of_the_body() -> None:
    """sign() is sha256= and hmac.new(secret, body, sha256).hexdigest()."""
    body = b'{"id":"n1","event":"direct"}'
    expected = hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
    assert sign(b"s3cret", body) == "sha256=" + expected
    assert sign(b"other", body) != sign(b"s3cret", body)
    assert sign(b"s3cret", body + b" ") != sign(b"s3cret", body)


def test_backoff_doubles_up_to_the_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without jitter the delays are 1, 2, 4, ... seconds, then MAX_DELAY."""
    monkeypatch.setattr(notify.random, "uniform", lambda low, high: 1.0)
    delays = [backoff(n) for n in range(1, 12)]
    assert delays == [1, 2, 4, 8, 16, 32, 64, 128, 256, notify.MAX_DELAY, notify.MAX_DELAY]
    assert backoff(0) == 1
    assert backoff(MAX_ATTEMPTS) == notify.MAX_DELAY


def test_backoff_jitter_stays_within_ten_percent() -> None:
    """Each delay is within 10 % of its step, and the delays differ (they are jittered)."""
    for attempts, step in ((1, 1.0), (4, 8.0), (20, notify.MAX_DELAY)):
        delays = [backoff(attempts) for _ in range(200)]
        assert all(0.9 * step <= d <= 1.1 * step for d in delays)
        assert len(set(delays)) > 1


# -- the notifier -----------------------------------------------------------------------


class Presence:
    """Who has a connection open: records whom it was asked about."""

    def __init__(self, *online: str) -> None:
        self.online = set(online)
        self.asked: list[str] = []

    async def __call__(self, user: str) -> bool:
        self.asked.append(user)
        return user in self.online


class Webhook:
    """Stands for the notifier's HTTP call: answers each post with the next status.

    The last status repeats; an exception in the list is raised instead.
    With ``hang``, every post waits until it is cancelled.
    """

    def __init__(self, *answers: int | Exception, hang: bool = False) -> None:
        self.answers = list(answers)
        self.hang = hang
        #: (notification id, body) of each post, in order.
        self.posts: list[tuple[str, bytes]] = []

    async def post(self, notification_id: str, body: bytes) -> int:
        self.posts.append((notification_id, body))
        if self.hang:
            await asyncio.Event().wait()
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer


class Rig:
    """A notifier over a memory store on a fake clock, with a fake presence and webhook."""

    def __init__(self, webhook: Webhook, presence: Presence, store: MemoryStore) -> None:
        self.store = store
        self.metrics = Metrics()
        self.presence = presence
        self.webhook = webhook
        self.notifier = Notifier(
            url="http://hook.invalid/notify",
            secret=SECRET,
            store=store,
            present=presence,
            metrics=self.metrics,
        )

    def count(self, outcome: str) -> float:
        value = self.metrics.registry.get_sample_value(
            "roomcast_notifications_total", {"outcome": outcome}
        )
        assert value is not None
        return value


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(clock: Clock) -> MemoryStore:
    return MemoryStore(clock=clock)


@pytest.fixture
def rig_for(monkeypatch: pytest.MonkeyPatch, store: MemoryStore) -> Callable[..., Rig]:
    """Builds the rig; its notifier posts through the webhook given."""

    def build(webhook: Webhook, presence: Presence | None = None) -> Rig:
        rig = Rig(webhook, presence or Presence(), store)
        monkeypatch.setattr(rig.notifier, "_post", webhook.post)
        return rig

    return build


@pytest.fixture
async def running() -> AsyncIterator[list[Notifier]]:
    """Notifiers a test starts here are closed after it, whatever happens."""
    started: list[Notifier] = []
    yield started
    for notifier in started:
        await notifier.close()


async def start(rig: Rig, running: list[Notifier]) -> None:
    await rig.notifier.start()
    running.append(rig.notifier)


async def until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Let the loop run until ``predicate()`` holds; fail after ``timeout`` seconds."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.005)


def mention_of(user: str, message_id: str = "m1") -> tuple[str, ChatMessage]:
    return user, ChatMessage("lobby", f"hi @{user}", "ann", 3, message_id, AT_MS)


async def test_a_2xx_delivers_the_notification_and_forgets_it(
    rig_for: Callable[..., Rig], running: list[Notifier]
) -> None:
    """A mention of a user away is kept, posted once with its id, and finished on a 204."""
    rig = rig_for(Webhook(204))
    await start(rig, running)
    rig.notifier.mention(*mention_of("bob"))
    await until(lambda: rig.count("delivered") == 1)
    assert await rig.store.notification_count() == 0
    ((notification_id, body),) = rig.webhook.posts
    assert orjson.loads(body) == {
        "id": notification_id,
        "event": "mention",
        "user": "bob",
        "room": "lobby",
        "from": "ann",
        "message_id": "m1",
        "message": "hi @bob",
        "at": AT,
    }
    assert (rig.count("queued"), rig.count("failed"), rig.count("dropped")) == (1, 0, 0)
    assert rig.presence.asked == ["bob"]


@pytest.mark.parametrize(
    "answer", [500, 404, aiohttp.ClientConnectionError("refused"), TimeoutError()]
)
async def test_a_failed_attempt_is_retried_after_a_backoff(
    rig_for: Callable[..., Rig], running: list[Notifier], clock: Clock, answer: int | Exception
) -> None:
    """A non-2xx answer or an HTTP error counts a failure and makes it due again about 1 s later."""
    rig = rig_for(Webhook(answer))
    await start(rig, running)
    rig.notifier.mention(*mention_of("bob"))
    await until(lambda: rig.count("failed") == 1)
    await rig.notifier.close()
    ((notification_id, body),) = rig.webhook.posts
    assert await rig.store.notification_count() == 1
    assert await rig.store.due_notifications(10) == []
    clock.now += 0.85
    assert await rig.store.due_notifications(10) == []
    clock.now += 0.3
    assert await rig.store.due_notifications(10) == [(notification_id, body, 1)]
    assert (rig.count("delivered"), rig.count("dropped")) == (0, 0)


async def test_a_retry_that_succeeds_delivers_the_same_notification(
    rig_for: Callable[..., Rig], running: list[Notifier], clock: Clock
) -> None:
    """The second attempt posts the same id and body, and a 200 forgets it."""
    rig = rig_for(Webhook(503, 200))
    await start(rig, running)
    rig.notifier.mention(*mention_of("bob"))
    await until(lambda: rig.count("failed") == 1)
    clock.now += 2  # the retry is due; the sender finds it at its next look
    await until(lambda: rig.count("delivered") == 1)
    first, second = rig.webhook.posts
    assert first == second
    assert await rig.store.notification_count() == 0


async def test_the_last_attempt_gives_up(
    rig_for: Callable[..., Rig], running: list[Notifier], store: MemoryStore, clock: Clock
) -> None:
    """Failing its MAX_ATTEMPTS-th attempt a notification is dropped; one attempt less, retried."""
    for name, tried in (("last", MAX_ATTEMPTS - 1), ("spare", MAX_ATTEMPTS - 2)):
        await store.add_notification(name, f"m-{name}", name.encode())
        for attempts in range(tried):
            assert await store.claim_notification(name, attempts, 0.0)
    rig = rig_for(Webhook(500))
    await start(rig, running)
    await until(lambda: rig.count("failed") == 2)
    await rig.notifier.close()
    assert sorted(posted for posted, _ in rig.webhook.posts) == ["last", "spare"]
    assert rig.count("dropped") == 1
    assert await store.notification_count() == 1
    assert await store.due_notifications(10) == []  # backing off, by about MAX_DELAY
    clock.now += notify.MAX_DELAY * 1.1
    assert await store.due_notifications(10) == [("spare", b"spare", MAX_ATTEMPTS - 1)]


async def test_a_user_with_a_connection_gets_nothing_kept(
    rig_for: Callable[..., Rig], running: list[Notifier]
) -> None:
    """Presence is asked per notification; only the user away is kept and posted."""
    rig = rig_for(Webhook(204), Presence("bob"))
    await start(rig, running)
    rig.notifier.mention(*mention_of("bob", "m1"))
    rig.notifier.mention(*mention_of("carol", "m2"))
    await until(lambda: rig.count("delivered") == 1)
    assert rig.presence.asked == ["bob", "carol"]
    ((_, body),) = rig.webhook.posts
    assert orjson.loads(body)["user"] == "carol"
    assert rig.count("queued") == 1


async def test_direct_messages_notify_their_recipient_but_not_a_note_to_self(
    rig_for: Callable[..., Rig], running: list[Notifier]
) -> None:
    """A note to self is never queued; a direct message is, without a room; a file says its name."""
    rig = rig_for(Webhook(204))
    await start(rig, running)
    rig.notifier.direct(DirectMessage("ann", "ann", "note", "d0", AT_MS))
    rig.notifier.direct(DirectMessage("ann", "bob", "psst", "d1", AT_MS))
    photo = FileInfo("cat.png", "image/png", 1234, "ab" * 32)
    rig.notifier.direct(DirectMessage("ann", "bob", "", "d2", AT_MS, file=photo))
    await until(lambda: rig.count("delivered") == 2)
    assert rig.presence.asked == ["bob", "bob"]
    bodies = sorted(
        (orjson.loads(body) for _, body in rig.webhook.posts), key=lambda b: b["message_id"]
    )
    assert [(b["message_id"], b["message"]) for b in bodies] == [("d1", "psst"), ("d2", "cat.png")]
    assert bodies[0] == {
        "id": bodies[0]["id"],
        "event": "direct",
        "user": "bob",
        "from": "ann",
        "message_id": "d1",
        "message": "psst",
        "at": AT,
    }


async def test_a_full_queue_drops_and_counts(rig_for: Callable[..., Rig]) -> None:
    """Past MAX_QUEUED waiting notifications, each new one is dropped and counted."""
    rig = rig_for(Webhook(204))
    for i in range(MAX_QUEUED):  # each to a user of its own: no one's allowance runs out
        rig.notifier.mention(*mention_of(f"user{i}"))
    assert rig.count("dropped") == 0
    rig.notifier.mention(*mention_of("bob"))
    rig.notifier.direct(DirectMessage("ann", "bob", "psst", "d1", AT_MS))
    assert rig.count("dropped") == 2
    assert (rig.count("queued"), rig.presence.asked) == (0, [])


async def test_one_user_gets_a_burst_then_one_every_few_seconds(
    rig_for: Callable[..., Rig],
) -> None:
    """Past PER_USER_BURST notifications for one user the next is dropped; others go on."""
    rig = rig_for(Webhook(204))
    for i in range(PER_USER_BURST):
        rig.notifier.mention(*mention_of("bob", f"m{i}"))
    assert rig.count("dropped") == 0
    rig.notifier.mention(*mention_of("bob", "one-too-many"))
    assert rig.count("dropped") == 1
    rig.notifier.mention(*mention_of("carol"))
    assert rig.count("dropped") == 1


async def test_a_notification_the_store_cannot_keep_is_dropped_and_counted(
    rig_for: Callable[..., Rig], running: list[Notifier], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store error while keeping drops that notification; the next one is kept."""
    rig = rig_for(Webhook(204))
    kept = rig.store.add_notification
    failures = [StoreError("disk full")]

    async def flaky(notification_id: str, message_id: str, body: bytes) -> None:
        if failures:
            raise failures.pop()
        await kept(notification_id, message_id, body)

    monkeypatch.setattr(rig.store, "add_notification", flaky)
    await start(rig, running)
    rig.notifier.mention(*mention_of("bob", "m1"))
    rig.notifier.mention(*mention_of("bob", "m2"))
    await until(lambda: rig.count("delivered") == 1)
    assert (rig.count("dropped"), rig.count("queued")) == (1, 1)
    ((_, body),) = rig.webhook.posts
    assert orjson.loads(body)["message_id"] == "m2"


async def test_closing_mid_attempt_makes_it_due_at_once(
    rig_for: Callable[..., Rig], running: list[Notifier]
) -> None:
    """An attempt cut short by close() is due again now, not after its lease."""
    rig = rig_for(Webhook(204, hang=True))
    await start(rig, running)
    rig.notifier.mention(*mention_of("bob"))
    await until(lambda: len(rig.webhook.posts) == 1)
    assert await rig.store.due_notifications(10) == []  # leased to the attempt
    await rig.notifier.close()
    ((notification_id, body),) = rig.webhook.posts
    assert await rig.store.due_notifications(10) == [(notification_id, body, 1)]
    assert (rig.count("delivered"), rig.count("failed")) == (0, 0)


class FakeResponse:
    def __init__(self, status: int) -> None:
        self.status = status

    async def __aenter__(self) -> FakeResponse:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def read(self) -> bytes:
        return b"ok"


class FakeSession:
    """Stands for the aiohttp session: keeps what would be posted."""

    def __init__(self, status: int) -> None:
        self.status = status
        self.posted: list[tuple[str, bytes, dict[str, str]]] = []

    def post(
        self, url: str, *, data: bytes, headers: dict[str, str], allow_redirects: bool
    ) -> FakeResponse:
        assert not allow_redirects, "a redirect must be a failed attempt, never followed"
        self.posted.append((url, data, headers))
        return FakeResponse(self.status)


async def test_a_post_is_signed_and_names_its_delivery(
    store: MemoryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The request carries the JSON body, X-Roomcast-Delivery and the body's signature."""
    notifier = Notifier(
        url="http://hook.invalid/notify",
        secret=SECRET,
        store=store,
        present=Presence(),
        metrics=Metrics(),
    )
    session = FakeSession(202)
    monkeypatch.setattr(notifier, "_session", session)
    body = b'{"id":"n1","event":"mention"}'
    assert await notifier._post("n1", body) == 202
    ((url, data, headers),) = session.posted
    assert (url, data) == ("http://hook.invalid/notify", body)
    assert headers == {
        "Content-Type": "application/json",
        "X-Roomcast-Delivery": "n1",
        "X-Roomcast-Signature": sign(SECRET.encode(), body),
    }
