"""Columnar, compact in-memory form of many normalized records (numpy arrays).

Strings are fixed-width byte arrays (ASCII after folding), so 2.5 million identities take a few
hundred MB instead of gigabytes of Python objects; comparisons read candidate rows by index.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np
import numpy.typing as npt

from engine.mpi.normalize import Norm

STRINGS = (
    "family",
    "birth",
    "given",
    "given1",
    "matricule",
    "house",
    "street",
    "street2",
    "city",
    "postcode",
    "p_family",
    "p_birth",
    "p_given",
)
INTS = {"dob": np.int32, "sex": np.int8, "twin": np.int8}


@dataclass
class Columns:
    """One array per normalized field, all the same length."""

    arrays: dict[str, npt.NDArray[np.generic]]

    def __len__(self) -> int:
        return len(self.arrays["dob"])

    def __getitem__(self, name: str) -> npt.NDArray[np.generic]:
        return self.arrays[name]

    @classmethod
    def from_norms(cls, norms: Sequence[Norm]) -> Columns:
        names = [f.name for f in fields(Norm)]
        rows = [tuple(getattr(n, name) for name in names) for n in norms] if norms else []
        values = list(zip(*rows, strict=True)) if rows else [()] * len(names)
        return cls({name: column(name, list(v)) for name, v in zip(names, values, strict=True)})

    def take(self, rows: npt.NDArray[np.intp]) -> Columns:
        return Columns({k: v[rows] for k, v in self.arrays.items()})

    def extend(self, other: Columns) -> Columns:
        return Columns({k: np.concatenate([v, other.arrays[k]]) for k, v in self.arrays.items()})

    def row(self, i: int) -> dict[str, str | int]:
        return {k: (v[i].decode() if isinstance(v[i], bytes) else int(v[i])) for k, v in self.arrays.items()}

    def nbytes(self) -> int:
        return sum(v.nbytes for v in self.arrays.values())


def column(name: str, values: list[object]) -> npt.NDArray[np.generic]:
    if name in INTS:
        return np.array(values, dtype=INTS[name])
    if not values:
        return np.array([], dtype="S1")
    return np.array([str(v).encode("ascii", "replace") for v in values], dtype="S")
