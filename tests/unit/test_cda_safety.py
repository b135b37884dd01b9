"""Safe XML: no DTD, no entity expansion, no external access, bounded size and depth."""

from __future__ import annotations

import resource

import pytest

from engine.errors import ParseError
from engine.formats.cda import header, is_cda, parse_xml

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<ClinicalDocument xmlns="urn:hl7-org:v3"><title>&lol9;</title></ClinicalDocument>"""

XXE_FILE = b"""<?xml version="1.0"?>
<!DOCTYPE d [<!ENTITY x SYSTEM "file:///etc/passwd">]>
<ClinicalDocument xmlns="urn:hl7-org:v3"><title>&x;</title></ClinicalDocument>"""

XXE_NETWORK = b"""<?xml version="1.0"?>
<!DOCTYPE d [<!ENTITY % p SYSTEM "http://127.0.0.1:9/evil.dtd"> %p;]>
<ClinicalDocument xmlns="urn:hl7-org:v3"/>"""

EXTERNAL_DTD = b"""<?xml version="1.0"?>
<!DOCTYPE ClinicalDocument SYSTEM "http://127.0.0.1:9/cda.dtd">
<ClinicalDocument xmlns="urn:hl7-org:v3"/>"""

UNDECLARED_ENTITY = b"""<ClinicalDocument xmlns="urn:hl7-org:v3"><title>&x;</title></ClinicalDocument>"""

CDA = b"""<ClinicalDocument xmlns="urn:hl7-org:v3">
<templateId root="1.2.3"/><templateId root="4.5.6"/><id root="9.9" extension="D1"/>
<code code="11502-2" codeSystem="2.16.840.1.113883.6.1"/></ClinicalDocument>"""


def refused(data: bytes, **limits: int) -> tuple[str, int]:
    """(reason, growth of the process's peak memory in KiB). How fast: tests/fuzz and bench, not here."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ParseError) as caught:
        parse_xml(data, **limits)
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    return str(caught.value), grown


@pytest.mark.parametrize("attack", [BILLION_LAUGHS, XXE_FILE, XXE_NETWORK, EXTERNAL_DTD])
def test_dtd_and_entity_attacks_are_refused_in_bounded_memory(attack: bytes) -> None:
    reason, grown = refused(attack)
    assert "DTD or entities" in reason
    assert grown < 10 * 1024


def test_utf16_doctype_is_refused_too() -> None:
    reason, _ = refused(
        BILLION_LAUGHS.decode().replace('"1.0"?', '"1.0" encoding="UTF-16"?').encode("utf-16")
    )
    assert "DTD or entities" in reason


def test_undeclared_entity_is_refused() -> None:
    reason, _ = refused(UNDECLARED_ENTITY)
    assert "entity" in reason


def test_oversize_is_refused_before_parsing() -> None:
    reason, _ = refused(b"<a>" + b"x" * 2_000_000 + b"</a>", max_bytes=1_000_000)
    assert "over the limit of 1000000 bytes" in reason


def test_deep_nesting_is_refused() -> None:
    reason, _ = refused(b"<a>" * 60 + b"</a>" * 60, max_depth=50)
    assert "deeper than 50 levels" in reason


def test_pathological_depth_is_refused_in_bounded_memory() -> None:
    reason, grown = refused(b"<a>" * 1_000_000 + b"</a>" * 1_000_000)
    assert "deeper than" in reason
    assert grown < 50 * 1024


def test_depth_at_the_limit_is_accepted() -> None:
    assert parse_xml(b"<a>" * 50 + b"</a>" * 50, max_depth=50).getroot().tag == "a"


def test_malformed_xml_is_refused_with_the_parser_reason() -> None:
    reason, _ = refused(b"<ClinicalDocument><title></ClinicalDocument>")
    assert reason.startswith("XML document is not well-formed")


def test_xinclude_is_not_processed() -> None:
    data = (
        b'<a xmlns:xi="http://www.w3.org/2001/XInclude">'
        b'<xi:include href="file:///etc/passwd" parse="text"/></a>'
    )
    tree = parse_xml(data)
    assert "root:" not in "".join(tree.getroot().itertext())


def test_header_facts() -> None:
    tree = parse_xml(CDA)
    h = header(tree)
    assert is_cda(tree)
    assert (h.code, h.code_system) == ("11502-2", "2.16.840.1.113883.6.1")
    assert h.template_ids == ("1.2.3", "4.5.6")
    assert h.document_id == "9.9^D1"
