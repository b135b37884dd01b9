"""Which results of a lab message are notifiable: pure functions over HL7 v2 or CDA content.

A result is notifiable when its test is in the catalogue (or it is an organism test naming a listed
organism) and it is positive: an identified organism, a coded positive value (SNOMED CT Detected /
Positive) or a positive interpretation (OBX-8 / interpretationCode). A coded negative value or a
negative interpretation is negative, whatever else; anything else (an uninterpreted number) is not
reported. `report_negatives` names diseases whose negatives are reported too (outbreak exception).

The outcome travels in `message.vars["notifiable"]` as JSON (`Detection.to_json`), because the
content a destination receives may no longer be the lab's HL7 (hl7_to_cda_lab runs later).
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import asdict, dataclass, field

from engine.formats.hl7v2 import Hl7Message
from engine.reporting.catalogue import Catalogue

VAR = "notifiable"
CODED = {"CWE", "CE", "CNE", "CD", "CV"}


@dataclass(frozen=True)
class Observation:
    """One coded result as read from the content, before any catalogue decision."""

    test: str
    test_text: str = ""
    value: str = ""
    interpretation: str = ""
    status: str = "F"
    observed: str = ""


@dataclass(frozen=True)
class Result:
    """A notifiable result: its disease and whether it is positive (False only under an exception)."""

    disease: str
    test: str
    test_text: str
    value: str
    interpretation: str
    positive: bool
    status: str
    observed: str

    @property
    def correction(self) -> bool:
        return self.status == "C"


@dataclass(frozen=True)
class Patient:
    """What the report and the aggregates need of the patient (never logged)."""

    national_id: str = ""
    family: str = ""
    given: str = ""
    birth_date: str = ""
    sex: str = ""
    postal_code: str = ""
    country: str = ""


@dataclass(frozen=True)
class Detection:
    results: tuple[Result, ...] = ()
    patient: Patient = field(default_factory=Patient)
    laboratory: str = ""
    lab_control_id: str = ""

    @property
    def notifiable(self) -> bool:
        return bool(self.results)

    def diseases(self) -> list[str]:
        return sorted({r.disease for r in self.results})

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Detection:
        data = json.loads(text)
        return cls(
            tuple(Result(**r) for r in data["results"]),
            Patient(**data["patient"]),
            data.get("laboratory", ""),
            data.get("lab_control_id", ""),
        )


def classify(obs: Observation, catalogue: Catalogue, report_negatives: Collection[str] = ()) -> Result | None:
    """The notifiable result `obs` is, or None (unlisted test, negative, indeterminate)."""
    disease = _disease(obs, catalogue)
    if disease is None:
        return None
    positive = _positive(obs, disease, catalogue)
    if positive is None or (positive is False and disease not in report_negatives):
        return None
    return Result(
        disease, obs.test, obs.test_text, obs.value, obs.interpretation, positive, obs.status, obs.observed
    )


def _disease(obs: Observation, catalogue: Catalogue) -> str | None:
    if not catalogue.recognises(obs.test):
        return None
    if obs.value in catalogue.by_organism:
        return catalogue.by_organism[obs.value]
    return catalogue.by_test.get(obs.test)


def _positive(obs: Observation, disease: str, catalogue: Catalogue) -> bool | None:
    """True positive, False negative, None indeterminate."""
    if obs.value in catalogue.by_organism:
        return True
    if obs.value in catalogue.negative_values or obs.interpretation in catalogue.negative_interpretations:
        return False
    positives = {*catalogue.positive_interpretations, *catalogue.diseases[disease].positive}
    if obs.value in catalogue.positive_values or obs.interpretation in positives:
        return True
    return None


def detect(
    observations: list[Observation],
    patient: Patient,
    catalogue: Catalogue,
    report_negatives: Collection[str] = (),
    laboratory: str = "",
    lab_control_id: str = "",
) -> Detection:
    results = (classify(o, catalogue, report_negatives) for o in observations)
    return Detection(tuple(r for r in results if r is not None), patient, laboratory, lab_control_id)


# -- HL7 v2 --------------------------------------------------------------------------------------


def hl7_observations(hl7: Hl7Message) -> list[Observation]:
    """One Observation per OBX (lists from `OBX[*]` paths line up segment by segment)."""
    columns = [hl7.get_all(f"OBX[*]-{path}") for path in ("2", "3.1", "3.2", "5.1", "8.1", "11", "14.1")]
    fallback = hl7.get("OBR-7.1") or hl7.get("MSH-7.1")
    rows = []
    for vtype, test, text, value, interp, status, observed in zip(*columns, strict=True):
        if test:
            coded = value if vtype.upper() in CODED else ""
            rows.append(
                Observation(test, text, coded, interp.upper(), (status or "F").upper(), observed or fallback)
            )
    return rows


def hl7_patient(hl7: Hl7Message, national_authority: str) -> Patient:
    return Patient(
        national_id=_national_id(hl7, national_authority),
        family=hl7.get("PID-5.1.1"),
        given=hl7.get("PID-5.2"),
        birth_date=hl7.get("PID-7.1")[:8],
        sex=hl7.get("PID-8"),
        postal_code=hl7.get("PID-11.5"),
        country=hl7.get("PID-11.6"),
    )


def _national_id(hl7: Hl7Message, authority: str) -> str:
    for rep in range(1, len(hl7.get_all("PID-3[*]")) + 1):
        if hl7.get(f"PID-3[{rep}].4.1") == authority:
            return hl7.get(f"PID-3[{rep}].1")
    return ""


def detect_hl7(
    hl7: Hl7Message,
    catalogue: Catalogue,
    national_authority: str = "RNPP",
    report_negatives: Collection[str] = (),
) -> Detection:
    return detect(
        hl7_observations(hl7),
        hl7_patient(hl7, national_authority),
        catalogue,
        report_negatives,
        hl7.get("MSH-4.1"),
        hl7.get("MSH-10"),
    )
