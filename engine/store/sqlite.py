"""SQLite message store: WAL, synchronous=FULL, one writer thread doing group commits.

Why a writer thread: SQLite allows one writer at a time and every commit costs an fsync.
All writes are queued to one thread that takes everything waiting (up to `max_batch`), runs
it in one transaction and commits once; the asyncio futures of the whole batch are then
resolved with one `call_soon_threadsafe`. sqlite3 releases the GIL while it steps and syncs,
so the event loop keeps serving connections meanwhile. Reads use their own connections
(WAL readers never block the writer).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from engine.errors import StoreError
from engine.store.base import (
    NOT_ENCRYPTED,
    OPEN_DELIVERY_STATUSES,
    DeliveryUpdate,
    IntakeRecord,
    IntakeResult,
    NewDelivery,
    PendingDelivery,
    ProcessedRecord,
    Store,
    StoredMessage,
)
from engine.store.cipher import PayloadCipher
from engine.store.rows import (
    CONTENT_COLUMNS,
    MESSAGE_COLUMNS,
    content_values,
    message_values,
    stored_message,
    stored_select,
)
from engine.store.schema import SCHEMA
from engine.store.sealing import (
    SEALED_TABLES,
    SealedTable,
    clear_message,
    resealed,
    seal_intake,
    seal_processed,
    seal_update,
)

Op = Callable[[sqlite3.Connection], Any]
_Job = tuple[Op, asyncio.Future[Any]]
_STOP = object()
READER_CACHE_KIB = 512  # per reader connection (SQLite's default is 2,000 KiB)

_MESSAGE_COLUMNS = stored_select("messages", "contents")
_MESSAGES_WITH_CONTENT = "messages JOIN contents ON contents.message_id = messages.id"
_INSERT_MESSAGE = (  # ids are assigned by the writer (intake_many), the other columns by rows.py
    f"INSERT INTO messages (id, {', '.join(MESSAGE_COLUMNS)})"
    f" VALUES (?, {', '.join('?' * len(MESSAGE_COLUMNS))})"
)
_INSERT_CONTENT = (
    f"INSERT INTO contents (message_id, {', '.join(CONTENT_COLUMNS)})"
    f" VALUES (?, {', '.join('?' * len(CONTENT_COLUMNS))})"
)


def connect(path: Path, synchronous: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30.0)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={'FULL' if synchronous == 'full' else 'NORMAL'}")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


class SqliteStore(Store):
    def __init__(
        self,
        path: Path,
        synchronous: str = "full",
        max_batch: int = 512,
        max_bytes: int = 0,
        cipher: PayloadCipher | None = None,
    ) -> None:
        self.path = path
        self.cipher = cipher
        self.max_bytes = max_bytes
        self.synchronous = synchronous
        self.max_batch = max_batch
        self._jobs: queue.SimpleQueue[_Job | object] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self.commits = 0

    # -- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = await asyncio.to_thread(self._open_writer)
        self._writer = threading.Thread(
            target=self._write_loop, args=(conn,), name="store-writer", daemon=True
        )
        self._writer.start()

    def _open_writer(self) -> sqlite3.Connection:
        try:
            conn = connect(self.path, self.synchronous)
            conn.executescript(SCHEMA)
            migrate(conn)
            if self.max_bytes:
                page_size = conn.execute("PRAGMA page_size").fetchone()[0]
                conn.execute(f"PRAGMA max_page_count={max(1, self.max_bytes // page_size)}")
        except sqlite3.Error as err:
            raise StoreError(f"cannot open the store at {self.path}: {err}") from err
        return conn

    async def close(self) -> None:
        if self._writer is not None:
            self._jobs.put(_STOP)
            await asyncio.to_thread(self._writer.join)
            self._writer = None
        with self._readers_lock:
            for conn in self._readers:
                conn.close()
            self._readers.clear()

    # -- the writer --------------------------------------------------------------------------

    async def _write(self, op: Op) -> Any:
        if self._writer is None:
            raise StoreError("the store is not open")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._jobs.put((op, future))
        return await future

    def _write_loop(self, conn: sqlite3.Connection) -> None:
        try:
            while (batch := self._next_batch()) is not None:
                self._run_batch(conn, batch)
        finally:
            conn.close()

    def _next_batch(self) -> list[_Job] | None:
        first = self._jobs.get()
        if first is _STOP:
            return None
        batch: list[_Job] = [first]  # type: ignore[list-item]
        while len(batch) < self.max_batch:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is _STOP:
                self._jobs.put(_STOP)
                break
            batch.append(job)  # type: ignore[arg-type]
        return batch

    def _run_batch(self, conn: sqlite3.Connection, batch: list[_Job]) -> None:
        try:
            conn.execute("BEGIN IMMEDIATE")
            results = run_ops(conn, [op for op, _ in batch])
            conn.execute("COMMIT")
            self.commits += 1
        except sqlite3.Error as err:
            rollback(conn)
            fail_all(batch, StoreError(f"store commit failed: {err}"))
            return
        except Exception:
            # A bug in one operation must not fail the others: run each in its own transaction.
            rollback(conn)
            self._run_one_by_one(conn, batch)
            return
        resolve_all(batch, results)

    def _run_one_by_one(self, conn: sqlite3.Connection, batch: list[_Job]) -> None:
        for op, future in batch:
            try:
                conn.execute("BEGIN IMMEDIATE")
                result = op(conn)
                conn.execute("COMMIT")
            except Exception as err:
                rollback(conn)
                fail_all([(op, future)], StoreError(f"store operation failed: {err}"))
            else:
                resolve_all([(op, future)], [result])

    # -- reads -------------------------------------------------------------------------------

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = connect(self.path, self.synchronous)
            conn.execute("PRAGMA query_only=ON")
            # Readers look rows up by key; the kernel's page cache holds the file. A small cache
            # per reader thread keeps the engine's memory flat however many threads have read.
            conn.execute(f"PRAGMA cache_size=-{READER_CACHE_KIB}")
            self._local.conn = conn
            with self._readers_lock:
                self._readers.append(conn)
        return conn

    async def _read(self, query: Callable[[sqlite3.Connection], Any]) -> Any:
        def run() -> Any:
            try:
                return query(self._reader())
            except sqlite3.Error as err:
                raise StoreError(f"store read failed: {err}") from err

        return await asyncio.to_thread(run)

    # -- encryption at rest (engine/store/sealing.py) -----------------------------------------

    def _clear(self, m: StoredMessage) -> StoredMessage:
        return clear_message(self.cipher, m)

    async def reencrypt(self, batch: int = 500) -> int:
        """Move every payload to the active key, one page per group commit, while the engine runs
        (the writer thread runs each page: no write of the engine can slip between its read and
        its update)."""
        cipher = self.cipher
        if cipher is None:
            raise StoreError(NOT_ENCRYPTED)
        total = 0
        for table in SEALED_TABLES:
            cursor = -1
            while cursor:
                page = functools.partial(
                    reencrypt_op, cipher=cipher, table=table, after=max(cursor, 0), batch=batch
                )
                step: tuple[int, int] = await self._write(page)
                cursor, moved = step
                total += moved
        return total

    # -- the interface -------------------------------------------------------------------------

    async def intake(self, record: IntakeRecord) -> IntakeResult:
        result: IntakeResult = await self._write(IntakeOp(seal_intake(self.cipher, record)))
        return result

    async def processed_all(self, records: list[ProcessedRecord]) -> list[tuple[int, ...]]:
        sealed = [seal_processed(self.cipher, r) for r in records]
        ids: list[tuple[int, ...]] = await self._write(lambda conn: [processed_op(conn, r) for r in sealed])
        return ids

    async def update_delivery(self, update: DeliveryUpdate) -> None:
        update = seal_update(self.cipher, update)
        await self._write(lambda conn: update_delivery_op(conn, update))

    async def update_deliveries(self, updates: list[DeliveryUpdate]) -> None:
        updates = [seal_update(self.cipher, u) for u in updates]
        await self._write(lambda conn: update_deliveries_op(conn, updates))

    async def requeue_delivery(self, delivery_id: int) -> PendingDelivery | None:
        row: PendingDelivery | None = await self._write(lambda conn: requeue_delivery_op(conn, delivery_id))
        return row

    async def unprocessed(self, channel: str, after_id: int, limit: int) -> list[StoredMessage]:
        sql = (
            f"SELECT {_MESSAGE_COLUMNS} FROM {_MESSAGES_WITH_CONTENT}"
            " WHERE channel=? AND status='received' AND id>? ORDER BY id LIMIT ?"
        )
        rows = await self._read(lambda c: c.execute(sql, (channel, after_id, limit)).fetchall())
        return [self._clear(stored_message(row)) for row in rows]

    async def open_deliveries(
        self, channel: str, destination: str, after_id: int, limit: int
    ) -> list[PendingDelivery]:
        sql = (
            "SELECT id, message_id, destination, status, order_key, attempts, created_at, next_attempt_at"
            " FROM deliveries WHERE channel=? AND destination=? AND status IN ('queued','retrying')"
            " AND id>? ORDER BY id LIMIT ?"
        )
        rows = await self._read(lambda c: c.execute(sql, (channel, destination, after_id, limit)).fetchall())
        return [PendingDelivery(*row) for row in rows]

    async def open_line(self, channel: str, destination: str, order_key: str, before_id: int) -> int | None:
        sql = (
            "SELECT min(id) FROM deliveries WHERE channel=? AND destination=?"
            " AND status IN ('queued','retrying') AND order_key=? AND id<?"
        )
        params = (channel, destination, order_key, before_id)
        row = await self._read(lambda c: c.execute(sql, params).fetchone())
        return int(row[0]) if row and row[0] is not None else None

    async def message(self, message_id: int) -> StoredMessage | None:
        sql = f"SELECT {_MESSAGE_COLUMNS} FROM {_MESSAGES_WITH_CONTENT} WHERE id=?"
        row = await self._read(lambda c: c.execute(sql, (message_id,)).fetchone())
        return self._clear(stored_message(row)) if row else None

    async def events(self, message_id: int) -> list[dict[str, Any]]:
        sql = (
            "SELECT received_at, intake_status, NULL, ack_code FROM messages WHERE id=? UNION ALL"
            " SELECT at, status, destination, detail"
            " FROM (SELECT * FROM events WHERE message_id=? ORDER BY id)"
        )
        rows = await self._read(lambda c: c.execute(sql, (message_id, message_id)).fetchall())
        return [{"at": r[0], "status": r[1], "destination": r[2], "detail": r[3]} for r in rows]

    async def record_channel_version(self, channel: str, version: str, content: str) -> None:
        sql = "INSERT OR IGNORE INTO channel_versions (channel, version, loaded_at, content) VALUES (?,?,?,?)"
        await self._write(lambda conn: conn.execute(sql, (channel, version, time.time(), content)))

    async def channel_versions(self, channel: str) -> list[dict[str, Any]]:
        sql = (
            "SELECT v.version, v.loaded_at, v.content, (SELECT count(*) FROM messages m"
            " WHERE m.channel = v.channel AND m.channel_version = v.version)"
            " FROM channel_versions v WHERE v.channel=? ORDER BY v.loaded_at DESC, v.rowid DESC"
        )
        rows = await self._read(lambda c: c.execute(sql, (channel,)).fetchall())
        return [{"version": r[0], "loaded_at": r[1], "content": r[2], "messages": r[3]} for r in rows]

    async def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = await self._read(stats_query)
        return stats


# -- operations run by the writer thread (plain functions of a connection) -------------------


def migrate(conn: sqlite3.Connection) -> None:
    """Bring a database made by an earlier version up to date (idempotent)."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(contents)")}
    if "vars" not in columns:
        conn.execute("ALTER TABLE contents ADD COLUMN vars BLOB")


def run_ops(conn: sqlite3.Connection, ops: list[Op]) -> list[Any]:
    """A batch's operations in one transaction, their results in order. The intakes of the batch
    run together first (`intake_many`): nothing else in a batch can depend on a message stored in
    the same batch, since its id is only known to the caller once the batch is committed."""
    intakes = [i for i, op in enumerate(ops) if isinstance(op, IntakeOp)]
    results: list[Any] = [None] * len(ops)
    if intakes:
        records = [ops[i].record for i in intakes]  # type: ignore[attr-defined]
        for i, result in zip(intakes, intake_many(conn, records), strict=True):
            results[i] = result
    taken = set(intakes)
    for i, op in enumerate(ops):
        if i not in taken:
            results[i] = op(conn)
    return results


class IntakeOp:
    """The intake of one record: batched with the other intakes of a commit by `run_ops`."""

    def __init__(self, record: IntakeRecord) -> None:
        self.record = record

    def __call__(self, conn: sqlite3.Connection) -> IntakeResult:
        return intake_many(conn, [self.record])[0]


_INSERT_DELIVERY = (
    "INSERT INTO deliveries (id, message_id, channel, destination, status, order_key, attempts,"
    " created_at, next_attempt_at, updated_at) VALUES (?,?,?,?,'queued',?,0,?,?,?)"
)
_Existing = tuple[int, bytes, str, str, str | None]  # id, content_hash, status, ack_code, findings
_Keys = dict[tuple[str, str | None], _Existing]  # (channel, dedup_key) -> the stored message


def intake_many(conn: sqlite3.Connection, records: list[IntakeRecord]) -> list[IntakeResult]:
    """The hot path: every message row, content row and delivery of a batch, one executemany each.

    Ids are assigned here (the writer is the only one inserting: max(id) + 1, which is what SQLite
    itself would assign), so no per-row round trip is needed to learn them. De-duplication: one
    `IN (...)` query per channel for the batch's keys, and the keys of the batch itself, in order
    (a resend within the same batch is a duplicate of the first). The intake status is kept in
    the message row (`intake_status`): the first event of its history, so no event row here.
    """
    known = existing_keys(conn, records)
    next_message = next_id(conn, "messages")
    next_delivery = next_id(conn, "deliveries")
    messages: list[tuple[Any, ...]] = []
    contents: list[tuple[Any, ...]] = []
    deliveries: list[tuple[Any, ...]] = []
    results = []
    for r in records:
        key = (r.channel, r.dedup_key)
        if r.dedup_key is not None and key in known:
            results.append(known_result(known[key], r.content_hash))
            continue
        message_id, next_message = next_message, next_message + 1
        if r.dedup_key is not None:
            known[key] = (message_id, r.content_hash, r.status, r.ack_code, r.findings)
        t = r.received_at
        messages.append((message_id, *message_values(r)))
        contents.append((message_id, *content_values(r)))
        ids = range(next_delivery, next_delivery + len(r.deliveries))
        next_delivery += len(r.deliveries)
        deliveries += delivery_rows(ids, message_id, r.channel, r.deliveries, t)
        results.append(IntakeResult(message_id, status=r.status, ack_code=r.ack_code, findings=r.findings,
                                    delivery_ids=tuple(ids)))  # fmt: skip
    conn.executemany(_INSERT_MESSAGE, messages)
    conn.executemany(_INSERT_CONTENT, contents)
    conn.executemany(_INSERT_DELIVERY, deliveries)
    return results


def existing_keys(conn: sqlite3.Connection, records: list[IntakeRecord]) -> _Keys:
    """Stored messages with the de-duplication keys of `records`: one query per channel."""
    by_channel: dict[str, set[str]] = {}
    for r in records:
        if r.dedup_key is not None:
            by_channel.setdefault(r.channel, set()).add(r.dedup_key)
    found: _Keys = {}
    for channel, keys in by_channel.items():
        marks = ",".join("?" * len(keys))
        rows = conn.execute(
            "SELECT dedup_key, id, content_hash, status, ack_code, findings FROM messages"
            f" WHERE channel=? AND dedup_key IN ({marks})",
            (channel, *keys),
        )
        for key, *row in rows:
            found[(channel, key)] = (row[0], row[1], row[2], row[3], row[4])
    return found


def known_result(row: _Existing, content_hash: bytes) -> IntakeResult:
    """A resend of a stored message: its verdict; a different message with its key: a conflict."""
    same = row[1] == content_hash
    return IntakeResult(row[0], duplicate=same, conflict=not same, status=row[2], ack_code=row[3],
                        findings=row[4])  # fmt: skip


def next_id(conn: sqlite3.Connection, table: str) -> int:
    """The id SQLite would assign next (max + 1): only the writer inserts, so ids are known up front."""
    return int(conn.execute(f"SELECT coalesce(max(id), 0) + 1 FROM {table}").fetchone()[0])


def delivery_rows(
    ids: range, message_id: int, channel: str, deliveries: Sequence[NewDelivery], now: float
) -> list[tuple[Any, ...]]:
    """`_INSERT_DELIVERY` rows, one per destination, with their ids assigned by the writer."""
    return [(i, message_id, channel, d.destination, d.order_key, now, now, now)
            for i, d in zip(ids, deliveries, strict=True)]  # fmt: skip


def insert_deliveries(
    conn: sqlite3.Connection, message_id: int, channel: str, deliveries: list[NewDelivery], now: float
) -> tuple[int, ...]:
    """The deliveries decided by processing: one executemany, ids assigned as at intake."""
    if not deliveries:
        return ()
    first = next_id(conn, "deliveries")
    ids = range(first, first + len(deliveries))
    conn.executemany(_INSERT_DELIVERY, delivery_rows(ids, message_id, channel, deliveries, now))
    return tuple(ids)


def processed_op(conn: sqlite3.Connection, r: ProcessedRecord) -> tuple[int, ...]:
    """Steps ran on a `received` message: its outcome, new content and deliveries (event by trigger)."""
    now = time.time()
    updated = conn.execute(
        "UPDATE messages SET status=?, findings=coalesce(?, findings), updated_at=?"
        " WHERE id=? AND status='received'",
        (r.status, r.findings, now, r.message_id),
    )
    if not updated.rowcount:
        return ()  # processed already (engine/bus/base.py): the first outcome stands, as on PostgreSQL
    if r.transformed is not None or r.vars is not None:
        conn.execute(
            "UPDATE contents SET transformed=coalesce(?, transformed), vars=coalesce(?, vars)"
            " WHERE message_id=?",
            (r.transformed, r.vars, r.message_id),
        )
    return insert_deliveries(conn, r.message_id, r.channel, r.deliveries, now)


def update_delivery_op(conn: sqlite3.Connection, u: DeliveryUpdate) -> None:
    """One UPDATE: the event and the message's final status follow by trigger."""
    conn.execute(
        "UPDATE deliveries SET status=?, attempts=?, next_attempt_at=?, updated_at=?, last_error=?,"
        " response=coalesce(?, response) WHERE id=?",
        (u.status, u.attempts, u.next_attempt_at, time.time(), u.error or None, u.response, u.delivery_id),
    )


def update_deliveries_op(conn: sqlite3.Connection, updates: list[DeliveryUpdate]) -> None:
    """A queue's batch of outcomes: one executemany (per row, the same trigger as one UPDATE)."""
    now = time.time()
    rows = [
        (u.status, u.attempts, u.next_attempt_at, now, u.error or None, u.response, u.delivery_id)
        for u in updates
    ]
    conn.executemany(
        "UPDATE deliveries SET status=?, attempts=?, next_attempt_at=?, updated_at=?, last_error=?,"
        " response=coalesce(?, response) WHERE id=?",
        rows,
    )


RESEND_NOTE = "resend requested by an operator"


def requeue_delivery_op(conn: sqlite3.Connection, delivery_id: int) -> PendingDelivery | None:
    """Operator resend. The message goes back to `queued` first (event by trigger) so the delivery
    trigger can give it its final status again when this delivery closes; the delivery's status
    change then adds its own event, with the note as detail."""
    row = conn.execute(
        "SELECT message_id FROM deliveries WHERE id=? AND status IN ('dead','rejected')", (delivery_id,)
    ).fetchone()
    if row is None:
        return None
    now = time.time()
    conn.execute("UPDATE messages SET status='queued', updated_at=? WHERE id=?", (now, row[0]))
    conn.execute(
        "UPDATE deliveries SET status='queued', next_attempt_at=?, updated_at=?, last_error=? WHERE id=?",
        (now, now, RESEND_NOTE, delivery_id),
    )
    found = conn.execute(
        "SELECT id, message_id, destination, status, order_key, attempts, created_at, next_attempt_at"
        " FROM deliveries WHERE id=?",
        (delivery_id,),
    ).fetchone()
    return PendingDelivery(*found)


def reencrypt_op(
    conn: sqlite3.Connection, cipher: PayloadCipher, table: SealedTable, after: int, batch: int
) -> tuple[int, int]:
    """Re-encrypt a page of `table` after id `after`: (last id of the page, 0 when done; rows moved)."""
    key, columns = table.key, table.columns
    rows = conn.execute(
        f"SELECT {key}, {', '.join(columns)} FROM {table.name} WHERE {key} > ? ORDER BY {key} LIMIT ?",
        (after, batch),
    ).fetchall()
    moved = 0
    assignments = ", ".join(f"{c}=?" for c in columns)
    for row_id, *values in rows:
        sealed = resealed(cipher, table, tuple(values))
        if sealed is not None:
            conn.execute(f"UPDATE {table.name} SET {assignments} WHERE {key}=?", (*sealed, row_id))
            moved += 1
    return (rows[-1][0] if rows else 0), moved


def stats_query(conn: sqlite3.Connection) -> dict[str, Any]:
    channels: dict[str, Any] = {}
    for channel, status, count in conn.execute(
        "SELECT channel, status, count(*) FROM messages GROUP BY channel, status"
    ):
        channels.setdefault(channel, {"messages": {}, "destinations": {}})["messages"][status] = count
    for channel, destination, status, count, oldest in conn.execute(
        "SELECT channel, destination, status, count(*), min(created_at) FROM deliveries"
        " GROUP BY channel, destination, status"
    ):
        entry = channels.setdefault(channel, {"messages": {}, "destinations": {}})
        dest = entry["destinations"].setdefault(destination, {"deliveries": {}, "oldest_open_at": None})
        dest["deliveries"][status] = count
        if status in OPEN_DELIVERY_STATUSES:
            current = dest["oldest_open_at"]
            dest["oldest_open_at"] = oldest if current is None else min(current, oldest)
    return {"channels": channels}


def rollback(conn: sqlite3.Connection) -> None:
    with contextlib.suppress(sqlite3.Error):  # no transaction was open: nothing to undo
        conn.execute("ROLLBACK")


def resolve_all(batch: list[_Job], results: list[Any]) -> None:
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], Any]]] = {}
    for (_, future), result in zip(batch, results, strict=True):
        by_loop.setdefault(future.get_loop(), []).append((future, result))
    for loop, pairs in by_loop.items():
        call_soon(loop, _set_results, pairs)


def fail_all(batch: list[_Job], error: Exception) -> None:
    resolve_all(batch, [error] * len(batch))


def _set_results(pairs: list[tuple[asyncio.Future[Any], Any]]) -> None:
    for future, result in pairs:
        if future.done():
            continue  # the caller was cancelled; the data is committed all the same
        if isinstance(result, Exception):
            future.set_exception(result)
        else:
            future.set_result(result)


def call_soon(loop: asyncio.AbstractEventLoop, callback: Callable[..., None], *args: Any) -> None:
    with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
        loop.call_soon_threadsafe(callback, *args)
