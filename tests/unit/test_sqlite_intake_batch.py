"""SQLite intake batching (one executemany per table per commit): a batch gives each record the
same answer as storing them one after the other would, resends and conflicts within the batch
included, and ids follow the ones already stored."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from engine.store.base import IntakeRecord, NewDelivery
from engine.store.schema import SCHEMA
from engine.store.sqlite import IntakeOp, intake_many, run_ops


def record(control_id: str, raw: bytes = b"MSH|x", deliveries: int = 1) -> IntakeRecord:
    return IntakeRecord(
        "lab", "v1", 1.0, "application/hl7-v2", "mllp", "", "", "", control_id, "LAB", raw, "queued",
        "AA", None, raw, deliveries=[NewDelivery(f"d{i}") for i in range(deliveries)],
    )  # fmt: skip


def database(tmp_path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(tmp_path / "s.db", isolation_level=None)
    conn.executescript(SCHEMA)
    return conn


def test_a_batch_answers_like_one_intake_after_the_other(tmp_path: Path) -> None:
    conn = database(tmp_path)
    (before,) = intake_many(conn, [record("OLD", deliveries=2)])
    changed = record("A", raw=b"MSH|changed")
    batch = [record("A"), record("A"), changed, record("OLD"), record("B", deliveries=2)]
    new, resend, clash, old_resend, other = intake_many(conn, batch)
    assert before.message_id == 1 and before.delivery_ids == (1, 2)
    assert (new.message_id, new.delivery_ids, new.duplicate) == (2, (3,), False)
    assert resend.duplicate and resend.message_id == 2 and resend.delivery_ids == ()
    assert clash.conflict and clash.message_id == 2
    assert old_resend.duplicate and old_resend.message_id == 1
    assert (other.message_id, other.delivery_ids) == (3, (4, 5))
    assert conn.execute("SELECT count(*) FROM messages").fetchone()[0] == 3
    assert conn.execute("SELECT count(*) FROM contents").fetchone()[0] == 3
    rows = conn.execute("SELECT id, message_id, destination, status FROM deliveries ORDER BY id").fetchall()
    assert rows == [(1, 1, "d0", "queued"), (2, 1, "d1", "queued"), (3, 2, "d0", "queued"),
                    (4, 3, "d0", "queued"), (5, 3, "d1", "queued")]  # fmt: skip


def test_other_operations_of_the_batch_keep_their_results(tmp_path: Path) -> None:
    conn = database(tmp_path)

    def count(c: sqlite3.Connection) -> int:
        return int(c.execute("SELECT count(*) FROM messages").fetchone()[0])

    results = run_ops(conn, [count, IntakeOp(record("A")), IntakeOp(record("B")), count])
    assert [r.message_id for r in results[1:3]] == [1, 2]
    assert results[0] == results[3] == 2  # the batch's intakes run first: nothing can depend on them
