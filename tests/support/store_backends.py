"""Both store backends behind one handle, for the store contract: open stores on one database,
and look at what the database itself holds (the raw payload columns, a dump) as someone who
copied it would.

SQLite: a file under the test's tmp directory. PostgreSQL: a fresh database on the session's
cluster (tests/support/postgres.py).
"""

from __future__ import annotations

import re
import sqlite3
import subprocess
from dataclasses import dataclass
from pathlib import Path

import psycopg

from engine.store.base import Store
from engine.store.cipher import PayloadCipher
from engine.store.postgres import PostgresStore
from engine.store.sqlite import SqliteStore
from tests.support.postgres import BIN, fresh_database, shared_cluster

# Every payload column: (table, column). What a copied database must not reveal in clear.
PAYLOAD_COLUMNS = (
    ("contents", "raw"),
    ("contents", "transformed"),
    ("contents", "response"),
    ("contents", "vars"),
    ("deliveries", "response"),
)
_BYTEA_HEX = re.compile(rb"\\\\x([0-9a-f]+)")


@dataclass(frozen=True)
class StoreBackend:
    name: str
    location: str  # the SQLite file or the PostgreSQL DSN

    @classmethod
    def fresh(cls, name: str, tmp: Path) -> StoreBackend:
        if name == "sqlite":
            return cls(name, str(tmp / "store.db"))
        return cls(name, fresh_database(shared_cluster()))

    def store(self, cipher: PayloadCipher | None = None) -> Store:
        """A store on this database (not yet opened); several may be open at once."""
        if self.name == "sqlite":
            return SqliteStore(Path(self.location), cipher=cipher)
        return PostgresStore(self.location, cipher=cipher)

    def payloads(self) -> list[bytes]:
        """Every non-null payload value, as stored."""
        found = []
        for table, column in PAYLOAD_COLUMNS:
            found += [bytes(v) for (v,) in self._query(f"SELECT {column} FROM {table}") if v is not None]
        return found

    def tamper(self, message_id: int) -> None:
        """Flip one bit of a message's stored raw payload, as an attacker with write access would."""
        ((raw,),) = self._query(f"SELECT raw FROM contents WHERE message_id = {message_id}")
        changed = bytearray(raw)
        changed[-5] ^= 0x01
        self._update("UPDATE contents SET raw = {p} WHERE message_id = {p}", (bytes(changed), message_id))

    def dump(self) -> bytes:
        """What a copy of the database shows: the SQLite files, or `pg_dump` (its bytea hex decoded,
        so that a clear payload would show as clear text)."""
        if self.name == "sqlite":
            path = Path(self.location)
            return b"".join(p.read_bytes() for p in path.parent.glob(f"{path.name}*"))
        done = subprocess.run(
            [str(BIN / "pg_dump"), "--data-only", self.location], check=True, capture_output=True, timeout=120
        )
        return done.stdout + b"".join(bytes.fromhex(h.decode()) for h in _BYTEA_HEX.findall(done.stdout))

    def _query(self, sql: str) -> list[tuple[bytes, ...]]:
        if self.name == "sqlite":
            with sqlite3.connect(self.location) as db:
                return list(db.execute(sql).fetchall())
        with psycopg.connect(self.location) as conn:
            return [tuple(row) for row in conn.execute(sql.encode()).fetchall()]

    def _update(self, template: str, params: tuple[object, ...]) -> None:
        if self.name == "sqlite":
            with sqlite3.connect(self.location) as db:
                db.execute(template.format(p="?"), params)
            return
        with psycopg.connect(self.location) as conn:
            conn.execute(template.format(p="%s").encode(), params)
