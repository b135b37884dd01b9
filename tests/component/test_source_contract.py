"""The source contract, run over every registered source through a harness that plays the
remote party over the real protocol:

- a source never answers its peer before `deliver` returned (the store committed);
- a commit failure (`StoreError`) becomes the protocol's "keep it and retry" answer;
- a rejected verdict becomes the protocol's rejection, with the reason.

A new source type is not complete until it has a harness here: the suite fails otherwise.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Protocol

import pytest

from engine import registry
from engine.contracts import BuildContext, Intake, Receipt, Source, Verdict
from engine.errors import Finding, StoreError
from tests.component.discovery import discover


class Harness(Protocol):
    type: str

    async def start(self) -> dict[str, object]: ...
    def sample(self) -> bytes: ...
    async def offer(self, payload: bytes) -> None: ...
    async def observed(self) -> str: ...
    async def stop(self) -> None: ...


def harnesses() -> dict[str, type[Any]]:
    return discover("source_harness")


HARNESSES = harnesses()


class Intakes:
    """A `deliver` whose behaviour the test controls: block, fail the commit, or reject."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        self.count = 0

    async def deliver(self, intake: Intake) -> Receipt:
        self.count += 1
        self.entered.set()
        await self.release.wait()
        if self.mode == "fail":
            raise StoreError("store commit failed: disk full")
        verdict = Verdict("AA", "queued")
        if self.mode == "reject":
            verdict = Verdict("AE", "rejected", (Finding("PID-3 is empty", "101", "PID^1^3"),))
        done: asyncio.Future[Verdict] = asyncio.get_running_loop().create_future()
        done.set_result(verdict)
        response = intake.respond(verdict) if intake.respond else None
        return Receipt(self.count, verdict, response, processed=done)


@pytest.mark.parametrize("source_type", registry.all_types("source"))
def test_every_source_has_a_contract_harness(source_type: str) -> None:
    assert source_type in HARNESSES, f"source {source_type!r} has no harness in the contract suite"


@pytest.fixture(params=sorted(HARNESSES))
async def harness(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Harness]:
    h: Harness = HARNESSES[request.param](tmp_path)
    yield h
    await h.stop()


async def running_source(harness: Harness, intakes: Intakes, tmp_path: Path) -> Source:
    options = await harness.start()
    config = registry.config_model("source", harness.type).model_validate(options)
    source: Source = registry.load("source", harness.type)(config, BuildContext(tmp_path, "contract"))
    await source.start(intakes.deliver)
    return source


async def eventually(harness: Harness, expected: str, timeout: float = 30.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    seen = await harness.observed()
    while seen != expected and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.05)
        seen = await harness.observed()
    assert seen == expected


async def test_no_answer_before_the_commit(harness: Harness, tmp_path: Path) -> None:
    intakes = Intakes("accept")
    source = await running_source(harness, intakes, tmp_path)
    try:
        await harness.offer(harness.sample())
        await asyncio.wait_for(intakes.entered.wait(), 60)
        for _ in range(10):  # deliver has not returned: any answer now breaks the contract
            assert await harness.observed() == "pending"
            await asyncio.sleep(0.02)
        intakes.release.set()
        await eventually(harness, "accepted")
    finally:
        intakes.release.set()
        await source.stop()


async def test_commit_failure_is_answered_keep_and_retry(harness: Harness, tmp_path: Path) -> None:
    intakes = Intakes("fail")
    intakes.release.set()
    source = await running_source(harness, intakes, tmp_path)
    try:
        await harness.offer(harness.sample())
        await eventually(harness, "kept_for_retry")
    finally:
        await source.stop()


async def test_rejected_message_is_answered_with_the_reason(harness: Harness, tmp_path: Path) -> None:
    intakes = Intakes("reject")
    intakes.release.set()
    source = await running_source(harness, intakes, tmp_path)
    try:
        await harness.offer(harness.sample())
        await eventually(harness, "rejected")
    finally:
        await source.stop()
