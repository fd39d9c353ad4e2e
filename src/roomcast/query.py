"""Search queries: what a user types, parsed once for every store, and the snippets shown.

A query is terms separated by spaces. Each term is a word (``deploy``), a
prefix (``deplo*``) or a phrase (``"the deploy failed"``); a leading ``-``
excludes it. Every term not excluded must match. Each store turns the
parsed terms into its engine's own syntax (an FTS5 ``MATCH`` expression, a
PostgreSQL ``tsquery``), quoting every word as a literal string, so nothing
a user types is ever read as engine syntax: an operator typed in a query is
only a word to look for.

Matching inside a word is the engine's: it tokenizes the quoted word the
way it tokenized the messages. This module tokenizes too, the same way
closely enough, for the in-memory store and to mark the matched words in a
snippet (:func:`snippet`), which is made here rather than by each engine
so every store shows the same snippet for the same message.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Final

from .exceptions import InvalidRequest

__all__ = [
    "MAX_QUERY_CHARS",
    "MAX_TERMS",
    "MIN_PREFIX",
    "SNIPPET_CHARS",
    "Query",
    "Term",
    "matches",
    "parse_query",
    "score",
    "snippet",
    "tokens",
]

#: Longest query: a search box's worth, and a bound on the engine's work.
MAX_QUERY_CHARS: Final = 256
#: Most terms in a query: each is one more index lookup.
MAX_TERMS: Final = 16
#: Shortest prefix: one letter's prefix matches most of the index.
MIN_PREFIX: Final = 2
#: About how many characters of a long message a result shows.
SNIPPET_CHARS: Final = 200

#: The Unicode categories of a word's characters: letters, marks, numbers and
#: private-use characters, as FTS5's unicode61 tokenizer sees a word (it splits
#: on the rest; PostgreSQL's parser splits alike on everything but a few forms).
_WORD_CATEGORIES: Final = frozenset(
    {"Lu", "Ll", "Lt", "Lm", "Lo", "Mn", "Mc", "Me", "Nd", "Nl", "No", "Co"}
)
#: How a query splits: a phrase in quotes, or a run without spaces or quotes.
_PART: Final = re.compile(r'(-?)"([^"]*)("?)|(-?)([^\s"]+)')


@dataclass(frozen=True, slots=True)
class Term:
    """One term of a query: words that must appear together, in order."""

    #: The words as typed: one, or a phrase's several.
    words: tuple[str, ...]
    #: The last word is a prefix (typed with ``*``).
    prefix: bool = False
    #: The term must not match (typed with ``-``).
    excluded: bool = False


@dataclass(frozen=True, slots=True)
class Query:
    """A parsed query: its terms, at least one of them not excluded."""

    text: str
    terms: tuple[Term, ...]

    @property
    def included(self) -> tuple[Term, ...]:
        """The terms that must match."""
        return tuple(term for term in self.terms if not term.excluded)

    @property
    def excluded(self) -> tuple[Term, ...]:
        """The terms that must not match."""
        return tuple(term for term in self.terms if term.excluded)


def parse_query(text: str) -> Query:
    """Parse what a user typed.

    Raises:
        InvalidRequest: why the query cannot be searched (empty, too long,
            an unclosed quote, a prefix too short, nothing but exclusions).
    """
    if len(text) > MAX_QUERY_CHARS:
        raise InvalidRequest(f"a query has at most {MAX_QUERY_CHARS} characters")
    if any(unicodedata.category(char) == "Cc" for char in text):
        raise InvalidRequest("a query cannot hold control characters")
    if any(unicodedata.category(char) == "Cs" for char in text):
        raise InvalidRequest("a query must be valid Unicode (it holds a lone surrogate)")
    terms: list[Term] = []
    for match in _PART.finditer(text):
        minus, phrase, closed, word_minus, word = match.groups()
        if phrase is not None:
            if not closed:
                raise InvalidRequest('a quote is not closed: end the phrase with "')
            typed = phrase.split()
            prefix = bool(typed) and typed[-1].endswith("*")
            if prefix:
                typed[-1] = typed[-1].rstrip("*")
                if not _tokens_of(typed[-1]):
                    raise InvalidRequest(f"a prefix needs at least {MIN_PREFIX} letters before *")
            # Punctuation between a phrase's words is no word: no engine indexed it.
            words = tuple(item for item in typed if _tokens_of(item))
            excluded = bool(minus)
        else:
            excluded = bool(word_minus)
            prefix = word.endswith("*")
            words = (word.rstrip("*"),)
        words = tuple(w for w in words if w)
        if prefix:
            last = _tokens_of(words[-1]) if words else []
            if not last or len(last[-1]) < MIN_PREFIX:
                raise InvalidRequest(f"a prefix needs at least {MIN_PREFIX} letters before *")
        if not any(_tokens_of(w) for w in words):
            continue  # punctuation alone: no engine indexes it
        terms.append(Term(words, prefix, excluded))
    if len(terms) > MAX_TERMS:
        raise InvalidRequest(f"a query has at most {MAX_TERMS} terms")
    if not terms:
        raise InvalidRequest("the query has no words")
    if all(term.excluded for term in terms):
        raise InvalidRequest("a query needs a word to find, not only words to leave out")
    return Query(text, tuple(terms))


def normalize(word: str) -> str:
    """A word as compared: lower case, accents removed (as FTS5's unicode61 does)."""
    decomposed = unicodedata.normalize("NFKD", word.lower())
    return "".join(char for char in decomposed if unicodedata.category(char) != "Mn")


def tokens(text: str) -> list[tuple[int, int, str]]:
    """The words of ``text``: (start, end, normalized), offsets in code points."""
    out: list[tuple[int, int, str]] = []
    start = -1
    for i, char in enumerate(text):
        if unicodedata.category(char) in _WORD_CATEGORIES:
            if start < 0:
                start = i
        elif start >= 0:
            out.append((start, i, normalize(text[start:i])))
            start = -1
    if start >= 0:
        out.append((start, len(text), normalize(text[start:])))
    return out


def _tokens_of(word: str) -> list[str]:
    return [token for _start, _end, token in tokens(word)]


def _term_tokens(term: Term) -> list[str]:
    return [token for word in term.words for token in _tokens_of(word)]


def _find(term: Term, words: list[tuple[int, int, str]]) -> list[tuple[int, int]]:
    """Where ``term`` matches among ``words``: the spans of each matched word."""
    wanted = _term_tokens(term)
    if not wanted:
        return []
    spans: list[tuple[int, int]] = []
    size = len(wanted)
    for i in range(len(words) - size + 1):
        for j, token in enumerate(wanted):
            found = words[i + j][2]
            last = j == size - 1
            if not (found == token or (last and term.prefix and found.startswith(token))):
                break
        else:
            spans.extend((words[i + j][0], words[i + j][1]) for j in range(size))
    return spans


def matches(query: Query, text: str) -> bool:
    """Whether ``text`` matches ``query`` (the in-memory store's engine)."""
    words = tokens(text)
    return all(_find(term, words) for term in query.included) and not any(
        _find(term, words) for term in query.excluded
    )


def score(query: Query, text: str) -> int:
    """How well ``text`` matches: how many of its words the query's terms match."""
    words = tokens(text)
    return sum(len(_find(term, words)) for term in query.included)


def snippet(query: Query, text: str) -> tuple[str, list[tuple[int, int]]]:
    """Up to about :data:`SNIPPET_CHARS` of ``text`` around its first match, and the
    ``[start, end)`` spans of the matched words in it (offsets in code points).

    A cut end is marked with ``…``. A match the engine found but this
    tokenizer does not (a word PostgreSQL's parser reads differently) shows
    the message's start, unmarked.
    """
    words = tokens(text)
    spans = sorted({span for term in query.included for span in _find(term, words)})
    start, end = 0, len(text)
    if end > SNIPPET_CHARS:
        first = spans[0][0] if spans else 0
        start = max(0, first - SNIPPET_CHARS // 4)
        if start:
            space = text.rfind(" ", max(0, start - 20), start)
            start = space + 1 if space >= 0 else start
        end = min(len(text), start + SNIPPET_CHARS)
        if end < len(text):
            space = text.rfind(" ", end - 20, end)
            end = space if space > start else end
    lead = "…" if start else ""
    shown = lead + text[start:end] + ("…" if end < len(text) else "")
    shift = len(lead) - start
    marked = [(a + shift, b + shift) for a, b in spans if a >= start and b <= end]
    return shown, marked
