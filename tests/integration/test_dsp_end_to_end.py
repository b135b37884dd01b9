"""Lab results into the DSP, end to end over real MLLP sockets: ORU^R01 -> resolve_patient ->
dsp_check -> hl7_to_cda_lab -> validate_schematron/xsd -> dsp_store, then back out through the
query API and the `passerelle dsp` CLI. Corrections replace, duplicates collapse, a closed or
unknown patient is refused in the ACK with the reason."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Iterator
from contextlib import redirect_stdout
from pathlib import Path

import hl7
import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

from engine.contracts import Intake, Verdict
from engine.dsp.api import dsp_routes
from engine.dsp.registry import Entry, Query
from engine.dsp.service import Dsp
from engine.formats.cda import metadata, parse_xml
from engine.formats.dicom_manifest import ManifestSpec, build_manifest
from engine.formats.sniff import content_id
from engine.message import DICOM, SourceMeta
from engine.validation.rulesets import Registry
from tests.support.engine_process import write_project
from tests.support.engine_thread import EngineThread
from tests.support.mllp_peers import MllpClient
from tests.unit.hl7_samples import MATRICULE, ORU_R01_25
from tests.unit.test_dicom_manifest import ct_image, xml2dcm

REPO = Path(__file__).resolve().parents[2]
SEED = REPO / "config" / "dsp-demo-register.csv"
CLOSED_PATIENT = "1990020200149"  # in the demo register (EXEMPLE CLAIRE, 1990-02-02, F)
UNKNOWN_PATIENT = "1965070012343"  # valid check digits; removed from this test's register below

CHANNEL = """
respond_after: processed
source: {type: mllp, port: 0, charset: "8859/1"}
steps:
  - {type: filter_message_type, accept: [ORU^R01], on_mismatch: reject}
  - {type: validate_hl7, required_fields: [PID-3, OBR-4, "OBX[*]-3"]}
  - {type: resolve_patient, national_authority: RNPP, on_review: accept, on_new: accept}
  - {type: dsp_check, national_authority: RNPP}
  - {type: hl7_to_cda_lab, national_authority: RNPP}
  - {type: validate_schematron, rules: lab-report}
  - {type: validate_xsd, schema_name: sdtc}
destinations:
  - {name: dsp, type: dsp_store, queue: {max_attempts: 3, initial_backoff: 0.1}}
"""


# The imaging channel as channels/imaging-manifests.yaml has it, fed in-process (a DICOM file as
# an SFTP source hands it over) instead of through an SFTP server.
IMAGING = """
respond_after: processed
source: {type: mllp, port: 0}
steps:
  - {type: dsp_check, national_authority: RNPP}
destinations:
  - {name: dsp, type: dsp_store, queue: {max_attempts: 3, initial_backoff: 0.1}}
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    config = write_project(tmp_path, {"lab": CHANNEL, "imaging": IMAGING})
    (tmp_path / "schematron").symlink_to(REPO / "schematron")
    seed = tmp_path / "register.csv"
    seed.write_text("".join(line for line in SEED.read_text().splitlines(keepends=True)
                            if UNKNOWN_PATIENT not in line), encoding="utf-8")
    (tmp_path / "config" / "dsp.yaml").write_text(f"mpi_seed_register: {seed}\n", encoding="utf-8")
    return config


@pytest.fixture
def engine(project: Path) -> Iterator[EngineThread]:
    running = EngineThread(project).start()
    yield running
    running.stop()


def dsp_of(engine: EngineThread) -> Dsp:
    dsp = engine.engine.services["dsp"]
    assert isinstance(dsp, Dsp)
    return dsp


def oru(control_id: str, matricule: str = MATRICULE, corrected: bool = False) -> bytes:
    """The sample ORU with a new MSH-10 (and patient); `corrected`: OBX 3 corrected (OBX-11 C)."""
    text = ORU_R01_25.decode("utf-8").replace("LAB20250314000123", control_id).replace(MATRICULE, matricule)
    if corrected:
        text = text.replace("|13.8|g/dL^^UCUM|12.0-16.0|N|||F", "|12.9|g/dL^^UCUM|12.0-16.0|N|||C")
    return text.encode("utf-8")


def send(engine: EngineThread, payload: bytes) -> hl7.Message:
    with MllpClient(engine.port("lab")) as client:
        return hl7.parse(client.send(payload).decode("utf-8"))


def ack_code(ack: hl7.Message) -> str:
    return str(ack.segment("MSA")[1])


def err_texts(ack: hl7.Message) -> list[tuple[str, str]]:
    """(ERR-3.1 code or ERR-5 rule, ERR-8 text) of each ERR segment."""
    found = []
    for err in ack.segments("ERR"):
        rule = str(err[5]) if len(err) > 5 else ""
        found.append((rule or str(err[3][0][0]), ack.unescape(str(err[8]))))
    return found


def documents(dsp: Dsp, matricule: str = MATRICULE) -> list[Entry]:
    return dsp.registry.documents(Query(matricule=matricule))


def wait_for(dsp: Dsp, count: int, matricule: str = MATRICULE) -> list[Entry]:
    deadline = time.monotonic() + 30
    while len(found := documents(dsp, matricule)) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    return found


class Api:
    """The DSP routes mounted as the dashboard mounts them, called in-process (no auth here)."""

    def __init__(self, dsp: Dsp) -> None:
        self.app = Starlette(routes=[Mount("/api/dsp", routes=dsp_routes(dsp))])

    def get(self, path: str, params: dict[str, str] | None = None) -> httpx.Response:
        async def call() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://dsp.test") as client:
                return await client.get(path, params=params)

        return asyncio.run(call())


def api(dsp: Dsp) -> Api:
    return Api(dsp)


def valid_lab_report(xml: bytes) -> bool:
    rules = Registry(REPO, None)
    tree = parse_xml(xml)
    issues = rules.schematron(tree, rules.resolve("lab-report")) + rules.xsd(tree, "sdtc")
    return not [i for i in issues if i.severity == "E"]


def test_an_oru_becomes_a_valid_cda_in_the_dsp_and_comes_back_out(engine: EngineThread) -> None:
    ack = send(engine, oru("E2E-1"))
    assert ack_code(ack) == "AA", err_texts(ack)
    [entry] = wait_for(dsp_of(engine), 1)
    assert (entry.type_code, entry.status, entry.version) == ("11502-2", "current", 1)
    assert entry.enterprise_id  # resolved by the MPI and kept, so either id finds the document

    client = api(dsp_of(engine))
    listing = client.get("/api/dsp/documents", params={"patient": MATRICULE, "type": "11502-2"}).json()
    assert [d["document_id"] for d in listing["documents"]] == [entry.document_id]
    by_enterprise = client.get("/api/dsp/documents", params={"patient": entry.enterprise_id}).json()
    assert by_enterprise["count"] == 1
    content = client.get(f"/api/dsp/documents/{entry.document_id}/content")
    assert content.status_code == 200 and content.headers["content-type"].startswith("application/cda+xml")
    assert valid_lab_report(content.content)
    national = ("470c5913-065e-4720-a3b6-e9d38a4e18eb", MATRICULE)
    assert national in metadata(parse_xml(content.content)).patient_ids


def test_the_cli_lists_and_gets_what_the_engine_stored(engine: EngineThread, project: Path,
                                                       tmp_path: Path) -> None:
    from engine.dsp.cli import dsp_command

    assert ack_code(send(engine, oru("E2E-CLI"))) == "AA"
    [entry] = wait_for(dsp_of(engine), 1)
    out = io.StringIO()
    with redirect_stdout(out):
        assert dsp_command(["--config", str(project), "list", "--patient", MATRICULE]) == 0
    assert entry.document_id in out.getvalue() and "current" in out.getvalue()
    target = tmp_path / "report.xml"
    assert dsp_command(["--config", str(project), "get", entry.document_id, "--out", str(target)]) == 0
    assert valid_lab_report(target.read_bytes())


def test_the_same_result_sent_twice_is_one_document(engine: EngineThread) -> None:
    assert ack_code(send(engine, oru("DUP-1"))) == "AA"
    wait_for(dsp_of(engine), 1)
    assert ack_code(send(engine, oru("DUP-2"))) == "AA"  # a re-send under a new control id
    time.sleep(0.5)
    assert len(documents(dsp_of(engine))) == 1


def test_a_correction_replaces_the_report(engine: EngineThread) -> None:
    assert ack_code(send(engine, oru("COR-1"))) == "AA"
    [original] = wait_for(dsp_of(engine), 1)
    assert ack_code(send(engine, oru("COR-2", corrected=True))) == "AA"
    found = wait_for(dsp_of(engine), 2)
    latest, previous = found if found[0].version == 2 else found[::-1]
    assert (latest.status, latest.replaces) == ("current", original.document_id)
    assert latest.set_id == original.set_id
    assert previous.document_id == original.document_id and previous.status == "deprecated"
    wanted = {"patient": MATRICULE, "status": "current"}
    current = api(dsp_of(engine)).get("/api/dsp/documents", params=wanted)
    assert [d["version"] for d in current.json()["documents"]] == [2]
    assert b'value="12.9"' in dsp_of(engine).content(latest)


def test_a_closed_dsp_is_refused_in_the_ack_with_the_reason(engine: EngineThread) -> None:
    dsp_of(engine).registry.close_record(CLOSED_PATIENT, "dpo@example.test", "patient opt-out form 2025-03")
    ack = send(engine, oru("CLOSED-1", matricule=CLOSED_PATIENT))
    assert ack_code(ack) == "AE"
    [(rule, text)] = err_texts(ack)
    assert rule == "dsp-closed" and "closed their shared care record" in text
    time.sleep(0.3)
    assert documents(dsp_of(engine), CLOSED_PATIENT) == []


def test_a_patient_unknown_to_the_mpi_is_refused_with_204(engine: EngineThread) -> None:
    ack = send(engine, oru("UNKNOWN-1", matricule=UNKNOWN_PATIENT))
    assert ack_code(ack) == "AE"
    assert any(code == "204" and "not known" in text for code, text in err_texts(ack))
    assert documents(dsp_of(engine), UNKNOWN_PATIENT) == []


def drop_file(engine: EngineThread, raw: bytes) -> Verdict:
    """Hand a .dcm file to the imaging channel as the SFTP source does; the verdict it gets."""
    channel = next(c for c in engine.engine.channels if c.name == "imaging")
    intake = Intake(raw, SourceMeta("sftp", peer="127.0.0.1", filename="manifest.dcm"), DICOM,
                    control_id=content_id(raw), sender="radiology")
    return engine.call(channel.accept(intake)).verdict


def kos(sop_instance_uid: str, patient_id: str = MATRICULE) -> bytes:
    return build_manifest(ManifestSpec(patient_id, "RNPP", "ACC-7", "2.999.30.7", "2.999.30.7.1",
                                       ("2.999.30.7.1.1",), sop_instance_uid))


def test_kos_manifests_from_pydicom_and_dcmtk_become_imaging_entries(engine: EngineThread,
                                                                      tmp_path: Path) -> None:
    assert drop_file(engine, kos("2.999.30.7.9.1")).code == "AA"
    template = (REPO / "tests/data/dicom/kos-manifest.dcmtk.xml").read_text(encoding="utf-8")
    written_by_dcmtk = xml2dcm(tmp_path, template.replace("H0042", MATRICULE).replace("HOPITAL-TEST", "RNPP"))
    assert drop_file(engine, written_by_dcmtk).code == "AA"
    found = {e.document_id: e for e in wait_for(dsp_of(engine), 2)}
    assert set(found) == {"2.999.30.7.9.1", "2.999.40.7.9.1"}
    entry = found["2.999.40.7.9.1"]
    assert (entry.type_code, entry.mime, entry.effective_time) == ("18748-4", DICOM, "20250311090000")
    [study] = entry.details["studies"]
    assert study["study_uid"] == "2.999.40.7" and study["series"][0]["retrieve_ae_title"] == "HOSP_PACS"
    assert dsp_of(engine).content(entry) == written_by_dcmtk
    assert drop_file(engine, kos("2.999.30.7.9.1")).code == "AA"  # the same manifest again: one entry
    time.sleep(0.3)
    assert len(documents(dsp_of(engine))) == 2


@pytest.mark.parametrize(("make", "reason"), [
    (ct_image, "the file is a CT image"),
    (lambda: kos("2.999.30.7.9.2")[:600], "damaged, truncated"),
    (lambda: kos("2.999.30.7.9.3", patient_id=UNKNOWN_PATIENT), "not known to the national patient index"),
])
def test_anything_but_a_manifest_of_a_known_patient_is_refused_with_the_reason(
        engine: EngineThread, make: object, reason: str) -> None:
    assert callable(make)
    verdict = drop_file(engine, make())
    assert verdict.code == "AE" and verdict.status == "rejected"
    assert reason in verdict.findings[0].text
