"""The notifiable-disease feed end to end: ORU^R01 over MLLP -> detect_notifiable -> reporting_feed ->
a real RabbitMQ queue of the authority. One report per new/updated/amended case, each exactly once."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.contracts import BuildContext
from engine.errors import RetryableError
from engine.formats.hl7v2 import Hl7Message, parse
from engine.message import HL7V2, Message, SourceMeta
from engine.reporting.destination import Config, ReportingFeed
from engine.reporting.detection import VAR
from tests.support.engine_process import free_port, write_project
from tests.support.engine_thread import EngineThread
from tests.support.mllp_peers import MllpClient
from tests.support.rabbitmq import RabbitMq
from tests.unit.test_reporting_detection import NOT_DETECTED, SHIPPED, oru

CHANNEL = """
respond_after: processed
source: {{type: mllp, port: 0}}
steps:
  - {{type: filter_message_type, accept: [ORU^R01], on_mismatch: reject}}
  - {{type: detect_notifiable, catalogue: {catalogue}}}
destinations:
  - {{name: archive, type: file, directory: {out}}}
  - {{name: authority, type: reporting_feed, port: {port}, exchange: {exchange}, catalogue: {catalogue},
      connect_timeout: 5, operation_timeout: 5, queue: {{max_attempts: 50}}}}
"""


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitMq]:
    node = RabbitMq(tmp_path_factory.mktemp("rabbitmq")).start()
    yield node
    node.close()


class Authority:
    """The health authority's side: a durable topic exchange and a queue bound to every report."""

    def __init__(self, broker: RabbitMq) -> None:
        self.broker = broker
        self.exchange = f"domi-{secrets.token_hex(3)}"
        self.queue = f"{self.exchange}.inbox"
        with broker.connection() as conn:
            ch = conn.channel()
            ch.exchange_declare(self.exchange, "topic", durable=True)
            ch.queue_declare(self.queue, durable=True)
            ch.queue_bind(self.queue, self.exchange, "notifiable.#")

    def reports(self, expected: int, timeout: float = 30.0) -> list[Hl7Message]:
        """Wait for `expected` reports, and a moment more (a duplicate would show), then take them."""
        deadline = time.monotonic() + timeout
        while self.broker.queue_depth(self.queue) < expected and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1.0)
        taken = []
        with self.broker.connection() as conn:
            ch = conn.channel()
            while True:
                method, properties, body = ch.basic_get(self.queue, auto_ack=True)
                if method is None:
                    break
                assert properties.message_id == parse(body).get("MSH-10")
                taken.append(parse(body))
        return taken


@pytest.fixture
def authority(broker: RabbitMq) -> Authority:
    return Authority(broker)


@pytest.fixture
def engine(tmp_path: Path, broker: RabbitMq, authority: Authority) -> Iterator[EngineThread]:
    channel = CHANNEL.format(
        catalogue=SHIPPED, out=tmp_path / "out", port=broker.port, exchange=authority.exchange
    )
    running = EngineThread(write_project(tmp_path, {"lab": channel})).start()
    yield running
    running.stop()


def send(engine: EngineThread, *messages: bytes) -> None:
    with MllpClient(engine.port("lab")) as client:
        for raw in messages:
            assert b"MSA|AA" in client.send(raw)


def summary(report: Hl7Message) -> tuple[str, str, str, str]:
    """(case id, version, action, OBR-25) of a report."""
    return report.get("OBX[1]-5"), report.get("OBX[2]-5"), report.get("OBX[3]-5"), report.get("OBR-25")


def test_positive_repeat_negative_correction_unknown(engine: EngineThread, authority: Authority) -> None:
    send(engine, oru("P1", when="20250301080000"))
    [first] = authority.reports(1)
    case_id, version, action, status = summary(first)
    assert (version, action, status) == ("1", "new", "F")
    assert first.get("MSH-10") == f"{case_id}-v1" and first.get("OBR-4.1") == "sars-cov-2"
    assert first.get("OBX[4]-5") == "unresolved"  # no MPI step in this channel: national id kept, flagged
    assert first.get("PID-3[1].1") == "1980010112302"

    send(engine, oru("P2", when="20250311080000"))  # a second positive 10 days later
    [second] = authority.reports(1)
    assert summary(second) == (case_id, "2", "updated", "F")

    send(engine, oru("N1", value=NOT_DETECTED, when="20250312080000"), oru("U1", test="99999-9^Unknown^LN"))
    assert authority.reports(0) == []  # a negative and an unknown code report nothing

    send(engine, oru("P2C", when="20250311080000", status="C"))
    [amended] = authority.reports(1)
    assert summary(amended) == (case_id, "3", "amended", "C")
    assert len(amended.get_all("NTE[*]-3")) == 3  # the three contributing messages


def test_an_identical_resend_is_reported_once(engine: EngineThread, authority: Authority) -> None:
    send(engine, oru("D1"), oru("D1"))
    assert len(authority.reports(1)) == 1


def feed(tmp_path: Path, broker_port: int, exchange: str) -> ReportingFeed:
    config = Config(
        port=broker_port,
        exchange=exchange,
        catalogue=str(SHIPPED),
        database=str(tmp_path / "c.db"),
        connect_timeout=3,
        operation_timeout=3,
    )
    return ReportingFeed(config, BuildContext(tmp_path, "lab"))


async def test_a_redelivered_message_does_not_bump_the_version(
    tmp_path: Path, broker: RabbitMq, authority: Authority
) -> None:
    dest = feed(tmp_path, broker.port, authority.exchange)
    message = Message("lab", oru("R1"), HL7V2, SourceMeta("test"), id=41, control_id="R1")
    try:
        await dest.send(message)
        await dest.send(message)  # at-least-once delivery: the same message again
    finally:
        await dest.close()
    [report] = authority.reports(1)
    assert report.get("OBX[2]-5") == "1"


async def test_a_broker_outage_is_retryable_and_the_retry_reports(
    tmp_path: Path, broker: RabbitMq, authority: Authority
) -> None:
    down = feed(tmp_path, free_port(), authority.exchange)
    message = Message(
        "lab", oru("O1"), HL7V2, SourceMeta("test"), id=42, control_id="O1", vars={"enterprise_id": "E77"}
    )
    with pytest.raises(RetryableError):
        await down.send(message)
    await down.close()
    up = feed(tmp_path, broker.port, authority.exchange)
    try:
        await up.send(message)
    finally:
        await up.close()
    [report] = authority.reports(1)
    assert (report.get("OBX[2]-5"), report.get("OBX[4]-5"), report.get("PID-3[1].1")) == (
        "1",
        "resolved",
        "E77",
    )


async def test_a_message_with_nothing_notifiable_is_skipped(
    tmp_path: Path, broker: RabbitMq, authority: Authority
) -> None:
    dest = feed(tmp_path, free_port(), authority.exchange)  # never contacted
    message = Message(
        "lab", oru("S1"), HL7V2, SourceMeta("test"), id=43, vars={VAR: '{"results": [], "patient": {}}'}
    )
    assert await dest.send(message) is None
    await dest.close()


async def test_weekly_aggregate_is_published_and_kept_until_the_broker_confirms(
    tmp_path: Path, broker: RabbitMq
) -> None:
    from engine.reporting.scheduler import ReportingJobs
    from engine.reporting.settings import ReportingSettings
    from tests.support.engine_process import free_port

    exchange = f"aggregates-{secrets.token_hex(3)}"
    with broker.connection() as conn:  # the European reporting interface's queue
        ch = conn.channel()
        ch.exchange_declare(exchange, "topic", durable=True)
        ch.queue_declare(f"{exchange}.inbox", durable=True)
        ch.queue_bind(f"{exchange}.inbox", exchange, "domi.aggregate.#")

    def jobs(port: int) -> ReportingJobs:
        settings = ReportingSettings.model_validate(
            {
                "catalogue": str(SHIPPED),
                "aggregates": {
                    "directory": "agg",
                    "publish": {"port": port, "exchange": exchange, "connect_timeout": 2},
                },
            }
        )
        return ReportingJobs(tmp_path, tmp_path / "cases.db", settings)

    down = jobs(free_port())  # the broker is unreachable when the week is closed
    written = await down.aggregate("2025-W11")
    assert written is not None and written.exists()
    assert (tmp_path / "agg" / ".domi-aggregate-2025-W11.csv.unsent").exists()
    up = jobs(broker.port)  # later (or after a restart): the next check sends what is pending
    assert await up.publish_pending() == 1
    assert not (tmp_path / "agg" / ".domi-aggregate-2025-W11.csv.unsent").exists()
    assert await up.publish_pending() == 0  # sent once
    assert up.link is not None
    await up.link.drop()
    with broker.connection() as conn:
        method, properties, body = conn.channel().basic_get(f"{exchange}.inbox", auto_ack=True)
    assert method is not None and properties.message_id == "domi-aggregate-2025-W11"
    assert body == written.read_bytes()
    assert (
        body.splitlines()[0]
        == b"ReportingCountry,Subject,DateUsedForStatisticsISOWeek,AgeGroup,Gender,Region,NumberOfCases"
    )
