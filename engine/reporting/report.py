"""The report sent to the health authority: an HL7 v2.5.1 ORU^R01 per case version.

MSH-10 is `<case id>-v<version>`: the authority de-duplicates on it (an at-least-once re-delivery
carries the same MSH-10 and the same content). Each report carries the whole case, so the
authority keeps the highest version of a case id. Layout (engine/reporting/README.md):

    MSH  ... ORU^R01^ORU_R01 | <case>-v<n> | P | 2.5.1
    PID  PID-3: enterprise id (resolved) and/or national id; PID-5 name, -7 birth, -8 sex, -11 address
    OBR  OBR-2 case id, OBR-4 disease (local code + name), OBR-7 first result time, OBR-25 F|C (amended)
    OBX  case metadata, local codes: CASE-ID, CASE-VERSION, CASE-ACTION, IDENTITY (resolved|unresolved)
    OBX  one per contributing result: OBX-3 test, OBX-5 coded value, OBX-8 interpretation,
         OBX-11 status (C corrected), OBX-14 time, OBX-15 laboratory
    NTE  one per contributing message: its key, the lab's control id, the receipt time
"""

from __future__ import annotations

from engine.formats.hl7v2 import escape, hl7_timestamp
from engine.reporting.cases import Case
from engine.reporting.catalogue import Catalogue

SEP, ENC = "|", "^~\\&"


def _e(value: str) -> str:
    return escape(value, ENC, SEP)


def _segment(*fields: str) -> str:
    return SEP.join(fields).rstrip(SEP)


def control_id(case_id: str, version: int) -> str:
    return f"{case_id}-v{version}"


def render_report(
    case: Case,
    catalogue: Catalogue,
    sender: tuple[str, str] = ("PASSERELLE", "PLATFORM"),
    receiver: tuple[str, str] = ("DOMI", "HEALTH-AUTHORITY"),
    now: float | None = None,
) -> bytes:
    segments = [_msh(case, sender, receiver, now), _pid(case), _obr(case, catalogue), *_case_obx(case)]
    segments += _result_obx(case, start=len(segments) - 2)
    segments += [
        _segment(
            "NTE",
            str(i),
            "L",
            _e(
                f"message {c.message_key} lab control id "
                f"{c.detection.lab_control_id} received {hl7_timestamp(c.received_at)}"
            ),
        )
        for i, c in enumerate(case.contributions, start=1)
    ]
    return ("\r".join(segments) + "\r").encode("utf-8")


def _msh(case: Case, sender: tuple[str, str], receiver: tuple[str, str], now: float | None) -> str:
    return _segment(
        "MSH",
        ENC,
        _e(sender[0]),
        _e(sender[1]),
        _e(receiver[0]),
        _e(receiver[1]),
        hl7_timestamp(now),
        "",
        "ORU^R01^ORU_R01",
        control_id(case.case_id, case.version),
        "P",
        "2.5.1",
        "",
        "",
        "NE",
        "NE",
        "",
        "UNICODE UTF-8",
    )


def _pid(case: Case) -> str:
    patient = case.contributions[-1].detection.patient
    ids = []
    if case.resolved:
        ids.append(f"{_e(case.patient_key)}^^^PASSERELLE^PI")
    if patient.national_id:
        ids.append(f"{_e(patient.national_id)}^^^RNPP^NI")
    return _segment(
        "PID",
        "1",
        "",
        "~".join(ids),
        "",
        f"{_e(patient.family)}^{_e(patient.given)}",
        "",
        _e(patient.birth_date),
        _e(patient.sex),
        "",
        "",
        f"^^^^{_e(patient.postal_code)}^{_e(patient.country)}",
    )


def _obr(case: Case, catalogue: Catalogue) -> str:
    disease = catalogue.diseases.get(case.disease)
    name = disease.name if disease is not None else case.disease
    status = "C" if case.action == "amended" else "F"
    fields = [
        "OBR",
        "1",
        _e(case.case_id),
        control_id(case.case_id, case.version),
        f"{_e(case.disease)}^{_e(name)}^L",
        "",
        "",
        hl7_timestamp(case.opened_at),
    ]
    fields += [""] * 14 + [hl7_timestamp(case.updated_at), "", "", status]
    return _segment(*fields)


def _case_obx(case: Case) -> list[str]:
    meta = [
        ("CASE-ID", "Case identifier", case.case_id),
        ("CASE-VERSION", "Case version", str(case.version)),
        ("CASE-ACTION", "Case action", case.action),
        ("IDENTITY", "Patient identity", "resolved" if case.resolved else "unresolved"),
    ]
    return [
        _segment("OBX", str(i), "ST", f"{code}^{text}^L", "", _e(value), "", "", "", "", "", "F")
        for i, (code, text, value) in enumerate(meta, start=1)
    ]


def _result_obx(case: Case, start: int) -> list[str]:
    rows, n = [], start
    for c in case.contributions:
        for r in c.detection.results:
            n += 1
            value = f"{_e(r.value)}^^SCT" if r.value else ""
            rows.append(
                _segment(
                    "OBX",
                    str(n),
                    "CWE" if r.value else "ST",
                    f"{_e(r.test)}^{_e(r.test_text)}^LN",
                    "",
                    value,
                    "",
                    "",
                    _e(r.interpretation),
                    "",
                    "",
                    _e(r.status),
                    "",
                    "",
                    _e(r.observed),
                    _e(c.detection.laboratory),
                )
            )
    return rows
