"""The in-memory register: certified identities in columns, their blocking index, name frequencies.

Built once from storage (or a CSV load), then kept current by `upsert`/`remove` (daily delta,
ADT). Rows are never moved: an update deactivates the old row and appends a new one, and
`rebuild()` compacts when the overflow grows. Thread safety: writers hold `lock`; readers work on
whatever arrays they picked up (numpy slices are immutable snapshots for them).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence

import numpy as np
import numpy.typing as npt

from engine.mpi.blocking import BlockIndex
from engine.mpi.columns import Columns
from engine.mpi.normalize import Norm

REBUILD_AFTER = 50_000  # rows appended since the build before the sorted index is rebuilt


class RegisterIndex:
    def __init__(self, ids: Sequence[int], norms: Sequence[Norm]) -> None:
        self.lock = threading.Lock()
        self._build(np.array(ids, dtype=np.int64), Columns.from_norms(norms))

    @classmethod
    def from_chunks(cls, chunks: Iterable[tuple[Sequence[int], Sequence[Norm]]]) -> RegisterIndex:
        """Built chunk by chunk (e.g. from a database cursor): never all Norm objects at once."""
        return cls.from_columns(
            (np.array(chunk_ids, dtype=np.int64), Columns.from_norms(norms)) for chunk_ids, norms in chunks
        )

    @classmethod
    def from_columns(cls, parts: Iterable[tuple[npt.NDArray[np.int64], Columns]]) -> RegisterIndex:
        """Built from (identity ids, their columns) parts, e.g. kept by a register load."""
        ids: list[npt.NDArray[np.int64]] = []
        cols: list[Columns] = []
        for part_ids, part_cols in parts:
            ids.append(part_ids)
            cols.append(part_cols)
        index = cls.__new__(cls)
        index.lock = threading.Lock()
        if not cols:
            index._build(np.zeros(0, dtype=np.int64), Columns.from_norms([]))
            return index
        merged = Columns({})
        for name in list(cols[0].arrays):  # column by column, chunk copies released as we go
            merged.arrays[name] = np.concatenate([p.arrays.pop(name) for p in cols])
        del cols
        index._build(np.concatenate(ids), merged)
        return index

    def _build(self, ids: npt.NDArray[np.int64], cols: Columns) -> None:
        self.ids = ids
        self.cols = cols
        self.active = np.ones(len(ids), dtype=np.bool_)
        self.row_of: dict[int, int] = {int(i): r for r, i in enumerate(ids.tolist())}
        self.blocks = BlockIndex(cols)
        self.built_rows = len(ids)
        self._frequencies()

    def _frequencies(self) -> None:
        """Register frequency of each row's family name (for the frequency-adjusted weight)."""
        fam = self.cols["family"]
        if len(fam) == 0:
            self.family_freq = np.zeros(0, dtype=np.float32)
            return
        _, inverse, counts = np.unique(fam, return_inverse=True, return_counts=True)
        self.family_freq = (counts[inverse] / max(1, int(self.active.sum()))).astype(np.float32)

    def __len__(self) -> int:
        return int(self.active.sum())

    def upsert(self, identity_id: int, norm: Norm) -> None:
        with self.lock:
            old = self.row_of.get(identity_id)
            if old is not None:
                self.active[old] = False
            row = len(self.ids)
            self.cols = self.cols.extend(Columns.from_norms([norm]))
            self.ids = np.append(self.ids, np.int64(identity_id))
            self.active = np.append(self.active, True)
            self.family_freq = np.append(self.family_freq, np.float32(1 / max(1, len(self.ids))))
            self.row_of[identity_id] = row
            self.blocks.add(self.cols, row)
            if row - self.built_rows > REBUILD_AFTER:
                self.rebuild()

    def remove(self, identity_id: int) -> None:
        with self.lock:
            row = self.row_of.pop(identity_id, None)
            if row is not None:
                self.active[row] = False

    def rebuild(self) -> None:
        keep = np.flatnonzero(self.active)
        self._build(self.ids[keep], self.cols.take(keep))

    def candidates(self, keys: npt.NDArray[np.int64]) -> npt.NDArray[np.intp]:
        rows = self.blocks.lookup(keys)
        return rows[self.active[rows]] if len(rows) else rows

    def candidates_many(
        self, keys: npt.NDArray[np.int64], of: npt.NDArray[np.intp]
    ) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
        """(query, active row) pairs sorted by query then row; `of[k]` is the query of keys[k]."""
        qi, ri = self.blocks.lookup_many(keys, of)
        keep = self.active[ri]
        return qi[keep], ri[keep]

    def nbytes(self) -> int:
        return self.cols.nbytes() + self.blocks.nbytes() + self.ids.nbytes + self.family_freq.nbytes
