"""Scale-out over the work bus: three workers, RabbitMQ between intake and processing.

`passerelle run --workers 3` with `bus: amqp` on a real PostgreSQL server and a real RabbitMQ
node. The channel answers once a message is stored (`respond_after: received`); its steps run
in whichever worker consumes the message's partition. Senders (real sockets, one patient each)
send one by one and resend a message whose ACK never came, as an LIS does. Mid-run either one
worker gets SIGKILL, or the broker is stopped and started again. At the end: every message is
stored once and processed, every delivery is done once (in the store), every message reached
the real MLLP receiver (which de-duplicates on the control id: a delivery in flight on a killed
worker may arrive twice), and each patient's messages arrived in order.

BUS_SCALE_OUT_MESSAGES (default 20,000) sets the number of messages of the kill test; the
broker restart test sends a quarter of that.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import psycopg

from tests.integration.test_scale_out import (
    SENDERS,
    Supervisor,
    assert_store_once,
    wait_until_delivered,
)
from tests.support.engine_process import free_port, write_project
from tests.support.mllp_peers import MllpReceiver
from tests.support.patient_senders import ORDERED_CHANNEL, Sender, assert_per_patient_order, control_ids
from tests.support.postgres import fresh_database, shared_cluster
from tests.support.rabbitmq import RabbitMq

MESSAGES = int(os.environ.get("BUS_SCALE_OUT_MESSAGES", "20000"))
PARTITIONS = 12
ENGINE = """
store: {{type: postgresql, dsn: "{dsn}", lease_seconds: 5}}
bus: {{type: amqp, url: "{url}", partitions: {partitions}, sweep_interval: 1, sweep_after: 2}}
logging: {{level: warning}}
shutdown_timeout: 10
"""
CHANNEL = ORDERED_CHANNEL.replace("{mode}", "received")


class BusRun:
    """The broker, the store, the downstream receiver and the supervised workers of one test."""

    def __init__(self, tmp_path: Path) -> None:
        self.broker = RabbitMq(tmp_path / "rabbitmq").start()
        self.dsn = fresh_database(shared_cluster())
        self.receiver = MllpReceiver()
        self.port = free_port()
        engine = ENGINE.format(dsn=self.dsn, url=self.broker.url, partitions=PARTITIONS)
        channel = CHANNEL.format(port=self.port, downstream=self.receiver.port)
        self.config = write_project(tmp_path / "project", {"lab": channel}, engine)
        self.supervisor = Supervisor(self.config, self.port)

    def close(self) -> int:
        try:
            return self.supervisor.stop()
        finally:
            self.receiver.close()
            self.broker.close()


def run_with(tmp_path: Path, messages: int, disrupt: Callable[[BusRun], None]) -> BusRun:
    """Send `messages` (SENDERS patients), `disrupt` once a third is acknowledged, and check that
    everything was stored once, delivered once, and in order per patient."""
    per_sender = messages // SENDERS
    expected = {f"S{i}N{n}" for i in range(SENDERS) for n in range(per_sender)}
    run = BusRun(tmp_path)
    try:
        acked: list[str] = []
        senders = [Sender(i, run.port, acked, per_sender) for i in range(SENDERS)]
        for s in senders:
            s.start()
        while len(acked) < len(expected) // 3:
            time.sleep(0.01)
        disrupt(run)
        for s in senders:
            s.join(600)
            assert s.error is None, s.error
        assert set(acked) == expected
        wait_until_delivered(run.receiver, expected, run.supervisor)
        assert_store_once(run.dsn, len(expected))
        assert_processed_once(run.dsn)
    finally:
        code = run.close()
    assert code == 0, run.supervisor.logs()
    received = control_ids(run.receiver.messages())
    assert set(received) == expected
    try:
        assert_per_patient_order(run.receiver.messages())
    except AssertionError:
        print(order_report(run.dsn, received))
        print("\n".join(line for line in run.supervisor.logs().splitlines() if '"info"' not in line))
        raise
    redelivered = sum(n - 1 for n in Counter(received).values())
    print(f"\nbus: {len(expected)} messages, {redelivered} delivered twice downstream")
    print(guard_report(run.supervisor.logs()))
    return run


def guard_report(logs: str) -> str:
    """How often the send-time order guard stopped a delivery, and whether the queue held the older
    delivery in memory then (engine/dispatch.py `_first_in_line`; ids only in those lines); how
    often a consumer giving up a partition left its batch committing on its own."""
    fired = [json.loads(line) for line in logs.splitlines() if '"delivery_out_of_line"' in line]
    timeouts = sum(1 for line in logs.splitlines() if '"bus_consumer_stop_timeout"' in line)
    where = Counter(f"{e.get('older_where')}/{e.get('older_owner')}/{e.get('newer_from')}" for e in fired)
    details = "".join(f"\n  {e}" for e in fired)
    return (f"order guard fired {len(fired)} times (older where/owner/newer from: {dict(where)});"
            f" consumer stops that timed out: {timeouts}{details}")


def order_report(dsn: str, received: list[str]) -> str:
    """For the first patient out of order: each message's id, delivery id and event times (which
    layer broke the order: processing, if delivery ids are out of order, else delivery)."""
    first = list(dict.fromkeys(received))
    seen: dict[str, int] = {}
    culprit = ""
    for control in first:
        sender, number = control[1:].split("N")
        if int(number) < seen.get(sender, -1):
            culprit = sender
            break
        seen[sender] = int(number)
    arrival = [c for c in first if c.startswith(f"S{culprit}N")]
    lines = [f"patient S{culprit}, arrival order: {arrival[:40]}"]
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT m.control_id, m.id, d.id, d.claimed_by,"
            " (SELECT min(at) FROM events e WHERE e.message_id = m.id AND e.status = 'queued'"
            "  AND e.destination IS NULL) - m.received_at,"
            " (SELECT min(at) FROM events e WHERE e.message_id = m.id AND e.status = 'sent'"
            "  AND e.destination IS NOT NULL) - m.received_at, m.received_at"
            " FROM messages m LEFT JOIN deliveries d ON d.message_id = m.id"
            " WHERE m.control_id LIKE %s ORDER BY m.id",
            (f"S{culprit}N%",),
        ).fetchall()
    by_control = {row[0]: row for row in rows}
    for before, after in itertools.pairwise(arrival):
        if int(after.split("N")[1]) < int(before.split("N")[1]):
            lines += [f"inversion: {before} arrived before {after}"]
            late = int(after.split("N")[1])
            lines += [repr(by_control.get(f"S{culprit}N{n}")) for n in range(late - 3, late + 5)]
            lines += [f"overtaking: {by_control.get(before)!r}"]
            break
    return "\n".join(lines)


def assert_processed_once(dsn: str) -> None:
    """Each message left `received` exactly once (one status event), whatever the redeliveries."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT count(*), count(DISTINCT message_id) FROM events"
            " WHERE status = 'queued' AND destination IS NULL"
        ).fetchone()
    assert row is not None and row[0] == row[1]


def kill_one_worker(run: BusRun) -> None:
    os.kill(run.supervisor.workers()[0], signal.SIGKILL)


def restart_broker(run: BusRun) -> None:
    run.broker.restart()


def test_three_bus_workers_one_killed_nothing_lost_nothing_twice(tmp_path: Path) -> None:
    run_with(tmp_path, MESSAGES, kill_one_worker)


def test_broker_restart_mid_run_loses_nothing(tmp_path: Path) -> None:
    run_with(tmp_path, MESSAGES // 4, restart_broker)
