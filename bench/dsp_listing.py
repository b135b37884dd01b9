"""Benchmark: the DSP registry's listing latency with many documents stored (default 1 million:
about 83,000 patients of 12 documents each, the platform's documents-per-record ratio), through
`Registry.documents` as the CLI and the query API call it: a patient's documents, by national id,
by enterprise id, and with type/status/date filters. Rows are bulk-inserted in one transaction.

Usage: .venv/bin/python bench/dsp_listing.py [--documents N] [--queries N]
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from engine.dsp.registry import COLUMNS, Query, Registry, sort_time  # noqa: E402

PER_PATIENT = 12
TYPES = ("11502-2", "18842-5", "18748-4", "28570-0", "60591-5")


def matricule(n: int) -> str:
    return f"{n:013d}"


def rows(start: int, count: int) -> list[tuple[object, ...]]:
    rng = random.Random(start)
    out = []
    for i in range(start, start + count):
        patient = i // PER_PATIENT
        when = f"20{rng.randint(10, 25):02d}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}120000"
        values = {"document_id": f"2.999.1^{i}", "set_id": f"2.999.1^S{i}", "version": 1,
                  "replaces": "", "status": "current" if i % 10 else "deprecated",
                  "type_code": TYPES[i % len(TYPES)], "type_name": "t", "title": "Document",
                  "mime": "application/cda+xml", "effective_time": when, "confidentiality": "N",
                  "matricule": matricule(patient), "enterprise_id": f"E{patient:010d}", "author": "",
                  "author_organization": "", "custodian": "", "sha256": f"{i:064x}", "size": 1000,
                  "source": "bench", "details": json.dumps({}), "stored_at": 0.0}
        out.append((*[values[c] for c in COLUMNS], sort_time(when)))
    return out


def fill(registry: Registry, count: int) -> float:
    started = time.perf_counter()
    marks = ", ".join("?" * (len(COLUMNS) + 1))
    sql = f"INSERT INTO dsp_document({', '.join(COLUMNS)}, sort_time) VALUES ({marks})"
    for start in range(0, count, 100_000):
        with registry.write() as c:
            c.executemany(sql, rows(start, min(100_000, count - start)))
    return time.perf_counter() - started


def measure(registry: Registry, queries: list[Query]) -> tuple[float, float, float]:
    times = []
    for q in queries:
        t0 = time.perf_counter()
        registry.documents(q)
        times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    return statistics.median(times), times[int(len(times) * 0.99) - 1], times[-1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--documents", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=2000)
    args = parser.parse_args()
    patients = args.documents // PER_PATIENT
    rng = random.Random(11)
    with tempfile.TemporaryDirectory() as tmp:
        registry = Registry(Path(tmp) / "passerelle.db")
        seconds = fill(registry, args.documents)
        print(f"{platform.machine()} python {platform.python_version()}: {registry.count()} documents "
              f"inserted in {seconds:.0f} s")
        picks = [rng.randrange(patients) for _ in range(args.queries)]
        cases = {
            "by national id": [Query(matricule=matricule(p)) for p in picks],
            "by enterprise id": [Query(enterprise_id=f"E{p:010d}") for p in picks],
            "type + status + date range": [
                Query(matricule=matricule(p), type_code="11502-2", status="current", date_from="20150101",
                      date_to="20241231") for p in picks],
        }
        for name, queries in cases.items():
            median, p99, worst = measure(registry, queries)
            print(f"  {name}: median {median:.3f} ms, p99 {p99:.3f} ms, max {worst:.3f} ms "
                  f"({len(queries)} queries)")


if __name__ == "__main__":
    main()
