"""What a channel hands its `received` messages to, and what it offers in return.

A `received` message is committed before `submit` is called (the sender already has its ACK):
a `ChannelWork` may lose it from memory at any moment (a crash, a full buffer, a broker outage),
because the store keeps it `received` until its processing commit, and each implementation has
a way to find such messages again (embedded: claim scans; amqp: the sweep and redelivery).
Processing is idempotent: the processing commit changes nothing when the message is no longer
`received` (store: `processed`), so running a message twice never creates its deliveries twice.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Protocol

from engine.message import Message
from engine.store.base import StoredMessage


class Processor(Protocol):
    """The channel, as its work sees it."""

    name: str

    async def finish(self, message: Message) -> None:
        """Run the steps of a `received` message and commit the outcome (raises StoreError)."""

    async def finish_all(self, messages: list[Message]) -> None:
        """`finish` for a batch, in order, in one commit: all or none (raises StoreError). Once
        called, the commit and the hand-over of its deliveries complete even if the caller is
        cancelled."""

    async def reload_unprocessed(self, after_id: int, limit: int) -> list[tuple[int, Message]]:
        """Claim `received` messages this process may run (embedded work's reload)."""

    async def load_received(self, message_ids: list[int]) -> dict[int, Message]:
        """Those of these messages still `received` (the others were processed already)."""

    async def unprocessed(self, after_id: int, limit: int) -> list[Message]:
        """Every message still `received` with an id above `after_id`, oldest first (no claim)."""

    def from_row(self, row: StoredMessage) -> Message:
        """A stored message as the steps see it."""

    def partition_key(self, message: Message) -> str:
        """What must stay in order: the channel's order key (e.g. the patient id), or ''."""


class ChannelWork(ABC):
    """Runs the steps of one channel's `received` messages, somewhere."""

    tracks_outcome = True
    """Whether this process learns each message's outcome (application ACKs wait for it)."""

    @abstractmethod
    def start(self) -> None:
        """Begin; also resume what a previous run left `received`."""

    @abstractmethod
    async def submit(self, message: Message) -> None:
        """A message just committed as `received` (its id is set); the sender's ACK follows the
        return. Never raises: whatever fails here, the store still holds the message."""

    @abstractmethod
    async def resubmit(self, message: Message) -> None:
        """A sender resent a message that is still `received` (its first intake worker may have
        died before handing it over, and the sender is now on another worker)."""

    @abstractmethod
    def done(self, message_id: int) -> None:
        """The message's outcome is committed (called by `Processor.finish`)."""

    @abstractmethod
    async def stop(self, timeout: float) -> None:
        """Finish what is in flight (up to `timeout`); the rest stays `received` in the store."""


WorkFactory = Callable[[Processor], ChannelWork]
