"""Reading identities from a PID segment (HL7 v2.3 - 2.8), and writing the enterprise id back.

PID-3 repetitions: the national identifier is the one whose assigning authority (CX-4.1) is the
national authority; local ids carry the facility as authority (CX-4.1, else MSH-4's first
component). PID-5 repetitions: name type (XPN-7) L or empty = the name in use, B or M = the birth
name. PID-7 birth date, PID-8 sex, PID-11 first address, PID-24/25 multiple birth.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from engine.formats.hl7v2 import Hl7Message
from engine.mpi.model import Traits

_DIGITS = re.compile(r"\d+[A-Za-z]?")


@dataclass(frozen=True)
class PatientIds:
    national: str
    local: list[tuple[str, str]]  # (authority, id)
    others: list[tuple[str, str]]


def patient_ids(
    msg: Hl7Message, national_authority: str, skip_authorities: tuple[str, ...] = (), segment: str = "PID"
) -> PatientIds:
    ids = msg.get_all(f"{segment}-3[*].1")
    authorities = msg.get_all(f"{segment}-3[*].4.1")
    fallback = msg.get("MSH-4.1")
    national, local, others = "", [], []
    for raw, authority in zip(ids, authorities + [""] * (len(ids) - len(authorities)), strict=False):
        value = raw.strip()
        if not value:
            continue
        if authority == national_authority:
            national = national or value
        elif authority in skip_authorities:
            others.append((authority, value))
        else:
            local.append((authority or fallback, value))
    return PatientIds(national, local, others)


def _names(msg: Hl7Message, segment: str) -> tuple[str, str, str]:
    """(name in use, given names, birth name) from the PID-5 repetitions."""
    families = msg.get_all(f"{segment}-5[*].1.1")
    family, given, birth = "", "", ""
    for r in range(1, len(families) + 1):
        kind = msg.get(f"{segment}-5[{r}].7").upper()
        surname = msg.get(f"{segment}-5[{r}].1.1")
        if kind in ("B", "M"):
            birth = birth or surname
        elif not family:
            family = surname
            given = " ".join(x for x in (msg.get(f"{segment}-5[{r}].2"), msg.get(f"{segment}-5[{r}].3")) if x)
    return family, given, birth


def _address(msg: Hl7Message, segment: str) -> tuple[str, str, str, str, str]:
    """(house number, street, other designation, city, postcode) of the first PID-11."""
    line = msg.get(f"{segment}-11.1.1")
    house = msg.get(f"{segment}-11.1.3")
    street = msg.get(f"{segment}-11.1.2") or line
    if not house:
        m = _DIGITS.search(line)
        house = m.group(0) if m else ""
        street = _DIGITS.sub(" ", line).strip(" ,") if m else street
    return house, street, msg.get(f"{segment}-11.2"), msg.get(f"{segment}-11.3"), msg.get(f"{segment}-11.5")


def traits_from(msg: Hl7Message, national_authority: str, segment: str = "PID") -> Traits:
    family, given, birth = _names(msg, segment)
    house, street, street2, city, postcode = _address(msg, segment)
    order = msg.get(f"{segment}-25")
    twin = msg.get(f"{segment}-24").upper() == "Y" or (order.isdigit() and int(order) > 0)
    return Traits(
        family=family,
        given=given,
        birth_name=birth,
        birth_date=msg.get(f"{segment}-7.1")[:8],
        sex=msg.get(f"{segment}-8").upper(),
        matricule=patient_ids(msg, national_authority, (), segment).national,
        house_number=house,
        street=street,
        street2=street2,
        city=city,
        postcode=postcode,
        multiple_birth=twin,
    )


def add_identifier(
    msg: Hl7Message,
    value: str,
    namespace: str,
    universal_id: str,
    id_type: str,
    type_code: str,
    segment: str = "PID",
) -> None:
    """Append a PID-3 repetition (CX: id^^^namespace&universal id&type^type code) unless present."""
    ids = msg.get_all(f"{segment}-3[*].1")
    authorities = msg.get_all(f"{segment}-3[*].4.1")
    if any(v == value and a == namespace for v, a in zip(ids, authorities, strict=False)):
        return
    r = len(ids) + 1
    msg.set(f"{segment}-3[{r}].1", value)
    msg.set(f"{segment}-3[{r}].4.1", namespace)
    msg.set(f"{segment}-3[{r}].4.2", universal_id)
    msg.set(f"{segment}-3[{r}].4.3", id_type)
    msg.set(f"{segment}-3[{r}].5", type_code)
