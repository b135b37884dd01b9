"""Fuzz targets: every parser that touches outside bytes, with the invariant it must keep.

Each target takes arbitrary bytes and may raise only the errors its parser documents
(`ParseError`, `FrameError`, `ConfigError`); anything else is a crash. Where a round trip
exists it is checked too (framing, HL7 escapes, ACKs parseable by an independent parser).
`tests/fuzz/run.py` drives them with atheris (coverage-guided); `test_fuzz_smoke.py` runs
each on a few thousand inputs in every `make test` so they cannot rot.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

from engine.errors import ConfigError, FrameError, ParseError

Target = Callable[[bytes], None]


def mllp_framing(data: bytes) -> None:
    """Framing: any split of any stream yields the same frames, or a FrameError."""
    from engine.connectors.mllp.framing import MllpDecoder

    cut = data[0] % (len(data) or 1) if data else 0
    whole, parts = MllpDecoder(4096), MllpDecoder(4096)
    try:
        expected = whole.feed(data)
    except FrameError:
        return
    try:
        got = parts.feed(data[:cut]) + parts.feed(data[cut:])
    except FrameError as err:
        raise AssertionError("a split stream failed where the whole one did not") from err
    assert got == expected, "frames depend on how the bytes were split"


def hl7_parser(data: bytes) -> None:
    """The lazy parser: header, field access by path, escapes, re-rendering."""
    from engine.formats.hl7v2 import parse

    try:
        message = parse(data)
    except ParseError:
        return
    message.header  # noqa: B018 - reading it is the test
    for path in ("PID-3[*].1", "OBX[*]-5", "MSH-9.2", "PID-5.1", "ZZZ[*]-99[*].9.9"):
        message.get_all(path)
    message.to_bytes()


def hl7_ack(data: bytes) -> None:
    """Every readable header gets an ACK that an independent parser (python-hl7) reads back."""
    import hl7

    from engine.errors import Finding
    from engine.formats.hl7v2 import build_ack, read_header

    try:
        header = read_header(data)
    except ParseError:
        return
    from engine.connectors.mllp.framing import frame
    from engine.formats.hl7v2 import parse

    text = data[-40:].decode("latin-1")  # hostile finding text: separators, escapes, CR
    ack = build_ack(header, "AE", (Finding(text, code="101", location="PID^1^3"),))
    assert ack.count(b"\r") == 3, "a finding text broke the ACK's segment structure"
    from engine.formats.hl7v2 import CHARSETS

    if header.charset.upper() in CHARSETS or not header.charset:  # an unknown MSH-18 is echoed as sent
        assert parse(ack).get("MSA-1") == "AE"
    if b"\x0b" not in data and b"\x1c" not in data:
        frame(ack)  # what arrived over MLLP can always be answered over MLLP
    if header.encoding_chars == "^~\\&":  # python-hl7 only reads the usual delimiters
        assert str(hl7.parse(ack.decode("latin-1")).segment("MSA")[1]) == "AE"


def cda_xml(data: bytes) -> None:
    """Safe XML intake and CDA metadata extraction."""
    from engine.formats.cda import metadata, parse_xml

    try:
        metadata(parse_xml(data))
    except ParseError:
        return


def dicom_manifest(data: bytes) -> None:
    """KOS manifest reading (pydicom): a manifest or a ParseError with the reason."""
    from engine.formats.dicom_manifest import read_manifest

    preambled = b"\0" * 128 + b"DICM" + data if data[:1] == b"\x01" else data
    try:
        read_manifest(preambled)
    except ParseError:
        return


def sftp_batch(data: bytes) -> None:
    """FHS/BHS batch splitting, fed in two chunks."""
    from engine.connectors.sftp.batch import Hl7Splitter

    splitter = Hl7Splitter(4096)
    cut = len(data) // 2
    try:
        splitter.feed(data[:cut])
        splitter.feed(data[cut:])
        splitter.close()
    except ParseError:
        return


# One empty folder for every input: the channel's bytes are given in memory (`parse_channel`, what
# `load_channel` runs after reading the file), so no file is written per input; the folder only
# has to exist and hold no `fuzz.tests.yaml` or secret files, so `${file:...}` references fail
# with a problem line the same way every time.
_FOLDER = Path(tempfile.mkdtemp(prefix="fuzz-channel-yaml-"))
_CHANNEL_FILE = _FOLDER / "fuzz.yaml"


def channel_yaml(data: bytes) -> None:
    """The channel loader on arbitrary bytes: a ChannelSpec or `file: path: message` problems."""
    from engine.config import Problems, parse_channel

    problems = Problems()
    try:
        parse_channel(data, _CHANNEL_FILE, _FOLDER, problems)
        problems.raise_if_any()
    except ConfigError as err:
        assert all(line.startswith(str(_CHANNEL_FILE)) for line in err.problems)


TARGETS: dict[str, Target] = {
    "mllp_framing": mllp_framing,
    "hl7_parser": hl7_parser,
    "hl7_ack": hl7_ack,
    "cda_xml": cda_xml,
    "dicom_manifest": dicom_manifest,
    "sftp_batch": sftp_batch,
    "channel_yaml": channel_yaml,
}
