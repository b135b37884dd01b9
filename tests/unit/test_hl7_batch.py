"""HL7 batch splitting (FHS/BHS), content sniffing and the shared envelope checks."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.connectors.sftp.batch import Hl7Splitter
from engine.errors import ParseError
from engine.formats.sniff import hl7_envelope, sniff, text_problem
from engine.message import CDA, DICOM, HL7V2, XML
from tests.unit.hl7_samples import ORU_R01_25


def oru(control_id: str) -> bytes:
    return ORU_R01_25.replace(b"|LAB20250314000123|", f"|{control_id}|".encode())


def batch(*messages: bytes, count: int | None = None) -> bytes:
    declared = len(messages) if count is None else count
    return (b"FHS|^~\\&|GLIMS\rBHS|^~\\&|GLIMS\r" + b"".join(messages)
            + f"BTS|{declared}\rFTS|1\r".encode())


def split(data: bytes, chunk: int = 1 << 20, limit: int = 1 << 20) -> list[bytes]:
    splitter = Hl7Splitter(limit)
    out: list[bytes] = []
    for start in range(0, len(data), chunk):
        out += splitter.feed(data[start:start + chunk])
    return out + splitter.close()


def test_batch_is_split_into_its_messages() -> None:
    assert split(batch(oru("A"), oru("B"), oru("C"))) == [oru("A"), oru("B"), oru("C")]


@given(st.integers(min_value=1, max_value=700), st.sampled_from([b"\r", b"\n", b"\r\n"]))
def test_chunking_and_line_endings_do_not_change_the_messages(chunk: int, newline: bytes) -> None:
    data = batch(oru("A"), oru("B")).replace(b"\r", newline)
    assert split(data, chunk) == [oru("A"), oru("B")]


def test_plain_file_of_several_messages_without_envelope() -> None:
    assert split(oru("A") + oru("B")) == [oru("A"), oru("B")]


def test_last_segment_without_terminator_is_kept() -> None:
    assert split(oru("A").rstrip(b"\r")) == [oru("A")]


def test_truncated_batch_raises_and_withholds_the_last_message() -> None:
    data = batch(oru("A"), oru("B"))
    splitter = Hl7Splitter(1 << 20)
    got = splitter.feed(data[: data.index(b"BTS") - 50])
    assert got == [oru("A")]
    with pytest.raises(ParseError, match=r"truncated batch.*without"):
        splitter.close()


def test_bts_count_mismatch_is_an_error() -> None:
    with pytest.raises(ParseError, match="BTS-1 declares 3"):
        split(batch(oru("A"), oru("B"), count=3))


@pytest.mark.parametrize("data, match", [
    (b"PID|1||x\r" + ORU_R01_25, "PID before the first MSH"),
    (b"\x00\x01\x02garbage", "before the first MSH"),
    (b"\r\n\r\n", "no MSH segment"),
    (b"FHS|^~\\&\rFTS|0\r", "no MSH segment"),
    (b"MSH|^~\\&|A\rBTS|1\r", "BTS without a matching BHS"),
])
def test_malformed_files_are_named(data: bytes, match: str) -> None:
    with pytest.raises(ParseError, match=match):
        split(data)


def test_oversized_message_is_refused() -> None:
    with pytest.raises(ParseError, match="larger than 1024 bytes"):
        split(oru("A") + b"OBX|13|ST|x||" + b"A" * 2000 + b"\r", limit=1024)


@pytest.mark.parametrize("head, expected", [
    (ORU_R01_25[:100], HL7V2),
    (b"\xef\xbb\xbf\r\nFHS|^~\\&|", HL7V2),
    (b'<?xml version="1.0"?>\n<!-- <Other> -->\n<cda:ClinicalDocument xmlns:cda="urn:hl7-org:v3">', CDA),
    (b"<?xml version='1.0'?><root/>", XML),
    (b"\x00" * 128 + b"DICM" + b"\x02\x00", DICOM),
    (b"%PDF-1.7", ""),
    (b"", ""),
])
def test_sniff(head: bytes, expected: str) -> None:
    assert sniff(head) == expected


def test_hl7_envelope_problems() -> None:
    assert hl7_envelope(oru("A"), "", "x").control_id == "A"
    assert hl7_envelope(oru(""), "", "x").problem is not None
    bad = hl7_envelope(oru("A").replace(b"TEST", "TÉST".encode("latin-1")), "", "x").problem
    assert bad is not None and bad.code == "102" and "0xC9" in bad.text
    assert hl7_envelope(b"MSH|", "", "x").problem is not None


def test_xml_in_a_wrong_encoding_is_a_problem() -> None:
    doc = '<?xml version="1.0" encoding="UTF-8"?><ClinicalDocument>é</ClinicalDocument>'
    finding = text_problem(doc.encode("latin-1"), CDA)
    assert finding is not None and "0xE9" in finding.text
    assert text_problem(doc.encode("utf-8"), CDA) is None
