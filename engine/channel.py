"""One running channel: intake (persist, then answer), its steps, and its destination queues.

`accept` is the `deliver` callback handed to the source. With `respond_after: processed` the
steps run first and the message, its verdict, the answer to the sender and its deliveries are
committed together. With `received` the message is committed first (status `received`) and
a pipeline runs the steps afterwards; a restart re-runs the steps of every message still
`received` (steps are pure, so running them again is safe).

Where the steps of a `received` message run is the channel's `work` (engine/bus/): in this
process (embedded, the default) or in whichever worker process consumes it from the RabbitMQ
work bus (`bus: amqp`). With a store shared by several processes only deliveries this worker
owns are handed to its queues (store/base.py: `NOT_OWNED`).
"""

from __future__ import annotations

import asyncio
import hashlib
import json

import structlog

from engine import metrics
from engine.bus.base import ChannelWork, WorkFactory
from engine.bus.embedded import EmbeddedWork
from engine.config import ChannelSpec, RouteCondition
from engine.contracts import Intake, Receipt, Source, Step, Verdict
from engine.dispatch import DestinationQueue, LoadMessage
from engine.errors import Filtered, Finding, ParseError, Rejected
from engine.message import HL7V2, Message, SourceMeta
from engine.store.base import (
    NOT_OWNED,
    IntakeRecord,
    IntakeResult,
    NewDelivery,
    ProcessedRecord,
    Store,
    StoredMessage,
    findings_from_json,
    findings_to_json,
)
from engine.store.cipher import PayloadCipher

log = structlog.get_logger("passerelle.channel")

RECEIVED = Verdict("AA", "received")


class Channel:
    def __init__(
        self,
        spec: ChannelSpec,
        source: Source,
        steps: list[Step],
        queues: list[DestinationQueue],
        store: Store,
        work: WorkFactory | None = None,
    ) -> None:
        self.spec = spec
        self.name = spec.name
        self.source = source
        self.steps = steps
        self.queues = queues
        self.store = store
        self.work: ChannelWork = work(self) if work else EmbeddedWork(self, store)
        self._waiters: dict[int, asyncio.Future[Verdict]] = {}
        self._conditions = {d.name: d.when for d in spec.destinations}
        self._step_conditions = [s.when for s in spec.steps]
        self._accepting = 0
        self._drained = asyncio.Event()
        self._drained.set()
        self.meter = metrics.channel_meter(spec.name)  # counts per stored status (dashboard, /metrics)

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self, open_source: bool = True) -> None:
        """Resume unfinished work first, then open the source (not when testing offline)."""
        self.start_work()
        if open_source:
            await self.source.start(self.accept)

    def start_work(self) -> None:
        """Start the destination queues (idempotent: a reused queue keeps running) and the work."""
        for queue in self.queues:
            queue.start()
        self.work.start()

    async def stop_intake(self) -> None:
        await self.source.stop()

    async def stop(self, timeout: float) -> None:
        await self.stop_pipeline(timeout)
        await asyncio.gather(*(q.stop(timeout) for q in self.queues))

    async def stop_pipeline(self, timeout: float) -> None:
        """Finish the step runs in flight; messages not yet taken stay `received` in the store."""
        await self.work.stop(timeout)

    async def drained(self) -> None:
        """Wait until no intake is in flight on this channel version (hot reload)."""
        await self._drained.wait()

    def hand_over_waiters(self, successor: Channel) -> None:
        """Application-ACK waiters of messages not processed yet: the successor resolves them."""
        successor._waiters.update(self._waiters)
        self._waiters.clear()

    # -- intake --------------------------------------------------------------------------------

    async def accept(self, intake: Intake) -> Receipt:
        """Store the message durably (de-duplicated), then say what was decided. Raises StoreError."""
        self._accepting += 1
        self._drained.clear()
        try:
            return await self._accept(intake)
        finally:
            self._accepting -= 1
            if not self._accepting:
                self._drained.set()

    async def _accept(self, intake: Intake) -> Receipt:
        message = Message(
            self.name,
            intake.raw,
            intake.content_type,
            intake.meta,
            control_id=intake.control_id,
            sender=intake.sender,
            charset=intake.charset,
        )
        verdict, deliveries = self._judge(intake, message)
        response = intake.respond(verdict) if intake.respond else None
        result = await self.store.intake(self._record(intake, message, verdict, response, deliveries))
        if result.duplicate:
            if result.status == "received":  # its first intake may have died before handing it over
                message.id = result.message_id
                await self.work.resubmit(message)
            return self._replay(intake, result)
        if result.conflict:
            return await self._accept_conflict(intake)
        message.id = result.message_id
        return await self._hand_over(message, verdict, response, result, deliveries)

    def _judge(self, intake: Intake, message: Message) -> tuple[Verdict, list[NewDelivery]]:
        if intake.problem is not None:
            return Verdict("AR", "rejected", (intake.problem,)), []
        if self.spec.respond_after == "processed" or not self.steps:
            # With no steps there is nothing to defer: the outcome is committed with the
            # message, in one transaction (the ACK still only says "stored").
            return self.process(message)
        return RECEIVED, []

    def _record(
        self,
        intake: Intake,
        message: Message,
        verdict: Verdict,
        response: bytes | None,
        deliveries: list[NewDelivery],
        dedup: bool = True,
    ) -> IntakeRecord:
        meta = intake.meta
        content = message.content() if verdict.status != "received" else intake.raw
        return IntakeRecord(
            channel=self.name,
            channel_version=self.spec.version,
            received_at=message.received_at,
            content_type=intake.content_type,
            source_type=meta.source_type,
            peer=meta.peer,
            tls_subject=meta.tls_subject,
            filename=meta.filename,
            control_id=intake.control_id,
            sender=intake.sender,
            content_hash=hashlib.sha256(intake.raw).digest(),
            status=verdict.status,
            ack_code=verdict.code,
            findings=findings_to_json(verdict.findings),
            raw=intake.raw,
            transformed=content if content != intake.raw else None,
            response=response,
            deliveries=deliveries,
            dedup=dedup,
            vars=encode_vars(message.vars),
        )

    def _replay(self, intake: Intake, result: IntakeResult) -> Receipt:
        """An identical re-send: answer as the first time, store nothing."""
        verdict = Verdict(result.ack_code or "AA", result.status, findings_from_json(result.findings))
        response = intake.respond(verdict) if intake.respond else None
        done: asyncio.Future[Verdict] = asyncio.get_running_loop().create_future()
        done.set_result(verdict)
        return Receipt(result.message_id, verdict, response, duplicate=True, processed=done)

    async def _accept_conflict(self, intake: Intake) -> Receipt:
        """A different message reusing a control id: stored as rejected, answered AE 205."""
        finding = Finding(
            f"control id {intake.control_id} was already used by this sender for a different "
            "message; send each message with a new MSH-10",
            code="205",
            location="MSH^1^10",
        )
        message = Message(
            self.name, intake.raw, intake.content_type, intake.meta, control_id=intake.control_id
        )
        verdict = Verdict("AE", "rejected", (finding,))
        response = intake.respond(verdict) if intake.respond else None
        result = await self.store.intake(self._record(intake, message, verdict, response, [], dedup=False))
        return await self._hand_over(message, verdict, response, result)

    async def _hand_over(
        self,
        message: Message,
        verdict: Verdict,
        response: bytes | None,
        result: IntakeResult,
        deliveries: list[NewDelivery] | None = None,
    ) -> Receipt:
        done: asyncio.Future[Verdict] = asyncio.get_running_loop().create_future()
        self.meter.stored(verdict.status)
        if verdict.status == "received":
            if not self.work.tracks_outcome:  # processed by whichever worker: no application ACK
                await self.work.submit(message)
                return Receipt(result.message_id, verdict, response)
            self._waiters[result.message_id] = done
            await self.work.submit(message)
        else:
            done.set_result(verdict)
            self._offer(message, deliveries or [], result.delivery_ids)
        return Receipt(result.message_id, verdict, response, processed=done)

    def _offer(self, message: Message, deliveries: list[NewDelivery], delivery_ids: tuple[int, ...]) -> None:
        """Hand the deliveries just created (ids in the order of `deliveries`) to their queues."""
        queues = {q.name: q for q in self.queues}
        for delivery, delivery_id in zip(deliveries, delivery_ids, strict=True):
            if delivery_id == NOT_OWNED:
                continue  # another worker owns this order key's earlier deliveries: its claim scan
            queues[delivery.destination].offer(delivery_id, message, delivery.order_key)

    # -- steps ---------------------------------------------------------------------------------

    def process(self, message: Message) -> tuple[Verdict, list[NewDelivery]]:
        """Run the steps; the verdict and the deliveries to create. Never raises."""
        try:
            for step, when in zip(self.steps, self._step_conditions, strict=True):
                if routed(when, message):
                    message = step(message)
            message.content()
        except Filtered as err:
            return Verdict("AA", "filtered", (Finding(str(err), code="", severity="I"),)), []
        except Rejected as err:
            return Verdict(err.ack_code, "rejected", tuple(err.findings)), []
        except ParseError as err:
            return Verdict("AR", "rejected", (Finding(str(err), code="102"),)), []
        except Exception as err:
            log.error("step_bug", channel=self.name, error=type(err).__name__)
            text = f"internal error in a step ({type(err).__name__}); the message is kept for reprocessing"
            return Verdict("AR", "rejected", (Finding(text, code="207"),)), []
        finally:
            message.forget_parse()  # queued messages keep their bytes, not the parsed view
        deliveries = [
            NewDelivery(q.name, order_key(message, q.config.order_by, self.store.cipher))
            for q in self.queues
            if routed(self._conditions.get(q.name), message)
        ]
        status = "queued" if deliveries else "sent"  # no destination wanted it: processing was the job
        return Verdict("AA", status, tuple(message.findings)), deliveries

    # -- the work's view of the channel (engine/bus/base.py: Processor) -------------------------

    async def finish(self, message: Message) -> None:
        """Run a `received` message's steps and commit the outcome; raises StoreError."""
        await self.finish_all([message])

    async def finish_all(self, messages: list[Message]) -> None:
        """Run the steps of `received` messages and commit their outcomes in one transaction, all or
        none (raises StoreError: then none is), then hand the new deliveries to the queues.

        Once the commit is asked for, it and the hand-over complete even if the caller is cancelled
        (a bus consumer stopped at a rebalance): a cancelled caller used to leave committed
        deliveries that no queue knew of until its next claim scan, while the same patient's later
        deliveries, offered meanwhile, went out first (issue #9)."""
        if not messages:
            return
        decided = [(message, *self.process(message)) for message in messages]
        records = [self._processed_record(m, verdict, deliveries) for m, verdict, deliveries in decided]
        commit = asyncio.ensure_future(self._commit_processed(decided, records))
        try:
            await asyncio.shield(commit)
        except asyncio.CancelledError:
            commit.add_done_callback(_orphan_done)
            raise

    def _processed_record(
        self, message: Message, verdict: Verdict, deliveries: list[NewDelivery]
    ) -> ProcessedRecord:
        assert message.id is not None
        transformed = message.content() if message.transformed() else None
        return ProcessedRecord(
            message.id,
            self.name,
            verdict.status,
            findings_to_json(verdict.findings),
            transformed,
            deliveries,
            verdict.code,
            vars=encode_vars(message.vars),
        )

    async def _commit_processed(
        self, decided: list[tuple[Message, Verdict, list[NewDelivery]]], records: list[ProcessedRecord]
    ) -> None:
        all_ids = await self.store.processed_all(records)
        for (message, verdict, deliveries), ids in zip(decided, all_ids, strict=True):
            self._settle(message, verdict, deliveries, ids)

    def _settle(
        self, message: Message, verdict: Verdict, deliveries: list[NewDelivery], ids: tuple[int, ...]
    ) -> None:
        """A processing outcome is committed: offer its deliveries, answer a waiting application ACK."""
        assert message.id is not None
        self.work.done(message.id)
        if ids or not deliveries:  # else another worker processed it first (redelivery): that stands
            self.meter.processed(verdict.status)
            self._offer(message, deliveries, ids)
        waiter = self._waiters.pop(message.id, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(verdict)

    async def reload_unprocessed(self, after_id: int, limit: int) -> list[tuple[int, Message]]:
        rows = await self.store.claim_unprocessed(self.name, after_id, limit)
        return [(row.id, self.from_row(row)) for row in rows]

    async def load_received(self, message_ids: list[int]) -> dict[int, Message]:
        rows = await self.store.messages(message_ids)
        return {row.id: self.from_row(row) for row in rows if row.status == "received"}

    async def unprocessed(self, after_id: int, limit: int) -> list[Message]:
        return [self.from_row(row) for row in await self.store.unprocessed(self.name, after_id, limit)]

    def from_row(self, row: StoredMessage) -> Message:
        return message_from_row(row, self.charset)

    def partition_key(self, message: Message) -> str:
        """The first destination order key (e.g. the patient id): what the bus keeps in order."""
        path = next((q.config.order_by for q in self.queues if q.config.order_by), "")
        return order_key(message, path, self.store.cipher)

    @property
    def charset(self) -> str:
        """The source's configured default character set, if it has one (MSH-18 wins)."""
        return str(getattr(self.spec.source.config, "charset", ""))


def message_loader(store: Store, charset: str) -> LoadMessage:
    """How a destination queue fetches a message it reloaded from the store."""

    async def load(message_id: int) -> Message:
        row = await store.message(message_id)
        if row is None:
            raise LookupError(f"message {message_id} is not in the store")
        return message_from_row(row, charset)

    return load


def order_key(message: Message, path: str, cipher: PayloadCipher | None = None) -> str:
    """The destination order key of `message` (its `order_by` field), as stored and compared
    everywhere: in the store, the destination queues and the bus partitions. With encryption at rest
    it is the keyed digest of the field (`PayloadCipher.order_digest`), never the clear value (e.g. a
    national id): equal values keep equal keys, so ordering is unchanged. "" means no ordering."""
    if not path or message.content_type != HL7V2:
        return ""
    try:
        clear = message.hl7.get(path)
    except ParseError:
        return ""
    return cipher.order_digest(clear) if cipher is not None else clear


def message_from_row(row: StoredMessage, charset: str = "") -> Message:
    meta = SourceMeta(row.source_type, row.peer, row.tls_subject, row.filename)
    return Message(
        row.channel,
        row.raw,
        row.content_type,
        meta,
        received_at=row.received_at,
        id=row.id,
        control_id=row.control_id,
        sender=row.sender,
        charset=charset,
        body=row.transformed,
        vars=json.loads(row.vars) if row.vars else {},
    )


def encode_vars(variables: dict[str, str]) -> bytes | None:
    """Routing variables as stored with the payloads (they may hold patient traits)."""
    return json.dumps(variables, ensure_ascii=False).encode() if variables else None


def routed(condition: RouteCondition | None, message: Message) -> bool:
    return condition is None or condition.holds(message.vars)


def _orphan_done(commit: asyncio.Future[None]) -> None:
    """A shielded commit whose caller was cancelled: its failure has no one to raise to. The work
    stays `received` in the store (redelivered or reclaimed); the reason is logged, never content."""
    if not commit.cancelled() and commit.exception() is not None:
        log.error("processing_store_failed", error=str(commit.exception()))
