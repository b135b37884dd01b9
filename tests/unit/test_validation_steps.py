"""The `validate_schematron` and `validate_xsd` steps: reject with precise findings, or pass with warnings."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from engine.contracts import BuildContext
from engine.errors import ConfigError, Rejected
from engine.message import CDA, HL7V2, Message, SourceMeta
from transforms import validate_schematron, validate_xsd

REPO = Path(__file__).resolve().parents[2]
SAMPLE = (REPO / "tests/data/validation/lab-report.xml").read_bytes()
CONTEXT = BuildContext(root=REPO, channel="lab-in")


class FakeHl7:
    """Just enough of the HL7 view: `get(path)` and `modified`."""

    def __init__(self, fields: dict[str, str]) -> None:
        self.fields = fields
        self.modified = False

    def get(self, path: str) -> str:
        return self.fields.get(path, "")


def message(data: bytes = SAMPLE, content_type: str = CDA) -> Message:
    return Message("lab-in", data, content_type, SourceMeta("file"))


def hl7_message(fields: dict[str, str]) -> Message:
    m = message(b"MSH|^~\\&|", HL7V2)
    m._hl7 = FakeHl7(fields)  # type: ignore[assignment]
    return m


def step(**config: object) -> validate_schematron.ValidateSchematron:
    return validate_schematron.ValidateSchematron(validate_schematron.Config.model_validate(config), CONTEXT)


def test_examples_are_valid_configs() -> None:
    for module in (validate_schematron, validate_xsd):
        data = {k: v for k, v in module.EXAMPLE.items() if k != "type"}
        module.Config.model_validate(data)
    assert validate_schematron.EXAMPLE["type"] == "validate_schematron"
    assert validate_xsd.EXAMPLE["type"] == "validate_xsd"


def test_every_config_field_is_documented() -> None:
    for module in (validate_schematron, validate_xsd):
        for name, info in module.Config.model_fields.items():
            assert info.description, name


def test_a_valid_document_passes_untouched() -> None:
    m = message()
    assert step()(m) is m and m.findings == []


def test_an_invalid_document_is_rejected_with_the_assertion_and_location() -> None:
    bad = SAMPLE.replace(b'extension="1983010112374"', b'extension="1983010112347"')
    with pytest.raises(Rejected) as caught:
        step(rules="lab-report")(message(bad))
    assert caught.value.ack_code == "AE"
    [finding] = caught.value.findings
    assert finding.code == "lab-pid-check" and finding.severity == "E"
    assert finding.location == "/cda:ClinicalDocument[1]/cda:recordTarget[1]/cda:patientRole[1]/cda:id[1]"
    assert "check digits" in finding.text


def test_warnings_ride_along() -> None:
    m = message(SAMPLE.replace(b'<languageCode code="fr-LU"/>', b""))
    step(rules="clinical-document")(m)
    assert [(f.code, f.severity) for f in m.findings] == [("hdr-language", "W")]


def test_unsafe_xml_is_rejected_with_the_reason() -> None:
    attack = (
        b'<!DOCTYPE d [<!ENTITY x SYSTEM "file:///etc/passwd">]><ClinicalDocument xmlns="urn:hl7-org:v3"/>'
    )
    with pytest.raises(Rejected) as caught:
        step()(message(attack))
    assert "DTD or entities" in caught.value.findings[0].text


def test_cda_embedded_in_hl7_base64() -> None:
    encoded = base64.b64encode(SAMPLE).decode()
    m = hl7_message({"OBX-5.4": "Base64", "OBX-5.5": encoded})
    assert step()(m) is m


def test_hl7_without_the_document_is_rejected_naming_the_field() -> None:
    with pytest.raises(Rejected) as caught:
        step()(hl7_message({}))
    assert (caught.value.findings[0].code, caught.value.findings[0].location) == ("101", "OBX^1^5^5")


def test_hl7_with_broken_base64_is_rejected() -> None:
    with pytest.raises(Rejected) as caught:
        step()(hl7_message({"OBX-5.4": "Base64", "OBX-5.5": "not base64!"}))
    assert caught.value.findings[0].code == "102"


def test_unknown_rule_set_is_a_configuration_error() -> None:
    with pytest.raises(ConfigError) as caught:
        step(rules="lab-reprot")
    assert "unknown rule set" in str(caught.value)


def test_xsd_step_reports_lines() -> None:
    xsd = validate_xsd.ValidateXsd(validate_xsd.Config(), CONTEXT)
    assert xsd(message()).findings == []
    with pytest.raises(Rejected) as caught:
        xsd(message(SAMPLE.replace(b"<title>Laboratory report</title>", b"<titel>x</titel>")))
    [finding] = caught.value.findings
    assert finding.code == "xsd" and finding.text.startswith("line 8:")
