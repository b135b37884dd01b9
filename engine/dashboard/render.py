"""How stored content is shown: HL7 v2 segment by segment (field positions for hover), XML
pretty-printed, anything else as text. Masking (masking.py) is applied first for roles without `phi`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lxml import etree

from engine.dashboard.masking import is_hl7, is_xml, masked_text
from engine.errors import ParseError
from engine.formats.cda import parse_xml
from engine.formats.hl7v2 import decode

MAX_SHOWN = 512 * 1024  # bytes of a stage shown in a page; the API returns the whole


@dataclass
class Segment:
    name: str
    fields: list[tuple[str, str]] = field(default_factory=list)  # (position like "PID-5", value)


@dataclass
class View:
    """One stage (raw, transformed, response...) ready for a template or the API."""

    kind: str  # hl7 | xml | text | empty
    text: str
    segments: list[Segment] = field(default_factory=list)
    separator: str = "|"

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "text": self.text}


def view(data: bytes | None, phi: bool, charset: str = "") -> View:
    if not data:
        return View("empty", "")
    text = content_text(data, charset) if phi else masked_text(data, charset)
    if is_hl7(data) and text.startswith(("MSH", "FHS", "BHS")):
        return View("hl7", text, hl7_segments(text), text[3])
    if is_xml(data) and text.startswith("<"):
        return View("xml", pretty_xml(text))
    return View("text", text)


def content_text(data: bytes, charset: str = "") -> str:
    if is_hl7(data):
        try:
            return decode(data, charset)[0]
        except ParseError:
            return data.decode("latin-1")
    return data.decode("utf-8", errors="replace")


def hl7_segments(text: str) -> list[Segment]:
    sep = text[3]
    segments = []
    for line in filter(None, text.replace("\n", "\r").split("\r")):
        parts = line.split(sep)
        name = parts[0]
        segment = Segment(name)
        if name in ("MSH", "FHS", "BHS"):
            # SEG-1 is the field separator itself: parts[1] is SEG-2 (the encoding characters).
            segment.fields = [(f"{name}-{i + 1}", value) for i, value in enumerate(parts[1:], start=1)]
        else:
            segment.fields = [(f"{name}-{i}", value) for i, value in enumerate(parts[1:], start=1)]
        segments.append(segment)
    return segments


def pretty_xml(text: str) -> str:
    try:
        tree = parse_xml(text.encode("utf-8"))
    except ParseError:
        return text
    etree.indent(tree, space="  ")
    pretty: str = etree.tostring(tree, encoding="unicode")
    return pretty


def shown(data: bytes | None) -> bytes | None:
    """Bound what a page renders (the full content stays available through the API)."""
    return data[:MAX_SHOWN] if data else data
