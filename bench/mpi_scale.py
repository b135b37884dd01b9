"""MPI at national scale: load a generated register, resolve one identity at a time, link a batch.

    .venv/bin/python bench/mpi_scale.py [--register 2500000] [--batch 10000] [--singles 2000]
                                        [--repeat N] [--reuse DIR] [--encrypt]

The register is generated (bench/lux_identities.py), written as the register CSV, and loaded
with the real loader into a fresh SQLite file (normalization, storage, index build). Then:
single resolves (decide only, the in-memory path, no storage write) for p50/p99, a batch link
with storage writes (`resolve_many`, as `passerelle mpi link` does), and the peak RSS (the
generator runs in a child process, so the peak is the MPI's). Wall and
CPU times are both reported: on a shared machine the wall time includes waiting for a core.
`--repeat N` runs the singles and the batch N times over the one load (each batch under its own
assigning authority, so it resolves new facility identities) and adds a row of medians.
`--encrypt`: the register is stored sealed, as with `store.encryption` (a fresh key); the index
rebuild from storage (what an engine start does) is timed too.
"""

from __future__ import annotations

import argparse
import csv
import gc
import pickle
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.lux_identities import generate
from engine.mpi.batch import decide_traits
from engine.mpi.model import Traits
from engine.mpi.register_load import load_register
from engine.mpi.service import Incoming, Mpi
from engine.store.cipher import PayloadCipher, new_key_file

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


def write_register(path: Path, n: int, incoming: int) -> list[Traits]:
    """Write a generated register of `n` as the register CSV; return `incoming` query traits."""
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
    return list(queries)


def generate_apart(folder: Path, n: int, incoming: int) -> list[Incoming]:
    """Generate in a child process, so that the peak RSS measured here is the MPI's alone (the
    generator holds millions of Python objects). A folder that already holds them is reused."""
    folder.mkdir(parents=True, exist_ok=True)
    if (folder / "queries.pickle").exists():
        queries: list[Traits] = pickle.loads((folder / "queries.pickle").read_bytes())
        return [Incoming("BENCH", f"L{k}", t) for k, t in enumerate(queries)]
    subprocess.run(
        [
            sys.executable,
            __file__,
            "--generate-into",
            str(folder),
            "--register",
            str(n),
            "--batch",
            str(incoming),
        ],
        check=True,
    )
    generated: list[Traits] = pickle.loads((folder / "queries.pickle").read_bytes())
    return [Incoming("BENCH", f"L{k}", t) for k, t in enumerate(generated)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--register", type=int, default=2_500_000)
    parser.add_argument("--batch", type=int, default=10_000)
    parser.add_argument("--singles", type=int, default=2_000)
    parser.add_argument(
        "--repeat", type=int, default=1, help="passes of singles + batch over one load (then a median row)"
    )
    parser.add_argument(
        "--reuse",
        type=Path,
        help="folder that keeps the generated register and queries between runs (generated if empty)",
    )
    parser.add_argument("--encrypt", action="store_true", help="store the register sealed (store.encryption)")
    parser.add_argument("--generate-into", type=Path, help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args()
    if args.generate_into:
        generated = write_register(args.generate_into / "register.csv", args.register, args.batch)
        (args.generate_into / "queries.pickle").write_bytes(pickle.dumps(generated))
        return
    with tempfile.TemporaryDirectory() as folder:
        data = args.reuse or Path(folder)
        csv_file = data / "register.csv"
        t0 = time.perf_counter()
        queries = generate_apart(data, args.register, args.batch + args.singles)
        print(f"generated {args.register} identities in {time.perf_counter() - t0:.0f} s", flush=True)
        cipher = fresh_cipher(Path(folder)) if args.encrypt else None
        mpi = Mpi(Path(folder) / "passerelle.db", cipher=cipher)  # always a fresh database
        t0, c0 = time.perf_counter(), time.process_time()
        load_register(mpi, csv_file, "bench", "scale benchmark")
        load_s, load_cpu = time.perf_counter() - t0, time.process_time() - c0
        print(
            f"load {load_s:.0f} s (CPU {load_cpu:.0f} s); index {mpi.index.nbytes() / 2**20:.0f} MiB",
            flush=True,
        )
        # As an engine start does: the load's own index is dropped first (a start has none), so
        # the peak RSS counts one index, not two.
        mpi._index = None
        gc.collect()
        t0, c0 = time.perf_counter(), time.process_time()
        mpi.replace_index(mpi._load_index(), mpi.storage.register_version())
        print(
            f"index rebuilt from storage in {time.perf_counter() - t0:.0f} s "
            f"(CPU {time.process_time() - c0:.0f} s), encrypted: {args.encrypt}",
            flush=True,
        )
        singles = [q.traits for q in queries[args.batch :]]
        runs = [_run(mpi, queries[: args.batch], singles, r) for r in range(args.repeat)]
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(HEADER)
        for figures in runs + ([_median(runs)] if args.repeat > 1 else []):
            print(
                f"| {args.register:,} | {load_s:.0f} | {load_cpu:.0f} | "
                + " | ".join(f"{v:,.2f}" for v in figures[:4])
                + f" | {args.batch:,} | {figures[4]:.1f} | {figures[5]:.1f} | {figures[6]:,.0f} | {rss:.0f} |"
            )


def _run(mpi: Mpi, batch: list[Incoming], singles: list[Traits], repetition: int) -> list[float]:
    """One pass: every single resolve (decide only), then the batch with its storage writes under
    an authority of its own (so that each repetition resolves new facility identities).
    Returns wall p50, p99, CPU p50, p99 (ms), batch wall s, batch CPU s, auto-linked."""
    matcher = mpi.matcher()
    wall, cpu = [], []
    for traits in singles:
        t, c = time.perf_counter(), time.thread_time()
        decide_traits(matcher, [traits])
        wall.append((time.perf_counter() - t) * 1000)
        cpu.append((time.thread_time() - c) * 1000)
    items = [Incoming(f"BENCH{repetition}", i.local_id, i.traits) for i in batch]
    t0, c0 = time.perf_counter(), time.process_time()
    results = mpi.resolve_many(items, persist=True, user="bench")
    batch_s, batch_cpu = time.perf_counter() - t0, time.process_time() - c0
    linked = sum(1 for r in results if r.outcome == "linked")
    return [_pct(wall, 50), _pct(wall, 99), _pct(cpu, 50), _pct(cpu, 99), batch_s, batch_cpu, linked]


def fresh_cipher(folder: Path) -> PayloadCipher:
    new_key_file(folder / "bench.key")
    return PayloadCipher.from_files({"k1": folder / "bench.key"}, "k1")


def _median(runs: list[list[float]]) -> list[float]:
    return [statistics.median(column) for column in zip(*runs, strict=True)]


HEADER = (
    "| register | load s | load CPU s | resolve p50 ms | p99 ms | CPU p50 ms | CPU p99 ms | batch | "
    "batch s | batch CPU s | auto-linked | peak RSS MiB |\n|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def _pct(values: list[float], p: int) -> float:
    ordered = sorted(values)
    return statistics.median(ordered) if p == 50 else ordered[max(0, int(len(ordered) * p / 100) - 1)]


if __name__ == "__main__":
    main()
