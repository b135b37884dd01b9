"""Content type of a payload from its first bytes: HL7 v2, CDA, other XML, DICOM. No I/O.

Used by the file-like sources (SFTP, AMQP) that receive documents without a reliable type:
HL7 v2 starts with MSH, FHS or BHS; DICOM Part 10 has `DICM` after its 128-byte preamble; CDA is
XML whose root element is `ClinicalDocument` (any prefix). Anything else is "" (unknown), and the
source decides (a configured fallback, or a refusal naming the problem).
"""

from __future__ import annotations

import re

from engine.message import CDA, DICOM, HL7V2, XML

HEAD_BYTES = 4096  # what `sniff` needs to see at most
BINARY = "application/octet-stream"
_BOM = b"\xef\xbb\xbf"
_ROOT = re.compile(rb"<(?![?!])(?:[A-Za-z_][\w.-]*:)?([A-Za-z_][\w.-]*)")
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
