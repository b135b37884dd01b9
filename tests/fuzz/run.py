"""Run one fuzz target with atheris (libFuzzer): bounded inputs, time per input and memory.

    python -m tests.fuzz.run TARGET [--runs 1000000] [--timeout 5] [--rss-mb 1024] [--corpus DIR]

A crash or hang stops the run with libFuzzer's report and the input saved as crash-*/timeout-*
in the working folder; turn it into a regression test in tests/fuzz/test_regressions.py.
Seeds come from the project's own samples so the fuzzer starts from valid messages.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SEEDS = {
    "mllp_framing": ["tests/data/hl7"],
    "hl7_parser": ["tests/data/hl7"],
    "hl7_ack": ["tests/data/hl7"],
    "sftp_batch": ["tests/data/hl7"],
    "cda_xml": ["tests/data/validation"],
    "dicom_manifest": ["tests/data/dicom"],
    "channel_yaml": ["channels"],
}


def seed_corpus(target: str, folder: Path) -> None:
    for source in SEEDS[target]:
        for i, path in enumerate(sorted((ROOT / source).glob("*"))):
            if path.is_file() and path.stat().st_size < 200_000:
                data = path.read_bytes()
                (folder / f"seed-{i}").write_bytes(
                    b"\x0b" + data + b"\x1c\x0d" if target == "mllp_framing" else data
                )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("target")
    parser.add_argument("--runs", type=int, default=1_000_000)
    parser.add_argument("--timeout", type=int, default=5, help="seconds per input before it counts as a hang")
    parser.add_argument("--rss-mb", type=int, default=1024, help="memory limit (unbounded memory = failure)")
    parser.add_argument(
        "--corpus", type=Path, help="corpus folder (default: a fresh one seeded from samples)"
    )
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    import atheris

    with atheris.instrument_imports(include=["engine"]):
        # the parsers must be imported here to be instrumented (the targets import lazily)
        import engine.config
        import engine.connectors.mllp.framing
        import engine.connectors.sftp.batch
        import engine.formats.cda
        import engine.formats.dicom_manifest
        import engine.formats.hl7v2  # noqa: F401
        from tests.fuzz.targets import TARGETS
    target = TARGETS[args.target]
    corpus = args.corpus or Path(tempfile.mkdtemp(prefix=f"fuzz-{args.target}-"))
    corpus.mkdir(parents=True, exist_ok=True)
    seed_corpus(args.target, corpus)
    artifacts = ROOT / "var" / "fuzz"
    artifacts.mkdir(parents=True, exist_ok=True)
    libfuzzer_args = [
        sys.argv[0],
        f"-runs={args.runs}",
        f"-timeout={args.timeout}",
        f"-rss_limit_mb={args.rss_mb}",
        "-max_len=65536",
        "-print_final_stats=1",
        f"-artifact_prefix={artifacts}/{args.target}-",
        str(corpus),
    ]
    atheris.Setup(libfuzzer_args, target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
