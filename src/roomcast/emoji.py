"""Reactions: what may be one.

A reaction is one emoji as people type it, which Unicode calls one extended
grapheme cluster (a flag, a family with skin tones and a keycap are each
several code points but one cluster), or a short ``:name:`` for custom
ones. Grapheme clusters follow Unicode's own segmentation rules (UAX #29),
which change with each Unicode version: the ``regex`` module keeps them
(``\\X``), so they are not written again here.
"""

from __future__ import annotations

import re
from typing import Final

import regex

__all__ = ["MAX_NAMED", "valid_emoji"]

#: A named reaction: ``:name:`` of at most this many characters inside.
MAX_NAMED: Final = 32
_NAMED: Final = re.compile(rf":[a-z0-9_+-]{{1,{MAX_NAMED}}}:")
_ONE_CLUSTER: Final = regex.compile(r"\X")
#: What no reaction contains: separators, controls, surrogates, private use
#: and unassigned code points. ``regex`` carries its own Unicode data, newer
#: than the interpreter's ``unicodedata`` (Python 3.11 has Unicode 14, so
#: emoji of 2022 on would count as unassigned there).
_NEVER: Final = regex.compile(r"[\p{Z}\p{Cc}\p{Cs}\p{Co}\p{Cn}]")
#: What cannot start one: a mark, a format character (the zero-width
#: joiner) or a modifier (a skin tone) alone is not something to show.
_NOT_FIRST: Final = regex.compile(r"[\p{M}\p{Cf}\p{Sk}]")


def valid_emoji(text: str) -> bool:
    """Whether ``text`` may be a reaction: one grapheme cluster that shows, or ``:name:``."""
    if _NAMED.fullmatch(text):
        return True
    if not text or _ONE_CLUSTER.fullmatch(text) is None:
        return False
    return _NOT_FIRST.match(text) is None and _NEVER.search(text) is None
