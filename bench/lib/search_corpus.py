"""A generated chat history for the search benchmark, and its loading into each store.

The same seed gives the same history, byte for byte: users, private rooms
with their members, room messages in time order, direct messages with both
inboxes, and the queries the benchmark asks. Text is words drawn from a
Zipf distribution (exponent 1, as word frequencies in natural language)
over a vocabulary of made-up words, short ones the most frequent, as in a
real language; messages are 3-30 words, mostly short. Words are drawn
independently, so a phrase's words occur together only by chance: a phrase
query finds fewer matches than in real text, where words follow each other.

Loading writes the store's own rows: a store opens the database once (so
it creates its schema, the search index included), then the rows go in in
big transactions with the columns the store's writer uses; SQLite's FTS5
triggers and PostgreSQL's GIN index index them as they would a server's
writes (``index_after`` builds PostgreSQL's index after the load instead,
as the same ``CREATE INDEX`` the migration runs).
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import json
import random
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

from roomcast.store import sqlite as sqlite_store
from roomcast.store.postgres import PostgresStore
from roomcast.store.schema import MIGRATIONS
from roomcast.store.sqlite import SQLiteStore

#: The first message's time: 2026-01-01T00:00:00Z.
START_MS = 1_767_225_600_000
#: The history spans a year.
SPAN_MS = 365 * 86_400_000
#: The registered user whose searches are timed, and their password (local only).
READER = "reader"
READER_PASSWORD = "search bench password"
#: Rows per transaction (SQLite) or per COPY (PostgreSQL) while loading.
CHUNK = 50_000

ROOM_COLUMNS = (
    "room",
    "seq",
    "message_id",
    "sender",
    "body",
    "client_id",
    "ts_ms",
    "file",
    "kind",
    "target",
    "thread",
    "mentions",
)
DIRECT_COLUMNS = (
    "message_id",
    "sender",
    "recipient",
    "body",
    "client_id",
    "ts_ms",
    "file",
    "kind",
    "target",
    "room",
    "mentions",
)
# The columns the SQLite writer inserts, in its order; PostgreSQL's COPY uses the same.
assert sqlite_store._INSERT.startswith(f"INSERT INTO messages ({', '.join(ROOM_COLUMNS[:8])},")
assert sqlite_store._DIRECT_INSERT.startswith(
    f"INSERT INTO direct_messages ({', '.join(DIRECT_COLUMNS[:7])},"
)


@dataclass(frozen=True)
class Spec:
    """What to generate; ``key`` names the databases made from it."""

    messages: int = 1_000_000
    rooms: int = 1_000
    #: Private rooms the reader belongs to (every room is private).
    reader_rooms: int = 100
    users: int = 5_000
    #: Members of each room (the owner among them), at least and at most.
    members: tuple[int, int] = (5, 40)
    vocabulary: int = 20_000
    zipf: float = 1.0
    #: Room activity: room k of a random order gets a share ∝ 1/k^room_zipf.
    room_zipf: float = 0.5
    direct_messages: int = 50_000
    #: Of them, sent to or by the reader (with ``reader_peers`` people).
    reader_direct: int = 3_000
    reader_peers: int = 50
    seed: int = 20

    def key(self) -> str:
        """The spec and the schema's migrations, hashed: a database made from another
        spec, or by another tree's migrations (even one edited in place), is rebuilt."""
        migrations = [[m.version, *m.for_dialect("sqlite"), *m.postgres] for m in MIGRATIONS]
        text = json.dumps([asdict(self), migrations], sort_keys=True)
        return hashlib.blake2b(text.encode(), digest_size=6).hexdigest()


@dataclass
class Query:
    """One timed query: its kind (word, prefix, phrase), why it was chosen, its text."""

    kind: str
    label: str
    text: str
    #: Messages matching it anywhere, and in the reader's scope (filled in after loading).
    matches: int | None = None
    readable: int | None = None


@dataclass
class Corpus:
    """The generated history (lazily: rows are made as they are loaded)."""

    spec: Spec
    vocab: list[str] = field(init=False)
    users: list[str] = field(init=False)
    rooms: list[str] = field(init=False)
    owners: list[str] = field(init=False)
    members: list[list[str]] = field(init=False)
    reader_room_set: set[str] = field(init=False)
    phrases: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        spec = self.spec
        rng = random.Random(spec.seed)
        self.vocab = make_vocabulary(spec.vocabulary, rng)
        self.users = [f"user{i:05d}" for i in range(spec.users)]
        self.rooms = [f"room-{i:04d}" for i in range(spec.rooms)]
        reader_rooms = set(rng.sample(range(spec.rooms), spec.reader_rooms))
        self.owners, self.members = [], []
        for index in range(spec.rooms):
            people = rng.sample(self.users, rng.randint(*spec.members))
            self.owners.append(people[0])
            if index in reader_rooms:
                people.append(READER)
            self.members.append(people)
        self.reader_room_set = {self.rooms[i] for i in reader_rooms}
        order = list(range(spec.rooms))
        rng.shuffle(order)
        weights = [0.0] * spec.rooms
        for place, room in enumerate(order):
            weights[room] = 1 / (place + 1) ** spec.room_zipf
        self._room_cum = list(itertools.accumulate(weights))
        self._word_cum = list(
            itertools.accumulate(1 / (r + 1) ** spec.zipf for r in range(spec.vocabulary))
        )
        self.room_counts = [0] * spec.rooms
        self.inbox_seqs: dict[str, int] = {}

    # -- text ------------------------------------------------------------------

    def _texts(self, rng: random.Random, count: int) -> list[tuple[list[int], str]]:
        """``count`` messages: each one's word ranks (0 = most frequent) and text."""
        lengths = [3 + int(28 * rng.random() ** 2) for _ in range(count)]
        ranks = rng.choices(range(self.spec.vocabulary), cum_weights=self._word_cum, k=sum(lengths))
        vocab, out, at = self.vocab, [], 0
        for length in lengths:
            words = ranks[at : at + length]
            at += length
            text = " ".join(vocab[r] for r in words)
            out.append((words, text[0].upper() + text[1:] + ("?" if length % 7 == 0 else ".")))
        return out

    # -- rows ------------------------------------------------------------------

    def room_chunks(self, size: int = CHUNK) -> Iterator[list[tuple[Any, ...]]]:
        """Room messages in time order, as the SQLite writer's ``_INSERT`` rows."""
        spec = self.spec
        rng = random.Random(spec.seed + 1)
        step = SPAN_MS / spec.messages
        self.room_counts = [0] * spec.rooms
        made = 0
        while made < spec.messages:
            count = min(size, spec.messages - made)
            rooms = bisect_many(self._room_cum, rng, count)
            rows = []
            for offset, ((words, text), room) in enumerate(
                zip(self._texts(rng, count), rooms, strict=True)
            ):
                index = made + offset
                self.room_counts[room] += 1
                name = self.rooms[room]
                sender = rng.choice(self.members[room])
                if name in self.reader_room_set and index >= spec.messages // 2:
                    self._maybe_phrase(words)
                rows.append(
                    (name, self.room_counts[room], f"{rng.getrandbits(128):032x}", sender, text)
                    + (None, START_MS + int(index * step), None, "chat", None, None, None)
                )
            made += count
            yield rows

    def direct_chunks(
        self, size: int = CHUNK
    ) -> Iterator[tuple[list[tuple[Any, ...]], list[tuple[str, int, str]]]]:
        """Direct messages in time order (``_DIRECT_INSERT`` rows), with their inbox rows."""
        spec = self.spec
        rng = random.Random(spec.seed + 2)
        peers = rng.sample(self.users, spec.reader_peers)
        step = SPAN_MS / spec.direct_messages
        reader_every = spec.direct_messages / max(spec.reader_direct, 1)
        self.inbox_seqs = {}
        made = 0
        while made < spec.direct_messages:
            count = min(size, spec.direct_messages - made)
            rows, inbox = [], []
            for offset, (_words, text) in enumerate(self._texts(rng, count)):
                index = made + offset
                if spec.reader_direct and int(index % reader_every) == 0:
                    pair = [READER, rng.choice(peers)]
                    rng.shuffle(pair)
                else:
                    pair = rng.sample(self.users, 2)
                sender, recipient = pair
                message_id = f"{rng.getrandbits(128):032x}"
                rows.append(
                    (message_id, sender, recipient, text, None, START_MS + int(index * step))
                    + (None, "chat", None, None, None)
                )
                for owner in (sender, recipient):
                    seq = self.inbox_seqs[owner] = self.inbox_seqs.get(owner, 0) + 1
                    inbox.append((owner, seq, message_id))
            made += count
            yield rows, inbox

    def user_rows(self, reader_hash: str) -> list[tuple[str, str, str, int]]:
        """``users`` rows (name, name_key, password_hash, created_ms): only the reader logs in."""
        rows = [(name, name, "-", START_MS) for name in self.users]
        return [*rows, (READER, READER, reader_hash, START_MS)]

    def room_rows(self) -> list[tuple[str, int, int, int, str]]:
        """``rooms`` rows (name, last_seq, created_ms, private, owner); seqs as generated."""
        return [
            (name, 0, START_MS, 1, owner)
            for name, owner in zip(self.rooms, self.owners, strict=True)
        ]

    def member_rows(self) -> list[tuple[str, str, int]]:
        """``room_members`` rows (room, name, added_ms)."""
        return [
            (room, name, START_MS)
            for room, people in zip(self.rooms, self.members, strict=True)
            for name in people
        ]

    # -- queries ---------------------------------------------------------------

    def _maybe_phrase(self, ranks: list[int]) -> None:
        """Keep the first phrase of each kind seen in a readable message (ranks from 0)."""
        kinds = {
            "2 frequent words": lambda a, b: a < 10 and b < 10,
            "frequent + middle word": lambda a, b: a < 10 and 100 <= b < 3000,
            "2 middle words": lambda a, b: 50 <= a < 2000 and 50 <= b < 2000,
            "middle + rare word": lambda a, b: 100 <= a < 3000 and b >= 5000,
        }
        for i in range(len(ranks) - 1):
            a, b = ranks[i], ranks[i + 1]
            for label, fits in kinds.items():
                if label not in self.phrases and fits(a, b) and a != b:
                    self.phrases[label] = f"{self.vocab[a]} {self.vocab[b]}"
        label = "3 frequent words"
        for i in range(len(ranks) - 2):
            if label not in self.phrases and all(r < 10 for r in ranks[i : i + 3]):
                if len(set(ranks[i : i + 3])) == 3:
                    self.phrases[label] = " ".join(self.vocab[r] for r in ranks[i : i + 3])

    def queries(self) -> list[Query]:
        """The timed queries: words, prefixes and phrases, frequent to rare.

        The phrases are known once the room messages were generated (they are
        taken from messages the reader may read).
        """
        vocab = self.vocab
        words = [
            Query("word", f"rank {rank}", vocab[rank - 1]) for rank in (1, 10, 300, 3000, 15000)
        ]
        prefixes = []
        for rank, letters in ((1, 3), (30, 3), (300, 3), (3000, 4), (15000, 4)):
            word = next(w for w in vocab[rank - 1 :] if len(w) > letters)
            prefixes.append(
                Query(
                    "prefix",
                    f"{letters} letters of rank {vocab.index(word) + 1}",
                    word[:letters] + "*",
                )
            )
        phrases = [Query("phrase", label, f'"{text}"') for label, text in self.phrases.items()]
        return words + prefixes + phrases

    def prefix_terms(self, prefix: str) -> int:
        """How many words of the vocabulary a prefix query expands to."""
        stem = prefix.rstrip("*")
        return sum(1 for word in self.vocab if word.startswith(stem))


def bisect_many(cum: list[float], rng: random.Random, count: int) -> list[int]:
    """``count`` indexes drawn with the weights whose running sums are ``cum``."""
    total = cum[-1]
    return [bisect.bisect(cum, rng.random() * total) for _ in range(count)]


def make_vocabulary(size: int, rng: random.Random) -> list[str]:
    """``size`` distinct made-up words, most frequent first, the frequent ones short."""
    onsets = "b c d f g h j k l m n p r s t v w z br ch cl dr fl gr kr pl sh st th tr".split()
    vowels = "a e i o u ai ea ou".split()
    codas = ["", "", "", "n", "r", "s", "l", "t", "m", "nd", "st", "ck"]
    seen: set[str] = set()
    words: list[str] = []
    while len(words) < size:
        rank = len(words)
        syllables = 1 if rank < 40 else 2 if rank < 1500 else rng.choice((2, 3, 3, 4))
        word = "".join(
            rng.choice(onsets) + rng.choice(vowels) + rng.choice(codas) for _ in range(syllables)
        )
        if rank < 40 and rng.random() < 0.5:
            word = word[1:] if len(word) > 2 else word  # "a", "of", "in": some start with a vowel
        if len(word) >= 2 and word not in seen:
            seen.add(word)
            words.append(word)
    return words


def reader_password_hash() -> str:
    from roomcast.accounts import PASSWORD_HASHES

    return str(PASSWORD_HASHES["small"]().hash(READER_PASSWORD))


# -- SQLite ------------------------------------------------------------------------


async def load_sqlite(corpus: Corpus, path: Path, log: Any = print) -> dict[str, float]:
    """Build the SQLite database at ``path`` (created by the store, then filled); seconds taken."""
    took: dict[str, float] = {}
    started = time.monotonic()

    store = SQLiteStore(path)
    await store.open()
    await store.close()
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        # Loading only: a crash while loading means loading again.
        conn.execute("PRAGMA synchronous = OFF")
        conn.execute("PRAGMA cache_size = -1000000")
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO users (name, name_key, password_hash, created_ms) VALUES (?, ?, ?, ?)",
            corpus.user_rows(reader_password_hash()),
        )
        conn.executemany(
            "INSERT INTO rooms (name, last_seq, created_ms, private, owner) VALUES (?, ?, ?, ?, ?)",
            corpus.room_rows(),
        )
        conn.executemany(
            "INSERT INTO room_members (room, name, added_ms) VALUES (?, ?, ?)",
            corpus.member_rows(),
        )
        conn.execute("COMMIT")
        t0 = time.monotonic()
        for rows in corpus.room_chunks():
            conn.execute("BEGIN")
            conn.executemany(sqlite_store._INSERT, rows)
            conn.execute("COMMIT")
            log(f"  sqlite: {sum(corpus.room_counts):,} room messages")
        took["room_messages_s"] = time.monotonic() - t0
        t0 = time.monotonic()
        for rows, inbox in corpus.direct_chunks():
            conn.execute("BEGIN")
            conn.executemany(sqlite_store._DIRECT_INSERT, rows)
            conn.executemany(sqlite_store._INBOX_INSERT, inbox)
            conn.execute("COMMIT")
        took["direct_messages_s"] = time.monotonic() - t0
        conn.execute("BEGIN")
        conn.executemany(
            "UPDATE rooms SET last_seq = ? WHERE name = ?",
            [(n, room) for room, n in zip(corpus.rooms, corpus.room_counts, strict=True)],
        )
        conn.executemany(
            "UPDATE users SET dm_seq = ? WHERE name = ?",
            [(seq, name) for name, seq in corpus.inbox_seqs.items()],
        )
        conn.execute("COMMIT")
        t0 = time.monotonic()
        conn.execute("ANALYZE")
        took["analyze_s"] = time.monotonic() - t0
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    took["total_s"] = time.monotonic() - started
    return took


def sqlite_counts(path: Path, queries: list[Query], readable_rooms: set[str]) -> None:
    """Fill in each query's matches, anywhere and in the reader's rooms (SQLite's FTS5)."""
    conn = sqlite3.connect(path)
    try:
        rooms = json.dumps(sorted(readable_rooms))
        for query in queries:
            match = fts5_match(query.text)
            query.matches = conn.execute(
                "SELECT count(*) FROM messages_search WHERE messages_search MATCH ?", (match,)
            ).fetchone()[0]
            query.readable = conn.execute(
                "SELECT count(*) FROM messages_search f JOIN messages m ON m.rowid = f.rowid"
                " WHERE f.messages_search MATCH ? AND m.room IN (SELECT value FROM json_each(?))",
                (match, rooms),
            ).fetchone()[0]
    finally:
        conn.close()


def fts5_match(text: str) -> str:
    from roomcast.query import parse_query

    return sqlite_store.fts5_query(parse_query(text))


def sqlite_schema(path: Path) -> str:
    """A digest of the database's schema: what a reuse checks nobody changed."""
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute("SELECT type, name, sql FROM sqlite_master ORDER BY name").fetchall()
    finally:
        conn.close()
    return hashlib.blake2b(repr(rows).encode(), digest_size=6).hexdigest()


# -- PostgreSQL --------------------------------------------------------------------

#: The public schema's columns and indexes, as one text.
_PG_SCHEMA = (
    "SELECT string_agg(x, ';' ORDER BY x) FROM ("
    " SELECT table_name || '.' || column_name || ' ' || data_type"
    " || coalesce(' ' || generation_expression, '') AS x"
    " FROM information_schema.columns WHERE table_schema = 'public'"
    " UNION ALL SELECT indexdef FROM pg_indexes WHERE schemaname = 'public'"
    " UNION ALL SELECT 'statistics ' || stxname FROM pg_statistic_ext) s"
)


async def postgres_schema(url: str) -> str:
    """A digest of the database's tables, indexes and statistics objects."""
    conn = await asyncpg.connect(url)
    try:
        text = await conn.fetchval(_PG_SCHEMA)
    finally:
        await conn.close()
    return hashlib.blake2b(str(text).encode(), digest_size=6).hexdigest()


#: The full-text indexes the migration creates, by table.
PG_SEARCH_INDEXES = {"messages": "messages_search", "direct_messages": "direct_messages_search"}


async def load_postgres(
    corpus: Corpus, url: str, *, index_after: bool = False, log: Any = print
) -> dict[str, float]:
    """Fill the (empty) database at ``url``: the store's schema first, then COPY; seconds taken."""
    took: dict[str, float] = {}
    started = time.monotonic()
    store = PostgresStore(url)
    await store.open()
    await store.close()
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("SET maintenance_work_mem = '1GB'")
        definitions = {}
        if index_after:
            for index in PG_SEARCH_INDEXES.values():
                definitions[index] = await conn.fetchval(
                    "SELECT indexdef FROM pg_indexes WHERE indexname = $1", index
                )
                await conn.execute(f"DROP INDEX {index}")
        await conn.copy_records_to_table(
            "users",
            records=corpus.user_rows(reader_password_hash()),
            columns=["name", "name_key", "password_hash", "created_ms"],
        )
        await conn.copy_records_to_table(
            "rooms",
            records=corpus.room_rows(),
            columns=["name", "last_seq", "created_ms", "private", "owner"],
        )
        await conn.copy_records_to_table(
            "room_members", records=corpus.member_rows(), columns=["room", "name", "added_ms"]
        )
        t0 = time.monotonic()
        for rows in corpus.room_chunks():
            await conn.copy_records_to_table("messages", records=rows, columns=ROOM_COLUMNS)
            log(f"  postgres: {sum(corpus.room_counts):,} room messages")
        took["room_messages_s"] = time.monotonic() - t0
        t0 = time.monotonic()
        for rows, inbox in corpus.direct_chunks():
            await conn.copy_records_to_table(
                "direct_messages", records=rows, columns=DIRECT_COLUMNS
            )
            await conn.copy_records_to_table(
                "inbox", records=inbox, columns=["owner", "seq", "message_id"]
            )
        took["direct_messages_s"] = time.monotonic() - t0
        await conn.executemany(
            "UPDATE rooms SET last_seq = $1 WHERE name = $2",
            [(n, room) for room, n in zip(corpus.rooms, corpus.room_counts, strict=True)],
        )
        await conn.executemany(
            "UPDATE users SET dm_seq = $1 WHERE name = $2",
            [(seq, name) for name, seq in corpus.inbox_seqs.items()],
        )
        if index_after:
            t0 = time.monotonic()
            for definition in definitions.values():
                await conn.execute(definition, timeout=3600)
            took["index_s"] = time.monotonic() - t0
        t0 = time.monotonic()
        await conn.execute("VACUUM ANALYZE", timeout=3600)
        took["vacuum_analyze_s"] = time.monotonic() - t0
    finally:
        await conn.close()
    took["total_s"] = time.monotonic() - started
    return took
