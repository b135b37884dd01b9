"""Multi-level comparisons of record pairs, vectorised over all pairs at once.

`levels(q, r, qi, ri)` compares query row `qi[k]` with register row `ri[k]` for every k and
returns an int8 matrix (pairs x FIELDS): 0 is the strongest agreement, higher levels weaker,
the last level disagreement, and -1 "missing on either side" (which weighs nothing). String
similarities are Jaro-Winkler (rapidfuzz, in C, one call per field for all pairs).

compare_one.py mirrors these comparisons for a single query (the single-resolve path): **any
change to a comparison here must be made there too** (tests/unit/test_mpi_single_path.py
compares both on real samples).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from rapidfuzz.distance import JaroWinkler
from rapidfuzz.process import cpdist

from engine.mpi.columns import Columns

# Field name -> level labels (last = disagreement). The order is the column order of `levels`.
FIELDS: dict[str, tuple[str, ...]] = {
    "family": ("exact", "jw>=0.95", "jw>=0.88", "phonetic", "different"),
    "given": ("exact", "first given name", "jw>=0.92", "jw>=0.80 or phonetic", "different"),
    "birth_date": ("exact", "day/month swapped", "one digit or transposition", "two of y/m/d", "different"),
    "sex": ("same", "different"),
    "matricule": ("same", "different"),
    "house_number": ("same", "different"),
    "street": ("exact", "jw>=0.92", "jw>=0.80", "different"),
    "city": ("exact", "jw>=0.90", "different"),
    "postcode": ("exact", "one digit or transposition", "different"),
}
FIELD_NAMES = tuple(FIELDS)
FIELD_INDEX = {name: i for i, name in enumerate(FIELD_NAMES)}

Ints = npt.NDArray[np.intp]
Levels = npt.NDArray[np.int8]
Floats = npt.NDArray[np.float64]


def jw(a: npt.NDArray[np.generic], b: npt.NDArray[np.generic]) -> Floats:
    """Jaro-Winkler similarity of a[k] and b[k] for every k."""
    if len(a) == 0:
        return np.zeros(0)
    return np.asarray(
        cpdist(a.tolist(), b.tolist(), scorer=JaroWinkler.normalized_similarity, workers=1), dtype=np.float64
    )


def _missing(a: npt.NDArray[np.generic], b: npt.NDArray[np.generic]) -> npt.NDArray[np.bool_]:
    result: npt.NDArray[np.bool_] = (a == b"") | (b == b"")
    return result


def _grade(sim: Floats, exact: npt.NDArray[np.bool_], cuts: tuple[float, ...]) -> Levels:
    """Level 0 exact, then one level per similarity cut, then disagreement."""
    out = np.full(len(sim), len(cuts) + 1, dtype=np.int8)
    for level in range(len(cuts), 0, -1):
        out[sim >= cuts[level - 1]] = level
    out[exact] = 0
    return out


def _best_name(
    pairs: list[tuple[npt.NDArray[np.generic], npt.NDArray[np.generic]]],
) -> tuple[Floats, npt.NDArray[np.bool_]]:
    """Best similarity over several (query, register) name pairings; missing pairings ignored."""
    best = np.full(len(pairs[0][0]), -1.0)
    for a, b in pairs:
        sim = jw(a, b)
        sim[_missing(a, b)] = -1.0
        best = np.maximum(best, sim)
    return best, best < 0


def family_levels(q: Columns, r: Columns, qi: Ints, ri: Ints) -> Levels:
    """Name in use and birth name of either side, whichever pairing agrees best."""
    qf, qb, rf, rb = q["family"][qi], q["birth"][qi], r["family"][ri], r["birth"][ri]
    sim, missing = _best_name([(qf, rf), (qf, rb), (qb, rf), (qb, rb)])
    out = _grade(sim, sim >= 1.0, (0.95, 0.88))
    qp, qpb, rp, rpb = q["p_family"][qi], q["p_birth"][qi], r["p_family"][ri], r["p_birth"][ri]
    phon = ((qp == rp) & (qp != b"")) | ((qp == rpb) & (qp != b"")) | ((qpb == rp) & (qpb != b""))
    out[(out == 3) & phon] = 3
    out[(out == 3) & ~phon] = 4
    out[missing] = -1
    return out


def given_levels(q: Columns, r: Columns, qi: Ints, ri: Ints) -> Levels:
    qg, rg = q["given"][qi], r["given"][ri]
    sim = jw(qg, rg)
    out = _grade(sim, qg == rg, (2.0, 0.92, 0.80))  # level 1 is set below, never by similarity
    first = (q["given1"][qi] == r["given1"][ri]) & (out > 0)
    out[first] = 1
    phon = (q["p_given"][qi] == r["p_given"][ri]) & (out == 4)
    out[phon] = 3
    out[_missing(qg, rg)] = -1
    return out


def swap_day_month(dob: npt.NDArray[np.int32]) -> npt.NDArray[np.int64]:
    d = dob.astype(np.int64)
    return (d // 10000) * 10000 + (d % 100) * 100 + (d // 100) % 100


def _digits(d: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    return np.stack([(d // 10**k) % 10 for k in range(7, -1, -1)], axis=1)


def one_typo(a: npt.NDArray[np.int64], b: npt.NDArray[np.int64]) -> npt.NDArray[np.bool_]:
    """Same digit strings (the last eight digits) but for one digit, or two adjacent digits
    transposed. Only pairs whose difference could come from such an error are split into digits
    (most pairs differ by far more)."""
    result = np.zeros(len(a), dtype=np.bool_)
    maybe = np.flatnonzero(member(np.abs(a % 10**8 - b % 10**8), _TYPO_DIFFERENCES))
    if len(maybe):
        result[maybe] = digit_typo(_digits(a[maybe]), _digits(b[maybe]))
    return result


def digit_typo(da: npt.NDArray[np.generic], db: npt.NDArray[np.generic]) -> npt.NDArray[np.bool_]:
    """Rows of two digit (or byte) matrices equal but for one place, or two adjacent places swapped."""
    diff = da != db
    count = diff.sum(axis=1)
    swapped = (da[:, :-1] == db[:, 1:]) & (da[:, 1:] == db[:, :-1]) & diff[:, :-1]
    result: npt.NDArray[np.bool_] = (count == 1) | ((count == 2) & swapped.any(axis=1))
    return result


# |a - b| when a and b differ in one digit (d * 10**k) or by two adjacent digits swapped
# (9 * d * 10**k): a necessary condition for one_typo, checked first because it is cheap.
_TYPO_DIFFERENCES = np.unique([m * d * 10**k for m in (1, 9) for d in range(1, 10) for k in range(8)])


def member(values: npt.NDArray[np.generic], sorted_set: npt.NDArray[np.generic]) -> npt.NDArray[np.bool_]:
    """values[k] in sorted_set, for each k (a binary search: cheaper than np.isin's sort)."""
    at = np.minimum(np.searchsorted(sorted_set, values), len(sorted_set) - 1)
    found: npt.NDArray[np.bool_] = sorted_set[at] == values
    return found


def date_levels(q: Columns, r: Columns, qi: Ints, ri: Ints) -> Levels:
    a = q["dob"][qi].astype(np.int64)
    b = r["dob"][ri].astype(np.int64)
    ya, ma, da = a // 10000, (a // 100) % 100, a % 100
    yb, mb, db = b // 10000, (b // 100) % 100, b % 100
    out = np.full(len(a), 4, dtype=np.int8)
    two = ((ya == yb).astype(int) + (ma == mb) + (da == db)) >= 2
    out[two] = 3
    out[one_typo(a, b)] = 2
    out[(swap_day_month(a.astype(np.int32)) == b) & (ma != da)] = 1
    unknown_part = ((ma == 0) | (da == 0) | (mb == 0) | (db == 0)) & (ya == yb)
    out[unknown_part & ((ma == mb) | (ma == 0) | (mb == 0))] = 3  # partial dates agree at most partially
    out[a == b] = 0
    out[(a == 0) | (b == 0)] = -1
    return out


def _equal_levels(a: npt.NDArray[np.generic], b: npt.NDArray[np.generic], empty: object) -> Levels:
    out = np.where(a == b, 0, 1).astype(np.int8)
    out[(a == empty) | (b == empty)] = -1
    return out


def street_levels(q: Columns, r: Columns, qi: Ints, ri: Ints) -> Levels:
    qs, q2, rs, r2 = q["street"][qi], q["street2"][qi], r["street"][ri], r["street2"][ri]
    sim, missing = _best_name([(qs, rs), (qs, r2), (q2, rs), (q2, r2)])  # lines may be swapped
    out = _grade(sim, sim >= 1.0, (0.92, 0.80))
    out[missing] = -1
    return out


def city_levels(q: Columns, r: Columns, qi: Ints, ri: Ints) -> Levels:
    a, b = q["city"][qi], r["city"][ri]
    out = _grade(jw(a, b), a == b, (0.90,))
    out[_missing(a, b)] = -1
    return out


def postcode_levels(q: Columns, r: Columns, qi: Ints, ri: Ints) -> Levels:
    a, b = q["postcode"][qi], r["postcode"][ri]
    out = np.full(len(a), 2, dtype=np.int8)
    differ = np.flatnonzero(a != b)
    ba, bb = _byte_matrix(a[differ]), _byte_matrix(b[differ])
    width = max(ba.shape[1], bb.shape[1])
    ba, bb = _pad(ba, width), _pad(bb, width)
    length = (ba != 0).sum(axis=1)
    numeric = _digits_only(ba) & _digits_only(bb) & (length == (bb != 0).sum(axis=1)) & (length <= 8)
    out[differ[numeric & digit_typo(ba, bb)]] = 1  # equal lengths: the NUL padding lines up
    out[a == b] = 0
    out[_missing(a, b)] = -1
    return out


def _byte_matrix(values: npt.NDArray[np.generic]) -> npt.NDArray[np.uint8]:
    """Fixed-width byte strings as a (rows x width) matrix of bytes (NUL-padded)."""
    width = values.dtype.itemsize
    return np.frombuffer(np.ascontiguousarray(values).tobytes(), dtype=np.uint8).reshape(len(values), width)


def _pad(m: npt.NDArray[np.uint8], width: int) -> npt.NDArray[np.uint8]:
    return m if m.shape[1] == width else np.pad(m, ((0, 0), (0, width - m.shape[1])))


def _digits_only(m: npt.NDArray[np.uint8]) -> npt.NDArray[np.bool_]:
    """Non-empty and nothing but ASCII digits before the padding (bytes.isdigit)."""
    digit = (m >= ord("0")) & (m <= ord("9"))
    result: npt.NDArray[np.bool_] = (digit | (m == 0)).all(axis=1) & digit[:, 0]
    return result


def levels(q: Columns, r: Columns, qi: Ints, ri: Ints) -> Levels:
    """The comparison matrix (pairs x FIELDS) of query rows qi against register rows ri."""
    cols = [
        family_levels(q, r, qi, ri),
        given_levels(q, r, qi, ri),
        date_levels(q, r, qi, ri),
        _equal_levels(q["sex"][qi], r["sex"][ri], 0),
        _equal_levels(q["matricule"][qi], r["matricule"][ri], b""),
        _equal_levels(q["house"][qi], r["house"][ri], b""),
        street_levels(q, r, qi, ri),
        city_levels(q, r, qi, ri),
        postcode_levels(q, r, qi, ri),
    ]
    out = np.stack(cols, axis=1) if len(qi) else np.zeros((0, len(FIELDS)), dtype=np.int8)
    _name_swap(q, r, qi, ri, out)
    return out


def _name_swap(q: Columns, r: Columns, qi: Ints, ri: Ints, out: Levels) -> None:
    """Family and given names entered the wrong way round agree at the 'near' level."""
    weak = (out[:, 0] >= 3) & (out[:, 1] >= 3)
    if not weak.any():
        return
    k = np.flatnonzero(weak)
    a = jw(q["family"][qi[k]], r["given"][ri[k]])
    b = jw(q["given"][qi[k]], r["family"][ri[k]])
    swapped = k[(a >= 0.92) & (b >= 0.92)]
    out[swapped, 0] = 1
    out[swapped, 1] = 2


def cheap_levels(q: Columns, r: Columns, qi: Ints, ri: Ints) -> Levels:
    """A first, cheap comparison matrix for shortlisting: no Jaro-Winkler.

    Names, street and city are graded only where equality decides (exact, same first given name,
    same phonetic code); anything else is -1 ("not known yet", weight 0) rather than
    disagreement, so a candidate with a misspelt name is not pushed down before the full
    comparison. Birth date, sex, identifiers, house number and postcode are graded fully.
    """
    out = np.full((len(qi), len(FIELDS)), -1, dtype=np.int8)
    if not len(qi):
        return out
    fam = out[:, FIELD_INDEX["family"]]
    qp, qpb, rp, rpb = q["p_family"][qi], q["p_birth"][qi], r["p_family"][ri], r["p_birth"][ri]
    fam[((qp == rp) | (qp == rpb)) & (qp != b"") | (qpb == rp) & (qpb != b"")] = 3
    fam[(q["family"][qi] == r["family"][ri]) & (q["family"][qi] != b"")] = 0
    giv = out[:, FIELD_INDEX["given"]]
    giv[(q["p_given"][qi] == r["p_given"][ri]) & (q["p_given"][qi] != b"")] = 3
    giv[(q["given1"][qi] == r["given1"][ri]) & (q["given1"][qi] != b"")] = 1
    giv[(q["given"][qi] == r["given"][ri]) & (q["given"][qi] != b"")] = 0
    out[:, FIELD_INDEX["birth_date"]] = date_levels(q, r, qi, ri)
    out[:, FIELD_INDEX["sex"]] = _equal_levels(q["sex"][qi], r["sex"][ri], 0)
    out[:, FIELD_INDEX["matricule"]] = _equal_levels(q["matricule"][qi], r["matricule"][ri], b"")
    out[:, FIELD_INDEX["house_number"]] = _equal_levels(q["house"][qi], r["house"][ri], b"")
    street = out[:, FIELD_INDEX["street"]]
    qs, rs = q["street"][qi], r["street"][ri]
    street[(qs == rs) & (qs != b"")] = 0
    city = out[:, FIELD_INDEX["city"]]
    city[(q["city"][qi] == r["city"][ri]) & (q["city"][qi] != b"")] = 0
    out[:, FIELD_INDEX["postcode"]] = postcode_levels(q, r, qi, ri)
    return out
