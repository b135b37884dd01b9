"""Encryption at rest of the components' tables (engine/store/component_seal.py): the MPI register,
the DSP registry's patient ids and the notifiable cases are sealed or digested with the store's
keys; clear rows stored before still read; re-encryption seals them and follows key rotation; a
tampered or moved value is refused."""

from __future__ import annotations

import dataclasses
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from engine.cli import main
from engine.dsp.registry import PROTECTED as DSP_TABLES
from engine.dsp.registry import Query, Registry
from engine.errors import StoreError
from engine.mpi.model import Traits
from engine.mpi.pix_pdq import all_ids
from engine.mpi.register_load import apply_delta, load_register
from engine.mpi.review import list_items, show_item
from engine.mpi.service import Incoming, Mpi
from engine.mpi.storage import PROTECTED as MPI_TABLES
from engine.mpi.storage import REGISTER_KEY, TRAITS
from engine.reporting.cases import PROTECTED as CASE_TABLES
from engine.reporting.cases import SCHEMA as CASES_SCHEMA
from engine.reporting.cases import CaseStore
from engine.reporting.catalogue import Catalogue, load_catalogue
from engine.store.cipher import PayloadCipher, new_key_file
from engine.store.component_seal import ColumnSealer, reencrypt_components
from tests.support.engine_process import write_project
from tests.unit.hl7_samples import MATRICULE
from tests.unit.mpi_fixtures import REGISTER
from tests.unit.test_dsp_registry import entry
from tests.unit.test_reporting_cases import incoming
from tests.unit.test_reporting_detection import SHIPPED, oru

# What a copied database file must not show (all invented, from tests/unit/mpi_fixtures.py).
SECRETS = ("Ferreira", "Müller", "Weber", "Schmit", "19900301", "1975-06-15", "19750615", MATRICULE,
           "Rue Haute", "LAB-77-ABC")
FERREIRA = Traits(family="Ferreira", birth_date="19900301", sex="F", house_number="5", street="Rue Haute")


def cipher(
    folder: Path, active: str = "k1", keys: tuple[str, ...] = ("k1",), digest: bool = False
) -> PayloadCipher:
    files = {}
    for name in (*keys, *(("dk",) if digest else ())):
        path = folder / f"{name}.key"
        if not path.exists():
            new_key_file(path)
        files[name] = path
    digest_file = files.pop("dk", None)
    return PayloadCipher.from_files(files, active, digest_file)


def file_bytes(db: Path) -> bytes:
    """The database file and its WAL, as a copy of them would hold."""
    return b"".join(p.read_bytes() for p in (db, db.with_name(db.name + "-wal")) if p.exists())


def leaked(db: Path) -> list[str]:
    data = file_bytes(db)
    return [s for s in SECRETS if s.encode("utf-8") in data]


def mpi_on(folder: Path, c: PayloadCipher | None) -> Mpi:
    csv_file = folder / "register.csv"
    csv_file.write_text(REGISTER, encoding="utf-8")
    mpi = Mpi(folder / "passerelle.db", cipher=c)
    load_register(mpi, csv_file, "test", "fixture")
    return mpi


def test_equal_values_give_equal_digests_per_column(tmp_path: Path) -> None:
    sealer = ColumnSealer(cipher(tmp_path, digest=True))
    same = sealer.digest(MATRICULE, "mpi_identity.matricule")
    assert same == sealer.digest(MATRICULE, "mpi_identity.matricule") and MATRICULE not in same
    assert same != sealer.digest(MATRICULE, "dsp_document.matricule")  # one domain per column
    assert sealer.digest("", "mpi_identity.matricule") == ""  # absent stays absent
    assert ColumnSealer(None).lookup(MATRICULE, "mpi_identity.matricule") == (MATRICULE, None)


def test_an_encrypted_register_shows_no_identity_and_still_serves(tmp_path: Path) -> None:
    mpi = mpi_on(tmp_path, cipher(tmp_path))
    review = mpi.resolve(Incoming("LAB", "LAB-77-ABC", FERREIRA))
    assert review.outcome == "review" and review.review_id is not None
    assert leaked(tmp_path / "passerelle.db") == []
    [item] = list_items(mpi)
    assert item["local_id"] == "LAB-77-ABC" and item["candidates"] == 2
    shown = show_item(mpi, review.review_id)
    assert shown["incoming"]["family"] == "Ferreira"
    assert {c["traits"]["given"] for c in shown["candidates"]} == {"Ana", "Rita"}
    found = mpi.find_identity(mpi.config.national_authority, MATRICULE)
    assert found is not None and (mpi.config.national_authority, MATRICULE) in all_ids(mpi, found)
    again = mpi.resolve(Incoming("LAB", "LAB-77-ABC", FERREIRA))  # the same facility row, found by digest
    assert again.review_id == review.review_id
    reopened = Mpi(tmp_path / "passerelle.db", cipher=mpi.storage.sealer.cipher)
    assert len(reopened.index) == 7  # rebuilt from the sealed norms
    rita = dataclasses.replace(FERREIRA, given="Rita")
    assert reopened.resolve(Incoming("LAB", "X2", rita)).outcome == "linked"


def test_clear_rows_read_then_reencrypt_seals_them_and_follows_rotation(tmp_path: Path) -> None:
    db = tmp_path / "passerelle.db"
    clear = mpi_on(tmp_path, None)
    linked = clear.resolve(Incoming("LAB", "LAB-77-ABC", dataclasses.replace(FERREIRA, given="Ana")))
    clear.close()
    assert "Ferreira" in leaked(db)  # the control: the same check finds clear rows
    k1 = cipher(tmp_path)
    mixed = Mpi(db, cipher=k1)
    assert mixed.linked_identity("LAB", "LAB-77-ABC") == mixed.identity_id(linked.enterprise_id or "")
    assert mixed.find_identity(mixed.config.national_authority, MATRICULE) is not None
    assert reencrypt_components(db, k1, MPI_TABLES) > 0
    assert leaked(db) == []
    rotated = cipher(tmp_path, "k2", ("k1", "k2"))  # no digest_key: the digest secret changes too
    on_k2 = Mpi(db, cipher=rotated)
    assert on_k2.linked_identity("LAB", "LAB-77-ABC") is not None  # old digests still match
    assert reencrypt_components(db, rotated, MPI_TABLES) > 0
    assert reencrypt_components(db, rotated, MPI_TABLES) == 0  # all current now
    only_k2 = Mpi(db, cipher=cipher(tmp_path, "k2", ("k2",)))
    assert only_k2.linked_identity("LAB", "LAB-77-ABC") is not None
    assert only_k2.find_identity(only_k2.config.national_authority, MATRICULE) is not None
    assert len(only_k2.index) == 7


def test_a_delta_finds_sealed_rows_by_their_register_key(tmp_path: Path) -> None:
    mpi = mpi_on(tmp_path, cipher(tmp_path))
    delta = tmp_path / "delta-1.csv"
    delta.write_text(
        "op,register_id,matricule,family_name,given_names,birth_date,sex\n"
        "upsert,R3,,Ferreira-Costa,Ana,19900301,F\ndelete,R5,,,,,\nupsert,R8,,Weber,Anne,19700101,F\n",
        encoding="utf-8",
    )
    report = apply_delta(mpi, delta)
    assert report is not None and (report.updated, report.deleted, report.inserted) == (1, 1, 1)
    assert (mpi.identity_traits(3) or Traits()).family == "Ferreira-Costa"  # updated in place, no duplicate
    assert mpi.storage.one("SELECT status FROM mpi_identity WHERE id = 5") == ("deleted",)
    assert len(mpi.index) == 7 and leaked(tmp_path / "passerelle.db") == []


def test_a_tampered_or_moved_value_is_refused(tmp_path: Path) -> None:
    mpi = mpi_on(tmp_path, cipher(tmp_path))
    with mpi.storage.write() as c:
        stored = bytearray(c.execute("SELECT traits FROM mpi_identity WHERE id = 1").fetchone()[0])
        stored[-1] ^= 1
        c.execute("UPDATE mpi_identity SET traits = ? WHERE id = 1", (bytes(stored),))
        c.execute("UPDATE mpi_identity SET traits = norm WHERE id = 2")  # a sealed value moved
    for identity in (1, 2):
        with pytest.raises(StoreError, match="integrity"):
            mpi.identity_traits(identity)
    assert mpi.identity_traits(3) is not None
    with pytest.raises(StoreError, match="not configured"):
        Mpi(tmp_path / "passerelle.db").identity_traits(3)
    assert REGISTER_KEY != TRAITS


def test_dsp_patient_ids_are_digested_and_clear_rows_still_match(tmp_path: Path) -> None:
    db = tmp_path / "passerelle.db"
    clear = Registry(db)
    clear.close_record(MATRICULE, "dpo", "opt-out")
    clear.close()
    registry = Registry(db, sealer=ColumnSealer(cipher(tmp_path)))
    assert registry.close_record(MATRICULE, "dpo", "again") is False  # the clear closure still counts
    registry.register(entry("D^1"))
    [doc] = registry.documents(Query(matricule=MATRICULE))
    assert doc.matricule == MATRICULE and registry.get("D^1") == doc
    closed = registry.closure(MATRICULE)
    assert closed is not None and closed.patient == MATRICULE
    assert [r[3] for r in registry.audit_trail(MATRICULE)] == [MATRICULE, MATRICULE]
    assert reencrypt_components(db, cipher(tmp_path), DSP_TABLES) == 2  # the clear closure, its audit row
    assert MATRICULE.encode() not in file_bytes(db)
    assert registry.reopen_record(MATRICULE, "dpo", "back") and registry.closure(MATRICULE) is None


def test_cases_are_sealed_and_updated_through_the_digest(tmp_path: Path) -> None:
    catalogue: Catalogue = load_catalogue(SHIPPED)
    db = tmp_path / "store.db"
    k1 = cipher(tmp_path)
    cases = CaseStore(db, cipher=k1)
    first = cases.record(incoming(catalogue, "1", oru("L1", when="20250301080000"), enterprise_id=""))
    second = cases.record(incoming(catalogue, "2", oru("L2", when="20250305080000"), enterprise_id=""))
    assert (second.case_id, second.version, second.action) == (first.case_id, 2, "updated")
    case = cases.case(first.case_id)
    assert case is not None and case.patient_key == f"national:{MATRICULE}"
    assert case.contributions[0].detection.patient.birth_date == "19800101"
    [(_, _, born, _, _)] = cases.aggregate_rows(0, 2e9)
    assert born == "19800101"
    data = file_bytes(db)
    assert not any(s in data for s in (MATRICULE.encode(), b"19800101", b"TEST", b"1234"))
    rotated = cipher(tmp_path, "k2", ("k1", "k2"))
    assert reencrypt_components(db, rotated, CASE_TABLES) == 3  # one case, two contributions
    later = CaseStore(db, cipher=cipher(tmp_path, "k2", ("k2",)))
    third = later.record(incoming(catalogue, "3", oru("L3", when="20250306080000"), enterprise_id=""))
    assert (third.case_id, third.version) == (first.case_id, 3)


def test_a_column_is_added_inside_the_write_transaction(tmp_path: Path) -> None:
    """Regression: two processes opening a file of the previous version raced on ALTER TABLE (both
    saw `patient_key_sealed` missing; the second failed with a duplicate column)."""
    db = tmp_path / "store.db"
    other = sqlite3.connect(db, isolation_level=None)
    other.execute("PRAGMA journal_mode=WAL")
    other.executescript(CASES_SCHEMA.replace(",\n    patient_key_sealed", ""))  # the previous version
    other.execute("BEGIN IMMEDIATE")  # another process is upgrading the file...
    with ThreadPoolExecutor(1) as pool:
        opened = pool.submit(lambda: CaseStore(db).cases())  # ...while this one opens it
        time.sleep(0.5)  # lets the opener reach its schema step (no assertion on time)
        other.execute("ALTER TABLE reporting_cases ADD COLUMN patient_key_sealed")
        other.execute("COMMIT")
        assert opened.result(30) == []


FEED = """
source: {type: mllp, port: 0}
destinations:
  - {name: authority, type: reporting_feed, host: 127.0.0.1, database: var/cases.db}
"""


def test_store_reencrypt_walks_a_feed_s_own_case_file(tmp_path: Path) -> None:
    config = write_project(tmp_path, {"feed": FEED})
    cases = CaseStore(tmp_path / "var" / "cases.db")  # written before encryption was configured
    case = cases.record(incoming(load_catalogue(SHIPPED), "1", oru("L1"), enterprise_id=""))
    assert MATRICULE.encode() in file_bytes(tmp_path / "var" / "cases.db")
    k1 = cipher(tmp_path / "keys")
    config.write_text("store: {path: var/passerelle.db, encryption: {keys: {k1: keys/k1.key}, active: k1}}\n")
    assert main(["store", "reencrypt", "--config", str(config)]) == 0
    assert MATRICULE.encode() not in file_bytes(tmp_path / "var" / "cases.db")
    sealed = CaseStore(tmp_path / "var" / "cases.db", cipher=k1).case(case.case_id)
    assert sealed is not None and sealed.patient_key == f"national:{MATRICULE}"
