"""The national identifier (matricule): 13 digits, two check digits over the first 11.

Layout: YYYYMMDD (date of birth; month or day `00` when unknown) + 3 digits + a Luhn check
digit + a Verhoeff check digit, both computed over the first 11 digits. Luhn catches every
single-digit error and most adjacent transpositions; Verhoeff catches all of both. The number
does not encode sex. Never log a matricule: the problem text names the rule, not the value.
"""

from __future__ import annotations

import datetime

_D = (
    (0, 1, 2, 3, 4, 5, 6, 7, 8, 9),
    (1, 2, 3, 4, 0, 6, 7, 8, 9, 5),
    (2, 3, 4, 0, 1, 7, 8, 9, 5, 6),
    (3, 4, 0, 1, 2, 8, 9, 5, 6, 7),
    (4, 0, 1, 2, 3, 9, 5, 6, 7, 8),
    (5, 9, 8, 7, 6, 0, 4, 3, 2, 1),
    (6, 5, 9, 8, 7, 1, 0, 4, 3, 2),
    (7, 6, 5, 9, 8, 2, 1, 0, 4, 3),
    (8, 7, 6, 5, 9, 3, 2, 1, 0, 4),
    (9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
)
_P = (
    (0, 1, 2, 3, 4, 5, 6, 7, 8, 9),
    (1, 5, 7, 6, 2, 8, 3, 0, 9, 4),
    (5, 8, 0, 3, 7, 9, 6, 1, 4, 2),
    (8, 9, 1, 6, 0, 4, 3, 5, 2, 7),
    (9, 4, 5, 3, 1, 2, 6, 8, 7, 0),
    (4, 2, 8, 6, 5, 7, 3, 9, 0, 1),
    (2, 7, 9, 3, 8, 0, 6, 4, 1, 5),
    (7, 0, 4, 6, 9, 1, 3, 2, 8, 5),
)
_INV = (0, 4, 3, 2, 1, 5, 6, 7, 8, 9)


def luhn_digit(payload: str) -> int:
    """The Luhn check digit to append to `payload` (digits only)."""
    total = 0
    for i, ch in enumerate(reversed(payload)):
        d = int(ch)
        if i % 2 == 0:  # the rightmost payload digit is doubled (the check digit goes after it)
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return (10 - total % 10) % 10


def verhoeff_digit(payload: str) -> int:
    """The Verhoeff check digit to append to `payload` (digits only)."""
    c = 0
    for i, ch in enumerate(reversed(payload)):
        c = _D[c][_P[(i + 1) % 8][int(ch)]]
    return _INV[c]


def _date_problem(digits: str) -> str | None:
    year, month, day = int(digits[:4]), int(digits[4:6]), int(digits[6:8])
    if year < 1850:
        return "the birth year (digits 1-4) is before 1850"
    if month > 12:
        return "the birth month (digits 5-6) is not 00-12"
    if day > 31:
        return "the birth day (digits 7-8) is not 00-31"
    if month and day:
        try:
            datetime.date(year, month, day)
        except ValueError:
            return "digits 1-8 are not a valid date of birth (YYYYMMDD)"
    return None


def matricule_problem(value: str) -> str | None:
    """Why `value` is not a valid matricule, or None when it is."""
    if len(value) != 13 or not value.isascii() or not value.isdigit():
        return "a national identifier has exactly 13 digits"
    problem = _date_problem(value)
    if problem:
        return problem
    if int(value[11]) != luhn_digit(value[:11]):
        return "check digit 1 (Luhn, digit 12) does not match the first 11 digits"
    if int(value[12]) != verhoeff_digit(value[:11]):
        return "check digit 2 (Verhoeff, digit 13) does not match the first 11 digits"
    return None


def is_valid_matricule(value: str) -> bool:
    return matricule_problem(value) is None


def make_matricule(first11: str) -> str:
    """The full 13-digit matricule for 11 leading digits (test data, tooling)."""
    return first11 + str(luhn_digit(first11)) + str(verhoeff_digit(first11))
