"""The send-time order guard of a shared store (issue #9), on a real PostgreSQL server.

A destination queue's memory can miss an older delivery of a key that its own worker owns in the
store: a processing commit whose caller was cancelled before it offered the new deliveries (a bus
consumer stopped at a rebalance) leaves them owned but never handed to the queue, which finds them
only at its next claim scan. A newer delivery of the same patient, offered meanwhile, was sent
first (the kill-a-worker bus test saw it). The guard asks the store before each keyed attempt and
gives the line back when an older delivery of the key is still open.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import pytest
import structlog
from structlog.testing import capture_logs

from engine import dispatch
from engine.channel import message_loader
from engine.config import QueueConfig
from engine.dispatch import DestinationQueue
from engine.message import HL7V2, Message, SourceMeta
from engine.store.base import IntakeRecord, NewDelivery
from engine.store.postgres import PostgresStore
from tests.support.postgres import fresh_database, shared_cluster

KEY = "PAT-GUARD-1"  # stands for a patient id: it must never be logged


class Recorder:
    """A destination that records what it was sent, in order."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    async def send(self, message: Message) -> bytes | None:
        self.sent.append(message.raw.decode())
        return b"OK"

    async def close(self) -> None:
        return None


@pytest.fixture
async def store() -> AsyncIterator[PostgresStore]:
    opened = PostgresStore(fresh_database(shared_cluster()), lease_seconds=60.0)
    # No periodic claim scan during the test: the queue would find the unoffered delivery by
    # itself (late, as in the bus test) if a scan happened to run before the newer one is offered,
    # and the guard would have nothing to do (a race of the test seen once on a loaded machine).
    opened.rescan_interval = 3600.0
    opened.on_lease_lost = lambda: None
    await opened.open()
    yield opened
    await opened.close()


async def stored(store: PostgresStore, name: str) -> tuple[int, Message]:
    """A queued message with one delivery of KEY to `out`, owned by this worker: (delivery, message)."""
    raw = name.encode()
    result = await store.intake(
        IntakeRecord("lab", "v1", time.time(), HL7V2, "mllp", "", "", "", name, "S", raw, "queued", "AA",
                     None, raw, deliveries=[NewDelivery("out", KEY)])
    )  # fmt: skip
    message = Message("lab", raw, HL7V2, SourceMeta("mllp"), id=result.message_id, control_id=name)
    return result.delivery_ids[0], message


async def until(condition: Callable[[], bool], seconds: float = 60.0) -> None:
    """Poll `condition` (the queue and the store signal nothing a test could wait on); fail
    loudly if it never holds, rather than let a later assertion report something else."""
    for _ in range(int(seconds / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"still not true after {seconds:.0f} s")


async def test_a_newer_delivery_of_a_key_waits_for_an_older_one_the_queue_never_saw(
    store: PostgresStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    peer = Recorder()
    config = QueueConfig(order_by="PID-3[2].1", initial_backoff=0.01, max_backoff=0.02, jitter=0.0)
    queue = DestinationQueue("lab", "out", peer, config, store, message_loader(store, ""))
    queue.start()
    await until(lambda: not queue.feed.spilled)  # the first claim scan found nothing: memory mode
    older, _ = await stored(store, "first")  # committed, owned here, never offered
    newer, message = await stored(store, "second")
    assert 0 < older < newer
    with capture_logs() as logs:
        # A logger first used inside the capture: the module's own may have cached an earlier
        # test's configuration (engine/log.py caches loggers on first use), which capture_logs
        # cannot see into (the test failed after other tests in one run, passed alone).
        monkeypatch.setattr(dispatch, "log", structlog.get_logger("passerelle.dispatch"))
        queue.offer(newer, message, KEY)
        await until(lambda: len(peer.sent) >= 2)
    await queue.stop(1)
    assert peer.sent == ["first", "second"]
    guard = [entry for entry in logs if entry["event"] == "delivery_out_of_line"]
    assert guard and guard[0]["delivery"] == newer and guard[0]["open_before"] == older
    assert guard[0]["older_where"] == "store only" and guard[0]["older_owner"] == "this worker"
    assert guard[0]["newer_from"] == "offer"
    assert KEY not in repr(logs)


async def test_a_page_from_above_an_older_unheld_delivery_waits_for_it(
    store: PostgresStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression (issue #9; what the guard caught in most kill-a-worker bus runs): a claim page
    read from the feed's cursor handed out a patient's newer delivery while an older one of the
    same patient, owned by this worker, lay below the cursor and was not in the queue's memory (it
    was committed after an earlier page had passed its id, and offered while the feed was spilled,
    so only the next reload would bring it). The queue now cuts such a page at that delivery and
    reloads from below it: the guard has nothing to do and the older one goes first."""
    peer = Recorder()
    config = QueueConfig(order_by="PID-3[2].1", initial_backoff=0.01, max_backoff=0.02, jitter=0.0)
    queue = DestinationQueue("lab", "out", peer, config, store, message_loader(store, ""))
    older, _ = await stored(store, "first")  # committed, owned here, never offered
    await stored(store, "second")  # the newer delivery of the same key
    page = await queue._reload(older, 10)  # what the feed reads from a cursor at the older delivery
    assert page == []  # the newer one is not handed out ahead of the older one
    with capture_logs() as logs:
        monkeypatch.setattr(dispatch, "log", structlog.get_logger("passerelle.dispatch"))  # see above
        queue.start()  # the feed reads from below the older delivery, as after the cut
        await until(lambda: len(peer.sent) >= 2)
    await queue.stop(1)
    assert peer.sent == ["first", "second"]
    assert not [entry for entry in logs if entry["event"] == "delivery_out_of_line"]
