"""MPI at national scale: load a generated register, resolve one identity at a time, link a batch.

    .venv/bin/python bench/mpi_scale.py [--register 2500000] [--batch 10000] [--singles 2000]

The register is generated (bench/lux_identities.py), written as the register CSV, and loaded
with the real loader into a fresh SQLite file (normalization, storage, index build). Then:
single resolves (decide only, the in-memory path, no storage write) for p50/p99, a batch link
with storage writes (`resolve_many`, as `passerelle mpi link` does), and the peak RSS.
"""

from __future__ import annotations

import argparse
import csv
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.lux_identities import generate
from engine.mpi.batch import decide_traits
from engine.mpi.register_load import load_register
from engine.mpi.service import Incoming, Mpi

COLUMNS = [
    "register_id",
    "matricule",
    "family_name",
    "birth_name",
    "given_names",
    "birth_date",
    "sex",
    "house_number",
    "street",
    "postcode",
    "city",
]


def write_register(path: Path, n: int, incoming: int) -> list[Incoming]:
    register, queries, _, _ = generate(n, incoming, n // 1000)
    with path.open("w", newline="", encoding="utf-8") as handle:
        w = csv.writer(handle)
        w.writerow(COLUMNS)
        for k, t in enumerate(register):
            w.writerow(
                [
                    f"R{k}",
                    t.matricule,
                    t.family,
                    t.birth_name,
                    t.given,
                    t.birth_date,
                    t.sex,
                    t.house_number,
                    t.street,
                    t.postcode,
                    t.city,
                ]
            )
    return [Incoming("BENCH", f"L{k}", t) for k, t in enumerate(queries)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--register", type=int, default=2_500_000)
    parser.add_argument("--batch", type=int, default=10_000)
    parser.add_argument("--singles", type=int, default=2_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        csv_file = Path(folder) / "register.csv"
        t0 = time.perf_counter()
        queries = write_register(csv_file, args.register, args.batch + args.singles)
        print(f"generated {args.register} identities in {time.perf_counter() - t0:.0f} s", flush=True)
        mpi = Mpi(Path(folder) / "passerelle.db")
        t0 = time.perf_counter()
        load_register(mpi, csv_file, "bench", "scale benchmark")
        load_s = time.perf_counter() - t0
        print(f"load {load_s:.0f} s; index {mpi.index.nbytes() / 2**20:.0f} MiB", flush=True)
        matcher = mpi.matcher()
        times = []
        for item in queries[args.batch :]:
            t = time.perf_counter()
            decide_traits(matcher, [item.traits])
            times.append((time.perf_counter() - t) * 1000)
        times.sort()
        p50, p99 = statistics.median(times), times[int(len(times) * 0.99) - 1]
        t0 = time.perf_counter()
        results = mpi.resolve_many(queries[: args.batch], persist=True, user="bench")
        batch_s = time.perf_counter() - t0
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        linked = sum(1 for r in results if r.outcome == "linked")
        print(
            f"| {args.register} | {load_s:.0f} | {p50:.2f} | {p99:.2f} | {args.batch} | {batch_s:.1f} | "
            f"{linked} | {rss:.0f} |"
        )


if __name__ == "__main__":
    main()
