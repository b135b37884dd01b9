"""The DSP registry: one metadata row per document, and the list of closed DSPs, in the engine's
database file (tables prefixed `dsp_`), on this module's own sqlite3 connection.

WAL journal, so readers never wait for a writer; every write is one `BEGIN IMMEDIATE`
transaction with a busy timeout, so a document, the deprecation of the version it replaces, or
a closure and its audit record commit together or not at all. The engine's tables are never
touched. Rows hold patient ids (this is the record itself): never log them.

Versions: within a set (CDA setId), a document is `deprecated` once another document replaces
it (RPLC) or a higher version of the set is stored, whatever the order they arrive in; the
others are `current`.

Encryption at rest (engine/store/component_seal.py, when `store.encryption` is configured): the
patient ids (a document's matricule, a closed patient, an audit subject) are keyed digests, each
with a `<column>_sealed` copy shown back; rows stored in clear before still match and read. The
enterprise id (the MPI's pseudonymous E... number, no trait) stays in clear for listings.
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
from engine.store.component_seal import ColumnSealer, ProtectedTable, add_columns, marks

SCHEMA = """
CREATE TABLE IF NOT EXISTS dsp_document (
  id INTEGER PRIMARY KEY, document_id TEXT NOT NULL UNIQUE, set_id TEXT NOT NULL, version INTEGER NOT NULL,
  replaces TEXT NOT NULL, status TEXT NOT NULL, type_code TEXT NOT NULL, type_name TEXT NOT NULL,
  title TEXT NOT NULL, mime TEXT NOT NULL, effective_time TEXT NOT NULL, sort_time TEXT NOT NULL,
  confidentiality TEXT NOT NULL, matricule TEXT NOT NULL, enterprise_id TEXT NOT NULL, author TEXT NOT NULL,
  author_organization TEXT NOT NULL, custodian TEXT NOT NULL, sha256 TEXT NOT NULL, size INTEGER NOT NULL,
  source TEXT NOT NULL, stored_at REAL NOT NULL, details TEXT NOT NULL, matricule_sealed);
CREATE INDEX IF NOT EXISTS dsp_document_matricule ON dsp_document(matricule, sort_time);
CREATE INDEX IF NOT EXISTS dsp_document_by_enterprise ON dsp_document(enterprise_id, sort_time);
CREATE INDEX IF NOT EXISTS dsp_document_set ON dsp_document(set_id, version);
CREATE INDEX IF NOT EXISTS dsp_document_by_replaces ON dsp_document(replaces);
CREATE TABLE IF NOT EXISTS dsp_closure (
  patient TEXT PRIMARY KEY, closed_at REAL NOT NULL, closed_by TEXT NOT NULL, reason TEXT NOT NULL,
  patient_sealed);
CREATE TABLE IF NOT EXISTS dsp_audit (
  id INTEGER PRIMARY KEY, at REAL NOT NULL, user TEXT NOT NULL, action TEXT NOT NULL,
  subject TEXT NOT NULL, reason TEXT NOT NULL, subject_sealed);
"""
MATRICULE, PATIENT, SUBJECT = "dsp_document.matricule", "dsp_closure.patient", "dsp_audit.subject"
PROTECTED = (
    ProtectedTable("dsp_document", lookups=("matricule",)),
    ProtectedTable("dsp_closure", lookups=("patient",)),
    ProtectedTable("dsp_audit", lookups=("subject",)),
)
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
SELECTED = ", ".join([*COLUMNS, "matricule_sealed"])


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

    def __init__(self, path: Path, busy_timeout_ms: int = 10_000, sealer: ColumnSealer | None = None) -> None:
        super().__init__(path, busy_timeout_ms)
        self.sealer = sealer or ColumnSealer(None)
        with self.write() as c:  # columns added in the same transaction (two processes may open)
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    c.execute(statement)
            add_columns(c, "dsp_document", ("matricule_sealed",))
            add_columns(c, "dsp_closure", ("patient_sealed",))
            add_columns(c, "dsp_audit", ("subject_sealed",))

    # -- documents -------------------------------------------------------------------------------

    def register(self, entry: Entry) -> tuple[Entry, bool]:
        """Record a document; (the stored row, True) or (the row already there, False) for the
        same document again. DocumentConflict when its id is taken by different content."""
        with self.write() as c:
            existing = self._one(c, "document_id = ?", (entry.document_id,))
            if existing is not None:
                if existing.sha256 != entry.sha256:
                    raise DocumentConflict(
                        f"document {entry.document_id} is already stored with different content: "
                        "a new version needs a new document id (and relatedDocument RPLC)"
                    )
                return existing, False
            stored = _insert(c, entry, self.sealer.lookup(entry.matricule, MATRICULE))
        return stored, True

    def get(self, document_id: str) -> Entry | None:
        with self.lock:
            return self._one(self.conn, "document_id = ?", (document_id,))

    def latest(self, set_id: str) -> Entry | None:
        """The highest stored version of a set, if any."""
        with self.lock:
            return self._one(self.conn, "set_id = ? ORDER BY version DESC", (set_id,))

    def documents(self, query: Query) -> list[Entry]:
        """A patient's documents, newest effective time first."""
        where, params = _filters(query, self.sealer)
        sql = f"SELECT {SELECTED} FROM dsp_document WHERE {where} ORDER BY sort_time DESC, id DESC LIMIT ?"
        return [self._entry(row) for row in self.query(sql, (*params, query.limit))]

    def _one(self, c: sqlite3.Connection, where: str, params: tuple[Any, ...]) -> Entry | None:
        row = c.execute(f"SELECT {SELECTED} FROM dsp_document WHERE {where} LIMIT 1", params).fetchone()
        return self._entry(row) if row else None

    def _entry(self, row: tuple[Any, ...]) -> Entry:
        values = dict(zip(COLUMNS, row[:-1], strict=True))
        values["details"] = json.loads(values["details"])
        values["matricule"] = self.sealer.shown(values["matricule"], row[-1], MATRICULE)
        return Entry(**values)

    def count(self) -> int:
        return int(self.query("SELECT count(*) FROM dsp_document")[0][0])

    # -- closed DSPs -----------------------------------------------------------------------------

    def closure(self, *patients: str) -> Closure | None:
        """The closure of the first of `patients` (matricule, enterprise id) whose DSP is closed."""
        for patient in filter(None, patients):
            forms = self.sealer.candidates(patient, PATIENT)
            rows = self.query(
                "SELECT patient, closed_at, closed_by, reason, patient_sealed FROM dsp_closure "
                f"WHERE patient IN ({marks(forms)}) LIMIT 1",
                tuple(forms),
            )
            if rows:
                row = rows[0]
                return Closure(self.sealer.shown(row[0], row[4], PATIENT), row[1], row[2], row[3])
        return None

    def close_record(self, patient: str, user: str, reason: str) -> bool:
        """Close a patient's DSP (nothing is stored for them any more); False if already closed."""
        forms = self.sealer.candidates(patient, PATIENT)
        with self.write() as c:
            sql = f"SELECT 1 FROM dsp_closure WHERE patient IN ({marks(forms)})"
            closed = c.execute(sql, forms).fetchone()
            if closed is None:
                c.execute(
                    "INSERT INTO dsp_closure(patient, patient_sealed, closed_at, closed_by, reason) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (*self.sealer.lookup(patient, PATIENT), time.time(), user, reason),
                )
            self._audit(c, user, "close", patient, reason)
        return closed is None

    def reopen_record(self, patient: str, user: str, reason: str) -> bool:
        """Reopen a closed DSP; False if it was not closed."""
        forms = self.sealer.candidates(patient, PATIENT)
        with self.write() as c:
            done = c.execute(f"DELETE FROM dsp_closure WHERE patient IN ({marks(forms)})", forms).rowcount > 0
            self._audit(c, user, "reopen", patient, reason)
        return bool(done)

    def audit_trail(self, subject: str = "") -> list[tuple[Any, ...]]:
        """(at, user, action, subject, reason), oldest first; the subject shown in clear."""
        sql = "SELECT at, user, action, subject, reason, subject_sealed FROM dsp_audit"
        forms = self.sealer.candidates(subject, SUBJECT)
        rows = (
            self.query(sql + f" WHERE subject IN ({marks(forms)}) ORDER BY id", tuple(forms))
            if subject
            else self.query(sql + " ORDER BY id")
        )
        return [(*r[:3], self.sealer.shown(r[3], r[5], SUBJECT), r[4]) for r in rows]

    def _audit(self, c: sqlite3.Connection, user: str, action: str, subject: str, reason: str) -> None:
        c.execute(
            "INSERT INTO dsp_audit(at, user, action, subject, subject_sealed, reason) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (time.time(), user, action, *self.sealer.lookup(subject, SUBJECT), reason),
        )


def _filters(q: Query, sealer: ColumnSealer) -> tuple[str, list[Any]]:
    if q.matricule:
        forms = sealer.candidates(q.matricule, MATRICULE)
        where, params = [f"matricule IN ({marks(forms)})"], list(forms)
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


def _insert(c: sqlite3.Connection, entry: Entry, matricule: tuple[str, Any]) -> Entry:
    """Insert `entry`, its matricule stored as `matricule` (column value, sealed copy)."""
    superseded = c.execute(
        "SELECT 1 FROM dsp_document WHERE replaces = ? OR (set_id = ? AND version > ?) LIMIT 1",
        (entry.document_id, entry.set_id, entry.version),
    ).fetchone()
    row = {**entry.as_dict(), "status": DEPRECATED if superseded else CURRENT, "stored_at": time.time()}
    stored = {**row, "details": json.dumps(row["details"]), "matricule": matricule[0]}
    values = [stored[k] for k in COLUMNS]
    c.execute(
        f"INSERT INTO dsp_document({', '.join(COLUMNS)}, sort_time, matricule_sealed) "
        f"VALUES ({marks(COLUMNS)}, ?, ?)",
        (*values, sort_time(entry.effective_time), matricule[1]),
    )
    c.execute(
        "UPDATE dsp_document SET status = ? WHERE status = ? AND document_id != ? AND "
        "(document_id = ? OR (set_id = ? AND version < ?))",
        (DEPRECATED, CURRENT, entry.document_id, entry.replaces, entry.set_id, entry.version),
    )
    return Entry(**row)
