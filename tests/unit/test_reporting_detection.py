"""Notifiable detection on HL7 v2 and CDA: positives of listed tests/organisms only, the CH ELM catalogue."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.contracts import BuildContext
from engine.formats.hl7v2 import parse
from engine.message import HL7V2, Message, SourceMeta
from engine.reporting.catalogue import Catalogue, dump_catalogue, import_ch_elm, load_catalogue
from engine.reporting.detection import VAR, Detection, Observation, classify, detect_hl7
from tests.unit.hl7_samples import MATRICULE, ORU_R01_25
from transforms.detect_notifiable import Config, DetectNotifiable

ROOT = Path(__file__).resolve().parents[2]
CH_ELM = ROOT.parent / "shared" / "data" / "ch-elm" / "input" / "resources"
SHIPPED = ROOT / "config" / "notifiable-diseases.yaml"
SARS_PCR = "94500-6^SARS-CoV-2 (COVID-19) RNA [Presence] in Respiratory system specimen by NAA^LN"
DETECTED, NOT_DETECTED = "260373001^Detected^SCT", "260415000^Not detected^SCT"


def oru(
    control_id: str = "LAB-1",
    test: str = SARS_PCR,
    value: str = DETECTED,
    status: str = "F",
    when: str = "20250314080000",
    flag: str = "",
    vtype: str = "CWE",
) -> bytes:
    """A lab result with one OBX (invented patient: the sample matricule)."""
    segments = [
        f"MSH|^~\\&|GLIMS|LABO-TEST|PASSERELLE|DSP|{when}||ORU^R01^ORU_R01|{control_id}|P|2.5.1"
        "|||||LUX|UNICODE UTF-8",
        f"PID|1||{MATRICULE}^^^RNPP&2.999.1&ISO^NI~P000123456^^^LABO-TEST&2.999.10&ISO^PI||TEST^PATIENT^^^^^L"
        "||19800101|F|||1 RUE DE L'EXEMPLE^^LUXEMBOURG^^1234^LUX",
        f"OBR|1|ORD-{control_id}|{control_id}|{test}|||{when}",
        f"OBX|1|{vtype}|{test}||{value}|||{flag}|||{status}|||{when}",
    ]
    return ("\r".join(segments) + "\r").encode("utf-8")


@pytest.fixture(scope="module")
def catalogue() -> Catalogue:
    return load_catalogue(SHIPPED)


def found(raw: bytes, catalogue: Catalogue, negatives: tuple[str, ...] = ()) -> Detection:
    return detect_hl7(parse(raw), catalogue, "RNPP", negatives)


def test_ch_elm_data_is_present() -> None:
    # The real catalogue is test material: missing data is a failure, never a skip.
    assert (CH_ELM / "ValueSet-ch-elm-results-laboratory-observation.json").is_file(), f"missing {CH_ELM}"


def test_every_ch_elm_laboratory_observation_code_is_recognised() -> None:
    imported = import_ch_elm(CH_ELM)
    valueset = json.loads((CH_ELM / "ValueSet-ch-elm-results-laboratory-observation.json").read_text())
    codes = [c["code"] for inc in valueset["compose"]["include"] for c in inc["concept"]]
    assert len(codes) > 400
    assert [c for c in codes if not imported.recognises(c)] == []
    assert imported.by_test["94500-6"] == "sars-cov-2"
    assert (
        imported.by_organism["73525009"] == "salmonellosis"
    )  # Salmonella Enteritidis, from an organism group


def test_the_shipped_catalogue_is_the_ch_elm_import(catalogue: Catalogue) -> None:
    assert dump_catalogue(import_ch_elm(CH_ELM)) == SHIPPED.read_text(encoding="utf-8")


def test_a_positive_sars_cov_2_pcr_is_notifiable(catalogue: Catalogue) -> None:
    d = found(oru(), catalogue)
    assert [(r.disease, r.test, r.value, r.positive, r.status) for r in d.results] == [
        ("sars-cov-2", "94500-6", "260373001", True, "F")
    ]
    assert (d.patient.national_id, d.patient.birth_date, d.patient.sex, d.patient.postal_code) == (
        MATRICULE,
        "19800101",
        "F",
        "1234",
    )
    assert Detection.from_json(d.to_json()) == d


def test_a_positive_interpretation_flag_is_enough(catalogue: Catalogue) -> None:
    assert found(oru(value="", vtype="ST", flag="POS"), catalogue).notifiable


def test_negatives_unknown_codes_and_uninterpreted_values_are_not_notifiable(catalogue: Catalogue) -> None:
    assert not found(oru(value=NOT_DETECTED), catalogue).notifiable
    assert not found(oru(value="POS", flag="NEG", vtype="ST"), catalogue).notifiable
    assert not found(oru(test="99999-9^Unknown^LN"), catalogue).notifiable
    assert not found(oru(value="12.5", vtype="NM"), catalogue).notifiable
    assert not found(ORU_R01_25, catalogue).notifiable  # a blood count


def test_negatives_are_reported_for_a_disease_under_an_outbreak_exception(catalogue: Catalogue) -> None:
    d = found(oru(value=NOT_DETECTED), catalogue, ("sars-cov-2",))
    assert [(r.disease, r.positive) for r in d.results] == [("sars-cov-2", False)]


def test_an_organism_test_takes_its_disease_from_the_organism(catalogue: Catalogue) -> None:
    culture = "17563-8"  # Salmonella sp identified in Specimen by Organism specific culture
    result = classify(Observation(culture, value="73525009"), catalogue)
    assert result is not None and (result.disease, result.positive) == ("salmonellosis", True)


def test_a_correction_is_flagged(catalogue: Catalogue) -> None:
    assert found(oru(status="C"), catalogue).results[0].correction


def test_the_step_records_its_findings_in_vars_and_never_filters(tmp_path: Path) -> None:
    step = DetectNotifiable(Config(catalogue=str(SHIPPED)), BuildContext(tmp_path, "lab"))
    positive = step(Message("lab", oru(), HL7V2, SourceMeta("test")))
    assert Detection.from_json(positive.vars[VAR]).diseases() == ["sars-cov-2"]
    negative = step(Message("lab", oru(value=NOT_DETECTED), HL7V2, SourceMeta("test")))
    assert not Detection.from_json(negative.vars[VAR]).notifiable
    assert negative.content() == oru(value=NOT_DETECTED)  # content unchanged


def test_the_step_refuses_an_unknown_exception_disease(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="covid-99"):
        DetectNotifiable(
            Config(catalogue=str(SHIPPED), report_negatives=["covid-99"]), BuildContext(tmp_path, "x")
        )


CDA_REPORT = b"""<?xml version="1.0" encoding="UTF-8"?>
<ClinicalDocument xmlns="urn:hl7-org:v3" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <id root="2.999.5" extension="DOC1"/>
  <recordTarget><patientRole><id root="2.999.1" extension="1980010112302"/>
    <addr><postalCode>1234</postalCode><country>LU</country></addr>
    <patient><name><given>PATIENT</given><family>TEST</family></name>
      <administrativeGenderCode code="F"/><birthTime value="19800101"/></patient></patientRole></recordTarget>
  <component><structuredBody><component><section><entry><organizer><component>
    <observation classCode="OBS" moodCode="EVN"><code code="94500-6" codeSystem="2.16.840.1.113883.6.1"/>
      <statusCode code="completed"/><effectiveTime value="20250314080000"/>
      <value xsi:type="CD" code="260373001" codeSystem="2.16.840.1.113883.6.96"/>
      <interpretationCode code="POS"/></observation>
  </component></organizer></entry></section></component></structuredBody></component>
</ClinicalDocument>"""


def test_a_cda_lab_report_is_examined_too(tmp_path: Path) -> None:
    step = DetectNotifiable(Config(catalogue=str(SHIPPED)), BuildContext(tmp_path, "lab"))
    message = step(Message("lab", CDA_REPORT, "application/cda+xml", SourceMeta("test")))
    d = Detection.from_json(message.vars[VAR])
    assert [(r.disease, r.test, r.value) for r in d.results] == [("sars-cov-2", "94500-6", "260373001")]
    assert (d.patient.national_id, d.patient.sex, d.patient.postal_code) == ("1980010112302", "F", "1234")
