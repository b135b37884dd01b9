"""What a chaos run reports (bench/chaos.py, bench/chaos_restarts.py)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Report:
    scenario: str
    seconds: float
    acknowledged: int
    stored: int
    delivered: int
    downstream_duplicates: int
    lost: int
    refused_answers: int

    @property
    def ok(self) -> bool:
        return self.lost == 0 and self.stored >= self.acknowledged


def print_report(r: Report) -> None:
    verdict = "OK" if r.ok else "LOSS"
    print(
        f"| {r.scenario} | {r.seconds} s | {r.acknowledged} | {r.stored} | {r.delivered} | "
        f"{r.downstream_duplicates} | {r.lost} | {r.refused_answers} | {verdict} |",
        flush=True,
    )
