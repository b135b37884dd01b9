"""AMQP source and destination end to end against a real RabbitMQ node on 127.0.0.1.

The partner side (publishing into the intake queue, reading what the engine published) is a
plain pika BlockingConnection, as a partner's service would use.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pika
import pytest

from engine.connectors.amqp.destination import AmqpDestination
from engine.connectors.amqp.source import AmqpSource
from engine.errors import StoreError
from engine.store.base import IntakeRecord, IntakeResult
from tests.support.engine_process import write_project
from tests.support.engine_thread import EngineThread
from tests.support.rabbitmq import RabbitMq
from tests.unit.hl7_samples import ORU_R01_25

CHANNEL = """
respond_after: processed
source: {source}
steps:
  - {{type: validate_hl7, required_fields: [PID-3]}}
destinations:
  - name: bus
    type: amqp
    port: {port}
    exchange: {exchange}
    exchange_type: topic
    routing_key: "lab.{{message_code}}.{{trigger_event}}"
    headers: {{x-origin: "{{channel}}"}}
    queue: {{initial_backoff: 0.2, max_backoff: 1.0, concurrency: 32}}
"""


def oru(control_id: str) -> bytes:
    return ORU_R01_25.replace(b"|LAB20250314000123|", f"|{control_id}|".encode())


def wait_until(predicate: Callable[[], object], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitMq]:
    node = RabbitMq(tmp_path_factory.mktemp("rabbitmq")).start()
    yield node
    node.close()


class Setup:
    """One test's queues and exchanges (unique names: the broker is shared by the module)."""

    def __init__(self, broker: RabbitMq) -> None:
        suffix = secrets.token_hex(3)
        self.broker = broker
        self.queue = f"intake-{suffix}"
        self.dead = f"intake-{suffix}.dead"
        self.exchange = f"results-{suffix}"
        self.out = f"collected-{suffix}"

    def source(self, **extra: object) -> dict[str, object]:
        return {"type": "amqp", "port": self.broker.port, "queue": self.queue, "dead_letter_exchange":
                f"dlx-{self.queue}", "dead_letter_queue": self.dead, "max_backoff": 1.0, **extra}

    def bind_output(self, routing_key: str = "lab.#") -> None:
        with self.broker.connection() as conn:
            channel = conn.channel()
            channel.exchange_declare(self.exchange, "topic", durable=True)
            channel.queue_declare(self.out, durable=True, arguments={"x-queue-type": "quorum"})
            channel.queue_bind(self.out, self.exchange, routing_key)

    def publish(self, bodies: list[bytes], **properties: Any) -> None:
        """Publish into the intake queue with publisher confirms, as a careful partner does."""
        with self.broker.connection() as conn:
            channel = conn.channel()
            channel.confirm_delivery()
            for body in bodies:
                persistent = pika.BasicProperties(delivery_mode=2, **properties)
                channel.basic_publish("", self.queue, body, persistent, mandatory=True)

    def drain(self, queue: str) -> list[tuple[Any, Any, bytes]]:
        with self.broker.connection() as conn:
            channel = conn.channel()
            got = []
            while (item := channel.basic_get(queue, auto_ack=True))[0] is not None:
                got.append(item)
            return got


def start(tmp_path: Path, setup: Setup, **source: object) -> EngineThread:
    channel = CHANNEL.format(source=json.dumps(setup.source(**source)), port=setup.broker.port,
                             exchange=setup.exchange)
    engine = EngineThread(write_project(tmp_path / "project", {"partner": channel})).start()
    wait_until(amqp_source(engine).connected.is_set, "the source to consume", 30)
    return engine


@pytest.fixture
def setup(broker: RabbitMq) -> Setup:
    made = Setup(broker)
    made.bind_output()
    return made


@pytest.fixture
def engine(tmp_path: Path, setup: Setup) -> Iterator[EngineThread]:
    running = start(tmp_path, setup)
    yield running
    running.stop()


def amqp_source(engine: EngineThread) -> AmqpSource:
    source = engine.engine.channels[0].source
    assert isinstance(source, AmqpSource)
    return source


def stored(engine: EngineThread) -> dict[str, int]:
    stats = engine.call(engine.engine.store.stats())
    return dict(stats["channels"].get("partner", {}).get("messages", {}))


def test_messages_are_acked_after_commit_and_published_with_confirms(
    engine: EngineThread, setup: Setup,
) -> None:
    setup.publish([oru(f"M{i}") for i in range(50)])
    wait_until(lambda: stored(engine).get("sent") == 50, "50 messages sent")
    assert setup.broker.queue_depth(setup.queue) == 0
    out = setup.drain(setup.out)
    assert sorted(p.message_id for _, p, _ in out) == sorted(f"M{i}" for i in range(50))
    method, properties, body = out[0]
    assert method.routing_key == "lab.ORU.R01" and properties.delivery_mode == 2
    assert properties.headers["x-origin"] == "partner" and body == oru(properties.message_id)
    destination = engine.engine.channels[0].queues[0].destination
    assert isinstance(destination, AmqpDestination) and destination.confirmed >= 50


def test_broker_restart_during_a_run_loses_nothing(engine: EngineThread, setup: Setup) -> None:
    first, second = 3000, 1000
    setup.publish([oru(f"R{i:05d}") for i in range(first)])
    wait_until(lambda: stored(engine).get("sent", 0) >= 300, "part of the run stored")
    setup.broker.restart()
    setup.publish([oru(f"R{i:05d}") for i in range(first, first + second)])
    wait_until(lambda: stored(engine).get("sent", 0) == first + second, "every message sent", 180)
    assert amqp_source(engine).reconnects >= 1
    assert sum(stored(engine).values()) == first + second  # redeliveries were duplicates, stored once
    wait_until(lambda: setup.broker.queue_depth(setup.queue) == 0, "the intake queue empty")
    ids = {p.message_id for _, p, _ in setup.drain(setup.out)}
    assert ids == {f"R{i:05d}" for i in range(first + second)}  # at least once: nothing lost


def test_poison_messages_end_in_the_dead_letter_exchange_with_their_reason(
    engine: EngineThread, setup: Setup,
) -> None:
    no_pid3 = oru("P1").replace(b"|1||1980010112302^^^RNPP&2.999.1&ISO^NI~P000123456^^^LABO-TEST&2.999.10"
                                b"&ISO^PI||", b"|1||||")
    setup.publish([bytes(range(256)), no_pid3, b"", oru("P2").replace(b"TEST", "TÉST".encode("latin-1"))],
                  headers={"partner-ref": "x"})
    wait_until(lambda: setup.broker.queue_depth(setup.dead) == 4, "4 dead-lettered messages")
    dead = {body: properties.headers for _, properties, body in setup.drain(setup.dead)}
    assert "not HL7 v2, CDA, XML or DICOM" in dead[bytes(range(256))]["x-passerelle-error"]
    findings = json.loads(dead[no_pid3]["x-passerelle-findings"])
    assert findings[0]["code"] == "101" and "PID-3" in findings[0]["text"]
    assert "empty" in dead[b""]["x-passerelle-error"]
    assert any("0xC9" in str(h["x-passerelle-error"]) for b, h in dead.items() if b.startswith(b"MSH"))
    assert all(h["partner-ref"] == "x" for h in dead.values())
    assert setup.broker.queue_depth(setup.queue) == 0 and stored(engine) == {"rejected": 4}


def test_store_failure_is_nacked_and_the_message_redelivered(
    engine: EngineThread, setup: Setup, monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = engine.engine.store
    real_intake = store.intake
    failures: list[int] = []

    async def failing_intake(record: IntakeRecord) -> IntakeResult:
        if len(failures) < 3:
            failures.append(1)
            raise StoreError("disk full (simulated)")
        return await real_intake(record)

    monkeypatch.setattr(store, "intake", failing_intake)
    setup.publish([oru("S1")])
    wait_until(lambda: stored(engine).get("sent") == 1, "the message stored after the failures")
    assert len(failures) == 3 and setup.broker.queue_depth(setup.queue) == 0


def test_unroutable_message_is_an_error_not_a_silent_drop(tmp_path: Path, broker: RabbitMq) -> None:
    setup = Setup(broker)  # the output exchange exists (declared by the destination) but nothing is bound
    engine = start(tmp_path, setup)
    try:
        setup.publish([oru("U1")])
        queue = engine.engine.channels[0].queues[0]
        wait_until(lambda: "unroutable" in queue.last_error, "the unroutable error")
        assert stored(engine).get("queued") == 1  # kept, retried with backoff
        setup.bind_output()
        wait_until(lambda: stored(engine).get("sent") == 1, "delivery once a queue is bound")
        assert [p.message_id for _, p, _ in setup.drain(setup.out)] == ["U1"]
    finally:
        engine.stop()


def test_non_hl7_message_is_identified_by_its_message_id(tmp_path: Path, setup: Setup) -> None:
    channel = f"respond_after: received\nsource: {json.dumps(setup.source())}\n"
    engine = EngineThread(write_project(tmp_path / "project", {"partner": channel})).start()
    try:
        wait_until(amqp_source(engine).connected.is_set, "the source to consume")
        document = b'<?xml version="1.0"?><ClinicalDocument xmlns="urn:hl7-org:v3"/>'
        setup.publish([document, document], message_id="doc-42", app_id="dsp")
        setup.publish([b'{"a": 1}'], content_type="application/json")
        wait_until(lambda: sum(stored(engine).values()) == 2 and setup.broker.queue_depth(setup.queue) == 0,
                   "two messages stored (the resend is a duplicate)")
        row = engine.call(engine.engine.store.message(1))
        assert row is not None and (row.control_id, row.sender) == ("doc-42", "amqp:dsp")
        assert row.content_type == "application/cda+xml"
        json_row = engine.call(engine.engine.store.message(2))
        assert json_row is not None and json_row.content_type == "application/json"
    finally:
        engine.stop()


def test_source_keeps_retrying_while_the_broker_is_unreachable(tmp_path: Path, setup: Setup) -> None:
    source = {**setup.source(), "port": 1}  # nothing listens on port 1
    channel = f"respond_after: received\nsource: {json.dumps(source)}\n"
    engine = EngineThread(write_project(tmp_path / "project", {"partner": channel})).start()
    try:
        wait_until(lambda: amqp_source(engine).reconnects >= 2, "reconnection attempts", 20)
        assert "cannot connect" in amqp_source(engine).last_error
    finally:
        engine.stop()
