"""CDA R2 XML Schema validation (lxml / libxml2), with line numbers for the sender.

The schemas are vendored under `schematron/cda-core/` (HL7 CDA-core-2.0, folder `schema/`):
`normative` is POCD_MT000040 as published, `sdtc` the SDTC-extended schema most real documents
need. Each schema is loaded once per process; nothing is fetched from the network.
"""

from __future__ import annotations

import threading
from pathlib import Path

from lxml import etree

from engine.formats.cda import location
from engine.validation.findings import Issue

SCHEMAS = {
    "normative": "schematron/cda-core/normative/infrastructure/cda/CDA.xsd",
    "sdtc": "schematron/cda-core/extensions/SDTC/infrastructure/cda/CDA_SDTC.xsd",
}


class XsdValidator:
    """One compiled XML Schema."""

    def __init__(self, path: Path, name: str) -> None:
        parser = etree.XMLParser(no_network=True, resolve_entities=False, load_dtd=False)
        self.name = name
        self.schema = etree.XMLSchema(etree.parse(str(path), parser))

    def validate(self, tree: etree._ElementTree) -> list[Issue]:
        if self.schema.validate(tree):
            return []
        return [
            Issue(
                "E",
                "xsd",
                _where(tree, e.path),
                f"line {e.line}: {_plain(e.message)}",
                e.line,
                f"xsd:{self.name}",
            )
            for e in self.schema.error_log
        ]


def _where(tree: etree._ElementTree, path: str | None) -> str:
    """libxml2's positional path (`/*/*[14]`) made readable (`/cda:ClinicalDocument[1]/...`)."""
    found = tree.xpath(path) if path else []
    if isinstance(found, list) and found and isinstance(found[0], etree._Element):
        return location(found[0])
    return path or ""


def _plain(message: str) -> str:
    """libxml2 names elements `{urn:hl7-org:v3}x`; senders read `x` more easily."""
    return message.replace("{urn:hl7-org:v3}", "")


_loaded: dict[tuple[Path, str], XsdValidator] = {}
_lock = threading.Lock()


def xsd_validator(root: Path, flavour: str) -> XsdValidator:
    """The schema `flavour` ("sdtc"/"normative") or a path to an .xsd, loaded once."""
    path = root / SCHEMAS[flavour] if flavour in SCHEMAS else Path(flavour)
    with _lock:
        key = (path.resolve(), flavour)
        if key not in _loaded:
            _loaded[key] = XsdValidator(path, flavour if flavour in SCHEMAS else path.name)
        return _loaded[key]
