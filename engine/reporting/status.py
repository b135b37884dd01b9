"""Timeliness, for the dashboard and the metrics: which reports are overdue, and the alert gauge."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TypedDict

from engine.reporting import metrics
from engine.reporting.cases import CaseStore


class OverdueReport(TypedDict):
    case_id: str
    version: int
    received_at: float
    waiting_seconds: float


def overdue_reports(
    database: Path, alert_after_seconds: float, now: float | None = None
) -> list[OverdueReport]:
    """Reports not delivered `alert_after_seconds` after their result was received, oldest first.
    Blocking (SQLite): the dashboard calls it in a thread. No patient data in the answer."""
    now = time.time() if now is None else now
    pending = CaseStore(database).pending(now - alert_after_seconds)
    return [
        OverdueReport(case_id=c, version=v, received_at=r, waiting_seconds=now - r) for c, v, r in pending
    ]


def refresh_overdue(database: Path, alert_after_seconds: float, now: float | None = None) -> int:
    """Set the `passerelle_reporting_overdue_reports` gauge; returns the count."""
    overdue = len(overdue_reports(database, alert_after_seconds, now))
    metrics.OVERDUE.set(overdue)
    return overdue
