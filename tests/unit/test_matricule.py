"""National identifier: 13 digits, birth date, Luhn then Verhoeff over the first 11 digits."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.matricule import is_valid_matricule, luhn_digit, make_matricule, matricule_problem, verhoeff_digit

VALID = [
    make_matricule(p) for p in ("19830101123", "20000229001", "19450000987", "19900700456", "18500101000")
]


def test_known_check_digit_vectors() -> None:
    assert verhoeff_digit("236") == 3  # the classic Verhoeff example
    assert luhn_digit("7992739871") == 3  # the classic Luhn example


@pytest.mark.parametrize("value", VALID)
def test_valid_numbers_pass(value: str) -> None:
    assert is_valid_matricule(value)
    assert matricule_problem(value) is None


@pytest.mark.parametrize("value", VALID)
def test_every_single_digit_error_is_rejected(value: str) -> None:
    for i in range(13):
        for d in "0123456789":
            if d != value[i]:
                assert not is_valid_matricule(value[:i] + d + value[i + 1 :]), (i, d)


@pytest.mark.parametrize("value", VALID)
def test_every_adjacent_transposition_is_rejected(value: str) -> None:
    for i in range(12):
        if value[i] != value[i + 1]:
            swapped = value[:i] + value[i + 1] + value[i] + value[i + 2 :]
            assert not is_valid_matricule(swapped), i


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("123", "13 digits"),
        ("19830101123744", "13 digits"),
        ("1983010112a74", "13 digits"),
        ("".join(chr(0xFF10 + int(c)) for c in "1983010112374"), "13 digits"),  # full-width digits
        (make_matricule("19831301123"), "month"),
        (make_matricule("19830132123"), "day"),
        (make_matricule("19830230123"), "valid date"),
        (make_matricule("17990101123"), "1850"),
    ],
)
def test_problems_say_what_is_wrong(value: str, words: str) -> None:
    problem = matricule_problem(value)
    assert problem is not None and words in problem


def test_unknown_month_and_day_are_allowed() -> None:
    assert is_valid_matricule(make_matricule("19830000123"))
    assert is_valid_matricule(make_matricule("19830500123"))


def test_wrong_check_digits_are_named() -> None:
    good = VALID[0]
    bad_luhn = good[:11] + str((int(good[11]) + 1) % 10) + good[12]
    bad_verhoeff = good[:12] + str((int(good[12]) + 1) % 10)
    assert "Luhn" in (matricule_problem(bad_luhn) or "")
    assert "Verhoeff" in (matricule_problem(bad_verhoeff) or "")


@given(st.integers(1900, 2099), st.integers(0, 12), st.integers(0, 28), st.integers(0, 999))
def test_made_numbers_always_validate(year: int, month: int, day: int, serial: int) -> None:
    assert is_valid_matricule(make_matricule(f"{year:04d}{month:02d}{day:02d}{serial:03d}"))
