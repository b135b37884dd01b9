"""The sweep: `received` messages whose publication on the bus was never confirmed, published again.

That happens when the broker was down or slow at intake, or when the intake worker died between
its commit and the confirm. The sweep runs at start and every `sweep_interval`; it claims (store
leases: its own messages, unowned ones and those of dead workers, never a live worker's) the
`received`, not `dispatched` messages older than `sweep_after` (younger ones are still being
published by their intake worker), in id order, and hands them to the publisher. A message that
is published twice this way is processed once (engine/bus/base.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import structlog

from engine.bus.publisher import BusPublisher
from engine.errors import StoreError
from engine.message import Message
from engine.store.base import StoredMessage
from engine.store.postgres import PostgresStore

log = structlog.get_logger("passerelle.bus")

PAGE = 1000


class Sweep:
    def __init__(
        self,
        channel: str,
        store: PostgresStore,
        publisher: BusPublisher,
        queue_for: Callable[[Message], str],
        from_row: Callable[[StoredMessage], Message],
        interval: float,
        age: float,
    ) -> None:
        self.channel = channel
        self.store = store
        self.publisher = publisher
        self.queue_for = queue_for
        self.from_row = from_row
        self.interval = interval
        self.age = age
        self.republished = 0

    async def forever(self) -> None:
        while True:
            try:
                count = await self.once()
            except StoreError as err:
                log.error("bus_sweep_failed", channel=self.channel, error=str(err))
            else:
                if count:
                    log.warning("bus_republished", channel=self.channel, count=count)
            await asyncio.sleep(self.interval)

    async def once(self) -> int:
        """Hand every unconfirmed `received` message old enough to the publisher; how many."""
        before, after, count = time.time() - self.age, 0, 0
        while True:
            rows = await self.store.claim_undispatched(self.channel, before, after, PAGE)
            for row in rows:
                await self.publisher.publish_when_room(self.queue_for(self.from_row(row)), row.id)
            count += len(rows)
            self.republished += len(rows)
            if len(rows) < PAGE:
                return count
            after = rows[-1].id
