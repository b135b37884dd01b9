"""The DSP registry and repository: one entry per document id, versions that replace each other
whatever order they arrive in, patient listings with filters, audited closures, and blobs that
are verified on every read."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from engine.dsp.registry import DocumentConflict, Entry, Query, Registry
from engine.dsp.repository import IntegrityError, Repository
from tests.unit.hl7_samples import MATRICULE


def entry(document_id: str, version: int = 1, replaces: str = "", **changes: object) -> Entry:
    base = Entry(document_id=document_id, set_id="2.999.1^SET-1", version=version, replaces=replaces,
                 type_code="11502-2", type_name="Laboratory report", title="Lab", mime="application/cda+xml",
                 effective_time="20250314093000+0100", confidentiality="N", matricule=MATRICULE,
                 enterprise_id="E0000000001", author="", author_organization="", custodian="",
                 sha256=f"{version:064x}", size=10, source="lab")
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    return Registry(tmp_path / "passerelle.db")


def statuses(registry: Registry) -> dict[str, str]:
    return {e.document_id: e.status for e in registry.documents(Query(matricule=MATRICULE))}


def test_the_same_document_twice_is_one_entry(registry: Registry) -> None:
    first, new = registry.register(entry("D^1"))
    again, new_again = registry.register(entry("D^1"))
    assert (new, new_again) == (True, False) and again.stored_at == first.stored_at
    with pytest.raises(DocumentConflict, match="already stored with different content"):
        registry.register(entry("D^1", sha256="f" * 64))
    assert registry.count() == 1


@pytest.mark.parametrize("order", [("v1", "v2"), ("v2", "v1")])
def test_a_replacement_deprecates_the_previous_version_in_any_order(registry: Registry,
                                                                    order: tuple[str, str]) -> None:
    docs = {"v1": entry("D^1"), "v2": entry("D^2", version=2, replaces="D^1")}
    for name in order:
        registry.register(docs[name])
    assert statuses(registry) == {"D^1": "deprecated", "D^2": "current"}
    latest = registry.latest("2.999.1^SET-1")
    assert latest is not None and latest.document_id == "D^2"


def test_listing_filters_by_type_status_and_dates(registry: Registry) -> None:
    registry.register(entry("D^1", effective_time="20250101"))
    registry.register(entry("D^2", version=2, replaces="D^1", effective_time="20250301"))
    registry.register(entry("K^1", set_id="K^1", type_code="18748-4", effective_time="20250201120000"))

    def ids(**q: object) -> list[str]:
        return [e.document_id for e in registry.documents(Query(matricule=MATRICULE, **q))]  # type: ignore[arg-type]

    assert ids() == ["D^2", "K^1", "D^1"]  # newest first
    assert ids(type_code="18748-4") == ["K^1"]
    assert ids(status="current") == ["D^2", "K^1"]
    assert ids(date_from="20250201", date_to="20250201") == ["K^1"]
    assert ids(limit=1) == ["D^2"]
    by_enterprise = registry.documents(Query(enterprise_id="E0000000001"))
    assert len(by_enterprise) == 3
    assert registry.documents(Query(matricule="1975061504286")) == []


def test_closing_and_reopening_a_dsp_is_audited(registry: Registry) -> None:
    assert registry.closure(MATRICULE) is None
    assert registry.close_record(MATRICULE, "dpo", "opt-out form") is True
    assert registry.close_record(MATRICULE, "dpo", "again") is False
    closed = registry.closure("", MATRICULE)
    assert closed is not None and (closed.closed_by, closed.reason) == ("dpo", "opt-out form")
    assert registry.reopen_record(MATRICULE, "dpo", "patient changed their mind") is True
    assert registry.closure(MATRICULE) is None
    assert [row[2] for row in registry.audit_trail(MATRICULE)] == ["close", "close", "reopen"]


def test_blobs_are_content_addressed_and_verified(tmp_path: Path) -> None:
    repository = Repository(tmp_path / "blobs")
    sha = repository.put(b"<ClinicalDocument/>")
    assert repository.put(b"<ClinicalDocument/>") == sha
    assert repository.get(sha) == b"<ClinicalDocument/>"
    assert [p.name for p in (tmp_path / "blobs").rglob("*") if p.is_file()] == [sha]  # no temporary left
    repository.path(sha).write_bytes(b"<ClinicalDocument>altered</ClinicalDocument>")
    with pytest.raises(IntegrityError, match="damaged"):
        repository.get(sha)
    with pytest.raises(IntegrityError, match="missing"):
        repository.get("0" * 64)


@pytest.mark.parametrize(("sql", "params"), [
    ("SELECT id FROM dsp_document WHERE enterprise_id = ? ORDER BY sort_time DESC LIMIT 10", ("E1",)),
    ("SELECT id FROM dsp_document WHERE matricule = ? ORDER BY sort_time DESC LIMIT 10", (MATRICULE,)),
    ("SELECT 1 FROM dsp_document WHERE replaces = ? OR (set_id = ? AND version > ?)", ("D^1", "S", 1)),
])
def test_listings_and_version_checks_use_an_index(registry: Registry, sql: str,
                                                  params: tuple[object, ...]) -> None:
    # Regression: a partial index (WHERE enterprise_id != '') is not usable for `enterprise_id = ?`,
    # which made every enterprise-id listing scan a million rows (bench/BENCHMARKS.md, DSP).
    plan = " ".join(str(row[-1]) for row in registry.conn.execute(f"EXPLAIN QUERY PLAN {sql}", params))
    assert "SCAN dsp_document" not in plan and "INDEX" in plan
