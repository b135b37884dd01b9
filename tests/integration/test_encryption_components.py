"""Encryption at rest of the components' tables, end to end on a real engine: a register loaded by
the CLI, a lab result over MLLP through the MPI into the DSP, a review item, a closed DSP and a
notifiable case (v1, then v2) on an encrypted store. A copy of the database file and its WAL holds
none of the sample identities, before and after a key rotation with `passerelle store reencrypt`
(run while the engine serves); the review CLI, a PIX query, `dsp list --patient` and the case's
update still work with the old key removed. The component tables live in the SQLite file only:
the MPI and the DSP do not run on the PostgreSQL store (engine/dsp/service.py refuses it)."""

from __future__ import annotations

import io
import json
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import redirect_stdout
from pathlib import Path

import pytest

from engine.cli import main
from engine.dsp.cli import dsp_command
from engine.dsp.registry import Query
from engine.dsp.service import Dsp
from engine.formats.hl7v2 import Hl7Message, parse
from engine.mpi.cli import mpi_command
from engine.mpi.model import Traits
from engine.mpi.service import Incoming, Mpi
from engine.reporting.cases import CaseStore, Upsert
from engine.reporting.catalogue import load_catalogue
from engine.reporting.cli import reporting_command
from engine.store.cipher import PayloadCipher
from tests.support.engine_process import write_project
from tests.support.engine_thread import EngineThread
from tests.support.mllp_peers import MllpClient
from tests.unit.hl7_samples import MATRICULE, ORU_R01_25
from tests.unit.mpi_fixtures import REGISTER
from tests.unit.test_reporting_cases import incoming
from tests.unit.test_reporting_detection import SHIPPED, oru

LAB = """
respond_after: processed
source: {type: mllp, port: 0}
steps:
  - {type: filter_message_type, accept: [ORU^R01], on_mismatch: reject}
  - {type: resolve_patient, national_authority: RNPP, on_review: accept, on_new: accept}
  - {type: dsp_check, national_authority: RNPP}
  - {type: hl7_to_cda_lab, national_authority: RNPP}
destinations:
  - {name: dsp, type: dsp_store, queue: {max_attempts: 3, initial_backoff: 0.1}}
"""
QUERIES = """
respond_after: received
source: {type: pix_pdq, port: 0}
"""
CLOSED = "1962071400003"  # a closed DSP (an id given by the DPO, never a register row here)
# What a copy of the database must not show: the register's names, birth names, birth dates,
# matricule and addresses (tests/unit/mpi_fixtures.py), the lab's local id, the reviewed local id.
SECRETS = ("Ferreira", "Müller", "Weber", "Schmit", "Da Silva Santos", "Rue Haute", "Hollerich",
           "19900301", "19750615", "1975-06-15", "19620714", "19851123", "19800101",
           MATRICULE, CLOSED, "P000123456", "LAB-77-ABC")


def engine_yaml(keys: tuple[str, ...], active: str) -> str:
    listed = ", ".join(f"{k}: keys/{k}.key" for k in keys)
    return (f"store: {{path: var/passerelle.db, encryption: {{keys: {{{listed}}}, active: {active}}}}}\n"
            "reload_interval: 0\n")


@pytest.fixture
def project(tmp_path: Path) -> Path:
    config = write_project(tmp_path, {"lab": LAB, "mpi-queries": QUERIES}, engine_yaml(("k1",), "k1"))
    for name in ("k1", "k2"):
        assert main(["store", "new-key", str(tmp_path / "keys" / f"{name}.key")]) == 0
    (tmp_path / "register.csv").write_text(REGISTER, encoding="utf-8")
    assert mpi_command(["--config", str(config), "load-register", str(tmp_path / "register.csv")]) == 0
    return config


@pytest.fixture
def running(project: Path) -> Iterator[Callable[[], EngineThread]]:
    """Starts the engine on the project's current engine.yaml; stops whatever it started."""
    engines: list[EngineThread] = []

    def start() -> EngineThread:
        if engines:
            engines.pop().stop()
        engines.append(EngineThread(project).start())
        return engines[-1]

    yield start
    for engine in engines:
        engine.stop()


def copied(config: Path, folder: Path) -> bytes:
    """The database file and its WAL as a file copy (a backup, a stolen disk) holds them."""
    folder.mkdir(exist_ok=True)
    db = config.parent.parent / "var" / "passerelle.db"
    data = b""
    for source in (db, db.with_name(db.name + "-wal")):
        if source.exists():
            shutil.copy(source, folder / source.name)
            data += (folder / source.name).read_bytes()
    return data


def leaked(data: bytes) -> list[str]:
    return [s for s in SECRETS if s.encode("utf-8") in data]


def exchange(engine: EngineThread, channel: str, payload: bytes) -> Hl7Message:
    with MllpClient(engine.port(channel)) as client:
        return parse(client.send(payload))


def pix(engine: EngineThread) -> set[str]:
    msh = f"MSH|^~\\&|CLIENT|HOSP|MPI|PLATFORM|20250314101500||QBP^Q23^QBP_Q21|P{time.time_ns()}|P|2.5"
    query = "\r".join((msh, "QPD|IHE PIX Query|T1|P000123456^^^LABO-TEST", "RCP|I|10^RD")) + "\r"
    answer = exchange(engine, "mpi-queries", query.encode())
    assert answer.get("QAK-2") == "OK"
    return set(answer.get_all("PID-3[*].1"))


def dsp_of(engine: EngineThread) -> Dsp:
    dsp = engine.engine.services["dsp"]
    assert isinstance(dsp, Dsp)
    return dsp


def mpi_of(engine: EngineThread) -> Mpi:
    mpi = engine.engine.services["mpi"]
    assert isinstance(mpi, Mpi)
    return mpi


def cipher_of(engine: EngineThread) -> PayloadCipher:
    c = engine.engine.services["store"].cipher
    assert isinstance(c, PayloadCipher)
    return c


def record_case(engine: EngineThread, key: str, when: str) -> Upsert:
    """A notifiable result of the sample patient, recorded as the reporting feed records it."""
    cases = CaseStore(engine.engine.services["store"].path, cipher=cipher_of(engine))
    return cases.record(incoming(load_catalogue(SHIPPED), key, oru(key, when=when), enterprise_id=""))


def run_cli(command: Callable[[list[str]], int], *argv: str) -> str:
    out = io.StringIO()
    with redirect_stdout(out):
        assert command(list(argv)) == 0
    return out.getvalue()


def first_traffic(engine: EngineThread) -> tuple[int, str]:
    """The lab result into the DSP, a review item, a closed DSP, a case: (review id, case id)."""
    assert exchange(engine, "lab", ORU_R01_25).get("MSA-1") == "AA"
    deadline = time.monotonic() + 30
    while not dsp_of(engine).registry.documents(Query(matricule=MATRICULE)) and time.monotonic() < deadline:
        time.sleep(0.05)
    ferreira = Traits(family="Ferreira", birth_date="19900301", sex="F", house_number="5", street="Rue Haute")
    review = mpi_of(engine).resolve(Incoming("LAB", "LAB-77-ABC", ferreira))
    assert review.outcome == "review" and review.review_id is not None
    dsp_of(engine).registry.close_record(CLOSED, "dpo@example.test", "opt-out form")
    case = record_case(engine, "L1", "20250301080000")
    assert (case.version, case.action) == (1, "new")
    return review.review_id, case.case_id


def test_identities_stay_sealed_through_a_key_rotation(project: Path, running: Callable[[], EngineThread],
                                                        tmp_path: Path) -> None:
    engine = running()
    review_id, case_id = first_traffic(engine)
    assert pix(engine) == {MATRICULE, "E0000000001"}
    assert leaked(copied(project, tmp_path / "copy-k1")) == []

    project.write_text(engine_yaml(("k1", "k2"), "k2"))  # rotation: k2 active, the engine restarted
    engine = running()
    during = record_case(engine, "L2", "20250305080000")  # found by its k1-derived digest
    assert (during.case_id, during.version) == (case_id, 2)
    assert main(["store", "reencrypt", "--config", str(project)]) == 0  # while the engine serves
    assert pix(engine) == {MATRICULE, "E0000000001"}
    project.write_text(engine_yaml(("k2",), "k2"))  # the old key removed
    engine = running()
    assert leaked(copied(project, tmp_path / "copy-k2")) == []

    assert pix(engine) == {MATRICULE, "E0000000001"}
    listed = json.loads(run_cli(mpi_command, "--config", str(project), "review", "list", "--json"))
    assert [(i["id"], i["local_id"]) for i in listed] == [(review_id, "LAB-77-ABC")]
    show = ("--config", str(project), "review", "show", str(review_id), "--json")
    shown = json.loads(run_cli(mpi_command, *show))
    assert shown["incoming"]["family"] == "Ferreira" and len(shown["candidates"]) == 2
    documents = run_cli(dsp_command, "--config", str(project), "list", "--patient", MATRICULE, "--json")
    [document] = json.loads(documents)
    assert document["matricule"] == MATRICULE and document["type_code"] == "11502-2"
    assert dsp_of(engine).registry.closure(CLOSED) is not None
    update = record_case(engine, "L3", "20250306080000")
    assert (update.case_id, update.version, update.action) == (case_id, 3, "updated")
    db = str(project.parent.parent / "var" / "passerelle.db")
    report = run_cli(reporting_command, "cases", "show", case_id, "--db", db, "--catalogue", str(SHIPPED),
                     "--engine-config", str(project))
    assert MATRICULE in report and "19800101" in report  # the authority's report shows the patient


def test_the_same_check_finds_identities_in_a_clear_store(tmp_path: Path) -> None:
    """The control: without `store.encryption` the same copy shows the identities."""
    config = write_project(tmp_path, {"lab": LAB, "mpi-queries": QUERIES})
    (tmp_path / "register.csv").write_text(REGISTER, encoding="utf-8")
    assert mpi_command(["--config", str(config), "load-register", str(tmp_path / "register.csv")]) == 0
    engine = EngineThread(config).start()
    try:
        assert exchange(engine, "lab", ORU_R01_25).get("MSA-1") == "AA"
        found = leaked(copied(config, tmp_path / "copy"))
    finally:
        engine.stop()
    assert {"Ferreira", "Weber", "19900301", MATRICULE, "P000123456"} <= set(found)
