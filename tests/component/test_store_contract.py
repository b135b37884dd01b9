"""The store contract, run over every store backend: SQLite and PostgreSQL (a real server).

The PostgreSQL cluster is started once per session by tests/support/postgres.py.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import cast

import psycopg
import pytest

from engine.errors import StoreError
from engine.store.base import DeliveryUpdate, IntakeRecord, NewDelivery, ProcessedRecord, Store
from engine.store.cipher import MAGIC, PayloadCipher, new_key_file
from engine.store.pg_schema import migrations
from engine.store.postgres import PostgresStore
from engine.store.sqlite import SqliteStore
from tests.support.postgres import fresh_database, shared_cluster
from tests.support.store_backends import StoreBackend

BACKENDS = ("postgresql", "sqlite")


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> StoreBackend:
    return StoreBackend.fresh(str(request.param), tmp_path)


@pytest.fixture
async def store(backend: StoreBackend) -> AsyncIterator[Store]:
    opened = backend.store()
    await opened.open()
    yield opened
    await opened.close()


def record(
    control_id: str = "C1",
    raw: bytes = b"MSH|^~\\&|LAB|A|||x||ORU^R01|C1|P|2.5\r",
    status: str = "queued",
    deliveries: list[NewDelivery] | None = None,
    sender: str = "LAB|A",
    vars: bytes | None = None,
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
        content_hash=hashlib.sha256(raw).digest(),  # as the engine computes it
        status=status,
        ack_code="AA",
        findings=None,
        raw=raw,
        response=b"ACK",
        deliveries=deliveries if deliveries is not None else [NewDelivery("archive")],
        vars=vars,
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


async def test_a_processed_batch_is_committed_in_order_or_not_at_all(store: Store) -> None:
    received = [await store.intake(record(f"R{i}", status="received", deliveries=[])) for i in range(4)]
    first, second, third, done = (r.message_id for r in received)
    await store.processed(ProcessedRecord(done, "lab", "sent", None, None, []))

    def outcome(message_id: int, *keys: str | None) -> ProcessedRecord:
        deliveries = [NewDelivery("a", cast(str, k)) for k in keys]
        return ProcessedRecord(message_id, "lab", "queued", None, None, deliveries)

    with pytest.raises(StoreError):  # the second one cannot be stored: none of the batch is
        await store.processed_all([outcome(first, "P1"), outcome(second, None), outcome(third, "P1")])
    assert [m.id for m in await store.unprocessed("lab", 0, 10)] == [first, second, third]
    ids = await store.processed_all(
        [outcome(first, "P1", "P2"), outcome(done, "P1"), outcome(second), outcome(third, "P1")]
    )
    assert [len(i) for i in ids] == [2, 0, 0, 1]  # `done` was processed already: nothing new
    assert ids[0][0] < ids[0][1] < ids[3][0]  # delivery ids follow the batch's order
    assert await store.unprocessed("lab", 0, 10) == []
    assert (await store.message(second)).status == "queued"  # type: ignore[union-attr]


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


async def test_open_line_names_the_oldest_open_delivery_of_a_key_before_an_id(store: Store) -> None:
    def keyed(control_id: str, key: str, destination: str = "a") -> IntakeRecord:
        return record(control_id=control_id, deliveries=[NewDelivery(destination, key)])

    first = await store.intake(keyed("K1", "P1"))
    second = await store.intake(keyed("K2", "P1"))
    third = await store.intake(keyed("K3", "P1"))
    other_key = await store.intake(keyed("K4", "P2"))
    other_destination = await store.intake(keyed("K5", "P1", destination="b"))
    (one,), (two,), (three,) = first.delivery_ids, second.delivery_ids, third.delivery_ids
    assert await store.open_line("lab", "a", "P1", three) == one
    assert await store.open_line("lab", "a", "P1", one) is None  # nothing older
    await store.update_delivery(DeliveryUpdate(one, first.message_id, "a", "retrying", 1, 9.0, "busy"))
    assert await store.open_line("lab", "a", "P1", three) == one  # retrying is still open
    await store.update_delivery(DeliveryUpdate(one, first.message_id, "a", "sent", 2, 0.0))
    assert await store.open_line("lab", "a", "P1", three) == two
    await store.update_delivery(DeliveryUpdate(two, second.message_id, "a", "dead", 1, 0.0, "gave up"))
    assert await store.open_line("lab", "a", "P1", three) is None
    last = other_destination.delivery_ids[0] + 1
    assert await store.open_line("lab", "a", "P1", last) == three  # other keys and destinations aside
    assert await store.open_line("lab", "a", "P2", last) == other_key.delivery_ids[0]
    assert await store.open_line("lab", "b", "P1", last) == other_destination.delivery_ids[0]


# -- routing variables (set by steps, read by `when:` and destinations) ---------------------------

VARS = b'{"enterprise_id": "E1", "notifiable_diseases": "covid"}'


async def test_routing_variables_are_kept_with_the_message(store: Store) -> None:
    stored = await store.intake(record(deliveries=[NewDelivery("authority")], vars=VARS))
    reloaded = await store.message(stored.message_id)
    assert reloaded is not None and reloaded.vars == VARS


async def test_routing_variables_set_by_processing_are_kept_and_never_erased(store: Store) -> None:
    received = await store.intake(record(status="received", deliveries=[], vars=b'{"a": "1"}'))
    assert [m.vars for m in await store.unprocessed("lab", 0, 10)] == [b'{"a": "1"}']
    assert [m.vars for m in await store.claim_unprocessed("lab", 0, 10)] == [b'{"a": "1"}']
    await store.processed(ProcessedRecord(received.message_id, "lab", "queued", None, None, [], vars=VARS))
    assert (await store.message(received.message_id)).vars == VARS  # type: ignore[union-attr]
    other = await store.intake(record(control_id="C2", status="received", deliveries=[], vars=VARS))
    await store.processed(ProcessedRecord(other.message_id, "lab", "sent", None, b"NEW", []))
    assert (await store.message(other.message_id)).vars == VARS  # type: ignore[union-attr]


# -- encryption at rest (engine/store/cipher.py) ---------------------------------------------------

PHI = (b"TEST^PATIENT", b"19800101", b"1980010112302")
PATIENT = b"MSH|^~\\&|LAB|A|||x||ORU^R01|P1|P|2.5\rPID|1||1980010112302^^^RNPP||TEST^PATIENT||19800101|F\r"


def key_file(folder: Path, key_id: str) -> Path:
    path = folder / f"{key_id}.key"
    if not path.exists():
        new_key_file(path)
    return path


def cipher(folder: Path, active: str, *key_ids: str) -> PayloadCipher:
    return PayloadCipher.from_files({k: key_file(folder, k) for k in key_ids}, active)


async def store_patient(store: Store) -> int:
    """A patient's message through every payload column: raw, answer, transformed, vars, delivery answer."""
    result = await store.intake(
        record("P1", PATIENT, "received", [], vars=b'{"pid": "TEST^PATIENT"}')
    )
    (delivery,) = await store.processed(
        ProcessedRecord(
            result.message_id, "lab", "queued", None, PATIENT + b"ZZZ|1\r", [NewDelivery("a")],
            vars=b'{"pid": "TEST^PATIENT", "dob": "19800101"}',
        )
    )
    answer = b"MSA|AA|P1\rPID|1||1980010112302\r"
    await store.update_delivery(DeliveryUpdate(delivery, result.message_id, "a", "sent", 1, 0.0, "", answer))
    return result.message_id


async def test_a_copied_database_shows_no_patient_data(backend: StoreBackend, tmp_path: Path) -> None:
    store = backend.store(cipher(tmp_path, "k1", "k1"))
    await store.open()
    try:
        message_id = await store_patient(store)
        stored = await store.message(message_id)
    finally:
        await store.close()
    assert stored is not None and stored.raw == PATIENT and stored.status == "sent"  # read back clear
    assert stored.vars == b'{"pid": "TEST^PATIENT", "dob": "19800101"}'
    dump = backend.dump()
    assert not [phi for phi in PHI if phi in dump]
    assert b"lab" in dump and b"P1" in dump  # the metadata operators search on stays in clear
    assert all(value.startswith(MAGIC + b"k1") for value in backend.payloads())


async def test_batch_reads_and_bus_claims_decrypt_payloads(backend: StoreBackend, tmp_path: Path) -> None:
    """Regression: the bus consumer's batch load (`messages`) and the sweep's claim
    (`claim_undispatched`) handed the steps the sealed bytes on PostgreSQL."""
    store = backend.store(cipher(tmp_path, "k1", "k1"))
    await store.open()
    try:
        result = await store.intake(record("P1", PATIENT, "received", [], vars=b'{"pid": "X"}'))
        (batch,) = await store.messages([result.message_id])
        claimed = []
        if isinstance(store, PostgresStore):  # the bus runs on PostgreSQL only
            claimed = await store.claim_undispatched("lab", 2e9, 0, 10)
    finally:
        await store.close()
    assert batch.raw == PATIENT and batch.vars == b'{"pid": "X"}'
    assert all(row.raw == PATIENT and row.vars == b'{"pid": "X"}' for row in claimed)
    assert len(claimed) == (1 if backend.name == "postgresql" else 0)


async def test_the_dump_check_finds_patient_data_when_not_encrypted(
    store: Store, backend: StoreBackend
) -> None:
    """Control for the test above: the same check does see clear payloads."""
    await store_patient(store)
    assert [phi for phi in PHI if phi in backend.dump()] == list(PHI)


async def test_a_tampered_payload_is_refused(backend: StoreBackend, tmp_path: Path) -> None:
    store = backend.store(cipher(tmp_path, "k1", "k1"))
    await store.open()
    try:
        message_id = await store_patient(store)
        backend.tamper(message_id)
        with pytest.raises(StoreError, match="failed its integrity check"):
            await store.message(message_id)
    finally:
        await store.close()


async def test_keys_rotate_while_the_store_is_in_use(backend: StoreBackend, tmp_path: Path) -> None:
    """`passerelle store reencrypt`: payloads in clear (stored before encryption was enabled) and
    under the old key move to the new one while another store instance keeps writing and reading."""
    plain = backend.store()
    await plain.open()
    before = await store_patient(plain)
    await plain.close()
    running = backend.store(cipher(tmp_path, "k1", "k1", "k2"))  # knows the new key, still writes k1
    rotating = backend.store(cipher(tmp_path, "k2", "k1", "k2"))
    await running.open()
    await rotating.open()
    try:
        old_key = await running.intake(record(control_id="OLD", raw=PATIENT, vars=b'{"x": "1"}'))
        moved = await rotating.reencrypt(batch=1)
        assert moved == 3  # the plain message and its delivery answer, the one under k1
        assert await rotating.reencrypt() == 0  # nothing left to move
        later = await running.intake(record(control_id="LATER", raw=PATIENT))  # the store kept working
        assert (await running.message(old_key.message_id)).raw == PATIENT  # type: ignore[union-attr]
    finally:
        await rotating.close()
        await running.close()
    new_only = backend.store(cipher(tmp_path, "k2", "k2"))
    await new_only.open()
    try:
        for message_id in (before, old_key.message_id):
            assert (await new_only.message(message_id)).raw == PATIENT  # type: ignore[union-attr]
        with pytest.raises(StoreError, match="key 'k1', which is not configured"):
            await new_only.message(later.message_id)  # written under k1 after the rotation ran
    finally:
        await new_only.close()


async def test_reencrypt_without_keys_is_refused(store: Store) -> None:
    with pytest.raises(StoreError, match="encryption is not configured"):
        await store.reencrypt()


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


async def dead_workers_deliveries(dsn: str, keys: list[str]) -> list[int]:
    """Deliveries (one per key, in order) of a worker whose lease then ran out (it died)."""
    dead = PostgresStore(dsn, lease_seconds=1.0)
    await dead.open()
    ids = [(await dead.intake(record(control_id=f"X{n}", deliveries=[NewDelivery("a", key)]))).delivery_ids[0]
           for n, key in enumerate(keys)]
    await dead.close()  # deregisters it; registered again below with a lease long expired
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        await conn.execute("INSERT INTO workers (id, started_at, lease_until) VALUES (%s, 0, 0)",
                           (dead.worker_id,))
    return ids


async def test_a_claim_waits_for_a_row_another_transaction_holds_and_keeps_the_key_in_order(
    workers: Workers,
) -> None:
    """Regression (issue #9): the claim's `FOR UPDATE SKIP LOCKED` passed over a key's older open
    delivery that another transaction held for a moment, and took the key's newer ones: the queue
    then held the newer delivery ahead of the older one (the order guard had to hold it back)."""
    first, _, dsn = workers
    older, newer, other = await dead_workers_deliveries(dsn, ["P1", "P1", "P2"])
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        async with conn.transaction():
            await conn.execute("SELECT 1 FROM deliveries WHERE id = %s FOR UPDATE", (older,))
            claim = asyncio.create_task(first.claim_deliveries("lab", "a", 0, 10))
            await asyncio.sleep(0.3)  # the claim reaches the held row (or, skipping it, returns)
        claimed = await asyncio.wait_for(claim, 30)
    assert [d.id for d in claimed] == [older, newer, other]


async def test_a_claim_returns_its_own_deliveries_while_their_outcome_commits(workers: Workers) -> None:
    """Regression (issue #9): a claim skipped (`SKIP LOCKED`) this worker's own delivery whose
    outcome its committer was writing at that moment, and so held back the key's newer ones too.
    With the heads of every patient's line in one outcome commit, the page came back empty, the
    queue took that for "memory holds all my work", and the newer deliveries stayed in the store
    while the patient's later deliveries, offered meanwhile, went out first (the order guard held
    them back). A worker's own rows need no lock: no other claim takes them from a live worker."""
    first, _, dsn = workers
    head = await first.intake(record(control_id="H1", deliveries=[NewDelivery("a", "P1")]))
    newer = await first.intake(record(control_id="H2", deliveries=[NewDelivery("a", "P1")]))
    async with await psycopg.AsyncConnection.connect(dsn) as conn, conn.transaction():
        # Stands for the committer's outcome UPDATE of the head, in flight.
        await conn.execute("SELECT 1 FROM deliveries WHERE id = %s FOR UPDATE", (head.delivery_ids[0],))
        claimed = await asyncio.wait_for(first.claim_deliveries("lab", "a", 0, 10), 30)
    assert [d.id for d in claimed] == [head.delivery_ids[0], newer.delivery_ids[0]]


async def test_a_claim_names_the_older_delivery_of_its_own_key_below_the_page(workers: Workers) -> None:
    """Regression (issue #9): a claim page from a cursor returned a key's newer delivery while an
    older one of the same key, owned by the same worker, lay below the cursor outside the queue's
    memory (committed after an earlier page had passed its id: ids are taken in one order and
    committed in another). The page now names that older delivery (`follows`) so the queue can
    hold the newer one back until the older one is in memory."""
    first, _, _ = workers
    oldest = await first.intake(record(control_id="F0", deliveries=[NewDelivery("a", "P1")]))
    older = await first.intake(record(control_id="F1", deliveries=[NewDelivery("a", "P1")]))
    newer = await first.intake(record(control_id="F2", deliveries=[NewDelivery("a", "P1")]))
    other = await first.intake(record(control_id="F3", deliveries=[NewDelivery("a", "P2")]))
    page = await first.claim_deliveries("lab", "a", older.delivery_ids[0], 10)
    # The newest of them: the oldest is typically the key's line in progress, already in memory.
    assert [(d.id, d.follows) for d in page] == [(newer.delivery_ids[0], older.delivery_ids[0]),
                                                 (other.delivery_ids[0], 0)]
    assert oldest.delivery_ids[0] < older.delivery_ids[0]
    assert all(d.follows == 0 for d in await first.claim_deliveries("lab", "a", 0, 10))  # all in one page


async def test_dispatched_marks_skip_rows_another_transaction_holds(workers: Workers) -> None:
    """Regression: the marks ran inside a group commit and waited for rows another worker's group
    commit held while it processed them, which waited in turn (a deadlock between workers)."""
    first, second, dsn = workers
    held = await first.intake(record("D1", status="received", deliveries=[]))
    free = await first.intake(record("D2", status="received", deliveries=[]))
    async with await psycopg.AsyncConnection.connect(dsn) as other, other.transaction():
        await other.execute("SELECT 1 FROM messages WHERE id = %s FOR UPDATE", (held.message_id,))
        await asyncio.wait_for(second.mark_dispatched([held.message_id, free.message_id]), 30)
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cur = await conn.execute("SELECT id, dispatched FROM messages ORDER BY id")
        assert await cur.fetchall() == [(held.message_id, False), (free.message_id, True)]


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


async def test_a_version_1_database_upgrades_and_keeps_its_messages() -> None:
    """Migration 0002 on a database made by version 1: its messages stay readable, routing variables
    are kept from then on, and running the migration again changes nothing (it is idempotent)."""
    dsn = fresh_database(shared_cluster())
    (first, second) = migrations()[:2]
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        await conn.execute(first.sql.encode())
        await conn.execute("CREATE TABLE schema_migrations (version integer PRIMARY KEY, name text NOT NULL,"
                           " applied_at timestamptz NOT NULL DEFAULT now())")
        await conn.execute("INSERT INTO schema_migrations (version, name) VALUES (1, 'initial')")
        await conn.execute("SELECT passerelle_ensure_month(1.0)")
        await conn.execute(  # a message stored by version 1 (its 21-argument intake)
            "SELECT * FROM passerelle_intake('lab', 'v1', 1.0, 'application/hl7-v2', 'mllp', '', '', '',"
            " 'OLD', 'LAB|A', NULL, '\\x00'::bytea, 'queued', 'AA', NULL, 'MSH|old'::bytea, NULL, NULL,"
            " '{}'::text[], '{}'::text[], 'w')"
        )
        await conn.commit()
    store = PostgresStore(dsn)
    await store.open()
    try:
        old = await store.message(1)
        assert old is not None and old.raw == b"MSH|old" and old.vars is None
        new = await store.intake(record(control_id="NEW", vars=VARS))
        assert (await store.message(new.message_id)).vars == VARS  # type: ignore[union-attr]
    finally:
        await store.close()
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        await conn.execute(second.sql.encode())  # again: harmless
        cur = await conn.execute("SELECT count(*) FROM pg_proc WHERE proname = 'passerelle_intake'")
        assert await cur.fetchone() == (1,)  # the version 1 function is gone, not left as an overload


async def test_a_reencrypt_page_chosen_as_deadlock_victim_is_run_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Workers' group commits and a rotation page may wait on each other's rows: PostgreSQL then
    aborts one; when it is the page, `reencrypt` runs it again instead of failing the rotation."""
    dsn = fresh_database(shared_cluster())
    plain = PostgresStore(dsn)
    await plain.open()
    await plain.intake(record(control_id="A"))  # in clear: stored before encryption was enabled
    await plain.close()
    store = PostgresStore(dsn, cipher=cipher(tmp_path, "k2", "k1", "k2"))
    await store.open()
    try:
        real_page, failures = store._reencrypt_page, [psycopg.errors.DeadlockDetected("deadlock detected")]

        async def page(*args: object) -> tuple[int | None, int]:
            if failures:
                raise StoreError("store read failed") from failures.pop()
            return await real_page(*args)  # type: ignore[arg-type]

        monkeypatch.setattr(store, "_reencrypt_page", page)
        assert await store.reencrypt() == 1
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
