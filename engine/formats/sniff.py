"""Content type of a payload from its first bytes (HL7 v2, CDA, other XML, DICOM), and the
envelope checks shared by the file-like sources. No I/O.

Used by the file-like sources (SFTP, AMQP) that receive documents without a reliable type:
HL7 v2 starts with MSH, FHS or BHS; DICOM Part 10 has `DICM` after its 128-byte preamble; CDA is
XML whose root element is `ClinicalDocument` (any prefix). Anything else is "" (unknown), and the
source decides (a configured fallback, or a refusal naming the problem).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from engine.errors import Finding, ParseError
from engine.formats.hl7v2 import codec_for, read_header
from engine.message import CDA, DICOM, HL7V2, XML

HEAD_BYTES = 4096  # what `sniff` needs to see at most
BINARY = "application/octet-stream"
_BOM = b"\xef\xbb\xbf"
_ROOT = re.compile(rb"<(?![?!])(?:[A-Za-z_][\w.-]*:)?([A-Za-z_][\w.-]*)")
_LINE_END = re.compile(rb"\r\n|\r|\n")
_XML_DECLARED = re.compile(rb"""^<\?xml[^>]*encoding\s*=\s*["']([A-Za-z0-9._-]+)["']""")


def sniff(head: bytes) -> str:
    """The content type recognised from the first bytes (up to HEAD_BYTES), or ''."""
    if len(head) >= 132 and head[128:132] == b"DICM":
        return DICOM
    text = head.removeprefix(_BOM).lstrip(b" \t\r\n")
    if text[:3] in (b"MSH", b"FHS", b"BHS"):
        return HL7V2
    if text.startswith(b"<"):
        root = _ROOT.search(_without_comments(text))
        return CDA if root is not None and root.group(1) == b"ClinicalDocument" else XML
    return ""


def _without_comments(text: bytes) -> bytes:
    return re.sub(rb"<!--.*?-->", b"", text, flags=re.S)


def xml_encoding(head: bytes) -> str:
    """The encoding an XML document declares (`utf-8` when it declares none)."""
    found = _XML_DECLARED.match(head.removeprefix(_BOM).lstrip())
    return found.group(1).decode("ascii").lower() if found else "utf-8"


@dataclass(frozen=True)
class Envelope:
    """How a message is identified for de-duplication, and what makes it unacceptable, if anything."""

    control_id: str
    sender: str
    charset: str = ""
    problem: Finding | None = None


def hl7_envelope(raw: bytes, default_charset: str, fallback_sender: str) -> Envelope:
    """MSH-10 + MSH-3/4 identify an HL7 message; an unreadable header, an empty MSH-10 or bytes
    invalid in the declared charset are problems (the content hash then identifies it)."""
    fallback = content_id(raw)
    try:
        header = read_header(raw)
    except ParseError as err:
        return Envelope(fallback, fallback_sender, problem=Finding(str(err), code="100"))
    if not header.control_id:
        empty = Finding("MSH-10 (message control id) is empty", code="101", location="MSH^1^10")
        return Envelope(fallback, fallback_sender, problem=empty)
    try:
        codec = codec_for(header.charset, default_charset)
        raw.decode(codec)
    except (ParseError, LookupError, UnicodeDecodeError) as err:
        finding = Finding(decode_text(raw, err), code="102", location="MSH^1^18")
        return Envelope(header.control_id, header.sender, problem=finding)
    return Envelope(header.control_id, header.sender, charset=codec)


def content_id(raw: bytes) -> str:
    """The de-duplication id of content without one of its own: SHA-256, first 32 hex digits."""
    return hashlib.sha256(raw).hexdigest()[:32]


def text_problem(raw: bytes, content_type: str) -> Finding | None:
    """For XML documents: bytes that are not valid in the declared encoding."""
    if content_type not in (CDA, XML):
        return None
    encoding = xml_encoding(raw[:HEAD_BYTES])
    try:
        raw.decode(encoding)
    except LookupError:
        return Finding(f'the XML declares an unknown encoding "{encoding}"', code="102")
    except UnicodeDecodeError as err:
        return Finding(decode_text(raw, err), code="102")
    return None


def decode_text(raw: bytes, err: Exception) -> str:
    """Where undecodable bytes are, without quoting the content (it may hold patient data)."""
    if isinstance(err, UnicodeDecodeError):
        line = len(_LINE_END.split(raw[: err.start]))
        where = f"offset {err.start} (line {line})"
        return f"byte 0x{raw[err.start]:02X} at {where} is not valid in {err.encoding}"
    return str(err)
