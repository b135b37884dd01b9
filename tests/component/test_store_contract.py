"""The store contract, run over every store backend: SQLite and PostgreSQL (a real server).

The PostgreSQL cluster is started once per session by tests/support/postgres.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from engine.errors import StoreError
from engine.store.base import DeliveryUpdate, IntakeRecord, NewDelivery, ProcessedRecord, Store
from engine.store.postgres import PostgresStore
from engine.store.sqlite import SqliteStore
from tests.support.postgres import fresh_database, shared_cluster

BACKENDS: dict[str, Callable[[Path], Store]] = {
    "sqlite": lambda tmp: SqliteStore(tmp / "store.db"),
    "postgresql": lambda tmp: PostgresStore(fresh_database(shared_cluster())),
}


@pytest.fixture(params=sorted(BACKENDS))
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    backend = BACKENDS[request.param](tmp_path)
    await backend.open()
    yield backend
    await backend.close()


def record(
    control_id: str = "C1",
    raw: bytes = b"MSH|^~\\&|LAB|A|||x||ORU^R01|C1|P|2.5\r",
    status: str = "queued",
    deliveries: list[NewDelivery] | None = None,
    sender: str = "LAB|A",
) -> IntakeRecord:
    return IntakeRecord(
        channel="lab",
        channel_version="v1",
        received_at=1.0,
        content_type="application/hl7-v2",
        source_type="mllp",
        peer="127.0.0.1:1",
        tls_subject="",
        filename="",
        control_id=control_id,
        sender=sender,
        content_hash=raw,
        status=status,
        ack_code="AA",
        findings=None,
        raw=raw,
        response=b"ACK",
        deliveries=deliveries if deliveries is not None else [NewDelivery("archive")],
    )


async def test_intake_is_readable_back_with_its_answer_and_deliveries(store: Store) -> None:
    result = await store.intake(record())
    stored = await store.message(result.message_id)
    assert stored is not None and stored.raw == record().raw and stored.response == b"ACK"
    assert stored.status == "queued" and len(result.delivery_ids) == 1
    pending = await store.open_deliveries("lab", "archive", 0, 10)
    assert [p.id for p in pending] == list(result.delivery_ids)


async def test_identical_resend_is_a_duplicate_and_not_stored_twice(store: Store) -> None:
    first = await store.intake(record())
    again = await store.intake(record())
    assert again.duplicate and again.message_id == first.message_id and again.ack_code == "AA"
    stats = await store.stats()
    assert stats["channels"]["lab"]["messages"] == {"queued": 1}


async def test_same_control_id_from_another_sender_is_not_a_duplicate(store: Store) -> None:
    first = await store.intake(record())
    other = await store.intake(record(sender="LAB|B"))
    assert not other.duplicate and other.message_id != first.message_id


async def test_reused_control_id_with_different_content_is_a_conflict(store: Store) -> None:
    await store.intake(record())
    clash = await store.intake(record(raw=b"MSH|^~\\&|LAB|A|||x||ORU^R01|C1|P|2.5\rPID|1\r"))
    assert clash.conflict and not clash.duplicate


async def test_delivery_outcomes_settle_the_message_status(store: Store) -> None:
    result = await store.intake(record(deliveries=[NewDelivery("a"), NewDelivery("b")]))
    first, second = result.delivery_ids
    await store.update_delivery(DeliveryUpdate(first, result.message_id, "a", "sent", 1, 0.0))
    assert (await store.message(result.message_id)).status == "queued"  # type: ignore[union-attr]
    await store.update_delivery(DeliveryUpdate(second, result.message_id, "b", "retrying", 1, 5.0, "timeout"))
    assert (await store.message(result.message_id)).status == "queued"  # type: ignore[union-attr]
    await store.update_delivery(DeliveryUpdate(second, result.message_id, "b", "dead", 2, 5.0, "gave up"))
    assert (await store.message(result.message_id)).status == "errored"  # type: ignore[union-attr]
    statuses = [e["status"] for e in await store.events(result.message_id)]
    assert statuses == ["queued", "sent", "retrying", "dead", "errored"]


async def test_received_message_is_listed_until_processed(store: Store) -> None:
    result = await store.intake(record(status="received", deliveries=[]))
    assert [m.id for m in await store.unprocessed("lab", 0, 10)] == [result.message_id]
    ids = await store.processed(
        ProcessedRecord(result.message_id, "lab", "queued", None, b"NEW", [NewDelivery("a")])
    )
    assert len(ids) == 1 and await store.unprocessed("lab", 0, 10) == []
    stored = await store.message(result.message_id)
    assert stored is not None and stored.transformed == b"NEW" and stored.raw == record().raw


async def test_concurrent_writes_share_commits(store: Store) -> None:
    results = await asyncio.gather(*(store.intake(record(control_id=f"C{i}")) for i in range(500)))
    assert len({r.message_id for r in results}) == 500
    commits = getattr(store, "commits", None)
    if commits is not None:  # group commit: far fewer commits than writes
        assert commits < 250


async def test_a_full_store_fails_whole_batches_and_keeps_what_it_committed(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "store.db", max_bytes=512 * 1024)
    await store.open()
    try:
        big = b"MSH|^~\\&|LAB|A|||x||ORU^R01|X|P|2.5\r" + b"OBX|1|ST|x||" + b"v" * 20_000 + b"\r"
        outcomes: list[object] = []
        for wave in range(6):  # one batch per wave of 10 concurrent writes
            outcomes += await asyncio.gather(
                *(
                    store.intake(record(control_id=f"C{wave}-{i}", raw=big + f"{wave}-{i}".encode()))
                    for i in range(10)
                ),
                return_exceptions=True,
            )
        failed = [o for o in outcomes if isinstance(o, BaseException)]
        stored = [o for o in outcomes if not isinstance(o, BaseException)]
        assert stored and failed and all(isinstance(f, StoreError) and "full" in str(f) for f in failed)
        stats = await store.stats()
        assert stats["channels"]["lab"]["messages"]["queued"] == len(stored)
        for result in stored:
            assert (await store.message(result.message_id)) is not None  # type: ignore[attr-defined]
    finally:
        await store.close()


async def test_writes_after_close_raise_store_error(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "store.db")
    await store.open()
    await store.close()
    with pytest.raises(StoreError):
        await store.intake(record())


async def test_claims_list_what_this_worker_may_run(store: Store) -> None:
    result = await store.intake(record(deliveries=[NewDelivery("a", "P1")]))
    claimed = await store.claim_deliveries("lab", "a", 0, 10)
    assert [d.id for d in claimed] == list(result.delivery_ids) and claimed[0].order_key == "P1"
    received = await store.intake(record(control_id="C2", status="received", deliveries=[]))
    assert [m.id for m in await store.claim_unprocessed("lab", 0, 10)] == [received.message_id]


# -- PostgreSQL only: several workers on one database, migrations, retention --------------------

Workers = tuple[PostgresStore, PostgresStore, str]


@pytest.fixture
async def workers() -> AsyncIterator[Workers]:
    """Two worker processes' stores on one database, with a short lease."""
    dsn = fresh_database(shared_cluster())
    first, second = PostgresStore(dsn, lease_seconds=1.0), PostgresStore(dsn, lease_seconds=1.0)
    for store in (first, second):
        store.on_lease_lost = lambda: None  # a slow test machine must not end the test process
    await first.open()
    await second.open()
    yield first, second, dsn
    await second.close()
    await first.close()


async def test_work_belongs_to_the_worker_that_stored_it(workers: Workers) -> None:
    first, second, _ = workers
    mine = await first.intake(record(deliveries=[NewDelivery("a")]))
    received = await first.intake(record(control_id="R1", status="received", deliveries=[]))
    assert await second.claim_deliveries("lab", "a", 0, 10) == []
    assert await second.claim_unprocessed("lab", 0, 10) == []
    assert [d.id for d in await first.claim_deliveries("lab", "a", 0, 10)] == list(mine.delivery_ids)
    assert [m.id for m in await first.claim_unprocessed("lab", 0, 10)] == [received.message_id]


async def test_a_dead_workers_work_is_taken_over_after_its_lease(
    workers: Workers,
) -> None:
    first, second, dsn = workers
    dead = PostgresStore(dsn, lease_seconds=1.0)
    await dead.open()
    orphan = await dead.intake(record(deliveries=[NewDelivery("a")]))
    for task in dead._tasks:  # the process "dies": no more heartbeats, no clean close
        task.cancel()
    await asyncio.sleep(1.3)
    assert [d.id for d in await second.claim_deliveries("lab", "a", 0, 10)] == list(orphan.delivery_ids)
    assert await first.claim_deliveries("lab", "a", 0, 10) == []
    delivery = orphan.delivery_ids[0]
    await second.update_delivery(DeliveryUpdate(delivery, orphan.message_id, "a", "sent", 1, 0.0))
    await dead.update_delivery(DeliveryUpdate(delivery, orphan.message_id, "a", "dead", 9, 0.0))
    stored = await second.message(orphan.message_id)
    assert stored is not None and stored.status == "sent"  # the stale worker's outcome changed nothing
    dead._tasks = []
    await dead.close()


async def test_one_keys_deliveries_stay_with_one_worker(workers: Workers) -> None:
    first, second, _ = workers
    older = await first.intake(record(control_id="K1", deliveries=[NewDelivery("a", "P1")]))
    newer = await second.intake(record(control_id="K2", deliveries=[NewDelivery("a", "P1")]))
    other = await second.intake(record(control_id="K3", deliveries=[NewDelivery("a", "P2")]))
    assert newer.delivery_ids == (0,) and other.delivery_ids[0] > 0  # P1 is the first worker's
    assert await second.claim_deliveries("lab", "a", 0, 10) == [
        d for d in await second.claim_deliveries("lab", "a", 0, 10) if d.order_key == "P2"
    ]
    claimed = await first.claim_deliveries("lab", "a", 0, 10)
    assert [d.order_key for d in claimed] == ["P1", "P1"]  # the key's later delivery joins its owner
    await first.update_delivery(DeliveryUpdate(older.delivery_ids[0], older.message_id, "a", "sent", 1, 0.0))
    assert all(d.order_key == "P2" for d in await second.claim_deliveries("lab", "a", 0, 10))


async def test_migrations_apply_once_and_retention_drops_final_months() -> None:
    dsn = fresh_database(shared_cluster())
    store = PostgresStore(dsn)
    await store.open()
    await store.close()
    store = PostgresStore(dsn)  # a second open finds every migration applied
    await store.open()
    try:
        old_final = await store.intake(record(control_id="OLD", status="rejected", deliveries=[]))
        jan = 86400.0 * 31 * 12  # 1971: another month than 1970
        kept = await store.intake(record(control_id="OPEN", deliveries=[NewDelivery("a")]))
        assert kept.message_id and old_final.message_id
        later = record(control_id="NEW", status="rejected", deliveries=[])
        later.received_at = jan
        await store.intake(later)
        assert await store.apply_retention(jan + 86400 * 62) == ["y1971m01"]  # 1970-01 holds an open one
        assert await store.message(old_final.message_id) is not None
        sent = DeliveryUpdate(kept.delivery_ids[0], kept.message_id, "a", "sent", 1, 0.0)
        await store.update_delivery(sent)
        assert await store.apply_retention(jan + 86400 * 62) == ["y1970m01"]
        assert await store.message(old_final.message_id) is None
        again = await store.intake(record(control_id="OLD", status="rejected", deliveries=[]))
        assert not again.duplicate  # its de-duplication key went with its month
    finally:
        await store.close()


async def test_a_batch_of_outcomes_settles_each_message(store: Store) -> None:
    sent = await store.intake(record("B1", raw=b"MSH|^~\\&|LAB|A|||x||ORU^R01|B1|P|2.5\r"))
    dead = await store.intake(record("B2", raw=b"MSH|^~\\&|LAB|A|||x||ORU^R01|B2|P|2.5\r"))
    busy = await store.intake(record("B3", raw=b"MSH|^~\\&|LAB|A|||x||ORU^R01|B3|P|2.5\r"))
    await store.update_deliveries(
        [
            DeliveryUpdate(sent.delivery_ids[0], sent.message_id, "archive", "sent", 1, 0.0, "", b"OK"),
            DeliveryUpdate(dead.delivery_ids[0], dead.message_id, "archive", "dead", 3, 0.0, "gave up"),
            DeliveryUpdate(busy.delivery_ids[0], busy.message_id, "archive", "retrying", 1, 9.0, "busy"),
        ]
    )
    statuses = {m: (await store.message(m)).status for m in (sent.message_id, dead.message_id)}  # type: ignore[union-attr]
    assert statuses == {sent.message_id: "sent", dead.message_id: "errored"}
    assert [e["status"] for e in await store.events(busy.message_id)] == ["queued", "retrying"]
    still_open = await store.open_deliveries("lab", "archive", 0, 10)
    assert [(d.id, d.attempts) for d in still_open] == [(busy.delivery_ids[0], 1)]


async def test_resends_arriving_together_are_stored_once(store: Store) -> None:
    one, two, fresh = await asyncio.gather(
        store.intake(record()), store.intake(record()), store.intake(record("C2"))
    )
    assert one.message_id == two.message_id and [one.duplicate, two.duplicate].count(True) == 1
    assert fresh.message_id != one.message_id and not fresh.duplicate
    stats = await store.stats()
    assert sum(stats["channels"]["lab"]["messages"].values()) == 2
