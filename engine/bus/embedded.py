"""`bus: none`: a channel's `received` messages run in the process that received them.

A bounded in-memory feed (engine/feed.py) in front of `PIPELINE_WORKERS` concurrent step runs;
what does not fit in memory, and what a previous run left `received`, is reloaded from the store
by claim scans. With a store shared by several processes the scans are repeated every
`store.rescan_interval` to take over a dead worker's `received` messages.
"""

from __future__ import annotations

import asyncio

import structlog

from engine.bus.base import ChannelWork, Processor
from engine.dispatch import rescan_every
from engine.errors import StoreError
from engine.feed import Feed
from engine.message import Message
from engine.store.base import Store

log = structlog.get_logger("passerelle.channel")

PIPELINE_WORKERS = 64  # concurrent step runs awaiting their commit: they share group commits
PIPELINE_MEMORY = 10_000
STORE_RETRY_SECONDS = 1.0


class EmbeddedWork(ChannelWork):
    def __init__(self, processor: Processor, store: Store) -> None:
        self.processor = processor
        self.store = store
        self.feed: Feed[Message] = Feed(PIPELINE_MEMORY, processor.reload_unprocessed)
        self._tasks: list[asyncio.Task[None]] = []
        self._rescans: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._worker()) for _ in range(PIPELINE_WORKERS)]
        if self.store.shared:
            self._rescans = asyncio.create_task(rescan_every(self.store.rescan_interval, self.feed))

    async def submit(self, message: Message) -> None:
        assert message.id is not None
        self.feed.push(message.id, message)

    async def resubmit(self, message: Message) -> None:
        """Nothing: the claim scans take a dead worker's `received` messages over."""

    def done(self, message_id: int) -> None:
        self.feed.done(message_id)

    async def stop(self, timeout: float) -> None:
        """Finish the step runs in flight; messages not yet taken stay `received` in the store."""
        self.feed.close()
        if self._rescans is not None:
            self._rescans.cancel()
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=timeout)
            for task in pending:
                task.cancel()

    async def _worker(self) -> None:
        while (message := await self.feed.get()) is not None:
            try:
                await self.processor.finish(message)
            except StoreError as err:
                # The message stays `received` in the store; try again later, never drop it.
                log.error("pipeline_store_failed", channel=self.processor.name, message=message.id,
                          error=str(err))
                await asyncio.sleep(STORE_RETRY_SECONDS)
                self.feed.push_urgent(message)
