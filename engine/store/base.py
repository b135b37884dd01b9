"""The message store interface: every message, every stage, every status change.

Two backends implement it: SQLite (embedded default) and, with scale-out, PostgreSQL. The
contract (tests/component/test_store_contract.py runs it over every backend):

- A write method returns only after its data is durably committed. Concurrent writes are
  grouped into one commit (group commit), so throughput does not collapse to one fsync per
  message; a failed commit raises `StoreError` for every write of that batch, none is stored.
- `intake` de-duplicates on (channel, sender + control id): an identical re-send returns the
  first message's verdict without storing anything; a different message reusing a control id
  is reported as a conflict.
- Statuses only move forward; each change adds an `events` row.
- Every payload (raw, transformed, answers, routing variables `vars`, a delivery's answer) is
  read back as written, and with a cipher it is stored encrypted (engine/store/sealing.py): a
  tampered value raises StoreError; `reencrypt` moves everything to the active key online.

Several processes (PostgreSQL; `shared` is True): open deliveries and `received` messages are
owned by one worker process at a time. A worker owns what it created (a delivery is created
owned, unless an older open delivery of the same order key belongs to another worker: then it
is created unowned and reported as `NOT_OWNED`), and what its claim scans (`claim_deliveries`,
`claim_unprocessed`) take: unowned work and the work of workers whose lease expired (they
died). A key's open deliveries belong to one worker at a time, so one patient's messages keep
their order across workers. Queues run their claim scans again every `rescan_interval`
seconds to find such work. A single-process store (SQLite) owns everything: its claims are
plain reads and the engine code path is the same.
"""

from __future__ import annotations

import asyncio
import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

from engine.errors import Finding
from engine.store.cipher import PayloadCipher

# Message statuses. `received`: stored, steps not yet run. `queued`: waiting for deliveries.
# Final: `sent`, `filtered`, `rejected` (at intake), `errored` (a delivery failed for good).
MESSAGE_STATUSES = ("received", "queued", "sent", "filtered", "rejected", "errored")
FINAL_MESSAGE_STATUSES = frozenset({"sent", "filtered", "rejected", "errored"})
# Delivery statuses. `dead`: retries or age exhausted; `rejected`: the peer refused for good.
DELIVERY_STATUSES = ("queued", "retrying", "sent", "dead", "rejected")
OPEN_DELIVERY_STATUSES = frozenset({"queued", "retrying"})
# In `IntakeResult.delivery_ids` and `processed()`: a delivery created but owned by no worker yet
# (another worker owns an older open delivery of its key); a later claim scan picks it up.
NOT_OWNED = 0
NOT_ENCRYPTED = "encryption is not configured for this store (engine.yaml: store.encryption)"


def findings_to_json(findings: tuple[Finding, ...] | list[Finding]) -> str | None:
    if not findings:
        return None
    return json.dumps([f.__dict__ for f in findings], ensure_ascii=False)


def findings_from_json(text: str | None) -> tuple[Finding, ...]:
    return tuple(Finding(**item) for item in json.loads(text)) if text else ()


@dataclass
class NewDelivery:
    destination: str
    order_key: str = ""


@dataclass
class IntakeRecord:
    """A message as it is first stored, with its verdict and the answer given to the sender."""

    channel: str
    channel_version: str
    received_at: float
    content_type: str
    source_type: str
    peer: str
    tls_subject: str
    filename: str
    control_id: str
    sender: str
    content_hash: bytes
    status: str
    ack_code: str
    findings: str | None
    raw: bytes
    transformed: bytes | None = None
    response: bytes | None = None
    deliveries: list[NewDelivery] = field(default_factory=list)
    dedup: bool = True
    vars: bytes | None = None
    """Routing variables set by the steps (JSON), kept so a reloaded message routes the same."""

    @property
    def dedup_key(self) -> str | None:
        return f"{self.sender}\x1f{self.control_id}" if self.control_id and self.dedup else None


@dataclass(frozen=True)
class IntakeResult:
    message_id: int
    duplicate: bool = False
    conflict: bool = False
    status: str = ""
    ack_code: str = ""
    findings: str | None = None
    delivery_ids: tuple[int, ...] = ()


@dataclass
class ProcessedRecord:
    """The outcome of a `received` message's steps (respond_after: received)."""

    message_id: int
    channel: str
    status: str
    findings: str | None
    transformed: bytes | None
    deliveries: list[NewDelivery] = field(default_factory=list)
    detail: str = ""
    vars: bytes | None = None
    """The message's routing variables after the steps (JSON); stored with the payloads."""


@dataclass
class DeliveryUpdate:
    delivery_id: int
    message_id: int
    destination: str
    status: str
    attempts: int
    next_attempt_at: float
    error: str = ""
    response: bytes | None = None


@dataclass(frozen=True)
class StoredMessage:
    """A message read back from the store (recovery, refill, inspection)."""

    id: int
    channel: str
    channel_version: str
    received_at: float
    content_type: str
    source_type: str
    peer: str
    tls_subject: str
    filename: str
    control_id: str
    sender: str
    status: str
    ack_code: str
    findings: str | None
    raw: bytes
    transformed: bytes | None
    response: bytes | None
    vars: bytes | None = None


@dataclass(frozen=True)
class PendingDelivery:
    id: int
    message_id: int
    destination: str
    status: str
    order_key: str
    attempts: int
    created_at: float
    next_attempt_at: float
    follows: int = 0
    """In a claim page: the newest older open delivery of the same key that this worker owns but
    the page does not return (its id is at or below the page's cursor), or 0. The queue must not
    run this delivery unless that one is in its memory (engine/dispatch.py, `_reload`)."""


class Store(ABC):
    """What the engine needs from durable storage. All methods are safe to call concurrently."""

    shared = False  # several engine processes use this store (see the module docstring)
    cipher: PayloadCipher | None = None  # encryption at rest of the payloads (engine/store/sealing.py)
    rescan_interval = 0.0  # seconds between claim scans when shared

    async def claim_deliveries(
        self, channel: str, destination: str, after_id: int, limit: int
    ) -> list[PendingDelivery]:
        """Take ownership of open deliveries this worker may run, in id order (ids > `after_id`):
        its own, unowned ones and those of dead workers, keeping each key with one worker."""
        return await self.open_deliveries(channel, destination, after_id, limit)

    async def claim_unprocessed(self, channel: str, after_id: int, limit: int) -> list[StoredMessage]:
        """Take ownership of `received` messages this worker may process, like `claim_deliveries`."""
        return await self.unprocessed(channel, after_id, limit)

    @abstractmethod
    async def open(self) -> None: ...

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def intake(self, record: IntakeRecord) -> IntakeResult: ...

    async def processed(self, record: ProcessedRecord) -> tuple[int, ...]:
        """Store a received message's step outcome; returns the new delivery ids."""
        [ids] = await self.processed_all([record])
        return ids

    @abstractmethod
    async def processed_all(self, records: list[ProcessedRecord]) -> list[tuple[int, ...]]:
        """`processed` for a batch of one channel's messages, in one transaction: all committed, in
        order, or none (StoreError). One tuple of new delivery ids per record, in the records' order
        (empty when the message was no longer `received`: another run processed it first)."""

    @abstractmethod
    async def update_delivery(self, update: DeliveryUpdate) -> None: ...

    async def update_deliveries(self, updates: list[DeliveryUpdate]) -> None:
        """Commit several delivery outcomes (a destination queue's batch); each is durable on return.

        Default: each as its own `update_delivery`, all in flight at once (the store's group
        commit gathers them). A StoreError means some may not be committed: the caller treats all
        as open (at-least-once). Stores that can apply them in one statement override this."""
        results = await asyncio.gather(*(self.update_delivery(u) for u in updates), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result

    @abstractmethod
    async def unprocessed(self, channel: str, after_id: int, limit: int) -> list[StoredMessage]:
        """Messages still `received` (their steps never ran), oldest first."""

    @abstractmethod
    async def open_deliveries(
        self, channel: str, destination: str, after_id: int, limit: int
    ) -> list[PendingDelivery]:
        """Deliveries still queued or retrying, in id order."""

    @abstractmethod
    async def open_line(self, channel: str, destination: str, order_key: str, before_id: int) -> int | None:
        """The id of the oldest delivery of this destination and order key still open (queued or
        retrying) with an id below `before_id`, or None. A queue asks before sending a delivery
        with an order key: one key's deliveries go out in id order, whatever its memory says."""

    async def delivery_owner(self, delivery_id: int) -> str:
        """Who owns an open delivery (diagnostics of the order guard, ids only): "this worker",
        "another live worker", "a dead worker", "nobody", or "closed" once it left the open
        states. A single-process store owns all its work."""
        return "this worker"

    @abstractmethod
    async def message(self, message_id: int) -> StoredMessage | None: ...

    async def messages(self, message_ids: list[int]) -> list[StoredMessage]:
        """The messages of these ids that exist, in any order (one query where the backend can)."""
        rows = [await self.message(i) for i in message_ids]
        return [row for row in rows if row is not None]

    @abstractmethod
    async def events(self, message_id: int) -> list[dict[str, Any]]: ...

    @abstractmethod
    async def requeue_delivery(self, delivery_id: int) -> PendingDelivery | None:
        """Re-open a `dead` or `rejected` delivery (an operator's resend): status `queued`, due now,
        attempts and age kept; its message goes back to `queued`. Both changes are events. Returns
        the re-opened delivery for its running queue, or None when it was not dead or rejected."""

    @abstractmethod
    async def reencrypt(self, batch: int = 500) -> int:
        """Encrypt every payload with the active key (key rotation, and payloads stored before
        encryption was enabled), one page of `batch` rows per transaction, while the engine runs;
        returns the rows rewritten. StoreError without configured keys."""

    @abstractmethod
    async def record_channel_version(self, channel: str, version: str, content: str) -> None:
        """Remember a channel version the engine runs (first time seen; idempotent)."""

    @abstractmethod
    async def channel_versions(self, channel: str) -> list[dict[str, Any]]:
        """Versions of a channel, newest first: version, loaded_at, content, messages handled."""

    @abstractmethod
    async def stats(self) -> dict[str, Any]:
        """Per channel: message counts per status; per destination: counts per status, oldest open."""
