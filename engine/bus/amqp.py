"""`bus: amqp`: a channel's `received` messages are processed by whichever worker consumes them.

One `AmqpBus` per engine process holds the two broker connections (publishing, consuming) and
decides which partitions this process consumes (partitions.py: an even share of the live
workers, re-read every `store.rescan_interval`; a dead worker's share moves when its lease
expires, as its deliveries do). One `AmqpWork` per channel version publishes its messages' ids
and runs its sweep. The guarantees, end to end:

- nothing acknowledged is lost: the sender's ACK follows the intake commit; the id is published
  after it (publisher.py), and what is not confirmed is published again by the sweep (sweep.py);
- processed once: the broker redelivers what was not acked after its processing commit, and
  processing a message that is no longer `received` changes nothing (base.py);
- per-key order: one key, one partition, one active consumer, in-order processing and acks,
  and a catch-up from the store when a consumer becomes active (consumer.py); the deliveries
  then keep the order through the store's key ownership.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable
from typing import Any

import pika
import structlog

from engine.bus.base import ChannelWork, Processor
from engine.bus.consumer import PartitionConsumer
from engine.bus.partitions import MEMBER_PREFIX, partition_of, queue_name, share
from engine.bus.publisher import BusPublisher
from engine.bus.sweep import Sweep
from engine.config import BusConfig
from engine.connectors.amqp.client import AmqpError, Connection
from engine.errors import StoreError
from engine.message import Message
from engine.store.postgres import PostgresStore

log = structlog.get_logger("passerelle.bus")

MAX_BACKOFF = 10.0
RECOVERY_SECONDS = 0.5  # degraded: how often the broker is tried again
DIRECT, DEGRADED, CATCHING_UP = "direct", "degraded", "catching up"


def parameters(config: BusConfig) -> pika.ConnectionParameters:
    params = pika.URLParameters(config.url)
    params.connection_attempts = 1
    params.socket_timeout = config.operation_timeout
    params.client_properties = {"product": "Passerelle", "connection_name": "passerelle-bus"}
    return params


class AmqpBus:
    def __init__(self, config: BusConfig, store: PostgresStore) -> None:
        self.config = config
        self.store = store
        # Partitions are shared among bus members only: a `passerelle stats` (which also opens the
        # store, and so registers as a worker) must not take a share it would never consume.
        store.worker_id = MEMBER_PREFIX + store.worker_id
        self.params = parameters(config)
        self.where = f"{self.params.host}:{self.params.port}"
        self.publisher = BusPublisher(self.params, store, config.operation_timeout)
        self.partitions: set[int] = set()  # this process's share
        self._works: dict[str, AmqpWork] = {}
        self._consumers: dict[str, PartitionConsumer] = {}  # by queue name
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def work(self, processor: Processor) -> AmqpWork:
        """The WorkFactory handed to the channels (engine/channel.py)."""
        return AmqpWork(self, processor)

    async def start(self) -> None:
        self.publisher.start()
        self._task = asyncio.create_task(self._consume_forever(), name="bus-consumers")

    async def stop(self, timeout: float) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.publisher.stop(timeout)

    # -- channel versions ----------------------------------------------------------------------

    def register(self, work: AmqpWork) -> None:
        self._works[work.name] = work
        self._changed.set()

    async def unregister(self, work: AmqpWork, timeout: float) -> None:
        if self._works.get(work.name) is work:
            del self._works[work.name]
        mine = [q for q, c in self._consumers.items() if c.processor is work.processor]
        await asyncio.gather(*(self._consumers.pop(q).stop(timeout) for q in mine))
        self._changed.set()

    # -- consuming -----------------------------------------------------------------------------

    async def _consume_forever(self) -> None:
        failures = 0
        while True:
            try:
                await self._session()
            except AmqpError as err:
                if failures == 0:
                    log.warning("bus_consumer_unavailable", broker=self.where, error=str(err))
                failures += 1
            await self._stop_consumers(self.config.operation_timeout)
            await asyncio.sleep(min(MAX_BACKOFF, 0.5 * 2.0 ** min(failures, 8)) * random.uniform(0.8, 1.2))

    async def _session(self) -> None:
        """One consuming connection: follow this process's share until the connection drops."""
        connection = await Connection.open(self.params, self.config.operation_timeout)
        try:
            log.info("bus_consumer_connected", broker=self.where)
            while not connection.closed.done():
                await self._rebalance(connection)
                self._changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup(connection), self.store.rescan_interval)
            raise AmqpError(f"connection to {self.where} lost: {connection.closed.result()}")
        finally:
            await self._stop_consumers(self.config.operation_timeout)
            await connection.aclose()

    async def _wakeup(self, connection: Connection) -> None:
        changed: asyncio.Future[Any] = asyncio.ensure_future(self._changed.wait())
        ends: list[asyncio.Future[Any]] = [changed, connection.closed]
        try:
            await asyncio.wait(ends, return_when=asyncio.FIRST_COMPLETED)
        finally:
            changed.cancel()

    async def _rebalance(self, connection: Connection) -> None:
        """Consume this process's share of every channel's partitions, and nothing else."""
        try:
            workers = await self.store.live_workers(MEMBER_PREFIX)
        except StoreError as err:
            log.error("bus_membership_unknown", error=str(err))  # keep the current share
            return
        partitions = share(workers, self.store.worker_id, self.config.partitions)
        if partitions != self.partitions:
            log.info("bus_share", partitions=sorted(partitions), workers=len(workers))
            self.partitions = partitions
        wanted = {queue_name(w.name, p): w for w in self._works.values() for p in partitions}
        gone = [q for q, c in self._consumers.items() if q not in wanted or not c.alive
                or c.processor is not wanted[q].processor]
        await asyncio.gather(*(self._consumers.pop(q).stop(self.config.operation_timeout) for q in gone))
        for queue, work in wanted.items():
            if queue not in self._consumers:
                consumer = PartitionConsumer(work.processor, queue, self.config.prefetch,
                                             self.config.operation_timeout, work.in_queue(queue))
                await consumer.start(connection)
                self._consumers[queue] = consumer

    async def _stop_consumers(self, timeout: float) -> None:
        consumers, self._consumers = list(self._consumers.values()), {}
        await asyncio.gather(*(c.stop(timeout) for c in consumers))


class AmqpWork(ChannelWork):
    """One channel version on the bus: publishes its `received` messages' ids, runs its sweep.

    `direct` (normal): a message's id is published and confirmed before the sender's ACK, so a
    sender's next message (sent after that ACK) is always behind it in its work queue; a worker
    killed before the confirm gives no ACK, the sender resends, and the worker it reaches finds
    the message still `received` and publishes it (`resubmit`). `degraded` (a publication
    failed: the broker is down): messages are acknowledged once stored and left in the store;
    once the broker answers again, `catching up` publishes them (sweep, in id order, everything
    this worker may claim) while new ones are held, then the held ones, then back to `direct`:
    a key's messages enter their work queue in intake order across the outage.
    """

    tracks_outcome = False  # another worker may process the message: no application ACK here

    def __init__(self, bus: AmqpBus, processor: Processor) -> None:
        self.bus = bus
        self.processor = processor
        self.name = processor.name
        self.sweep = Sweep(self.name, bus.store, bus.publisher, self.queue_for, processor.from_row)
        self.state = DIRECT
        self._held: list[tuple[str, int]] = []
        self._wake = asyncio.Event()
        self._sweeping: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.bus.register(self)
        self._wake.set()  # a sweep at start
        self._sweeping = asyncio.create_task(self._sweep_forever(), name=f"{self.name}/bus-sweep")

    async def submit(self, message: Message) -> None:
        assert message.id is not None
        queue = self.queue_for(message)
        if self.state == DIRECT:
            if await self.bus.publisher.publish(queue, message.id):
                return
            self._degrade()
        elif self.state == CATCHING_UP:
            self._held.append((queue, message.id))
        # degraded: the message waits in the store for the catch-up

    async def resubmit(self, message: Message) -> None:
        await self.submit(message)

    def done(self, message_id: int) -> None:
        """Nothing to forget: the consumer acks after the commit."""

    def in_queue(self, queue: str) -> Callable[[Message], bool]:
        """Whether a message belongs to work queue `queue` (a consumer's catch-up)."""
        return lambda message: self.queue_for(message) == queue

    def queue_for(self, message: Message) -> str:
        key = self.processor.partition_key(message)
        message.forget_parse()
        return queue_name(self.name, partition_of(key, message.id or 0, self.bus.config.partitions))

    async def stop(self, timeout: float) -> None:
        if self._sweeping is not None:
            self._sweeping.cancel()
            await asyncio.gather(self._sweeping, return_exceptions=True)
        await self.bus.unregister(self, timeout)

    def _degrade(self) -> None:
        if self.state != DEGRADED:
            log.warning("bus_degraded", channel=self.name,
                        note="messages are stored and acknowledged; published once the broker answers")
        self.state = DEGRADED
        self._wake.set()

    async def _sweep_forever(self) -> None:
        config = self.bus.config
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), config.sweep_interval)
            self._wake.clear()
            try:
                if self.state == DIRECT:
                    await self.sweep.once(config.sweep_after)
                else:
                    await self._catch_up()
            except StoreError as err:
                log.error("bus_sweep_failed", channel=self.name, error=str(err))
                if self.state == CATCHING_UP:
                    self._degrade()

    async def _catch_up(self) -> None:
        await asyncio.sleep(RECOVERY_SECONDS)
        if not await self.bus.publisher.reachable():
            self._wake.set()
            return
        self.state, self._held = CATCHING_UP, []
        swept, confirmed = await self.sweep.once(0.0)
        if not confirmed:
            self._degrade()
            return
        held, self._held = self._held, []
        self.state = DIRECT
        # Queued before any new submission can be (no await in between): held ones go first.
        seen = set(swept)
        confirms = [self.bus.publisher.publish(q, i) for q, i in held if i not in seen]
        log.info("bus_caught_up", channel=self.name, published=len(swept) + len(confirms))
        if not all(await asyncio.gather(*confirms)):
            self._degrade()
