"""A batch of `received` messages is processed in one commit, and a cancelled caller loses nothing.

Regression (issue #9): a bus consumer stopped at a rebalance was cancelled while its batch's
processing commits were in flight. The commits went through, but the new deliveries were never
offered to their queues: the queue found them only at its next claim scan, and a later delivery
of the same patient, offered meanwhile, was sent first.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from engine.channel import Channel
from engine.channel_tests import Capture, build_offline
from engine.config import load_project
from engine.message import HL7V2, Message
from engine.store.base import IntakeRecord, ProcessedRecord
from engine.store.sqlite import SqliteStore
from tests.support.engine_process import write_project
from tests.support.patient_senders import ORDERED_CHANNEL, message

CHANNEL = ORDERED_CHANNEL.replace("{mode}", "received").format(port=1, downstream=2)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    opened = SqliteStore(tmp_path / "store.db")
    await opened.open()
    yield opened
    await opened.close()


def channel_on(store: SqliteStore, tmp_path: Path) -> Channel:
    project = load_project(write_project(tmp_path / "project", {"lab": CHANNEL}))
    spec = project.channels[0]
    channel: Channel = build_offline(project, spec, store, {d.name: Capture() for d in spec.destinations})
    return channel


async def received(store: SqliteStore, channel: Channel, number: int) -> Message:
    raw = message(1, number)
    result = await store.intake(
        IntakeRecord("lab", "v1", time.time(), HL7V2, "mllp", "", "", "", f"S1N{number}", "S", raw,
                     "received", "AA", None, raw, deliveries=[])
    )  # fmt: skip
    row = await store.message(result.message_id)
    assert row is not None
    return channel.from_row(row)


async def test_a_cancelled_batch_is_committed_whole_and_its_deliveries_offered(
    store: SqliteStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    channel = channel_on(store, tmp_path)
    batch = [await received(store, channel, n) for n in range(3)]
    offered: list[tuple[int, int]] = []
    queue = channel.queues[0]
    monkeypatch.setattr(queue, "offer", lambda delivery, m, key: offered.append((m.id, delivery)))
    committing, release = asyncio.Event(), asyncio.Event()
    commit = store.processed_all

    async def slow_commit(records: list[ProcessedRecord]) -> Any:
        committing.set()
        await release.wait()
        return await commit(records)

    monkeypatch.setattr(store, "processed_all", slow_commit)
    caller = asyncio.create_task(channel.finish_all(batch))
    await committing.wait()
    caller.cancel()  # the consumer is stopped while its batch commits
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await caller
    for _ in range(200):
        if len(offered) == 3:
            break
        await asyncio.sleep(0.01)
    assert [message_id for message_id, _ in offered] == [m.id for m in batch]
    deliveries = [delivery for _, delivery in offered]
    assert deliveries == sorted(deliveries)
    assert await store.unprocessed("lab", 0, 10) == []
