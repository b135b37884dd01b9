"""Parse an ORU^R01 and read PID-3 and every OBX-3.1: Passerelle vs python-hl7 vs hl7apy.

Run from the repository root: `.venv/bin/python bench/hl7_parse.py [--repeat 7]`. The message
is the 16-segment cut (MSH PID PV1 ORC OBR, 10 OBX, SPM; UTF-8) of tests/unit/hl7_samples.py's
ORU_R01_25. Each row is the median over `--repeat` timeit runs, in microseconds per message.
Also timed: the plain split the domain notes quote (~5 µs), and read_header + build_ack, the
per-message work of an MLLP intake (must stay well under 20 µs).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import timeit
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import hl7
from hl7apy.parser import parse_message

from engine.formats.hl7v2 import build_ack, parse, read_header
from tests.unit.hl7_samples import ORU_R01_25

_SEGMENTS = ORU_R01_25.split(b"\r")[:-1]
ORU_16 = b"\r".join(_SEGMENTS[:15] + _SEGMENTS[-1:]) + b"\r"  # drops OBX 11 and 12
SEGMENT_COUNT = ORU_16.count(b"\r")
assert SEGMENT_COUNT == 16


def ours() -> tuple[str, list[str]]:
    message = parse(ORU_16)
    return message.get("PID-3"), message.get_all("OBX[*]-3.1")


def python_hl7() -> tuple[str, list[str]]:
    message = hl7.parse(ORU_16, encoding="utf-8")
    pid3 = str(message.segment("PID")[3][0])
    return pid3, [str(obx[3][0][0]) for obx in message.segments("OBX")]


def hl7apy() -> tuple[str, list[str]]:
    message = parse_message(ORU_16.decode("utf-8"))
    result = message.oru_r01_patient_result
    pid3 = result.oru_r01_patient.pid.pid_3.value
    observations = result.oru_r01_order_observation.oru_r01_observation
    return pid3, [o.obx.obx_3.obx_3_1.value for o in observations]


def split_only() -> list[list[str]]:
    return [segment.split("|") for segment in ORU_16.decode("utf-8").split("\r")]


def intake() -> bytes:
    return build_ack(read_header(ORU_16), "AA")


HEADER = read_header(ORU_16)

CASES: list[tuple[str, Callable[[], object], int]] = [
    ("passerelle parse + get PID-3, OBX[*]-3.1", ours, 2000),
    ("python-hl7 hl7.parse + same fields", python_hl7, 200),
    ("hl7apy parse_message + same fields", hl7apy, 10),
    ("baseline: decode + split segments/fields", split_only, 5000),
    ("passerelle read_header", lambda: read_header(ORU_16), 20000),
    ("passerelle build_ack (AA)", lambda: build_ack(HEADER, "AA"), 20000),
    ("passerelle read_header + build_ack", intake, 20000),
]


def median_us(function: Callable[[], object], number: int, repeat: int) -> float:
    runs = timeit.repeat(function, number=number, repeat=repeat)
    return statistics.median(runs) / number * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7, help="timeit runs per case (median taken)")
    args = parser.parse_args()
    expected = ours()
    assert python_hl7() == expected, (python_hl7(), expected)
    assert hl7apy() == expected, (hl7apy(), expected)
    print(f"ORU^R01, {SEGMENT_COUNT} segments, {len(ORU_16)} bytes; median of {args.repeat} runs")
    print(f"{'case':<44} {'µs/msg':>10} {'msgs/s':>10}")
    for name, function, number in CASES:
        us = median_us(function, number, args.repeat)
        print(f"{name:<44} {us:>10.1f} {1e6 / us:>10,.0f}")


if __name__ == "__main__":
    main()
