"""Guard rules: situations where the best candidate is never linked automatically.

A false merge (two people under one identity) is far worse than a missed link, so each rule
sends the pair to review whatever its score. Reasons are plain text without patient data.
"""

from __future__ import annotations

from engine.mpi.compare import FIELD_INDEX

SEX, MATRICULE, GIVEN = FIELD_INDEX["sex"], FIELD_INDEX["matricule"], FIELD_INDEX["given"]
FAMILY, DOB = FIELD_INDEX["family"], FIELD_INDEX["birth_date"]
STREET, POSTCODE, CITY, HOUSE = (FIELD_INDEX[n] for n in ("street", "postcode", "city", "house_number"))
MIN_CORROBORATION = 3


def _ok(lv: list[int], i: int, worst: int) -> bool:
    return 0 <= lv[i] <= worst


def _address(lv: list[int]) -> bool:
    return _ok(lv, STREET, 1) or _ok(lv, POSTCODE, 0) or (_ok(lv, CITY, 0) and _ok(lv, HOUSE, 0))


def corroboration(lv: list[int]) -> int:
    """How many independent traits agree strongly: family name, given names, birth date (exact or
    day/month swap), matricule, address (street, or postcode, or city with house number)."""
    return sum((_ok(lv, FAMILY, 2), _ok(lv, GIVEN, 2), _ok(lv, DOB, 1), _ok(lv, MATRICULE, 0), _address(lv)))


def names_only(lv: list[int]) -> bool:
    """Only the names agree strongly: no exact (or day/month-swapped) birth date, no matricule, no
    address. Namesakes are common, and a birth date one digit off is as likely another person
    (a sibling, a namesake absent from the register) as a typo: a human must look."""
    return not (_ok(lv, DOB, 1) or _ok(lv, MATRICULE, 0) or _address(lv))


def guard_reasons(
    levels: list[int],
    query_twin: bool,
    candidate_twin: bool,
    margin: float | None,
    min_margin: float,
    given_must_agree: bool = False,
    clear_lead: bool = False,
) -> list[str]:
    """Why the best candidate (`levels` = its comparison vector) must not be auto-linked.

    `clear_lead`: the score is far above the link threshold; then fewer strongly agreeing traits
    are enough (many weaker agreements, e.g. the whole address, make up for them).
    """
    reasons: list[str] = []
    if levels[SEX] == 1:
        reasons.append("conflicting administrative sex")
    if levels[MATRICULE] == 1:
        reasons.append("two different valid national identifiers")
    if (query_twin or candidate_twin) and levels[GIVEN] != 0:
        reasons.append("declared multiple birth and the given names differ")
    if margin is not None and margin < min_margin:
        reasons.append(f"second-best candidate too close (margin {margin:.1f} < {min_margin:.1f} bits)")
    if names_only(levels):
        reasons.append("only the names agree strongly (no exact birth date, identifier or address)")
    if not clear_lead and corroboration(levels) < MIN_CORROBORATION:
        reasons.append(f"fewer than {MIN_CORROBORATION} traits agree strongly")
    if given_must_agree and levels[GIVEN] == 4:
        reasons.append("given names disagree")
    return reasons
