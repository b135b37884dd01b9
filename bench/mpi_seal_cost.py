"""The CPU cost of encryption at rest per MPI identity (engine/store/component_seal.py).

    .venv/bin/python bench/mpi_seal_cost.py [--identities 20000] [--runs 5]

What a register load does per identity with `store.encryption` configured and without it: the
stored row (traits and norm sealed with AES-256-GCM, register key and matricule as keyed digests
with sealed copies; `_identity_row` of engine/mpi/register_load.py), and what an engine start
does per identity to rebuild the index (the norm opened and decoded). CPU time of this thread,
median of `--runs`, in microseconds per identity; the difference is the cost of sealing.
Identities are generated (bench/lux_identities.py), nothing is written to disk but a key file.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.lux_identities import generate
from engine.mpi.model import Traits
from engine.mpi.normalize import Norm, normalize
from engine.mpi.register_load import _identity_row
from engine.mpi.service import Mpi
from engine.store.cipher import PayloadCipher, new_key_file


def per_identity_us(work: Callable[[], object], n: int, runs: int) -> float:
    """Median over `runs` of this thread's CPU time for `work`, in µs per identity."""
    times = []
    for _ in range(runs):
        started = time.thread_time()
        work()
        times.append((time.thread_time() - started) / n * 1e6)
    return statistics.median(times)


def rows(mpi: Mpi, traits: list[Traits], norms: list[Norm]) -> Callable[[], object]:
    def build() -> object:
        pairs = enumerate(zip(traits, norms, strict=True))
        return [_identity_row(mpi, k + 1, f"R{k}", t, n, 0.0) for k, (t, n) in pairs]

    return build


def reads(mpi: Mpi, stored: list[tuple[object, ...]]) -> Callable[[], object]:
    def decode() -> object:
        return [Norm(*mpi.storage.norm_values(r[7])) for r in stored]  # as the index load does

    return decode


def measure(folder: Path, n: int, runs: int) -> dict[str, float]:
    register, _, _, _ = generate(n, 0)
    traits = list(register)[:n]
    norms = [normalize(t) for t in traits]
    key = folder / "k1.key"
    new_key_file(key)
    clear = Mpi(folder / "clear.db")
    sealed = Mpi(folder / "sealed.db", cipher=PayloadCipher.from_files({"k1": key}, "k1"))
    figures = {}
    for name, mpi in (("clear", clear), ("sealed", sealed)):
        figures[f"row {name}"] = per_identity_us(rows(mpi, traits, norms), n, runs)
        stored = rows(mpi, traits, norms)()
        assert isinstance(stored, list)
        figures[f"index read {name}"] = per_identity_us(reads(mpi, stored), n, runs)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--identities", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        f = measure(Path(folder), args.identities, args.runs)
    print("| per identity (CPU µs, median) | clear | sealed | cost of sealing |\n|---|---|---|---|")
    for what in ("row", "index read"):
        clear, sealed = f[f"{what} clear"], f[f"{what} sealed"]
        print(f"| {what} | {clear:.1f} | {sealed:.1f} | +{sealed - clear:.1f} |")


if __name__ == "__main__":
    main()
