"""Batch helpers shared by the service, the CLI and the benchmarks: normalize many traits,
estimate weights from an incoming batch, decide a batch."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from engine.mpi.columns import Columns
from engine.mpi.compare import levels
from engine.mpi.index import RegisterIndex
from engine.mpi.matcher import Decision, Matcher, Thresholds
from engine.mpi.model import Traits, problems
from engine.mpi.normalize import normalize
from engine.mpi.scoring import Scorer, Weights, estimate

RANDOM_PAIRS = 50_000
EM_PAIRS = 200_000
EM_TOP = 3


def query_columns(traits: Sequence[Traits]) -> Columns:
    return Columns.from_norms([normalize(t) for t in traits])


def estimate_weights(
    index: RegisterIndex,
    traits: Sequence[Traits],
    start: Weights | None = None,
    seed: int = 7,
    source: str = "em",
) -> Weights:
    """EM over the best blocked candidates of `traits` against the register; u from random pairs.

    EM runs on each query's `EM_TOP` best candidates under the current weights: that keeps the
    true matches and their close competitors, and drops the bulk of obviously different people
    who merely share a common name (with them, EM may find "same family name" as its latent
    class instead of "same person").
    """
    start = start or Weights()
    q = query_columns(traits)
    qi, ri = Matcher(index, Scorer(start), Thresholds()).shortlist(q)
    lv = levels(q, index.cols, qi, ri)
    scores = Scorer(start).score(lv, index.family_freq[ri])
    order = np.lexsort((-scores, qi))
    first = np.searchsorted(qi[order], qi[order], side="left")
    top = order[(np.arange(len(order)) - first) < EM_TOP]
    rng = np.random.default_rng(seed)
    if len(top) > EM_PAIRS:
        top = rng.choice(top, EM_PAIRS, replace=False)
    n = min(RANDOM_PAIRS, max(1, len(q) * len(index.ids)))
    rq = rng.integers(0, len(q), n).astype(np.intp)
    rr = rng.integers(0, len(index.ids), n).astype(np.intp)
    return estimate(lv[top], levels(q, index.cols, rq, rr), start, source=source)


def decide_traits(
    matcher: Matcher, traits: Sequence[Traits], excluded: Sequence[set[int]] = ()
) -> list[Decision]:
    """One decision per traits; one alone takes the single-query path (same decision, less
    fixed cost)."""
    if len(traits) == 1:
        return [
            matcher.decide_single(
                normalize(traits[0]), problems(traits[0]), excluded[0] if excluded else set()
            )
        ]
    q = query_columns(traits)
    return matcher.decide(q, [problems(t) for t in traits], excluded)
