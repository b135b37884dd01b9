"""Loading the certified register (CSV), applying daily delta files, and the refresh job.

Register CSV columns (header row, UTF-8, any order; only `family_name` and a key are required):
  register_id    the register's own key (else the matricule is the key)
  matricule      13-digit national identifier
  family_name, birth_name, given_names, birth_date (YYYYMMDD or YYYY-MM-DD), sex (M/F/U),
  house_number, street, street2, postcode, city, multiple_birth (Y/N)
Delta files have the same columns plus `op`: `upsert` or `delete`. A delta file is applied once
(remembered by name and SHA-256 in `mpi_delta`), in file-name order.
"""

from __future__ import annotations

import csv
import hashlib
import json
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import structlog

from engine.mpi.columns import Columns
from engine.mpi.index import RegisterIndex
from engine.mpi.model import Traits, date_problem
from engine.mpi.normalize import Norm, normalize
from engine.mpi.storage import MATRICULE, NORM, REGISTER_KEY, TRAITS, audit

if TYPE_CHECKING:
    from engine.mpi.service import Mpi

log = structlog.get_logger("passerelle.mpi")

COLUMNS = {
    "family_name": "family",
    "given_names": "given",
    "birth_name": "birth_name",
    "birth_date": "birth_date",
    "sex": "sex",
    "matricule": "matricule",
    "house_number": "house_number",
    "street": "street",
    "street2": "street2",
    "city": "city",
    "postcode": "postcode",
}
CHUNK = 20_000


@dataclass
class LoadReport:
    read: int = 0
    inserted: int = 0
    updated: int = 0
    deleted: int = 0
    skipped: int = 0
    problems: int = 0


def row_traits(row: dict[str, str]) -> Traits:
    values = {field: (row.get(column) or "").strip() for column, field in COLUMNS.items()}
    date = values["birth_date"].replace("-", "")
    values["birth_date"] = date
    twin = (row.get("multiple_birth") or "").strip().upper() in ("Y", "YES", "1", "TRUE")
    return Traits(**values, multiple_birth=twin)


def row_key(row: dict[str, str]) -> str:
    return (row.get("register_id") or "").strip() or (row.get("matricule") or "").strip()


def read_rows(path: Path) -> Iterator[dict[str, str]]:
    with path.open(newline="", encoding="utf-8-sig") as handle:
        yield from csv.DictReader(handle)


def _chunks(rows: Iterable[dict[str, str]], size: int) -> Iterator[list[dict[str, str]]]:
    chunk: list[dict[str, str]] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def load_register(mpi: Mpi, path: Path, user: str, reason: str = "register load") -> LoadReport:
    """Upsert every row of a register CSV (keyed by register_id or matricule), then rebuild the index."""
    started = time.perf_counter()
    report = LoadReport()
    next_id = int((mpi.storage.one("SELECT coalesce(max(id), 0) FROM mpi_identity") or (0,))[0]) + 1
    fresh = next_id == 1
    parts: list[tuple[npt.NDArray[np.int64], Columns]] = []
    for chunk in _chunks(read_rows(path), CHUNK):
        next_id = _load_chunk(mpi, chunk, _known_ids(mpi, chunk), next_id, report, parts)
    with mpi.storage.write() as c:
        mpi.storage.bump_register_version(c)
        audit(c, user, "load-register", path.name, reason, report.__dict__)
    if fresh and not report.updated:  # the register is exactly what was just loaded: no re-read
        mpi.replace_index(RegisterIndex.from_columns(_drain(parts)), mpi.storage.register_version())
    else:
        parts.clear()
        _rebuild_index(mpi)
    log.info(
        "mpi_register_loaded",
        rows=report.read,
        inserted=report.inserted,
        updated=report.updated,
        skipped=report.skipped,
        seconds=round(time.perf_counter() - started, 1),
    )
    return report


def _drain(
    parts: list[tuple[npt.NDArray[np.int64], Columns]],
) -> Iterator[tuple[npt.NDArray[np.int64], Columns]]:
    """The parts, each released here once consumed (the index build then holds the only copy)."""
    parts.reverse()
    while parts:
        yield parts.pop()


def _known_ids(mpi: Mpi, chunk: list[dict[str, str]]) -> dict[str, int]:
    """register key -> identity id for the keys of this chunk already in the register."""
    with mpi.storage.lock:
        return mpi.storage.identity_ids(mpi.storage.conn, [row_key(r) for r in chunk])


def _load_chunk(
    mpi: Mpi,
    chunk: list[dict[str, str]],
    known: dict[str, int],
    next_id: int,
    report: LoadReport,
    parts: list[tuple[npt.NDArray[np.int64], Columns]],
) -> int:
    """Write one chunk; append its (ids, normalized columns) to `parts` for the index build."""
    rows: list[tuple[Any, ...]] = []
    norms: list[Norm] = []
    now = time.time()
    for raw in chunk:
        report.read += 1
        key, traits = row_key(raw), row_traits(raw)
        if not key or not (traits.family or traits.birth_name):
            report.skipped += 1
            continue
        if traits.birth_date and date_problem(traits.birth_date):
            report.problems += 1
        identity_id = known.get(key)
        if identity_id is None:
            identity_id, next_id = next_id, next_id + 1
            known[key] = identity_id
            report.inserted += 1
        else:
            report.updated += 1
        norm = normalize(traits)
        norms.append(norm)
        rows.append(_identity_row(mpi, identity_id, key, traits, norm, now))
    with mpi.storage.write() as c:
        c.executemany(UPSERT, rows)
    parts.append((np.array([r[0] for r in rows], dtype=np.int64), Columns.from_norms(norms)))
    return next_id


UPSERT = (
    "INSERT INTO mpi_identity(id, enterprise_id, register_key, register_key_sealed, matricule, "
    "matricule_sealed, status, traits, norm, updated_at) VALUES (?, ?, ?, ?, ?, ?, 'active', ?, ?, ?) "
    "ON CONFLICT(id) DO UPDATE SET register_key = excluded.register_key, "
    "register_key_sealed = excluded.register_key_sealed, matricule = excluded.matricule, "
    "matricule_sealed = excluded.matricule_sealed, "
    "status = CASE WHEN mpi_identity.status = 'merged' THEN 'merged' ELSE 'active' END, "
    "traits = excluded.traits, norm = excluded.norm, updated_at = excluded.updated_at"
)


def _identity_row(
    mpi: Mpi, identity_id: int, key: str, traits: Traits, norm: Norm, now: float
) -> tuple[Any, ...]:
    """The UPSERT row; protected values sealed or digested (engine/mpi/storage.py)."""
    sealer = mpi.storage.sealer
    return (
        identity_id,
        mpi.enterprise_id(identity_id),
        *sealer.lookup(key, REGISTER_KEY),
        *sealer.lookup(norm.matricule, MATRICULE),
        sealer.seal(json.dumps(traits.as_dict()), TRAITS),
        sealer.seal(json.dumps(list(norm_values(norm))), NORM),
        now,
    )


def norm_values(norm: Norm) -> tuple[Any, ...]:
    return tuple(getattr(norm, name) for name in Norm.__slots__)


def _rebuild_index(mpi: Mpi) -> None:
    mpi.replace_index(mpi._load_index(), mpi.storage.register_version())


# -- daily delta -----------------------------------------------------------------------------------


def apply_delta(mpi: Mpi, path: Path, user: str = "register-refresh") -> LoadReport | None:
    """Apply one delta file (op = upsert | delete); None when this file was already applied."""
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if mpi.storage.one("SELECT 1 FROM mpi_delta WHERE filename = ? AND sha256 = ?", (path.name, digest)):
        return None
    report = LoadReport()
    index = mpi.index
    next_id = int((mpi.storage.one("SELECT coalesce(max(id), 0) FROM mpi_identity") or (0,))[0]) + 1
    with mpi.storage.write() as c:
        for raw in read_rows(path):
            report.read += 1
            next_id = _delta_row(mpi, c, raw, next_id, report, index)
        c.execute(
            "INSERT OR REPLACE INTO mpi_delta(filename, sha256, applied_at, rows) VALUES (?, ?, ?, ?)",
            (path.name, digest, time.time(), report.read),
        )
        mpi.storage.bump_register_version(c)
        audit(c, user, "apply-delta", path.name, "daily register refresh", report.__dict__)
    mpi.note_own_change()
    log.info(
        "mpi_delta_applied",
        file=path.name,
        rows=report.read,
        inserted=report.inserted,
        updated=report.updated,
        deleted=report.deleted,
        skipped=report.skipped,
    )
    return report


def _delta_row(
    mpi: Mpi, c: Any, raw: dict[str, str], next_id: int, report: LoadReport, index: RegisterIndex
) -> int:
    key, op = row_key(raw), (raw.get("op") or "upsert").strip().lower()
    found = mpi.storage.identity_ids(c, [key]).get(key) if key else None
    row = (found,) if found is not None else None
    if op == "delete":
        if row is None:
            report.skipped += 1
            return next_id
        c.execute(
            "UPDATE mpi_identity SET status = 'deleted', updated_at = ? WHERE id = ?", (time.time(), row[0])
        )
        index.remove(int(row[0]))
        report.deleted += 1
        return next_id
    traits = row_traits(raw)
    if op != "upsert" or not key or not (traits.family or traits.birth_name):
        report.skipped += 1
        return next_id
    identity_id = int(row[0]) if row else next_id
    norm = normalize(traits)
    c.execute(UPSERT, _identity_row(mpi, identity_id, key, traits, norm, time.time()))
    index.upsert(identity_id, norm)
    if row:
        report.updated += 1
        return next_id
    report.inserted += 1
    return next_id + 1


def apply_new_deltas(mpi: Mpi, folder: Path) -> int:
    """Apply every not-yet-applied `*.csv` in `folder`, in name order; returns how many."""
    applied = 0
    for path in sorted(folder.glob("*.csv")):
        try:
            if apply_delta(mpi, path) is not None:
                applied += 1
        except (OSError, UnicodeDecodeError, csv.Error) as err:
            log.error("mpi_delta_failed", file=path.name, error=type(err).__name__)
    return applied


def start_refresh(mpi: Mpi, folder: Path) -> Any:
    """Start the apscheduler job that applies new delta files daily (and every N minutes if set)."""
    import atexit

    from apscheduler.schedulers.background import BackgroundScheduler

    settings = mpi.config.refresh
    hour, minute = (int(x) for x in settings.refresh_at.split(":"))
    scheduler = BackgroundScheduler(daemon=True)
    scheduler.add_job(
        apply_new_deltas,
        "cron",
        hour=hour,
        minute=minute,
        args=(mpi, folder),
        id="mpi-delta-daily",
        max_instances=1,
        coalesce=True,
    )
    if settings.check_every_minutes:
        scheduler.add_job(
            apply_new_deltas,
            "interval",
            minutes=settings.check_every_minutes,
            args=(mpi, folder),
            id="mpi-delta-poll",
            max_instances=1,
            coalesce=True,
        )
    scheduler.start()
    atexit.register(stop_refresh, scheduler)
    return scheduler


def stop_refresh(scheduler: Any) -> None:
    if scheduler.running:
        scheduler.shutdown(wait=False)
