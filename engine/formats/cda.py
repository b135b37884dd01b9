"""Safe XML parsing for documents from outside, and the CDA R2 header facts a router needs.

`parse_xml` is the only way an untrusted document becomes a tree: no DTD is loaded or even
accepted (so no entity expansion: billion laughs, and no external entities: XXE), nothing is
fetched from the network or the file system, and size and nesting depth are bounded. Each
refusal is a `ParseError` whose text says why, in words a sender can act on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from lxml import etree

from engine.errors import ParseError

CDA_NS = "urn:hl7-org:v3"
NS = {"cda": CDA_NS}
MAX_BYTES = 20 * 1024 * 1024
MAX_DEPTH = 128

# Any DOCTYPE or ENTITY declaration, in the first bytes or anywhere: refused before parsing.
_DECLARATION = re.compile(rb"<!\s*(DOCTYPE|ENTITY)", re.IGNORECASE)


def _parser() -> etree.XMLParser:
    # huge_tree=False keeps libxml2's own limits (text node size, depth 256) as a second bound.
    return etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
        remove_comments=False,
        collect_ids=False,
    )


def _declarations(data: bytes) -> bool:
    """True when the bytes declare a DTD or entities, in UTF-8/ASCII or UTF-16 form."""
    if _DECLARATION.search(data):
        return True
    if data[:2] in (b"\xff\xfe", b"\xfe\xff") or b"\x00<" in data[:4] or b"<\x00" in data[:4]:
        return bool(_DECLARATION.search(data.replace(b"\x00", b"")))
    return False


def _too_deep(root: etree._Element, max_depth: int) -> bool:
    """True when some element is nested deeper than `max_depth` (the root is depth 1)."""
    probe = "/" + "/".join(["*"] * (max_depth + 1))
    return bool(root.getroottree().xpath(f"boolean({probe})"))


def parse_xml(data: bytes, *, max_bytes: int = MAX_BYTES, max_depth: int = MAX_DEPTH) -> etree._ElementTree:
    """Parse untrusted XML bytes into a tree, or raise `ParseError` with the reason."""
    if len(data) > max_bytes:
        raise ParseError(f"XML document is {len(data)} bytes, over the limit of {max_bytes} bytes")
    if _declarations(data):
        raise ParseError(
            "XML document declares a DTD or entities (<!DOCTYPE/<!ENTITY): not accepted, "
            "because entity expansion and external entities are refused; remove the declaration"
        )
    try:
        root = etree.fromstring(data, _parser())
    except etree.XMLSyntaxError as err:
        raise ParseError(_syntax_reason(err, max_depth)) from err
    tree = root.getroottree()
    if tree.docinfo.doctype or tree.docinfo.internalDTD is not None:
        raise ParseError("XML document declares a DTD: not accepted")
    if _too_deep(root, max_depth):
        raise ParseError(f"XML document nests elements deeper than {max_depth} levels: refused")
    return tree


def _syntax_reason(err: etree.XMLSyntaxError, max_depth: int) -> str:
    text = str(err)
    if "depth" in text.lower():
        return f"XML document nests elements deeper than {max_depth} levels: refused"
    if "entity" in text.lower():
        return f"XML document uses an entity that is not declared or not allowed: {text}"
    return f"XML document is not well-formed: {text}"


@dataclass(frozen=True)
class CdaHeader:
    """The header facts of a CDA document that choose a rule set and route it (no PHI)."""

    root_tag: str
    code: str
    code_system: str
    template_ids: tuple[str, ...]
    document_id: str


def _attr(root: etree._Element, path: str, name: str) -> str:
    found = root.find(path, NS)
    return "" if found is None else found.get(name, "")


def header(tree: etree._ElementTree) -> CdaHeader:
    """Read the document type (LOINC `code`), header templateIds and the document id."""
    root = tree.getroot()
    ids = tuple(t.get("root", "") for t in root.findall("cda:templateId", NS))
    doc_id = _attr(root, "cda:id", "root")
    extension = _attr(root, "cda:id", "extension")
    return CdaHeader(
        root_tag=str(root.tag),
        code=_attr(root, "cda:code", "code"),
        code_system=_attr(root, "cda:code", "codeSystem"),
        template_ids=ids,
        document_id=f"{doc_id}^{extension}" if extension else doc_id,
    )


def is_cda(tree: etree._ElementTree) -> bool:
    return bool(tree.getroot().tag == f"{{{CDA_NS}}}ClinicalDocument")


def location(el: etree._Element) -> str:
    """An XPath to `el` in the notation of Schematron findings: `/cda:ClinicalDocument[1]/cda:id[2]`."""
    steps = []
    node: etree._Element | None = el
    while node is not None:
        q = etree.QName(node)
        prefix = "cda:" if q.namespace == CDA_NS else (f"Q{{{q.namespace}}}" if q.namespace else "")
        same = [s for s in node.itersiblings(preceding=True) if s.tag == node.tag]
        steps.append(f"{prefix}{q.localname}[{len(same) + 1}]")
        node = node.getparent()
    return "/" + "/".join(reversed(steps))


@dataclass(frozen=True)
class CdaMetadata:
    """What a document registry needs from a CDA header (holds patient ids: never log it).

    Ids are `root^extension` (`root` alone when there is no extension). `patient_ids` are
    (root, extension) pairs of recordTarget/patientRole/id; `replaces` is the parentDocument id
    of a `relatedDocument typeCode="RPLC"` ('' when the document replaces nothing).
    """

    document_id: str
    set_id: str
    version: int
    replaces: str
    type_code: str
    type_system: str
    type_name: str
    title: str
    effective_time: str
    confidentiality: str
    patient_ids: tuple[tuple[str, str], ...]
    author: str
    author_organization: str
    custodian: str


def instance_id(el: etree._Element | None) -> str:
    """An II element as `root^extension` ('' when absent or null-flavoured)."""
    if el is None or not el.get("root"):
        return ""
    extension = el.get("extension", "")
    return f"{el.get('root')}^{extension}" if extension else str(el.get("root"))


def _text(root: etree._Element, path: str) -> str:
    found = root.find(path, NS)
    return " ".join("".join(found.itertext()).split()) if found is not None else ""


def _version(root: etree._Element) -> int:
    value = _attr(root, "cda:versionNumber", "value")
    return int(value) if value.isdigit() else 1


def _replaced(root: etree._Element) -> str:
    for related in root.findall("cda:relatedDocument", NS):
        if related.get("typeCode") == "RPLC":
            return instance_id(related.find("cda:parentDocument/cda:id", NS))
    return ""


def _patient_ids(root: etree._Element) -> tuple[tuple[str, str], ...]:
    ids = root.findall("cda:recordTarget/cda:patientRole/cda:id", NS)
    return tuple((i.get("root", ""), i.get("extension", "")) for i in ids if i.get("root"))


def metadata(tree: etree._ElementTree) -> CdaMetadata:
    """The registry metadata of a CDA document; ParseError when it is not a CDA document or has
    no usable unique id (the one thing a registry cannot do without)."""
    if not is_cda(tree):
        raise ParseError("not a CDA document: the root element is not {urn:hl7-org:v3}ClinicalDocument")
    root = tree.getroot()
    document_id = instance_id(root.find("cda:id", NS))
    if not document_id:
        raise ParseError("the CDA document has no unique id (ClinicalDocument/id with a root)")
    author = "cda:author/cda:assignedAuthor"
    return CdaMetadata(
        document_id=document_id,
        set_id=instance_id(root.find("cda:setId", NS)) or document_id,
        version=_version(root),
        replaces=_replaced(root),
        type_code=_attr(root, "cda:code", "code"),
        type_system=_attr(root, "cda:code", "codeSystem"),
        type_name=_attr(root, "cda:code", "displayName"),
        title=_text(root, "cda:title"),
        effective_time=_attr(root, "cda:effectiveTime", "value"),
        confidentiality=_attr(root, "cda:confidentialityCode", "code"),
        patient_ids=_patient_ids(root),
        author=instance_id(root.find(f"{author}/cda:id", NS)),
        author_organization=_text(root, f"{author}/cda:representedOrganization/cda:name"),
        custodian=instance_id(root.find(
            "cda:custodian/cda:assignedCustodian/cda:representedCustodianOrganization/cda:id", NS)),
    )
