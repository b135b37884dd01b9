"""The comparisons of `compare.py` for ONE query: the single-resolve path.

A single resolve used to pay ~60 small numpy calls of fixed cost, whatever its candidates. Here:
  cheap_levels_one  the cheap (shortlisting) comparison of the query against many register rows,
                    numpy with the query's values as scalars (no pair arrays, no np.char loops)
  levels_one        the full comparison against the shortlisted rows, in pure Python (at most
                    `SHORTLIST` rows: Python beats numpy's per-call cost at that size)
Contract: both give exactly what `compare.cheap_levels` / `compare.levels` give for the same
pairs (tests/unit/test_mpi_single_path.py checks it on FEBRL and Luxembourg-like samples).
**Any change to compare.py must be mirrored here**, and the other way round.

Jaro-Winkler similarities are rounded to float32 as `compare.jw` gets them from rapidfuzz's
cpdist, so that a similarity at a cut (0.92, 0.95...) falls on the same side in both paths.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from rapidfuzz.distance import JaroWinkler

from engine.mpi.columns import Columns
from engine.mpi.compare import FIELD_INDEX, FIELDS, Levels, member
from engine.mpi.normalize import Norm

Value = bytes | int
QueryValues = dict[str, Any]  # column name -> bytes (strings) or int (dob, sex, twin)
Ints = npt.NDArray[np.intp]
# The register columns a full comparison reads: every normalized field but the twin flag (the
# guards read it), in Norm's order, which the row positions below (FAMILY ... P_GIVEN) follow.
FULL = tuple(name for name in Norm.__slots__ if name != "twin")
_similarity = JaroWinkler.normalized_similarity
_f32 = np.float32


def query_values(norm: Norm) -> QueryValues:
    """The query's values as the register columns hold them (ASCII bytes, ints)."""
    out: QueryValues = {}
    for name in Norm.__slots__:
        value = getattr(norm, name)
        out[name] = value.encode("ascii", "replace") if isinstance(value, str) else int(value)
    return out


@functools.lru_cache(maxsize=1 << 14)  # birth dates and postcodes repeat
def typo_strings(a: bytes, width: int) -> frozenset[bytes]:
    """Every digit string of a's length (a: digits, zero-padded to `width` as `compare._digits`
    sees it) one digit away from a, or with two adjacent differing digits swapped: exactly the
    b for which `compare.one_typo(a, b)` holds."""
    s = a.rjust(width, b"0")
    out = set()
    for i in range(width):
        for d in b"0123456789":
            if d != s[i]:
                out.add(s[:i] + bytes([d]) + s[i + 1 :])
        if i + 1 < width and s[i] != s[i + 1]:
            out.add(s[:i] + s[i + 1 : i + 2] + s[i : i + 1] + s[i + 2 :])
    return frozenset(out)


@functools.lru_cache(maxsize=1 << 14)
def _typo_array(a: bytes, width: int, as_int: bool) -> npt.NDArray[np.generic]:
    """typo_strings sorted, as ints or as byte strings of their own width (never cut)."""
    typos = sorted(typo_strings(a, width))
    return np.array(sorted(int(t) for t in typos), dtype=np.int64) if as_int else np.array(typos)


# -- cheap comparison: one query against many rows (numpy, the query's values as scalars) ------


def cheap_levels_one(qv: QueryValues, cols: Columns, rows: Ints) -> Levels:
    """`compare.cheap_levels(q, cols, zeros, rows)` for the one query whose values are `qv`."""
    out = np.full((len(rows), len(FIELDS)), -1, dtype=np.int8)
    if not len(rows):
        return out
    _cheap_family(qv, cols, rows, out[:, FIELD_INDEX["family"]])
    _cheap_given(qv, cols, rows, out[:, FIELD_INDEX["given"]])
    out[:, FIELD_INDEX["birth_date"]] = date_levels_many(int(qv["dob"]), cols["dob"][rows])
    out[:, FIELD_INDEX["sex"]] = _equal_many(qv["sex"], cols["sex"][rows], 0)
    out[:, FIELD_INDEX["matricule"]] = _equal_many(qv["matricule"], cols["matricule"][rows], b"")
    out[:, FIELD_INDEX["house_number"]] = _equal_many(qv["house"], cols["house"][rows], b"")
    for field, name in (("street", "street"), ("city", "city")):
        if qv[name]:
            out[cols[name][rows] == qv[name], FIELD_INDEX[field]] = 0
    out[:, FIELD_INDEX["postcode"]] = postcode_levels_many(qv["postcode"], cols["postcode"][rows])
    return out


def _cheap_family(qv: QueryValues, cols: Columns, rows: Ints, fam: Levels) -> None:
    qp, qpb = qv["p_family"], qv["p_birth"]
    if qp or qpb:
        rp, rpb = cols["p_family"][rows], cols["p_birth"][rows]
        phon = np.zeros(len(rows), dtype=np.bool_)
        if qp:
            phon |= (rp == qp) | (rpb == qp)
        if qpb:
            phon |= rp == qpb
        fam[phon] = 3
    if qv["family"]:
        fam[cols["family"][rows] == qv["family"]] = 0


def _cheap_given(qv: QueryValues, cols: Columns, rows: Ints, giv: Levels) -> None:
    for name, level in (("p_given", 3), ("given1", 1), ("given", 0)):
        if qv[name]:
            giv[cols[name][rows] == qv[name]] = level


def _equal_many(a: Value, b: npt.NDArray[np.generic], empty: Value) -> Levels:
    if a == empty:
        return np.full(len(b), -1, dtype=np.int8)
    out = np.where(b == a, 0, 1).astype(np.int8)
    out[b == empty] = -1
    return out


def date_levels_many(a: int, dates: npt.NDArray[np.generic]) -> Levels:
    """`compare.date_levels` of birth date `a` against each of `dates`."""
    if a == 0:
        return np.full(len(dates), -1, dtype=np.int8)
    b = dates.astype(np.int64)
    ya, ma, da = a // 10000, (a // 100) % 100, a % 100
    yb, mb, db = b // 10000, (b // 100) % 100, b % 100
    out = np.full(len(b), 4, dtype=np.int8)
    out[(yb == ya).astype(int) + (mb == ma) + (db == da) >= 2] = 3
    out[member(b, _typo_array(b"%08d" % a, 8, True))] = 2
    if ma != da:
        out[b == _swap(a)] = 1
    unknown = (yb == ya) if (ma == 0 or da == 0) else ((mb == 0) | (db == 0)) & (yb == ya)
    out[unknown & ((mb == ma) | (ma == 0) | (mb == 0))] = 3
    out[b == a] = 0
    out[b == 0] = -1
    return out


def postcode_levels_many(a: Value, postcodes: npt.NDArray[np.generic]) -> Levels:
    """`compare.postcode_levels` of postcode `a` against each of `postcodes`."""
    assert isinstance(a, bytes)
    if not a:
        return np.full(len(postcodes), -1, dtype=np.int8)
    out = np.full(len(postcodes), 2, dtype=np.int8)
    if a.isdigit() and len(a) <= 8:
        out[member(postcodes, _typo_array(a, len(a), False))] = 1
    out[postcodes == a] = 0
    out[postcodes == b""] = -1
    return out


def _swap(d: int) -> int:
    return (d // 10000) * 10000 + (d % 100) * 100 + (d // 100) % 100


# -- full comparison: one query against one row (pure Python) ----------------------------------
# A row is a tuple of the FULL columns' values, in that order (one tuple per candidate: no dict).
FAMILY, BIRTH, GIVEN, GIVEN1, DOB, SEX, MATRICULE, HOUSE = range(8)
STREET, STREET2, CITY, POSTCODE, P_FAMILY, P_BIRTH, P_GIVEN = range(8, 15)
Row = tuple[Any, ...]
_NEAR = 1e-6  # float32 rounding moves a similarity in [0, 1] by less than 6e-8


def at_least(sim: float, cut: float) -> bool:
    """`sim >= cut` as compare.py sees it: after rounding sim to float32 (cpdist's dtype). The
    rounding is paid only when it could matter, i.e. when sim is within _NEAR of the cut."""
    return sim >= cut if abs(sim - cut) > _NEAR else float(_f32(sim)) >= cut


def jw(a: bytes, b: bytes) -> float:
    """Jaro-Winkler similarity (not rounded: compare it with `at_least`)."""
    return float(_similarity(a, b))


def _grade(sim: float, cuts: Sequence[float]) -> int:
    """Level 1 + the index of the first cut reached (cuts in decreasing order), else past them."""
    for level, cut in enumerate(cuts, start=1):
        if at_least(sim, cut):
            return level
    return len(cuts) + 1


def _best(q: Row, r: Row, one: int, two: int) -> float:
    """Best similarity of columns one/two of q against one/two of r (either pairing), -1 when no
    pairing has both sides present."""
    best = -1.0
    for a in (q[one], q[two]):
        if a:
            for b in (r[one], r[two]):
                if b:
                    sim = 1.0 if a == b else jw(a, b)
                    best = sim if sim > best else best
    return best


def family_one(q: Row, r: Row) -> int:
    sim = _best(q, r, FAMILY, BIRTH)
    if sim < 0:
        return -1
    if at_least(sim, 1.0):
        return 0
    level = _grade(sim, (0.95, 0.88))
    if level < 3:
        return level
    qp, qpb, rp, rpb = q[P_FAMILY], q[P_BIRTH], r[P_FAMILY], r[P_BIRTH]
    phon = (qp and qp in (rp, rpb)) or (qpb and qpb == rp)
    return 3 if phon else 4


def given_one(q: Row, r: Row) -> int:
    qg, rg = q[GIVEN], r[GIVEN]
    if not qg or not rg:
        return -1
    if qg == rg:
        return 0
    if q[GIVEN1] == r[GIVEN1]:
        return 1
    level = _grade(jw(qg, rg), (2.0, 0.92, 0.80))
    return 3 if level == 4 and q[P_GIVEN] == r[P_GIVEN] else level


def date_one(a: int, b: int) -> int:
    if a == 0 or b == 0:
        return -1
    if a == b:
        return 0
    ya, ma, da = a // 10000, (a // 100) % 100, a % 100
    yb, mb, db = b // 10000, (b // 100) % 100, b % 100
    partial = 0 in (ma, da, mb, db)
    if partial and ya == yb and (ma in (mb, 0) or mb == 0):
        return 3
    if _swap(a) == b and ma != da:
        return 1
    if one_typo(a, b):
        return 2
    return 3 if (ya == yb) + (ma == mb) + (da == db) >= 2 else 4


def one_typo(a: int, b: int) -> bool:
    """`compare.one_typo` of two ints (their last eight digits)."""
    sa, sb = b"%08d" % (a % 10**8), b"%08d" % (b % 10**8)
    diff = [i for i in range(8) if sa[i] != sb[i]]
    if len(diff) == 1:
        return True
    return (
        len(diff) == 2
        and diff[1] == diff[0] + 1
        and sa[diff[0]] == sb[diff[1]]
        and sa[diff[1]] == sb[diff[0]]
    )


def _equal_one(a: Value, b: Value, empty: Value) -> int:
    if empty in (a, b):
        return -1
    return 0 if a == b else 1


def street_one(q: Row, r: Row) -> int:
    sim = _best(q, r, STREET, STREET2)
    if sim < 0:
        return -1
    return 0 if at_least(sim, 1.0) else _grade(sim, (0.92, 0.80))


def city_one(q: Row, r: Row) -> int:
    a, b = q[CITY], r[CITY]
    if not a or not b:
        return -1
    return 0 if a == b else _grade(jw(a, b), (0.90,))


def postcode_one(a: bytes, b: bytes) -> int:
    if not a or not b:
        return -1
    if a == b:
        return 0
    numeric = a.isdigit() and b.isdigit() and len(a) == len(b) <= 8
    return 1 if numeric and one_typo(int(a), int(b)) else 2


def levels_one(q: Row, r: Row) -> list[int]:
    """`compare.levels` of the query against one register row (both as FULL tuples)."""
    out = [
        family_one(q, r),
        given_one(q, r),
        date_one(q[DOB], r[DOB]),
        _equal_one(q[SEX], r[SEX], 0),
        _equal_one(q[MATRICULE], r[MATRICULE], b""),
        _equal_one(q[HOUSE], r[HOUSE], b""),
        street_one(q, r),
        city_one(q, r),
        postcode_one(q[POSTCODE], r[POSTCODE]),
    ]
    weak = out[0] >= 3 and out[1] >= 3  # compare._name_swap
    if weak and at_least(jw(q[FAMILY], r[GIVEN]), 0.92) and at_least(jw(q[GIVEN], r[FAMILY]), 0.92):
        out[0], out[1] = 1, 2
    return out


def levels_many(q: QueryValues, cols: Columns, rows: Ints) -> Levels:
    """`compare.levels` of the query against each of `rows` (few: the shortlist)."""
    query = tuple(q[name] for name in FULL)
    values = zip(*(cols[name][rows].tolist() for name in FULL), strict=True)
    lv = [levels_one(query, r) for r in values]
    return np.array(lv, dtype=np.int8).reshape(len(rows), len(FIELDS))
