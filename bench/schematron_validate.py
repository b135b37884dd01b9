"""Benchmark: Schematron rule sets — compile (cold, cached) and validation time per document.

Usage: .venv/bin/python bench/schematron_validate.py [--rounds N] [--write]
`--write` replaces the "## Schematron validation (issue 2)" section of bench/BENCHMARKS.md.
The reference toolchain (ISO skeleton include -> abstract-expand -> svrl, in Saxon-HE) is timed on
the same LRPH documents, and its findings compared with ours.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from engine.formats.cda import parse_xml  # noqa: E402
from engine.validation.rulesets import Registry  # noqa: E402

LRPH = REPO / "../shared/data/ch-lrph"
SECTION = "## Schematron validation (issue 2)"
CASES = {
    "ch-lrph": sorted(LRPH.glob("projects/BAG/Meldesysteme/*/*.xml")),
    "notifiable-lab-report": [REPO / "tests/data/validation/lab-report.xml"],
    "lab-report": [REPO / "tests/data/validation/lab-report.xml"],
    "clinical-document": [REPO / "tests/data/validation/lab-report.xml"],
    "imaging-manifest": [REPO / "tests/data/validation/kos-manifest.xml"],
}
CACHED_START = """
import sys, time; t = time.perf_counter(); sys.path.insert(0, {repo!r})
from engine.validation.rulesets import Registry
r = Registry(__import__('pathlib').Path({repo!r}), __import__('pathlib').Path({cache!r}))
v, cached = r.validator(r.resolve({name!r})); print(time.perf_counter() - t, cached)
"""


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def timed(fn: object, rounds: int) -> list[float]:
    out = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()  # type: ignore[operator]
        out.append(time.perf_counter() - start)
    return out


def p95(values: list[float]) -> float:
    return sorted(values)[max(0, round(0.95 * len(values)) - 1)]


def bench_rule_set(name: str, docs: list[Path], rounds: int) -> dict[str, str]:
    with tempfile.TemporaryDirectory() as cache:
        start = time.perf_counter()
        cold = Registry(REPO, Path(cache))
        cold.validator(cold.resolve(name))
        cold_s = time.perf_counter() - start
        start = time.perf_counter()
        warm = Registry(REPO, Path(cache))
        _, from_cache = warm.validator(warm.resolve(name))
        cached_s = time.perf_counter() - start
        assert from_cache
        script = CACHED_START.format(repo=str(REPO), cache=cache, name=name)
        out = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, check=True
        ).stdout
        process_s = float(out.split()[0])
    rule_set = warm.resolve(name)
    times: list[float] = []
    for doc in docs:
        tree = parse_xml(doc.read_bytes())
        warm.schematron(tree, rule_set)  # warm-up
        times += timed(lambda t=tree: warm.schematron(t, rule_set), rounds)
    return {
        "name": name,
        "docs": str(len(docs)),
        "cold": ms(cold_s),
        "cached": ms(cached_s),
        "process": ms(process_s),
        "median": ms(statistics.median(times)),
        "p95": ms(p95(times)),
    }


def bench_reference(rounds: int) -> tuple[str, str, bool]:
    sys.path.insert(0, str(REPO / "tests/unit"))
    from test_validation_lrph import Reference, ours  # type: ignore[import-not-found]

    ref = Reference()
    registry = Registry(REPO, None)
    rule_set = registry.resolve("ch-lrph")
    times, same = [], True
    for doc in CASES["ch-lrph"]:
        tree = parse_xml(doc.read_bytes())
        same &= ref.findings(tree) == ours(registry.schematron(tree, rule_set))
        times += timed(lambda t=tree: ref.findings(t), rounds)
    return ms(statistics.median(times)), ms(p95(times)), same


def report(rows: list[dict[str, str]], reference: tuple[str, str, bool] | None, rounds: int) -> str:
    lines = [
        SECTION,
        "",
        f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()} ({platform.python_version()}, "
        f"saxonche, lxml), `{rounds}` rounds per document, `bench/schematron_validate.py --write`.",
        "Compile *cold*: our compiler + Saxon/lxml compile, empty disk cache. *cached*: same process, disk",
        "cache hit (compiler skipped). *process*: a fresh Python process importing the engine and loading",
        "the cached rule set (what a restart costs). Validation: per document, after warm-up.",
        "",
        "| rule set | docs | compile cold ms | cached ms | cached start (new process) ms "
        "| median ms | p95 ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['docs']} | {r['cold']} | {r['cached']} | {r['process']} | "
            f"{r['median']} | {r['p95']} |"
        )
    if reference:
        lines += [
            "",
            f"Reference toolchain (ISO skeleton pipeline in Saxon-HE) on the same 8 LRPH samples: "
            f"median {reference[0]} ms, p95 {reference[1]} ms per document; findings identical to ours "
            f"(assertion id + location, failed asserts and successful reports): {reference[2]}.",
        ]
    return "\n".join(lines) + "\n"


def write(text: str) -> None:
    path = REPO / "bench/BENCHMARKS.md"
    old = path.read_text("utf-8") if path.is_file() else "# Benchmarks\n"
    if SECTION in old:
        head, _, rest = old.partition(SECTION)
        tail = rest.split("\n## ", 1)
        old = head + ("## " + tail[1] if len(tail) > 1 else "")
    path.write_text(old.rstrip("\n") + "\n\n" + text, "utf-8")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    available = {k: v for k, v in CASES.items() if v and all(p.is_file() for p in v)}
    rows = [bench_rule_set(name, docs, args.rounds) for name, docs in available.items()]
    reference = bench_reference(args.rounds) if "ch-lrph" in available else None
    text = report(rows, reference, args.rounds)
    print(text)
    if args.write:
        write(text)


if __name__ == "__main__":
    main()
