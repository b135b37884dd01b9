"""Notifiable cases: one per patient and disease within the disease's window, in the engine's SQLite file.

Tables are `reporting_*`, beside the store's own (engine/store is not touched): own connections,
WAL, `BEGIN IMMEDIATE` and a busy timeout, so the store's writer and this code serialise cleanly.

`record` is idempotent per (message key, disease): a message delivered twice (at-least-once
delivery) contributes once and never bumps the version twice. A new positive opens a case
(version 1, `new`); another positive of the same patient and disease within the window updates it
(`updated`); a correction (OBX-11 C) amends it (`amended`); a later negative is not passed here at
all (detection drops it), so it never cancels a case. Every version has a report row whose
`delivered_at` is set once the authority's broker confirmed it; a delivered version also covers the
older undelivered ones (each report carries the whole case).

Encryption at rest (engine/store/component_seal.py, with the store's cipher): a case's patient
key (enterprise id or `national:<id>`) is a keyed digest with a sealed copy, its birth date and
postal code are sealed, and so is each contribution's detection (the results and the patient as
the laboratory sent them). Disease, sex, versions and times stay in clear for counts.
"""

from __future__ import annotations

import calendar
import secrets
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from engine.reporting.detection import Detection, Patient, Result
from engine.store.cipher import PayloadCipher
from engine.store.component_seal import ColumnSealer, ProtectedTable, add_columns, marks

SCHEMA = """
CREATE TABLE IF NOT EXISTS reporting_cases (
    case_id TEXT PRIMARY KEY, patient_key TEXT NOT NULL, identity TEXT NOT NULL, disease TEXT NOT NULL,
    opened_at REAL NOT NULL, window_ends REAL NOT NULL, version INTEGER NOT NULL, action TEXT NOT NULL,
    updated_at REAL NOT NULL, birth_date TEXT NOT NULL, sex TEXT NOT NULL, postal_code TEXT NOT NULL,
    patient_key_sealed);
CREATE INDEX IF NOT EXISTS reporting_cases_patient ON reporting_cases (patient_key, disease, opened_at);
CREATE TABLE IF NOT EXISTS reporting_contributions (
    case_id TEXT NOT NULL, message_key TEXT NOT NULL, disease TEXT NOT NULL, message_id INTEGER,
    version INTEGER NOT NULL, kind TEXT NOT NULL, received_at REAL NOT NULL, observed_at REAL NOT NULL,
    detection TEXT NOT NULL, PRIMARY KEY (case_id, message_key));
CREATE INDEX IF NOT EXISTS reporting_contributions_message ON reporting_contributions (message_key, disease);
CREATE TABLE IF NOT EXISTS reporting_reports (
    case_id TEXT NOT NULL, version INTEGER NOT NULL, action TEXT NOT NULL, received_at REAL NOT NULL,
    created_at REAL NOT NULL, delivered_at REAL, PRIMARY KEY (case_id, version));
CREATE INDEX IF NOT EXISTS reporting_reports_pending ON reporting_reports (delivered_at, received_at);
"""

DAY = 86400.0
PATIENT_KEY, BIRTH_DATE = "reporting_cases.patient_key", "reporting_cases.birth_date"
POSTAL_CODE, DETECTION = "reporting_cases.postal_code", "reporting_contributions.detection"
PROTECTED = (
    ProtectedTable("reporting_cases", ("birth_date", "postal_code"), ("patient_key",)),
    ProtectedTable("reporting_contributions", ("detection",)),
)


@dataclass(frozen=True)
class Identity:
    """Whose case: the MPI's enterprise id (resolved), else the national id from PID-3 (unresolved)."""

    key: str
    resolved: bool

    @classmethod
    def of(cls, enterprise_id: str, patient: Patient) -> Identity:
        if enterprise_id:
            return cls(enterprise_id, True)
        return cls(f"national:{patient.national_id or 'unknown'}", False)


@dataclass(frozen=True)
class Incoming:
    """One message's results for one disease."""

    message_key: str
    message_id: int | None
    received_at: float
    identity: Identity
    disease: str
    window_days: int
    detection: Detection  # only this disease's results

    @property
    def observed_at(self) -> float:
        times = [parse_time(r.observed) for r in self.detection.results]
        return min([t for t in times if t is not None], default=self.received_at)

    @property
    def correction(self) -> bool:
        return any(r.correction for r in self.detection.results)


@dataclass(frozen=True)
class Upsert:
    case_id: str
    version: int
    action: str  # new | updated | amended | unchanged
    delivered: bool  # the case's current version is already delivered


@dataclass(frozen=True)
class Contribution:
    message_key: str
    version: int
    kind: str
    received_at: float
    detection: Detection


@dataclass(frozen=True)
class Case:
    case_id: str
    patient_key: str
    identity: str
    disease: str
    opened_at: float
    version: int
    action: str
    updated_at: float
    contributions: tuple[Contribution, ...]

    @property
    def resolved(self) -> bool:
        return self.identity == "resolved"


def parse_time(value: str) -> float | None:
    """HL7 DTM / CDA TS (YYYYMMDD[HHMM[SS]][+ZZZZ]) -> epoch seconds (UTC when no offset)."""
    digits = value[:14]
    if len(digits) < 8 or not digits[:8].isdigit():
        return None
    try:
        parts = time.strptime(digits.ljust(14, "0")[:14], "%Y%m%d%H%M%S")
    except ValueError:
        return None
    seconds = float(calendar.timegm(parts))
    for sign in ("+", "-"):
        if sign in value[8:]:
            offset = value[8:].rsplit(sign, 1)[1][:4]
            if len(offset) == 4 and offset.isdigit():
                delta = int(offset[:2]) * 3600 + int(offset[2:]) * 60
                seconds -= delta if sign == "+" else -delta
    return seconds


class CaseStore:
    """Case bookkeeping over one SQLite file; every method is blocking (call it in a thread)."""

    def __init__(self, path: Path, busy_timeout_ms: int = 30000, cipher: PayloadCipher | None = None) -> None:
        self.path = path
        self.busy_timeout_ms = busy_timeout_ms
        self.sealer = ColumnSealer(cipher)  # the store's encryption keys, if configured
        self._ready = False

    @contextmanager
    def _connect(self, write: bool = False) -> Iterator[sqlite3.Connection]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=self.busy_timeout_ms / 1000, isolation_level=None)
        try:
            conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout_ms)}")
            if not self._ready:
                conn.execute("PRAGMA journal_mode=WAL")
                _create(conn)
                self._ready = True
            conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        finally:
            conn.close()

    def record(self, incoming: Incoming, now: float | None = None) -> Upsert:
        """Add one message's results to its case (opening it if needed), once per message key."""
        now = time.time() if now is None else now
        with self._connect(write=True) as conn:
            seen = conn.execute(
                "SELECT c.case_id, c.version FROM reporting_contributions k "
                "JOIN reporting_cases c USING (case_id) "
                "WHERE k.message_key = ? AND k.disease = ?",
                (incoming.message_key, incoming.disease),
            ).fetchone()
            if seen is not None:
                return Upsert(seen[0], seen[1], "unchanged", _delivered(conn, seen[0], seen[1]))
            found = _open_case(conn, incoming, self.sealer)
            if found is None:
                return _new_case(conn, incoming, now, self.sealer)
            return _update_case(conn, incoming, found, now, self.sealer)

    def mark_delivered(self, case_id: str, version: int, now: float | None = None) -> None:
        """The authority has `version`: it and every older undelivered version count as delivered."""
        with self._connect(write=True) as conn:
            conn.execute(
                "UPDATE reporting_reports SET delivered_at = ? WHERE case_id = ? AND version <= ? "
                "AND delivered_at IS NULL",
                (time.time() if now is None else now, case_id, version),
            )

    def case(self, case_id: str) -> Case | None:
        with self._connect() as conn:
            row = conn.execute(
                "SELECT case_id, patient_key, identity, disease, opened_at, version, action, "
                "updated_at, patient_key_sealed FROM reporting_cases WHERE case_id = ?",
                (case_id,),
            ).fetchone()
            if row is None:
                return None
            rows = conn.execute(
                "SELECT message_key, version, kind, received_at, detection FROM "
                "reporting_contributions WHERE case_id = ? ORDER BY version, rowid",
                (case_id,),
            )
            contributions = tuple(
                Contribution(k, v, kind, r, Detection.from_json(self.sealer.open(d, DETECTION)))
                for k, v, kind, r, d in rows
            )
        patient_key = self.sealer.shown(row[1], row[8], PATIENT_KEY)
        return Case(row[0], patient_key, row[2], row[3], row[4], row[5], row[6], row[7], contributions)

    def cases(self, limit: int = 100) -> list[tuple[str, str, str, int, str, float]]:
        """(case id, disease, identity, version, action, updated_at), newest first: no patient data."""
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT case_id, disease, identity, version, action, updated_at FROM "
                "reporting_cases ORDER BY updated_at DESC LIMIT ?",
                (limit,),
            ).fetchall()
        return [tuple(r) for r in rows]

    def pending(self, older_than: float) -> list[tuple[str, int, float]]:
        """(case id, version, receipt time) of reports not delivered and received before `older_than`."""
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT case_id, version, received_at FROM reporting_reports WHERE "
                "delivered_at IS NULL AND received_at < ? ORDER BY received_at",
                (older_than,),
            ).fetchall()
        return [(r[0], r[1], r[2]) for r in rows]

    def timeliness(self) -> list[tuple[str, int, str, float, float | None]]:
        """(case id, version, action, receipt time, delivery time) of every report."""
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT case_id, version, action, received_at, delivered_at FROM "
                "reporting_reports ORDER BY received_at"
            ).fetchall()
        return [tuple(r) for r in rows]

    def aggregate_rows(self, start: float, end: float) -> list[tuple[str, float, str, str, str]]:
        """(disease, opened_at, birth_date, sex, postal_code) of cases opened in [start, end)."""
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT disease, opened_at, birth_date, sex, postal_code FROM reporting_cases "
                "WHERE opened_at >= ? AND opened_at < ?",
                (start, end),
            ).fetchall()
        return [
            (d, at, self.sealer.open(born, BIRTH_DATE), sex, self.sealer.open(postal, POSTAL_CODE))
            for d, at, born, sex, postal in rows
        ]


def _create(conn: sqlite3.Connection) -> None:
    """The tables, and the columns added since, in one write transaction (two processes opening
    an older file at once must not both see a column missing and race on ALTER TABLE)."""
    conn.execute("BEGIN IMMEDIATE")
    for statement in SCHEMA.split(";"):
        if statement.strip():
            conn.execute(statement)
    add_columns(conn, "reporting_cases", ("patient_key_sealed",))
    conn.execute("COMMIT")


def _sealed(sealer: ColumnSealer, value: str, where: str) -> str | bytes:
    """A trait as stored: sealed, or '' when absent (an update keeps the stored one then)."""
    return sealer.seal(value, where) if value else ""


def _delivered(conn: sqlite3.Connection, case_id: str, version: int) -> bool:
    row = conn.execute(
        "SELECT delivered_at FROM reporting_reports WHERE case_id = ? AND version = ?", (case_id, version)
    ).fetchone()
    return row is not None and row[0] is not None


def _open_case(conn: sqlite3.Connection, incoming: Incoming, sealer: ColumnSealer) -> tuple[str, int] | None:
    """The patient's case of this disease whose window holds the result's time (most recent first)."""
    t = incoming.observed_at
    keys = sealer.candidates(incoming.identity.key, PATIENT_KEY)
    row = conn.execute(
        f"SELECT case_id, version FROM reporting_cases WHERE patient_key IN ({marks(keys)}) AND disease = ? "
        "AND opened_at - (window_ends - opened_at) < ? AND ? < window_ends ORDER BY opened_at DESC LIMIT 1",
        (*keys, incoming.disease, t, t),
    ).fetchone()
    return None if row is None else (row[0], row[1])


def _new_case(conn: sqlite3.Connection, incoming: Incoming, now: float, sealer: ColumnSealer) -> Upsert:
    case_id = "C" + secrets.token_hex(6).upper()  # 13 chars: MSH-10 "C...-vN" stays within 20
    opened = incoming.observed_at
    p = incoming.detection.patient
    key, key_sealed = sealer.lookup(incoming.identity.key, PATIENT_KEY)
    conn.execute(
        "INSERT INTO reporting_cases(case_id, patient_key, identity, disease, opened_at, window_ends, "
        "version, action, updated_at, birth_date, sex, postal_code, patient_key_sealed) "
        "VALUES (?, ?, ?, ?, ?, ?, 1, 'new', ?, ?, ?, ?, ?)",
        (
            case_id,
            key,
            "resolved" if incoming.identity.resolved else "unresolved",
            incoming.disease,
            opened,
            opened + incoming.window_days * DAY,
            now,
            _sealed(sealer, p.birth_date, BIRTH_DATE),
            p.sex,
            _sealed(sealer, p.postal_code, POSTAL_CODE),
            key_sealed,
        ),
    )
    _contribute(conn, case_id, 1, "new", incoming, now, sealer)
    return Upsert(case_id, 1, "new", False)


def _update_case(
    conn: sqlite3.Connection, incoming: Incoming, found: tuple[str, int], now: float, sealer: ColumnSealer
) -> Upsert:
    case_id, version = found[0], found[1] + 1
    action = "amended" if incoming.correction else "updated"
    p = incoming.detection.patient
    conn.execute(
        "UPDATE reporting_cases SET version = ?, action = ?, updated_at = ?, "
        "identity = CASE WHEN ? THEN 'resolved' ELSE identity END, "
        "birth_date = COALESCE(NULLIF(?, ''), birth_date), sex = COALESCE(NULLIF(?, ''), sex), "
        "postal_code = COALESCE(NULLIF(?, ''), postal_code) WHERE case_id = ?",
        (
            version,
            action,
            now,
            incoming.identity.resolved,
            _sealed(sealer, p.birth_date, BIRTH_DATE),
            p.sex,
            _sealed(sealer, p.postal_code, POSTAL_CODE),
            case_id,
        ),
    )
    _contribute(conn, case_id, version, action, incoming, now, sealer)
    return Upsert(case_id, version, action, False)


def _contribute(
    conn: sqlite3.Connection,
    case_id: str,
    version: int,
    kind: str,
    incoming: Incoming,
    now: float,
    sealer: ColumnSealer,
) -> None:
    conn.execute(
        "INSERT INTO reporting_contributions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            case_id,
            incoming.message_key,
            incoming.disease,
            incoming.message_id,
            version,
            kind,
            incoming.received_at,
            incoming.observed_at,
            sealer.seal(incoming.detection.to_json(), DETECTION),
        ),
    )
    conn.execute(
        "INSERT INTO reporting_reports VALUES (?, ?, ?, ?, ?, NULL)",
        (case_id, version, kind, incoming.received_at, now),
    )


def split_by_disease(detection: Detection) -> dict[str, Detection]:
    """One Detection per disease, each holding only that disease's results."""
    out: dict[str, list[Result]] = {}
    for r in detection.results:
        out.setdefault(r.disease, []).append(r)
    return {
        d: Detection(tuple(rs), detection.patient, detection.laboratory, detection.lab_control_id)
        for d, rs in out.items()
    }


__all__ = ["Case", "CaseStore", "Identity", "Incoming", "Upsert", "parse_time", "split_by_disease"]
