"""Steps `resolve_patient` and `mpi_adt` on real HL7 samples, and PIX/PDQ answers."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from engine.contracts import BuildContext
from engine.errors import Filtered, Rejected
from engine.formats.hl7v2 import parse
from engine.message import HL7V2, Message, SourceMeta
from engine.mpi.pix_pdq import respond
from engine.mpi.service import Mpi, mpi_from
from tests.unit.hl7_samples import ADT_A01_23, ORU_R01_25
from tests.unit.mpi_fixtures import make_mpi
from transforms.mpi_adt import Config as MpiAdtConfig
from transforms.mpi_adt import MpiAdt
from transforms.resolve_patient import Config, ResolvePatient


@pytest.fixture
def context(tmp_path: Path) -> BuildContext:
    mpi = make_mpi(tmp_path)
    return BuildContext(tmp_path, "lab", {"store": SimpleNamespace(path=mpi.storage.path), "mpi": mpi})


def message(raw: bytes) -> Message:
    return Message("lab", raw, HL7V2, SourceMeta("mllp"))


def step(context: BuildContext, **options: str) -> ResolvePatient:
    return ResolvePatient(Config(**options), context)


def with_pid(raw: bytes, pid: str) -> bytes:
    lines = raw.decode("utf-8").split("\r")
    return "\r".join(pid if line.startswith("PID|") else line for line in lines).encode("utf-8")


def test_lab_result_carries_the_enterprise_id(context: BuildContext) -> None:
    out = step(context)(message(ORU_R01_25))
    assert out.vars["enterprise_id"] == "E0000000001"
    assert out.hl7.get("PID-3[3].1") == "E0000000001"
    assert out.hl7.get("PID-3[3].4") == "PASSERELLE&2.999.1.99&ISO"
    assert b"E0000000001^^^PASSERELLE&2.999.1.99&ISO^PI" in out.content()
    again = step(context)(message(out.content()))  # reprocessing does not add the id twice
    assert again.hl7.get_all("PID-3[*].1").count("E0000000001") == 1


UNKNOWN_PID = "PID|1||X99^^^LABO-TEST&2.999.10&ISO^PI||INCONNU^MARIE||19991231|F"
DOUBTFUL_PID = "PID|1||X98^^^LABO-TEST&2.999.10&ISO^PI||FERREIRA||19900301|F|||5 RUE HAUTE^^ESCH^^4321"


def test_review_accept_continues_with_a_warning(context: BuildContext) -> None:
    out = step(context)(message(with_pid(ORU_R01_25, DOUBTFUL_PID)))
    assert "enterprise_id" not in out.vars and out.vars["mpi_outcome"] == "review"
    assert [f.severity for f in out.findings] == ["W"] and "identity review" in out.findings[0].text


def test_review_reject_is_an_ae_with_a_clear_finding(context: BuildContext) -> None:
    with pytest.raises(Rejected) as err:
        step(context, on_review="reject")(message(with_pid(ORU_R01_25, DOUBTFUL_PID)))
    assert err.value.ack_code == "AE" and "second-best candidate too close" in err.value.findings[0].text


def test_unknown_patient_can_be_held(context: BuildContext) -> None:
    with pytest.raises(Filtered):
        step(context, on_new="hold")(message(with_pid(ORU_R01_25, UNKNOWN_PID)))
    out = step(context)(message(with_pid(ORU_R01_25, UNKNOWN_PID)))
    assert out.vars["mpi_outcome"] == "new"


def test_missing_pid_is_rejected(context: BuildContext) -> None:
    raw = b"\r".join(s for s in ORU_R01_25.split(b"\r") if not s.startswith(b"PID"))
    with pytest.raises(Rejected):
        step(context)(message(raw))


def test_shared_instance_uses_the_store_file(tmp_path: Path) -> None:
    ctx = BuildContext(tmp_path, "lab", {"store": SimpleNamespace(path=tmp_path / "var" / "x.db")})
    mpi = mpi_from(ctx)
    assert mpi is mpi_from(ctx) and mpi.storage.path == tmp_path / "var" / "x.db"
    assert len(mpi.index) == 0  # an empty register is fine: every patient is `new`


def adt(event: str, pid: str, extra: str = "") -> bytes:
    msh = f"MSH|^~\\&|HIS|HOPITAL-TEST|PASSERELLE|DSP|20250314101500||ADT^{event}|ADT{event}|P|2.5"
    return "\r".join(x for x in (msh, f"EVN|{event}", pid, extra) if x).encode() + b"\r"


def test_adt_feed_creates_merges_and_unlinks(context: BuildContext) -> None:
    mpi: Mpi = context.services["mpi"]
    feed = MpiAdt(MpiAdtConfig(), context)
    out = feed(message(ADT_A01_23))
    assert out.vars["mpi_adt"] == "resolved" and out.vars["mpi_outcome"] in ("linked", "review", "new")
    linked = adt(
        "A01", "PID|1||H1^^^HOPITAL-TEST^PI||TEST^PATIENT||19800101|F|||1 RUE DE L'EXEMPLE^^LUXEMBOURG^^1234"
    )
    assert feed(message(linked)).vars["enterprise_id"] == "E0000000001"
    mpi.resolve_many([])
    second = adt("A04", "PID|1||H2^^^HOPITAL-TEST^PI||TEST^PATIENT||19800101|F")
    feed(message(second))
    merge = adt("A40", "PID|1||H1^^^HOPITAL-TEST^PI||TEST^PATIENT", "MRG|H2^^^HOPITAL-TEST^PI")
    assert feed(message(merge)).vars["mpi_adt"] == "merged"
    assert mpi.find_identity("HOPITAL-TEST", "H2") == 1
    unlink = adt("A37", "PID|1||H1^^^HOPITAL-TEST^PI||TEST^PATIENT")
    assert feed(message(unlink)).vars["mpi_adt"] == "unlinked"
    assert mpi.find_identity("HOPITAL-TEST", "H1") is None


def query(event: str, qpd: str, rcp: str = "RCP|I|10^RD") -> bytes:
    msh = f"MSH|^~\\&|CLIENT|HOSP|MPI|PLATFORM|20250314101500||QBP^{event}^QBP_Q21|Q{event}1|P|2.5"
    return "\r".join((msh, qpd, rcp)).encode() + b"\r"


def test_pix_lists_every_id_of_the_patient(context: BuildContext) -> None:
    mpi: Mpi = context.services["mpi"]
    step(context)(message(ORU_R01_25))
    rsp = parse(respond(parse(query("Q23", "QPD|IHE PIX Query|T1|P000123456^^^LABO-TEST")), mpi))
    assert (
        rsp.header.message_type == "RSP^K23^RSP_K23" and rsp.get("MSA-1") == "AA" and rsp.get("QAK-2") == "OK"
    )
    ids = set(zip(rsp.get_all("PID-3[*].1"), rsp.get_all("PID-3[*].4.1"), strict=True))
    assert ids == {("1980010112302", "RNPP"), ("E0000000001", "PASSERELLE")}
    unknown = parse(respond(parse(query("Q23", "QPD|IHE PIX Query|T2|NOPE^^^LABO-TEST")), mpi))
    assert (unknown.get("MSA-1"), unknown.get("QAK-2"), unknown.get("ERR-2")) == ("AE", "AE", "QPD^1^3^1^1")


def test_pdq_finds_by_demographics(context: BuildContext) -> None:
    mpi: Mpi = context.services["mpi"]
    rsp = parse(respond(parse(query("Q22", "QPD|IHE PDQ Query|T3|@PID.5.1.1^FERREIRA~@PID.7^19900301")), mpi))
    assert rsp.header.message_type == "RSP^K22^RSP_K22" and rsp.get("QAK-2") == "OK"
    assert sorted(rsp.get_all("PID[*]-5.2")) == ["Ana", "Rita"]
    by_name = parse(respond(parse(query("Q22", "QPD|IHE PDQ Query|T4|@PID.5.1.1^MUL*")), mpi))
    assert by_name.get_all("PID[*]-5.1") == ["Müller"]
    none = parse(respond(parse(query("Q22", "QPD|IHE PDQ Query|T5|@PID.5.1.1^ZZZ~@PID.7^20200101")), mpi))
    assert none.get("QAK-2") == "NF"
