"""The real CDA-CH-LRPH rule set (XSLT 2, document() vocabularies, abstract rules) on its samples.

Reference toolchain: the ISO Schematron skeleton (include -> abstract-expand -> svrl) run in
Saxon-HE through saxonche. The skeleton used is the one lxml ships (ISO skeleton, XSLT 1 edition;
the LRPH schema declares no queryBinding, so the skeleton's XSLT 2 edition emits the same
XSLT 1.0 validator and the same location syntax). Set ISO_SCHEMATRON_XSLT2 to a folder holding
the XSLT 2 edition (iso_dsdl_include.xsl, iso_abstract_expand.xsl, iso_svrl_for_xslt2.xsl) to
compare against that instead. Findings are compared as (assertion id, location) multisets.
"""

from __future__ import annotations

import copy
import os
import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import lxml.isoschematron
import pytest
from lxml import etree

from engine.formats.cda import NS, parse_xml
from engine.validation.findings import Issue
from engine.validation.rulesets import Registry, RuleSet
from engine.validation.runner import saxon

REPO = Path(__file__).resolve().parents[2]
LRPH = REPO / "../shared/data/ch-lrph"
SCH = LRPH / "schematrons/HL7.ch/CDA-CH/v1.2/cda-ch-lrph.sch"
SAMPLES = sorted(LRPH.glob("projects/BAG/Meldesysteme/*/*.xml"))
SVRL = {"svrl": "http://purl.oclc.org/dsdl/svrl"}



def test_the_shared_lrph_rule_set_is_present() -> None:
    """The tests below need ../shared/data; without it they must fail, never skip."""
    assert SCH.is_file(), f"{SCH} is missing: the shared data folder must sit beside the repository"


def skeleton_dir() -> tuple[Path, str]:
    custom = os.environ.get("ISO_SCHEMATRON_XSLT2")
    if custom:
        return Path(custom), "iso_svrl_for_xslt2.xsl"
    bundled = Path(lxml.isoschematron.__file__).parent / "resources/xsl/iso-schematron-xslt1"
    return bundled, "iso_svrl_for_xslt1.xsl"


class Reference:
    """The ISO skeleton pipeline in Saxon: the validator compiled once for the module."""

    def __init__(self) -> None:
        folder, compile_step = skeleton_dir()
        xslt = saxon().new_xslt30_processor()
        text = etree.tostring(etree.parse(str(SCH)), encoding="unicode")
        for step in ("iso_dsdl_include.xsl", "iso_abstract_expand.xsl", compile_step):
            stage = xslt.compile_stylesheet(stylesheet_file=str(folder / step))
            node = saxon().parse_xml(xml_text=text)
            text = stage.transform_to_string(xdm_node=node)
        base = SCH.resolve().parent.as_uri() + "/"
        text = re.sub(r"(<xsl:stylesheet\b)", f'\\1 xml:base="{base}"', text, count=1)
        self.exe = xslt.compile_stylesheet(stylesheet_text=text)

    def findings(self, tree: etree._ElementTree) -> Counter[tuple[str, tuple[tuple[str, int], ...]]]:
        out = self.exe.transform_to_string(
            xdm_node=saxon().parse_xml(xml_text=etree.tostring(tree, encoding="unicode"))
        )
        svrl = etree.fromstring(out.encode())
        hits = svrl.xpath("//svrl:failed-assert | //svrl:successful-report", namespaces=SVRL)
        return Counter((str(h.get("id")), steps(str(h.get("location")))) for h in hits)


def steps(location: str) -> tuple[tuple[str, int], ...]:
    """A location as (local name, index) steps, from the skeleton's or our own notation."""
    out = []
    for step in location.strip("/").split("/"):
        name = re.search(r"local-name\(\)='([^']+)'|^\*:([\w.-]+)|^(?:[\w.-]+:|Q\{[^}]*\})?([\w.@-]+)", step)
        index = re.findall(r"\[(\d+)\]", step)
        if name:
            out.append((next(g for g in name.groups() if g), int(index[-1]) if index else 1))
    return tuple(out)


def ours(found: list[Issue]) -> Counter[tuple[str, tuple[tuple[str, int], ...]]]:
    return Counter((i.code, steps(i.location)) for i in found)


@pytest.fixture(scope="module")
def reference() -> Reference:
    return Reference()


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Registry:
    return Registry(REPO, tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def lrph(registry: Registry) -> RuleSet:
    return registry.resolve("ch-lrph")


def test_there_are_eight_samples() -> None:
    assert len(SAMPLES) == 8


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda p: p.name)
def test_same_findings_as_the_reference_toolchain(
    sample: Path, reference: Reference, registry: Registry, lrph: RuleSet
) -> None:
    tree = parse_xml(sample.read_bytes())
    expected = reference.findings(tree)
    found = registry.schematron(tree, lrph)
    assert ours(found) == expected
    failed_asserts = [i for i in found if not i.code.startswith("cda-ch-lrph_re")]
    assert 2 <= len(failed_asserts) <= 10


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda p: p.name)
def test_locations_are_xpaths_that_find_the_node(sample: Path, registry: Registry, lrph: RuleSet) -> None:
    tree = parse_xml(sample.read_bytes())
    ns = {"cda": "urn:hl7-org:v3", "lab": "urn:oid:1.3.6.1.4.1.19376.1.3.2"}
    for issue in registry.schematron(tree, lrph):
        assert len(tree.xpath(issue.location, namespaces=ns)) == 1, issue.location


def test_the_sample_named_in_the_issue(registry: Registry, lrph: RuleSet) -> None:
    tree = parse_xml((LRPH / "projects/BAG/Meldesysteme/v1.0/CDA-CH-LRPH-PCRNachweis.xml").read_bytes())
    found = [(i.severity, i.code) for i in registry.schematron(tree, lrph) if i.severity != "I"]
    assert found == [("W", "cda-ch-lrph_as00009"), ("W", "cda-ch-lrph_as00019")]
    assert registry.choose(tree) == lrph


# ---- planted defects: our own variants of the samples --------------------------------------


def remove_patient_id(root: etree._Element) -> None:
    for e in root.findall("cda:recordTarget/cda:patientRole/cda:id", NS):
        root.find("cda:recordTarget/cda:patientRole", NS).remove(e)


def change_result_code(root: etree._Element) -> None:
    xp = "//cda:observation[cda:templateId/@root='1.3.6.1.4.1.19376.1.3.1.6']/cda:code"
    root.xpath(xp, namespaces=NS)[0].set("code", "99999-9")


def remove_lab_section(root: etree._Element) -> None:
    component = root.find("cda:component/cda:structuredBody/cda:component", NS)
    assert component is not None
    component.getparent().remove(component)


PLANTED: dict[str, tuple[Callable[[etree._Element], None], set[str]]] = {
    "result code changed": (change_result_code, {"cda-ch-lrph_as00389"}),
    "mandatory section missing": (remove_lab_section, {"cda-ch-lrph_as00008"}),
}


def planted(sample: Path, defect: Callable[[etree._Element], None]) -> etree._ElementTree:
    root = copy.deepcopy(parse_xml(sample.read_bytes()).getroot())
    defect(root)
    return parse_xml(etree.tostring(root))


@pytest.mark.parametrize("name", sorted(PLANTED))
@pytest.mark.parametrize("sample", SAMPLES[1:5], ids=lambda p: p.name)
def test_planted_defects_are_caught_like_the_reference(
    name: str, sample: Path, reference: Reference, registry: Registry, lrph: RuleSet
) -> None:
    defect, expected_ids = PLANTED[name]
    before = {i.code for i in registry.schematron(parse_xml(sample.read_bytes()), lrph) if i.severity == "E"}
    tree = planted(sample, defect)
    found = registry.schematron(tree, lrph)
    new_errors = {i.code for i in found if i.severity == "E"} - before
    assert expected_ids <= new_errors
    assert ours(found) == reference.findings(tree)


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda p: p.name)
def test_patient_id_removed_is_caught_by_the_schema_with_a_line(sample: Path, registry: Registry) -> None:
    tree = planted(sample, remove_patient_id)
    issues = registry.xsd(tree, "normative")
    assert issues, "the CDA schema requires patientRole/id"
    first = issues[0]
    assert first.code == "xsd" and first.severity == "E" and first.line > 0
    assert "patientRole" in first.location and f"line {first.line}:" in first.text


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda p: p.name)
def test_samples_are_schema_valid(sample: Path, registry: Registry) -> None:
    assert registry.xsd(parse_xml(sample.read_bytes()), "normative") == []
