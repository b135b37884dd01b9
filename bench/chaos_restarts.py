"""Chaos runs with real servers restarted mid-run: RabbitMQ (AMQP in and out) and sshd (SFTP drop).

Used by bench/chaos.py (`--scenario broker_restart` / `sshd_restart`). Each keeps a partner
producing during the whole run, stops the server for a third of it, starts it again, then
waits for the engine to settle and reconciles:
- broker_restart: a partner publishes ORU^R01 with publisher confirms (acknowledged = confirmed
  by the broker, each message id published until confirmed) into the engine's quorum intake
  queue; the engine delivers to a topic exchange bound to a quorum queue that a consumer reads.
  The RabbitMQ node is stopped cleanly (`rabbitmqctl stop`) and started again, keeping its data.
- sshd_restart: a laboratory drops one ORU^R01 per file (written under a temporary name, then
  renamed: acknowledged = renames the SFTP server confirmed, each file dropped until confirmed)
  into the folder the engine polls; the engine moves taken files to done/ and archives each
  message to a folder. sshd (listener and sessions) is stopped and started on the same port.
Counts: acknowledged, stored (unique control ids in the store), delivered (unique control ids
at the destination), downstream duplicates, lost = acknowledged but never delivered.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import paramiko
import pika

from bench.chaos_report import Report
from tests.support.engine_process import EngineProcess, write_project
from tests.support.rabbitmq import RabbitMq
from tests.support.sshd import Sshd
from tests.unit.hl7_samples import ORU_R01_25

ENGINE = "store: {{path: {store}}}\nlogging: {{level: warning}}\n"
AMQP_CHANNEL = """
respond_after: processed
source: {source}
steps:
  - {{type: validate_hl7, required_fields: [PID-3]}}
destinations:
  - name: bus
    type: amqp
    port: {port}
    exchange: chaos-out
    exchange_type: topic
    routing_key: "lab.{{message_code}}"
    queue: {{initial_backoff: 0.2, max_backoff: 2, max_attempts: 1000, concurrency: 16}}
"""
SFTP_CHANNEL = """
respond_after: processed
source: {source}
steps:
  - {{type: validate_hl7, required_fields: [PID-3]}}
destinations:
  - {{name: archive, type: file, directory: {out}, filename: "{{control_id}}-{{id}}.hl7"}}
"""


def oru(control_id: str) -> bytes:
    return ORU_R01_25.replace(b"|LAB20250314000123|", f"|{control_id}|".encode())


class Producer:
    """A partner thread: `produce(n)` hands over message n and returns once it is acknowledged,
    raising on any connection trouble; the same n is then tried again after a pause."""

    def __init__(self, produce: Callable[[int], None], reset: Callable[[], None]) -> None:
        self.produce = produce
        self.reset = reset
        self.acked: set[str] = set()
        self.failures = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        number = 0
        while not self.stop.is_set():
            try:
                self.produce(number)
            except Exception:  # the server is down or went away: reconnect and try the same one
                self.failures += 1
                self.reset()
                time.sleep(0.2)
                continue
            self.acked.add(f"K{number:06d}")
            number += 1

    def run_for(self, seconds: float, fault: Callable[[], None]) -> None:
        self.thread.start()
        time.sleep(seconds / 3)
        fault()
        time.sleep(seconds / 3)
        self.stop.set()
        self.thread.join(120)


def stored_ids(store: Path) -> set[str]:
    conn = sqlite3.connect(store)
    try:
        rows = conn.execute("SELECT DISTINCT control_id FROM messages WHERE status <> 'rejected'")
        return {r[0] for r in rows}
    finally:
        conn.close()


def wait_for(done: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not done():
        time.sleep(0.5)


def report(name: str, started: float, acked: set[str], stored: set[str], delivered: list[str],
           failures: int) -> Report:
    unique = set(delivered)
    return Report(name, round(time.monotonic() - started, 1), len(acked), len(stored),
                  len(unique), len(delivered) - len(unique), len(acked - unique), failures)


# -- RabbitMQ ----------------------------------------------------------------------------------


class AmqpPartner:
    """Publishes with confirms into `chaos-in`; collects what the engine publishes to `chaos-out`."""

    def __init__(self, broker: RabbitMq) -> None:
        self.broker = broker
        self.publisher: pika.adapters.blocking_connection.BlockingChannel | None = None
        self.collected: list[str] = []

    def declare_output(self) -> None:
        with self.broker.connection() as conn:
            channel = conn.channel()
            channel.exchange_declare("chaos-out", "topic", durable=True)
            channel.queue_declare("chaos-collected", durable=True, arguments={"x-queue-type": "quorum"})
            channel.queue_bind("chaos-collected", "chaos-out", "lab.#")

    def publish(self, number: int) -> None:
        if self.publisher is None:
            self.publisher = self.broker.connection().channel()
            self.publisher.confirm_delivery()
        control = f"K{number:06d}"
        properties = pika.BasicProperties(delivery_mode=2, message_id=control)
        # returns only once the broker confirmed; raises if nacked, unroutable or disconnected
        self.publisher.basic_publish("", "chaos-in", oru(control), properties, mandatory=True)

    def reset(self) -> None:
        channel, self.publisher = self.publisher, None
        if channel is not None:
            with contextlib.suppress(Exception):  # already closed by the broker going away
                channel.connection.close()

    def collect(self) -> None:
        """Take (and ack) everything waiting in the output queue; a down broker is tried later."""
        try:
            with self.broker.connection() as conn:
                channel = conn.channel()
                while (item := channel.basic_get("chaos-collected", auto_ack=True))[0] is not None:
                    self.collected.append(str(item[1].message_id))
        except Exception:
            pass


def broker_restart(seconds: float) -> Report:
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        broker = RabbitMq(root / "rabbitmq").start()
        try:
            return _broker_restart(root, broker, seconds)
        finally:
            broker.close()


def _broker_restart(root: Path, broker: RabbitMq, seconds: float) -> Report:
    partner = AmqpPartner(broker)
    partner.declare_output()
    source = {"type": "amqp", "port": broker.port, "queue": "chaos-in", "max_backoff": 2.0,
              "dead_letter_queue": "chaos-in.dead"}
    store = root / "var" / "chaos.db"
    config = write_project(root / "project", {"partner": AMQP_CHANNEL.format(
        source=json.dumps(source), port=broker.port)}, ENGINE.format(store=store))
    engine = EngineProcess(config, []).start()
    wait_for(lambda: queue_exists(broker, "chaos-in"), 60)  # the engine's source declared it
    producer = Producer(partner.publish, partner.reset)
    started = time.monotonic()

    def restart() -> None:
        broker.stop()
        time.sleep(seconds / 3)
        broker.start()

    producer.run_for(seconds, restart)

    def settled() -> bool:
        partner.collect()
        return producer.acked <= set(partner.collected)

    wait_for(settled, 300)
    engine.stop()
    return report("broker_restart", started, producer.acked, stored_ids(store), partner.collected,
                  producer.failures)


def queue_exists(broker: RabbitMq, queue: str) -> bool:
    try:
        broker.queue_depth(queue)
        return True
    except Exception:
        return False


# -- sshd --------------------------------------------------------------------------------------


class Laboratory:
    """Drops one message per file into `in/`: written as `.name.tmp`, then renamed to `name.hl7`."""

    def __init__(self, sshd: Sshd) -> None:
        self.sshd = sshd
        self.client: paramiko.SFTPClient | None = None

    def drop(self, number: int) -> None:
        if self.client is None:
            self.client = self.sshd.client()
            self.client.get_channel().settimeout(10)  # type: ignore[union-attr]
        control = f"K{number:06d}"
        folder = str(self.sshd.root / "in")
        temp = f"{folder}/.{control}.tmp"
        with self.client.open(temp, "wb") as handle:
            handle.write(oru(control))
        self.client.posix_rename(temp, f"{folder}/{control}.hl7")  # confirmed: the file is handed over

    def reset(self) -> None:
        client, self.client = self.client, None
        if client is not None:
            try:
                client.close()
                client.get_channel().get_transport().close()  # type: ignore[union-attr]
            except Exception:
                pass


def sshd_restart(seconds: float) -> Report:
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        sshd = Sshd(root / "sshd").start()
        try:
            return _sshd_restart(root, sshd, seconds)
        finally:
            sshd.stop()


def _sshd_restart(root: Path, sshd: Sshd, seconds: float) -> Report:
    (sshd.root / "in").mkdir()
    source = {"type": "sftp", **sshd.source_config(poll_interval=0.5, patterns=["*.hl7"], max_backoff=2.0)}
    store, out = root / "var" / "chaos.db", root / "out"
    config = write_project(root / "project", {"lab": SFTP_CHANNEL.format(
        source=json.dumps(source), out=out)}, ENGINE.format(store=store))
    engine = EngineProcess(config, []).start()
    lab = Laboratory(sshd)
    producer = Producer(lab.drop, lab.reset)
    started = time.monotonic()

    def restart() -> None:
        sshd.stop()
        time.sleep(seconds / 3)
        sshd.restart()

    producer.run_for(seconds, restart)

    def delivered() -> list[str]:
        return [p.name.split("-", 1)[0] for p in out.glob("K*.hl7")] if out.exists() else []

    wait_for(lambda: producer.acked <= set(delivered()), 300)
    engine.stop()
    return report("sshd_restart", started, producer.acked, stored_ids(store), delivered(), producer.failures)


RESTARTS: dict[str, Callable[[float], Report]] = {
    "broker_restart": broker_restart,
    "sshd_restart": sshd_restart,
}
