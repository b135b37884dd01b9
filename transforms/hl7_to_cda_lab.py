"""Step `hl7_to_cda_lab`: an ORU^R01 lab result becomes a structured CDA R2 laboratory report.

The output (the message's new content, type application/cda+xml) passes the `lab-report` rule
set and the CDA schema: LOINC document type 11502-2; the patient by the national identifier
(PID-3 with the national assigning authority), the enterprise id `resolve_patient` found
(`message.vars["enterprise_id"]`) and the lab's own ids; the sending application as author and
the laboratory (MSH-4) as custodian and performer; the ordering provider (ORC-12/OBR-16) as
referrer and the placer order (ORC-2/OBR-2) as the order fulfilled; one battery per OBR with
its specimen (SPM); each OBX a LOINC-coded observation (value in UCUM, reference range,
abnormal flag, status).

Versions: the set id is derived from the laboratory (MSH-4) and the filler order (OBR-3/ORC-3),
so every report of one order is in one set. A message with a corrected result (OBX-11 `C`) is
a new version of the set that replaces (RPLC) the latest one the DSP holds (version 1, the
original, when it holds none yet). Two corrections of one order processed at the same moment
get the same version: the DSP stores the first and refuses the second (never overwrites).
A message the report cannot be made from (no national id, a result not coded in LOINC) is
rejected (AE) with the field.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from lxml import etree

from engine.contracts import BuildContext, ComponentConfig
from engine.dsp.service import Dsp, dsp_from
from engine.errors import Finding, Rejected
from engine.formats.cda import CDA_NS
from engine.formats.hl7v2 import Hl7Message
from engine.message import CDA, Message
from engine.mpi.service import load_for_root

LOINC = "2.16.840.1.113883.6.1"
XSI = "http://www.w3.org/2001/XMLSchema-instance"
CODE_SYSTEMS = {"LN": LOINC, "SCT": "2.16.840.1.113883.6.96", "HL70487": "2.16.840.1.113883.12.487",
                "HL70078": "2.16.840.1.113883.12.78", "UCUM": "2.16.840.1.113883.6.8"}
INTERPRETATION = "2.16.840.1.113883.5.83"
STATUS = {"F": "completed", "C": "completed", "R": "active", "P": "active", "S": "active", "I": "active",
          "X": "aborted", "D": "nullified", "W": "nullified"}
_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)$")
_RANGE = re.compile(r"^\s*([+-]?[\d.]+)\s*-\s*([+-]?[\d.]+)\s*$")
_BOUND = re.compile(r"^\s*(<=?|>=?)\s*([+-]?[\d.]+)\s*$")
_UCUM = re.compile(r"^[!-~]+$")
_ID_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


class Config(ComponentConfig):
    national_authority: str = "RNPP"
    """Assigning authority (PID-3 CX-4.1) of the national identifier (matricule)."""
    national_id_root: str = "470c5913-065e-4720-a3b6-e9d38a4e18eb"
    """Root of the national identifier in CDA; equal to `national-id-root` of the lab-report rule set."""
    document_root: str = "2.999.1.5"
    """OID under which this engine mints document, set, order and specimen ids (2.999: example arc)."""
    language: str = "fr-LU"
    """languageCode of the report."""
    confidentiality: str = "N"
    """confidentialityCode (HL7 Confidentiality: N normal, R restricted, V very restricted)."""
    section_code: str = "26436-6"
    """LOINC code of the results section (26436-6 Laboratory studies)."""


EXAMPLE = {"type": "hl7_to_cda_lab", "national_authority": "RNPP", "document_root": "2.999.1.5"}


@dataclass(frozen=True)
class Version:
    number: int
    replaces: str  # root^extension of the replaced document, '' for an original


class Hl7ToCdaLab:
    def __init__(self, config: Config, context: BuildContext) -> None:
        self.config = config
        self.enterprise_root = load_for_root(context.root).enterprise.universal_id
        self.dsp: Dsp = dsp_from(context)

    def __call__(self, message: Message) -> Message:
        hl7 = message.hl7
        document = Report(hl7, self.config, message.vars.get("enterprise_id", ""), self.enterprise_root)
        set_ext = document.set_extension()
        version = self._version(hl7, f"{self.config.document_root}.1^{set_ext}", set_ext)
        xml = document.render(version)
        message.content()  # render pending HL7 edits first, so the parsed view can be dropped
        message.forget_parse()
        message.body, message.content_type = xml, CDA
        message.vars["document_id"] = f"{self.config.document_root}.1^{set_ext}.v{version.number}"
        return message

    def _version(self, hl7: Hl7Message, set_id: str, set_ext: str) -> Version:
        if "C" not in hl7.get_all("OBX[*]-11"):
            return Version(1, "")
        latest = self.dsp.registry.latest(set_id)
        number = max(latest.version if latest else 1, 1) + 1
        replaces = latest.document_id if latest else f"{self.config.document_root}.1^{set_ext}.v1"
        return Version(number, replaces)


def _el(parent: etree._Element, tag: str, text: str = "", **attrs: str) -> etree._Element:
    el = etree.SubElement(parent, f"{{{CDA_NS}}}{tag}", {k.rstrip("_"): v for k, v in attrs.items() if v})
    if text:
        el.text = text
    return el


def _typed(parent: etree._Element, tag: str, xsi_type: str, **attrs: str) -> etree._Element:
    el = _el(parent, tag, **attrs)
    el.set(f"{{{XSI}}}type", xsi_type)
    return el


def _safe(value: str) -> str:
    return _ID_UNSAFE.sub("_", value.strip())


class Report:
    """One ORU^R01 rendered as a CDA lab report (holds patient data: never log it)."""

    def __init__(self, hl7: Hl7Message, config: Config, enterprise_id: str, enterprise_root: str) -> None:
        self.hl7, self.config = hl7, config
        self.enterprise_id, self.enterprise_root = enterprise_id, enterprise_root
        self.matricule = self._matricule()
        self.when = hl7.get("OBR-22") or hl7.get("MSH-7")

    def _matricule(self) -> str:
        pairs = zip(self.hl7.get_all("PID-3[*].1"), self.hl7.get_all("PID-3[*].4.1"), strict=False)
        for value, authority in pairs:
            if authority == self.config.national_authority and value.strip():
                return value.strip()
        text = (f"PID-3 has no national identifier (assigning authority {self.config.national_authority}): "
                "a report for the shared care record needs it")
        raise Rejected([Finding(text, code="101", location="PID^1^3")])

    def set_extension(self) -> str:
        """Laboratory + filler order: the same for every report (and correction) of one order."""
        filler = self.hl7.get("OBR-3.1") or self.hl7.get("ORC-3.1")
        if not filler:
            text = "OBR-3 / ORC-3 (filler order number) is empty: the report cannot be versioned without it"
            raise Rejected([Finding(text, code="101", location="OBR^1^3")])
        namespace = self.hl7.get("OBR-3.2") or self.hl7.get("ORC-3.2")
        return ".".join(_safe(p) for p in (self.hl7.get("MSH-4.1"), namespace, filler) if p)

    # -- rendering ---------------------------------------------------------------------------------

    def render(self, version: Version) -> bytes:
        root = etree.Element(f"{{{CDA_NS}}}ClinicalDocument", nsmap={None: CDA_NS, "xsi": XSI})
        self._header(root, version)
        self._patient(_el(_el(root, "recordTarget"), "patientRole"))
        self._author(root)
        self._custodian(root)
        self._referrer(root)
        self._order(root)
        self._performer(root)
        if version.replaces:
            self._replaces(root, version.replaces)
        self._body(root)
        return bytes(etree.tostring(root, xml_declaration=True, encoding="UTF-8"))

    def _header(self, root: etree._Element, version: Version) -> None:
        c, set_ext = self.config, self.set_extension()
        _el(root, "typeId", root_="2.16.840.1.113883.1.3", extension="POCD_HD000040")
        _el(root, "id", root_=f"{c.document_root}.1", extension=f"{set_ext}.v{version.number}")
        _el(root, "code", code="11502-2", codeSystem=LOINC, codeSystemName="LOINC",
            displayName="Laboratory report")
        _el(root, "title", "Laboratory report")
        _el(root, "effectiveTime", value=self.when)
        _el(root, "confidentialityCode", code=c.confidentiality, codeSystem="2.16.840.1.113883.5.25")
        _el(root, "languageCode", code=c.language)
        _el(root, "setId", root_=f"{c.document_root}.1", extension=set_ext)
        _el(root, "versionNumber", value=str(version.number))

    def _patient_ids(self) -> Iterator[tuple[str, str]]:
        yield self.config.national_id_root, self.matricule
        if self.enterprise_id:
            yield self.enterprise_root, self.enterprise_id
        h = self.hl7
        ids = zip(h.get_all("PID-3[*].1"), h.get_all("PID-3[*].4.2"), h.get_all("PID-3[*].4.3"), strict=False)
        for value, oid, kind in ids:
            if oid and kind == "ISO" and value and value not in (self.matricule, self.enterprise_id):
                yield oid, value

    def _patient(self, role: etree._Element) -> None:
        for oid, value in dict.fromkeys(self._patient_ids()):
            _el(role, "id", root_=oid, extension=value)
        patient = _el(role, "patient")
        name = _el(patient, "name")
        for tag, path in (("given", "PID-5.2"), ("family", "PID-5.1")):
            if self.hl7.get(path):
                _el(name, tag, self.hl7.get(path))
        sex = {"M": "M", "F": "F"}.get(self.hl7.get("PID-8"), "UN")
        _el(patient, "administrativeGenderCode", code=sex, codeSystem="2.16.840.1.113883.5.1")
        if self.hl7.get("PID-7"):
            _el(patient, "birthTime", value=self.hl7.get("PID-7.1"))

    def _org_id(self, parent: etree._Element, hd: str) -> None:
        """An HD (namespace^universal id^type) as an II: the OID when given, else a minted root."""
        oid, kind, name = self.hl7.get(f"{hd}.2"), self.hl7.get(f"{hd}.3"), self.hl7.get(f"{hd}.1")
        if oid and kind == "ISO":
            _el(parent, "id", root_=oid)
        else:
            _el(parent, "id", root_=f"{self.config.document_root}.2", extension=_safe(name) or "unknown")

    def _laboratory(self, parent: etree._Element, tag: str) -> None:
        org = _el(parent, tag)
        self._org_id(org, "MSH-4")
        if self.hl7.get("MSH-4.1"):
            _el(org, "name", self.hl7.get("MSH-4.1"))

    def _author(self, root: etree._Element) -> None:
        author = _el(root, "author")
        _el(author, "time", value=self.when)
        assigned = _el(author, "assignedAuthor")
        self._org_id(assigned, "MSH-3")
        _el(_el(assigned, "assignedAuthoringDevice"), "softwareName", self.hl7.get("MSH-3.1") or "LIS")
        self._laboratory(assigned, "representedOrganization")

    def _custodian(self, root: etree._Element) -> None:
        self._laboratory(_el(_el(root, "custodian"), "assignedCustodian"), "representedCustodianOrganization")

    def _referrer(self, root: etree._Element) -> None:
        field = "ORC-12" if self.hl7.get("ORC-12.1") else "OBR-16"
        if not self.hl7.get(f"{field}.1"):
            return
        entity = _el(_el(root, "participant", typeCode="REF"), "associatedEntity", classCode="PROV")
        _el(entity, "id", root_=f"{self.config.document_root}.3", extension=_safe(self.hl7.get(f"{field}.1")))
        name = _el(_el(entity, "associatedPerson"), "name")
        for tag, component in (("prefix", 6), ("given", 3), ("family", 2)):
            if self.hl7.get(f"{field}.{component}"):
                _el(name, tag, self.hl7.get(f"{field}.{component}"))
        if self.hl7.get("ORC-21.1"):
            _el(_el(entity, "scopingOrganization"), "name", self.hl7.get("ORC-21.1"))

    def _order(self, root: etree._Element) -> None:
        placer = self.hl7.get("ORC-2.1") or self.hl7.get("OBR-2.1")
        if placer:
            order = _el(_el(root, "inFulfillmentOf"), "order")
            _el(order, "id", root_=f"{self.config.document_root}.4", extension=_safe(placer))

    def _performer(self, root: etree._Element) -> None:
        event = _el(_el(root, "documentationOf"), "serviceEvent", classCode="PROC")
        performer = _el(event, "performer", typeCode="PRF")
        entity = _el(performer, "assignedEntity")
        self._org_id(entity, "MSH-4")
        self._laboratory(entity, "representedOrganization")

    def _replaces(self, root: etree._Element, replaced: str) -> None:
        oid, _, extension = replaced.partition("^")
        parent = _el(_el(root, "relatedDocument", typeCode="RPLC"), "parentDocument")
        _el(parent, "id", root_=oid, extension=extension)

    def _body(self, root: etree._Element) -> None:
        section = _el(_el(_el(_el(root, "component"), "structuredBody"), "component"), "section")
        _el(section, "code", code=self.config.section_code, codeSystem=LOINC,
            displayName="Laboratory studies")
        _el(section, "title", "Laboratory results")
        batteries = list(self._batteries())
        Narrative(self.hl7).render(_el(section, "text"), batteries)
        for obr, obxs, spm in batteries:
            Battery(self.hl7, self.config, obr, spm).render(_el(section, "entry", typeCode="DRIV"), obxs)

    def _batteries(self) -> Iterator[tuple[int, list[int], int]]:
        """(OBR occurrence, its OBX occurrences, its SPM occurrence or 0), in message order."""
        counts: dict[str, int] = {}
        groups: list[tuple[int, dict[str, list[int]]]] = []
        for name in self.hl7.segment_names():
            counts[name] = counts.get(name, 0) + 1
            if name == "OBR":
                groups.append((counts[name], {"OBX": [], "SPM": []}))
            elif name in ("OBX", "SPM") and groups:
                groups[-1][1][name].append(counts[name])
        for obr, children in groups:
            obxs, spms = children["OBX"], children["SPM"]
            yield obr, obxs, spms[0] if spms else 0


class Battery:
    """One OBR with its OBX results and specimen, as an organizer of observations."""

    def __init__(self, hl7: Hl7Message, config: Config, obr: int, spm: int) -> None:
        self.hl7, self.config, self.obr, self.spm = hl7, config, obr, spm

    def render(self, entry: etree._Element, obxs: list[int]) -> None:
        h, obr = self.hl7, f"OBR[{self.obr}]"
        organizer = _el(entry, "organizer", classCode="BATTERY", moodCode="EVN")
        if h.get(f"{obr}-3.1"):
            _el(organizer, "id", root_=f"{self.config.document_root}.5", extension=_safe(h.get(f"{obr}-3.1")))
        code = _coded(h, f"{obr}-4")
        if code:
            _el(organizer, "code", code=code[0], codeSystem=LOINC, displayName=code[1])
        _el(organizer, "statusCode", code="completed")
        if h.get(f"{obr}-7"):
            _el(organizer, "effectiveTime", value=h.get(f"{obr}-7"))
        if self.spm:
            self._specimen(organizer)
        for k in obxs:
            self._observation(_el(organizer, "component"), k)

    def _specimen(self, organizer: etree._Element) -> None:
        spm, h = f"SPM[{self.spm}]", self.hl7
        role = _el(_el(organizer, "specimen"), "specimenRole")
        if h.get(f"{spm}-2.1"):
            _el(role, "id", root_=f"{self.config.document_root}.6", extension=_safe(h.get(f"{spm}-2.1")))
        if h.get(f"{spm}-4.1"):
            system = CODE_SYSTEMS.get(h.get(f"{spm}-4.3"), "")
            _el(_el(role, "specimenPlayingEntity"), "code", code=h.get(f"{spm}-4.1"), codeSystem=system,
                displayName=h.get(f"{spm}-4.2"))

    def _observation(self, component: etree._Element, k: int) -> None:
        h, obx = self.hl7, f"OBX[{k}]"
        code = _coded(h, f"{obx}-3")
        if code is None:
            text = f"OBX-3 of result {k} is not coded in LOINC (coding system LN): the report needs LOINC"
            raise Rejected([Finding(text, code="103", location=f"OBX^{k}^3")])
        obs = _el(component, "observation", classCode="OBS", moodCode="EVN")
        _el(obs, "code", code=code[0], codeSystem=LOINC, codeSystemName="LOINC", displayName=code[1])
        _el(obs, "statusCode", code=STATUS.get(h.get(f"{obx}-11"), "completed"))
        when = h.get(f"{obx}-14") or h.get(f"OBR[{self.obr}]-7")
        if when:
            _el(obs, "effectiveTime", value=when)
        self._value(obs, obx)
        flag = h.get(f"{obx}-8.1")
        if flag:
            _el(obs, "interpretationCode", code=flag, codeSystem=INTERPRETATION)
        self._range(obs, obx)

    def _value(self, obs: etree._Element, obx: str) -> None:
        h = self.hl7
        kind, value, unit = h.get(f"{obx}-2"), h.get(f"{obx}-5").strip(), h.get(f"{obx}-6.1") or "1"
        if not value:
            return
        if kind in ("NM", "SN") and _NUMBER.match(value) and _UCUM.match(unit):
            _typed(obs, "value", "PQ", value=value, unit=unit)
        elif kind in ("CE", "CWE", "CNE"):
            system = h.get(f"{obx}-5.3")
            _typed(obs, "value", "CD", code=h.get(f"{obx}-5.1"), codeSystem=CODE_SYSTEMS.get(system, ""),
                   codeSystemName="" if system in CODE_SYSTEMS else system, displayName=h.get(f"{obx}-5.2"))
        else:  # text; a structured numeric (SN: comparator^number) or a number without UCUM unit as text
            text = value.replace("^", "") if kind == "SN" else value
            with_unit = kind in ("NM", "SN") and unit != "1"
            _typed(obs, "value", "ST").text = f"{text} {unit}" if with_unit else text

    def _range(self, obs: etree._Element, obx: str) -> None:
        text, unit = self.hl7.get(f"{obx}-7").strip(), self.hl7.get(f"{obx}-6.1") or "1"
        if not text:
            return
        observation_range = _el(_el(obs, "referenceRange", typeCode="REFV"), "observationRange")
        between, bound = _RANGE.match(text), _BOUND.match(text)
        if not _UCUM.match(unit) or not (between or bound):
            _el(observation_range, "text", text)
            return
        ivl = _typed(observation_range, "value", "IVL_PQ")
        if between:
            low, high = between.group(1), between.group(2)
        else:
            assert bound is not None
            low, high = (bound.group(2), "") if bound.group(1).startswith(">") else ("", bound.group(2))
        for tag, number in (("low", low), ("high", high)):
            if number:
                _el(ivl, tag, value=number, unit=unit)


def _coded(h: Hl7Message, path: str) -> tuple[str, str] | None:
    """(LOINC code, display) from a CE/CWE: the primary coding when LN, else the alternate."""
    for offset in (0, 3):
        if h.get(f"{path}.{3 + offset}") == "LN" and h.get(f"{path}.{1 + offset}"):
            return h.get(f"{path}.{1 + offset}"), h.get(f"{path}.{2 + offset}")
    return None


class Narrative:
    """The human-readable table every section needs (the same facts as the entries)."""

    HEAD = ("Test", "Result", "Unit", "Reference range", "Flag", "Status")

    def __init__(self, hl7: Hl7Message) -> None:
        self.hl7 = hl7

    def render(self, text: etree._Element, batteries: list[tuple[int, list[int], int]]) -> None:
        table = _el(text, "table")
        row = _el(_el(table, "thead"), "tr")
        for title in self.HEAD:
            _el(row, "th", title)
        body = _el(table, "tbody")
        for _, obxs, _ in batteries:
            for k in obxs:
                self._row(_el(body, "tr"), f"OBX[{k}]")

    def _row(self, row: etree._Element, obx: str) -> None:
        h = self.hl7
        cells = (h.get(f"{obx}-3.2") or h.get(f"{obx}-3.1"), h.get(f"{obx}-5.2") or h.get(f"{obx}-5.1"),
                 h.get(f"{obx}-6.1"), h.get(f"{obx}-7"), h.get(f"{obx}-8.1"), h.get(f"{obx}-11"))
        for cell in cells:
            _el(row, "td", cell)
