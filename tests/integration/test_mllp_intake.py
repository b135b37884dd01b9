"""MLLP intake end to end over real sockets: ACK codes, ERR segments, charsets, enhanced mode,
duplicates, bad frames, and the store/destination state behind each answer."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import hl7
import pytest

from engine.store.base import Store
from tests.support.engine_process import write_project
from tests.support.engine_thread import EngineThread
from tests.support.mllp_peers import MllpClient, frame
from tests.unit.hl7_samples import ADT_A01_23, ORU_R01_25

CHANNEL = """
respond_after: processed
source: {{type: mllp, port: 0, max_frame_bytes: 65536, charset: "8859/1"}}
steps:
  - {{type: filter_message_type, accept: [ORU^R01, ADT^A01], on_mismatch: reject}}
  - {{type: validate_hl7, required_fields: [PID-3, "OBX[*]-3"]}}
destinations:
  - {{name: out, type: file, directory: {out}}}
"""


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[EngineThread]:
    config = write_project(tmp_path, {"lab": CHANNEL.format(out=tmp_path / "out")})
    running = EngineThread(config).start()
    yield running
    running.stop()


def send(engine: EngineThread, payload: bytes) -> hl7.Message:
    with MllpClient(engine.port("lab")) as client:
        return parse(client.send(payload))


def parse(ack: bytes) -> hl7.Message:
    return hl7.parse(ack.decode("latin-1"))


def msa(ack: hl7.Message) -> tuple[str, str]:
    return str(ack.segment("MSA")[1]), str(ack.segment("MSA")[2])


def errors(ack: hl7.Message) -> list[tuple[str, str, str]]:
    """(location ERR-2, code ERR-3.1, text ERR-8) of each ERR segment (HL7 v2.5+ form)."""
    if "ERR" not in str(ack):
        return []
    return [(str(e[2]), str(e[3][0][0]), ack.unescape(str(e[8]))) for e in ack.segments("ERR")]


def store(engine: EngineThread) -> Store:
    return engine.engine.store


def statuses(engine: EngineThread) -> dict[str, int]:
    stats = engine.call(store(engine).stats())
    return dict(stats["channels"].get("lab", {}).get("messages", {}))


def with_field(message: bytes, segment: str, index: int, value: str) -> bytes:
    lines = message.decode("utf-8").split("\r")
    for i, line in enumerate(lines):
        if line.startswith(segment + "|"):
            fields = line.split("|")
            fields[index if segment != "MSH" else index - 1] = value
            lines[i] = "|".join(fields)
            break
    return "\r".join(lines).encode("utf-8")


def wait_for_files(folder: Path, count: int) -> list[Path]:
    for _ in range(500):
        files = sorted(folder.glob("*.hl7")) if folder.exists() else []
        if len(files) >= count:
            return files
        time.sleep(0.02)
    raise AssertionError(f"expected {count} delivered files in {folder}")


def test_valid_result_is_acknowledged_aa_after_commit_and_delivered(
    engine: EngineThread, tmp_path: Path
) -> None:
    ack = send(engine, ORU_R01_25)
    assert msa(ack) == ("AA", "LAB20250314000123")
    msh = ack.segment("MSH")
    assert str(msh[10]) not in ("", "LAB20250314000123")  # fresh control id
    assert str(msh[3]) == "PASSERELLE" and str(msh[5]) == "GLIMS^2.999.10.1^ISO"  # swapped
    [delivered] = wait_for_files(tmp_path / "out", 1)
    assert delivered.read_bytes() == ORU_R01_25


def test_missing_required_field_is_ae_naming_every_field(engine: EngineThread) -> None:
    broken = ORU_R01_25.replace(b"|NM|6690-2^Leukocytes [#/volume] in Blood by Automated count^LN|", b"|NM||")
    broken = broken.replace(b"|NM|718-7^Hemoglobin [Mass/volume] in Blood^LN|", b"|NM||")
    ack = send(engine, broken)
    assert msa(ack)[0] == "AE"
    assert errors(ack) == [
        ("OBX^1^3", "101", "required field OBX[1]-3 is empty"),
        ("OBX^3^3", "101", "required field OBX[3]-3 is empty"),
    ]
    assert statuses(engine) == {"rejected": 1}


def test_unsupported_message_type_is_ar_200(engine: EngineThread) -> None:
    ack = send(engine, with_field(ORU_R01_25, "MSH", 9, "ORM^O01"))
    assert msa(ack)[0] == "AR"
    [(location, code, text)] = errors(ack)
    assert (location, code) == ("MSH^1^9", "200") and "ORM^O01 is not accepted" in text


def test_unsupported_version_is_ar_203(engine: EngineThread) -> None:
    ack = send(engine, with_field(ORU_R01_25, "MSH", 12, "2.1"))
    assert msa(ack)[0] == "AR"
    assert str(ack.segment("ERR")[1]) == "MSH^1^12^203&Unsupported version id&HL70357"  # ERR-1: a 2.1 sender
    assert statuses(engine) == {"rejected": 1}


def test_latin1_message_declared_8859_1_is_stored_byte_for_byte(engine: EngineThread, tmp_path: Path) -> None:
    ack = send(engine, ADT_A01_23)
    assert msa(ack) == ("AA", "ADT000042")
    [delivered] = wait_for_files(tmp_path / "out", 1)
    assert delivered.read_bytes() == ADT_A01_23 and "Müller".encode("latin-1") in delivered.read_bytes()


def test_bytes_invalid_in_the_declared_charset_are_ar_with_the_offset(engine: EngineThread) -> None:
    wrong = ORU_R01_25.replace(b"TEST^PATIENT", "TÉST^PATIENT".encode("latin-1"))
    ack = send(engine, wrong)
    assert msa(ack)[0] == "AR"
    [(location, code, text)] = errors(ack)
    assert (location, code) == ("MSH^1^18", "102")
    assert "byte 0xC9 at offset" in text and "segment 2" in text and "UNICODE UTF-8" in text


def test_identical_resend_gets_the_same_answer_and_is_stored_once(engine: EngineThread) -> None:
    first, second = send(engine, ORU_R01_25), send(engine, ORU_R01_25)
    assert msa(first) == msa(second) == ("AA", "LAB20250314000123")
    assert str(first.segment("MSH")[10]) != str(second.segment("MSH")[10])
    assert sum(statuses(engine).values()) == 1


def test_reused_control_id_for_other_content_is_ae_205(engine: EngineThread) -> None:
    send(engine, ORU_R01_25)
    ack = send(engine, ORU_R01_25.replace(b"|7.2|", b"|7.3|"))
    assert msa(ack)[0] == "AE" and errors(ack)[0][:2] == ("MSH^1^10", "205")


def test_enhanced_mode_commit_then_application_ack(engine: EngineThread) -> None:
    enhanced = with_field(with_field(ORU_R01_25, "MSH", 15, "AL"), "MSH", 16, "AL")
    with MllpClient(engine.port("lab")) as client:
        commit = parse(client.send(enhanced))
        application = parse(client.read_frame())
    assert msa(commit) == ("CA", "LAB20250314000123") and msa(application) == ("AA", "LAB20250314000123")


def test_enhanced_mode_error_only_application_ack_reports_the_error(engine: EngineThread) -> None:
    enhanced = with_field(with_field(ORU_R01_25, "MSH", 15, "NE"), "MSH", 16, "ER")
    broken = enhanced.replace(b"|NM|789-8^Erythrocytes [#/volume] in Blood by Automated count^LN|", b"|NM||")
    with MllpClient(engine.port("lab")) as client:
        ack = parse(client.send(broken))  # no commit ACK (NE): the first frame is the application ACK
    assert msa(ack)[0] == "AE" and errors(ack)[0][0] == "OBX^2^3"


def test_garbage_before_the_start_block_is_ignored(engine: EngineThread) -> None:
    with MllpClient(engine.port("lab")) as client:
        client.send_raw(b"\x00\xffGET / HTTP/1.0\r\n\r\n")
        assert msa(parse(client.send(ORU_R01_25)))[0] == "AA"


def test_several_frames_in_one_write_are_all_answered_in_order(engine: EngineThread) -> None:
    messages = [with_field(ORU_R01_25, "MSH", 10, f"BATCH{i}") for i in range(5)]
    with MllpClient(engine.port("lab")) as client:
        client.send_raw(b"".join(frame(m) for m in messages))
        answers = [msa(parse(client.read_frame())) for _ in messages]
    assert answers == [("AA", f"BATCH{i}") for i in range(5)]


def test_frame_without_msh_is_stored_rejected_and_the_connection_closed(engine: EngineThread) -> None:
    with MllpClient(engine.port("lab")) as client:
        client.send_raw(frame(b"hello, this is not HL7"))
        assert client.closed_by_peer()
    assert statuses(engine) == {"rejected": 1}
    assert msa(send(engine, ORU_R01_25))[0] == "AA"  # the listener keeps serving


def test_oversized_frame_closes_the_connection_and_keeps_evidence(engine: EngineThread) -> None:
    huge = ORU_R01_25 + b"OBX|13|ST|x||" + b"A" * 100_000 + b"\r"
    with MllpClient(engine.port("lab")) as client:
        client.send_raw(frame(huge))
        assert client.closed_by_peer()
    assert statuses(engine) == {"rejected": 1}
    assert msa(send(engine, ORU_R01_25))[0] == "AA"


def test_half_sent_frame_stores_nothing_and_harms_no_one(engine: EngineThread) -> None:
    client = MllpClient(engine.port("lab"))
    client.send_raw(b"\x0b" + ORU_R01_25[:200])
    client.close()
    assert msa(send(engine, ORU_R01_25))[0] == "AA"
    assert statuses(engine) == {"queued": 1} or statuses(engine) == {"sent": 1}
