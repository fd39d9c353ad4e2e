"""The search query grammar, the engines' quoting of it, and snippets, without I/O.

A query is parsed once (``roomcast.query``) and each store turns it into its
engine's syntax: whatever a user types must come out as text to find, never
as an operator of FTS5 or of a PostgreSQL ``tsquery``. Snippets and their
highlights are made here for every store, in code points.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from roomcast.exceptions import InvalidRequest
from roomcast.query import (
    MAX_QUERY_CHARS,
    MAX_TERMS,
    SNIPPET_CHARS,
    Query,
    Term,
    matches,
    parse_query,
    score,
    snippet,
)
from roomcast.store.postgres import tsquery
from roomcast.store.sqlite import fts5_query


def refusal(text: str) -> str:
    """Why ``text`` is refused as a query."""
    with pytest.raises(InvalidRequest) as caught:
        parse_query(text)
    return str(caught.value)


def marked(query: str, text: str) -> tuple[str, list[str]]:
    """The snippet of ``text`` for ``query`` and the text of each of its highlights."""
    shown, spans = snippet(parse_query(query), text)
    return shown, [shown[a:b] for a, b in spans]


# -- the grammar -----------------------------------------------------------------------


def test_words_must_all_appear_and_keep_their_case_as_typed() -> None:
    """Words separated by spaces are terms of their own, none a prefix nor excluded."""
    query = parse_query("  Deploy   failed ")
    assert query.terms == (Term(("Deploy",)), Term(("failed",)))
    assert query.included == query.terms and query.excluded == ()
    assert query.text == "  Deploy   failed "


def test_a_star_at_the_end_makes_a_prefix() -> None:
    """``deplo*`` is the prefix deplo; a star inside a word is only punctuation."""
    assert parse_query("deplo*").terms == (Term(("deplo",), prefix=True),)
    assert parse_query("de*ploy").terms == (Term(("de*ploy",)),)


def test_quotes_make_a_phrase_and_a_star_before_the_closing_quote_a_prefix() -> None:
    """A phrase is its words in order; ``"the depl*"`` ends in a prefix."""
    (phrase,) = parse_query('"the deploy failed"').terms
    assert phrase == Term(("the", "deploy", "failed"))
    assert parse_query('"the depl*"').terms == (Term(("the", "depl"), prefix=True),)


def test_a_minus_excludes_a_word_or_a_phrase() -> None:
    """``-word`` and ``-"a phrase"`` are terms that must not match."""
    query = parse_query('deploy -rollback -"dry run" -stag*')
    assert query.included == (Term(("deploy",)),)
    assert query.excluded == (
        Term(("rollback",), excluded=True),
        Term(("dry", "run"), excluded=True),
        Term(("stag",), prefix=True, excluded=True),
    )


def test_punctuation_alone_is_no_term() -> None:
    """A run of punctuation is dropped: no engine indexes it."""
    assert parse_query("deploy -- !!! ... ?").terms == (Term(("deploy",)),)


def test_the_longest_query_and_the_most_terms_are_accepted() -> None:
    """256 characters and 16 terms are within the bounds."""
    assert len(parse_query("x" * MAX_QUERY_CHARS).terms) == 1
    assert len(parse_query(" ".join(f"w{i}" for i in range(MAX_TERMS))).terms) == MAX_TERMS


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ('"deploy failed', "a quote is not closed"),
        ('deploy "failed', "a quote is not closed"),
        ('-"dry run', "a quote is not closed"),
        ("x" * (MAX_QUERY_CHARS + 1), f"at most {MAX_QUERY_CHARS} characters"),
        ("deploy\x00", "control characters"),
        ("\x00", "control characters"),
        ("deploy\tfailed", "control characters"),
        ("deploy\nfailed", "control characters"),
        ("deploy\x7f", "control characters"),
        ("deploy\x9b", "control characters"),
        ("-rollback", "not only words to leave out"),
        ('-rollback -"dry run"', "not only words to leave out"),
        ("!!! ... ???", "the query has no words"),
        ("&|!() ' \\ : ^ ~ <-> {}", "the query has no words"),
        ('""', "the query has no words"),
        ("d*", "at least 2 letters before *"),
        ("*", "at least 2 letters before *"),
        ("deploy a*", "at least 2 letters before *"),
        ("a:*", "at least 2 letters before *"),
        ("-x*", "at least 2 letters before *"),
        ('"the d*"', "at least 2 letters before *"),
        (" ".join(f"w{i}" for i in range(MAX_TERMS + 1)), f"at most {MAX_TERMS} terms"),
    ],
)
def test_an_unusable_query_says_why(text: str, why: str) -> None:
    """Each refusal is InvalidRequest with a message a user can act on."""
    assert why in refusal(text)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("OR", ("OR",)),
        ("AND", ("AND",)),
        ("NOT", ("NOT",)),
        ("NEAR(a b)", ("NEAR(a", "b)")),
        ("deploy:*", ("deploy:",)),
        ("a&b|c!d", ("a&b|c!d",)),
        ("(deploy)", ("(deploy)",)),
        ("O'Brien", ("O'Brien",)),
        ("back\\slash", ("back\\slash",)),
        ("body:secret", ("body:secret",)),
        ("^start", ("^start",)),
        ("{body}:x", ("{body}:x",)),
    ],
)
def test_engine_operators_typed_by_a_user_are_words(text: str, words: tuple[str, ...]) -> None:
    """FTS5 and tsquery operators come out as the words typed, each a term of its own."""
    query = parse_query(text)
    assert tuple(word for term in query.terms for (word,) in [term.words]) == words
    assert all(not term.excluded for term in query.terms)


# -- the engines' syntax -----------------------------------------------------------------


def test_fts5_quotes_every_term_and_joins_them_with_its_own_operators() -> None:
    """Terms are quoted strings, ANDed; exclusions follow with NOT; a prefix gets its star."""
    assert fts5_query(parse_query("deploy failed")) == '("deploy" AND "failed")'
    assert fts5_query(parse_query("deplo*")) == '("deplo"*)'
    query = parse_query('"the deploy" -rollback -"dry run"')
    assert fts5_query(query) == '("the deploy") NOT "rollback" NOT "dry run"'
    assert fts5_query(parse_query('"foo ba*"')) == '("foo ba"*)'


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("NEAR(a b)", '("NEAR(a" AND "b)")'),
        ("OR AND NOT", '("OR" AND "AND" AND "NOT")'),
        ("body:secret", '("body:secret")'),
        ("{body}:x", '("{body}:x")'),
        ("^start", '("^start")'),
        ("O'Brien", '("O\'Brien")'),
        ("back\\slash", '("back\\slash")'),
        ("deploy:*", '("deploy:"*)'),
    ],
)
def test_fts5_reads_hostile_words_as_strings(text: str, expected: str) -> None:
    """Column filters, NEAR, boolean words and carets stay inside a quoted string."""
    assert fts5_query(parse_query(text)) == expected


def test_fts5_doubles_a_quote_inside_a_word() -> None:
    """A quote in a word (the parser keeps none, but a Query may) is doubled, not closing."""
    query = Query('say "hi"', (Term(('say "hi"',)),))
    assert fts5_query(query) == '("say ""hi""")'
    assert fts5_query(Query("x", (Term(('"',), prefix=True),))) == '(""""*)'


def test_tsquery_quotes_every_word_and_joins_them_with_its_own_operators() -> None:
    """Words are quoted lexemes, phrases use <->, exclusions & !, a prefix :*."""
    assert tsquery(parse_query("deploy failed")) == "('deploy') & ('failed')"
    assert tsquery(parse_query("deplo*")) == "('deplo':*)"
    query = parse_query('"the deploy" -rollback -"dry run"')
    assert tsquery(query) == "('the' <-> 'deploy') & !('rollback') & !('dry' <-> 'run')"
    assert tsquery(parse_query('"foo ba*"')) == "('foo' <-> 'ba':*)"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("O'Brien", "('O''Brien')"),
        ("back\\slash", "('back\\\\slash')"),
        ("it's\\", "('it''s\\\\')"),
        ("a&b|c!d", "('a&b|c!d')"),
        ("(deploy)", "('(deploy)')"),
        ("deploy:*", "('deploy:':*)"),
        ("x:A", "('x:A')"),
        ("NEAR(a b)", "('NEAR(a') & ('b)')"),
        ("'''", None),
    ],
)
def test_tsquery_escapes_quotes_and_backslashes(text: str, expected: str | None) -> None:
    """A quote is doubled and a backslash escaped, so a lexeme never ends early."""
    if expected is None:
        assert "no words" in refusal(text)
    else:
        assert tsquery(parse_query(text)) == expected


def test_tsquery_escapes_a_quote_inside_a_phrase_word() -> None:
    """Every word of a phrase is escaped on its own."""
    query = Query("x", (Term(("it's", "a\\b"), prefix=True, excluded=False),))
    assert tsquery(query) == "('it''s' <-> 'a\\\\b':*)"


# -- the in-memory engine ----------------------------------------------------------------


def test_matching_ignores_case_and_accents_and_keeps_phrases_in_order() -> None:
    """Every included term must match and no excluded one; a phrase in order only."""
    text = "The Deploy of the Café failed"
    assert matches(parse_query("deploy CAFE"), text)
    assert matches(parse_query('"deploy of"'), text)
    assert not matches(parse_query('"of deploy"'), text)
    assert matches(parse_query("depl* fail*"), text)
    assert not matches(parse_query("deploy -failed"), text)
    assert not matches(parse_query("deploy rollback"), text)
    assert score(parse_query("the"), text) == 2 and score(parse_query("x"), text) == 0


# -- snippets ----------------------------------------------------------------------------


def test_a_short_message_is_shown_whole_with_its_matches_marked() -> None:
    """Up to the snippet's size the text is whole, every match of every term marked."""
    text = "Deploy failed; retry the deploy"
    shown, words = marked("deploy retry", text)
    assert shown == text
    assert words == ["Deploy", "retry", "deploy"]


def test_a_long_message_is_cut_around_its_first_match() -> None:
    """A long text shows about SNIPPET_CHARS around the first match, with … where cut."""
    text = "lead " * 100 + "the deploy failed " + "tail " * 100
    shown, words = marked("deploy", text)
    assert shown.startswith("…") and shown.endswith("…")
    assert len(shown) <= SNIPPET_CHARS + 2
    assert words == ["deploy"]
    assert shown[1:-1] in text and "the deploy failed" in shown


def test_a_match_near_either_end_is_cut_only_on_the_other() -> None:
    """A first match near the start keeps the start; near the end, the end."""
    text = "deploy " + "word " * 100
    shown, words = marked("deploy", text)
    assert shown.startswith("deploy") and shown.endswith("…") and words == ["deploy"]
    text = "word " * 100 + "deploy"
    shown, words = marked("deploy", text)
    assert shown.startswith("…") and shown.endswith("deploy") and words == ["deploy"]


def test_excluded_terms_are_not_marked() -> None:
    """Only the terms that must match are highlighted."""
    assert marked("deploy -rollback", "deploy then rollback")[1] == ["deploy"]


def test_a_phrase_marks_each_of_its_words_and_a_prefix_the_whole_word() -> None:
    """Highlights are whole words: a phrase's each, a prefix's full word."""
    assert marked('"deploy failed"', "the deploy failed")[1] == ["deploy", "failed"]
    assert marked("deplo*", "a deployment")[1] == ["deployment"]


def test_highlights_count_code_points_past_emoji() -> None:
    """An astral character is one offset (not two UTF-16 units): the spans still fit."""
    text = "🎉🎉 party 👍🏽 deploy 👨‍👩‍👧 done"
    shown, spans = snippet(parse_query("deploy"), text)
    assert [shown[a:b] for a, b in spans] == ["deploy"]
    assert spans == [(text.index("deploy"), text.index("deploy") + 6)]
    assert text.index("deploy") == 12  # UTF-16 would say 15


def test_highlights_of_a_cut_snippet_count_code_points_past_emoji() -> None:
    """The cut and its … move the offsets by code points, emoji before the match included."""
    text = "🎉" * 150 + " " + "🚀 " * 30 + "the deploy " + "🎉" * 150
    shown, words = marked("deploy", text)
    assert shown.startswith("…") and shown.endswith("…") and words == ["deploy"]


def test_accents_match_either_way_and_the_marked_text_is_as_written() -> None:
    """cafe finds café and café finds cafe; a decomposed é is part of its word."""
    assert marked("cafe", "un café noir")[1] == ["café"]
    assert marked("café", "un cafe noir")[1] == ["cafe"]
    decomposed = "un cafe\u0301 noir"
    shown, spans = snippet(parse_query("café"), decomposed)
    assert [shown[a:b] for a, b in spans] == ["cafe\u0301"] and spans == [(3, 8)]


@pytest.mark.parametrize(
    ("query", "text", "words"),
    [
        ("привет", "Привет, мир!", ["Привет"]),
        ("мир*", "Привет, мирный мир", ["мирный", "мир"]),
        ("καλημέρα", "Καλημέρα κόσμε", ["Καλημέρα"]),
        ("ΚΌΣΜΕ", "Καλημέρα κόσμε", ["κόσμε"]),
        ("東京タワー", "東京タワー、今日は", ["東京タワー"]),
        ("مرحبا", "قال مرحبا بالعالم", ["مرحبا"]),
    ],
)
def test_non_latin_words_are_marked(query: str, text: str, words: list[str]) -> None:
    """Cyrillic, Greek and Arabic words and a CJK run are marked, case folded."""
    assert marked(query, text)[1] == words


def test_a_cjk_run_is_one_word() -> None:
    """A run of CJK letters is matched whole, never in part (as the engines index it)."""
    assert marked("東京タワー", "東京タワー に行く")[1] == ["東京タワー"]
    assert marked("東京", "東京タワー に行く")[1] == []
    assert not matches(parse_query("東京"), "東京タワー に行く")


def test_a_match_the_tokenizer_does_not_see_shows_the_start_unmarked() -> None:
    """When the engine found a word this tokenizer reads otherwise, the start is shown."""
    text = "x" * 300
    shown, spans = snippet(parse_query("deploy"), text)
    assert shown == "x" * SNIPPET_CHARS + "…" and spans == []


# -- fuzzing -----------------------------------------------------------------------------

#: What a hostile user types: engine operators, quotes, escapes, controls, scripts.
HOSTILE = "\"'\\*-:^(){}[]&|!<>~@#$%+=,.;/?_ \t\x00\x01\x7f\u200b\ufeffaZé\u0301Жλ東🎉"
hostile_text = st.text(alphabet=st.sampled_from(HOSTILE), max_size=300) | st.text(max_size=300)


@settings(max_examples=800, deadline=None)
@given(hostile_text)
def test_any_text_parses_or_is_refused_with_invalid_request(text: str) -> None:
    """parse_query returns a Query within its bounds or raises InvalidRequest, nothing else."""
    try:
        query = parse_query(text)
    except InvalidRequest as exc:
        assert str(exc)
        return
    assert len(text) <= MAX_QUERY_CHARS
    assert 1 <= len(query.terms) <= MAX_TERMS and query.included
    assert all(term.words and all(word for word in term.words) for term in query.terms)
    assert fts5_query(query).startswith("(") and tsquery(query)


@settings(max_examples=300, deadline=None)
@given(hostile_text, st.text(max_size=400))
def test_snippets_of_any_text_keep_their_highlights_inside(query_text: str, text: str) -> None:
    """Whatever the text, highlights are ordered spans inside the snippet, each a word."""
    try:
        query = parse_query(query_text)
    except InvalidRequest:
        return
    shown, spans = snippet(query, text)
    assert len(shown) <= SNIPPET_CHARS + 2 or shown == text
    assert all(0 <= a < b <= len(shown) for a, b in spans)
    assert spans == sorted(spans)
    if matches(query, text) and len(text) <= SNIPPET_CHARS:
        assert spans
