"""Destination queues over the real SQLite store: retries, dead letters, ordering, recovery."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from engine.channel import message_loader, order_key
from engine.config import QueueConfig
from engine.dispatch import DestinationQueue, backoff
from engine.errors import PermanentError, RetryableError, StoreError
from engine.message import HL7V2, Message, SourceMeta
from engine.store.base import DeliveryUpdate, IntakeRecord, NewDelivery, PendingDelivery
from engine.store.cipher import PayloadCipher, new_key_file
from engine.store.sqlite import SqliteStore

FAST = {"initial_backoff": 0.01, "max_backoff": 0.02, "jitter": 0.0}


class Peer:
    """A destination whose answers are scripted per message: 'ok', 'retry' or 'permanent'."""

    def __init__(self, script: dict[str, list[str]] | None = None) -> None:
        self.script = script or {}
        self.sent: list[str] = []
        self.attempts: list[str] = []
        self.release = asyncio.Event()
        self.release.set()

    async def send(self, message: Message) -> bytes | None:
        await self.release.wait()
        name = message.raw.decode()
        self.attempts.append(name)
        answer = self.script.get(name, ["ok"]).pop(0) if self.script.get(name) else "ok"
        if answer == "retry":
            raise RetryableError("peer busy")
        if answer == "permanent":
            raise PermanentError("peer says no")
        self.sent.append(name)
        return b"OK"

    async def close(self) -> None:
        return None


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    s = SqliteStore(tmp_path / "store.db")
    await s.open()
    yield s
    await s.close()


async def enqueue(store: SqliteStore, queue: DestinationQueue, name: str, key: str = "") -> int:
    raw = name.encode()
    result = await store.intake(
        IntakeRecord(
            "lab",
            "v1",
            time.time(),
            HL7V2,
            "mllp",
            "",
            "",
            "",
            name,
            "S",
            raw,
            "queued",
            "AA",
            None,
            raw,
            deliveries=[NewDelivery(queue.name, key)],
        )
    )
    message = Message("lab", raw, HL7V2, SourceMeta("mllp"), id=result.message_id, control_id=name)
    queue.offer(result.delivery_ids[0], message, key)
    return result.message_id


def make_queue(store: SqliteStore, peer: Peer, **queue: object) -> DestinationQueue:
    config = QueueConfig.model_validate({**FAST, **queue})
    return DestinationQueue("lab", "out", peer, config, store, message_loader(store, ""))


async def settled(store: SqliteStore, message_id: int) -> str:
    for _ in range(500):
        stored = await store.message(message_id)
        assert stored is not None
        if stored.status in ("sent", "errored"):
            return stored.status
        await asyncio.sleep(0.01)
    raise AssertionError("message never settled")


async def test_retryable_errors_are_retried_until_sent(store: SqliteStore) -> None:
    peer = Peer({"m1": ["retry", "retry", "ok"]})
    queue = make_queue(store, peer)
    queue.start()
    mid = await enqueue(store, queue, "m1")
    assert await settled(store, mid) == "sent"
    assert peer.attempts == ["m1"] * 3
    events = [(e["status"], e["detail"]) for e in await store.events(mid)]
    assert events == [
        ("queued", "AA"),
        ("retrying", "peer busy"),
        ("retrying", "peer busy"),
        ("sent", None),
        ("sent", None),
    ]
    await queue.stop(1)


async def test_exhausted_retries_dead_letter_the_delivery(store: SqliteStore) -> None:
    peer = Peer({"m1": ["retry"] * 5})
    queue = make_queue(store, peer, max_attempts=3)
    queue.start()
    mid = await enqueue(store, queue, "m1")
    assert await settled(store, mid) == "errored"
    events = await store.events(mid)
    assert (
        events[-2]["status"] == "dead" and "3 attempts failed; last error: peer busy" in events[-2]["detail"]
    )
    await queue.stop(1)


async def test_permanent_error_rejects_without_retrying(store: SqliteStore) -> None:
    peer = Peer({"m1": ["permanent"]})
    queue = make_queue(store, peer)
    queue.start()
    mid = await enqueue(store, queue, "m1")
    assert await settled(store, mid) == "errored"
    assert peer.attempts == ["m1"]
    assert (await store.events(mid))[-2]["status"] == "rejected"
    await queue.stop(1)


def patient_key(store: SqliteStore, pid: str) -> str:
    """The order key the channel stores for a message of patient `pid` (a digest when encrypted)."""
    message = Message("lab", f"MSH|^~\\&|LAB|A|||x||ORU^R01|{pid}|P|2.5\rPID|1||{pid}\r".encode(),
                      HL7V2, SourceMeta("mllp"))
    return order_key(message, "PID-3.1", store.cipher)


@pytest.mark.parametrize("encrypted", [False, True], ids=["clear", "encrypted"])
async def test_one_keys_messages_never_overtake_each_other(tmp_path: Path, encrypted: bool) -> None:
    """With encryption at rest the keys are digests of the patient id: the order is the same."""
    new_key_file(tmp_path / "k1.key")
    cipher = PayloadCipher.from_files({"k1": tmp_path / "k1.key"}, "k1") if encrypted else None
    store = SqliteStore(tmp_path / "store.db", cipher=cipher)
    await store.open()
    a, b = patient_key(store, "A"), patient_key(store, "B")
    assert (a, b) == (("A", "B") if cipher is None else (cipher.order_digest("A"), cipher.order_digest("B")))
    peer = Peer({"a1": ["retry", "retry", "ok"]})
    queue = make_queue(store, peer, order_by="PID-3.1", concurrency=4)
    queue.start()
    ids = [
        await enqueue(store, queue, name, key)
        for name, key in [("a1", a), ("b1", b), ("a2", a), ("b2", b), ("a3", a)]
    ]
    for mid in ids:
        assert await settled(store, mid) == "sent"
    assert [n for n in peer.sent if n.startswith("a")] == ["a1", "a2", "a3"]
    assert peer.sent.index("b1") < peer.sent.index("a1")  # another key is not held up
    await queue.stop(1)
    await store.close()


async def test_a_new_queue_resumes_open_deliveries_from_the_store(store: SqliteStore) -> None:
    stalled = Peer()
    stalled.release.clear()
    first = make_queue(store, stalled)
    ids = [await enqueue(store, first, f"m{i}") for i in range(5)]
    await first.stop(0.1)  # never started: like an engine killed before delivering
    peer = Peer()
    second = make_queue(store, peer)
    second.start()
    for mid in ids:
        assert await settled(store, mid) == "sent"
    assert sorted(peer.sent) == [f"m{i}" for i in range(5)]
    await second.stop(1)


async def test_deliveries_older_than_max_age_are_dead_lettered(store: SqliteStore) -> None:
    peer = Peer({"m1": ["retry"] * 5})
    queue = make_queue(store, peer, max_age=0.05, max_attempts=100)
    queue.start()
    mid = await enqueue(store, queue, "m1")
    assert await settled(store, mid) == "errored"
    assert "maximum age reached" in (await store.events(mid))[-2]["detail"]
    await queue.stop(1)


def test_backoff_grows_and_is_capped() -> None:
    config = QueueConfig(initial_backoff=1, backoff_multiplier=2, max_backoff=5, jitter=0)
    assert [backoff(config, n) for n in (1, 2, 3, 4)] == [1, 2, 4, 5]
    jittered = QueueConfig(initial_backoff=10, jitter=0.2)
    assert all(8 <= backoff(jittered, 1) <= 12 for _ in range(100))


async def test_stop_waits_for_attempts_in_flight_only(store: SqliteStore) -> None:
    """Regression: SIGTERM took the whole shutdown_timeout when workers were idle or parked."""
    peer = Peer({f"m{i}": ["retry"] * 50 for i in range(20)})
    queue = make_queue(store, peer, order_by="PID-3.1", concurrency=4, max_in_memory=10,
                       initial_backoff=30, max_backoff=30)
    queue.start()
    for i in range(20):
        await enqueue(store, queue, f"m{i}", "same-patient")  # one key: the rest park behind it
    for _ in range(200):
        if peer.attempts:
            break
        await asyncio.sleep(0.01)
    # nothing is in flight now (the first delivery waits 30 s for its retry): stop must not wait
    await asyncio.wait_for(queue.stop(timeout=600), timeout=30)


class FailingOutcomes(SqliteStore):
    """The real store, whose first `failures` batches of delivery outcomes fail to commit."""

    def __init__(self, path: Path, failures: int) -> None:
        super().__init__(path)
        self.failures = failures
        self.batches: list[int] = []

    async def update_deliveries(self, updates: list[DeliveryUpdate]) -> None:
        self.batches.append(len(updates))
        if self.failures:
            self.failures -= 1
            raise StoreError("store commit failed: disk I/O error")
        await super().update_deliveries(updates)


async def test_an_outcome_batch_that_fails_to_commit_is_delivered_again(tmp_path: Path) -> None:
    store = FailingOutcomes(tmp_path / "store.db", failures=1)
    await store.open()
    peer = Peer()
    queue = make_queue(store, peer, concurrency=4)
    ids = [await enqueue(store, queue, f"m{i}") for i in range(12)]
    queue.start()
    for mid in ids:
        assert await settled(store, mid) == "sent"
    # every message reached the peer; those whose outcome was lost were sent again (at-least-once)
    assert set(peer.sent) == {f"m{i}" for i in range(12)} and len(peer.sent) > 12
    await queue.stop(1)
    await store.close()


async def test_outcomes_of_concurrent_workers_are_committed_together(store: SqliteStore) -> None:
    peer = Peer()
    peer.release.clear()
    queue = make_queue(store, peer, concurrency=8)
    ids = [await enqueue(store, queue, f"m{i}") for i in range(8)]
    queue.start()
    commits = store.commits
    for _ in range(500):  # until all eight workers are waiting in the peer
        if queue.in_flight == 8:
            break
        await asyncio.sleep(0.01)
    peer.release.set()
    for mid in ids:
        assert await settled(store, mid) == "sent"
    assert store.commits - commits < 8  # fewer commits than outcomes: they were batched
    await queue.stop(1)


async def test_a_reload_that_fails_is_tried_again_and_the_work_still_goes_out(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: a store error in a reload (a claim scan chosen as a deadlock victim, a dropped
    connection) escaped from the feed into the queue's worker tasks and ended them: the queue
    stopped delivering, silently, until the engine restarted."""
    peer = Peer()
    first = make_queue(store, peer, concurrency=1)
    ids = [await enqueue(store, first, f"m{i}") for i in range(3)]  # in the store, never offered
    real = store.claim_deliveries
    failures = [StoreError("store read failed: DeadlockDetected")]

    async def claim_failing_once(*args: Any) -> list[PendingDelivery]:
        if failures:
            raise failures.pop()
        return await real(*args)

    monkeypatch.setattr(store, "claim_deliveries", claim_failing_once)
    queue = make_queue(store, peer, concurrency=1)
    queue.feed.retry_seconds = 0.01
    queue.start()
    for mid in ids:
        assert await settled(store, mid) == "sent"
    assert not failures
    await queue.stop(1)
