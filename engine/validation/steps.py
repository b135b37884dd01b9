"""What the `validate_schematron` and `validate_xsd` steps share: finding the document in a
message (the bytes themselves, or a CDA embedded in an HL7 v2 field) and turning issues into
the step outcome (errors reject the message with AE, warnings travel with it)."""

from __future__ import annotations

import base64
import binascii

from lxml import etree

from engine.errors import Finding, ParseError, Rejected
from engine.formats.cda import parse_xml
from engine.message import HL7V2, Message
from engine.validation.findings import Issue


def _encoding_path(path: str) -> str:
    """`OBX-5.5` (ED data) -> `OBX-5.4` (ED encoding): the component just before the data."""
    head, _, comp = path.rpartition(".")
    return f"{head}.{int(comp) - 1}" if head and comp.isdigit() and int(comp) > 1 else ""


def _hl7_location(path: str) -> str:
    seg, _, rest = path.partition("-")
    return "^".join([seg[:3], "1", *rest.split(".")])


def embedded_document(message: Message, hl7_path: str) -> bytes:
    """The XML document of a message: its content, or for HL7 v2 the field at `hl7_path`."""
    if message.content_type != HL7V2:
        return message.content()
    value = message.hl7.get(hl7_path)
    if not value:
        raise Rejected([Finding(f"no CDA document in {hl7_path}", "101", _hl7_location(hl7_path))], "AE")
    encoding = message.hl7.get(_encoding_path(hl7_path)) if _encoding_path(hl7_path) else ""
    if encoding.lower() != "base64":
        return value.encode("utf-8")
    try:
        return base64.b64decode("".join(value.split()), validate=True)
    except (binascii.Error, ValueError) as err:
        text = f"the document in {hl7_path} is declared Base64 but is not valid Base64"
        raise Rejected([Finding(text, "102", _hl7_location(hl7_path))], "AE") from err


def parsed(message: Message, hl7_path: str, max_bytes: int, max_depth: int) -> etree._ElementTree:
    """The safely parsed document; unsafe or malformed XML rejects the message (AE)."""
    data = embedded_document(message, hl7_path)
    try:
        return parse_xml(data, max_bytes=max_bytes, max_depth=max_depth)
    except ParseError as err:
        raise Rejected([Finding(str(err), "xml-refused", "/", "E")], "AE") from err


def conclude(message: Message, issues: list[Issue], keep_information: bool) -> Message:
    """Errors: Rejected AE carrying every error and warning. Otherwise warnings ride along."""
    kept = [i for i in issues if i.severity != "I" or keep_information]
    findings = [i.finding() for i in kept]
    if any(i.severity == "E" for i in kept):
        raise Rejected(findings, ack_code="AE")
    message.findings.extend(findings)
    return message
