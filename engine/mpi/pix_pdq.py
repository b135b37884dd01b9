"""IHE PIX (QBP^Q23 -> RSP^K23) and PDQ (QBP^Q22 -> RSP^K22) answers, built from the MPI.

Pure functions of (query message, MPI): no I/O besides reading the MPI. PIX: QPD-3 names one
patient id (CX with its authority: national, enterprise or a facility's); the answer's PID-3
lists every id of that patient (QPD-4 may restrict the domains). An unknown id is AE with ERR
204 at QPD^1^3^1^1, an unknown domain AE at QPD^1^3^1^4 (ITI-9). PDQ: QPD-3 holds
`@PID.5.1.1^NAME~@PID.7^YYYYMMDD~...`; every certified identity whose given traits all agree is
returned (best first, at most RCP-2 of them), one PID and a QRI (match weight) each.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from engine.formats.hl7v2 import Header, Hl7Message, escape, hl7_timestamp, new_control_id
from engine.mpi.batch import query_columns
from engine.mpi.blocking import query_keys
from engine.mpi.compare import FIELD_INDEX, levels
from engine.mpi.model import Traits
from engine.mpi.service import Mpi

PDQ_FIELDS = {
    "PID.5.1.1": "family",
    "PID.5.1": "family",
    "PID.5": "family",
    "PID.5.2": "given",
    "PID.7": "birth_date",
    "PID.7.1": "birth_date",
    "PID.8": "sex",
    "PID.11.3": "city",
    "PID.11.5": "postcode",
    "PID.11.1": "street",
    "PID.11.1.1": "street",
    "PID.6.1.1": "birth_name",
}
MAX_HITS = 100
# Per field, the worst comparison level still counted as agreeing in a PDQ search.
PDQ_LEVELS = {
    "family": 3,
    "given": 3,
    "birth_date": 0,
    "sex": 0,
    "street": 1,
    "city": 1,
    "postcode": 0,
    "matricule": 0,
}


@dataclass
class Answer:
    """What to send back: the acknowledgement code, the query status, the segments after QAK."""

    ack: str
    status: str  # OK | NF | AE
    segments: list[str]
    error: tuple[str, str, str] | None = None  # (ERR-2 location, ERR-3 code, text)


def respond(msg: Hl7Message, mpi: Mpi) -> bytes:
    """RSP^K23 or RSP^K22 for a QBP^Q23 / QBP^Q22 message."""
    h = msg.header
    esc = _escaper(h)
    if h.trigger_event == "Q23":
        answer, structure = pix(msg, mpi, esc), ("K23", "RSP_K23")
    elif h.trigger_event == "Q22":
        answer, structure = pdq(msg, mpi, esc), ("K22", "RSP_K22")
    else:
        answer = Answer("AR", "AE", [], ("MSH^1^9^2", "201", f"unsupported query {h.message_type}"))
        structure = ("K23", "RSP_K23")
    return _render(h, msg, answer, structure, esc).encode(msg.codec, "replace")


def _escaper(h: Header) -> Callable[[str], str]:
    return lambda value: escape(value, h.encoding_chars, h.field_sep)


def _render(
    h: Header, msg: Hl7Message, a: Answer, structure: tuple[str, str], esc: Callable[[str], str]
) -> str:
    s, c = h.field_sep, h.encoding_chars[0]
    msh = s.join(
        [
            "MSH",
            h.encoding_chars,
            h.receiving_app,
            h.receiving_facility,
            h.sending_app,
            h.sending_facility,
            hl7_timestamp(),
            "",
            f"RSP{c}{structure[0]}{c}{structure[1]}",
            new_control_id(),
            h.processing_id or "P",
            h.version or "2.5",
            "",
            "",
            "",
            "",
            "",
            h.charset,
        ]
    )
    segments = [msh.rstrip(s), s.join(["MSA", a.ack, esc(h.control_id)])]
    if a.error:
        location, code, text = a.error
        segments.append(s.join(["ERR", "", location.replace("^", c), f"{code}{c}{esc(text)}{c}HL70357", "E"]))
    segments.append(s.join(["QAK", esc(msg.get("QPD-2")), a.status]))
    segments.append(_qpd_text(msg))
    segments.extend(a.segments)
    return "\r".join(segments) + "\r"


def _qpd_text(msg: Hl7Message) -> str:
    for line in msg.to_text().split("\r"):
        if line.startswith("QPD"):
            return line
    return "QPD"


# -- PIX -----------------------------------------------------------------------------------------


def _domains(mpi: Mpi) -> set[str]:
    known = {mpi.config.national_authority, mpi.config.enterprise.namespace}
    known.update(str(r[0]) for r in mpi.storage.query("SELECT DISTINCT authority FROM mpi_facility"))
    return known


def pix(msg: Hl7Message, mpi: Mpi, esc: Callable[[str], str]) -> Answer:
    value, authority = msg.get("QPD-3.1"), msg.get("QPD-3.4.1")
    wanted = [d for d in msg.get_all("QPD-4[*].4.1") if d]
    domains = _domains(mpi)
    if authority not in domains:
        return Answer("AE", "AE", [], ("QPD^1^3^1^4", "204", "unknown assigning authority"))
    unknown = [d for d in wanted if d not in domains]
    if unknown:
        return Answer("AE", "AE", [], ("QPD^1^4^1^4", "204", "unknown domain requested"))
    identity = mpi.find_identity(authority, value)
    if identity is None:
        return Answer("AE", "AE", [], ("QPD^1^3^1^1", "204", "unknown patient identifier"))
    ids = [(a, v) for a, v in all_ids(mpi, identity) if not (a == authority and v == value)]
    if wanted:
        ids = [(a, v) for a, v in ids if a in wanted]
    if not ids:
        return Answer("AA", "NF", [])
    return Answer("AA", "OK", ["PID|||" + "~".join(_cx(mpi, a, v, esc) for a, v in ids) + "||~"])


def all_ids(mpi: Mpi, identity: int) -> list[tuple[str, str]]:
    """(authority, id): the matricule, the enterprise id, then every linked facility id."""
    out: list[tuple[str, str]] = []
    matricule = mpi.storage.matricule(identity)  # opened when sealed (encryption at rest)
    if matricule:
        out.append((mpi.config.national_authority, matricule))
    out.append((mpi.config.enterprise.namespace, mpi.enterprise_id(identity)))
    return out + mpi.linked_ids(identity)


def _cx(mpi: Mpi, authority: str, value: str, esc: Callable[[str], str]) -> str:
    e = mpi.config.enterprise
    if authority == e.namespace:
        universal = f"{esc(e.universal_id)}&{esc(e.universal_id_type)}"
        return f"{esc(value)}^^^{esc(authority)}&{universal}^{esc(e.type_code)}"
    kind = "NI" if authority == mpi.config.national_authority else "PI"
    return f"{esc(value)}^^^{esc(authority)}^{kind}"


# -- PDQ -----------------------------------------------------------------------------------------


def query_traits(msg: Hl7Message) -> tuple[Traits, dict[str, str]]:
    """Traits from QPD-3 (`@PID.x.y^value` repetitions), and the raw criteria by trait name."""
    names, values = msg.get_all("QPD-3[*].1"), msg.get_all("QPD-3[*].2")
    criteria: dict[str, str] = {}
    for name, value in zip(names, values, strict=False):
        field = PDQ_FIELDS.get(name.lstrip("@"))
        if field and value:
            criteria[field] = value
    plain = {k: v.rstrip("*") for k, v in criteria.items()}
    if "birth_date" in plain:
        plain["birth_date"] = plain["birth_date"][:8]
    return Traits(**plain), criteria  # type: ignore[arg-type]


def pdq(msg: Hl7Message, mpi: Mpi, esc: Callable[[str], str]) -> Answer:
    traits, criteria = query_traits(msg)
    if not criteria:
        return Answer("AE", "AE", [], ("QPD^1^3", "101", "no supported search criteria in QPD-3"))
    limit = min(MAX_HITS, int(msg.get("RCP-2.1")) if msg.get("RCP-2.1").isdigit() else 10) or 10
    hits = search(mpi, traits, criteria)
    if not hits:
        return Answer("AA", "NF", [])
    segments: list[str] = []
    for n, (identity, score) in enumerate(hits[:limit], start=1):
        segments.append(_pid(mpi, n, identity, esc))
        segments.append(f"QRI|{score:.1f}")
    return Answer("AA", "OK", segments)


def search(mpi: Mpi, traits: Traits, criteria: dict[str, str]) -> list[tuple[int, float]]:
    """Certified identities agreeing with every criterion given, best first: (identity id, score)."""
    index = mpi.index
    q = query_columns([traits])
    rows = _pdq_rows(mpi, q, criteria)
    if len(rows) == 0:
        return []
    qi = np.zeros(len(rows), dtype=np.intp)
    lv = levels(q, index.cols, qi, rows)
    keep = np.ones(len(rows), dtype=np.bool_)
    for name, worst in PDQ_LEVELS.items():
        given = criteria.get(name) or (criteria.get("birth_name", "") if name == "family" else "")
        if not given:
            continue
        if given.endswith("*") and name in ("family", "given"):
            keep &= _prefix(index.cols["family" if name == "family" else "given"][rows], given)
            continue
        col = lv[:, FIELD_INDEX[name]]
        keep &= (col >= 0) & (col <= worst)
    scores = mpi.matcher().scorer.score(lv, index.family_freq[rows])
    order = np.argsort(-scores[keep], kind="stable")
    kept_rows, kept_scores = rows[keep][order], scores[keep][order]
    return [
        (int(index.ids[r]), float(s))
        for r, s in zip(kept_rows[:MAX_HITS], kept_scores[:MAX_HITS], strict=True)
    ]


def _prefix(values: npt.NDArray[np.generic], criterion: str) -> npt.NDArray[np.bool_]:
    from engine.mpi.normalize import fold, letters

    prefix = letters(fold(criterion.rstrip("*"))).encode()
    result: npt.NDArray[np.bool_] = np.char.startswith(values, prefix)  # type: ignore[arg-type]
    return result


def _pdq_rows(mpi: Mpi, q: object, criteria: dict[str, str]) -> npt.NDArray[np.intp]:
    """Candidate rows: blocking when a birth date is given, else a scan on the family name."""
    from engine.mpi.columns import Columns

    assert isinstance(q, Columns)
    index = mpi.index
    if q["dob"][0] or q["matricule"][0]:
        return index.candidates(query_keys(q)[0])
    family = q["family"][0] or q["birth"][0]
    if not family:
        return np.zeros(0, dtype=np.intp)
    cols = index.cols
    wildcard = any(criteria.get(n, "").endswith("*") for n in ("family", "birth_name"))
    if wildcard:
        starts = np.char.startswith
        hit = starts(cols["family"], family) | starts(cols["birth"], family)  # type: ignore[arg-type]
    else:
        phon = q["p_family"][0]
        hit = (
            (cols["family"] == family)
            | (cols["birth"] == family)
            | ((cols["p_family"] == phon) & (phon != b""))
        )
    return np.flatnonzero(hit & index.active)[:5000].astype(np.intp)


def _pid(mpi: Mpi, n: int, identity: int, esc: Callable[[str], str]) -> str:
    t = mpi.identity_traits(identity) or Traits()
    ids = "~".join(_cx(mpi, a, v, esc) for a, v in all_ids(mpi, identity))
    names = f"{esc(t.family)}^{esc(t.given)}^^^^^L"
    if t.birth_name:
        names += f"~{esc(t.birth_name)}^^^^^^B"
    street = " ".join(x for x in (t.house_number, t.street) if x)
    address = f"{esc(street)}^{esc(t.street2)}^{esc(t.city)}^^{esc(t.postcode)}"
    return f"PID|{n}||{ids}||{names}||{esc(t.birth_date)}|{esc(t.sex)}|||{address}"
