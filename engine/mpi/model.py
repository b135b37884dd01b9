"""Identity traits as received, and what is wrong with them.

`Traits` is the display form (what a register row or a PID segment says); matching works on the
normalized form built by `engine.mpi.normalize`. Problems never quote a value: they end up in
findings and review reasons, which may be logged.
"""

from __future__ import annotations

import dataclasses
import datetime
from dataclasses import dataclass
from typing import Any

from engine.matricule import matricule_problem

SEXES = frozenset({"M", "F", "O", "U", "A", "N", ""})  # HL7 table 0001; '' unknown


@dataclass(frozen=True, slots=True)
class Traits:
    """One person's demographic traits; '' means absent.

    `birth_date` is YYYYMMDD (`00` for an unknown month or day, as in the matricule);
    `family` is the name in use, `birth_name` the name at birth when it differs (married names).
    """

    family: str = ""
    given: str = ""
    birth_name: str = ""
    birth_date: str = ""
    sex: str = ""
    matricule: str = ""
    house_number: str = ""
    street: str = ""
    street2: str = ""
    city: str = ""
    postcode: str = ""
    multiple_birth: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in TRAIT_NAMES}  # asdict() deep-copies: slow

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Traits:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


TRAIT_NAMES: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Traits))


def date_problem(value: str) -> str | None:
    """Why `value` is not a YYYYMMDD birth date (00 allowed for unknown month/day), or None."""
    if len(value) != 8 or not value.isdigit():
        return "the birth date is not YYYYMMDD"
    year, month, day = int(value[:4]), int(value[4:6]), int(value[6:])
    if not 1850 <= year <= datetime.date.today().year or month > 12 or day > 31:
        return "the birth date is out of range"
    if month and day:
        try:
            datetime.date(year, month, day)
        except ValueError:
            return "the birth date is not a calendar date"
    return None


def _digit_date(value: str) -> bool:
    """Eight digits with a plausible year: compared digit by digit even if not a calendar date."""
    return len(value) == 8 and value.isdigit() and 1850 <= int(value[:4]) <= datetime.date.today().year


def warnings(t: Traits) -> list[str]:
    """Traits that are doubtful but still usable: reported with the outcome, never silently."""
    if t.birth_date and _digit_date(t.birth_date) and date_problem(t.birth_date):
        return ["the birth date is not a calendar date (compared digit by digit)"]
    return []


def problems(t: Traits) -> list[str]:
    """Malformed or incomplete traits: such an identity goes to review, never auto-linked.

    Incomplete means no name at all, or neither a birth date nor a matricule: too little to tell
    two people apart. Missing single traits are normal (and scored as missing, not as different).
    """
    found: list[str] = []
    if t.matricule and (why := matricule_problem(t.matricule)):
        found.append(f"national identifier: {why}")
    if t.birth_date and (why := date_problem(t.birth_date)) and not _digit_date(t.birth_date):
        found.append(why)
    if t.sex not in SEXES:
        found.append("the administrative sex is not in HL7 table 0001")
    if not (t.family or t.birth_name or t.given):
        found.append("incomplete identity: no name")
    if not (t.family or t.birth_name) and not t.birth_date:
        found.append("incomplete identity: neither a family name nor a birth date")
    if not t.birth_date and not t.matricule and not (t.family and t.given):
        found.append("incomplete identity: no birth date, no national identifier")
    return found
