"""Characters that draw nothing yet change what is drawn, named in one place.

Names, file names and messages come from other people. Some code points
show no glyph but change how the text around them looks:

- C0 and C1 controls: ESC and CSI start terminal escape sequences, CR
  and BS overwrite what was printed;
- the Unicode bidirectional controls (U+202A-U+202E, U+2066-U+2069,
  U+200E/U+200F, U+061C): U+202E RIGHT-TO-LEFT OVERRIDE shows the file
  ``invoice\\u202efdp.exe`` as ``invoiceexe.pdf``;
- the other invisible format characters (category Cf: zero-width spaces,
  word joiners, soft hyphens, tag characters), which make two different
  names look the same.

The terminal chat shows them as U+FFFD (:func:`roomcast.client.terminal.clean`)
and :func:`roomcast.files.safe_file_name` removes them. The web page applies
the same rule in ``app.js`` (``visibleName``). This module does no I/O.
"""

from __future__ import annotations

from typing import Final

__all__ = ["CONTROLS", "FORMAT", "LINE_BREAKS", "strip_format"]

#: C0 controls, DEL and C1 controls (ESC, CSI and NEL among them).
CONTROLS: Final = frozenset([*range(0x20), *range(0x7F, 0xA0)])

#: Characters that end a line or move along it: a terminal shows them as a
#: space, a file name as ``_`` (U+2028/U+2029 are no controls, but break lines).
LINE_BREAKS: Final = frozenset({0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x2028, 0x2029})

#: Every format character (Unicode category Cf, as of Unicode 15.1) but
#: U+200C ZERO WIDTH NON-JOINER and U+200D ZERO WIDTH JOINER, which emoji
#: sequences and Persian and Indic writing need and which reorder nothing.
#: Written out rather than read from ``unicodedata`` at import (a scan of
#: all code points takes a tenth of a second); a test checks it against
#: ``unicodedata``. Tag characters (U+E0020-U+E007F) go too: they hide text
#: (the cost is that a subdivision flag such as England's shows as a black flag).
FORMAT: Final = frozenset(
    [
        0x00AD,  # soft hyphen
        *range(0x0600, 0x0606),  # Arabic number signs
        0x061C,  # ARABIC LETTER MARK (bidi)
        0x06DD,
        0x070F,
        0x0890,
        0x0891,
        0x08E2,
        0x180E,  # Mongolian vowel separator
        0x200B,  # zero width space
        0x200E,  # LEFT-TO-RIGHT MARK (bidi)
        0x200F,  # RIGHT-TO-LEFT MARK (bidi)
        *range(0x202A, 0x202F),  # bidi embeddings and overrides
        *range(0x2060, 0x2065),  # word joiner, invisible operators
        *range(0x2066, 0x2070),  # bidi isolates, deprecated format characters
        0xFEFF,  # byte order mark, zero width no-break space
        *range(0xFFF9, 0xFFFC),  # interlinear annotation
        0x110BD,
        0x110CD,
        *range(0x13430, 0x13440),  # Egyptian hieroglyph format controls
        *range(0x1BCA0, 0x1BCA4),  # shorthand format controls
        *range(0x1D173, 0x1D17B),  # musical symbol format controls
        0xE0001,  # language tag
        *range(0xE0020, 0xE0080),  # tag characters
    ]
)

_DROP_FORMAT: Final[dict[int, None]] = dict.fromkeys(FORMAT)


def strip_format(text: str) -> str:
    """``text`` without the invisible format characters of :data:`FORMAT`."""
    return text.translate(_DROP_FORMAT)
