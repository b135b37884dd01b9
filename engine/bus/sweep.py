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
    ) -> None:
        self.channel = channel
        self.store = store
        self.publisher = publisher
        self.queue_for = queue_for
        self.from_row = from_row
        self.republished = 0

    async def once(self, age: float) -> tuple[list[int], bool]:
        """Publish again every unconfirmed `received` message this worker may claim that is older
        than `age` seconds, in id order; their ids, and whether the broker confirmed them all."""
        before, after = time.time() - age, 0
        ids: list[int] = []
        confirms: list[asyncio.Future[bool]] = []
        while True:
            rows = await self.store.claim_undispatched(self.channel, before, after, PAGE)
            for row in rows:
                queue = self.queue_for(self.from_row(row))
                confirms.append(await self.publisher.publish_when_room(queue, row.id))
                ids.append(row.id)
            if len(rows) < PAGE:
                break
            after = rows[-1].id
        self.republished += len(ids)
        if ids:
            log.warning("bus_republished", channel=self.channel, count=len(ids), first_ids=ids[:10])
        return ids, all(await asyncio.gather(*confirms))
