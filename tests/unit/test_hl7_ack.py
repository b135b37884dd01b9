"""engine.formats.hl7v2.build_ack and its helpers; ACKs are checked with python-hl7 as well."""

from __future__ import annotations

import os
import re

import hl7
import pytest

from engine.errors import Finding
from engine.formats.hl7v2 import Header, build_ack, hl7_timestamp, new_control_id, parse, read_header
from tests.unit.hl7_samples import ADT_A01_23, ORU_R01_25

ORU = read_header(ORU_R01_25)
ADT = read_header(ADT_A01_23)


def header(raw_msh: str) -> Header:
    return read_header(raw_msh.encode("latin-1") + b"\r")


def fields(ack: bytes, segment: str, codec: str = "utf-8") -> hl7.Segment:
    """A segment of `ack` as python-hl7 sees it (MSH-n at index n for MSH too)."""
    return hl7.parse(ack.decode(codec)).segment(segment)


def test_aa_original_mode() -> None:
    ack = build_ack(ORU, "AA")
    assert ack.endswith(b"\r")
    assert ack.count(b"\r") == 2
    msh = fields(ack, "MSH")
    assert (str(msh[1]), str(msh[2])) == ("|", "^~\\&")
    assert str(msh[3]) == "PASSERELLE"
    assert str(msh[4]) == "DSP"
    assert str(msh[5]) == "GLIMS^2.999.10.1^ISO"  # swapped verbatim, components included
    assert str(msh[6]) == "LABO-TEST^2.999.10^ISO"
    assert re.fullmatch(r"\d{14}\.\d{4}\+0000", str(msh[7]))
    assert str(msh[9]) == "ACK^R01^ACK"
    assert str(msh[10]) not in ("", ORU.control_id)
    assert len(str(msh[10])) <= 20
    assert (str(msh[11]), str(msh[12])) == ("P", "2.5.1")
    assert str(msh[15]) == str(msh[16]) == ""
    assert str(msh[18]) == "UNICODE UTF-8"
    msa = fields(ack, "MSA")
    assert (str(msa[1]), str(msa[2])) == ("AA", "LAB20250314000123")
    assert len(msa) == 3  # no MSA-3 without an error
    assert b"ERR" not in ack


def test_ack_is_readable_by_our_parser() -> None:
    ack = parse(build_ack(ORU, "AA", control_id="ACK1", timestamp="20250101000000"))
    h = ack.header
    assert (h.message_code, h.trigger_event, h.structure) == ("ACK", "R01", "ACK")
    assert (h.control_id, h.timestamp) == ("ACK1", "20250101000000")
    assert (h.sending_app, h.receiving_app) == (ORU.receiving_app, ORU.sending_app)
    assert ack.get("MSA-2") == ORU.control_id


def test_enhanced_commit_accept() -> None:
    raw = ORU_R01_25.replace(b"|2.5.1|||||LUX|", b"|2.5.1|||AL|NE|LUX|")
    original = read_header(raw)
    assert original.enhanced
    ack = build_ack(original, "CA")
    msh = fields(ack, "MSH")
    assert (str(msh[15]), str(msh[16])) == ("NE", "NE")
    assert str(fields(ack, "MSA")[1]) == "CA"


@pytest.mark.parametrize("code", ["AA", "AE", "AR", "CA", "CE", "CR"])
def test_every_ack_code(code: str) -> None:
    assert str(fields(build_ack(ORU, code), "MSA")[1]) == code


@pytest.mark.parametrize("code", ["", "OK", "aa", "NE"])
def test_invalid_ack_code(code: str) -> None:
    with pytest.raises(ValueError, match="ACK code"):
        build_ack(ORU, code)


def test_err_v25_table_code_and_rule_id() -> None:
    findings = [
        Finding("PID-3 must hold the matricule", "101", "PID^1^3", "E"),
        Finding("Unit is not UCUM", "lab-obx-6", "OBX^4^6^1", "W"),
        Finding("No location, no code", ""),
    ]
    ack = build_ack(ORU, "AE", findings)
    message = hl7.parse(ack.decode())
    errs = message.segments("ERR")
    assert len(errs) == 3
    first, second, third = errs
    assert str(first[1]) == ""
    assert str(first[2]) == "PID^1^3"
    assert str(first[3]) == "101^Required field missing^HL70357"
    assert str(first[4]) == "E"
    assert str(first[5]) == ""
    assert str(first[8]) == "PID-3 must hold the matricule"
    assert str(second[2]) == "OBX^4^6^1"
    assert str(second[3]) == "207^Application internal error^HL70357"
    assert (str(second[4]), str(second[5])) == ("W", "lab-obx-6")
    assert str(third[3]) == "207^Application internal error^HL70357"
    assert (str(third[2]), str(third[5])) == ("", "")
    assert str(message.segment("MSA")[3]) == "PID-3 must hold the matricule"


@pytest.mark.parametrize(
    "code", ["100", "102", "103", "200", "201", "202", "203", "204", "205", "206", "207"]
)
def test_err_v25_knows_table_0357(code: str) -> None:
    ack = parse(build_ack(ORU, "AR", [Finding("x", code)]))
    assert ack.get("ERR-3.1") == code
    assert ack.get("ERR-3.2") not in ("", "Application internal error") or code == "207"
    assert ack.get("ERR-3.3") == "HL70357"


def test_finding_text_with_separators_round_trips_through_python_hl7() -> None:
    text = "Nom | prénom ^ manquant & ~ \\ fin\nligne 2"
    location = "PID^1^5"
    ack = build_ack(ORU, "AE", [Finding(text, "lab-pid-1", location)])
    message = hl7.parse(ack.decode())
    err = message.segment("ERR")
    assert len(err) == 9  # ERR + 8 fields: nothing leaked into extra fields
    assert str(err[2]) == location
    assert message.unescape(str(err[8])).replace("\r", "\n") == text
    msa = message.segment("MSA")
    assert len(msa) == 4
    assert parse(ack).get("ERR-8") == text
    assert parse(ack).get("MSA-3") == text


def test_msa3_is_the_first_error_truncated() -> None:
    findings = [Finding("a warning", severity="W"), Finding("E" * 100), Finding("second error")]
    ack = parse(build_ack(ORU, "AE", findings))
    assert ack.get("MSA-3") == "E" * 80
    assert ack.count("ERR") == 3
    assert parse(build_ack(ORU, "AA", [Finding("only info", severity="I")])).get("MSA-3") == ""


@pytest.mark.parametrize("version", ["2.3", "2.3.1", "2.4"])
def test_err_v23_v24_uses_err1(version: str) -> None:
    original = header(f"MSH|^~\\&|HIS|HOP|PASS|DSP|20250101||ADT^A01|C1|P|{version}")
    findings = [Finding("Nom manquant", "101", "PID^1^5^1"), Finding("Règle locale", "adt-pv1-2", "PV1^1^2")]
    ack = build_ack(original, "AE", findings)
    message = hl7.parse(ack.decode())
    errs = message.segments("ERR")
    assert len(errs) == 2
    assert len(errs[0]) == 2  # only ERR-1
    assert str(errs[0][1]) == "PID^1^5^101&Required field missing&HL70357"
    assert str(errs[1][1]) == "PV1^1^2^207&Application internal error&HL70357&adt-pv1-2&&L"
    assert str(message.segment("MSA")[3]) == "Nom manquant"
    assert str(message.segment("MSH")[12]) == version


def test_message_type_per_version() -> None:
    assert str(fields(build_ack(ADT, "AA", codec="latin-1"), "MSH", "latin-1")[9]) == "ACK^A01"
    v231 = header("MSH|^~\\&|A|B|C|D|1||ADT^A04|C|P|2.3.1")
    assert str(fields(build_ack(v231, "AA"), "MSH")[9]) == "ACK^A04^ACK"
    no_trigger = header("MSH|^~\\&|A|B|C|D|1||QRY|C|P|2.5")
    assert str(fields(build_ack(no_trigger, "AA"), "MSH")[9]) == "ACK"


def test_defaults_when_original_lacks_processing_id_and_version() -> None:
    bare = header("MSH|^~\\&|A|B|C|D|1||ORU^R01|C1")
    msh = fields(build_ack(bare, "AA"), "MSH")
    assert (str(msh[11]), str(msh[12])) == ("P", "2.5.1")
    assert len(msh) == 13  # nothing after MSH-12
    debug = header("MSH|^~\\&|A|B|C|D|1||ORU^R01|C1|D^T|2.6")
    assert str(fields(build_ack(debug, "AA"), "MSH")[11]) == "D"


def test_control_id_and_timestamp_given() -> None:
    ack = build_ack(ORU, "AA", control_id="MY|ID", timestamp="20250101120000")
    msh = parse(ack).header
    assert (msh.control_id, msh.timestamp) == ("MY|ID", "20250101120000")


def test_escaped_original_control_id_is_echoed_as_sent() -> None:
    original = header("MSH|^~\\&|A|B|C|D|1||ORU^R01|CTRL\\F\\1|P|2.5.1")
    assert original.control_id == "CTRL|1"
    ack = build_ack(original, "AA")
    assert b"\rMSA|AA|CTRL\\F\\1\r" in ack


def test_ack_encoded_in_the_original_charset() -> None:
    ack = build_ack(ADT, "AE", [Finding("Prénom manquant", "101", "PID^1^5")])
    assert b"Pr\xe9nom manquant" in ack  # 8859/1 as declared by the ADT
    assert str(fields(ack, "MSH", "latin-1")[18]) == "8859/1"
    utf8 = build_ack(ORU, "AE", [Finding("Prénom manquant")])
    assert "Prénom manquant".encode() in utf8
    forced = build_ack(ORU, "AE", [Finding("Prénom manquant")], codec="latin-1")
    assert b"Pr\xe9nom" in forced


def test_ack_always_producible() -> None:
    koi = header("MSH|^~\\&|A|B|C|D|1||ORU^R01|C1|P|2.5|||||LUX|KOI8-R")
    ack = build_ack(koi, "AR", [Finding('unsupported character set "KOI8-R" in MSH-18', "203")])
    assert ack.isascii()
    assert b"|KOI8-R" in ack
    ascii_msg = header("MSH|^~\\&|A|B|C|D|1||ORU^R01|C1|P|2.5|||||LUX|ASCII")
    assert b"Pr?nom" in build_ack(ascii_msg, "AE", [Finding("Prénom")])
    two_delimiters = header("MSH|^~|A|B|C|D|1||ORU^R01|C1|P|2.5")
    ack = build_ack(two_delimiters, "AE", [Finding("a^b|c", "lab-1", "PID^1^3")])
    assert str(hl7.parse(ack.decode()).segment("ERR")[8]) == "a b c"
    old_two = header("MSH|^~|A|B|C|D|1||ORU^R01|C1|P|2.3")
    assert b"\rERR|PID^1^3^207\r" in build_ack(old_two, "AE", [Finding("x", "lab-1", "PID^1^3")])


def test_ack_with_other_delimiters() -> None:
    original = read_header(b"MSH#$%@!#SND$1#F#R#RF#1##ORU$R01#C@F@2#P#2.5.1\r")
    ack = build_ack(original, "AE", [Finding("x#y$z", "101", "PID^1^3")])
    assert ack.startswith(b"MSH#$%@!#R#RF#SND$1#F#")
    assert b"#ACK$R01$ACK#" in ack
    reparsed = parse(ack)
    assert reparsed.get("MSA-2") == "C#2"
    assert reparsed.get("ERR-2") == "PID$1$3"
    assert reparsed.get("ERR-3.1") == "101"
    assert reparsed.get("ERR-8") == "x#y$z"


def test_new_control_id_unique_and_short() -> None:
    ids = [new_control_id() for _ in range(20_000)]
    assert len(set(ids)) == len(ids)
    assert all(len(i) == 20 and i.isalnum() and i.isupper() for i in ids)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_new_control_id_differs_in_a_forked_child() -> None:
    parent = new_control_id()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report one id and leave at once
        os.write(write_end, new_control_id().encode())
        os._exit(0)
    os.close(write_end)
    child = os.read(read_end, 64).decode()
    os.close(read_end)
    os.waitpid(pid, 0)
    assert len(child) == 20
    assert child[9:14] != parent[9:14]  # the pid part


def test_hl7_timestamp() -> None:
    assert hl7_timestamp(0) == "19700101000000.0000+0000"
    assert hl7_timestamp(1_741_944_615.25) == "20250314093015.2500+0000"
    assert hl7_timestamp(1_741_944_615.99999) == "20250314093015.9999+0000"
    assert re.fullmatch(r"20\d{12}\.\d{4}\+0000", hl7_timestamp())
