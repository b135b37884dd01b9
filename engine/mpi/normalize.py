"""Normalized forms used for matching: folded ASCII, letters only, parsed dates, codes.

Folding removes accents (NFKD), maps ß/Æ/Œ/Ø, upper-cases and turns anything that is not a
letter or digit into a single space. Name comparisons use the letters only (so "BRAC CI",
"BRACCI" and "Bracci" agree); phonetic keys use the words without particles.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from dataclasses import dataclass

from engine.matricule import is_valid_matricule
from engine.mpi.model import Traits
from engine.mpi.phonetics import phonetic

_SPECIAL = str.maketrans(
    {
        "ß": "SS",
        "Æ": "AE",
        "æ": "AE",
        "Œ": "OE",
        "œ": "OE",
        "Ø": "O",
        "ø": "O",
        "Đ": "D",
        "đ": "D",
        "Ł": "L",
        "ł": "L",
    }
)
_NOT_ALNUM = re.compile(r"[^A-Z0-9]+")
_NOT_ALPHA = re.compile(r"[^A-Z]+")
_NOT_DIGIT = re.compile(r"[^0-9]+")
SEX_CODES = {"M": 1, "F": 2, "O": 3, "A": 3, "X": 3}  # others (U, N, '') are unknown: 0
MAX_CHARS = 40  # longer values are cut: matching needs no more, and arrays stay compact


@functools.lru_cache(maxsize=1 << 17)  # names, streets and cities repeat across a register
def fold(text: str) -> str:
    """Accents removed, upper case, runs of non-alphanumerics as one space, trimmed."""
    if text.isascii():
        return _NOT_ALNUM.sub(" ", text.upper()).strip()
    decomposed = unicodedata.normalize("NFKD", text.translate(_SPECIAL))
    ascii_text = "".join(c for c in decomposed if not unicodedata.combining(c)).upper()
    return _NOT_ALNUM.sub(" ", ascii_text).strip()


def letters(folded: str) -> str:
    return _NOT_ALPHA.sub("", folded)[:MAX_CHARS]


def birth_date_int(value: str) -> int:
    """YYYYMMDD as an int; 0 when absent or not eight digits with a plausible year. An impossible
    day or month (a typo) is kept: comparisons are digit-wise and tolerate it."""
    digits = value[:8]
    if len(digits) != 8 or not digits.isdigit() or not 1850 <= int(digits[:4]) <= 2200:
        return 0
    return int(digits)


@dataclass(frozen=True, slots=True)
class Norm:
    """The normalized record: strings are ASCII upper case, '' when absent."""

    family: str
    birth: str
    given: str
    given1: str
    dob: int
    sex: int
    matricule: str
    house: str
    street: str
    street2: str
    city: str
    postcode: str
    twin: int
    p_family: str
    p_birth: str
    p_given: str


def normalize(t: Traits) -> Norm:
    family_f, birth_f, given_f = fold(t.family), fold(t.birth_name), fold(t.given)
    family, birth = letters(family_f), letters(birth_f)
    if birth == family:
        birth, birth_f = "", ""
    given_words = given_f.split()
    matricule = t.matricule.strip() if is_valid_matricule(t.matricule.strip()) else ""
    dob = birth_date_int(t.birth_date.strip())
    if not dob and matricule:  # the matricule carries the birth date
        dob = birth_date_int(matricule[:8])
    return Norm(
        family=family,
        birth=birth,
        given=letters(given_f),
        given1=given_words[0] if given_words else "",
        dob=dob,
        sex=SEX_CODES.get(t.sex.strip().upper()[:1], 0),
        matricule=matricule,
        house=_NOT_DIGIT.sub("", t.house_number)[:8],
        street=letters(fold(t.street)),
        street2=letters(fold(t.street2)),
        city=letters(fold(t.city)),
        postcode=_NOT_ALNUM.sub("", t.postcode.upper())[:10],
        twin=int(t.multiple_birth),
        p_family=phonetic(family_f),
        p_birth=phonetic(birth_f),
        p_given=phonetic(given_words[0]) if given_words else "",
    )
