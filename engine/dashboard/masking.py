"""Patient data hidden from roles that do not need it (viewer, operator).

HL7 v2: the identifying fields of PID, PD1, NK1, MRG, GT1, IN1/IN2 and QPD query parameters are
replaced by `***` (segment and field structure kept, so operators still see which fields were
sent). XML (CDA, manifests): every text and identifying attribute under `recordTarget` and other
patient elements is replaced. Content that cannot be read safely is hidden whole: when in
doubt, show less.
"""

from __future__ import annotations

from lxml import etree

from engine.errors import ParseError
from engine.formats.cda import parse_xml
from engine.formats.hl7v2 import decode

MASK = "***"

# Field positions (SEG-n) holding names, ids, birth dates, addresses, phones of a person.
HL7_PHI_FIELDS: dict[str, frozenset[int]] = {
    "PID": frozenset({2, 3, 4, 5, 6, 7, 9, 11, 12, 13, 14, 18, 19, 20, 21, 23, 26, 29}),
    "PD1": frozenset({4, 7}),
    "NK1": frozenset({2, 4, 5, 6, 7, 12, 13, 16, 19, 30, 31, 32, 33, 37, 38}),
    "MRG": frozenset({1, 2, 3, 4, 5, 6, 7}),
    "GT1": frozenset({2, 3, 4, 5, 6, 7, 8, 9, 12, 19}),
    "IN1": frozenset({16, 18, 19, 49}),
    "IN2": frozenset({1, 2, 6, 7, 8}),
    "QPD": frozenset(range(3, 20)),
    "PV1": frozenset({19, 50}),  # visit numbers lead straight to the patient
}

PATIENT_ELEMENTS = frozenset(
    {
        "recordTarget",
        "patientRole",
        "patient",
        "guardian",
        "Patient",
        "PatientName",
        "PatientID",
        "PatientBirthDate",
    }
)
KEPT_ATTRIBUTES = frozenset(
    {
        "root",
        "classCode",
        "moodCode",
        "typeCode",
        "determinerCode",
        "codeSystem",
        "codeSystemName",
        "use",
        "nullFlavor",
        "{http://www.w3.org/2001/XMLSchema-instance}type",
    }
)


def mask_hl7_text(text: str) -> str:
    """The HL7 text with identifying fields replaced; separators and segment order kept."""
    lines = text.replace("\n", "\r").split("\r")
    sep = text[3] if text.startswith(("MSH", "FHS", "BHS")) and len(text) > 3 else "|"
    return "\r".join(mask_segment(line, sep) for line in lines)


def mask_segment(line: str, sep: str) -> str:
    fields = line.split(sep)
    positions = HL7_PHI_FIELDS.get(fields[0])
    if not positions:
        return line
    return sep.join(MASK if i in positions and value else value for i, value in enumerate(fields))


def mask_xml(data: bytes) -> bytes:
    """The document with patient elements' text and identifying attributes replaced."""
    tree = parse_xml(data)
    for element in tree.getroot().iter():
        if isinstance(element.tag, str) and etree.QName(element).localname in PATIENT_ELEMENTS:
            mask_subtree(element)
    out: bytes = etree.tostring(tree, encoding="utf-8", xml_declaration=True)
    return out


def mask_subtree(element: etree._Element) -> None:
    for node in element.iter():
        if not isinstance(node.tag, str):
            node.text = MASK  # comments and processing instructions too
            continue
        if node.text and node.text.strip():
            node.text = MASK
        if node is not element and node.tail and node.tail.strip():
            node.tail = MASK
        for name in node.attrib:
            if name not in KEPT_ATTRIBUTES:
                node.attrib[name] = MASK


def is_hl7(data: bytes) -> bool:
    return data.lstrip(b"\x0b\r\n \t").startswith((b"MSH", b"FHS", b"BHS"))


def is_xml(data: bytes) -> bool:
    return data.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"<")


def masked_text(data: bytes, charset: str = "") -> str:
    """What a role without `phi` may see of stored content."""
    try:
        if is_hl7(data):
            text, _ = decode(data, charset)
            return mask_hl7_text(text)
        if is_xml(data):
            return mask_xml(data).decode("utf-8")
    except (ParseError, UnicodeDecodeError, ValueError, etree.LxmlError):
        pass
    return f"[content hidden: {len(data)} bytes that cannot be masked safely]"
