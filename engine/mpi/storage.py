"""MPI tables in the engine's database file (prefix `mpi_`), on our own sqlite3 connections.

WAL journal so readers never wait for the engine's writer; every write is one
`BEGIN IMMEDIATE` transaction (with a busy timeout) so a decision, its history and its audit
record commit together or not at all. The engine's own tables are never touched here.

Tables: mpi_identity (certified identities; `traits` is the display form, `norm` the
normalized form the in-memory index is built from), mpi_facility (facility identities: local id
+ assigning authority), mpi_link (facility -> certified, with score, method and evidence; ended
links are kept), mpi_review (review items), mpi_distinct ("these are different people"),
mpi_history (link history), mpi_audit (who, when, why), mpi_weights, mpi_meta, mpi_delta.

Encryption at rest (engine/store/component_seal.py, when `store.encryption` is configured):
traits, norm and review candidates are sealed; register_key, matricule and a
facility's local_id are keyed digests, each with a `<column>_sealed` copy of the clear value.
Rows stored in clear before still read; `passerelle store reencrypt` seals them (`PROTECTED`).
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

from engine.store.component_db import ComponentDatabase
from engine.store.component_seal import ColumnSealer, ProtectedTable, add_columns, marks

SCHEMA = """
CREATE TABLE IF NOT EXISTS mpi_identity (
  id INTEGER PRIMARY KEY, enterprise_id TEXT NOT NULL UNIQUE, register_key TEXT NOT NULL UNIQUE,
  matricule TEXT NOT NULL DEFAULT '', status TEXT NOT NULL DEFAULT 'active', merged_into INTEGER,
  traits TEXT NOT NULL, norm TEXT NOT NULL, updated_at REAL NOT NULL, register_key_sealed, matricule_sealed);
CREATE INDEX IF NOT EXISTS mpi_identity_matricule ON mpi_identity(matricule) WHERE matricule != '';
CREATE TABLE IF NOT EXISTS mpi_facility (
  id INTEGER PRIMARY KEY, authority TEXT NOT NULL, local_id TEXT NOT NULL, traits TEXT NOT NULL,
  status TEXT NOT NULL, merged_into INTEGER, updated_at REAL NOT NULL, local_id_sealed,
  UNIQUE(authority, local_id));
CREATE TABLE IF NOT EXISTS mpi_link (
  id INTEGER PRIMARY KEY, facility_id INTEGER NOT NULL, identity_id INTEGER NOT NULL, score REAL,
  method TEXT NOT NULL, evidence TEXT NOT NULL, created_at REAL NOT NULL, created_by TEXT NOT NULL,
  active INTEGER NOT NULL DEFAULT 1, ended_at REAL, ended_by TEXT, end_reason TEXT);
CREATE INDEX IF NOT EXISTS mpi_link_facility ON mpi_link(facility_id) WHERE active = 1;
CREATE INDEX IF NOT EXISTS mpi_link_identity ON mpi_link(identity_id) WHERE active = 1;
CREATE TABLE IF NOT EXISTS mpi_review (
  id INTEGER PRIMARY KEY, facility_id INTEGER NOT NULL, status TEXT NOT NULL, reasons TEXT NOT NULL,
  candidates TEXT NOT NULL, score REAL, created_at REAL NOT NULL, decided_at REAL, decided_by TEXT,
  decision_reason TEXT);
CREATE INDEX IF NOT EXISTS mpi_review_open ON mpi_review(status, id);
CREATE INDEX IF NOT EXISTS mpi_review_facility ON mpi_review(facility_id);
CREATE TABLE IF NOT EXISTS mpi_distinct (
  facility_id INTEGER NOT NULL, identity_id INTEGER NOT NULL, created_at REAL NOT NULL,
  created_by TEXT NOT NULL, reason TEXT NOT NULL, PRIMARY KEY (facility_id, identity_id));
CREATE TABLE IF NOT EXISTS mpi_history (
  id INTEGER PRIMARY KEY, at REAL NOT NULL, action TEXT NOT NULL, facility_id INTEGER,
  identity_id INTEGER, other_id INTEGER, user TEXT NOT NULL, reason TEXT NOT NULL, details TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS mpi_history_identity ON mpi_history(identity_id);
CREATE TABLE IF NOT EXISTS mpi_audit (
  id INTEGER PRIMARY KEY, at REAL NOT NULL, user TEXT NOT NULL, action TEXT NOT NULL,
  subject TEXT NOT NULL, reason TEXT NOT NULL, details TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS mpi_weights (
  id INTEGER PRIMARY KEY, created_at REAL NOT NULL, weights TEXT NOT NULL, active INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS mpi_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS mpi_delta (
  filename TEXT PRIMARY KEY, sha256 TEXT NOT NULL, applied_at REAL NOT NULL, rows INTEGER NOT NULL);
"""
# Where each protected value lives (`table.column`: its associated data, its digest's domain).
TRAITS, NORM = "mpi_identity.traits", "mpi_identity.norm"
REGISTER_KEY, MATRICULE = "mpi_identity.register_key", "mpi_identity.matricule"
FACILITY_TRAITS, LOCAL_ID = "mpi_facility.traits", "mpi_facility.local_id"
CANDIDATES = "mpi_review.candidates"
PROTECTED = (
    ProtectedTable("mpi_identity", ("traits", "norm"), ("register_key", "matricule")),
    ProtectedTable("mpi_facility", ("traits",), ("local_id",)),
    ProtectedTable("mpi_review", ("candidates",)),
)  # mpi_link.evidence holds agreement levels and reasons (never a trait): left in clear


class Storage(ComponentDatabase):
    """The MPI's tables (engine/store/component_db.py: one locked connection, WAL, FULL sync:
    a link, merge or review decision and its audit row must survive a power loss)."""

    def __init__(self, path: Path, busy_timeout_ms: int = 10_000, sealer: ColumnSealer | None = None) -> None:
        super().__init__(path, busy_timeout_ms)
        self.sealer = sealer or ColumnSealer(None)
        self._create()

    def _create(self) -> None:
        with self.write() as c:
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    c.execute(statement)
            add_columns(c, "mpi_identity", ("register_key_sealed", "matricule_sealed"))
            add_columns(c, "mpi_facility", ("local_id_sealed",))

    # -- protected values (engine/store/component_seal.py) -----------------------------------------

    def facility_id(self, c: sqlite3.Connection, authority: str, local_id: str) -> int | None:
        """The facility identity of (authority, local id), whether its row is sealed or clear."""
        ids = self.sealer.candidates(local_id, LOCAL_ID)
        row = c.execute(
            f"SELECT id FROM mpi_facility WHERE authority = ? AND local_id IN ({marks(ids)}) LIMIT 1",
            (authority, *ids),
        ).fetchone()
        return int(row[0]) if row else None

    def facility_row(self, authority: str, local_id: str) -> tuple[Any, ...] | None:
        """(id, status, merged_into) of a facility identity."""
        ids = self.sealer.candidates(local_id, LOCAL_ID)
        return self.one(
            "SELECT id, status, merged_into FROM mpi_facility "
            f"WHERE authority = ? AND local_id IN ({marks(ids)}) LIMIT 1",
            (authority, *ids),
        )

    def identity_by_matricule(self, matricule: str) -> int | None:
        values = self.sealer.candidates(matricule, MATRICULE)
        row = self.one(
            f"SELECT id FROM mpi_identity WHERE matricule IN ({marks(values)}) "
            "AND status != 'deleted' LIMIT 1",
            tuple(values),
        )
        return int(row[0]) if row else None

    def identity_ids(self, c: sqlite3.Connection, keys: list[str]) -> dict[str, int]:
        """register key -> identity id, for those of `keys` already in the register."""
        forms = {form: key for key in keys for form in self.sealer.candidates(key, REGISTER_KEY)}
        rows = c.execute(
            "SELECT register_key, id FROM mpi_identity "
            "WHERE register_key IN (SELECT value FROM json_each(?))",
            (json.dumps(list(forms)),),
        )
        return {forms[str(k)]: int(i) for k, i in rows}

    def identity_traits(self, identity_id: int) -> dict[str, Any] | None:
        row = self.one("SELECT traits FROM mpi_identity WHERE id = ?", (identity_id,))
        return json.loads(self.sealer.open(row[0], TRAITS)) if row else None

    def matricule(self, identity_id: int) -> str | None:
        row = self.one("SELECT matricule, matricule_sealed FROM mpi_identity WHERE id = ?", (identity_id,))
        return self.sealer.shown(row[0], row[1], MATRICULE) if row else None

    def local_id(self, value: Any, copy: Any) -> str:
        """A facility row's clear local id from its `local_id`, `local_id_sealed` columns."""
        return self.sealer.shown(value, copy, LOCAL_ID)

    def norm_values(self, stored: Any) -> list[Any]:
        values: list[Any] = json.loads(self.sealer.open(stored, NORM))
        return values

    def one(self, sql: str, params: tuple[Any, ...] = ()) -> tuple[Any, ...] | None:
        with self.lock:
            row: tuple[Any, ...] | None = self.conn.execute(sql, params).fetchone()
            return row

    # -- meta ----------------------------------------------------------------------------------

    def meta(self, key: str, default: str = "") -> str:
        row = self.one("SELECT value FROM mpi_meta WHERE key = ?", (key,))
        return str(row[0]) if row else default

    @staticmethod
    def set_meta(c: sqlite3.Connection, key: str, value: str) -> None:
        c.execute(
            "INSERT INTO mpi_meta(key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    @staticmethod
    def bump_register_version(c: sqlite3.Connection) -> None:
        row = c.execute("SELECT value FROM mpi_meta WHERE key = 'register_version'").fetchone()
        Storage.set_meta(c, "register_version", str(int(row[0]) + 1 if row else 1))

    def register_version(self) -> int:
        return int(self.meta("register_version", "0"))


def audit(
    c: sqlite3.Connection,
    user: str,
    action: str,
    subject: str,
    reason: str,
    details: dict[str, Any] | None = None,
) -> None:
    """One audit record: who, when, what, why. Written in the caller's transaction."""
    c.execute(
        "INSERT INTO mpi_audit(at, user, action, subject, reason, details) VALUES (?, ?, ?, ?, ?, ?)",
        (time.time(), user, action, subject, reason, json.dumps(details or {}, sort_keys=True)),
    )


def history(
    c: sqlite3.Connection,
    action: str,
    user: str,
    reason: str,
    facility_id: int | None = None,
    identity_id: int | None = None,
    other_id: int | None = None,
    details: dict[str, Any] | None = None,
) -> None:
    c.execute(
        "INSERT INTO mpi_history(at, action, facility_id, identity_id, other_id, user, reason, details) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (time.time(), action, facility_id, identity_id, other_id, user, reason, json.dumps(details or {})),
    )
