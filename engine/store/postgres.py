"""PostgreSQL message store (psycopg 3): the store shared by several engine processes.

Same contract and semantics as the SQLite store (base.py; triggers kept in PL/pgSQL, see
migrations/0001_initial.sql). Writes go through one writer task per process doing group
commits: it takes everything queued (up to `max_batch`), sends it in pipeline mode (one
network round trip for the batch) inside one transaction, and commits once, because one
commit (one WAL flush) per message would collapse throughput. If the connection breaks,
every write of the batch fails with StoreError (nothing of it is stored); any other error
re-runs the batch one write per transaction, so it fails only the write that caused it.
Reads and claims use a connection pool.

Ownership (base.py, "Several processes"): each process registers as a worker with a lease
renewed by a heartbeat; rows it owns carry its id in `claimed_by`. When its lease expires (the
process died), other workers' claim scans take its open work over.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
import structlog
from psycopg import AsyncConnection
from psycopg.errors import DeadlockDetected
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from engine.errors import StoreError
from engine.store.base import (
    NOT_ENCRYPTED,
    OPEN_DELIVERY_STATUSES,
    DeliveryUpdate,
    IntakeRecord,
    IntakeResult,
    PendingDelivery,
    ProcessedRecord,
    Store,
    StoredMessage,
)
from engine.store.cipher import PayloadCipher
from engine.store.pg_schema import drop_expired_months, migrate, month_bounds, month_key
from engine.store.rows import CONTENT_COLUMNS, MESSAGE_COLUMNS, intake_values, stored_message, stored_select
from engine.store.sealing import (
    SEALED_TABLES,
    SealedTable,
    clear_message,
    resealed,
    seal_intake,
    seal_processed,
    seal_update,
)
from engine.store.sqlite import RESEND_NOTE

log = structlog.get_logger("passerelle.store")

Conn = AsyncConnection[tuple[Any, ...]]
Rows = list[tuple[Any, ...]]
MAINTENANCE_SECONDS = 3600.0
REENCRYPT_ATTEMPTS = 5
LEASE_LOST_EXIT = 75  # exit status of a worker that lost its lease (EX_TEMPFAIL: restart it)
_MESSAGE_COLUMNS = stored_select("m", "c")
_INTAKE = (
    f"SELECT * FROM passerelle_intake({', '.join(['%s'] * (len(MESSAGE_COLUMNS) + len(CONTENT_COLUMNS)))},"
    " %s::text[], %s::text[], %s)"
)
_WITH_CONTENT = "messages m JOIN contents c ON c.message_id = m.id AND c.received_at = m.received_at"
_DELIVERY_COLUMNS = "id, message_id, destination, status, order_key, attempts, created_at, next_attempt_at"
_ALIVE = "SELECT 1 FROM workers w WHERE w.id = {row}.claimed_by AND w.lease_until > passerelle_now()"

# Work this worker may take: its own, unowned, or owned by a worker whose lease expired.
_CLAIMABLE = f"({{row}}.claimed_by = %(me)s OR NOT EXISTS ({_ALIVE}))"
# Ordering across workers: a key's open deliveries are owned by one worker at a time. A delivery
# may be taken when no older open delivery of its key belongs to someone else, except older ones
# this same scan takes first (above the cursor and not owned by a live worker). So each key has a
# first blocking delivery: not this worker's, and at or below the cursor or a live worker's. It is
# looked up once per key (an index walk from the key's oldest open delivery), not once per
# candidate: that made a scan quadratic in a key's backlog (9 s instead of 0.07 s for a worker's
# own 5,000 deliveries of 16 keys; bench/claim_scan.py).
# Locks: only rows taken over (unowned, or a dead worker's) are locked, and the scan waits for
# them (`FOR UPDATE`, their state rechecked once the lock is granted; LIMIT applies after the
# recheck, so a page shorter than asked still means "nothing more above it"). This worker's own
# rows are returned without a lock: no other claim takes them from a live worker, and its own
# committer is what holds them for a moment. Passing over locked rows (`SKIP LOCKED`) was wrong
# twice: a key's newer rows overtook a skipped older one, and, once held back behind it, whole
# pages came back empty while the committer wrote the outcomes of every line's head, which the
# queue took for "nothing left" (issue #9; store contract tests). Claim scans of one queue run
# one at a time (`_claim`'s advisory lock), so they never wait for each other's rows.
# A page read from a cursor does not return this worker's own older deliveries at or below the
# cursor, and its queue may not hold them (committed after an earlier page passed their ids). Each
# row names the newest of them for its key (`behind`, `PendingDelivery.follows`): the queue holds
# the row back unless that one is in its memory (engine/dispatch.py, `_reload`). The newest, not
# the oldest: the oldest is usually the key's line in progress, held, while the ones missing are
# the latest commits (an index walk backwards from the cursor, once per key of the page).
_CLAIM_ROW = "d.received_at, d." + _DELIVERY_COLUMNS.replace(", ", ", d.")  # a page row, and its partition
CLAIM_DELIVERIES = f"""
WITH claimable AS MATERIALIZED (
    SELECT d.id, d.received_at, d.order_key, d.claimed_by IS NOT DISTINCT FROM %(me)s AS mine
    FROM deliveries d
    WHERE d.channel = %(channel)s AND d.destination = %(destination)s
      AND d.status IN ('queued', 'retrying') AND d.id > %(after)s AND {_CLAIMABLE.format(row="d")}
), blocked AS MATERIALIZED (
    SELECT k.order_key, (
        SELECT o.id FROM deliveries o
        WHERE o.channel = %(channel)s AND o.destination = %(destination)s
          AND o.order_key = k.order_key AND o.order_key <> '' AND o.status IN ('queued', 'retrying')
          AND o.claimed_by IS DISTINCT FROM %(me)s
          AND (o.id <= %(after)s OR EXISTS ({_ALIVE.format(row="o")}))
        ORDER BY o.id LIMIT 1) AS first_id
    FROM (SELECT DISTINCT order_key FROM claimable WHERE order_key <> '') k
), free AS MATERIALIZED (
    SELECT c.id, c.received_at, c.mine FROM claimable c LEFT JOIN blocked b ON b.order_key = c.order_key
    WHERE b.first_id IS NULL OR c.id < b.first_id
), own AS MATERIALIZED (
    SELECT {_CLAIM_ROW} FROM free f JOIN deliveries d ON d.id = f.id AND d.received_at = f.received_at
    WHERE f.mine ORDER BY d.id LIMIT %(limit)s
), taken_over AS MATERIALIZED (
    SELECT {_CLAIM_ROW} FROM free f JOIN deliveries d ON d.id = f.id AND d.received_at = f.received_at
    WHERE NOT f.mine AND d.status IN ('queued', 'retrying') AND d.claimed_by IS DISTINCT FROM %(me)s
    ORDER BY d.id LIMIT %(limit)s FOR UPDATE OF d
), candidates AS MATERIALIZED (
    SELECT * FROM (SELECT * FROM own UNION ALL SELECT * FROM taken_over) u ORDER BY u.id LIMIT %(limit)s
), taken AS (
    UPDATE deliveries x SET claimed_by = %(me)s FROM candidates c
    WHERE x.id = c.id AND x.received_at = c.received_at AND x.claimed_by IS DISTINCT FROM %(me)s
), behind AS MATERIALIZED (
    SELECT k.order_key, (
        SELECT o.id FROM deliveries o
        WHERE o.channel = %(channel)s AND o.destination = %(destination)s
          AND o.order_key = k.order_key AND o.status IN ('queued', 'retrying')
          AND o.claimed_by = %(me)s AND o.id <= %(after)s
        ORDER BY o.id DESC LIMIT 1) AS last_id
    FROM (SELECT DISTINCT c.order_key FROM candidates c WHERE c.order_key <> '') k
)
SELECT c.{_DELIVERY_COLUMNS.replace(", ", ", c.")}, coalesce(b.last_id, 0)
FROM candidates c LEFT JOIN behind b ON b.order_key = c.order_key ORDER BY c.id
"""
CLAIM_MESSAGES = f"""
WITH candidates AS (
    SELECT m.id, m.received_at FROM messages m
    WHERE m.channel = %(channel)s AND m.status = 'received' AND m.id > %(after)s
      AND {_CLAIMABLE.format(row="m")}
    ORDER BY m.id LIMIT %(limit)s FOR UPDATE SKIP LOCKED
), taken AS (
    UPDATE messages x SET claimed_by = %(me)s FROM candidates k
    WHERE x.id = k.id AND x.received_at = k.received_at AND x.claimed_by IS DISTINCT FROM %(me)s
)
SELECT {_MESSAGE_COLUMNS}
FROM candidates k JOIN {_WITH_CONTENT} ON m.id = k.id AND m.received_at = k.received_at
ORDER BY m.id
"""
# The work bus's sweep (engine/bus/sweep.py): `received` messages whose publication was never
# confirmed, old enough that their intake worker gave up or died; claimed like CLAIM_MESSAGES.
CLAIM_UNDISPATCHED = CLAIM_MESSAGES.replace(
    "AND m.id > %(after)s", "AND m.id > %(after)s AND NOT m.dispatched AND m.received_at < %(before)s"
)


@dataclass(frozen=True)
class Write:
    """One statement of a group commit; `decode` turns its rows into the caller's result."""

    sql: str
    params: Sequence[Any] | dict[str, Any]
    decode: Callable[[Rows], Any] | None = None
    month: float | None = None  # a received_at whose monthly partition must exist


_Job = tuple[Write, asyncio.Future[Any]]


class PostgresStore(Store):
    shared = True

    def __init__(
        self,
        dsn: str,
        pool_size: int = 8,
        max_batch: int = 512,
        retention_days: int = 0,
        lease_seconds: float = 15.0,
        cipher: PayloadCipher | None = None,
    ) -> None:
        self.dsn = dsn
        self.cipher = cipher
        self.pool_size = pool_size
        self.max_batch = max_batch
        self.retention_days = retention_days
        self.lease_seconds = lease_seconds
        self.worker_id = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self.commits = 0
        self._jobs: asyncio.Queue[_Job | None] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        self._conn: Conn | None = None
        self._pool: AsyncConnectionPool[Conn] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._months: set[int] = set()
        self.rescan_interval = lease_seconds / 3  # queues' claim scans (base.py)
        self.on_lease_lost: Callable[[], None] = self._exit_lease_lost  # fencing (see _keep_lease)

    # -- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        try:
            self._conn = await self._connect()
            await migrate(self._conn)
            self._pool = AsyncConnectionPool(
                self.dsn,
                min_size=1,
                max_size=self.pool_size,
                open=False,
                kwargs={"autocommit": True, "connect_timeout": 10},
            )
            await self._pool.open(wait=True, timeout=30.0)
            await self._heartbeat_once()
            await self.maintain()
        except (psycopg.Error, PoolTimeout) as err:
            await self._close_connections()
            raise StoreError(f"cannot open the PostgreSQL store: {err}") from err
        self._jobs = asyncio.Queue()
        self._writer = asyncio.create_task(self._write_loop(), name="store-writer")
        self._tasks = [
            asyncio.create_task(self._keep_lease(), name="store-lease"),
            asyncio.create_task(self._every(MAINTENANCE_SECONDS, self.maintain), name="store-maintenance"),
        ]

    async def _connect(self, autocommit: bool = False) -> Conn:
        conn: Conn = await AsyncConnection.connect(self.dsn, connect_timeout=10, autocommit=autocommit)
        return conn

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self._writer is not None:
            self._jobs.put_nowait(None)
            await self._writer
            self._writer = None
        with contextlib.suppress(psycopg.Error, StoreError):
            # A graceful stop hands this worker's open work to the others at once.
            await self._execute("DELETE FROM workers WHERE id = %s", (self.worker_id,))
        await self._close_connections()

    async def _close_connections(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

    async def _every(self, seconds: float, job: Callable[[], Any]) -> None:
        while True:
            await asyncio.sleep(seconds)
            try:
                await job()
            except (psycopg.Error, StoreError) as err:
                log.error("store_background_failed", job=job.__name__, error=type(err).__name__)

    async def _heartbeat_once(self) -> None:
        """Register this worker with a fresh lease."""
        await self._execute(
            "INSERT INTO workers (id, started_at, lease_until)"
            " VALUES (%s, passerelle_now(), passerelle_now() + %s)",
            (self.worker_id, self.lease_seconds),
        )

    async def _keep_lease(self) -> None:
        """Renew the lease every quarter lease, on a connection of its own (a busy pool must not
        starve it). Fencing: once the lease has expired, other workers may already run this
        worker's deliveries, so it must not go on with what it holds in memory: the process
        exits at once (as after kill -9, which loses nothing) and its supervisor restarts it."""
        conn: Conn | None = None
        try:
            while True:
                await asyncio.sleep(self.lease_seconds / 4)
                conn = conn if conn is not None and not conn.closed else await self._connect(autocommit=True)
                if not await self._renew(conn):
                    self.on_lease_lost()
        finally:
            if conn is not None:
                await conn.close()

    async def _renew(self, conn: Conn) -> bool:
        """Extend the lease unless it already expired; a failed attempt is retried (True)."""
        try:
            cur = await conn.execute(
                "UPDATE workers SET lease_until = passerelle_now() + %s"
                " WHERE id = %s AND lease_until > passerelle_now() RETURNING 1",
                (self.lease_seconds, self.worker_id),
            )
            return await cur.fetchone() is not None
        except psycopg.Error as err:
            log.error("store_lease_renewal_failed", error=type(err).__name__)
            await conn.close()
            return True

    def _exit_lease_lost(self) -> None:
        log.critical("store_lease_lost", worker=self.worker_id, lease_seconds=self.lease_seconds)
        os._exit(LEASE_LOST_EXIT)

    async def maintain(self) -> list[str]:
        """Create this and next month's partitions; apply retention; forget long-dead workers."""
        now = time.time()
        await self._execute(
            "SELECT passerelle_ensure_month(%s), passerelle_ensure_month(%s)",
            (now, month_bounds(month_key(now))[1]),
        )
        await self._execute("DELETE FROM workers WHERE lease_until < passerelle_now() - 86400", ())
        if not self.retention_days:
            return []
        return await self.apply_retention(now - self.retention_days * 86400)

    async def apply_retention(self, cutoff: float) -> list[str]:
        """Drop the months that ended before `cutoff` and whose messages are all final (pg_schema)."""
        async with self._connection() as conn:
            dropped = await drop_expired_months(conn, cutoff)
        self._months.clear()
        if dropped:
            log.info("store_retention", dropped=dropped)
        return dropped

    # -- the writer ----------------------------------------------------------------------------

    async def _write(self, write: Write) -> Any:
        if self._writer is None:
            raise StoreError("the store is not open")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._jobs.put_nowait((write, future))
        return await future

    async def _write_loop(self) -> None:
        while (batch := await self._next_batch()) is not None:
            await self._run_batch(batch)

    async def _next_batch(self) -> list[_Job] | None:
        first = await self._jobs.get()
        if first is None:
            return None
        batch = [first]
        while len(batch) < self.max_batch and not self._jobs.empty():
            job = self._jobs.get_nowait()
            if job is None:
                self._jobs.put_nowait(None)
                break
            batch.append(job)
        return batch

    async def _run_batch(self, batch: list[_Job]) -> None:
        try:
            conn = await self._writer_connection()
            results = await self._commit(conn, [w for w, _ in batch])
        except psycopg.Error as err:
            if self._conn is None or self._conn.broken:
                self._conn = None
                fail(batch, StoreError(f"store commit failed: {type(err).__name__}: {err}"))
            else:
                self._months.clear()  # another worker's retention may have dropped a month we knew
                await self._run_one_by_one(batch)
            return
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():  # a cancelled caller: the data is committed all the same
                future.set_result(result)

    async def _run_one_by_one(self, batch: list[_Job]) -> None:
        assert self._conn is not None
        for write, future in batch:
            try:
                result = (await self._commit(self._conn, [write]))[0]
            except psycopg.Error as err:
                fail([(write, future)], StoreError(f"store operation failed: {type(err).__name__}: {err}"))
            else:
                if not future.done():
                    future.set_result(result)

    async def _writer_connection(self) -> Conn:
        if self._conn is None or self._conn.closed:
            self._conn = await self._connect()
        return self._conn

    async def _commit(self, conn: Conn, writes: list[Write]) -> list[Any]:
        """One transaction, sent in pipeline mode; the decoded result of each write."""
        months = {month_key(w.month) for w in writes if w.month is not None} - self._months
        async with conn.transaction(), conn.pipeline():
            for key in months:
                await conn.execute("SELECT passerelle_ensure_month(%s)", (month_bounds(key)[0],))
            cursors = []
            for write in writes:
                cursor = conn.cursor()
                await cursor.execute(write.sql.encode(), write.params)
                cursors.append(cursor)
            results = [
                w.decode(await c.fetchall()) if w.decode else None
                for w, c in zip(writes, cursors, strict=True)
            ]
        self.commits += 1
        self._months |= months
        return results

    # -- reads ---------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[Conn]:
        if self._pool is None:
            raise StoreError("the store is not open")
        try:
            async with self._pool.connection(timeout=30.0) as conn:
                yield conn
        except (psycopg.Error, PoolTimeout) as err:
            raise StoreError(f"store read failed: {type(err).__name__}: {err}") from err

    async def _execute(self, sql: str, params: Sequence[Any] | dict[str, Any]) -> Rows:
        async with self._connection() as conn:
            cur = await conn.execute(sql.encode(), params)
            return await cur.fetchall() if cur.description else []

    async def _claim(self, sql: str, lock: str, params: dict[str, Any]) -> Rows:
        """Claim scans of one queue run one at a time (advisory lock): see base.py."""
        async with self._connection() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (lock,))
            cur = await conn.execute(sql.encode(), {**params, "me": self.worker_id})
            return await cur.fetchall()

    # -- encryption at rest (engine/store/sealing.py) -----------------------------------------

    def _clear(self, row: tuple[Any, ...]) -> StoredMessage:
        return clear_message(self.cipher, stored_message(row))

    async def reencrypt(self, batch: int = 500) -> int:
        """Move every payload to the active key, one page per transaction, while workers run: the
        page's rows are locked (FOR UPDATE) from their read to their update, so a worker's write to
        one of them waits for the page instead of being overwritten by its older value."""
        cipher = self.cipher
        if cipher is None:
            raise StoreError(NOT_ENCRYPTED)
        total = 0
        for table in SEALED_TABLES:
            after: int | None = 0
            while after is not None:
                after, moved = await self._reencrypt_page_retried(cipher, table, after, batch)
                total += moved
        return total

    async def _reencrypt_page_retried(
        self, cipher: PayloadCipher, table: SealedTable, after: int, batch: int
    ) -> tuple[int | None, int]:
        """A page again when PostgreSQL chose it as a deadlock victim (the page and a group commit
        of a worker each waited for rows the other held): nothing of it was written."""
        for attempt in range(1, REENCRYPT_ATTEMPTS + 1):
            try:
                return await self._reencrypt_page(cipher, table, after, batch)
            except StoreError as err:
                if attempt == REENCRYPT_ATTEMPTS or not isinstance(err.__cause__, DeadlockDetected):
                    raise
        raise AssertionError("unreachable")

    async def _reencrypt_page(
        self, cipher: PayloadCipher, table: SealedTable, after: int, batch: int
    ) -> tuple[int | None, int]:
        """Re-encrypt the rows of `table` after key `after`: (last key of the page or None when
        done, rows rewritten)."""
        columns = ", ".join(table.columns)
        assignments = ", ".join(f"{c} = %s" for c in table.columns)
        async with self._connection() as conn, conn.transaction():
            cur = await conn.execute(
                f"SELECT {table.key}, received_at, {columns} FROM {table.name} WHERE {table.key} > %s"
                f" ORDER BY {table.key} LIMIT %s FOR UPDATE".encode(),
                (after, batch),
            )
            rows = await cur.fetchall()
            updates = []
            for key, received_at, *values in rows:
                sealed = resealed(cipher, table, tuple(values))
                if sealed is not None:
                    updates.append((*sealed, key, received_at))
            if updates:
                async with conn.cursor() as writer:
                    await writer.executemany(
                        f"UPDATE {table.name} SET {assignments}"
                        f" WHERE {table.key} = %s AND received_at = %s".encode(),
                        updates,
                    )
        return (rows[-1][0] if rows else None), len(updates)

    # -- the interface -------------------------------------------------------------------------

    async def intake(self, r: IntakeRecord) -> IntakeResult:
        params = (
            *intake_values(seal_intake(self.cipher, r)),
            [d.destination for d in r.deliveries],
            [d.order_key for d in r.deliveries],
            self.worker_id,
        )
        result: IntakeResult = await self._write(
            Write(_INTAKE, params, lambda rows: intake_result(r, rows[0]), month=r.received_at)
        )
        return result

    async def processed_all(self, records: list[ProcessedRecord]) -> list[tuple[int, ...]]:
        """One statement (migration 0004), so a group commit re-run one write at a time keeps it whole."""
        if not records:
            return []
        sealed = [seal_processed(self.cipher, r) for r in records]
        deliveries = [d for r in records for d in r.deliveries]
        params = (
            records[0].channel, time.time(), self.worker_id,
            [r.message_id for r in records], [r.status for r in records], [r.findings for r in records],
            [s.transformed for s in sealed], [s.vars for s in sealed], [len(r.deliveries) for r in records],
            [d.destination for d in deliveries], [d.order_key for d in deliveries],
        )  # fmt: skip
        sql = (
            "SELECT delivery_ids FROM passerelle_processed_all(%s, %s, %s, %s::bigint[], %s::text[],"
            " %s::text[], %s::bytea[], %s::bytea[], %s::integer[], %s::text[], %s::text[])"
        )
        ids: list[tuple[int, ...]] = await self._write(
            Write(sql, params, lambda rows: [tuple(row[0] or ()) for row in rows])
        )
        return ids

    async def update_delivery(self, u: DeliveryUpdate) -> None:
        """Only the owner's outcome counts: a worker whose lease expired (stalled) and whose
        delivery was taken over changes nothing; the new owner records the outcome."""
        u = seal_update(self.cipher, u)
        await self._write(
            Write(
                "UPDATE deliveries SET status=%s, attempts=%s, next_attempt_at=%s, updated_at=%s,"
                " last_error=%s,"
                " response=coalesce(%s, response) WHERE id=%s AND claimed_by=%s",
                (
                    u.status,
                    u.attempts,
                    u.next_attempt_at,
                    time.time(),
                    u.error or None,
                    u.response,
                    u.delivery_id,
                    self.worker_id,
                ),
            )
        )

    async def requeue_delivery(self, delivery_id: int) -> PendingDelivery | None:
        sql = f"SELECT {_DELIVERY_COLUMNS} FROM passerelle_requeue(%s, %s, %s, %s)"
        params = (delivery_id, time.time(), RESEND_NOTE, self.worker_id)
        row: PendingDelivery | None = await self._write(
            Write(sql, params, lambda rows: PendingDelivery(*rows[0]) if rows else None)
        )
        return row

    async def unprocessed(self, channel: str, after_id: int, limit: int) -> list[StoredMessage]:
        sql = (
            f"SELECT {_MESSAGE_COLUMNS} FROM {_WITH_CONTENT} WHERE m.channel=%s AND m.status='received'"
            " AND m.id>%s ORDER BY m.id LIMIT %s"
        )
        return [self._clear(row) for row in await self._execute(sql, (channel, after_id, limit))]

    async def open_deliveries(
        self, channel: str, destination: str, after_id: int, limit: int
    ) -> list[PendingDelivery]:
        sql = (
            f"SELECT {_DELIVERY_COLUMNS} FROM deliveries WHERE channel=%s AND destination=%s"
            " AND status IN ('queued','retrying') AND id>%s ORDER BY id LIMIT %s"
        )
        rows = await self._execute(sql, (channel, destination, after_id, limit))
        return [PendingDelivery(*row) for row in rows]

    async def open_line(self, channel: str, destination: str, order_key: str, before_id: int) -> int | None:
        sql = (
            "SELECT id FROM deliveries WHERE channel=%s AND destination=%s AND order_key=%s"
            " AND status IN ('queued','retrying') AND id<%s ORDER BY id LIMIT 1"
        )
        rows = await self._execute(sql, (channel, destination, order_key, before_id))
        return int(rows[0][0]) if rows else None

    async def delivery_owner(self, delivery_id: int) -> str:
        sql = (
            "SELECT CASE WHEN d.status NOT IN ('queued','retrying') THEN 'closed'"
            " WHEN d.claimed_by IS NULL THEN 'nobody' WHEN d.claimed_by = %s THEN 'this worker'"
            f" WHEN EXISTS ({_ALIVE.format(row='d')}) THEN 'another live worker' ELSE 'a dead worker' END"
            " FROM deliveries d WHERE d.id = %s"
        )
        rows = await self._execute(sql, (self.worker_id, delivery_id))
        return str(rows[0][0]) if rows else "closed"

    async def claim_deliveries(
        self, channel: str, destination: str, after_id: int, limit: int
    ) -> list[PendingDelivery]:
        params = {"channel": channel, "destination": destination, "after": after_id, "limit": limit}
        rows = await self._claim(CLAIM_DELIVERIES, f"claim\x1f{channel}\x1f{destination}", params)
        return [PendingDelivery(*row) for row in rows]

    async def claim_unprocessed(self, channel: str, after_id: int, limit: int) -> list[StoredMessage]:
        params = {"channel": channel, "after": after_id, "limit": limit}
        rows = await self._claim(CLAIM_MESSAGES, f"claim\x1f{channel}", params)
        return [self._clear(row) for row in rows]

    # -- the work bus (engine/bus/) ---------------------------------------------------------------

    async def live_workers(self, prefix: str = "") -> list[str]:
        """The ids starting with `prefix` of the workers whose lease runs, in id order (the bus
        spreads partitions over them)."""
        sql = (
            "SELECT id FROM workers WHERE lease_until > passerelle_now() AND starts_with(id, %s)"
            " ORDER BY id"
        )
        rows = await self._execute(sql, (prefix,))
        return [str(row[0]) for row in rows]

    async def mark_dispatched(self, message_ids: list[int]) -> None:
        """The broker confirmed these messages' ids: the sweep leaves them alone.

        Its own short statement, not part of a group commit, and it skips rows another transaction
        holds: inside a group commit it locked message rows while another worker's group commit,
        processing those messages, locked them in another order (deadlock; PostgreSQL failed one
        batch, re-run one write per transaction). A row skipped is being processed (it leaves
        `received`), or its mark is lost and the sweep publishes it again: a harmless duplicate."""
        sql = (
            "UPDATE messages m SET dispatched = true FROM (SELECT id, received_at FROM messages"
            " WHERE id = ANY(%s) AND status = 'received' AND NOT dispatched ORDER BY id"
            " FOR UPDATE SKIP LOCKED) s WHERE m.id = s.id AND m.received_at = s.received_at"
        )
        await self._execute(sql, (message_ids,))

    async def claim_undispatched(
        self, channel: str, before: float, after_id: int, limit: int
    ) -> list[StoredMessage]:
        """`received` messages received before `before` whose publication was never confirmed,
        claimed by this worker (its own, unowned, or a dead worker's), in id order."""
        params = {"channel": channel, "before": before, "after": after_id, "limit": limit}
        rows = await self._claim(CLAIM_UNDISPATCHED, f"claim\x1f{channel}", params)
        return [self._clear(row) for row in rows]

    async def messages(self, message_ids: list[int]) -> list[StoredMessage]:
        rows = await self._execute(
            f"SELECT {_MESSAGE_COLUMNS} FROM {_WITH_CONTENT} WHERE m.id = ANY(%s)", (message_ids,)
        )
        return [self._clear(row) for row in rows]

    async def message(self, message_id: int) -> StoredMessage | None:
        rows = await self._execute(
            f"SELECT {_MESSAGE_COLUMNS} FROM {_WITH_CONTENT} WHERE m.id=%s", (message_id,)
        )
        return self._clear(rows[0]) if rows else None

    async def events(self, message_id: int) -> list[dict[str, Any]]:
        sql = (
            "SELECT 0::bigint AS seq, received_at, intake_status, NULL::text, ack_code"
            " FROM messages WHERE id=%s UNION ALL"
            " SELECT id, at, status, destination, detail FROM events WHERE message_id=%s ORDER BY seq"
        )
        rows = await self._execute(sql, (message_id, message_id))
        return [{"at": r[1], "status": r[2], "destination": r[3], "detail": r[4]} for r in rows]

    async def record_channel_version(self, channel: str, version: str, content: str) -> None:
        sql = (
            "INSERT INTO channel_versions (channel, version, loaded_at, content) VALUES (%s,%s,%s,%s)"
            " ON CONFLICT DO NOTHING"
        )
        await self._write(Write(sql, (channel, version, time.time(), content)))

    async def channel_versions(self, channel: str) -> list[dict[str, Any]]:
        sql = (
            "SELECT v.version, v.loaded_at, v.content, (SELECT count(*) FROM messages m"
            " WHERE m.channel = v.channel AND m.channel_version = v.version)"
            " FROM channel_versions v WHERE v.channel=%s ORDER BY v.loaded_at DESC, v.seq DESC"
        )
        rows = await self._execute(sql, (channel,))
        return [{"version": r[0], "loaded_at": r[1], "content": r[2], "messages": r[3]} for r in rows]

    async def stats(self) -> dict[str, Any]:
        messages = await self._execute(
            "SELECT channel, status, count(*) FROM messages GROUP BY channel, status", ()
        )
        deliveries = await self._execute(
            "SELECT channel, destination, status, count(*), min(created_at) FROM deliveries"
            " GROUP BY channel, destination, status",
            (),
        )
        return stats_from(messages, deliveries)


def intake_result(r: IntakeRecord, row: tuple[Any, ...]) -> IntakeResult:
    message_id, existing, old_hash, status, ack_code, findings, delivery_ids = row
    if existing:
        same = bytes(old_hash) == r.content_hash
        return IntakeResult(
            message_id, duplicate=same, conflict=not same, status=status, ack_code=ack_code, findings=findings
        )
    return IntakeResult(
        message_id,
        status=r.status,
        ack_code=r.ack_code,
        findings=r.findings,
        delivery_ids=tuple(delivery_ids or ()),
    )


def stats_from(messages: Rows, deliveries: Rows) -> dict[str, Any]:
    channels: dict[str, Any] = {}
    for channel, status, count in messages:
        channels.setdefault(channel, {"messages": {}, "destinations": {}})["messages"][status] = count
    for channel, destination, status, count, oldest in deliveries:
        entry = channels.setdefault(channel, {"messages": {}, "destinations": {}})
        dest = entry["destinations"].setdefault(destination, {"deliveries": {}, "oldest_open_at": None})
        dest["deliveries"][status] = count
        if status in OPEN_DELIVERY_STATUSES:
            current = dest["oldest_open_at"]
            dest["oldest_open_at"] = oldest if current is None else min(current, oldest)
    return {"channels": channels}


def fail(batch: list[_Job], error: Exception) -> None:
    for _, future in batch:
        if not future.done():
            future.set_exception(error)

