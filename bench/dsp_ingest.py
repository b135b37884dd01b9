"""Benchmark: ORU^R01 -> CDA lab report -> validated (lab-report Schematron + CDA XSD) -> stored in
the DSP (registry row + SHA-256 blob, fsynced), documents per second in one process, and the share
of each stage. Each message is a distinct order (its own document). The MPI holds the sample
patient (a seed register), as after `make run`.

Usage: .venv/bin/python bench/dsp_ingest.py [--count N]
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from engine.contracts import BuildContext  # noqa: E402
from engine.dsp.service import dsp_from  # noqa: E402
from engine.formats.cda import parse_xml  # noqa: E402
from engine.message import HL7V2, Message, SourceMeta  # noqa: E402
from engine.validation.rulesets import Registry  # noqa: E402
from tests.unit.hl7_samples import ORU_R01_25  # noqa: E402
from transforms.hl7_to_cda_lab import Config, Hl7ToCdaLab  # noqa: E402


class _Store:
    def __init__(self, path: Path) -> None:
        self.path = path


def messages(count: int) -> list[bytes]:
    return [ORU_R01_25.replace(b"LAB778899", f"LAB{i:06d}".encode()) for i in range(count)]


def run(count: int, folder: Path) -> dict[str, float]:
    (folder / "config").mkdir()
    seed = REPO / "config" / "dsp-demo-register.csv"
    (folder / "config" / "dsp.yaml").write_text(f"mpi_seed_register: {seed}\n")
    context = BuildContext(folder, "bench", {"store": _Store(folder / "passerelle.db")})
    dsp, step = dsp_from(context), Hl7ToCdaLab(Config(), context)
    rules = Registry(REPO, folder / "cache")
    lab = rules.resolve("lab-report")
    totals = {"transform": 0.0, "validate": 0.0, "store": 0.0}
    for raw in messages(count):
        t0 = time.perf_counter()
        message = step(Message("bench", raw, HL7V2, SourceMeta("bench")))
        t1 = time.perf_counter()
        tree = parse_xml(message.content())
        assert not rules.schematron(tree, lab) and not rules.xsd(tree, "sdtc")
        t2 = time.perf_counter()
        dsp.store(message.content(), "bench")
        totals["transform"] += t1 - t0
        totals["validate"] += t2 - t1
        totals["store"] += time.perf_counter() - t2
    assert dsp.registry.count() == count
    return totals


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=500)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        warm = Path(tmp) / "warm"
        warm.mkdir()
        run(20, warm)  # compiles the rule set and fills the caches: not what is measured
        folder = Path(tmp) / "measured"
        folder.mkdir()
        started = time.perf_counter()
        totals = run(args.count, folder)
        elapsed = time.perf_counter() - started
    per = {k: 1000 * v / args.count for k, v in totals.items()}
    print(f"{platform.machine()} python {platform.python_version()}: {args.count} ORU -> CDA -> validated -> "
          f"stored in {elapsed:.1f} s = {args.count / elapsed:.0f} documents/s")
    print("per document (ms): " + ", ".join(f"{k} {v:.2f}" for k, v in per.items()))


if __name__ == "__main__":
    main()
