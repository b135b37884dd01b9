"""Weekly aggregates for the European surveillance reporting: counts, never identifiers.

One row per disease x ISO week x age group x sex x region with at least one case opened that week
(ECDC TESSy-style aggregate CSV, UTF-8, header line):

    ReportingCountry,Subject,DateUsedForStatisticsISOWeek,AgeGroup,Gender,Region,NumberOfCases
    LU,sars-cov-2,2025-W11,25-44,F,LU000,3

The age is taken at the case's opening (first result); sex is M, F or UNK; the region comes from
the postal code through the configured prefix table. Pure functions, plus `weekly_csv` reading the
case store.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections import Counter
from collections.abc import Iterable

from engine.reporting.cases import CaseStore
from engine.reporting.settings import AggregateSettings

HEADER = (
    "ReportingCountry",
    "Subject",
    "DateUsedForStatisticsISOWeek",
    "AgeGroup",
    "Gender",
    "Region",
    "NumberOfCases",
)
Row = tuple[str, float, str, str, str]  # disease, opened_at, birth date, sex, postal code


def iso_week(t: float) -> str:
    year, week, _ = dt.datetime.fromtimestamp(t, dt.UTC).isocalendar()
    return f"{year}-W{week:02d}"


def week_bounds(week: str) -> tuple[float, float]:
    """[start, end) epoch seconds (UTC) of an ISO week `YYYY-Www`."""
    year, number = week.split("-W")
    monday = dt.datetime.fromisocalendar(int(year), int(number), 1).replace(tzinfo=dt.UTC)
    return monday.timestamp(), (monday + dt.timedelta(days=7)).timestamp()


def previous_week(now: float) -> str:
    return iso_week(now - 7 * 86400)


def age_group(birth_date: str, at: float, bounds: list[int]) -> str:
    try:
        born = dt.date(int(birth_date[:4]), int(birth_date[4:6]), int(birth_date[6:8]))
    except ValueError:
        return "UNK"
    day = dt.datetime.fromtimestamp(at, dt.UTC).date()
    age = day.year - born.year - ((day.month, day.day) < (born.month, born.day))
    if age < 0:
        return "UNK"
    lower = max((b for b in bounds if b <= age), default=0)
    higher = [b for b in bounds if b > lower]
    if not higher:
        return f"{lower}+"
    return "<1" if (lower, higher[0]) == (0, 1) else f"{lower}-{higher[0] - 1}"


def sex_of(value: str) -> str:
    return {"M": "M", "F": "F", "MALE": "M", "FEMALE": "F"}.get(value.upper(), "UNK")


def region_of(postal_code: str, settings: AggregateSettings) -> str:
    code = postal_code.strip().upper()
    matches = [p for p in settings.regions if code and code.startswith(p.upper())]
    return settings.regions[max(matches, key=len)] if matches else settings.default_region


def count(rows: Iterable[Row], settings: AggregateSettings) -> Counter[tuple[str, str, str, str, str]]:
    return Counter(
        (
            disease,
            iso_week(opened),
            age_group(birth, opened, settings.age_groups),
            sex_of(sex),
            region_of(postal, settings),
        )
        for disease, opened, birth, sex, postal in rows
    )


def render_csv(counts: Counter[tuple[str, str, str, str, str]], settings: AggregateSettings) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(HEADER)
    for key in sorted(counts):
        writer.writerow((settings.country, *key, counts[key]))
    return out.getvalue()


def weekly_csv(cases: CaseStore, week: str, settings: AggregateSettings) -> str:
    start, end = week_bounds(week)
    return render_csv(count(cases.aggregate_rows(start, end), settings), settings)
