"""Turning user input (CLI options, HTTP query parameters) into a registry `Query`, with errors that
say what to fix. Shared by the CLI and the JSON API so both accept the same things."""

from __future__ import annotations

import re

from engine.dsp.registry import STATUSES, Query

_DATE = re.compile(r"^(\d{4})-?(\d{2})-?(\d{2})$")


class QueryError(ValueError):
    """The request cannot be answered as asked; the text says what to change."""


def date_value(value: str, name: str) -> str:
    """YYYY-MM-DD or YYYYMMDD as YYYYMMDD ('' stays '')."""
    if not value:
        return ""
    found = _DATE.match(value.strip())
    if found is None:
        raise QueryError(f"{name} must be a date as YYYY-MM-DD or YYYYMMDD")
    return "".join(found.groups())


def build_query(patient: str = "", type_code: str = "", status: str = "", date_from: str = "",
                date_to: str = "", limit: int = 100, max_limit: int = 500) -> Query:
    """A listing of one patient's documents: `patient` is a 13-digit national id or an enterprise id."""
    patient = patient.strip()
    if not patient:
        raise QueryError("give the patient: a national id (13-digit matricule) or an enterprise id")
    if status and status not in STATUSES:
        raise QueryError(f"status must be one of {', '.join(STATUSES)}")
    if not 1 <= limit <= max_limit:
        raise QueryError(f"limit must be between 1 and {max_limit}")
    national = patient.isdigit() and len(patient) == 13
    return Query(matricule=patient if national else "", enterprise_id="" if national else patient,
                 type_code=type_code.strip(), status=status, date_from=date_value(date_from, "from"),
                 date_to=date_value(date_to, "to"), limit=limit)
