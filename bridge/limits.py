"""Text helpers that enforce Flashduty's limits (the limits themselves are :mod:`bridge.contract`'s).

Limits count characters (Unicode code points, as Flashduty's Go service counts
runes), never bytes. Truncation never splits a code point, and it backs off so it
does not leave half of a combined character (a base letter without its accent, an
emoji without its modifier or the rest of its ZWJ sequence, half a flag).
"""

from __future__ import annotations

import re
import unicodedata

from bridge import contract
from bridge.contract import LABEL_KEY, clean_text, is_label_key

__all__ = ["ELLIPSIS", "LABEL_KEY", "clean_text", "is_label_key", "sanitise_label_key", "truncate"]

# Linear: a single character class, substituted in one pass.
_INVALID_KEY_CHARS = re.compile(r"[^a-zA-Z0-9_]")
ELLIPSIS = "…"

_ZWJ = "\u200d"


def _joins_previous(char: str) -> bool:
    """True for code points that belong to the character before them."""
    code = ord(char)
    return (
        unicodedata.combining(char) != 0
        or char == _ZWJ
        or 0xFE00 <= code <= 0xFE0F  # variation selectors
        or 0x1F3FB <= code <= 0x1F3FF  # emoji skin-tone modifiers
        or 0xE0020 <= code <= 0xE007F  # emoji tag sequences
        or unicodedata.category(char) == "Mc"
    )


def _is_regional_indicator(char: str) -> bool:
    return 0x1F1E6 <= ord(char) <= 0x1F1FF


def truncate(value: str, limit: int, marker: str = ELLIPSIS) -> tuple[str, bool]:
    """Shorten ``value`` to at most ``limit`` code points, ending with ``marker``.

    Returns the text and whether it was shortened.
    """
    if len(value) <= limit:
        return value, False
    cut = max(limit - len(marker), 0)
    # Back off while the first dropped code point belongs to the last kept one.
    while cut > 0 and (_joins_previous(value[cut]) or value[cut - 1] == _ZWJ):
        cut -= 1
    # A flag is a pair of regional indicators: never keep an odd one at the end.
    run = 0
    while run < cut and _is_regional_indicator(value[cut - 1 - run]):
        run += 1
    if run % 2 == 1:
        cut -= 1
    return value[:cut] + marker[: max(limit - cut, 0)], True


def sanitise_label_key(key: str) -> str:
    """Map any string onto Prometheus label naming, ``[a-zA-Z_][a-zA-Z0-9_]*``, ≤ 128 chars.

    ``service.name`` becomes ``service_name``; ``1st`` becomes ``_1st``. Different
    inputs can give the same output: the caller resolves collisions.
    """
    out = _INVALID_KEY_CHARS.sub("_", key) or "_"
    if out[0].isdigit():
        out = "_" + out
    return out[: contract.LABEL_KEY_MAX]
