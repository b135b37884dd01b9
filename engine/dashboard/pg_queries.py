"""The dashboard's reads and audit log on the PostgreSQL store: the same methods and answers as
queries.py (SQLite), so the dashboard works when several engine processes share PostgreSQL.

Reads run on a small connection pool of their own (autocommit), apart from the engine's writer
and claims. The audit log is the table `audit_log` (migrations/0002), shared by every worker
process. A patient search looks into the payloads in Python (decrypted when encrypted at rest):
the other criteria in SQL, then the newest PATIENT_SCAN_ROWS messages they select, because SQL
cannot read encrypted payloads, nor decode every sender's character set.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import psycopg
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from engine.dashboard.queries import (
    MAX_ROWS,
    MESSAGE_FIELDS,
    PATIENT_SCAN_ROWS,
    MessageFilter,
    first_finding,
    matches_patient,
    message_row,
    open_audit_detail,
    seal_audit_detail,
    search_clauses,
)
from engine.errors import StoreError
from engine.store.cipher import PayloadCipher

Conn = AsyncConnection[tuple[Any, ...]]
Rows = list[tuple[Any, ...]]
DELIVERY_KEYS = (
    "id", "destination", "status", "attempts", "created_at", "updated_at", "last_error", "response",
)
DELIVERY_LIST_KEYS = (
    "id", "message_id", "channel", "destination", "status", "attempts", "created_at", "updated_at",
    "last_error", "control_id", "sender",
)
AUDIT_KEYS = ("id", "at", "user", "role", "action", "subject", "detail", "client")


class PostgresQueries:
    def __init__(self, dsn: str, cipher: PayloadCipher | None = None, pool_size: int = 4) -> None:
        self.dsn = dsn
        self.cipher = cipher
        self._pool: AsyncConnectionPool[Conn] | None = None
        self.pool_size = pool_size

    async def open(self) -> None:
        self._pool = AsyncConnectionPool(
            self.dsn, min_size=1, max_size=self.pool_size, open=False,
            kwargs={"autocommit": True, "connect_timeout": 10},
        )
        try:
            await self._pool.open(wait=True, timeout=30.0)
        except PoolTimeout as err:
            raise StoreError(f"dashboard: cannot reach the PostgreSQL store: {err}") from err

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    # -- plumbing ------------------------------------------------------------------------------

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[Conn]:
        if self._pool is None:
            raise StoreError("the dashboard's store reader is not open")
        try:
            async with self._pool.connection(timeout=30.0) as conn:
                yield conn
        except (psycopg.Error, PoolTimeout) as err:
            raise StoreError(f"dashboard query failed: {type(err).__name__}: {err}") from err

    async def _rows(self, sql: str, params: tuple[Any, ...] | list[Any] = ()) -> Rows:
        async with self._connection() as conn:
            cur = await conn.execute(sql.encode(), params)
            return await cur.fetchall()

    def _clear(self, value: bytes | None, column: str) -> bytes | None:
        return self.cipher.decrypt(value, column) if self.cipher is not None else value

    def writable(self) -> bool:
        """Readiness: the server accepts writes (reachable, not a read-only standby)."""
        try:
            with psycopg.connect(self.dsn, connect_timeout=2, autocommit=True) as conn:
                row = conn.execute("SELECT NOT pg_is_in_recovery()").fetchone()
        except psycopg.Error:
            return False
        return bool(row and row[0])

    # -- audit ---------------------------------------------------------------------------------

    async def audit(
        self,
        user: str,
        role: str,
        action: str,
        subject: str,
        detail: dict[str, Any] | None = None,
        client: str = "",
        patient_data: bool = False,
    ) -> int:
        """Commit one audit record (see queries.Queries.audit)."""
        detail = seal_audit_detail(self.cipher, detail or {}) if patient_data else detail or {}
        rows = await self._rows(
            'INSERT INTO audit_log (at, "user", role, action, subject, detail, client)'
            " VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING id",
            (time.time(), user, role, action, subject, json.dumps(detail, sort_keys=True), client),
        )
        return int(rows[0][0])

    async def audit_entries(self, limit: int = 200, before_id: int | None = None) -> list[dict[str, Any]]:
        rows = await self._rows(
            'SELECT id, at, "user", role, action, subject, detail, client FROM audit_log'
            " WHERE (%s::bigint IS NULL OR id < %s) ORDER BY id DESC LIMIT %s",
            (before_id, before_id, min(limit, MAX_ROWS)),
        )
        return [
            {**dict(zip(AUDIT_KEYS, r, strict=True)), "detail": open_audit_detail(self.cipher, r[6])}
            for r in rows
        ]

    # -- channels and queues -------------------------------------------------------------------

    async def message_counts(self, channels: list[str]) -> dict[str, dict[str, int]]:
        rows = await self._rows(
            "SELECT channel, status, count(*) FROM messages WHERE channel = ANY(%s)"
            " GROUP BY channel, status",
            (channels,),
        )
        counts: dict[str, dict[str, int]] = {name: {} for name in channels}
        for channel, status, count in rows:
            counts[channel][status] = int(count)
        return counts

    async def last_rejections(self, channels: list[str]) -> dict[str, dict[str, Any]]:
        found = {}
        for name in channels:
            rows = await self._rows(
                "SELECT id, received_at, findings FROM messages WHERE channel = %s AND status = 'rejected'"
                " ORDER BY id DESC LIMIT 1",
                (name,),
            )
            if rows:
                found[name] = {"message_id": rows[0][0], "at": rows[0][1], "error": first_finding(rows[0][2])}
        return found

    async def queue_states(self, pairs: list[tuple[str, str]]) -> dict[tuple[str, str], dict[str, Any]]:
        states = {}
        for pair in pairs:
            ((depth, oldest, dead),) = await self._rows(
                "SELECT count(*) FILTER (WHERE status IN ('queued', 'retrying')),"
                " min(created_at) FILTER (WHERE status IN ('queued', 'retrying')),"
                " count(*) FILTER (WHERE status IN ('dead', 'rejected'))"
                " FROM deliveries WHERE channel = %s AND destination = %s",
                pair,
            )
            states[pair] = {"depth": int(depth), "oldest_created_at": oldest, "dead": int(dead)}
        return states

    async def deliveries(
        self, statuses: tuple[str, ...], channel: str = "", destination: str = "", limit: int = 100
    ) -> list[dict[str, Any]]:
        rows = await self._rows(
            "SELECT d.id, d.message_id, d.channel, d.destination, d.status, d.attempts, d.created_at,"
            " d.updated_at, d.last_error, m.control_id, m.sender FROM deliveries d JOIN messages m"
            " ON m.id = d.message_id AND m.received_at = d.received_at WHERE d.status = ANY(%s)"
            " AND (%s = '' OR d.channel = %s) AND (%s = '' OR d.destination = %s)"
            " ORDER BY d.id DESC LIMIT %s",
            (list(statuses), channel, channel, destination, destination, min(limit, MAX_ROWS)),
        )
        return [dict(zip(DELIVERY_LIST_KEYS, row, strict=True)) for row in rows]

    async def delivery_channels(self, ids: list[int]) -> dict[int, str]:
        rows = await self._rows("SELECT id, channel FROM deliveries WHERE id = ANY(%s)", (ids,))
        return {int(r[0]): str(r[1]) for r in rows}

    # -- messages ------------------------------------------------------------------------------

    async def search(self, f: MessageFilter) -> list[dict[str, Any]]:
        where, params = search_clauses(replace(f, patient=""), mark="%s")
        condition = " AND ".join(where) or "TRUE"
        wanted = max(1, min(f.limit, MAX_ROWS))
        if not f.patient:
            rows = await self._rows(
                f"SELECT {MESSAGE_FIELDS} FROM messages WHERE {condition} ORDER BY id DESC LIMIT %s",
                (*params, wanted),
            )
            return [message_row(row) for row in rows]
        rows = await self._rows(
            f"SELECT {MESSAGE_FIELDS}, (SELECT c.raw FROM contents c WHERE c.message_id = messages.id"
            f" AND c.received_at = messages.received_at) FROM messages WHERE {condition}"
            " ORDER BY id DESC LIMIT %s",
            (*params, PATIENT_SCAN_ROWS),
        )
        found = []
        for *row, raw in rows:
            if matches_patient(f.patient, self._clear(raw, "raw")):
                found.append(message_row(tuple(row)))
                if len(found) == wanted:
                    break
        return found

    async def message(self, message_id: int) -> dict[str, Any] | None:
        """A message with its contents (decrypted), history and deliveries; None if unknown."""
        rows = await self._rows(f"SELECT {MESSAGE_FIELDS} FROM messages WHERE id = %s", (message_id,))
        if not rows:
            return None
        found = message_row(rows[0])
        content = await self._rows(
            "SELECT raw, transformed, response FROM contents WHERE message_id = %s", (message_id,)
        )
        stages = content[0] if content else (b"", None, None)
        for column, value in zip(("raw", "transformed", "response"), stages, strict=True):
            found[column] = self._clear(value, column)
        found["events"] = [
            {"at": found["received_at"], "status": found["intake_status"], "destination": None,
             "detail": f"ACK {found['ack_code']}".strip()},
            *[
                {"at": at, "status": status, "destination": destination, "detail": detail}
                for at, status, destination, detail in await self._rows(
                    "SELECT at, status, destination, detail FROM events WHERE message_id = %s ORDER BY id",
                    (message_id,),
                )
            ],
        ]
        deliveries = await self._rows(
            f"SELECT {', '.join(DELIVERY_KEYS)} FROM deliveries WHERE message_id = %s ORDER BY id",
            (message_id,),
        )
        found["deliveries"] = [
            {**dict(zip(DELIVERY_KEYS, r, strict=True)), "response": self._clear(r[7], "delivery_response")}
            for r in deliveries
        ]
        found["related"] = await self._related(message_id)
        return found

    async def _related(self, message_id: int) -> list[dict[str, Any]]:
        """Reprocess links recorded in the audit log, in either direction."""
        rows = await self._rows(
            "SELECT at, \"user\", detail FROM audit_log WHERE action = 'reprocess'"
            " AND (subject = %s OR detail::jsonb ->> 'new_message' = %s) ORDER BY id",
            (f"message {message_id}", str(message_id)),
        )
        return [{"at": at, "user": user, **json.loads(detail)} for at, user, detail in rows]
