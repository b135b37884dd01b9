"""Matching: deterministic fast path, then blocking + Fellegi-Sunter scoring + guards.

`Matcher.decide(queries)` decides a batch, `QUERY_CHUNK` queries at a time (bounded memory):
candidate pairs from the blocking index, a cheap comparison without Jaro-Winkler over all of
them, a shortlist of each query's `SHORTLIST` best, one vectorised full comparison and scoring
pass over the shortlist, then per query the best and second-best candidates, guard rules and
thresholds:
  linked   score >= link threshold, no guard fired (or an equal valid matricule with a
           consistent birth date and sex: deterministic, whatever the score)
  review   score >= review threshold but not linkable, or the query is malformed/incomplete
  new      nothing scores as high as the review threshold
The known-local-id fast path lives in the service (it needs storage).

`decide_single(norm)` decides one query on its own path (pure-Python keys and full comparison,
compare_one.py) with exactly the candidates, scores and decision `decide` gives that query: the
same shortlist (cheap score, ties by register row) and the same final order (score, then
register row, whatever else is in the batch).
"""

from __future__ import annotations

from collections.abc import Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from engine.mpi.blocking import one_query_keys, query_keys
from engine.mpi.columns import Columns
from engine.mpi.compare import FIELD_INDEX, Levels, cheap_levels, levels
from engine.mpi.compare_one import cheap_levels_one, levels_many, query_values
from engine.mpi.guards import guard_reasons
from engine.mpi.index import RegisterIndex
from engine.mpi.normalize import Norm
from engine.mpi.scoring import Scorer

TOP = 5  # candidates kept with a decision (shown in review)
SHORTLIST = 24  # candidates per query given the full (Jaro-Winkler) comparison
QUERY_CHUNK = 512  # queries compared at once: bounds the memory of the pair arrays
DOB, SEX, MATRICULE = FIELD_INDEX["birth_date"], FIELD_INDEX["sex"], FIELD_INDEX["matricule"]


@dataclass(frozen=True)
class Thresholds:
    link: float = 20.0
    """Score (log2 Bayes factor) from which the best candidate is linked automatically."""
    review: float = 6.0
    """Score from which a candidate is worth a human look; below it the identity is `new`."""
    margin: float = 8.0
    """Minimum lead of the best over the second-best candidate for an automatic link (bits)."""
    given_must_agree: bool = False
    """Also refuse automatic links when the given names disagree completely."""
    clear_lead: float = 5.0
    """Below link + clear_lead, an automatic link also needs 3 strongly agreeing traits."""


@dataclass
class Candidate:
    identity_id: int
    score: float
    levels: list[int]
    twin: bool = False


@dataclass
class Decision:
    outcome: str  # linked | review | new
    identity_id: int | None = None
    score: float = 0.0
    second: float | None = None
    method: str = ""  # matricule | probabilistic | local-id | manual
    reasons: list[str] = field(default_factory=list)
    candidates: list[Candidate] = field(default_factory=list)


class Matcher:
    def __init__(self, index: RegisterIndex, scorer: Scorer, thresholds: Thresholds) -> None:
        self.index = index
        self.scorer = scorer
        self.thresholds = thresholds

    def pairs(self, q: Columns) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
        """All (query row, register row) candidate pairs from blocking, by query then row."""
        keys, of = query_keys(q)
        return self.index.candidates_many(keys, of)

    def shortlist(self, q: Columns) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
        """Blocked pairs cut to each query's `SHORTLIST` best by the cheap comparison.

        Pairs beyond the shortlist are not compared further: those ranked this low agree on
        nothing that equality can see (birth date, address, exact or phonetic names) and
        could not outscore the ones kept.
        """
        qi, ri = self.pairs(q)
        if len(qi) <= SHORTLIST:
            return qi, ri
        counts = np.bincount(qi, minlength=len(q))
        if counts.max() <= SHORTLIST:
            return qi, ri
        index = self.index
        pre = self.scorer.score(cheap_levels(q, index.cols, qi, ri), index.family_freq[ri])
        return _top_per_query(qi, ri, pre, SHORTLIST)

    def decide(
        self, q: Columns, problems: Sequence[list[str]] = (), excluded: Sequence[set[int]] = ()
    ) -> list[Decision]:
        """One decision per query row; `excluded[i]`: identity ids known to be other people."""
        decisions: list[Decision] = []
        for start in range(0, len(q), QUERY_CHUNK):
            rows = np.arange(start, min(len(q), start + QUERY_CHUNK))
            decisions += self._decide_chunk(
                q.take(rows) if len(q) > QUERY_CHUNK else q,
                problems[start : start + QUERY_CHUNK],
                excluded[start : start + QUERY_CHUNK],
            )
        return decisions

    def _decide_chunk(
        self, q: Columns, problems: Sequence[list[str]], excluded: Sequence[set[int]]
    ) -> list[Decision]:
        index = self.index
        qi, ri = self.shortlist(q)
        lv = levels(q, index.cols, qi, ri)
        scores = self.scorer.score(lv, index.family_freq[ri])
        order = np.lexsort((ri, -scores, qi))  # equal scores: by register row (as decide_single)
        starts = np.searchsorted(qi[order], np.arange(len(q) + 1))
        decisions = []
        for i in range(len(q)):
            sel = order[starts[i] : starts[i + 1]][: TOP + 8]
            found = self._candidates(
                ri[sel], scores[sel], lv[sel], excluded[i] if i < len(excluded) else set()
            )
            decisions.append(
                self.decide_one(found, bool(q["twin"][i]), list(problems[i]) if i < len(problems) else [])
            )
        return decisions

    def _candidates(
        self,
        rows: npt.NDArray[np.intp],
        scores: npt.NDArray[np.float64],
        lv: Levels,
        excluded: AbstractSet[int],
    ) -> list[Candidate]:
        """The `TOP` best of one query's ranked candidates, without those known to be others."""
        index = self.index
        ids, twins = index.ids[rows].tolist(), index.cols["twin"][rows].tolist()
        found = [
            Candidate(i, score, levels, bool(twin))
            for i, score, levels, twin in zip(ids, scores.tolist(), lv.tolist(), twins, strict=True)
            if i not in excluded
        ]
        return found[:TOP]

    def decide_single(
        self, norm: Norm, problems: list[str], excluded: AbstractSet[int] = frozenset()
    ) -> Decision:
        """The decision `decide` gives for this one query, on the single-query path."""
        index, q = self.index, query_values(norm)
        rows = index.candidates(np.array(one_query_keys(norm), dtype=np.uint64).view(np.int64))
        if len(rows) > SHORTLIST:
            pre = self.scorer.score(cheap_levels_one(q, index.cols, rows), index.family_freq[rows])
            rows = rows[np.argsort(-pre, kind="stable")[:SHORTLIST]]
        lv = levels_many(q, index.cols, rows)
        scores = self.scorer.score(lv, index.family_freq[rows])
        sel = np.lexsort((rows, -scores))[: TOP + 8]
        found = self._candidates(rows[sel], scores[sel], lv[sel], excluded)
        return self.decide_one(found, bool(norm.twin), list(problems))

    def decide_one(self, found: list[Candidate], query_twin: bool, problems: list[str]) -> Decision:
        """Decision from the ranked candidates of one query (best first)."""
        t = self.thresholds
        if not found:
            return Decision("review" if problems else "new", reasons=problems)
        sure = _deterministic(found)
        best = sure or found[0]
        rest = [c.score for c in found if c is not best]
        second = rest[0] if rest else None
        decision = Decision(
            "review", None, best.score, second, "matricule" if sure else "probabilistic", problems, found
        )
        if sure is None and best.score < t.review and not problems:
            decision.outcome = "new"
            return decision
        margin = None if sure or second is None else best.score - second
        decision.reasons += guard_reasons(
            best.levels,
            query_twin,
            best.twin,
            margin,
            t.margin,
            t.given_must_agree,
            best.score >= t.link + t.clear_lead,
        )
        if not decision.reasons and (sure is not None or best.score >= t.link):
            decision.outcome, decision.identity_id = "linked", best.identity_id
        return decision


def _top_per_query(
    qi: npt.NDArray[np.intp], ri: npt.NDArray[np.intp], score: npt.NDArray[np.float64], keep: int
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
    """The `keep` best-scoring pairs of each query (pairs grouped by query, best first)."""
    order = np.lexsort((-score, qi))
    rank = np.arange(len(order)) - np.searchsorted(qi[order], qi[order], side="left")
    kept = order[rank < keep]
    return qi[kept], ri[kept]


def _deterministic(found: list[Candidate]) -> Candidate | None:
    """The one candidate with an equal valid matricule, consistent birth date and sex, if any."""
    same = [c for c in found if c.levels[MATRICULE] == 0]
    if len(same) != 1:
        return None
    c = same[0]
    return c if c.levels[DOB] in (0, -1) and c.levels[SEX] != 1 else None
