"""Every fuzz target on a few thousand random and mutated inputs, in every test run, so the
targets and their invariants stay alive (the long coverage-guided runs are in RELIABILITY.md)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from tests.fuzz.run import ROOT, SEEDS
from tests.fuzz.targets import TARGETS


def mutations(target: str, count: int) -> list[bytes]:
    rng = random.Random(f"passerelle-{target}")
    seeds = [
        p.read_bytes()
        for s in SEEDS[target]
        for p in sorted((ROOT / s).glob("*"))
        if p.is_file() and p.stat().st_size < 200_000
    ] or [b""]
    inputs = []
    for _ in range(count):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 8)):
            position = rng.randrange(len(data) + 1)
            action = rng.random()
            if action < 0.4 and data:
                data[min(position, len(data) - 1)] = rng.randrange(256)
            elif action < 0.7:
                data[position:position] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
            else:
                del data[position : position + rng.randint(1, 64)]
        inputs.append(bytes(data))
    return inputs + [bytes(rng.randrange(256) for _ in range(rng.randint(0, 300))) for _ in range(count // 4)]


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_target_keeps_its_invariant(name: str) -> None:
    count = 60 if name == "channel_yaml" else 800  # the YAML target writes a file per input
    for data in mutations(name, count):
        TARGETS[name](data)


def test_every_seed_folder_exists() -> None:
    for folders in SEEDS.values():
        for folder in folders:
            assert Path(ROOT / folder).is_dir(), folder
