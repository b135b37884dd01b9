"""Scale-out: three engine workers on one PostgreSQL store; one is killed with SIGKILL mid-run.

`passerelle run --workers 3` (one supervisor, three worker processes sharing the MLLP port via
SO_REUSEPORT) on a real PostgreSQL server. Senders (real sockets, one patient each) send their
messages one by one, resending a message whose ACK never came, as an LIS does. After a third
of the messages are acknowledged one worker gets SIGKILL; the supervisor starts a new one and
the others take the dead one's work over when its lease expires. At the end: every message is
stored once, every delivery is done once (in the store), every message reached the real MLLP
receiver (which de-duplicates on the control id: a delivery in flight on the killed worker may
arrive twice), and each patient's messages arrived in order.

SCALE_OUT_MESSAGES (default 20,000) sets the number of messages.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import psycopg

from engine.dashboard.auth import User, hash_password, write_users
from tests.support.engine_process import ROOT, free_port, write_project
from tests.support.mllp_peers import MllpClient, MllpReceiver
from tests.support.patient_senders import ORDERED_CHANNEL, Sender, assert_per_patient_order, control_ids
from tests.support.postgres import fresh_database, shared_cluster
from tests.unit.hl7_samples import ORU_R01_25

WORKERS = 3
SENDERS = 16
MESSAGES = int(os.environ.get("SCALE_OUT_MESSAGES", "20000"))
LEASE_SECONDS = 5
ENGINE = """
store: {{type: postgresql, dsn: "{dsn}", lease_seconds: {lease}}}
logging: {{level: warning}}
shutdown_timeout: 10
"""
CHANNEL = ORDERED_CHANNEL.replace("{mode}", "processed")


class Supervisor:
    """`passerelle run --workers N` as an operator starts it."""

    def __init__(self, config: Path, port: int) -> None:
        self.log = config.parent.parent / "engine.log"
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, str(ROOT / "run_engine.py"), "run", "--workers", str(WORKERS),
                 "--config", str(config)],
                cwd=config.parent.parent, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=log, stderr=log,
            )
        deadline = time.monotonic() + 60
        while listeners(port) < WORKERS:  # every worker listens (SO_REUSEPORT) before the load starts
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.proc.kill()
                raise RuntimeError(f"the workers did not start:\n{self.logs()}")
            time.sleep(0.1)

    def workers(self) -> list[int]:
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        return [int(pid) for pid in children.read_text().split()] if children.exists() else []

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(60)

    def logs(self) -> str:
        return self.log.read_text(errors="replace")


def listeners(port: int) -> int:
    """Sockets listening on 127.0.0.1:port (one per worker)."""
    local = f"0100007F:{port:04X}"
    lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    return sum(1 for line in lines if line.split()[1] == local and line.split()[3] == "0A")


def test_three_workers_one_killed_nothing_lost_nothing_twice(tmp_path: Path) -> None:
    cluster = shared_cluster()
    dsn = fresh_database(cluster)
    receiver = MllpReceiver()
    port = free_port()
    engine = ENGINE.format(dsn=dsn, lease=LEASE_SECONDS)
    config = write_project(tmp_path, {"lab": CHANNEL.format(port=port, downstream=receiver.port)}, engine)
    per_sender = MESSAGES // SENDERS
    expected = {f"S{i}N{n}" for i in range(SENDERS) for n in range(per_sender)}
    supervisor = Supervisor(config, port)
    try:
        killed = run_load(supervisor, port, per_sender)
        wait_until_delivered(receiver, expected, supervisor)
        assert_store_once(dsn, len(expected))
    finally:
        code = supervisor.stop()
        receiver.close()
    assert code == 0, supervisor.logs()
    received = control_ids(receiver.messages())
    assert set(received) == expected
    assert_per_patient_order(receiver.messages())
    redelivered = sum(n - 1 for n in Counter(received).values())
    print(f"\nscale-out: {len(expected)} messages, worker {killed} killed, {redelivered} redelivered")


def run_load(supervisor: Supervisor, port: int, per_sender: int) -> int:
    """Send everything; kill one worker once a third is acknowledged. Returns the killed pid."""
    acked: list[str] = []
    senders = [Sender(i, port, acked, per_sender) for i in range(SENDERS)]
    for s in senders:
        s.start()
    while len(acked) < SENDERS * per_sender // 3:
        time.sleep(0.01)
    victim = supervisor.workers()[0]
    os.kill(victim, signal.SIGKILL)
    for s in senders:
        s.join(240)
        assert s.error is None, s.error
    assert len(set(acked)) == SENDERS * per_sender
    return victim


def wait_until_delivered(receiver: MllpReceiver, expected: set[str], supervisor: Supervisor) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if set(control_ids(receiver.messages())) >= expected:
            return
        time.sleep(0.2)
    missing = expected - set(control_ids(receiver.messages()))
    logs = supervisor.logs()
    raise AssertionError(f"{len(missing)} acknowledged messages never reached the receiver\n{logs}")


def assert_store_once(dsn: str, count: int) -> None:
    """Each message stored once and sent; each delivery sent once (one `sent` outcome event)."""
    deadline = time.monotonic() + 30
    while True:  # the last outcomes may still be committing
        with psycopg.connect(dsn) as conn:
            messages = conn.execute(
                "SELECT count(*), count(DISTINCT control_id), count(*) FILTER (WHERE status = 'sent')"
                " FROM messages WHERE channel = 'lab'"
            ).fetchone()
            deliveries = conn.execute(
                "SELECT count(*), count(DISTINCT message_id), count(*) FILTER (WHERE status = 'sent')"
                " FROM deliveries"
            ).fetchone()
            sent_events = conn.execute(
                "SELECT count(*), count(DISTINCT message_id) FROM events"
                " WHERE status = 'sent' AND destination IS NOT NULL"
            ).fetchone()
        if messages == (count, count, count) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert messages == (count, count, count)
    assert deliveries == (count, count, count)
    assert sent_events == (count, count)



DASHBOARD_CHANNEL = """
respond_after: processed
source: {{type: mllp, port: {port}}}
destinations:
  - {{name: out, type: file, directory: out}}
"""
PASSWORD = "correct horse battery staple"


def test_workers_serve_one_dashboard_reading_the_shared_store(tmp_path: Path) -> None:
    """`--workers` with the dashboard: the first worker serves it, and it finds a message whichever
    worker stored it (searches, details and queues read the PostgreSQL store)."""
    dsn = fresh_database(shared_cluster())
    port, dashboard = free_port(), free_port()
    engine = ENGINE.format(dsn=dsn, lease=LEASE_SECONDS) + f"dashboard: {{enabled: true, port: {dashboard}}}"
    config = write_project(tmp_path, {"lab": DASHBOARD_CHANNEL.format(port=port)}, engine)
    operator = User("otto", "operator", hash_password(PASSWORD, n=2**14))
    write_users(config.parent / "users.yaml", {"otto": operator})
    supervisor = Supervisor(config, port)
    try:
        for number in range(6):  # over several connections: the kernel spreads them over the workers
            with MllpClient(port) as client:
                message = ORU_R01_25.replace(b"LAB20250314000123", b"DASH%d" % number)
                assert b"MSA|AA" in client.send(message)
        with httpx.Client(base_url=f"http://127.0.0.1:{dashboard}", timeout=20) as web:
            assert web.post("/api/login", json={"user": "otto", "password": PASSWORD}).status_code == 200
            found = web.get("/api/messages", params={"channel": "lab"}).json()["messages"]
            assert sorted(m["control_id"] for m in found) == [f"DASH{n}" for n in range(6)]
            detail = web.get(f"/api/messages/{found[0]['id']}").json()
            assert detail["channel"] == "lab" and detail["raw"]["kind"] == "hl7"
            queues = web.get("/api/channels").json()["channels"]
            assert [c["name"] for c in queues] == ["lab"]
    finally:
        code = supervisor.stop()
    assert code == 0, supervisor.logs()
