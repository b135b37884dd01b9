"""One partition's consumer: the messages of one work queue, processed in order, acked after commit.

The broker delivers up to `prefetch` message ids at a time. They are taken in batches, in the
order delivered: loaded from the store (a message no longer `received` was processed already: a
redelivery, skipped), processed and committed together (one transaction: the whole batch or none
of it), and acknowledged (`multiple`, up to the batch's last tag) once that commit is done. A
crash before the ack: the broker redelivers the ids to the partition's next consumer, and
processing them again changes nothing (engine/bus/base.py). A store failure closes the channel
without acking, for the same effect.

Order does not rely on the broker's redelivery order: RabbitMQ 3.10 hands the next
single-active consumer new messages before the ones it takes back from the previous consumer
(measured: a consumer closing with unacked ids 20..29 saw them redelivered after 30..599). So
the first time a consumer receives anything (it has just become the partition's active
consumer: the previous one is gone, its commits done), it first processes, in id order, every
message of its partition still `received` in the store (the catch-up). From then on the queue
only brings newer messages: a key's next message is published only after the previous one's
confirm (engine/bus/amqp.py), so after the catch-up the queue order is the key's order.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import structlog

from engine.bus.base import Processor
from engine.bus.partitions import QUEUE_ARGUMENTS
from engine.connectors.amqp.client import Channel, Connection
from engine.errors import StoreError
from engine.message import Message

log = structlog.get_logger("passerelle.bus")

Delivery = tuple[int, int]  # delivery tag, message id
CATCH_UP_PAGE = 1000


class PartitionConsumer:
    def __init__(self, processor: Processor, queue: str, prefetch: int, timeout: float,
                 belongs: Callable[[Message], bool]) -> None:
        self.processor = processor
        self.belongs = belongs  # whether a message is of this consumer's partition
        self.caught_up = 0  # messages the catch-up processed (tests, logs)
        self._active = False
        self.queue = queue
        self.prefetch = prefetch
        self.timeout = timeout
        self.processed = 0
        self._inbox: asyncio.Queue[Delivery | None] = asyncio.Queue()
        self._channel: Channel | None = None
        self._tag = ""
        self._task: asyncio.Task[None] | None = None

    @property
    def alive(self) -> bool:
        return self._task is not None and not self._task.done() and self._channel is not None \
            and self._channel.is_open

    async def start(self, connection: Connection) -> None:
        channel = self._channel = await connection.channel(self.timeout)
        await channel.call("queue_declare", self.timeout, queue=self.queue, durable=True,
                           arguments=QUEUE_ARGUMENTS)
        await channel.call("basic_qos", self.timeout, prefetch_count=self.prefetch)
        self._tag = channel.pika.basic_consume(self.queue, self._on_message)
        self._task = asyncio.create_task(self._run(), name=f"bus/{self.queue}")

    async def stop(self, timeout: float) -> None:
        """Finish and ack the batch in hand (up to `timeout`), then close the channel: the ids
        delivered but not taken go back to the queue, in order, for the partition's next consumer.
        No basic.cancel first: the broker would make the next consumer active at once, and it
        could commit a later message of a key before this batch's commits (order lost)."""
        self._inbox.put_nowait(None)
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                try:
                    await asyncio.wait_for(asyncio.shield(self._task), timeout)
                except TimeoutError:
                    # The batch's commit goes on by itself (Processor.finish_all); unacked, its ids
                    # come back to the partition's next consumer, which finds them processed.
                    log.warning("bus_consumer_stop_timeout", queue=self.queue, seconds=timeout)
        if self._channel is not None:
            self._channel.close()
        if self._task is not None:
            self._task.cancel()

    def _on_message(self, _channel: Any, method: Any, _properties: Any, body: bytes) -> None:
        try:
            message_id = int(body)
        except ValueError:  # not ours: nothing to process, never redeliver it
            log.error("bus_unknown_message", queue=self.queue, size=len(body))
            message_id = 0
        self._inbox.put_nowait((method.delivery_tag, message_id))

    async def _run(self) -> None:
        while (batch := self._next_batch(await self._inbox.get())) is not None:
            try:
                await self._process(batch)
            except StoreError as err:
                log.error("bus_processing_store_failed", queue=self.queue, error=str(err),
                          note="not acknowledged: the broker redelivers the batch")
                if self._channel is not None:
                    self._channel.close()
                return
            if self._channel is not None and self._channel.is_open:
                self._channel.pika.basic_ack(delivery_tag=batch[-1][0], multiple=True)

    def _next_batch(self, first: Delivery | None) -> list[Delivery] | None:
        batch: list[Delivery] = []
        item = first
        while item is not None:
            batch.append(item)
            if self._inbox.empty():
                return batch
            item = self._inbox.get_nowait()
        self._inbox.put_nowait(None)  # stopping: what follows in the inbox goes back to the queue
        return batch or None

    async def _process(self, batch: list[Delivery]) -> None:
        if not self._active:
            await self._catch_up()
            self._active = True
        loaded = await self.processor.load_received([message_id for _, message_id in batch if message_id])
        # In delivery order, one commit for the batch (all or none; completed even if this consumer
        # is stopped meanwhile: Processor.finish_all). An id seen twice in a batch runs once.
        messages = [m for m in (loaded.pop(message_id, None) for _, message_id in batch) if m is not None]
        await self.processor.finish_all(messages)
        self.processed += len(messages)

    async def _catch_up(self) -> None:
        """Process every message of this partition still `received`, in id order (see above)."""
        after = 0
        while True:
            page = await self.processor.unprocessed(after, CATCH_UP_PAGE)
            mine = [m for m in page if self.belongs(m)]
            await self.processor.finish_all(mine)
            self.caught_up += len(mine)
            if len(page) < CATCH_UP_PAGE:
                break
            after = page[-1].id or after
        if self.caught_up:
            log.info("bus_partition_caught_up", queue=self.queue, messages=self.caught_up)
