"""Encryption at rest of the components' own tables (MPI, DSP registry, notifiable cases).

The components keep identities in the engine's SQLite file; with `store.encryption` configured
a copied file (or its WAL) must not reveal them. Two kinds of protected column:

- sealed: a value only ever read back whole (traits JSON, review candidates, a case's results) is
  encrypted with the store cipher (engine/store/cipher.py: AES-256-GCM, key id, rotation), the
  associated data being `table.column`, and stored as a BLOB.
- look-up: a value searched on equality (register key, matricule, local id, closed patient) is
  stored as a keyed digest, HMAC-SHA256 over `table.column`, NUL, value under the digest secret
  (`store.encryption.digest_key`, like order keys), 128 bits hex; beside it `<column>_sealed`
  holds the sealed clear value, shown back to operators and re-digested on rotation.

Rows written before encryption was enabled (clear TEXT, `<column>_sealed` NULL) still read, and
look-ups also match them: `candidates` gives the digest under every secret a row may have been
made with, and the clear value. `reencrypt_table` rewrites clear rows and rows under old keys
(`passerelle store reencrypt`), page by page, online. Without a cipher everything is stored in
clear, as before. An empty look-up value stays empty (it only says "absent").
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import StoreError
from engine.store.cipher import PayloadCipher, keyed_digest
from engine.store.component_db import ComponentDatabase

Stored = str | bytes | None
Writer = Callable[[], AbstractContextManager[sqlite3.Connection]]


class ColumnSealer:
    """Seals and digests component columns with the store cipher; stores clear values without one."""

    def __init__(self, cipher: PayloadCipher | None) -> None:
        self.cipher = cipher

    @property
    def enabled(self) -> bool:
        return self.cipher is not None

    def seal(self, text: str, where: str) -> str | bytes:
        """`text` as stored in column `where` (`table.column`): sealed bytes, or itself in clear."""
        if self.cipher is None:
            return text
        return self.cipher.encrypt(text.encode("utf-8", "surrogateescape"), where) or b""

    def open(self, value: Stored, where: str) -> str:
        """The clear text of a stored value (clear rows as they are); StoreError when tampered,
        moved from another column, or sealed under a key that is not configured."""
        if value is None:
            return ""
        if isinstance(value, str):
            return value
        if self.cipher is None:
            raise StoreError(f"{where} is encrypted but store.encryption is not configured")
        return (self.cipher.decrypt(value, where) or b"").decode("utf-8", "surrogateescape")

    def digest(self, clear: str, where: str, secret: bytes | None = None) -> str:
        """The keyed digest stored for look-up value `clear` (itself without a cipher)."""
        if self.cipher is None or not clear:
            return clear
        data = where.encode() + b"\0" + clear.encode("utf-8", "surrogateescape")
        return keyed_digest(secret if secret is not None else self.cipher.order_secret, data)

    def lookup(self, clear: str, where: str) -> tuple[str, str | bytes | None]:
        """(column value, `<column>_sealed` value) to store for look-up value `clear`."""
        if self.cipher is None or not clear:
            return clear, None
        return self.digest(clear, where), self.seal(clear, where + "_sealed")

    def candidates(self, clear: str, where: str) -> list[str]:
        """Every stored form `clear` may have in column `where`: its digest under each secret
        (made before a rotation or under the current one) and the clear value (older rows)."""
        if self.cipher is None or not clear:
            return [clear]
        secrets = self.cipher.digest_secrets or (self.cipher.order_secret,)
        return [*dict.fromkeys(self.digest(clear, where, s) for s in secrets), clear]

    def shown(self, value: Stored, copy: Stored, where: str) -> str:
        """The clear look-up value of a row: its sealed copy opened, else the column (clear row)."""
        return self.open(copy, where + "_sealed") if copy is not None else self.open(value, where)


def marks(values: Sequence[Any]) -> str:
    """`?, ?, ...` for an `IN (...)` of `values`."""
    return ", ".join("?" * len(values))


@dataclass(frozen=True)
class ProtectedTable:
    """A component table's protected columns, for `reencrypt_table` (rows addressed by rowid)."""

    name: str
    sealed: tuple[str, ...] = ()
    lookups: tuple[str, ...] = ()

    def select(self) -> str:
        columns = [*self.sealed, *self.lookups, *(f"{c}_sealed" for c in self.lookups)]
        return f"SELECT rowid, {', '.join(columns)} FROM {self.name} WHERE rowid > ? ORDER BY rowid LIMIT ?"

    def update(self) -> str:
        columns = [*self.sealed, *self.lookups, *(f"{c}_sealed" for c in self.lookups)]
        return f"UPDATE {self.name} SET {', '.join(f'{c} = ?' for c in columns)} WHERE rowid = ?"


def resealed_row(sealer: ColumnSealer, table: ProtectedTable, row: Sequence[Any]) -> list[Any] | None:
    """The row's protected values under the active key and current digest secret, or None when
    they already are (nothing to write)."""
    n, m = len(table.sealed), len(table.lookups)
    values = [_resealed(sealer, v, f"{table.name}.{c}") for v, c in zip(row[:n], table.sealed, strict=True)]
    for k, column in enumerate(table.lookups):
        values.extend(_relooked(sealer, row[n + k], row[n + m + k], f"{table.name}.{column}"))
    ordered = values[:n] + values[n::2] + values[n + 1 :: 2]
    return None if ordered == list(row) else ordered


def _resealed(sealer: ColumnSealer, value: Stored, where: str) -> Stored:
    cipher = sealer.cipher
    if value is None or cipher is None or (isinstance(value, bytes) and cipher.is_current(value)):
        return value
    return sealer.seal(sealer.open(value, where), where)


def _relooked(sealer: ColumnSealer, value: Stored, copy: Stored, where: str) -> tuple[Stored, Stored]:
    clear = sealer.shown(value, copy, where)
    if not clear:
        return value, copy
    sealed_copy = where + "_sealed"
    copy = _resealed(sealer, copy, sealed_copy) if copy is not None else sealer.seal(clear, sealed_copy)
    return sealer.digest(clear, where), copy


def reencrypt_table(write: Writer, sealer: ColumnSealer, table: ProtectedTable, batch: int = 500) -> int:
    """Seal the table's clear rows and move sealed ones to the active key, one write transaction
    per page of `batch` rows (the engine keeps running); rows rewritten."""
    after, moved = 0, 0
    while True:
        with write() as c:
            rows = c.execute(table.select(), (after, batch)).fetchall()
            for row in rows:
                new = resealed_row(sealer, table, row[1:])
                if new is not None:
                    c.execute(table.update(), (*new, row[0]))
                    moved += 1
        if len(rows) < batch:
            return moved
        after = int(rows[-1][0])


def add_columns(c: sqlite3.Connection, table: str, columns: Sequence[str]) -> None:
    """Add the missing `columns` (nullable, untyped) to an existing `table`. Call it inside the
    write transaction that creates the schema: two processes opening an old file at once would
    otherwise both see the column missing and the second ALTER TABLE would fail."""
    present = {str(r[1]) for r in c.execute(f"PRAGMA table_info({table})")}
    for column in columns:
        if column not in present:
            c.execute(f"ALTER TABLE {table} ADD COLUMN {column}")


def reencrypt_components(
    path: Path, cipher: PayloadCipher, tables: Sequence[ProtectedTable], batch: int = 500
) -> int:
    """`reencrypt_table` over each of `tables` present in the SQLite file `path` (absent tables and
    a missing file are skipped: that component never ran); rows rewritten. With `secure_delete`
    and a final WAL checkpoint, the clear values of rows sealed here do not stay in free space."""
    if not path.exists():
        return 0
    db = ComponentDatabase(path)
    db.conn.execute("PRAGMA secure_delete=ON")  # the clear value a row held is zeroed, not left behind
    sealer, moved = ColumnSealer(cipher), 0
    try:
        present = {str(r[0]) for r in db.query("SELECT name FROM sqlite_master WHERE type = 'table'")}
        for table in (t for t in tables if t.name in present):
            with db.write() as c:  # a file not opened by the component since its upgrade
                add_columns(c, table.name, [f"{column}_sealed" for column in table.lookups])
            moved += reencrypt_table(db.write, sealer, table, batch)
        db.query("PRAGMA wal_checkpoint(TRUNCATE)")  # old page images leave the WAL (no reader holds them)
    finally:
        db.close()
    return moved
