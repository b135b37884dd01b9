"""Blocking: which register rows are worth scoring against an incoming identity.

Each scheme maps every record of a `Columns` to zero or more int64 keys, vectorised (numpy):
strings are hashed with a deterministic 64-bit BLAKE2b, and a key mixes the scheme's tag with
its parts (multiply-xor). The index keeps the keys of every register row sorted, so a lookup
is a binary search and a slice: 8 bytes per key (38 bits of key, 26 bits of row, packed), no
Python object per row (2.5 million identities fit in a few hundred MB). Rows added after the
build (ADT, daily delta) go to a small overflow dict until the next rebuild. Keys are the same
in every process (no salted `hash()`).

Schemes (a true match has to share at least one key to be found):
  dob          exact birth date (the query also looks up its day/month swap)
  name_year    phonetic family or birth name + birth year
  name_mmdd    phonetic family or birth name + birth month and day (catches year typos)
  names        phonetic given name + phonetic family or birth name
  post_family  postcode + phonetic family name; post_given: postcode + phonetic given name
  street_house street name + house number (either address line); family_house: family name +
               house number; street_post: street name (either line) + postcode
  given_prefix first given name + first three letters of the family name
  matricule    the national identifier
The query also looks its names up the wrong way round (given as family name and vice versa).
A block larger than `MAX_BLOCK` rows (a very common name pair, a long street) is skipped: such a
key carries little evidence and would dominate the cost of a query; other schemes usually find
the pair (and the cheap shortlist in the matcher bounds what is compared in full).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from engine.mpi.columns import Columns
from engine.mpi.normalize import Norm

MAX_BLOCK = 400
Arr = npt.NDArray[np.generic]
U64 = npt.NDArray[np.uint64]
Keyed = list[tuple[U64, npt.NDArray[np.bool_]]]  # (keys, valid) per emitted key of a scheme
_PRIME = np.uint64(1099511628211)  # FNV prime: multiplies the running key (wraps modulo 2**64)
_MIX = 0x9E3779B97F4A7C15


def _digest(value: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(value, digest_size=8).digest(), "little")


def str_hash(values: Arr) -> U64:
    """A deterministic 64-bit hash (BLAKE2b) of each byte string, each distinct value hashed once
    (any array width gives the same hash: numpy strips the NUL padding)."""
    seen: dict[bytes, int] = {}
    hashes = (seen[v] if v in seen else seen.setdefault(v, _digest(v)) for v in values.tolist())
    return np.fromiter(hashes, dtype=np.uint64, count=len(values))


def _mix(tag: int, *parts: npt.NDArray[np.generic]) -> U64:
    h = np.full(len(parts[0]), np.uint64((tag * _MIX) & 0xFFFFFFFFFFFFFFFF), dtype=np.uint64)
    for part in parts:
        h = (h ^ part.astype(np.uint64)) * _PRIME
        h ^= h >> np.uint64(31)
    return h


class _Hashes:
    """Lazily hashed string columns of one Columns (each column hashed once)."""

    def __init__(self, arrays: dict[str, Arr]) -> None:
        self.arrays = arrays
        self.cache: dict[str, U64] = {}
        self.flags: dict[str, npt.NDArray[np.bool_]] = {}

    def __getitem__(self, name: str) -> U64:
        if name not in self.cache:
            self.cache[name] = str_hash(self.arrays[name])
        return self.cache[name]

    def present(self, name: str) -> npt.NDArray[np.bool_]:
        key = "present:" + name
        if key not in self.flags:
            self.flags[key] = self.arrays[name] != b""
        return self.flags[key]

    def dob(self) -> npt.NDArray[np.int64]:
        return self.arrays["dob"].astype(np.int64)


NAMES = ("p_family", "p_birth")


def k_dob(h: _Hashes) -> Keyed:
    dob = h.dob()
    return [(_mix(1, dob), (dob % 100 != 0) & ((dob // 100) % 100 != 0))]


def k_name_year(h: _Hashes) -> Keyed:
    dob = h.dob()
    return [(_mix(2, h[p], dob // 10000), h.present(p) & (dob != 0)) for p in NAMES]


def k_name_mmdd(h: _Hashes) -> Keyed:
    dob = h.dob()
    return [(_mix(3, h[p], dob % 10000), h.present(p) & (dob % 10000 != 0)) for p in NAMES]


def k_names(h: _Hashes) -> Keyed:
    return [(_mix(4, h["p_given"], h[p]), h.present("p_given") & h.present(p)) for p in NAMES]


def k_post_family(h: _Hashes) -> Keyed:
    return [(_mix(5, h["postcode"], h[p]), h.present("postcode") & h.present(p)) for p in NAMES]


def k_post_given(h: _Hashes) -> Keyed:
    return [(_mix(6, h["postcode"], h["p_given"]), h.present("postcode") & h.present("p_given"))]


def k_street_house(h: _Hashes) -> Keyed:
    # either address line: the two lines are often entered the other way round
    return [(_mix(7, h[s], h["house"]), h.present(s) & h.present("house")) for s in ("street", "street2")]


def k_street_post(h: _Hashes) -> Keyed:
    # a household's street without the house number (a wrong or missing number)
    return [
        (_mix(8, h[s], h["postcode"]), h.present(s) & h.present("postcode")) for s in ("street", "street2")
    ]


def k_given_prefix(h: _Hashes) -> Keyed:
    prefix = h.arrays["family"].astype("S3")
    third = np.frombuffer(prefix.tobytes(), dtype=np.uint8).reshape(len(prefix), 3)[:, 2]
    return [(_mix(9, h["given1"], str_hash(prefix)), h.present("given1") & (third != 0))]


def k_family_house(h: _Hashes) -> Keyed:
    return [(_mix(10, h["family"], h["house"]), h.present("family") & h.present("house"))]


def k_matricule(h: _Hashes) -> Keyed:
    return [(_mix(11, h["matricule"]), h.present("matricule"))]


SCHEMES: dict[str, Callable[[_Hashes], Keyed]] = {
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
KeyRows = tuple[npt.NDArray[np.int64], npt.NDArray[np.intp]]


# -- one query in pure Python: the same keys as query_keys, without ~40 small numpy calls ---------

_MASK = (1 << 64) - 1
_P = int(_PRIME)


@functools.lru_cache(maxsize=1 << 16)
def _digest_cached(value: bytes) -> int:
    return _digest(value)


def _mix_one(tag: int, *parts: int) -> int:
    """`_mix` of one record: the same multiply-xor on Python ints, wrapped to 64 bits."""
    h = (tag * _MIX) & _MASK
    for part in parts:
        h = ((h ^ (part & _MASK)) * _P) & _MASK
        h ^= h >> 31
    return h


def _hashed(v: dict[str, bytes]) -> dict[str, int]:
    return {name: _digest_cached(value) for name, value in v.items() if value}


def _name_keys(h: dict[str, int], dob: int) -> list[int]:
    """Schemes name_year, name_mmdd, names and post_family of one record (hashed values `h`)."""
    keys = []
    for p in NAMES:
        if p not in h:
            continue
        if dob:
            keys.append(_mix_one(2, h[p], dob // 10000))
        if dob % 10000:
            keys.append(_mix_one(3, h[p], dob % 10000))
        if "p_given" in h:
            keys.append(_mix_one(4, h["p_given"], h[p]))
        if "postcode" in h:
            keys.append(_mix_one(5, h["postcode"], h[p]))
    return keys


def _dob_keys(dob: int) -> list[int]:
    return [_mix_one(1, dob)] if dob % 100 and (dob // 100) % 100 else []


def _other_keys(v: dict[str, bytes], h: dict[str, int]) -> list[int]:
    """Schemes post_given, street_house, street_post, given_prefix, family_house, matricule."""
    keys = [_mix_one(6, h["postcode"], h["p_given"])] if "postcode" in h and "p_given" in h else []
    for s in ("street", "street2"):
        if s in h and "house" in h:
            keys.append(_mix_one(7, h[s], h["house"]))
        if s in h and "postcode" in h:
            keys.append(_mix_one(8, h[s], h["postcode"]))
    if "given1" in h and len(v["family"]) >= 3:
        keys.append(_mix_one(9, h["given1"], _digest_cached(v["family"][:3])))
    if "family" in h and "house" in h:
        keys.append(_mix_one(10, h["family"], h["house"]))
    if "matricule" in h:
        keys.append(_mix_one(11, h["matricule"]))
    return keys


_KEYED = (
    "family",
    "given1",
    "matricule",
    "house",
    "street",
    "street2",
    "postcode",
    "p_family",
    "p_birth",
    "p_given",
)


def as_bytes(value: str) -> bytes:
    """A normalized string as the columns hold it (`columns.column`)."""
    return value.encode("ascii", "replace")


def one_query_keys(norm: Norm) -> list[int]:
    """The keys `query_keys` gives for this one record, as unsigned 64-bit ints (maybe repeated):
    its own, its names the wrong way round, its birth date with day and month swapped.
    Contract: the same set as `query_keys` (tests/unit/test_mpi_single_path.py); a change to a
    scheme above must be made here too."""
    v = {name: as_bytes(getattr(norm, name)) for name in _KEYED}
    h, dob = _hashed(v), norm.dob
    keys = _dob_keys(dob) + _name_keys(h, dob) + _other_keys(v, h)
    if "p_given" in h and "p_family" in h:
        swapped = {**v, "p_family": v["p_given"], "p_given": v["p_family"], "p_birth": b""}
        keys += _name_keys(_hashed(swapped), dob)
    swap = (dob // 10000) * 10000 + (dob % 100) * 100 + (dob // 100) % 100
    if dob and swap != dob and dob % 100 <= 12:
        keys += _dob_keys(swap)
    return keys


def _collect(keyed: Keyed) -> KeyRows:
    keys: list[npt.NDArray[np.int64]] = []
    rows: list[npt.NDArray[np.intp]] = []
    for k, valid in keyed:
        where = np.flatnonzero(valid)
        keys.append(k[where].view(np.int64))
        rows.append(where)
    if not keys:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.intp)
    return np.concatenate(keys), np.concatenate(rows)


def record_keys(cols: Columns) -> KeyRows:
    """(key, row) for every key of every row of `cols`, across schemes."""
    h = _Hashes(cols.arrays)
    return _collect([pair for scheme in SCHEMES.values() for pair in scheme(h)])


def query_keys(q: Columns) -> KeyRows:
    """(key, query row) of every key to look up, including the day/month swap of the birth date
    and the family and given names the wrong way round."""
    h = _Hashes(q.arrays)
    keyed = [pair for scheme in SCHEMES.values() for pair in scheme(h)]
    swapped_names = _Hashes(
        {**q.arrays, "p_family": q["p_given"], "p_given": q["p_family"], "p_birth": np.zeros(len(q), "S1")}
    )
    both = h.present("p_given") & h.present("p_family")
    for scheme in (k_name_year, k_name_mmdd, k_names, k_post_family):
        keyed += [(k, valid & both) for k, valid in scheme(swapped_names)]
    dob = h.dob()
    swapped = (dob // 10000) * 10000 + (dob % 100) * 100 + (dob // 100) % 100
    swap_ok = (dob != 0) & (swapped != dob) & (dob % 100 <= 12)
    keyed += [(k, valid & swap_ok) for k, valid in k_dob(_Hashes({**q.arrays, "dob": swapped}))]
    return _collect(keyed)


BUILD_CHUNK = 250_000
ROW_BITS = 26  # a packed entry is (top 38 bits of the key) << 26 | row: up to 67 million rows
MAX_ROWS = 1 << ROW_BITS
_ROW_MASK = np.uint64(MAX_ROWS - 1)
_SHIFT = np.uint64(ROW_BITS)


def _short(keys: npt.NDArray[np.int64]) -> U64:
    """The top 38 bits of each key. Two different keys that share them merely add a few
    candidates to a lookup (about one lookup in ten thousand at 2.5 million identities)."""
    result: U64 = keys.view(np.uint64) >> _SHIFT
    return result


def _distinct(values: U64) -> U64:
    """np.unique by a sort (numpy 2's np.unique hashes: ~20 times slower on these arrays)."""
    values = np.sort(values)
    keep = np.ones(len(values), dtype=np.bool_)
    keep[1:] = values[1:] != values[:-1]
    result: U64 = values[keep]
    return result


class BlockIndex:
    """One sorted array of packed (key, row) entries over all schemes, plus an overflow for rows
    added since. Packing halves the build's peak memory (an in-place sort of one array instead
    of an argsort and two gathers) and needs 8 bytes per key instead of 12."""

    def __init__(self, cols: Columns) -> None:
        if len(cols) > MAX_ROWS:
            raise ValueError(f"the blocking index holds at most {MAX_ROWS} rows, not {len(cols)}")
        parts: list[U64] = []
        for start in range(0, len(cols), BUILD_CHUNK):  # chunked: bounded hashing temporaries
            keys, rows = record_keys(cols.take(np.arange(start, min(len(cols), start + BUILD_CHUNK))))
            parts.append((_short(keys) << _SHIFT) | (rows + start).astype(np.uint64))
        self.packed: U64 = np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint64)
        del parts
        self.packed.sort()
        self.overflow: dict[int, list[int]] = {}
        self.size = len(cols)

    def add(self, cols: Columns, start: int) -> None:
        """Index rows `start..` of `cols` (appended since the build)."""
        keys, rows = record_keys(cols.take(np.arange(start, len(cols))))
        for k, row in zip(_short(keys).tolist(), rows.tolist(), strict=True):
            self.overflow.setdefault(k, []).append(start + row)
        self.size = len(cols)

    def lookup(self, keys: npt.NDArray[np.int64]) -> npt.NDArray[np.intp]:
        """Distinct rows sharing at least one key (blocks over MAX_BLOCK rows skipped)."""
        return self.lookup_many(keys, np.zeros(len(keys), dtype=np.intp))[1]

    def lookup_many(
        self, keys: npt.NDArray[np.int64], of: npt.NDArray[np.intp]
    ) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
        """(query, row) pairs, distinct and sorted by query then row, of every row sharing a key
        with a query; `of[k]` is the query of keys[k]. `lookup` per query, in a few array calls:
        each key's block is a slice [lo, hi) of the packed array, expanded with one repeat."""
        order = np.argsort(keys, kind="stable")  # sorted probes: the binary searches share cache lines
        short, of = _short(keys[order]), of[order]
        lo = np.searchsorted(self.packed, short << _SHIFT, side="left")
        hi = np.searchsorted(self.packed, (short << _SHIFT) | _ROW_MASK, side="right")
        size = hi - lo
        kept = (size > 0) & (size <= MAX_BLOCK)
        lo, size, owner = lo[kept], size[kept], of[kept].astype(np.uint64)
        first = np.cumsum(size) - size  # where each block starts in the expanded arrays
        at = np.arange(int(size.sum())) - np.repeat(first - lo, size)
        pairs = (np.repeat(owner, size) << _SHIFT) | (self.packed[at] & _ROW_MASK)
        if self.overflow:
            extra = [
                (q << ROW_BITS) | r
                for k, q in zip(short.tolist(), of.tolist(), strict=True)
                for r in self.overflow.get(k, ())
            ]
            pairs = np.concatenate([pairs, np.array(extra, dtype=np.uint64)])
        pairs = _distinct(pairs)
        return (pairs >> _SHIFT).astype(np.intp), (pairs & _ROW_MASK).astype(np.intp)

    def nbytes(self) -> int:
        return int(self.packed.nbytes)
