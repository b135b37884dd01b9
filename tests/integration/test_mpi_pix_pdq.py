"""The MPI end to end over real MLLP sockets: a lab result leaves carrying the enterprise id, and
PIX/PDQ queries are answered RSP^K23/K22 (the queries are stored like any message)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.formats.hl7v2 import Hl7Message, parse
from engine.mpi.register_load import load_register
from engine.mpi.service import Mpi
from tests.support.engine_process import write_project
from tests.support.engine_thread import EngineThread
from tests.support.mllp_peers import MllpClient
from tests.unit.hl7_samples import ORU_R01_25
from tests.unit.mpi_fixtures import REGISTER

LAB = """
respond_after: processed
source: {{type: mllp, port: 0}}
steps:
  - {{type: validate_hl7, required_fields: [PID-3]}}
  - {{type: resolve_patient, on_review: accept}}
destinations:
  - {{name: out, type: file, directory: {out}}}
"""
QUERIES = """
respond_after: received
source: {type: pix_pdq, port: 0}
"""


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[EngineThread]:
    config = write_project(tmp_path, {"lab": LAB.format(out=tmp_path / "out"), "mpi-queries": QUERIES})
    (tmp_path / "register.csv").write_text(REGISTER, encoding="utf-8")
    mpi = Mpi(tmp_path / "var" / "passerelle.db")
    load_register(mpi, tmp_path / "register.csv", "test", "fixture")
    mpi.close()
    running = EngineThread(config).start()
    yield running
    running.stop()


def exchange(engine: EngineThread, channel: str, payload: bytes) -> Hl7Message:
    with MllpClient(engine.port(channel)) as client:
        return parse(client.send(payload))


def query(event: str, qpd: str) -> bytes:
    control = f"Q{event}{time.time_ns()}"
    msh = f"MSH|^~\\&|CLIENT|HOSP|MPI|PLATFORM|20250314101500||QBP^{event}^QBP_Q21|{control}|P|2.5"
    return "\r".join((msh, qpd, "RCP|I|10^RD")).encode() + b"\r"


def delivered(folder: Path) -> bytes:
    for _ in range(500):
        # Not the destination's `.NAME.tmp` while it is being written (read empty once: a failed run).
        files = sorted(folder.glob("[!.]*")) if folder.exists() else []
        if files:
            return files[0].read_bytes()
        time.sleep(0.02)
    raise AssertionError("nothing delivered")


def test_lab_result_pix_and_pdq(engine: EngineThread, tmp_path: Path) -> None:
    ack = exchange(engine, "lab", ORU_R01_25)
    assert ack.get("MSA-1") == "AA"
    assert b"E0000000001^^^PASSERELLE&2.999.1.99&ISO^PI" in delivered(tmp_path / "out")

    pix = exchange(engine, "mpi-queries", query("Q23", "QPD|IHE PIX Query|T1|P000123456^^^LABO-TEST"))
    assert (pix.header.message_type, pix.get("MSA-1"), pix.get("QAK-2")) == ("RSP^K23^RSP_K23", "AA", "OK")
    assert set(pix.get_all("PID-3[*].1")) == {"1980010112302", "E0000000001"}

    pdq = exchange(
        engine, "mpi-queries", query("Q22", "QPD|IHE PDQ Query|T2|@PID.5.1.1^FERREIRA~@PID.7^19900301")
    )
    assert pdq.header.message_type == "RSP^K22^RSP_K22" and pdq.count("PID") == 2

    stats = engine.call(engine.engine.store.stats())
    assert sum(stats["channels"]["mpi-queries"]["messages"].values()) == 2  # stored for audit
