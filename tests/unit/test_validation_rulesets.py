"""Passerelle's own rule sets: XSLT 2 (Saxon: lab report, notifiable) and XSLT 1 (lxml: header, KOS)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from lxml import etree

from engine.formats.cda import NS, parse_xml
from engine.matricule import make_matricule
from engine.validation.rulesets import Registry
from engine.validation.runner import LxmlValidator, SaxonValidator

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "tests/data/validation"
DICOM = {"d": "http://dicom.nema.org/PS3.19/models/NativeDICOM"}


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Registry:
    return Registry(REPO, tmp_path_factory.mktemp("cache"))


def lab(
    edit: Callable[[etree._Element], None] | None = None, name: str = "lab-report.xml"
) -> etree._ElementTree:
    root = parse_xml((DATA / name).read_bytes()).getroot()
    if edit:
        edit(root)
    return parse_xml(etree.tostring(root))


def chosen(registry: Registry, tree: etree._ElementTree) -> str:
    found = registry.choose(tree)
    return found.name if found else ""


def errors(registry: Registry, tree: etree._ElementTree, rules: str) -> set[str]:
    return {i.code for i in registry.schematron(tree, registry.resolve(rules)) if i.severity == "E"}


def one(root: etree._Element, xpath: str, ns: dict[str, str] = NS) -> etree._Element:
    found = root.xpath(xpath, namespaces=ns)
    assert isinstance(found, list) and isinstance(found[0], etree._Element)
    return found[0]


def drop(xpath: str, ns: dict[str, str] = NS) -> Callable[[etree._Element], None]:
    def edit(root: etree._Element) -> None:
        el = one(root, xpath, ns)
        el.getparent().remove(el)

    return edit


def set_attr(xpath: str, name: str, value: str, ns: dict[str, str] = NS) -> Callable[[etree._Element], None]:
    def edit(root: etree._Element) -> None:
        one(root, xpath, ns).set(name, value)

    return edit


@pytest.mark.parametrize("rules", ["clinical-document", "lab-report", "notifiable-lab-report"])
def test_the_valid_sample_passes(registry: Registry, rules: str) -> None:
    assert registry.schematron(lab(), registry.resolve(rules)) == []
    assert registry.xsd(lab(), "sdtc") == []


def test_bindings_choose_the_processor(registry: Registry) -> None:
    assert isinstance(registry.validator(registry.resolve("lab-report"))[0], SaxonValidator)
    assert isinstance(registry.validator(registry.resolve("clinical-document"))[0], LxmlValidator)
    assert isinstance(registry.validator(registry.resolve("imaging-manifest"))[0], LxmlValidator)


def test_selection_by_document_type(registry: Registry) -> None:
    assert chosen(registry, lab()) == "notifiable-lab-report"
    plain = lab(drop("/cda:ClinicalDocument/cda:templateId"))
    assert chosen(registry, plain) == "lab-report"

    def summary(root: etree._Element) -> None:
        drop("/cda:ClinicalDocument/cda:templateId")(root)
        set_attr("/cda:ClinicalDocument/cda:code", "code", "34133-9")(root)

    assert chosen(registry, lab(summary)) == "clinical-document"
    kos = parse_xml((DATA / "kos-manifest.xml").read_bytes())
    assert chosen(registry, kos) == "imaging-manifest"


PID = "/cda:ClinicalDocument/cda:recordTarget/cda:patientRole/cda:id[1]"
RESULT = "//cda:entry[2]/cda:observation"


@pytest.mark.parametrize(
    ("defect", "expected"),
    [
        (drop(PID), "lab-pid-national"),
        (set_attr(PID, "extension", "198301011237"), "lab-pid-format"),
        (set_attr(PID, "extension", "1983010112384"), "lab-pid-check"),  # single digit changed
        (set_attr(PID, "extension", "1983011012374"), "lab-pid-check"),  # adjacent digits swapped
        (set_attr(PID, "extension", make_matricule("19830101123")[:12] + "0"), "lab-pid-check"),
        (set_attr(RESULT + "/cda:code", "codeSystem", "2.16.840.1.113883.6.96"), "lab-res-loinc"),
        (set_attr(RESULT + "/cda:code", "code", "HGB"), "lab-res-loinc-syntax"),
        (set_attr(RESULT + "/cda:value", "unit", "g per L"), "lab-res-ucum"),
        (drop("//cda:structuredBody/cda:component"), "lab-section"),
        (set_attr("/cda:ClinicalDocument/cda:code", "code", "34133-9"), "lab-doc-type"),
        (drop("/cda:ClinicalDocument/cda:author/cda:assignedAuthor/cda:id"), "hdr-author-id"),
        (
            drop(
                "/cda:ClinicalDocument/cda:custodian/cda:assignedCustodian/cda:representedCustodianOrganization/cda:id"
            ),
            "hdr-party-id",
        ),
        (drop("/cda:ClinicalDocument/cda:effectiveTime"), "hdr-effective-time"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_lab_report_defects_are_caught(
    registry: Registry, defect: Callable[[etree._Element], None], expected: str
) -> None:
    assert expected in errors(registry, lab(defect), "lab-report")


def test_unit_missing_on_a_quantity(registry: Registry) -> None:
    def no_unit(root: etree._Element) -> None:
        del one(root, RESULT + "/cda:value").attrib["unit"]

    assert "lab-res-ucum" in errors(registry, lab(no_unit), "lab-report")


def test_findings_name_the_node_and_speak_to_the_sender(registry: Registry) -> None:
    tree = lab(set_attr(RESULT + "/cda:code", "code", "HGB"))
    [issue] = [
        i
        for i in registry.schematron(tree, registry.resolve("lab-report"))
        if i.code == "lab-res-loinc-syntax"
    ]
    assert issue.location.endswith("cda:entry[2]/cda:observation[1]")
    assert tree.xpath(issue.location, namespaces=NS)[0].tag.endswith("observation")
    assert 'This result has the LOINC code "HGB"' in issue.text


def test_custodian_uses_the_abstract_rule_and_names_the_element(registry: Registry) -> None:
    tree = lab(drop("//cda:representedCustodianOrganization/cda:id"))
    [issue] = [
        i
        for i in registry.schematron(tree, registry.resolve("clinical-document"))
        if i.code == "hdr-party-id"
    ]
    assert issue.text.startswith("representedCustodianOrganization has no identifier")


def test_xslt_matricule_functions_agree_with_python(registry: Registry) -> None:
    for first11 in ("19830101123", "20240229999", "19500000000", "19991231555", "20100700042"):
        good = make_matricule(first11)
        for value, ok in (
            (good, True),
            (good[:12] + str((int(good[12]) + 3) % 10), False),
            (good[:11] + str((int(good[11]) + 1) % 10) + good[12], False),
        ):
            found = errors(registry, lab(set_attr(PID, "extension", value)), "lab-report")
            assert ("lab-pid-check" not in found) == ok, value


@pytest.mark.parametrize(
    ("defect", "expected"),
    [
        (set_attr("//cda:entry[1]/cda:observation/cda:code", "code", "718-7"), "ntf-result"),
        (drop("//cda:entry[1]/cda:observation/cda:value"), "ntf-finding"),
        (drop("//cda:entry[1]/cda:observation/cda:effectiveTime"), "ntf-time"),
    ],
    ids=["no-notifiable-result", "no-coded-finding", "no-time"],
)
def test_notifiable_defects_are_caught(
    registry: Registry, defect: Callable[[etree._Element], None], expected: str
) -> None:
    found = errors(registry, lab(defect), "notifiable-lab-report")
    assert expected in found
    assert expected not in errors(registry, lab(defect), "lab-report")


def test_notifiable_inherits_the_lab_report_rules(registry: Registry) -> None:
    assert "lab-pid-national" in errors(registry, lab(drop(PID)), "notifiable-lab-report")


KOS_SOP = "//d:DicomAttribute[@tag='00081199']/d:Item/d:DicomAttribute[@tag='00081155']"


@pytest.mark.parametrize(
    ("defect", "expected"),
    [
        (set_attr("/d:NativeDicomModel/d:DicomAttribute[@tag='00080016']/d:Value", "x", "y", DICOM), None),
        (drop("/d:NativeDicomModel/d:DicomAttribute[@tag='00080060']", DICOM), "kos-modality"),
        (drop("//d:DicomAttribute[@tag='00080054']", DICOM), "kos-retrieve"),
        (drop(KOS_SOP, DICOM), "kos-sop-ref"),
        (drop("/d:NativeDicomModel/d:DicomAttribute[@tag='00100020']", DICOM), "kos-patient-id"),
    ],
    ids=["untouched", "modality", "retrieve", "sop-ref", "patient-id"],
)
def test_imaging_manifest_rules_in_xslt1(
    registry: Registry, defect: Callable[[etree._Element], None], expected: str | None
) -> None:
    tree = lab(defect, name="kos-manifest.xml")
    found = errors(registry, tree, "imaging-manifest")
    assert found == ({expected} if expected else set())


def test_bad_uid_is_located_in_xslt1(registry: Registry) -> None:
    tree = lab(
        set_attr("//d:DicomAttribute[@tag='0020000E']/d:Value", "x", "1", DICOM), name="kos-manifest.xml"
    )
    one(tree.getroot(), "//d:DicomAttribute[@tag='0020000E']/d:Value", DICOM).text = "2.25.12a"
    [issue] = registry.schematron(tree, registry.resolve("imaging-manifest"))
    assert issue.code == "kos-uid-syntax" and "SeriesInstanceUID" in issue.text
    assert issue.location.endswith("d:Item[1]/d:DicomAttribute[1]/d:Value[1]")


def test_xsd_errors_carry_line_numbers(registry: Registry) -> None:
    data = (
        (DATA / "lab-report.xml")
        .read_bytes()
        .replace(b"<title>Laboratory report</title>", b"<titel>x</titel>")
    )
    [issue] = registry.xsd(parse_xml(data), "sdtc")
    assert issue.line == 8 and issue.text.startswith("line 8: Element 'titel'")
    assert issue.location == "/cda:ClinicalDocument[1]/cda:titel[1]"
