"""CDA lab reports -> the same Observations and Patient as HL7 v2 (see detection.py).

Reads every `observation` entry (code/@code, value/@code for coded values, interpretationCode,
statusCode, effectiveTime) and the recordTarget. The national identifier is the patientRole/id
whose @root is `national_root`. A document replacing an earlier one (relatedDocument RPLC) marks
its results as corrections. Parsing is engine.formats.cda's safe parser (no DTD, no network).
"""

from __future__ import annotations

from lxml import etree

from engine.formats.cda import NS, parse_xml
from engine.reporting.detection import Observation, Patient

XSI_TYPE = "{http://www.w3.org/2001/XMLSchema-instance}type"


def _attr(el: etree._Element | None, path: str, name: str) -> str:
    found = el.find(path, NS) if el is not None else None
    return (found.get(name) or "") if found is not None else ""


def _observation(el: etree._Element, corrected: bool) -> Observation | None:
    test = _attr(el, "cda:code", "code")
    if not test:
        return None
    value = el.find("cda:value", NS)
    coded = value is not None and value.get("code") is not None
    status = "C" if corrected else ("F" if _attr(el, "cda:statusCode", "code") in ("completed", "") else "P")
    return Observation(
        test,
        _attr(el, "cda:code", "displayName"),
        value.get("code", "") if coded and value is not None else "",
        _attr(el, "cda:interpretationCode", "code").upper(),
        status,
        _attr(el, "cda:effectiveTime", "value"),
    )


def cda_observations(tree: etree._ElementTree) -> list[Observation]:
    root = tree.getroot()
    corrected = any(r.get("typeCode") == "RPLC" for r in root.findall("cda:relatedDocument", NS))
    found = (_observation(el, corrected) for el in root.iterfind(".//cda:entry//cda:observation", NS))
    return [o for o in found if o is not None]


def cda_patient(tree: etree._ElementTree, national_root: str) -> Patient:
    role = tree.getroot().find("cda:recordTarget/cda:patientRole", NS)
    if role is None:
        return Patient()
    ids = [i.get("extension", "") for i in role.findall("cda:id", NS) if i.get("root") == national_root]
    patient = role.find("cda:patient", NS)
    name = patient.find("cda:name", NS) if patient is not None else None
    return Patient(
        national_id=ids[0] if ids else "",
        family=(name.findtext("cda:family", "", NS) if name is not None else "").strip(),
        given=(name.findtext("cda:given", "", NS) if name is not None else "").strip(),
        birth_date=_attr(patient, "cda:birthTime", "value")[:8],
        sex=_attr(patient, "cda:administrativeGenderCode", "code"),
        postal_code=role.findtext("cda:addr/cda:postalCode", "", NS).strip(),
        country=role.findtext("cda:addr/cda:country", "", NS).strip(),
    )


def parse_cda(content: bytes) -> etree._ElementTree:
    return parse_xml(content)
