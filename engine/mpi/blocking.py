"""Blocking: which register rows are worth scoring against an incoming identity.

Each scheme maps a record to zero or more int64 keys. The index keeps, per scheme, the keys of
every register row sorted (numpy), so a lookup is a binary search and a slice: 16 bytes per key,
no Python object per row (2.5 million identities fit in a few hundred MB). Rows added after the
build (ADT, daily delta) go to a small overflow dict until the next rebuild.

Schemes (a true match has to share at least one key to be found):
  dob          exact birth date (the query also looks up its day/month swap)
  name_year    phonetic family or birth name + birth year
  name_mmdd    phonetic family or birth name + birth month and day (catches year typos)
  names        phonetic given name + phonetic family or birth name
  post_family  postcode + phonetic family name; post_given: postcode + phonetic given name
  street_house street name + house number (either address line); family_house: family name +
               house number; street_post: street name (either line) + postcode
  given_prefix first given name + first three letters of the family name
The query also looks its names up the wrong way round (given as family name and vice versa).
  matricule    the national identifier
A block larger than `MAX_BLOCK` rows (a very common name pair) is skipped: such a key carries
little evidence, would dominate the cost of a query, and other schemes usually find the pair.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import numpy.typing as npt

from engine.mpi.columns import Columns

MAX_BLOCK = 400
Keys = Iterator[int]


def _h(*parts: object) -> int:
    return hash(parts) or 1  # 0 means "no key"


def _names(c: dict[str, object]) -> list[object]:
    return [p for p in (c["p_family"], c["p_birth"]) if p]


def k_dob(c: dict[str, object]) -> Keys:
    dob = int(c["dob"])  # type: ignore[call-overload]
    if dob and dob % 100 and (dob // 100) % 100:
        yield dob


def k_name_year(c: dict[str, object]) -> Keys:
    dob = int(c["dob"])  # type: ignore[call-overload]
    if dob:
        for p in _names(c):
            yield _h("ny", p, dob // 10000)


def k_name_mmdd(c: dict[str, object]) -> Keys:
    dob = int(c["dob"])  # type: ignore[call-overload]
    if dob % 10000:
        for p in _names(c):
            yield _h("nm", p, dob % 10000)


def k_names(c: dict[str, object]) -> Keys:
    if c["p_given"]:
        for p in _names(c):
            yield _h("nn", c["p_given"], p)


def k_post_family(c: dict[str, object]) -> Keys:
    if c["postcode"]:
        for p in _names(c):
            yield _h("pf", c["postcode"], p)


def k_post_given(c: dict[str, object]) -> Keys:
    if c["postcode"] and c["p_given"]:
        yield _h("pg", c["postcode"], c["p_given"])


def _streets(c: dict[str, object]) -> list[object]:
    return [s for s in (c["street"], c["street2"]) if s]


def k_street_house(c: dict[str, object]) -> Keys:
    if c["house"]:  # either address line: the two lines are often entered the other way round
        for street in _streets(c):
            yield _h("sh", street, c["house"])


def k_street_post(c: dict[str, object]) -> Keys:
    if c["postcode"]:  # a household's street without the house number (wrong or missing number)
        for street in _streets(c):
            yield _h("sp", street, c["postcode"])


def k_given_prefix(c: dict[str, object]) -> Keys:
    family = str(c["family"])
    if c["given1"] and len(family) >= 3:
        yield _h("gp", c["given1"], family[:3])


def k_family_house(c: dict[str, object]) -> Keys:
    if c["family"] and c["house"]:
        yield _h("fh", c["family"], c["house"])


def k_matricule(c: dict[str, object]) -> Keys:
    if c["matricule"]:
        yield _h("m", c["matricule"])


SCHEMES: dict[str, Callable[[dict[str, object]], Keys]] = {
    "dob": k_dob,
    "name_year": k_name_year,
    "name_mmdd": k_name_mmdd,
    "names": k_names,
    "post_family": k_post_family,
    "post_given": k_post_given,
    "street_house": k_street_house,
    "street_post": k_street_post,
    "given_prefix": k_given_prefix,
    "family_house": k_family_house,
    "matricule": k_matricule,
}
KEY_FIELDS = (
    "dob",
    "p_family",
    "p_birth",
    "p_given",
    "postcode",
    "matricule",
    "street",
    "street2",
    "house",
    "family",
    "given1",
)


def record_dicts(cols: Columns, start: int = 0) -> Iterator[dict[str, object]]:
    """The key fields of each row as a dict of Python values (bytes decoded)."""
    arrays = [cols[f].tolist() for f in KEY_FIELDS]
    for values in zip(*arrays, strict=True):
        yield {
            f: (v.decode() if isinstance(v, bytes) else v) for f, v in zip(KEY_FIELDS, values, strict=True)
        }


def query_keys(c: dict[str, object]) -> list[int]:
    """Every key to look up for one query, across schemes, including the day/month swap."""
    keys = [k for scheme in SCHEMES.values() for k in scheme(c)]
    if c["p_given"] and c["p_family"]:  # family and given names entered the wrong way round
        swapped_names = {**c, "p_family": c["p_given"], "p_given": c["p_family"], "p_birth": ""}
        keys.extend(
            k for scheme in (k_name_year, k_name_mmdd, k_names, k_post_family) for k in scheme(swapped_names)
        )
    dob = int(c["dob"])  # type: ignore[call-overload]
    swapped = (dob // 10000) * 10000 + (dob % 100) * 100 + (dob // 100) % 100
    if dob and swapped != dob and (dob % 100) <= 12:
        keys.extend(k_dob({**c, "dob": swapped}))
    return keys


BUILD_CHUNK = 100_000


def _chunk_keys(cols: Columns, start: int) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int32]]:
    keys: list[int] = []
    rows: list[int] = []
    for row, c in enumerate(record_dicts(cols), start=start):
        for scheme in SCHEMES.values():
            for k in scheme(c):
                keys.append(k)
                rows.append(row)
    return np.array(keys, dtype=np.int64), np.array(rows, dtype=np.int32)


class BlockIndex:
    """Sorted (key, row) arrays over all schemes, plus an overflow for rows added since."""

    def __init__(self, cols: Columns) -> None:
        key_parts: list[npt.NDArray[np.int64]] = []
        row_parts: list[npt.NDArray[np.int32]] = []
        for start in range(0, len(cols), BUILD_CHUNK):  # chunked: no Python int per key for long
            keys, rows = _chunk_keys(cols.take(np.arange(start, min(len(cols), start + BUILD_CHUNK))), start)
            key_parts.append(keys)
            row_parts.append(rows)
        key_array = np.concatenate(key_parts) if key_parts else np.zeros(0, dtype=np.int64)
        order = np.argsort(key_array, kind="stable")
        self.keys = key_array[order]
        self.rows = (np.concatenate(row_parts) if row_parts else np.zeros(0, dtype=np.int32))[order]
        self.overflow: dict[int, list[int]] = {}
        self.size = len(cols)

    def add(self, cols: Columns, start: int) -> None:
        """Index rows `start..` of `cols` (appended since the build)."""
        for offset, c in enumerate(record_dicts(cols.take(np.arange(start, len(cols))))):
            for scheme in SCHEMES.values():
                for k in scheme(c):
                    self.overflow.setdefault(k, []).append(start + offset)
        self.size = len(cols)

    def lookup(self, keys: list[int]) -> npt.NDArray[np.intp]:
        """Distinct rows sharing at least one key (blocks over MAX_BLOCK rows skipped)."""
        parts: list[npt.NDArray[np.int32]] = []
        karr = np.array(keys, dtype=np.int64)
        lo = np.searchsorted(self.keys, karr, side="left")
        hi = np.searchsorted(self.keys, karr, side="right")
        for a, b, k in zip(lo.tolist(), hi.tolist(), keys, strict=True):
            if a < b <= a + MAX_BLOCK:
                parts.append(self.rows[a:b])
            extra = self.overflow.get(k)
            if extra:
                parts.append(np.array(extra, dtype=np.int32))
        if not parts:
            return np.zeros(0, dtype=np.intp)
        return np.unique(np.concatenate(parts)).astype(np.intp)

    def nbytes(self) -> int:
        return int(self.keys.nbytes + self.rows.nbytes)
