"""Processing a `received` message again (a bus redelivery) never creates its deliveries twice.

The work bus delivers at least once: a worker killed between its processing commit and its
broker ack, or a broker restart, hands the same message id to a worker again. The channel's
`finish` on a message that is no longer `received` must leave the store as it is and not fail
(it used to raise on the empty delivery id list the store returns then).
"""

from __future__ import annotations

import time
from pathlib import Path

import psycopg

from tests.support.engine_process import free_port, write_project
from tests.support.engine_thread import EngineThread
from tests.support.mllp_peers import MllpClient, MllpReceiver
from tests.support.postgres import fresh_database, shared_cluster
from tests.unit.hl7_samples import ORU_R01_25

ENGINE = 'store: {{type: postgresql, dsn: "{dsn}", lease_seconds: 5}}\nlogging: {{level: warning}}\n'
CHANNEL = """
respond_after: received
source: {{type: mllp, port: {port}}}
steps:
  - {{type: validate_hl7, required_fields: [PID-3]}}
destinations:
  - {{name: downstream, type: mllp, host: 127.0.0.1, port: {downstream}, queue: {{order_by: PID-3.1}}}}
"""


def test_a_redelivered_message_is_processed_once(tmp_path: Path) -> None:
    dsn = fresh_database(shared_cluster())
    receiver = MllpReceiver()
    port = free_port()
    engine_yaml = ENGINE.format(dsn=dsn)
    channel_yaml = CHANNEL.format(port=port, downstream=receiver.port)
    config = write_project(tmp_path, {"lab": channel_yaml}, engine_yaml)
    engine = EngineThread(config).start()
    try:
        client = MllpClient(port)
        assert b"MSA|AA|" in client.send(ORU_R01_25)
        client.close()
        message_id = wait_for_status(dsn, "sent")
        channel = engine.engine.channels[0]
        row = engine.call(engine.engine.store.message(message_id))
        assert row is not None
        engine.call(channel.finish(channel.from_row(row)))  # the redelivery: must not raise
    finally:
        engine.stop()
        receiver.close()
    with psycopg.connect(dsn) as conn:
        deliveries = conn.execute("SELECT count(*) FROM deliveries").fetchone()
        status = conn.execute("SELECT status FROM messages WHERE id = %s", (message_id,)).fetchone()
    assert deliveries == (1,)
    assert status == ("sent",)
    assert len(receiver.messages()) == 1


def wait_for_status(dsn: str, status: str) -> int:
    deadline = time.monotonic() + 30
    with psycopg.connect(dsn, autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute("SELECT id FROM messages WHERE status = %s", (status,)).fetchone()
            if row is not None:
                return int(row[0])
            time.sleep(0.05)
    raise AssertionError(f"no message reached status {status}")
