"""Which values of a store record are encrypted at rest, for both backends (engine/store/cipher.py).

Encrypted: every payload (raw message, transformed content, the answer given to the sender, the
routing variables, a destination's answer). In clear: everything else, the metadata the engine and
operators search and count on. The associated data of each value is its column (`delivery_response`
for a delivery's answer), so a value copied into another column fails its integrity check.
Without a cipher every function returns its record unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from engine.store.base import DeliveryUpdate, IntakeRecord, ProcessedRecord, StoredMessage
from engine.store.cipher import PayloadCipher


@dataclass(frozen=True)
class SealedTable:
    """A table holding encrypted values: its row key and, per payload column, the associated data."""

    name: str
    key: str
    columns: tuple[str, ...]
    aads: tuple[str, ...]


# What `reencrypt` walks (key rotation): every encrypted column of every table.
SEALED_TABLES = (
    SealedTable("contents", "message_id", ("raw", "transformed", "response", "vars"),
                ("raw", "transformed", "response", "vars")),
    SealedTable("deliveries", "id", ("response",), ("delivery_response",)),
)


def seal_intake(c: PayloadCipher | None, r: IntakeRecord) -> IntakeRecord:
    if c is None:
        return r
    return replace(
        r,
        raw=c.encrypt(r.raw, "raw") or b"",
        transformed=c.encrypt(r.transformed, "transformed"),
        response=c.encrypt(r.response, "response"),
        vars=c.encrypt(r.vars, "vars"),
    )


def seal_processed(c: PayloadCipher | None, r: ProcessedRecord) -> ProcessedRecord:
    if c is None:
        return r
    return replace(r, transformed=c.encrypt(r.transformed, "transformed"), vars=c.encrypt(r.vars, "vars"))


def seal_update(c: PayloadCipher | None, u: DeliveryUpdate) -> DeliveryUpdate:
    if c is None:
        return u
    return replace(u, response=c.encrypt(u.response, "delivery_response"))


def clear_message(c: PayloadCipher | None, m: StoredMessage) -> StoredMessage:
    """A message as read from the store, its payloads decrypted (StoreError if tampered or key unknown)."""
    if c is None:
        return m
    return replace(
        m,
        raw=c.decrypt(m.raw, "raw") or b"",
        transformed=c.decrypt(m.transformed, "transformed"),
        response=c.decrypt(m.response, "response"),
        vars=c.decrypt(m.vars, "vars"),
    )


def resealed(
    c: PayloadCipher, table: SealedTable, values: tuple[bytes | None, ...]
) -> list[bytes | None] | None:
    """A row's payloads under the active key, or None when they already are (nothing to write)."""
    if all(c.is_current(v) for v in values):
        return None
    return [c.encrypt(c.decrypt(v, aad), aad) for v, aad in zip(values, table.aads, strict=True)]
