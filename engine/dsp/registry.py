"""The DSP registry: one metadata row per document, and the list of closed DSPs, in the engine's
database file (tables prefixed `dsp_`), on this module's own sqlite3 connection.

WAL journal, so readers never wait for a writer; every write is one `BEGIN IMMEDIATE`
transaction with a busy timeout, so a document, the deprecation of the version it replaces, or
a closure and its audit record commit together or not at all. The engine's tables are never
touched. Rows hold patient ids (this is the record itself): never log them.

Versions: within a set (CDA setId), a document is `deprecated` once another document replaces
it (RPLC) or a higher version of the set is stored, whatever the order they arrive in; the
others are `current`.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from engine.errors import PasserelleError
from engine.store.component_db import ComponentDatabase

SCHEMA = """
CREATE TABLE IF NOT EXISTS dsp_document (
  id INTEGER PRIMARY KEY, document_id TEXT NOT NULL UNIQUE, set_id TEXT NOT NULL, version INTEGER NOT NULL,
  replaces TEXT NOT NULL, status TEXT NOT NULL, type_code TEXT NOT NULL, type_name TEXT NOT NULL,
  title TEXT NOT NULL, mime TEXT NOT NULL, effective_time TEXT NOT NULL, sort_time TEXT NOT NULL,
  confidentiality TEXT NOT NULL, matricule TEXT NOT NULL, enterprise_id TEXT NOT NULL, author TEXT NOT NULL,
  author_organization TEXT NOT NULL, custodian TEXT NOT NULL, sha256 TEXT NOT NULL, size INTEGER NOT NULL,
  source TEXT NOT NULL, stored_at REAL NOT NULL, details TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS dsp_document_matricule ON dsp_document(matricule, sort_time);
CREATE INDEX IF NOT EXISTS dsp_document_by_enterprise ON dsp_document(enterprise_id, sort_time);
CREATE INDEX IF NOT EXISTS dsp_document_set ON dsp_document(set_id, version);
CREATE INDEX IF NOT EXISTS dsp_document_by_replaces ON dsp_document(replaces);
CREATE TABLE IF NOT EXISTS dsp_closure (
  patient TEXT PRIMARY KEY, closed_at REAL NOT NULL, closed_by TEXT NOT NULL, reason TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS dsp_audit (
  id INTEGER PRIMARY KEY, at REAL NOT NULL, user TEXT NOT NULL, action TEXT NOT NULL,
  subject TEXT NOT NULL, reason TEXT NOT NULL);
"""
CURRENT, DEPRECATED = "current", "deprecated"
STATUSES = (CURRENT, DEPRECATED)


class DocumentConflict(PasserelleError):
    """A document id already stored with different content (ids must never be reused)."""


@dataclass(frozen=True)
class Entry:
    """One document's registry row (`status` and `stored_at` are set by the registry)."""

    document_id: str
    set_id: str
    version: int
    replaces: str
    type_code: str
    type_name: str
    title: str
    mime: str
    effective_time: str
    confidentiality: str
    matricule: str
    enterprise_id: str
    author: str
    author_organization: str
    custodian: str
    sha256: str
    size: int
    source: str
    details: dict[str, Any] = field(default_factory=dict)
    status: str = CURRENT
    stored_at: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


COLUMNS = [f.name for f in fields(Entry)]


@dataclass(frozen=True)
class Query:
    """A listing: one patient (by matricule and/or enterprise id) and optional filters.

    `date_from` / `date_to` are YYYYMMDD (inclusive) compared with the document's effective time.
    """

    matricule: str = ""
    enterprise_id: str = ""
    type_code: str = ""
    status: str = ""
    date_from: str = ""
    date_to: str = ""
    limit: int = 100


@dataclass(frozen=True)
class Closure:
    """A closed DSP; `patient` is the matricule (the enterprise id for an identity without one)."""

    patient: str
    closed_at: float
    closed_by: str
    reason: str


def sort_time(effective_time: str) -> str:
    """A HL7 TS (`YYYYMMDD[hhmm[ss]][.f][+zzzz]`) as 14 digits for ordering and date ranges
    (local time as written: the offset is kept in `effective_time`)."""
    digits = ""
    for ch in effective_time:
        if not ch.isdigit():
            break
        digits += ch
    return (digits[:14]).ljust(14, "0")


class Registry(ComponentDatabase):
    """The DSP's metadata rows (engine/store/component_db.py: one locked connection, FULL sync)."""

    def __init__(self, path: Path, busy_timeout_ms: int = 10_000) -> None:
        super().__init__(path, busy_timeout_ms)
        with self.write() as c:
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    c.execute(statement)

    # -- documents -------------------------------------------------------------------------------

    def register(self, entry: Entry) -> tuple[Entry, bool]:
        """Record a document; (the stored row, True) or (the row already there, False) for the
        same document again. DocumentConflict when its id is taken by different content."""
        with self.write() as c:
            existing = _one_entry(c, "document_id = ?", (entry.document_id,))
            if existing is not None:
                if existing.sha256 != entry.sha256:
                    raise DocumentConflict(
                        f"document {entry.document_id} is already stored with different content: "
                        "a new version needs a new document id (and relatedDocument RPLC)"
                    )
                return existing, False
            stored = _insert(c, entry)
        return stored, True

    def get(self, document_id: str) -> Entry | None:
        with self.lock:
            return _one_entry(self.conn, "document_id = ?", (document_id,))

    def latest(self, set_id: str) -> Entry | None:
        """The highest stored version of a set, if any."""
        with self.lock:
            return _one_entry(self.conn, "set_id = ? ORDER BY version DESC", (set_id,))

    def documents(self, query: Query) -> list[Entry]:
        """A patient's documents, newest effective time first."""
        where, params = _filters(query)
        sql = (
            f"SELECT {', '.join(COLUMNS)} FROM dsp_document WHERE {where} "
            "ORDER BY sort_time DESC, id DESC LIMIT ?"
        )
        return [_entry(row) for row in self.query(sql, (*params, query.limit))]

    def count(self) -> int:
        return int(self.query("SELECT count(*) FROM dsp_document")[0][0])

    # -- closed DSPs -----------------------------------------------------------------------------

    def closure(self, *patients: str) -> Closure | None:
        """The closure of the first of `patients` (matricule, enterprise id) whose DSP is closed."""
        for patient in filter(None, patients):
            rows = self.query(
                "SELECT patient, closed_at, closed_by, reason FROM dsp_closure WHERE patient = ?", (patient,)
            )
            if rows:
                return Closure(*rows[0])
        return None

    def close_record(self, patient: str, user: str, reason: str) -> bool:
        """Close a patient's DSP (nothing is stored for them any more); False if already closed."""
        with self.write() as c:
            done = (
                c.execute(
                    "INSERT OR IGNORE INTO dsp_closure VALUES (?, ?, ?, ?)",
                    (patient, time.time(), user, reason),
                ).rowcount
                == 1
            )
            _audit(c, user, "close", patient, reason)
        return bool(done)

    def reopen_record(self, patient: str, user: str, reason: str) -> bool:
        """Reopen a closed DSP; False if it was not closed."""
        with self.write() as c:
            done = c.execute("DELETE FROM dsp_closure WHERE patient = ?", (patient,)).rowcount == 1
            _audit(c, user, "reopen", patient, reason)
        return bool(done)

    def audit_trail(self, subject: str = "") -> list[tuple[Any, ...]]:
        sql = "SELECT at, user, action, subject, reason FROM dsp_audit"
        return (
            self.query(sql + " WHERE subject = ? ORDER BY id", (subject,))
            if subject
            else self.query(sql + " ORDER BY id")
        )


def _filters(q: Query) -> tuple[str, list[Any]]:
    if q.matricule:
        where, params = ["matricule = ?"], [q.matricule]
    elif q.enterprise_id:
        where, params = ["enterprise_id = ?"], [q.enterprise_id]
    else:
        raise ValueError("a listing needs the patient: a national id (matricule) or an enterprise id")
    until = q.date_to and q.date_to + "235959"
    for clause, value in (
        ("type_code = ?", q.type_code),
        ("status = ?", q.status),
        ("sort_time >= ?", q.date_from),
        ("sort_time <= ?", until),
    ):
        if value:
            where.append(clause)
            params.append(value)
    return " AND ".join(where), params


def _insert(c: sqlite3.Connection, entry: Entry) -> Entry:
    superseded = c.execute(
        "SELECT 1 FROM dsp_document WHERE replaces = ? OR (set_id = ? AND version > ?) LIMIT 1",
        (entry.document_id, entry.set_id, entry.version),
    ).fetchone()
    row = {**entry.as_dict(), "status": DEPRECATED if superseded else CURRENT, "stored_at": time.time()}
    values = [json.dumps(row["details"]) if k == "details" else row[k] for k in COLUMNS]
    marks = ", ".join("?" * (len(COLUMNS) + 1))
    c.execute(
        f"INSERT INTO dsp_document({', '.join(COLUMNS)}, sort_time) VALUES ({marks})",
        (*values, sort_time(entry.effective_time)),
    )
    c.execute(
        "UPDATE dsp_document SET status = ? WHERE status = ? AND document_id != ? AND "
        "(document_id = ? OR (set_id = ? AND version < ?))",
        (DEPRECATED, CURRENT, entry.document_id, entry.replaces, entry.set_id, entry.version),
    )
    return Entry(**row)


def _one_entry(c: sqlite3.Connection, where: str, params: tuple[Any, ...]) -> Entry | None:
    row = c.execute(f"SELECT {', '.join(COLUMNS)} FROM dsp_document WHERE {where} LIMIT 1", params).fetchone()
    return _entry(row) if row else None


def _entry(row: tuple[Any, ...]) -> Entry:
    values = dict(zip(COLUMNS, row, strict=True))
    values["details"] = json.loads(values["details"])
    return Entry(**values)


def _audit(c: sqlite3.Connection, user: str, action: str, subject: str, reason: str) -> None:
    c.execute(
        "INSERT INTO dsp_audit(at, user, action, subject, reason) VALUES (?, ?, ?, ?, ?)",
        (time.time(), user, action, subject, reason),
    )
