"""The row mapping both store backends share: which record field goes to which column, in which order.

One place decides the column order of an intake (the `messages` row and its `contents` row) and
of a message read back (`StoredMessage`), so the SQLite and PostgreSQL backends cannot drift
apart: SQLite inserts `intake_values` with `INSERT ... (MESSAGE_COLUMNS)`, PostgreSQL passes the
same tuple to `passerelle_intake`, whose parameters follow this order (migrations/0002).
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from engine.store.base import IntakeRecord, StoredMessage

# The `messages` row of an intake, in the order of `message_values`.
MESSAGE_COLUMNS = (
    "channel",
    "channel_version",
    "received_at",
    "updated_at",
    "content_type",
    "source_type",
    "peer",
    "tls_subject",
    "filename",
    "control_id",
    "sender",
    "dedup_key",
    "content_hash",
    "status",
    "intake_status",
    "ack_code",
    "findings",
)
# The `contents` row (every payload of the message), in the order of `content_values`.
CONTENT_COLUMNS = ("raw", "transformed", "response", "vars")
# A message read back: the fields of StoredMessage, each a column of `messages` or `contents`.
STORED_COLUMNS = tuple(f.name for f in fields(StoredMessage))


def message_values(r: IntakeRecord) -> tuple[Any, ...]:
    """The `messages` row: updated_at starts at received_at; the intake status is the first event."""
    return (
        r.channel,
        r.channel_version,
        r.received_at,
        r.received_at,
        r.content_type,
        r.source_type,
        r.peer,
        r.tls_subject,
        r.filename,
        r.control_id,
        r.sender,
        r.dedup_key,
        r.content_hash,
        r.status,
        r.status,
        r.ack_code,
        r.findings,
    )


def content_values(r: IntakeRecord) -> tuple[Any, ...]:
    return (r.raw, r.transformed, r.response, r.vars)


def intake_values(r: IntakeRecord) -> tuple[Any, ...]:
    """The message row then its content row, as one tuple."""
    return message_values(r) + content_values(r)


def stored_select(messages: str, contents: str) -> str:
    """The select list of a StoredMessage, given the aliases of the joined `messages` and `contents`."""
    return ", ".join(f"{contents if c in CONTENT_COLUMNS else messages}.{c}" for c in STORED_COLUMNS)


def stored_message(row: tuple[Any, ...]) -> StoredMessage:
    """A row selected with `stored_select`."""
    return StoredMessage(*row)
