"""The work bus's publisher: one connection per process, confirmed, in submission order.

Contract (at-least-once, with the store as the source of truth): `publish` is called after the
message's intake commit, never raises, and returns a future: True once the broker confirmed,
False when the publication failed, timed out, or was dropped (broker unreachable, outbox full).
A confirmed publication is recorded in the store (`dispatched`, in batches); any other outcome,
or a crash before the confirm, leaves the message `received` and not dispatched, and the sweep
(sweep.py) publishes it again. A message may thus reach its work queue twice: processing is
idempotent (engine/bus/base.py).

Order: one task takes the outbox in order and calls basic.publish in that order on one AMQP
channel (the broker keeps a channel's order); confirms are awaited concurrently.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import pika
import structlog

from engine.bus.partitions import QUEUE_ARGUMENTS
from engine.connectors.amqp.client import AmqpError, Connection, Publisher
from engine.errors import StoreError
from engine.store.postgres import PostgresStore

log = structlog.get_logger("passerelle.bus")

MAX_OUTBOX = 20_000  # beyond this, publications are left to the sweep (bounded memory)
MAX_IN_FLIGHT = 2_000  # publications awaiting their confirm
FLUSH_SECONDS = 0.5  # confirmed ids are marked dispatched in batches (the sweep waits `sweep_after`)
RETRY_SECONDS = (0.5, 10.0)  # after a failed connection: publications dropped for this long (doubling)
PROPERTIES = pika.BasicProperties(delivery_mode=2, content_type="text/plain")

Item = tuple[str, int, "asyncio.Future[bool]"]  # work queue, message id, confirmed?


class BusPublisher:
    def __init__(self, params: pika.ConnectionParameters, store: PostgresStore, timeout: float) -> None:
        self.params = params
        self.store = store
        self.timeout = timeout
        self.where = f"{params.host}:{params.port}"
        self.published = 0  # confirmed publications (tests, benchmarks)
        self.dropped = 0  # publications left to the sweep
        self._outbox: asyncio.Queue[Item | None] = asyncio.Queue(MAX_OUTBOX)
        self._confirmed: list[int] = []
        self._in_flight: set[asyncio.Task[None]] = set()
        self._room = asyncio.Semaphore(MAX_IN_FLIGHT)
        self._connection: Connection | None = None
        self._publisher: Publisher | None = None
        self._declared: set[str] = set()
        self._down_until = 0.0
        self._opening = asyncio.Lock()
        self._backoff = RETRY_SECONDS[0]
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._run(), name="bus-publisher"),
                       asyncio.create_task(self._flush_forever(), name="bus-dispatched")]

    def publish(self, queue: str, message_id: int) -> asyncio.Future[bool]:
        """Queue a publication (in order with every other); its future says if it was confirmed."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        try:
            self._outbox.put_nowait((queue, message_id, future))
        except asyncio.QueueFull:
            self.dropped += 1
            future.set_result(False)
        return future

    async def publish_when_room(self, queue: str, message_id: int) -> asyncio.Future[bool]:
        """`publish`, waiting while the outbox is full (the sweep must not flood it)."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        await self._outbox.put((queue, message_id, future))
        return future

    async def reachable(self) -> bool:
        """Whether a publishing channel is open now (opening one if needed)."""
        return await self._ready("") is not None

    async def stop(self, timeout: float) -> None:
        """Publish what is queued (up to `timeout`), record the confirms, disconnect."""
        run, flush = self._tasks
        with contextlib.suppress(asyncio.QueueFull):
            self._outbox.put_nowait(None)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(run), timeout)
        run.cancel()
        while not self._outbox.empty():
            item = self._outbox.get_nowait()
            if item is not None:
                settle(item[2], False)
        if self._in_flight:
            await asyncio.wait(self._in_flight, timeout=timeout)
        flush.cancel()
        await asyncio.gather(run, flush, return_exceptions=True)
        await self._flush()
        await self._drop()

    # -- publishing ----------------------------------------------------------------------------

    async def _run(self) -> None:
        while (item := await self._outbox.get()) is not None:
            publisher = await self._ready(item[0])
            if publisher is None:
                self.dropped += 1
                settle(item[2], False)
                continue
            await self._room.acquire()
            # basic.publish runs before the task's first await: tasks start in creation order.
            task = asyncio.ensure_future(self._confirm(publisher, *item))
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)

    async def _confirm(self, publisher: Publisher, queue: str, message_id: int,
                       future: asyncio.Future[bool]) -> None:
        try:
            await publisher.publish("", queue, str(message_id).encode(), PROPERTIES, self.timeout)
        except AmqpError as err:
            self.dropped += 1
            self._failed(err)
            settle(future, False)
        else:
            self.published += 1
            self._confirmed.append(message_id)
            settle(future, True)
        finally:
            self._room.release()

    async def _ready(self, queue: str) -> Publisher | None:
        """The open publisher with `queue` declared, or None while the broker is unreachable."""
        if time.monotonic() < self._down_until:
            return None
        async with self._opening:
            return await self._open_and_declare(queue)

    async def _open_and_declare(self, queue: str) -> Publisher | None:
        try:
            if self._publisher is None or not self._publisher.channel.is_open:
                await self._drop()
                self._publisher = await self._open()
            if queue and queue not in self._declared:
                await self._publisher.channel.call("queue_declare", self.timeout, queue=queue, durable=True,
                                                   arguments=QUEUE_ARGUMENTS)
                self._declared.add(queue)
        except AmqpError as err:
            self._failed(err)
            return None
        if self._backoff > RETRY_SECONDS[0]:
            log.info("bus_publisher_connected", broker=self.where)
        self._backoff = RETRY_SECONDS[0]
        return self._publisher

    async def _open(self) -> Publisher:
        self._connection = await Connection.open(self.params, self.timeout)
        channel = await self._connection.channel(self.timeout)
        self._declared.clear()
        return await Publisher(channel).enable(self.timeout)

    def _failed(self, err: AmqpError) -> None:
        """Broker trouble: publications are left to the sweep for a while, then a new connection."""
        if self._backoff == RETRY_SECONDS[0] and time.monotonic() >= self._down_until:
            log.warning("bus_publish_failed", broker=self.where, error=str(err),
                        note="the messages stay received in the store; the sweep publishes them again")
        self._down_until = time.monotonic() + self._backoff
        self._backoff = min(RETRY_SECONDS[1], self._backoff * 2)
        self._publisher = None

    async def _drop(self) -> None:
        connection, self._connection, self._publisher = self._connection, None, None
        if connection is not None:
            await connection.aclose()

    # -- the dispatched marks ------------------------------------------------------------------

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_SECONDS)
            await self._flush()

    async def _flush(self) -> None:
        ids, self._confirmed = self._confirmed, []
        if not ids:
            return
        try:
            await self.store.mark_dispatched(ids)
        except StoreError as err:  # the sweep publishes them again: duplicates, which are harmless
            log.error("bus_dispatched_mark_failed", count=len(ids), error=str(err))


def settle(future: asyncio.Future[bool], value: bool) -> None:
    if not future.done():
        future.set_result(value)
