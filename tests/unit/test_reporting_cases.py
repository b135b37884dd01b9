"""Cases (per patient and disease within the window, idempotent per message), reports, aggregates."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.formats.hl7v2 import parse
from engine.reporting.aggregates import age_group, count, iso_week, render_csv, weekly_csv
from engine.reporting.cases import CaseStore, Identity, Incoming, parse_time, split_by_disease
from engine.reporting.catalogue import Catalogue, load_catalogue
from engine.reporting.detection import detect_hl7
from engine.reporting.report import render_report
from engine.reporting.settings import AggregateSettings, load_settings
from engine.reporting.status import overdue_reports, refresh_overdue
from tests.unit.test_reporting_detection import NOT_DETECTED, SHIPPED, oru

DAY = 86400.0


@pytest.fixture(scope="module")
def catalogue() -> Catalogue:
    return load_catalogue(SHIPPED)


def incoming(catalogue: Catalogue, key: str, raw: bytes, enterprise_id: str = "E1") -> Incoming:
    detection = detect_hl7(parse(raw), catalogue)
    [(disease, found)] = split_by_disease(detection).items()
    t = parse_time(found.results[0].observed) or 0.0
    return Incoming(key, None, t + 60, Identity.of(enterprise_id, found.patient), disease, 90, found)


def test_new_repeat_correction_and_idempotency(tmp_path: Path, catalogue: Catalogue) -> None:
    cases = CaseStore(tmp_path / "store.db")
    first = cases.record(incoming(catalogue, "1", oru("L1", when="20250301080000")))
    assert (first.version, first.action, first.delivered) == (1, "new", False)
    again = cases.record(incoming(catalogue, "1", oru("L1", when="20250301080000")))
    assert (again.case_id, again.version, again.action) == (first.case_id, 1, "unchanged")
    repeat = cases.record(incoming(catalogue, "2", oru("L2", when="20250311080000")))  # 10 days later
    assert (repeat.case_id, repeat.version, repeat.action) == (first.case_id, 2, "updated")
    amended = cases.record(incoming(catalogue, "3", oru("L2", when="20250311080000", status="C")))
    assert (amended.case_id, amended.version, amended.action) == (first.case_id, 3, "amended")
    cases.mark_delivered(first.case_id, 3)
    assert cases.record(incoming(catalogue, "3", oru("L2", status="C"))).delivered
    case = cases.case(first.case_id)
    assert case is not None and [c.message_key for c in case.contributions] == ["1", "2", "3"]


def test_outside_the_window_or_another_patient_is_another_case(tmp_path: Path, catalogue: Catalogue) -> None:
    cases = CaseStore(tmp_path / "store.db")
    a = cases.record(incoming(catalogue, "1", oru("L1", when="20250101080000")))
    b = cases.record(incoming(catalogue, "2", oru("L2", when="20250601080000")))
    c = cases.record(incoming(catalogue, "3", oru("L3", when="20250102080000"), enterprise_id="E2"))
    assert len({a.case_id, b.case_id, c.case_id}) == 3


def test_an_unlinked_patient_is_kept_under_the_national_id(tmp_path: Path, catalogue: Catalogue) -> None:
    cases = CaseStore(tmp_path / "store.db")
    up = cases.record(incoming(catalogue, "1", oru("L1"), enterprise_id=""))
    case = cases.case(up.case_id)
    assert case is not None and not case.resolved
    report = render_report(case, catalogue).decode()
    assert "IDENTITY^Patient identity^L||unresolved" in report
    assert "1980010112302^^^RNPP^NI" in report and "^^^PASSERELLE^PI" not in report


def test_the_report_is_an_oru_with_the_case_id_and_version_as_control_id(
    tmp_path: Path, catalogue: Catalogue
) -> None:
    cases = CaseStore(tmp_path / "store.db")
    up = cases.record(incoming(catalogue, "1", oru("L1")))
    case = cases.case(up.case_id)
    assert case is not None
    report = parse(render_report(case, catalogue))
    assert report.get("MSH-9") == "ORU^R01^ORU_R01" and report.get("MSH-12") == "2.5.1"
    assert report.get("MSH-10") == f"{up.case_id}-v1" and len(report.get("MSH-10")) <= 20
    assert report.get("PID-3[1].1") == "E1" and report.get("OBR-4.1") == "sars-cov-2"
    assert report.get("OBX[5]-3.1") == "94500-6" and report.get("OBX[5]-5.1") == "260373001"


def test_weekly_aggregates_count_without_identifiers(tmp_path: Path, catalogue: Catalogue) -> None:
    cases = CaseStore(tmp_path / "store.db")
    cases.record(incoming(catalogue, "1", oru("L1", when="20250312080000")))
    cases.record(incoming(catalogue, "2", oru("L2", when="20250312080000"), enterprise_id="E2"))
    settings = AggregateSettings(regions={"1": "LU001"})
    text = weekly_csv(cases, "2025-W11", settings)
    assert text.splitlines() == [
        "ReportingCountry,Subject,DateUsedForStatisticsISOWeek,AgeGroup,Gender,Region,NumberOfCases",
        "LU,sars-cov-2,2025-W11,45-64,F,LU001,2",
    ]
    assert "1980010112302" not in text and "TEST" not in text
    assert weekly_csv(cases, "2025-W12", settings).count("\n") == 1


def test_age_groups_and_weeks() -> None:
    t = parse_time("20250312") or 0.0
    bounds = [0, 1, 5, 15, 25, 45, 65]
    assert [age_group(b, t, bounds) for b in ("20241201", "20220101", "19500101", "", "20300101")] == [
        "<1",
        "1-4",
        "65+",
        "UNK",
        "UNK",
    ]
    assert iso_week(t) == "2025-W11"
    assert render_csv(count([], AggregateSettings()), AggregateSettings()).count("\n") == 1


def test_overdue_reports_and_gauge(tmp_path: Path, catalogue: Catalogue) -> None:
    cases = CaseStore(tmp_path / "store.db")
    up = cases.record(incoming(catalogue, "1", oru("L1")))
    case = cases.case(up.case_id)
    assert case is not None
    received = case.contributions[0].received_at
    assert overdue_reports(tmp_path / "store.db", 3600, now=received + 10) == []
    [late] = overdue_reports(tmp_path / "store.db", 3600, now=received + 7200)
    assert (late["case_id"], late["version"], late["waiting_seconds"]) == (up.case_id, 1, 7200)
    assert refresh_overdue(tmp_path / "store.db", 3600, now=received + 7200) == 1
    cases.mark_delivered(up.case_id, 1)
    assert refresh_overdue(tmp_path / "store.db", 3600, now=received + 7200) == 0


def test_negatives_never_reach_the_case_store(catalogue: Catalogue) -> None:
    assert split_by_disease(detect_hl7(parse(oru(value=NOT_DETECTED)), catalogue)) == {}


def test_the_shipped_settings_are_valid() -> None:
    settings = load_settings(SHIPPED.parent / "reporting.yaml")
    assert settings.aggregates.enabled and settings.timeliness.alert_after_seconds > 0


async def test_the_weekly_job_is_scheduled_and_writes_the_aggregate_file(
    tmp_path: Path, catalogue: Catalogue
) -> None:
    from engine.reporting.scheduler import start_reporting_jobs

    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "reporting.yaml").write_text(
        "aggregates: {directory: out, day_of_week: mon, hour: 6}\n"
    )
    CaseStore(tmp_path / "store.db").record(incoming(catalogue, "1", oru("L1", when="20250312080000")))
    jobs = start_reporting_jobs(tmp_path, type("Store", (), {"path": tmp_path / "store.db"})())
    assert jobs is not None
    try:
        job = jobs.scheduler.get_job("domi-weekly-aggregate")
        assert job is not None and job.next_run_time.weekday() == 0 and job.next_run_time.hour == 6
        written = await jobs.aggregate("2025-W11")
    finally:
        jobs.stop()
    assert written == tmp_path / "out" / "domi-aggregate-2025-W11.csv"
    assert written.read_text().splitlines()[1] == "LU,sars-cov-2,2025-W11,45-64,F,UNK,1"
    assert start_reporting_jobs(tmp_path / "nowhere", None) is None
