"""`hl7_to_cda_lab`: the sample ORU^R01 becomes a CDA lab report that passes the lab-report rule
set and the CDA schema, with every result coded; a correction is a new version replacing the last
one the DSP holds; a message the report cannot be made from is rejected with the field."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from engine.contracts import BuildContext
from engine.dsp.service import dsp_from
from engine.errors import Rejected
from engine.formats.cda import NS, metadata, parse_xml
from engine.message import CDA, HL7V2, Message, SourceMeta
from engine.validation.rulesets import Registry
from tests.unit.hl7_samples import MATRICULE, ORU_R01_25
from tests.unit.test_dsp_registry import entry
from transforms.hl7_to_cda_lab import EXAMPLE, Config, Hl7ToCdaLab

REPO = Path(__file__).resolve().parents[2]
SET_ID = "2.999.1.5.1^LABO-TEST.GLIMS.LAB778899"


class _Store:
    def __init__(self, path: Path) -> None:
        self.path = path


@pytest.fixture
def context(tmp_path: Path) -> BuildContext:
    return BuildContext(REPO, "lab", {"store": _Store(tmp_path / "passerelle.db")})


@pytest.fixture(scope="module")
def rules(tmp_path_factory: pytest.TempPathFactory) -> Registry:
    return Registry(REPO, tmp_path_factory.mktemp("cache"))


def convert(context: BuildContext, raw: bytes = ORU_R01_25, enterprise_id: str = "E0000000001") -> Message:
    message = Message("lab", raw, HL7V2, SourceMeta("mllp"))
    message.vars["enterprise_id"] = enterprise_id
    config = Config.model_validate({k: v for k, v in EXAMPLE.items() if k != "type"})
    return Hl7ToCdaLab(config, context)(message)


def edited(old: str, new: str) -> bytes:
    assert old.encode() in ORU_R01_25
    return ORU_R01_25.replace(old.encode(), new.encode())


def test_the_sample_oru_becomes_a_valid_lab_report(context: BuildContext, rules: Registry) -> None:
    message = convert(context)
    assert message.content_type == CDA
    tree = parse_xml(message.content())
    assert rules.schematron(tree, rules.resolve("lab-report")) == []
    assert rules.xsd(tree, "sdtc") == []
    meta = metadata(tree)
    assert (meta.type_code, meta.set_id, meta.version, meta.replaces) == ("11502-2", SET_ID, 1, "")
    assert ("470c5913-065e-4720-a3b6-e9d38a4e18eb", MATRICULE) in meta.patient_ids
    assert ("2.999.1.99", "E0000000001") in meta.patient_ids
    assert (meta.custodian, meta.author) == ("2.999.10", "2.999.10.1")


def test_each_obx_is_a_coded_result_with_unit_range_flag_and_specimen(context: BuildContext) -> None:
    root = parse_xml(convert(context).content()).getroot()
    observations = root.findall(".//cda:organizer/cda:component/cda:observation", NS)
    assert len(observations) == 12
    platelets = next(o for o in observations if o.find("cda:code", NS).get("code") == "777-3")
    value = platelets.find("cda:value", NS)
    assert (value.get("value"), value.get("unit")) == ("452", "10*9/L")
    assert platelets.find("cda:interpretationCode", NS).get("code") == "H"
    bounds = platelets.find("cda:referenceRange/cda:observationRange/cda:value", NS)
    assert [b.get("value") for b in bounds] == ["150", "400"]
    assert root.find(".//cda:specimenPlayingEntity/cda:code", NS).get("code") == "BLD"
    comment = observations[-1].find("cda:value", NS)
    assert comment.text is not None and "Thrombocytose" in comment.text


CORRECTED = ("|13.8|g/dL^^UCUM|12.0-16.0|N|||F", "|12.9|g/dL^^UCUM|12.0-16.0|N|||C")


def test_a_correction_replaces_the_original_when_the_dsp_holds_none_yet(context: BuildContext) -> None:
    meta = metadata(parse_xml(convert(context, edited(*CORRECTED)).content()))
    assert (meta.version, meta.replaces, meta.set_id) == (2, f"{SET_ID}.v1", SET_ID)


def test_a_second_correction_replaces_the_latest_stored_version(context: BuildContext,
                                                                 rules: Registry) -> None:
    registry = dsp_from(context).registry
    registry.register(dataclasses.replace(entry(f"{SET_ID}.v2", version=2), set_id=SET_ID))
    tree = parse_xml(convert(context, edited(*CORRECTED)).content())
    meta = metadata(tree)
    assert (meta.version, meta.replaces, meta.document_id) == (3, f"{SET_ID}.v2", f"{SET_ID}.v3")
    assert rules.schematron(tree, rules.resolve("lab-report")) == []


@pytest.mark.parametrize(("old", "new", "code", "location"), [
    ("^^^RNPP&2.999.1&ISO^NI", "^^^OTHER&2.999.9&ISO^NI", "101", "PID^1^3"),
    ("718-7^Hemoglobin [Mass/volume] in Blood^LN", "HB^Hemoglobin^L", "103", "OBX^3^3"),
    ("|LAB778899^GLIMS||CM", "|||CM", None, None),
])
def test_what_a_report_cannot_be_made_from_is_rejected_with_the_field(
        context: BuildContext, old: str, new: str, code: str | None, location: str | None) -> None:
    raw = edited(old, new)
    if code is None:  # ORC-3 gone: OBR-3 still names the filler order, the report is made
        assert convert(context, raw).content_type == CDA
        return
    with pytest.raises(Rejected) as err:
        convert(context, raw)
    [finding] = err.value.findings
    assert (finding.code, finding.location) == (code, location)
    assert MATRICULE not in finding.text
