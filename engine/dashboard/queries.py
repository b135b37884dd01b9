"""Read-only queries of the store for the dashboard, and its audit log.

Reads use this module's own SQLite connections (one per worker thread, `PRAGMA query_only`),
run with `asyncio.to_thread`: WAL readers never block the engine's writer. Every query is
bounded (indexed lookups, LIMIT) because it runs next to the hot path.

The audit log (`audit_log`) lives in the store's database file, written on a separate
connection: an audit record is committed before the audited data is returned.

Encryption at rest (engine/store/sealing.py): payloads are decrypted with the store's cipher
before they are shown, and a patient search, which cannot look into encrypted payloads in SQL,
decrypts and matches the newest `PATIENT_SCAN_ROWS` messages the other criteria select (the
answer says when it stopped there: narrow the search by channel, time or control id).
"""

from __future__ import annotations

import asyncio
import base64
import json
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol, TypeVar

from engine.errors import StoreError
from engine.store.cipher import PayloadCipher

T = TypeVar("T")

AUDIT_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit_log (
    id      INTEGER PRIMARY KEY,
    at      REAL NOT NULL,
    user    TEXT NOT NULL,
    role    TEXT NOT NULL DEFAULT '',
    action  TEXT NOT NULL,
    subject TEXT NOT NULL DEFAULT '',
    detail  TEXT NOT NULL DEFAULT '{}',
    client  TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS audit_log_subject ON audit_log (subject, id);
"""

MESSAGE_FIELDS = (
    "id, channel, received_at, updated_at, content_type, source_type, peer, tls_subject, filename,"
    " control_id, sender, status, intake_status, ack_code, findings"
)
MAX_ROWS = 500
SEALED, AUDIT_AAD = "sealed", "audit_detail"  # an audit detail holding patient data, encrypted
PATIENT_SCAN_ROWS = 5000  # encrypted store: messages decrypted per patient search, newest first


@dataclass(frozen=True)
class MessageFilter:
    """A message search. `patient` matches raw content: only for roles allowed to see patient data."""

    channel: str = ""
    control_id: str = ""
    sender: str = ""
    status: str = ""
    since: float | None = None
    until: float | None = None
    patient: str = ""
    before_id: int | None = None
    limit: int = 50


def ensure_audit_table(path: Path) -> None:
    conn = sqlite3.connect(path, timeout=30.0)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.executescript(AUDIT_SCHEMA)
    finally:
        conn.close()


def write_audit(
    conn: sqlite3.Connection,
    user: str,
    role: str,
    action: str,
    subject: str,
    detail: dict[str, Any],
    client: str = "",
) -> int:
    cur = conn.execute(
        "INSERT INTO audit_log (at, user, role, action, subject, detail, client) VALUES (?,?,?,?,?,?,?)",
        (time.time(), user, role, action, subject, json.dumps(detail, sort_keys=True), client),
    )
    return int(cur.lastrowid or 0)


class StoreQueries(Protocol):
    """What the dashboard reads and audits: Queries (SQLite) and pg_queries.PostgresQueries."""

    async def open(self) -> None: ...
    async def close(self) -> None: ...
    def writable(self) -> bool: ...
    async def audit(
        self,
        user: str,
        role: str,
        action: str,
        subject: str,
        detail: dict[str, Any] | None = None,
        client: str = "",
        patient_data: bool = False,
    ) -> int: ...
    async def audit_entries(self, limit: int = 200, before_id: int | None = None) -> list[dict[str, Any]]: ...
    async def message_counts(self, channels: list[str]) -> dict[str, dict[str, int]]: ...
    async def last_rejections(self, channels: list[str]) -> dict[str, dict[str, Any]]: ...
    async def queue_states(self, pairs: list[tuple[str, str]]) -> dict[tuple[str, str], dict[str, Any]]: ...
    async def deliveries(
        self, statuses: tuple[str, ...], channel: str = "", destination: str = "", limit: int = 100
    ) -> list[dict[str, Any]]: ...
    async def delivery_channels(self, ids: list[int]) -> dict[int, str]: ...
    async def search(self, f: MessageFilter) -> list[dict[str, Any]]: ...
    async def message(self, message_id: int) -> dict[str, Any] | None: ...


class Queries:
    def __init__(self, path: Path, cipher: PayloadCipher | None = None) -> None:
        self.path = path
        self.cipher = cipher
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._audit_lock = threading.Lock()
        self._audit: sqlite3.Connection | None = None

    async def open(self) -> None:
        ensure_audit_table(self.path)

    async def close(self) -> None:
        with self._lock:
            for conn in self._all:
                conn.close()
            self._all.clear()
        with self._audit_lock:
            if self._audit is not None:
                self._audit.close()
                self._audit = None

    # -- plumbing ------------------------------------------------------------------------------

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, check_same_thread=False, timeout=10.0)
            conn.execute("PRAGMA query_only=ON")
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    async def read(self, query: Callable[[sqlite3.Connection], T]) -> T:
        def run() -> T:
            try:
                return query(self._reader())
            except sqlite3.Error as err:
                raise StoreError(f"dashboard query failed: {err}") from err

        return await asyncio.to_thread(run)

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
        """Commit one audit record (before the audited data is shown or the action's result returned).
        `patient_data`: the detail holds patient data (a search term): sealed like the payloads."""
        if patient_data:
            detail = seal_audit_detail(self.cipher, detail or {})

        def run() -> int:
            with self._audit_lock:
                if self._audit is None:
                    self._audit = sqlite3.connect(
                        self.path, check_same_thread=False, timeout=30.0, isolation_level=None
                    )
                    self._audit.execute("PRAGMA synchronous=FULL")
                try:
                    return write_audit(self._audit, user, role, action, subject, detail or {}, client)
                except sqlite3.Error as err:
                    raise StoreError(f"audit record could not be written: {err}") from err

        return await asyncio.to_thread(run)

    def writable(self) -> bool:
        """Readiness: a write transaction can start (the file is writable and not locked for long)."""
        try:
            conn = sqlite3.connect(self.path, timeout=2.0, isolation_level=None)
            try:
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("ROLLBACK")
            finally:
                conn.close()
        except sqlite3.Error:
            return False
        return True

    # -- channels and queues -----------------------------------------------------------------------

    async def message_counts(self, channels: list[str]) -> dict[str, dict[str, int]]:
        def query(c: sqlite3.Connection) -> dict[str, dict[str, int]]:
            return {
                name: dict(
                    c.execute(
                        "SELECT status, count(*) FROM messages WHERE channel=? GROUP BY status", (name,)
                    ).fetchall()
                )
                for name in channels
            }

        return await self.read(query)

    async def last_rejections(self, channels: list[str]) -> dict[str, dict[str, Any]]:
        """Each channel's latest rejected message: id, time and its first finding's text."""
        sql = (
            "SELECT id, received_at, findings FROM messages WHERE channel=? AND status='rejected'"
            " ORDER BY id DESC LIMIT 1"
        )

        def query(c: sqlite3.Connection) -> dict[str, dict[str, Any]]:
            found = {}
            for name in channels:
                row = c.execute(sql, (name,)).fetchone()
                if row:
                    found[name] = {"message_id": row[0], "at": row[1], "error": first_finding(row[2])}
            return found

        return await self.read(query)

    async def queue_states(self, pairs: list[tuple[str, str]]) -> dict[tuple[str, str], dict[str, Any]]:
        """Per (channel, destination): open deliveries, the oldest one's creation time, dead letters."""
        open_sql = (
            "SELECT count(*), min(created_at) FROM deliveries WHERE channel=? AND destination=?"
            " AND status IN ('queued','retrying')"
        )
        dead_sql = (
            "SELECT count(*) FROM deliveries WHERE channel=? AND destination=?"
            " AND status IN ('dead','rejected')"
        )

        def query(c: sqlite3.Connection) -> dict[tuple[str, str], dict[str, Any]]:
            states = {}
            for pair in pairs:
                depth, oldest = c.execute(open_sql, pair).fetchone()
                (dead,) = c.execute(dead_sql, pair).fetchone()
                states[pair] = {"depth": depth, "oldest_created_at": oldest, "dead": dead}
            return states

        return await self.read(query)

    async def deliveries(
        self, statuses: tuple[str, ...], channel: str = "", destination: str = "", limit: int = 100
    ) -> list[dict[str, Any]]:
        marks = ",".join("?" * len(statuses))
        sql = (
            "SELECT d.id, d.message_id, d.channel, d.destination, d.status, d.attempts, d.created_at,"
            f" d.updated_at, d.last_error, m.control_id, m.sender FROM deliveries d JOIN messages m"
            f" ON m.id = d.message_id WHERE d.status IN ({marks})"
            " AND (?='' OR d.channel=?) AND (?='' OR d.destination=?) ORDER BY d.id DESC LIMIT ?"
        )
        params = (*statuses, channel, channel, destination, destination, min(limit, MAX_ROWS))
        keys = (
            "id",
            "message_id",
            "channel",
            "destination",
            "status",
            "attempts",
            "created_at",
            "updated_at",
            "last_error",
            "control_id",
            "sender",
        )
        rows = await self.read(lambda c: c.execute(sql, params).fetchall())
        return [dict(zip(keys, row, strict=True)) for row in rows]

    async def delivery_channels(self, ids: list[int]) -> dict[int, str]:
        """The channel of each known delivery id."""
        marks = ",".join("?" * len(ids))
        sql = f"SELECT id, channel FROM deliveries WHERE id IN ({marks})"
        rows = await self.read(lambda c: c.execute(sql, ids).fetchall())
        return {int(r[0]): str(r[1]) for r in rows}

    # -- messages ------------------------------------------------------------------------------

    async def search(self, f: MessageFilter) -> list[dict[str, Any]]:
        if f.patient and self.cipher is not None:
            return await self.read(lambda c: self._search_sealed(c, f))
        where, params = search_clauses(f)
        table = "messages JOIN contents ON contents.message_id = messages.id" if f.patient else "messages"
        sql = (
            f"SELECT {MESSAGE_FIELDS} FROM {table} WHERE {' AND '.join(where) or '1'}"
            " ORDER BY id DESC LIMIT ?"
        )
        rows = await self.read(lambda c: c.execute(sql, (*params, max(1, min(f.limit, MAX_ROWS)))).fetchall())
        return [message_row(row) for row in rows]

    def _search_sealed(self, c: sqlite3.Connection, f: MessageFilter) -> list[dict[str, Any]]:
        """A patient search on encrypted payloads: the other criteria in SQL, the term on the clear
        payloads of at most PATIENT_SCAN_ROWS of their newest messages."""
        where, params = search_clauses(replace(f, patient=""))
        sql = (
            f"SELECT {MESSAGE_FIELDS}, raw FROM messages JOIN contents ON contents.message_id = messages.id"
            f" WHERE {' AND '.join(where) or '1'} ORDER BY id DESC LIMIT ?"
        )
        wanted = max(1, min(f.limit, MAX_ROWS))
        found = []
        for *row, raw in c.execute(sql, (*params, PATIENT_SCAN_ROWS)):
            if matches_patient(f.patient, self._clear(raw, "raw")):
                found.append(message_row(tuple(row)))
                if len(found) == wanted:
                    break
        return found

    def _clear(self, value: bytes | None, column: str) -> bytes | None:
        return self.cipher.decrypt(value, column) if self.cipher is not None else value

    async def message(self, message_id: int) -> dict[str, Any] | None:
        """A message with its contents (decrypted), history and deliveries; None if unknown."""

        def query(c: sqlite3.Connection) -> dict[str, Any] | None:
            row = c.execute(f"SELECT {MESSAGE_FIELDS} FROM messages WHERE id=?", (message_id,)).fetchone()
            if row is None:
                return None
            found = message_row(row)
            content = c.execute(
                "SELECT raw, transformed, response FROM contents WHERE message_id=?", (message_id,)
            ).fetchone() or (b"", None, None)
            for column, value in zip(("raw", "transformed", "response"), content, strict=True):
                found[column] = self._clear(value, column)
            found["events"] = events(c, message_id)
            found["deliveries"] = message_deliveries(c, message_id)
            for delivery in found["deliveries"]:
                delivery["response"] = self._clear(delivery["response"], "delivery_response")
            found["related"] = related(c, message_id)
            return found

        return await self.read(query)

    async def audit_entries(self, limit: int = 200, before_id: int | None = None) -> list[dict[str, Any]]:
        sql = (
            "SELECT id, at, user, role, action, subject, detail, client FROM audit_log"
            " WHERE (? IS NULL OR id < ?) ORDER BY id DESC LIMIT ?"
        )
        rows = await self.read(
            lambda c: c.execute(sql, (before_id, before_id, min(limit, MAX_ROWS))).fetchall()
        )
        keys = ("id", "at", "user", "role", "action", "subject", "detail", "client")
        return [
            {**dict(zip(keys, r, strict=True)), "detail": open_audit_detail(self.cipher, r[6])} for r in rows
        ]


def seal_audit_detail(cipher: PayloadCipher | None, detail: dict[str, Any]) -> dict[str, Any]:
    """An audit detail holding patient data (a search term), encrypted like the payloads."""
    if cipher is None:
        return detail
    sealed = cipher.encrypt(json.dumps(detail, sort_keys=True).encode(), AUDIT_AAD) or b""
    return {SEALED: base64.b64encode(sealed).decode()}


def open_audit_detail(cipher: PayloadCipher | None, text: str) -> dict[str, Any]:
    """A stored audit detail, decrypted when it was sealed."""
    detail: dict[str, Any] = json.loads(text)
    if SEALED in detail and cipher is not None:
        detail = json.loads(cipher.decrypt(base64.b64decode(detail[SEALED]), AUDIT_AAD) or b"{}")
    return detail


def matches_patient(term: str, raw: bytes | None) -> bool:
    """A patient search term found in a clear payload (case-insensitive)."""
    return term.upper() in (raw or b"").decode("utf-8", "replace").upper()


def search_clauses(f: MessageFilter, mark: str = "?") -> tuple[list[str], list[Any]]:
    """The WHERE clauses of a search and their parameters; `mark`: the driver's placeholder
    (SQLite `?`, psycopg `%s`). The patient clause is SQLite's (PostgreSQL searches in Python)."""
    clauses: list[tuple[bool, str, tuple[Any, ...]]] = [
        (bool(f.channel), "channel = ?", (f.channel,)),
        # a reprocessed message's control id is the original's plus "~reprocess-..."
        (
            bool(f.control_id),
            "(control_id = ? OR substr(control_id, 1, ?) = ?)",
            (f.control_id, len(f.control_id) + 1, f.control_id + "~"),
        ),
        (bool(f.sender), "sender = ?", (f.sender,)),
        (bool(f.status), "status = ?", (f.status,)),
        (f.since is not None, "received_at >= ?", (f.since,)),
        (f.until is not None, "received_at < ?", (f.until,)),
        (f.before_id is not None, "id < ?", (f.before_id,)),
        (bool(f.patient), "instr(upper(CAST(contents.raw AS TEXT)), upper(?)) > 0", (f.patient,)),
    ]
    used = [(sql.replace("?", mark), params) for wanted, sql, params in clauses if wanted]
    return [sql for sql, _ in used], [p for _, params in used for p in params]


def message_row(row: tuple[Any, ...]) -> dict[str, Any]:
    keys = (
        "id",
        "channel",
        "received_at",
        "updated_at",
        "content_type",
        "source_type",
        "peer",
        "tls_subject",
        "filename",
        "control_id",
        "sender",
        "status",
        "intake_status",
        "ack_code",
        "findings",
    )
    found = dict(zip(keys, row, strict=True))
    found["findings"] = json.loads(found["findings"]) if found["findings"] else []
    return found


def events(c: sqlite3.Connection, message_id: int) -> list[dict[str, Any]]:
    first = c.execute(
        "SELECT received_at, intake_status, ack_code FROM messages WHERE id=?", (message_id,)
    ).fetchone()
    history = [{"at": first[0], "status": first[1], "destination": None, "detail": f"ACK {first[2]}".strip()}]
    for at, status, destination, detail in c.execute(
        "SELECT at, status, destination, detail FROM events WHERE message_id=? ORDER BY id", (message_id,)
    ):
        history.append({"at": at, "status": status, "destination": destination, "detail": detail})
    return history


def message_deliveries(c: sqlite3.Connection, message_id: int) -> list[dict[str, Any]]:
    keys = ("id", "destination", "status", "attempts", "created_at", "updated_at", "last_error", "response")
    rows = c.execute(
        f"SELECT {', '.join(keys)} FROM deliveries WHERE message_id=? ORDER BY id", (message_id,)
    )
    return [dict(zip(keys, r, strict=True)) for r in rows]


def related(c: sqlite3.Connection, message_id: int) -> list[dict[str, Any]]:
    """Reprocess links recorded in the audit log, in either direction."""
    rows = c.execute(
        "SELECT at, user, detail FROM audit_log WHERE action='reprocess'"
        " AND (subject=? OR json_extract(detail, '$.new_message')=?) ORDER BY id",
        (f"message {message_id}", message_id),
    ).fetchall()
    return [{"at": at, "user": user, **json.loads(detail)} for at, user, detail in rows]


def first_finding(findings: str | None) -> str:
    items = json.loads(findings) if findings else []
    return str(items[0].get("text", "")) if items else ""
