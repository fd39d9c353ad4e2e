"""Which reactions roomcast takes: one grapheme cluster that shows, or a short :name:."""

from __future__ import annotations

import pytest

from roomcast.emoji import MAX_NAMED, valid_emoji


@pytest.mark.parametrize(
    "emoji",
    [
        "👍",
        "❤️",  # with its variation selector
        "👨‍👩‍👧",  # joined by zero-width joiners
        "🇫🇷",  # a flag: two regional indicators
        "1️⃣",  # a keycap
        "👍🏽",  # with a skin tone
        "é",  # e and a combining accent: one cluster
        "🫨",  # Unicode 15, newer than Python 3.11's own tables
        "🩷",
        ":party:",
        ":+1:",
        ":" + "a" * MAX_NAMED + ":",
    ],
)
def test_one_cluster_or_a_name_is_a_reaction(emoji: str) -> None:
    """Emoji sequences people type as one, and short names, are taken."""
    assert valid_emoji(emoji)


@pytest.mark.parametrize(
    "text",
    [
        "",
        " ",
        "\u00a0",
        "ab",
        "👍👍",
        "\u200d",  # a joiner alone
        "\u0301",  # a combining mark alone
        "🏽",  # a skin tone alone
        "\x00",
        "\x07",
        "\ue000",  # private use
        ":Party:",
        "::",
        ":" + "a" * (MAX_NAMED + 1) + ":",
        ":a b:",
    ],
)
def test_anything_else_is_not(text: str) -> None:
    """Two clusters, blanks, controls, lone marks and bad names are refused."""
    assert not valid_emoji(text)
