"""The PostgreSQL schema: numbered migrations, monthly partitions and retention.

Migrations are the files `migrations/NNNN_name.sql`, applied once each, in order, in one
transaction together with their `schema_migrations` row; an advisory lock makes workers that
start at the same time apply them once. A released schema file is never edited: a change is a
new numbered file. (SQLite keeps its idempotent schema, engine/store/schema.py.)

`messages`, `contents`, `events` and `deliveries` are partitioned by the message's
`received_at`, one partition per UTC calendar month (`<table>_yYYYYmMM`). Retention drops a
month's four partitions together once the month ended more than `retention_days` ago and none
of its messages is still open (`received` or `queued`): dropping a table frees its space at
once, without the row deletes and vacuum a DELETE would cost. The de-duplication keys of the
dropped month (`dedup_keys`, a plain table because a partitioned one cannot hold a unique
index without the partition key) are deleted in the same transaction.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from psycopg import AsyncConnection

MIGRATIONS = Path(__file__).with_name("migrations")
PARTITIONED = ("messages", "contents", "events", "deliveries")
_LOCK = 7_452_901  # advisory lock key: schema changes and partition drops, one worker at a time
_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_MONTH = re.compile(r"^messages_y(\d{4})m(\d{2})$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def migrations(folder: Path = MIGRATIONS) -> list[Migration]:
    """The migration files, in version order (a file not named NNNN_name.sql is an error)."""
    found = []
    for path in sorted(folder.glob("*.sql")):
        match = _FILE.match(path.name)
        if match is None:
            raise ValueError(f"{path}: migration files are named NNNN_name.sql")
        found.append(Migration(int(match[1]), match[2], path.read_text(encoding="utf-8")))
    return found


async def migrate(conn: AsyncConnection[tuple[object, ...]]) -> list[int]:
    """Apply the missing migrations; returns the versions applied now."""
    applied_now = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK,))
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY KEY,"
            " name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        cur = await conn.execute("SELECT version FROM schema_migrations")
        applied = {int(str(row[0])) for row in await cur.fetchall()}
        for migration in migrations():
            if migration.version not in applied:
                await conn.execute(migration.sql.encode())
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                    (migration.version, migration.name),
                )
                applied_now.append(migration.version)
    return applied_now


def month_key(at: float) -> int:
    """Which monthly partition holds `at` (epoch seconds): year * 12 + month - 1."""
    moment = datetime.fromtimestamp(at, UTC)
    return moment.year * 12 + moment.month - 1


def month_bounds(key: int) -> tuple[float, float]:
    """The [low, high) epoch range of a month key."""
    year, month = divmod(key, 12)
    low = datetime(year, month + 1, 1, tzinfo=UTC)
    nyear, nmonth = divmod(key + 1, 12)
    return low.timestamp(), datetime(nyear, nmonth + 1, 1, tzinfo=UTC).timestamp()


def suffix(key: int) -> str:
    year, month = divmod(key, 12)
    return f"y{year:04d}m{month + 1:02d}"


async def month_keys(conn: AsyncConnection[tuple[object, ...]]) -> list[int]:
    """The months that have partitions."""
    cur = await conn.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = 'messages'::regclass"
    )
    keys = []
    for (name,) in await cur.fetchall():
        match = _MONTH.match(str(name))
        if match:
            keys.append(int(match[1]) * 12 + int(match[2]) - 1)
    return sorted(keys)


async def drop_expired_months(conn: AsyncConnection[tuple[object, ...]], cutoff: float) -> list[str]:
    """Drop the months that ended before `cutoff` and hold no open message; their names."""
    dropped = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK,))
        for key in await month_keys(conn):
            low, high = month_bounds(key)
            if high <= cutoff and await month_is_final(conn, key):
                await drop_month(conn, key, low, high)
                dropped.append(suffix(key))
    return dropped


async def month_is_final(conn: AsyncConnection[tuple[object, ...]], key: int) -> bool:
    name = suffix(key)
    cur = await conn.execute(
        f"SELECT NOT EXISTS (SELECT 1 FROM messages_{name} WHERE status IN ('received', 'queued'))"
        f" AND NOT EXISTS (SELECT 1 FROM deliveries_{name} WHERE status IN ('queued', 'retrying'))"
    )
    row = await cur.fetchone()
    return bool(row and row[0])


async def drop_month(conn: AsyncConnection[tuple[object, ...]], key: int, low: float, high: float) -> None:
    await conn.execute("DELETE FROM dedup_keys WHERE received_at >= %s AND received_at < %s", (low, high))
    for table in PARTITIONED:
        await conn.execute(f"DROP TABLE {table}_{suffix(key)}".encode())
