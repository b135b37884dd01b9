"""Phonetic keys for the names met in Luxembourg: French, German, Luxembourgish, Portuguese.

Soundex and metaphone are tuned for English. The key here first rewrites spellings that sound
alike in those languages (SCH/CH/SH -> S, PH -> F, QU -> K, TZ/DT -> T, NH/LH -> N/L,
umlaut transcriptions AE/OE/UE, French vowel groups EAU/AU -> O, OU -> U, EI/AI -> E, silent H,
trailing E/S), then keeps the first letter and the consonant skeleton with doubles collapsed.
So MÜLLER, MUELLER and MULLER share a key, as do SCHMIDT/SCHMITT/SCHMIT, FERREIRA/FEREIRA,
CONCEIÇÃO/CONCEICAO, GONÇALVES/GONCALVES. Input is already folded (`normalize.fold`).
"""

from __future__ import annotations

import functools
import re

PARTICLES = frozenset(
    {
        "DA",
        "DE",
        "DO",
        "DOS",
        "DAS",
        "DI",
        "DU",
        "DES",
        "DEL",
        "LA",
        "LE",
        "VAN",
        "VON",
        "DER",
        "DEN",
        "TEN",
        "TER",
        "E",
        "Y",
        "VAN DER",
    }
)

_RULES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(p), r)
    for p, r in (
        (r"SCH|SH|CH(?=[AEIOUY]|$)", "S"),
        (r"CH", "K"),
        (r"PH", "F"),
        (r"TH", "T"),
        (r"GH", "G"),
        (r"QU|CK|Q", "K"),
        (r"TZ|DT|TT|DD", "T"),
        (r"C(?=[EIY])", "S"),
        (r"C", "K"),
        (r"X", "KS"),
        (r"NH|GN", "N"),
        (r"LH", "L"),
        (r"W", "V"),
        (r"Z", "S"),
        (r"Y", "I"),
        (r"AE|AI|AY|EI|EY", "E"),
        (r"OE", "E"),
        (r"UE", "U"),
        (r"EAU|AU", "O"),
        (r"OU", "U"),
        (r"IE", "I"),
        (r"H", ""),
        (r"(?<=.)[ES]+$", ""),
    )
)
_DOUBLE = re.compile(r"(.)\1+")
_VOWELS = re.compile(r"(?<=.)[AEIOU]")


def significant(folded: str) -> str:
    """The name's words without particles (DA, VON, DE...), joined without spaces."""
    words = [w for w in folded.split() if w not in PARTICLES]
    return "".join(words) if words else folded.replace(" ", "")


@functools.lru_cache(maxsize=1 << 17)  # names repeat: a register load codes each distinct name once
def phonetic(folded: str) -> str:
    """Phonetic key of a folded name ('' for ''): first sound + consonant skeleton."""
    text = significant(folded)
    if not text:
        return ""
    for pattern, replacement in _RULES:
        text = pattern.sub(replacement, text)
    text = _DOUBLE.sub(r"\1", text)
    return _DOUBLE.sub(r"\1", _VOWELS.sub("", text))[:8]
