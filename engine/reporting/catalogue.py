"""The notifiable-disease catalogue: which coded results are notifiable, and how cases are grouped.

Configuration, not code (`config/notifiable-diseases.yaml`). Each disease lists its test codes
(LOINC, plus the SNOMED CT / FOPH codes CH ELM uses as leading codes), the SNOMED CT organisms
whose identification in a result value means that disease, the interpretation codes counting as
positive, and the case window. `organism_tests` are generic tests (culture, MALDI-TOF, ...) whose
value names the organism: their disease comes from the organism code.

`import_ch_elm(folder)` builds the catalogue from the Swiss FOPH CH ELM FHIR ValueSets and
ConceptMaps: the leading codes of `ch-elm-results-laboratory-observation`, the organism groups the
"expecting organism specification" ConceptMap points to, and the interpretation value set of each
leading code. CH ELM has no disease grouping, so the disease of a code is read from its display
text with `DISEASE_PATTERNS` (first match), else from the organism named in the display.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field

CH_ELM = "http://fhir.ch/ig/ch-elm/"
LAB_OBSERVATIONS = "ValueSet-ch-elm-results-laboratory-observation.json"
ORGANISM_MAP = "ConceptMap-ch-elm-expecting-organism-specification-to-results-completion-vs.json"
INTERPRETATION_MAP = "ConceptMap-ch-elm-results-to-interpretation-code.json"
DEFAULT_WINDOW_DAYS = 90

# (disease key, display name, pattern over the FHIR display text). Order matters: first match wins.
DISEASE_PATTERNS: tuple[tuple[str, str, str], ...] = (
    ("sars-cov-2", "COVID-19 (SARS-CoV-2)", r"SARS-CoV-2|COVID"),
    ("sars", "SARS", r"SARS coronavirus"),
    ("mers", "MERS", r"MERS|Middle East respiratory"),
    ("influenza", "Influenza", r"Influenza"),
    ("rsv", "Respiratory syncytial virus infection", r"Respiratory syncytial"),
    ("hiv", "HIV infection", r"\bHIV\b|Human immunodeficiency"),
    ("hepatitis-a", "Hepatitis A", r"Hepatitis A"),
    ("hepatitis-b", "Hepatitis B", r"Hepatitis B"),
    ("hepatitis-c", "Hepatitis C", r"Hepatitis C"),
    ("hepatitis-e", "Hepatitis E", r"Hepatitis E"),
    ("mpox", "Mpox", r"Monkeypox|Mpox"),
    ("legionellosis", "Legionellosis", r"Legionella"),
    ("campylobacteriosis", "Campylobacteriosis", r"Campylobacter"),
    ("salmonellosis", "Salmonellosis", r"Salmonella"),
    ("shigellosis", "Shigellosis", r"Shigella"),
    ("ehec", "Shiga toxin-producing E. coli (STEC/EHEC)", r"Escherichia coli|shiga"),
    ("listeriosis", "Listeriosis", r"Listeria"),
    ("tuberculosis", "Tuberculosis", r"Mycobacterium"),
    ("diphtheria", "Diphtheria", r"Corynebacterium|Diphtheria"),
    ("meningococcal", "Invasive meningococcal disease", r"Neisseria meningitidis"),
    ("gonorrhoea", "Gonorrhoea", r"Neisseria gonorrhoeae"),
    ("chlamydia", "Chlamydia trachomatis infection", r"Chlamydia"),
    ("syphilis", "Syphilis", r"Treponema"),
    ("pneumococcal", "Invasive pneumococcal disease", r"Streptococcus"),
    ("haemophilus", "Invasive Haemophilus influenzae disease", r"Haemophilus"),
    ("measles", "Measles", r"Measles"),
    ("rubella", "Rubella", r"Rubella"),
    ("malaria", "Malaria", r"Plasmodium"),
    ("dengue", "Dengue", r"Dengue"),
    ("chikungunya", "Chikungunya", r"Chikungunya"),
    ("zika", "Zika", r"Zika"),
    ("west-nile", "West Nile fever", r"West Nile"),
    ("yellow-fever", "Yellow fever", r"Yellow fever"),
    ("tbe", "Tick-borne encephalitis", r"tick borne encephalitis|Tick-borne encephalitis"),
    ("hantavirus", "Hantavirus infection", r"Hantavirus|Hantaan|Puumala|Dobrava|Seoul"),
    ("brucellosis", "Brucellosis", r"Brucella"),
    ("tularaemia", "Tularaemia", r"Francisella"),
    ("q-fever", "Q fever", r"Coxiella"),
    ("anthrax", "Anthrax", r"Bacillus anthracis"),
    ("botulism", "Botulism", r"botulinum"),
    ("cholera", "Cholera", r"Vibrio"),
    ("plague", "Plague", r"Yersinia pestis"),
    ("smallpox", "Smallpox", r"Variola"),
    ("ebola", "Ebola virus disease", r"Ebola"),
    ("marburg", "Marburg virus disease", r"Marburg"),
    ("lassa", "Lassa fever", r"Lassa"),
    ("cchf", "Crimean-Congo haemorrhagic fever", r"Crimean-Congo"),
    ("poliomyelitis", "Poliomyelitis", r"Polio"),
    ("rabies", "Rabies", r"Rabies"),
    ("trichinellosis", "Trichinellosis", r"Trichinella"),
    ("cjd", "Creutzfeldt-Jakob disease", r"Prion|PRNP|14-3-3|spongiform|Creutzfeldt"),
    ("cpe", "Carbapenemase-producing Enterobacterales", r"Carbapenemase"),
    ("emerging-pathogen", "Emerging pathogen (FOPH placeholder)", r"emerging pathogen"),
)


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Disease(Model):
    name: str
    """Display name of the disease."""
    tests: list[str] = Field(default_factory=list)
    """Leading test codes (OBX-3.1 / CDA observation code) whose positive result means this disease."""
    organisms: list[str] = Field(default_factory=list)
    """SNOMED CT organism codes: identified in a result value (OBX-5.1), they mean this disease."""
    positive: list[str] = Field(default_factory=list)
    """Interpretation codes counting as positive for this disease, beside the catalogue's defaults."""
    window_days: int = Field(default=DEFAULT_WINDOW_DAYS, ge=1)
    """Results of one patient within this many days of the case's first result are one case."""


class Catalogue(Model):
    source: str = ""
    """Where the catalogue was imported from (URL and version), for the record."""
    positive_interpretations: list[str] = Field(default_factory=lambda: ["POS", "DET", "A", "AA"])
    """Interpretation codes (OBX-8, v3 ObservationInterpretation) meaning positive for every disease."""
    negative_interpretations: list[str] = Field(default_factory=lambda: ["NEG", "ND", "N"])
    """Interpretation codes meaning negative."""
    positive_values: list[str] = Field(default_factory=lambda: ["260373001", "10828004"])
    """Coded values (SNOMED CT Detected, Positive) meaning positive."""
    negative_values: list[str] = Field(default_factory=lambda: ["260415000", "260385009"])
    """Coded values (SNOMED CT Not detected, Negative) meaning negative."""
    organism_tests: list[str] = Field(default_factory=list)
    """Generic tests whose value is the organism identified (culture, MALDI-TOF, sequencing)."""
    diseases: dict[str, Disease]
    """Disease key -> definition; the key is what cases, reports and aggregates name."""

    @functools.cached_property
    def by_test(self) -> dict[str, str]:
        return {code: key for key, d in self.diseases.items() for code in d.tests}

    def recognises(self, test: str) -> bool:
        """True when `test` is a leading code of the catalogue (a disease test or an organism test)."""
        return test in self.by_test or test in self.organism_tests

    @functools.cached_property
    def by_organism(self) -> dict[str, str]:
        return {code: key for key, d in self.diseases.items() for code in d.organisms}


def load_catalogue(path: Path) -> Catalogue:
    """Read and validate a catalogue YAML (cached per file and modification time)."""
    return _load(path.resolve(), path.stat().st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _load(path: Path, _mtime: int) -> Catalogue:
    return Catalogue.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")))


def dump_catalogue(catalogue: Catalogue) -> str:
    header = (
        "# Notifiable-disease catalogue. Generated by `passerelle reporting import-catalogue`;\n"
        "# edit window_days / positive per disease if needed, and re-import to refresh codes.\n"
    )
    body = catalogue.model_dump(mode="json")
    return header + yaml.safe_dump(body, sort_keys=False, allow_unicode=True, width=100)


# -- CH ELM import -------------------------------------------------------------------------------


def known_disease(display: str) -> tuple[str, str] | None:
    """(key, name) of the first `DISEASE_PATTERNS` entry matching a display text."""
    for key, name, pattern in DISEASE_PATTERNS:
        if re.search(pattern, display, re.IGNORECASE):
            return key, name
    return None


def disease_of(display: str) -> tuple[str, str]:
    """(key, name) of the disease a CH ELM display text is about (else: the organism it names)."""
    known = known_disease(display)
    if known is not None:
        return known
    organism = re.sub(r"\s*(\[|\(| identified| DNA| RNA| Ab| Ag| Ig[AGM]).*$", "", display).strip()
    return re.sub(r"[^a-z0-9]+", "-", organism.lower()).strip("-") or "unknown", organism


def _read(folder: Path, name: str) -> dict[str, Any]:
    path = folder / name
    if not path.is_file():
        raise FileNotFoundError(f"CH ELM resource missing: {path}")
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def _concepts(valueset: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        (c["code"], c.get("display", ""))
        for inc in valueset.get("compose", {}).get("include", [])
        for c in inc.get("concept", [])
    ]


def _targets(conceptmap: dict[str, Any]) -> dict[str, str]:
    """Source code -> the canonical URL of its (first) target."""
    return {
        e["code"]: e["target"][0]["code"]
        for g in conceptmap.get("group", [])
        for e in g.get("element", [])
        if e.get("target")
    }


def _valueset_by_url(folder: Path, url: str) -> list[tuple[str, str]]:
    return _concepts(_read(folder, f"ValueSet-{url.rsplit('/', 1)[-1]}.json"))


class _Builder:
    def __init__(self, window_days: int) -> None:
        self.window_days = window_days
        self.names: dict[str, str] = {}
        self.tests: dict[str, list[str]] = {}
        self.organisms: dict[str, list[str]] = {}
        self.positive: dict[str, set[str]] = {}

    def add(self, key: str, name: str, test: str = "", organism: str = "") -> None:
        self.names.setdefault(key, name)
        for table, code in ((self.tests, test), (self.organisms, organism)):
            codes = table.setdefault(key, [])
            if code and code not in codes:
                codes.append(code)

    def build(self, source: str, organism_tests: list[str]) -> Catalogue:
        diseases = {
            key: Disease(
                name=self.names[key],
                tests=self.tests.get(key, []),
                organisms=self.organisms.get(key, []),
                positive=sorted(self.positive.get(key, set())),
                window_days=self.window_days,
            )
            for key in sorted(self.names)
            if not self._generic(key, organism_tests)
        }
        return Catalogue(source=source, organism_tests=organism_tests, diseases=diseases)

    def _generic(self, key: str, organism_tests: list[str]) -> bool:
        """A "disease" made only of generic identification tests (e.g. MALDI-TOF): no disease at all;
        those tests stay recognised through `organism_tests`, their organism names the disease."""
        known = {k for k, _, _ in DISEASE_PATTERNS}
        return (
            key not in known and not self.organisms.get(key) and set(self.tests[key]) <= set(organism_tests)
        )


def import_ch_elm(folder: Path, window_days: int = DEFAULT_WINDOW_DAYS) -> Catalogue:
    """The catalogue described by the CH ELM FHIR resources in `folder` (FileNotFoundError if absent)."""
    observations = _read(folder, LAB_OBSERVATIONS)
    organism_map = _targets(_read(folder, ORGANISM_MAP))
    interpretation_map = _targets(_read(folder, INTERPRETATION_MAP))
    builder = _Builder(window_days)
    for code, display in _concepts(observations):
        key, name = disease_of(display)
        builder.add(key, name, test=code)
        for value in _positive_codes(folder, interpretation_map.get(code, "")):
            builder.positive.setdefault(key, set()).add(value)
        if code in organism_map:
            for organism, organism_display in _valueset_by_url(folder, organism_map[code]):
                okey, oname = known_disease(organism_display) or (key, name)  # else: the test's disease
                builder.add(okey, oname, organism=organism)
    source = f"{observations.get('url', '')}|{observations.get('version', '')}"
    return builder.build(source, sorted(organism_map))


# Interpretation value sets of CH ELM and which of their codes mean "report it": POS (presence),
# U (significant titer rise), seroconversion, low avidity (recent infection). NEG and S are not.
_POSITIVE_IN_SET = {"POS", "U", "R", "1290194006", "255508009"}


def _positive_codes(folder: Path, url: str) -> list[str]:
    if not url:
        return []
    return [code for code, _ in _valueset_by_url(folder, url) if code in _POSITIVE_IN_SET]
