"""AMQP source: consumes a durable RabbitMQ queue; acknowledges each message after its commit.

The contract, per message:
- `deliver` first (the store commit), then `basic.ack`. A store failure is `basic.nack` with
  requeue: the broker keeps the message and redelivers it. At most `prefetch` messages are
  unacknowledged at once (bounded in-flight work, back-pressure on the broker).
- A message the engine rejects for good (empty, too large, unrecognised or undecodable content,
  an HL7 envelope error, or the channel's validation) is stored as rejected, then republished
  (confirmed) to `dead_letter_exchange` with the reason in headers (`x-passerelle-error`, and
  `x-passerelle-findings`: a JSON list of severity, code, location, text), then acknowledged.
  Without a dead-letter exchange it is `basic.reject`ed without requeue.
- De-duplication key: HL7 MSH-10 + MSH-3/4; else the AMQP `message_id` (sender `amqp:<app_id>`);
  else the content's SHA-256. A message redelivered after a crash between commit and ack is
  answered "duplicate" by the store (same verdict) and acknowledged: stored once.

The queue is declared durable (a quorum queue by default; when the broker cannot declare one,
e.g. the queue exists as classic, the existing queue is used and a warning logged), with
`x-dead-letter-exchange` so the broker's own dead-lettering ends in the same place. A lost
connection (broker restart) is retried with backoff for as long as the engine runs;
unacknowledged messages are redelivered by the broker. Logs never carry message content.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from typing import Any, Literal

import pika
import structlog
from pydantic import Field

from engine.connectors.amqp.client import AmqpError, BrokerConfig, Channel, Connection, Publisher, parameters
from engine.contracts import BuildContext, ComponentConfig, Deliver, Intake, Receipt
from engine.errors import Finding, StoreError
from engine.formats.sniff import BINARY, HEAD_BYTES, content_id, hl7_envelope, sniff, text_problem
from engine.message import HL7V2, SourceMeta

log = structlog.get_logger("passerelle.amqp")

EVIDENCE_BYTES = 64 * 1024  # of an oversized message, what is kept in the store
ERROR_HEADER = "x-passerelle-error"
FINDINGS_HEADER = "x-passerelle-findings"


class Binding(ComponentConfig):
    exchange: str
    """Exchange to bind the queue to (declared durable when `declare` is on)."""
    routing_key: str = "#"
    """Binding key (topic pattern for a topic exchange)."""
    exchange_type: Literal["direct", "topic", "fanout", "headers"] = "topic"
    """Type of the exchange, used when declaring it."""


class Config(BrokerConfig):
    queue: str = Field(min_length=1)
    """Queue to consume."""
    declare: bool = True
    """Declare the queue, its bindings and the dead-letter exchange (idempotent). Off: they must exist."""
    queue_type: Literal["quorum", "classic"] = "quorum"
    """Queue type when declaring: `quorum` (replicated, durable) or `classic` (durable)."""
    bindings: list[Binding] = Field(default_factory=list)
    """Exchanges (and keys) the queue receives from."""
    dead_letter_exchange: str = "passerelle.dead-letter"
    """Exchange (fanout, durable) that rejected messages are republished to, with the reason in
    headers. Empty: rejected messages are basic.reject'ed without requeue."""
    dead_letter_queue: str = ""
    """When set (and `declare` is on): a durable queue bound to the dead-letter exchange."""
    prefetch: int = Field(default=512, ge=1, le=65535)
    """Unacknowledged messages at most (in-flight bound)."""
    content_type: str = "auto"
    """`auto`: recognised from the content (HL7 v2, CDA, XML, DICOM), else the message's AMQP
    content_type property, else `fallback_content_type`. Or a fixed content type."""
    fallback_content_type: str = ""
    """With `auto`: the type of unrecognised content without a content_type property; empty refuses it."""
    charset: str = ""
    """HL7 character set when MSH-18 is empty (HL7 name like `8859/1`, or a Python codec)."""
    max_message_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    """Largest accepted message; a larger one is rejected (only its head is stored)."""
    max_backoff: float = Field(default=60.0, gt=0)
    """Upper bound of the wait between reconnection attempts."""
    requeue_delay: float = Field(default=1.0, ge=0)
    """Seconds a message whose commit failed is held before it goes back to the queue (nack with
    requeue), so that a failing store is not hammered by immediate redeliveries."""


AmqpSourceConfig = Config  # a distinct name for annotations

EXAMPLE = {"type": "amqp", "host": "rabbitmq.internal", "queue": "passerelle.lab-results",
           "password": "${file:config/secrets/amqp-password}",
           "bindings": [{"exchange": "partners", "routing_key": "lab.results.#"}],
           "tls": {"ca": "config/tls/internal-ca.pem"}, "port": 5671}


class AmqpSource:
    def __init__(self, config: AmqpSourceConfig, context: BuildContext) -> None:
        self.config = config
        self.channel_name = context.channel
        self.params = parameters(config, context)
        self.peer = f"{config.host}:{config.port}"
        self.connected = asyncio.Event()
        self.last_error = ""
        self.reconnects = 0
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._deliver: Deliver | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self, deliver: Deliver) -> None:
        """Start consuming in the background: an unreachable broker never fails the engine start."""
        self._deliver = deliver
        self._stopping.clear()
        self._task = asyncio.create_task(self._run(), name=f"{self.channel_name}/amqp")

    async def stop(self) -> None:
        """Cancel the consumer, let in-flight messages commit and be acknowledged, disconnect."""
        self._stopping.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(self._task, self.config.operation_timeout + 5)

    async def _run(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            try:
                await self._session()
                failures = 0
            except AmqpError as err:
                self._unavailable(err, failures)
                failures += 1
            except Exception as err:  # a bug must not stop consuming; unacked messages are redelivered
                log.exception("amqp_session_bug", channel=self.channel_name, error=type(err).__name__)
                failures += 1
            self.connected.clear()
            if not self._stopping.is_set():
                self.reconnects += 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), self._backoff(failures))

    def _unavailable(self, err: AmqpError, failures: int) -> None:
        self.last_error = str(err)
        if failures == 0:
            log.warning("amqp_unavailable", channel=self.channel_name, broker=self.peer, error=str(err))

    def _backoff(self, failures: int) -> float:
        return min(self.config.max_backoff, 0.5 * 2.0 ** min(failures, 16)) * random.uniform(0.8, 1.2)

    # -- one connection --------------------------------------------------------------------------

    async def _session(self) -> None:
        """Connect, declare, consume until the connection closes or the engine stops."""
        timeout = self.config.connect_timeout
        conn = await Connection.open(self.params, timeout)
        try:
            channel = await conn.channel(timeout)
            if self.config.declare:
                channel = await self._declare(conn, channel)
            await channel.call("basic_qos", self.config.operation_timeout,
                               prefetch_count=self.config.prefetch)
            publisher = await Publisher(channel).enable(self.config.operation_timeout)
            tag = channel.pika.basic_consume(self.config.queue, self._on_message(channel, publisher))
            self._connected()
            await self._until_closed(conn, channel)
            if self._stopping.is_set():
                await self._drain(channel, tag)
        finally:
            await conn.aclose()

    def _connected(self) -> None:
        if self.last_error:
            log.info("amqp_connected", channel=self.channel_name, broker=self.peer)
        self.last_error = ""
        self.connected.set()

    async def _until_closed(self, conn: Connection, channel: Channel) -> None:
        stopping: asyncio.Future[Any] = asyncio.ensure_future(self._stopping.wait())
        ends: list[asyncio.Future[Any]] = [stopping, conn.closed, channel.closed]
        try:
            await asyncio.wait(ends, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
        for end in (conn.closed, channel.closed):
            if end.done() and not self._stopping.is_set():
                raise AmqpError(f"connection to {self.peer} lost: {end.result()}")

    async def _drain(self, channel: Channel, tag: str) -> None:
        """Engine stopping: no new deliveries; finish (commit + ack) the ones in hand."""
        with contextlib.suppress(AmqpError):
            await channel.call("basic_cancel", self.config.operation_timeout, consumer_tag=tag)
        if self._handlers:
            await asyncio.wait(self._handlers, timeout=self.config.operation_timeout)

    async def _declare(self, conn: Connection, channel: Channel) -> Channel:
        timeout = self.config.operation_timeout
        dlx = self.config.dead_letter_exchange
        if dlx:
            await channel.call("exchange_declare", timeout, exchange=dlx, exchange_type="fanout",
                               durable=True)
            if queue := self.config.dead_letter_queue:
                await channel.call("queue_declare", timeout, queue=queue, durable=True,
                                   arguments=self._queue_arguments(with_dlx=False))
                await channel.call("queue_bind", timeout, queue=queue, exchange=dlx, routing_key="")
        channel = await self._declare_queue(conn, channel)
        for binding in self.config.bindings:
            await channel.call("exchange_declare", timeout, exchange=binding.exchange,
                               exchange_type=binding.exchange_type, durable=True)
            await channel.call("queue_bind", timeout, queue=self.config.queue, exchange=binding.exchange,
                               routing_key=binding.routing_key)
        return channel

    async def _declare_queue(self, conn: Connection, channel: Channel) -> Channel:
        timeout = self.config.operation_timeout
        try:
            await channel.call("queue_declare", timeout, queue=self.config.queue, durable=True,
                               arguments=self._queue_arguments(with_dlx=True))
            return channel
        except AmqpError as err:
            if conn.closed.done():
                raise
            log.warning("amqp_queue_declare_refused", channel=self.channel_name, error=str(err),
                        note="using the existing queue as it is")
        channel = await conn.channel(self.config.connect_timeout)  # the broker closed the other one
        await channel.call("queue_declare", timeout, queue=self.config.queue, passive=True)
        return channel

    def _queue_arguments(self, with_dlx: bool) -> dict[str, Any]:
        arguments: dict[str, Any] = {"x-queue-type": self.config.queue_type}
        if with_dlx and self.config.dead_letter_exchange:
            arguments["x-dead-letter-exchange"] = self.config.dead_letter_exchange
        return arguments

    # -- one message -----------------------------------------------------------------------------

    def _on_message(self, channel: Channel, publisher: Publisher) -> Any:
        def on_message(_ch: Any, method: Any, properties: Any, body: bytes) -> None:
            task = asyncio.create_task(self._handle(channel, publisher, method, properties, body))
            self._handlers.add(task)
            task.add_done_callback(self._handlers.discard)

        return on_message

    async def _handle(self, channel: Channel, publisher: Publisher, method: Any, properties: Any,
                      body: bytes) -> None:
        """Commit, then answer the broker: ack, nack-requeue (store failure) or dead-letter."""
        tag = method.delivery_tag
        try:
            receipt = await self._intake(self.intake(body, properties))
        except StoreError:
            log.error("amqp_store_failed", channel=self.channel_name)
            await asyncio.sleep(self.config.requeue_delay)
            answer(channel, "basic_nack", delivery_tag=tag, requeue=True)
            return
        if receipt.verdict.status == "rejected":
            await self._dead_letter(channel, publisher, method, properties, body, receipt)
            return
        answer(channel, "basic_ack", delivery_tag=tag)

    async def _dead_letter(self, channel: Channel, publisher: Publisher, method: Any, properties: Any,
                           body: bytes, receipt: Receipt) -> None:
        tag = method.delivery_tag
        if not self.config.dead_letter_exchange:
            answer(channel, "basic_reject", delivery_tag=tag, requeue=False)
            return
        copy = dead_letter_properties(properties, receipt, self.channel_name, self.config.queue)
        try:
            await publisher.publish(self.config.dead_letter_exchange, method.routing_key, body, copy,
                                    self.config.operation_timeout)
        except AmqpError as err:  # redelivered later: the store answers duplicate, we try again
            log.warning("amqp_dead_letter_failed", channel=self.channel_name, error=str(err))
            answer(channel, "basic_nack", delivery_tag=tag, requeue=True)
            return
        answer(channel, "basic_ack", delivery_tag=tag)

    async def _intake(self, intake: Intake) -> Receipt:
        assert self._deliver is not None
        return await self._deliver(intake)

    def intake(self, body: bytes, properties: Any) -> Intake:
        """What is stored: the body, its type, its de-duplication key, and any problem found."""
        meta = SourceMeta("amqp", self.peer)
        sender = f"amqp:{properties.app_id or self.config.queue}"
        control_id = str(properties.message_id or "") or content_id(body)
        if not body:
            return Intake(body, meta, BINARY, control_id=control_id, sender=sender,
                          problem=Finding("the message body is empty", code="100"))
        if len(body) > self.config.max_message_bytes:
            text = (f"the message is {len(body)} bytes, more than max_message_bytes "
                    f"({self.config.max_message_bytes}); only its head was stored")
            return Intake(body[:EVIDENCE_BYTES], meta, BINARY, control_id=control_id, sender=sender,
                          problem=Finding(text, code="100"))
        content_type = self._content_type(body, properties)
        if content_type == HL7V2:
            env = hl7_envelope(body, self.config.charset, sender)
            return Intake(body, meta, HL7V2, control_id=env.control_id, sender=env.sender,
                          charset=env.charset, problem=env.problem)
        problem = text_problem(body, content_type) if content_type else unrecognised()
        return Intake(body, meta, content_type or BINARY, control_id=control_id, sender=sender,
                      problem=problem)

    def _content_type(self, body: bytes, properties: Any) -> str:
        if self.config.content_type != "auto":
            return self.config.content_type
        declared = str(properties.content_type or "")
        return sniff(body[:HEAD_BYTES]) or declared or self.config.fallback_content_type


def answer(channel: Channel, method: str, **kwargs: Any) -> None:
    """Ack/nack/reject on the channel the message came from; after a reconnection that channel is
    gone and the broker redelivers the message by itself."""
    if channel.is_open:
        getattr(channel.pika, method)(**kwargs)


def unrecognised() -> Finding:
    return Finding("the content is not HL7 v2, CDA, XML or DICOM, has no content_type property, and no "
                   "fallback_content_type is set", code="102")


def dead_letter_properties(
    properties: Any, receipt: Receipt, channel: str, queue: str,
) -> pika.BasicProperties:
    """The original properties, persistent, with why the message was rejected in its headers."""
    findings = [{"severity": f.severity, "code": f.code, "location": f.location, "text": f.text}
                for f in receipt.verdict.findings]
    reason = "; ".join(f.text for f in receipt.verdict.findings) or "rejected"
    headers = {**(properties.headers or {}), ERROR_HEADER: reason[:1000],
               FINDINGS_HEADER: json.dumps(findings, ensure_ascii=False)[:16_000],
               "x-passerelle-channel": channel, "x-passerelle-message-id": receipt.message_id,
               "x-passerelle-ack-code": receipt.verdict.code, "x-passerelle-queue": queue}
    return pika.BasicProperties(
        content_type=properties.content_type, content_encoding=properties.content_encoding, headers=headers,
        delivery_mode=2, message_id=properties.message_id, correlation_id=properties.correlation_id,
        timestamp=properties.timestamp, type=properties.type, app_id=properties.app_id,
    )
