"""The SQLite store's intake alone: concurrent callers storing ORU^R01 messages (one delivery each).

What the writer thread sustains without MLLP, parsing or the load client: the intake path of
`respond_after: received`. `--runs` fresh stores; the median is printed.

    python bench/store_intake.py [--messages 20000] [--callers 16] [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.message import HL7V2  # noqa: E402
from engine.store.base import IntakeRecord, NewDelivery  # noqa: E402
from engine.store.sqlite import SqliteStore  # noqa: E402
from tests.unit.hl7_samples import ORU_R01_25  # noqa: E402


def record(control: str) -> IntakeRecord:
    raw = ORU_R01_25.replace(b"LAB20250314000123", control.encode())
    return IntakeRecord(
        "bench", "v1", time.time(), HL7V2, "mllp", "127.0.0.1:1", "", "", control, "LAB",
        hashlib.sha256(raw).digest(), "queued", "AA", None, raw, response=b"MSA|AA",
        deliveries=[NewDelivery("archive", "")],
    )  # fmt: skip


async def measure(folder: Path, messages: int, callers: int) -> tuple[float, int]:
    store = SqliteStore(folder / "store.db")
    await store.open()
    each = messages // callers

    async def caller(index: int) -> None:
        for n in range(each):
            await store.intake(record(f"S{index}N{n}"))

    started = time.perf_counter()
    await asyncio.gather(*(caller(i) for i in range(callers)))
    seconds = time.perf_counter() - started
    await store.close()
    return each * callers / seconds, store.commits


def main() -> None:
    import uvloop

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--callers", type=int, default=16)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    rates, commits = [], []
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory() as folder:
            rate, n = uvloop.run(measure(Path(folder), args.messages, args.callers))
        rates.append(rate)
        commits.append(n)
    runs = ", ".join(f"{r:,.0f}" for r in rates)
    print(
        f"{args.messages} intakes, {args.callers} callers: median {statistics.median(rates):,.0f} intakes/s"
        f" (runs: {runs}); commits per run: {', '.join(map(str, commits))}"
    )


if __name__ == "__main__":
    main()
