"""engine.formats.hl7v2: header reading, decoding, field access, escapes. Byte-level, no I/O."""

from __future__ import annotations

import contextlib
import dataclasses

import hl7
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.errors import ParseError
from engine.formats.hl7v2 import (
    CHARSETS,
    SUPPORTED_VERSIONS,
    Header,
    Hl7Message,
    codec_for,
    decode,
    escape,
    parse,
    read_header,
    unescape,
)
from engine.message import HL7V2, Message, SourceMeta
from tests.unit.hl7_samples import ADT_A01_23, MATRICULE, ORU_R01_25

ENC = "^~\\&"


def msh(version: str = "2.5.1", charset: str = "", tail: str = "") -> bytes:
    """A one-segment message with the given MSH-12 and MSH-18."""
    fields = [
        "MSH", ENC, "APP^1.2.3^ISO", "FAC", "RAPP", "RFAC", "20250101120000", "", "ADT^A01^ADT_A01",
        "CTRL1", "P", version, "", "", "", "", "", charset,
    ]  # fmt: skip
    return ("|".join(fields).rstrip("|") + tail + "\r").encode("latin-1")


# --------------------------------------------------------------------------------------------
# read_header
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", sorted(SUPPORTED_VERSIONS))
def test_read_header_every_supported_version(version: str) -> None:
    h = read_header(msh(version) + b"PID|1\r")
    assert h.version == version
    assert (h.field_sep, h.encoding_chars) == ("|", ENC)
    assert (h.sending_app, h.sending_facility) == ("APP^1.2.3^ISO", "FAC")
    assert (h.receiving_app, h.receiving_facility) == ("RAPP", "RFAC")
    assert h.message_type == "ADT^A01^ADT_A01"
    assert (h.message_code, h.trigger_event, h.structure) == ("ADT", "A01", "ADT_A01")
    assert (h.control_id, h.processing_id, h.timestamp) == ("CTRL1", "P", "20250101120000")
    assert h.sender == "APP^1.2.3^ISO|FAC"
    assert not h.enhanced


def test_read_header_samples() -> None:
    oru = read_header(ORU_R01_25)
    assert (oru.version, oru.charset, oru.control_id) == ("2.5.1", "UNICODE UTF-8", "LAB20250314000123")
    assert oru.sending_app == "GLIMS^2.999.10.1^ISO"
    assert oru.timestamp == "20250314093015+0100"
    adt = read_header(ADT_A01_23)
    assert (adt.version, adt.charset, adt.message_type, adt.structure) == ("2.3", "8859/1", "ADT^A01", "")


def test_read_header_first_components_and_repetitions() -> None:
    raw = b"MSH|^~\\&|A|B|C|D|20250101^S||ORU^R01|1|P^T|2.5.1^LUX&&ISO|||AL|ER||UNICODE UTF-8~8859/1\r"
    h = read_header(raw)
    assert (h.timestamp, h.processing_id, h.version) == ("20250101", "P", "2.5.1")
    assert (h.accept_ack, h.app_ack, h.charset) == ("AL", "ER", "UNICODE UTF-8")
    assert h.enhanced


def test_read_header_unescapes_leaf_values_but_keeps_msh3_to_6_verbatim() -> None:
    raw = b"MSH|^~\\&|A\\S\\B|F|R|RF|1||ORU^R01|CTRL\\F\\1|P|2.5.1\r"
    h = read_header(raw)
    assert h.control_id == "CTRL|1"
    assert h.sending_app == "A\\S\\B"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"MSH|^~\\&|A|B|C|D|1||ADT^A01|X\nPID|1\n", "X"),
        (b"MSH|^~\\&|A|B|C|D|1||ADT^A01|X\r\nPID|1\r\n", "X"),
        (b"MSH|^~\\&|A|B|C|D|1||ADT^A01|X", "X"),
        (b"\r\n  \tMSH|^~\\&|A|B|C|D|1||ADT^A01|X\r", "X"),
        (b"\xef\xbb\xbfMSH|^~\\&|A|B|C|D|1||ADT^A01|X\r", "X"),
        (b"MSH|^~\\&|A|B|C|D|1||ADT^A01\r", ""),
    ],
)
def test_read_header_terminators_and_leading_bytes(raw: bytes, expected: str) -> None:
    h = read_header(raw)
    assert h.control_id == expected
    assert h.message_type == "ADT^A01"


def test_read_header_minimal_msh() -> None:
    h = read_header(b"MSH|^~\\&")
    assert h.encoding_chars == ENC
    assert h.control_id == h.message_type == h.charset == ""


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"", "no MSH segment at start"),
        (b"   \r\n", "no MSH segment at start"),
        (b"PID|1||X\rMSH|^~\\&|\r", "no MSH segment at start"),
        (b"\x0bMSH|^~\\&|A\r", "no MSH segment at start"),
        (b"MSH", "MSH-1 field separator missing"),
        (b"MSH\rPID|1", "MSH-1 field separator missing"),
        (b"MSHA^~\\&", "MSH-1 field separator"),
        (b"MSH ^~\\&", "MSH-1 field separator"),
        (b"MSH|", "MSH-2 encoding characters missing"),
        (b"MSH||A|B", "MSH-2 encoding characters missing"),
        (b"MSH|^|A", "MSH-2 encoding characters"),
        (b"MSH|^^\\&|A", "MSH-2 encoding characters"),
        (b"MSH|^~\\&#$|A", "MSH-2 encoding characters"),
        (b"MSH|^A\\&|A", "MSH-2 encoding characters"),
    ],
)
def test_read_header_errors(raw: bytes, message: str) -> None:
    with pytest.raises(ParseError, match=message):
        read_header(raw)


def test_read_header_other_delimiters() -> None:
    h = read_header(b"MSH#$%@!#SND$1#F#R#RF#1##ORU$R01#C@F@2#P#2.4\r")
    assert (h.field_sep, h.encoding_chars) == ("#", "$%@!")
    assert (h.sending_app, h.trigger_event, h.control_id) == ("SND$1", "R01", "C#2")


def test_read_header_decodes_declared_charset() -> None:
    utf8 = "MSH|^~\\&|APP|Hôpital|R|RF|1||ADT^A01|1|P|2.5|||||LUX|UNICODE UTF-8\r".encode()
    assert read_header(utf8).sending_facility == "Hôpital"
    latin = "MSH|^~\\&|APP|Hôpital|R|RF|1||ADT^A01|1|P|2.5|||||LUX|8859/1\r".encode("latin-1")
    assert read_header(latin).sending_facility == "Hôpital"


def test_read_header_undeclared_charset_guesses_utf8_then_latin1() -> None:
    text = "MSH|^~\\&|APP|Hôpital|R|RF|1||ADT^A01|1|P|2.5\r"
    assert read_header(text.encode("utf-8")).sending_facility == "Hôpital"
    assert read_header(text.encode("latin-1")).sending_facility == "Hôpital"


def test_read_header_never_fails_on_a_body_it_cannot_decode() -> None:
    bad_header = "MSH|^~\\&|APP|Hôpital|R|RF|1||ADT^A01|1|P|2.5|||||LUX|UNICODE UTF-8\r".encode("latin-1")
    h = read_header(bad_header + b"PID|1||\xff\xfe\r")
    assert h.sending_facility == "H\ufffdpital"
    unknown = read_header(msh(charset="KOI8-R") + "PID|1||Müller\r".encode("latin-1"))
    assert unknown.charset == "KOI8-R"


def test_header_is_a_frozen_dataclass() -> None:
    h = read_header(ORU_R01_25)
    with pytest.raises(dataclasses.FrozenInstanceError):
        h.control_id = "other"  # type: ignore[misc]
    same = Header(**{f.name: getattr(h, f.name) for f in dataclasses.fields(Header)})
    assert same == h
    assert hash(same) == hash(h)
    assert type(h) is Header
    assert dataclasses.replace(h, control_id="X").control_id == "X"


# --------------------------------------------------------------------------------------------
# codec_for / decode
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "codec"),
    [
        ("ASCII", "ascii"),
        ("8859/1", "latin-1"),
        ("8859/2", "iso8859-2"),
        ("8859/15", "iso8859-15"),
        ("UNICODE UTF-8", "utf-8"),
        ("UNICODE", "utf-8"),
        ("UTF-8", "utf-8"),
        ("ISO IR100", "latin-1"),
        ("ISO IR6", "ascii"),
        ("WINDOWS-1252", "cp1252"),
        ("CP1252", "cp1252"),
        (" unicode utf-8 ", "utf-8"),
    ],
)
def test_codec_for_table_values(value: str, codec: str) -> None:
    assert codec_for(value) == codec


def test_codec_for_every_table_entry_is_a_real_codec() -> None:
    for name, codec in CHARSETS.items():
        assert "MSH|^~\\&".encode(codec).decode(codec) == "MSH|^~\\&", name


def test_codec_for_empty_uses_default_then_utf8() -> None:
    assert codec_for("") == "utf-8"
    assert codec_for("", "8859/1") == "latin-1"
    assert codec_for("  ", "cp1252") == "cp1252"
    assert codec_for("ASCII", "latin-1") == "ascii"


@pytest.mark.parametrize("value", ["KOI8-R", "UNICODE UTF-16", "base64", "utf-7"])
def test_codec_for_unknown_value(value: str) -> None:
    with pytest.raises(ParseError, match=f'unsupported character set "{value}" in MSH-18'):
        codec_for(value)


@pytest.mark.parametrize("default", ["base64", "no-such-codec", "utf-16", "UNICODE UTF-32"])
def test_codec_for_unusable_default(default: str) -> None:
    with pytest.raises(ParseError, match="configured default"):
        codec_for("", default)


def test_decode_latin1_declared_8859_1() -> None:
    text, codec = decode(ADT_A01_23)
    assert codec == "latin-1"
    assert "|Müller|" in text


def test_decode_utf8_declared() -> None:
    text, codec = decode(ORU_R01_25)
    assert codec == "utf-8"
    assert "Hémogramme" in text


def test_decode_undecodable_bytes_names_offset_segment_and_field() -> None:
    raw = ADT_A01_23.replace(b"|8859/1", b"|UNICODE UTF-8")
    offset = raw.index(b"\xfc")
    with pytest.raises(ParseError) as info:
        decode(raw)
    assert str(info.value) == (
        f"byte 0xFC at offset {offset} (PID segment 1, field PID-6) "
        "is not valid UNICODE UTF-8 as declared in MSH-18"
    )


def test_decode_error_counts_segment_occurrences() -> None:
    raw = b"MSH|^~\\&|A|B|C|D|1||ORU^R01|1|P|2.5|||||LUX|ASCII\rOBX|1|ST|X||ok\rOBX|2|ST|X||caf\xe9\r"
    with pytest.raises(
        ParseError, match=r"byte 0xE9 at offset \d+ \(OBX segment 2, field OBX-5\) is not valid ASCII"
    ):
        decode(raw)


def test_decode_error_in_msh_field() -> None:
    raw = b"MSH|^~\\&|A|H\xf4pital|C|D|1||ORU^R01|1|P|2.5|||||LUX|UNICODE UTF-8\r"
    with pytest.raises(ParseError, match=r"offset 12 \(MSH segment 1, field MSH-4\)"):
        decode(raw)


def test_decode_default_charset_when_msh18_empty() -> None:
    raw = msh() + "PID|1||X||Müller\r".encode("latin-1")
    assert decode(raw, "8859/1")[1] == "latin-1"
    assert decode(raw, "latin-1")[0].endswith("|Müller\r")
    with pytest.raises(ParseError, match=r"is not valid utf-8 \(default; MSH-18 is empty\)"):
        decode(raw)
    with pytest.raises(ParseError, match=r"is not valid ascii \(configured default; MSH-18 is empty\)"):
        decode(raw, "ASCII")


def test_decode_msh18_wins_over_default() -> None:
    assert decode(ORU_R01_25, "8859/1")[1] == "utf-8"


def test_decode_unknown_charset() -> None:
    with pytest.raises(ParseError, match='unsupported character set "KOI8-R" in MSH-18'):
        decode(msh(charset="KOI8-R"))


def test_decode_drops_leading_whitespace_and_bom() -> None:
    text, _ = decode(b"\xef\xbb\xbf\r\n" + ORU_R01_25)
    assert text.startswith("MSH|")


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_decode_parse_read_header_raise_only_parse_error(raw: bytes) -> None:
    for function in (decode, parse, read_header):
        with contextlib.suppress(ParseError):
            function(raw)


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from([b"MSH|^~\\&|", b"MSH|^~\\&#|", b"MSH#$%@!#", b"\r\nMSH|", b"MSH|^~"]),
    st.binary(max_size=300),
    st.sampled_from(["", "latin-1", "8859/1", "ASCII", "bogus"]),
)
def test_msh_prefixed_garbage_raises_only_parse_error(prefix: bytes, rest: bytes, default: str) -> None:
    raw = prefix + rest
    with contextlib.suppress(ParseError):
        read_header(raw)
    try:
        message = parse(raw, default)
    except ParseError:
        return
    for path in ("MSH-9.2", "PID-3[*].1", "OBX[*]-5", "MSH-18", "PID-5.1.1"):
        message.get(path)
        message.get_all(path)
    assert message.to_text().endswith("\r")


# --------------------------------------------------------------------------------------------
# Hl7Message: get / get_all / count
# --------------------------------------------------------------------------------------------


@pytest.fixture
def oru() -> Hl7Message:
    return parse(ORU_R01_25)


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("MSH-1", "|"),
        ("MSH-2", ENC),
        ("MSH-2.1", ""),
        ("MSH-3", "GLIMS^2.999.10.1^ISO"),
        ("MSH-3.2", "2.999.10.1"),
        ("MSH-9", "ORU^R01^ORU_R01"),
        ("MSH-9.2", "R01"),
        ("MSH-10", "LAB20250314000123"),
        ("MSH-18", "UNICODE UTF-8"),
        ("PID-3", f"{MATRICULE}^^^RNPP&2.999.1&ISO^NI"),
        ("PID-3.1", MATRICULE),
        ("PID-3[1].4", "RNPP&2.999.1&ISO"),
        ("PID-3.4.2", "2.999.1"),
        ("PID-3[2].1", "P000123456"),
        ("PID-3[2].4.1", "LABO-TEST"),
        ("PID-3[2].5", "PI"),
        ("PID-3[3].1", ""),
        ("PID-3.9", ""),
        ("PID-3.4.9", ""),
        ("PID-3.1.1", MATRICULE),
        ("PID-3.1.2", ""),
        ("PID[1]-5", "TEST^PATIENT^^^^^L"),
        ("PID-5.1", "TEST"),
        ("PID-5.7", "L"),
        ("PID-7[2]", ""),
        ("PID[2]-5", ""),
        ("PID-99", ""),
        ("ZZZ-1", ""),
        ("OBX[2]-5", "4.61"),
        ("OBX[*]-5", "7.2"),
        ("OBX[8]-8", "H"),
        ("OBX-6.3", "UCUM"),
        ("OBX[13]-5", ""),
        ("OBR-4.5", "Hémogramme"),
        ("OBX[12]-5", "Thrombocytose modérée\nContrôle conseillé (& frottis)"),
        ("SPM-4.1", "BLD"),
    ],
)
def test_get(oru: Hl7Message, path: str, value: str) -> None:
    assert oru.get(path) == value


def test_get_all(oru: Hl7Message) -> None:
    codes = oru.get_all("OBX[*]-3.1")
    assert len(codes) == 12
    assert codes[:3] == ["6690-2", "789-8", "718-7"]
    assert oru.get_all("PID-3[*].1") == [MATRICULE, "P000123456"]
    assert oru.get_all("PID-3[*].4.2") == ["2.999.1", "2.999.10"]
    assert oru.get_all("PID-5.1") == ["TEST"]
    assert oru.get_all("PID-6") == []
    assert oru.get_all("PID-6[*]") == []
    assert oru.get_all("OBX[*]-4") == [""] * 12  # one entry per segment: lists line up
    assert oru.get_all("OBX[*]-8") == ["N"] * 7 + ["H"] + ["N"] * 3 + [""]
    assert oru.get_all("ZZZ[*]-1") == []
    assert oru.get_all("OBX[2]-3[*].1") == ["789-8"]
    assert oru.get_all("MSH-2[*]") == [ENC]


def test_get_all_flattens_segments_and_repetitions() -> None:
    m = parse(b"MSH|^~\\&|A\rPID|1||a~b\rPID|2||\rPID|3||c\r")
    assert m.get_all("PID[*]-3[*]") == ["a", "b", "c"]
    assert m.get_all("PID[*]-3") == ["a", "", "c"]
    assert m.get_all("PID[2]-3[*]") == []


def test_segment_names_and_count(oru: Hl7Message) -> None:
    names = oru.segment_names()
    assert names == ["MSH", "PID", "PV1", "ORC", "OBR"] + ["OBX"] * 12 + ["SPM"]
    assert (oru.count("OBX"), oru.count("PID"), oru.count("NTE")) == (12, 1, 0)
    names.clear()
    assert len(oru.segment_names()) == 18


def test_get_returns_non_leaf_values_encoded() -> None:
    m = parse(b"MSH|^~\\&|A\rNTE|1||a\\F\\b^c\\S\\d&e~f\\T\\g\r")
    assert m.get("NTE-3") == "a\\F\\b^c\\S\\d&e"
    assert m.get("NTE-3.1") == "a|b"
    assert m.get("NTE-3.2") == "c\\S\\d&e"
    assert m.get("NTE-3.2.1") == "c^d"
    assert m.get("NTE-3[2]") == "f&g"
    assert m.get_all("NTE-3[*].1") == ["a|b", "f&g"]


def test_hex_escape_uses_message_codec() -> None:
    utf8 = parse(b"MSH|^~\\&|A|||||||||2.5|||||LUX|UNICODE UTF-8\rNTE|1||\\XC3A9\\\r")
    assert utf8.get("NTE-3") == "é"
    latin = parse(b"MSH|^~\\&|A|||||||||2.5|||||LUX|8859/1\rNTE|1||\\XE9\\\r")
    assert latin.get("NTE-3") == "é"


@pytest.mark.parametrize(
    "path",
    ["PID", "pid-3", "PID-0", "PID-3[0]", "PID-3.0", "PID[0]-3", "PID-3..1", "PIDX-3", "PI-3", "PID-3.1.2.3",
     "PID-a", "PID-3[1", "PID-3[-1]", "PID-٣", "PID-3.1.", " PID-3", "PID-12345"],
)  # fmt: skip
def test_invalid_paths(oru: Hl7Message, path: str) -> None:
    with pytest.raises(ValueError, match="invalid HL7 path"):
        oru.get(path)
    with pytest.raises(ValueError, match="invalid HL7 path"):
        oru.get_all(path)
    with pytest.raises(ValueError, match="invalid HL7 path"):
        oru.set(path, "x")


def test_header_property_matches_read_header(oru: Hl7Message) -> None:
    assert oru.header == read_header(ORU_R01_25)
    assert parse(ADT_A01_23).header == read_header(ADT_A01_23)


@pytest.mark.parametrize("sep", [b"\n", b"\r\n", b"\r\r", b"\r\n\r\n"])
def test_parse_accepts_file_style_terminators(sep: bytes) -> None:
    m = parse(ORU_R01_25.replace(b"\r", sep))
    assert m.count("OBX") == 12
    assert m.get("SPM-2.1") == "LAB778899-1"
    assert m.to_bytes() == ORU_R01_25


def test_parse_failures() -> None:
    with pytest.raises(ParseError, match="no MSH segment at start"):
        parse(b"")
    with pytest.raises(ParseError, match="no MSH segment at start"):
        parse(b"PID|1||X\r")
    with pytest.raises(ParseError, match="MSH-2 encoding characters missing"):
        Hl7Message("MSH||A\r")


def test_unmodified_message_renders_identically(oru: Hl7Message) -> None:
    oru.get("OBX[*]-5")
    assert oru.to_bytes() == ORU_R01_25
    assert not oru.modified
    adt = parse(ADT_A01_23)
    assert adt.to_bytes() == ADT_A01_23


def test_repr_shows_no_patient_data(oru: Hl7Message) -> None:
    assert "PATIENT" not in repr(oru)
    assert "ORU^R01" in repr(oru)


# --------------------------------------------------------------------------------------------
# Hl7Message: set
# --------------------------------------------------------------------------------------------


def test_set_component(oru: Hl7Message) -> None:
    oru.set("PID-5.1", "OTHER")
    assert oru.modified
    assert oru.get("PID-5") == "OTHER^PATIENT^^^^^L"
    before, after = ORU_R01_25.split(b"\r"), oru.to_bytes().split(b"\r")
    assert [i for i, (a, b) in enumerate(zip(before, after, strict=True)) if a != b] == [1]


def test_set_escapes_delimiters(oru: Hl7Message) -> None:
    value = "A|B^C&D~E\\F\nG"
    oru.set("PID-5.2", value)
    assert oru.get("PID-5.2") == value
    assert "TEST^A\\F\\B\\S\\C\\T\\D\\R\\E\\E\\F\\.br\\G^^^^^L" in oru.to_text()
    name = hl7.parse(oru.to_text()).segment("PID")[5][0]  # an independent parser agrees
    assert len(name) == 7
    assert str(name[1]) == "A\\F\\B\\S\\C\\T\\D\\R\\E\\E\\F\\.br\\G"
    assert parse(oru.to_bytes()).get("PID-5.2") == value


def test_set_whole_field_replaces_first_repetition(oru: Hl7Message) -> None:
    oru.set("PID-3", "X")
    assert oru.get_all("PID-3[*].1") == ["X", "P000123456"]


def test_set_creates_missing_parts() -> None:
    m = parse(b"MSH|^~\\&|A\rPID|1\r")
    m.set("PID-5.3", "MIDDLE")
    m.set("PID-3[3].4.2", "2.999.1")
    m.set("PID-8", "F")
    assert m.to_text() == "MSH|^~\\&|A\rPID|1||~~^^^&2.999.1||^^MIDDLE|||F\r"
    assert m.get("PID-3[3].4.2") == "2.999.1"
    assert m.get("PID-5.3") == "MIDDLE"


def test_set_subcomponent_in_place(oru: Hl7Message) -> None:
    oru.set("PID-3[2].4.2", "2.999.99")
    assert oru.get("PID-3[2]") == "P000123456^^^LABO-TEST&2.999.99&ISO^PI"
    assert oru.get("PID-3[1]") == f"{MATRICULE}^^^RNPP&2.999.1&ISO^NI"


def test_set_empty_value_trims_trailing_delimiters() -> None:
    m = parse(b"MSH|^~\\&|A\rPID|1||X^Y\r")
    m.set("PID-3.2", "")
    m.set("PID-9", "")
    assert m.to_text() == "MSH|^~\\&|A\rPID|1||X\r"


def test_set_msh_field_refreshes_header(oru: Hl7Message) -> None:
    assert oru.header.receiving_app == "PASSERELLE"
    oru.set("MSH-5", "OTHER")
    assert oru.header.receiving_app == "OTHER"
    assert oru.to_text().startswith("MSH|^~\\&|GLIMS^2.999.10.1^ISO|LABO-TEST^2.999.10^ISO|OTHER|DSP|")


def test_set_errors(oru: Hl7Message) -> None:
    with pytest.raises(ValueError, match="several places"):
        oru.set("OBX[*]-5", "x")
    with pytest.raises(ValueError, match="several places"):
        oru.set("PID-3[*]", "x")
    with pytest.raises(ValueError, match="delimiters"):
        oru.set("MSH-1", "#")
    with pytest.raises(ValueError, match="delimiters"):
        oru.set("MSH-2", "$%@!")
    with pytest.raises(ValueError, match="has 0 NTE segment"):
        oru.set("NTE-3", "x")
    with pytest.raises(ValueError, match="has 12 OBX segment"):
        oru.set("OBX[13]-5", "x")
    assert not oru.modified


def test_set_value_the_codec_cannot_encode() -> None:
    adt = parse(ADT_A01_23)
    with pytest.raises(ValueError, match="latin-1"):
        adt.set("PID-5.2", "€uro")
    adt.set("PID-5.2", "Zoé")
    assert adt.to_bytes().count("Zoé".encode("latin-1")) == 1


def test_message_content_rerenders_after_set() -> None:
    message = Message(channel="lab", raw=ORU_R01_25, content_type=HL7V2, meta=SourceMeta("mllp"))
    assert message.content() is ORU_R01_25
    message.hl7.set("OBX[3]-5", "14.1")
    rendered = message.content()
    assert b"|14.1|g/dL" in rendered
    assert message.transformed()
    assert parse(rendered).get("OBX[3]-5") == "14.1"


# --------------------------------------------------------------------------------------------
# Escapes
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("encoded", "plain"),
    [
        ("plain", "plain"),
        ("a\\F\\b", "a|b"),
        ("\\S\\\\T\\\\R\\\\E\\", "^&~\\"),
        ("line1\\.br\\line2", "line1\nline2"),
        ("\\X41\\\\X4243\\", "ABC"),
        ("caf\\XC3A9\\", "café"),
        ("\\H\\bold\\N\\", "\\H\\bold\\N\\"),  # formatting codes are not ours to apply
        ("\\Cxxyy\\", "\\Cxxyy\\"),
        ("\\X4\\", "\\X4\\"),
        ("\\XZZ\\", "\\XZZ\\"),
        ("\\XFF\\", "\\XFF\\"),  # not UTF-8: kept
        ("\\\\", "\\\\"),
        ("tail\\F", "tail\\F"),
        ("\\P\\", "\\P\\"),  # truncation escape needs a 5th encoding character
    ],
)
def test_unescape(encoded: str, plain: str) -> None:
    assert unescape(encoded, ENC, "|") == plain


def test_unescape_truncation_and_other_delimiters() -> None:
    assert unescape("a\\P\\b", "^~\\&#", "|") == "a#b"
    assert unescape("a!F!b!S!c!E!", "$%!@", "#") == "a#b$c!"
    assert unescape("\\XE9\\", ENC, "|", "latin-1") == "é"
    assert unescape("a\\F\\b", "^~", "|") == "a\\F\\b"  # no escape character declared


def test_escape() -> None:
    assert escape("plain text 1.2", ENC, "|") == "plain text 1.2"
    assert escape("a|b^c&d~e\\f", ENC, "|") == "a\\F\\b\\S\\c\\T\\d\\R\\e\\E\\f"
    assert escape("l1\nl2\r\x0b\x1c", ENC, "|") == "l1\\.br\\l2\\X0D\\\\X0B\\\\X1C\\"
    assert escape("a#b", ENC, "|") == "a#b"
    assert escape("a#b", "^~\\&#", "|") == "a\\P\\b"
    with pytest.raises(ValueError, match="no escape character"):
        escape("a^b", "^~", "|")
    assert escape("ab", "^~", "|") == "ab"


@settings(max_examples=200, deadline=None)
@given(st.text(), st.sampled_from([("^~\\&", "|"), ("^~\\&#", "|"), ("$%@!", "#")]))
def test_escape_unescape_round_trip(value: str, delimiters: tuple[str, str]) -> None:
    enc, sep = delimiters
    encoded = escape(value, enc, sep)
    assert not any(c in encoded for c in (sep, enc[0], enc[1], enc[3], "\r", "\n"))
    assert unescape(encoded, enc, sep) == value


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(codec="latin-1")))
def test_set_get_round_trip(value: str) -> None:
    adt = parse(ADT_A01_23)
    adt.set("PID-5.2", value)
    again = parse(adt.to_bytes())
    assert again.get("PID-5.2") == value
    assert again.get("PID-5.1") == "TEST"
    assert again.get("PID-6") == "Müller"


def test_later_msh_segments_use_msh_numbering() -> None:
    batch = parse(b"MSH|^~\\&|A|F\rPID|1\rMSH|^~\\&|B|G\r")
    assert batch.count("MSH") == 2
    assert (batch.get("MSH[2]-1"), batch.get("MSH[2]-2"), batch.get("MSH[2]-3")) == ("|", ENC, "B")
    batch.set("MSH[2]-4", "H")
    assert batch.to_text().endswith("\rMSH|^~\\&|B|H\r")
