"""Fellegi-Sunter scoring: per field and level, m = P(level | same person), u = P(level | not).

A pair's score is the sum over fields of log2(m/u) at its level (0 for a missing field): the
log2 Bayes factor that the two records are one person. A family name agreeing exactly is
frequency-adjusted: agreeing on a rare name says more than agreeing on a common one, so the
exact-level u is replaced by the name's frequency in the register (bounded).

`estimate()` learns the weights from data without labels: u from random register pairs
(almost all different people), m and the match proportion by EM over the blocked pairs of an
incoming batch against the register (conditional independence of fields, as Fellegi and
Sunter). Weights are stored (`mpi_weights`, JSON) and shown by `passerelle mpi weights show`.
"""

from __future__ import annotations

import datetime
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from engine.mpi.compare import FIELD_NAMES, FIELDS, Levels

# Prior m and u per level (same order as compare.FIELDS), used until weights are estimated.
DEFAULT_M: dict[str, list[float]] = {
    "family": [0.88, 0.05, 0.03, 0.01, 0.03],
    "given": [0.86, 0.04, 0.04, 0.02, 0.04],
    "birth_date": [0.93, 0.01, 0.03, 0.01, 0.02],
    "sex": [0.985, 0.015],
    "matricule": [0.99, 0.01],
    "house_number": [0.9, 0.1],
    "street": [0.85, 0.08, 0.02, 0.05],
    "city": [0.9, 0.05, 0.05],
    "postcode": [0.9, 0.04, 0.06],
}
DEFAULT_U: dict[str, list[float]] = {
    "family": [0.002, 0.001, 0.004, 0.01, 0.983],
    "given": [0.005, 0.002, 0.003, 0.02, 0.97],
    "birth_date": [0.00005, 0.00003, 0.0005, 0.005, 0.99441],
    "sex": [0.5, 0.5],
    "matricule": [0.0000005, 0.9999995],
    "house_number": [0.03, 0.97],
    "street": [0.002, 0.002, 0.01, 0.986],
    "city": [0.02, 0.01, 0.97],
    "postcode": [0.005, 0.02, 0.975],
}
PROB_FLOOR = 1e-7
TF_BOUNDS = (-4.0, 6.0)  # how far a name's frequency may move the exact-level weight, in bits


@dataclass
class Weights:
    m: dict[str, list[float]] = field(default_factory=lambda: {k: list(v) for k, v in DEFAULT_M.items()})
    u: dict[str, list[float]] = field(default_factory=lambda: {k: list(v) for k, v in DEFAULT_U.items()})
    proportion: float = 1e-4
    source: str = "defaults"
    estimated_at: str = ""
    pairs: int = 0

    def table(self) -> npt.NDArray[np.float64]:
        """log2(m/u), fields x (max levels + 1); the last column (level -1) is 0."""
        width = max(len(v) for v in FIELDS.values()) + 1
        out = np.zeros((len(FIELDS), width))
        for i, name in enumerate(FIELD_NAMES):
            for level, (m, u) in enumerate(zip(self.m[name], self.u[name], strict=True)):
                out[i, level] = math.log2(max(m, PROB_FLOOR) / max(u, PROB_FLOOR))
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "m": self.m,
            "u": self.u,
            "proportion": self.proportion,
            "source": self.source,
            "estimated_at": self.estimated_at,
            "pairs": self.pairs,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Weights:
        return cls(
            m=data["m"],
            u=data["u"],
            proportion=float(data["proportion"]),
            source=str(data["source"]),
            estimated_at=str(data.get("estimated_at", "")),
            pairs=int(data.get("pairs", 0)),
        )

    def describe(self) -> list[str]:
        """One line per field and level: m, u and the weight in bits."""
        lines = [
            f"source {self.source}, estimated {self.estimated_at or '-'} over {self.pairs} pairs, "
            f"match proportion {self.proportion:.6f}"
        ]
        for name, labels in FIELDS.items():
            for level, label in enumerate(labels):
                m, u = self.m[name][level], self.u[name][level]
                w = math.log2(max(m, PROB_FLOOR) / max(u, PROB_FLOOR))
                lines.append(f"{name:13} {label:28} m={m:.5f} u={u:.7f} weight={w:+.2f}")
        return lines


class Scorer:
    """Scores comparison matrices with one set of weights."""

    def __init__(self, weights: Weights) -> None:
        self.weights = weights
        self.table = weights.table()
        self.exact_family_u = max(weights.u["family"][0], PROB_FLOOR)

    def score(
        self, lv: Levels, family_freq: npt.NDArray[np.float32] | None = None
    ) -> npt.NDArray[np.float64]:
        """Score per pair; `family_freq[k]` is the register frequency of pair k's family name."""
        if len(lv) == 0:
            return np.zeros(0)
        idx = np.where(lv < 0, self.table.shape[1] - 1, lv)
        scores: npt.NDArray[np.float64] = self.table[0].take(idx[:, 0])
        for f in range(1, len(FIELDS)):  # field by field: ~2.5x faster than a 2-D gather and a
            scores += self.table[f].take(idx[:, f])  # row sum, and the same order for any n rows
        if family_freq is not None:
            exact = lv[:, 0] == 0
            adjust = np.log2(self.exact_family_u / np.maximum(family_freq[exact].astype(np.float64), 1e-7))
            scores[exact] += np.clip(adjust, *TF_BOUNDS)
        return scores

    def contributions(self, lv_row: Levels) -> list[float]:
        return [0.0 if level < 0 else float(self.table[i, level]) for i, level in enumerate(lv_row.tolist())]


def level_frequencies(
    lv: Levels, weights_per_pair: npt.NDArray[np.float64] | None = None
) -> dict[str, list[float]]:
    """Per field, the (weighted) share of each level among pairs where the field is present."""
    out: dict[str, list[float]] = {}
    w = np.ones(len(lv)) if weights_per_pair is None else weights_per_pair
    for i, (name, labels) in enumerate(FIELDS.items()):
        col = lv[:, i]
        present = col >= 0
        counts = np.bincount(col[present], weights=w[present], minlength=len(labels))[: len(labels)]
        total = float(counts.sum())
        out[name] = [(float(c) + 0.5) / (total + 0.5 * len(labels)) for c in counts]  # smoothed
    return out


def estimate(
    blocked: Levels,
    random_pairs: Levels,
    start: Weights | None = None,
    iterations: int = 40,
    source: str = "em",
) -> Weights:
    """m and the match proportion by EM over blocked pairs; u for scoring from random pairs.

    EM also re-estimates u over the blocked pairs (blocked non-matches agree more often than
    random pairs: they share a birth date or a name), which keeps the posteriors honest; the
    stored u, the one that scores a pair against the whole register, comes from random pairs.
    """
    w = start or Weights()
    random_u = level_frequencies(random_pairs)
    current = Weights(m={k: list(v) for k, v in w.m.items()}, u=random_u, proportion=0.3)
    for _ in range(iterations):
        posterior = _posterior(blocked, current)
        current.m = level_frequencies(blocked, posterior)
        current.u = level_frequencies(blocked, 1.0 - posterior)
        current.proportion = float(np.clip(posterior.mean(), 1e-6, 1 - 1e-6))
    result = Weights(
        m=current.m, u=random_u, proportion=current.proportion, source=source, pairs=len(blocked)
    )
    result.estimated_at = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    return result


def _posterior(lv: Levels, w: Weights) -> npt.NDArray[np.float64]:
    """P(match | comparison vector) for each pair under the current parameters."""
    table = w.table()
    idx = np.where(lv < 0, table.shape[1] - 1, lv)
    bayes = table[np.arange(len(FIELDS)), idx].sum(axis=1)
    prior = math.log2(w.proportion / (1 - w.proportion))
    odds = np.clip(bayes + prior, -60, 60)
    result: npt.NDArray[np.float64] = 1.0 / (1.0 + np.exp2(-odds))
    return result
