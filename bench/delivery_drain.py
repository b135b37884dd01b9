"""Delivery path alone: how fast a file destination's queue drains a committed backlog.

The message intake is done first (not timed); then a real `DestinationQueue` with the real file
destination and the real SQLite store (WAL, synchronous=FULL) delivers every message, each
outcome committed as `sent`. No network, no intake competing: what one destination queue
sustains on this machine, and where its time goes (`--profile` prints the top of cProfile).

    python bench/delivery_drain.py [--messages 20000] [--runs 3] [--concurrency 4] [--fsync]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import hashlib
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.channel import message_loader  # noqa: E402
from engine.config import QueueConfig  # noqa: E402
from engine.connectors.file.destination import Config as FileConfig  # noqa: E402
from engine.connectors.file.destination import FileDestination  # noqa: E402
from engine.contracts import BuildContext  # noqa: E402
from engine.dispatch import DestinationQueue  # noqa: E402
from engine.message import HL7V2  # noqa: E402
from engine.store.base import IntakeRecord, NewDelivery  # noqa: E402
from engine.store.sqlite import SqliteStore  # noqa: E402
from tests.unit.hl7_samples import ORU_R01_25  # noqa: E402


def record(number: int) -> IntakeRecord:
    control = f"D{number}"
    raw = ORU_R01_25.replace(b"LAB20250314000123", control.encode())
    return IntakeRecord(
        "bench", "v1", time.time(), HL7V2, "mllp", "", "", "", control, "LAB",
        hashlib.sha256(raw).digest(), "queued", "AA", None, raw,
        deliveries=[NewDelivery("archive", "")],
    )  # fmt: skip


async def fill(store: SqliteStore, messages: int) -> None:
    for start in range(0, messages, 500):
        await asyncio.gather(*(store.intake(record(n)) for n in range(start, min(messages, start + 500))))


async def drain(folder: Path, messages: int, concurrency: int, fsync: bool) -> tuple[float, int]:
    """Seconds to deliver `messages` from a store where they wait, and the store's commits."""
    store = SqliteStore(folder / "store.db")
    await store.open()
    await fill(store, messages)
    destination = FileDestination(
        FileConfig(directory="out", fsync=fsync), BuildContext(folder, "bench")
    )
    queue = DestinationQueue(
        "bench", "archive", destination, QueueConfig(concurrency=concurrency), store,
        message_loader(store, "utf-8"),
    )  # fmt: skip
    commits_before = store.commits
    started = time.perf_counter()
    queue.start()  # the feed starts spilled: it reloads the backlog from the store
    while await still_queued(store):  # noqa: ASYNC110 - the store is the judge: poll it
        await asyncio.sleep(0.02)
    seconds = time.perf_counter() - started
    await queue.stop(10)
    await store.close()
    return seconds, store.commits - commits_before


async def still_queued(store: SqliteStore) -> int:
    deliveries = (await store.stats())["channels"]["bench"]["destinations"]["archive"]["deliveries"]
    return int(deliveries.get("queued", 0))


def run(messages: int, concurrency: int, fsync: bool, profile: bool) -> tuple[float, int]:
    import uvloop

    with tempfile.TemporaryDirectory() as folder:
        if not profile:
            return uvloop.run(drain(Path(folder), messages, concurrency, fsync))
        profiler = cProfile.Profile()
        result = profiler.runcall(uvloop.run, drain(Path(folder), messages, concurrency, fsync))
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
        return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--fsync", action="store_true", help="fsync each file and its folder (the default)")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    rates, commits = [], []
    for _ in range(args.runs):
        seconds, n = run(args.messages, args.concurrency, args.fsync, args.profile)
        rates.append(args.messages / seconds)
        commits.append(n)
    runs = ", ".join(f"{r:,.0f}" for r in rates)
    print(
        f"{args.messages} deliveries, concurrency {args.concurrency}, fsync {'on' if args.fsync else 'off'}:"
        f" median {statistics.median(rates):,.0f} deliveries/s (runs: {runs});"
        f" store commits per run: {', '.join(map(str, commits))}"
    )


if __name__ == "__main__":
    main()
