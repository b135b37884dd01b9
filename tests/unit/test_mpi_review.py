"""The review queue from the CLI: list, show, link, reject (remembered), merge, unmerge, audit."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from engine.mpi.cli import mpi_command
from engine.mpi.model import Traits
from engine.mpi.register_load import apply_delta
from engine.mpi.service import Incoming, Mpi
from tests.unit.mpi_fixtures import REGISTER

INCOMING = (
    "record_id,authority,local_id,matricule,family_name,birth_name,given_names,birth_date,sex,"
    "house_number,street,postcode,city\n"
    """1,LAB,P1,1980010112302,Test,,Patient,19800101,F,,,,
2,LAB,P3,,Ferreira,,Ana,19900301,M,5,Rue Haute,4321,Esch-sur-Alzette
3,LAB,P5,,Nobody,,Jane,20010101,F,,,,
"""
)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "engine.yaml").write_text("store: {path: var/passerelle.db}\n")
    (tmp_path / "register.csv").write_text(REGISTER, encoding="utf-8")
    (tmp_path / "incoming.csv").write_text(INCOMING, encoding="utf-8")
    return tmp_path


def run(project: Path, *args: str) -> int:
    return mpi_command(["--config", str(project / "config" / "engine.yaml"), *args])


def review_json(project: Path, capsys: pytest.CaptureFixture[str], *args: str) -> object:
    capsys.readouterr()
    assert run(project, "review", *args, "--json") == 0
    return json.loads(capsys.readouterr().out)


def test_link_writes_one_outcome_per_record(project: Path) -> None:
    assert run(project, "load-register", str(project / "register.csv")) == 0
    assert run(project, "link", str(project / "incoming.csv"), "--out", str(project / "links.csv")) == 0
    rows = list(csv.DictReader((project / "links.csv").read_text().splitlines()))
    assert [(r["record_id"], r["outcome"]) for r in rows] == [("1", "linked"), ("2", "review"), ("3", "new")]
    assert rows[0]["enterprise_id"] == "E0000000001" and float(rows[0]["score"]) > 0


def test_review_link_reject_and_audit(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run(project, "load-register", str(project / "register.csv"))
    run(project, "link", str(project / "incoming.csv"), "--out", str(project / "links.csv"))
    items = review_json(project, capsys, "list")
    assert isinstance(items, list) and len(items) == 1
    item = items[0]["id"]
    shown = review_json(project, capsys, "show", str(item))
    assert isinstance(shown, dict)
    assert [c["levels"]["sex"] for c in shown["candidates"]] == ["different", "different"]
    assert (
        run(project, "review", "reject", str(item), "E0000000004", "--user", "alice", "--reason", "sisters")
        == 0
    )
    assert (
        run(
            project,
            "review",
            "link",
            str(item),
            "E0000000003",
            "--user",
            "alice",
            "--reason",
            "sex mistyped at the lab",
        )
        == 0
    )
    assert run(project, "review", "link", str(item), "E0000000003", "--user", "bob", "--reason", "again") == 1
    capsys.readouterr()
    assert run(project, "audit", "--json") == 0
    audit = json.loads(capsys.readouterr().out)
    assert [(a["user"], a["action"], a["reason"]) for a in audit[:2]] == [
        ("alice", "review-link", "sex mistyped at the lab"),
        ("alice", "review-reject", "sisters"),
    ]


def test_rejected_pair_is_never_proposed_again(project: Path) -> None:
    run(project, "load-register", str(project / "register.csv"))
    mpi = Mpi(project / "var" / "passerelle.db")
    traits = Traits(family="Ferreira", birth_date="19900301", sex="F", house_number="5", street="Rue Haute")
    first = mpi.resolve(Incoming("LAB", "X1", traits))
    assert first.outcome == "review" and first.review_id is not None
    from engine.mpi.review import Actor, reject_item

    reject_item(mpi, first.review_id, "E0000000004", Actor("alice", "not her"))
    again = mpi.resolve(Incoming("LAB", "X1", traits))
    assert again.enterprise_id == "E0000000003"  # the only candidate left, no longer too close


def test_decisions_need_a_user_and_a_reason(project: Path) -> None:
    run(project, "load-register", str(project / "register.csv"))
    with pytest.raises(SystemExit):
        run(project, "review", "merge", "E0000000003", "E0000000004")
    assert run(project, "review", "merge", "E0000000003", "E0000000004", "--user", "a", "--reason", " ") == 1


def test_merge_moves_links_and_unmerge_restores_them(project: Path) -> None:
    run(project, "load-register", str(project / "register.csv"))
    mpi = Mpi(project / "var" / "passerelle.db")
    res = mpi.resolve(
        Incoming(
            "LAB",
            "F1",
            Traits(
                family="Ferreira",
                given="Rita",
                birth_date="19900301",
                sex="F",
                house_number="5",
                street="Rue Haute",
                postcode="4321",
            ),
        )
    )
    assert res.enterprise_id == "E0000000004"
    assert (
        run(project, "review", "merge", "E0000000003", "E0000000004", "--user", "a", "--reason", "duplicate")
        == 0
    )
    assert mpi.find_identity("LAB", "F1") == 3
    assert len(mpi.index) == 6
    assert run(project, "review", "unmerge", "E0000000004", "--user", "a", "--reason", "twins after all") == 0
    assert mpi.find_identity("LAB", "F1") == 4
    assert len(mpi.index) == 7


def test_delta_file_upserts_and_deletes_once(project: Path) -> None:
    run(project, "load-register", str(project / "register.csv"))
    mpi = Mpi(project / "var" / "passerelle.db")
    delta = project / "delta-20250315.csv"
    delta.write_text(
        "op,register_id,family_name,given_names,birth_date,sex\n"
        "upsert,R8,Hoffmann,Claude,19500505,M\ndelete,R7,,,,\n",
        encoding="utf-8",
    )
    report = apply_delta(mpi, delta)
    assert report is not None and (report.inserted, report.deleted) == (1, 1)
    assert apply_delta(mpi, delta) is None
    found = mpi.resolve(
        Incoming("LAB", "H1", Traits(family="Hofmann", given="Claude", birth_date="19500505", sex="M"))
    )
    assert found.outcome in ("linked", "review") and len(mpi.index) == 7


def test_weights_estimate_is_stored_and_shown(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run(project, "load-register", str(project / "register.csv"))
    assert (
        run(project, "weights", "estimate", str(project / "incoming.csv"), "--user", "a", "--reason", "test")
        == 0
    )
    capsys.readouterr()
    assert run(project, "weights", "show") == 0
    assert "source em:incoming.csv" in capsys.readouterr().out


def test_refresh_job_applies_new_delta_files_in_name_order(project: Path) -> None:
    from engine.mpi.register_load import apply_new_deltas, start_refresh

    run(project, "load-register", str(project / "register.csv"))
    mpi = Mpi(project / "var" / "passerelle.db")
    folder = project / "delta"
    folder.mkdir()
    (folder / "d1.csv").write_text("op,register_id,family_name,birth_date\nupsert,R9,Kayser,19700101\n")
    (folder / "d2.csv").write_text("op,register_id,family_name,birth_date\ndelete,R9,,\n")
    assert apply_new_deltas(mpi, folder) == 2
    assert apply_new_deltas(mpi, folder) == 0
    assert len(mpi.index) == 7
    scheduler = start_refresh(mpi, folder)
    try:
        assert {job.id for job in scheduler.get_jobs()} == {"mpi-delta-daily"}
    finally:
        scheduler.shutdown(wait=False)
