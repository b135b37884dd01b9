"""The engine as an operator runs it: logs without patient data, bounded connections, idle
timeouts, and a clean exit on SIGTERM."""

from __future__ import annotations

import json
import time
from pathlib import Path

from tests.support.engine_process import EngineProcess, free_port, write_project
from tests.support.mllp_peers import MllpClient, frame
from tests.unit.hl7_samples import ADT_A01_23, MATRICULE, ORU_R01_25

CHANNEL = """
respond_after: processed
source: {{type: mllp, port: {port}, idle_timeout: 1, max_connections: 2, max_frame_bytes: 4096}}
steps:
  - {{type: validate_hl7, required_fields: [PID-3, "OBX[*]-3"]}}
destinations:
  - {{name: out, type: mllp, host: 127.0.0.1, port: {dead_port}, connect_timeout: 1,
      queue: {{initial_backoff: 0.1, max_attempts: 2}}}}
"""
PATIENT_DATA = [
    "TEST^PATIENT",
    "PATIENT",
    MATRICULE,
    "19800101",
    "P000123456",
    "Müller",
    "Thrombocytose",
    "10*9/L",
]


def test_logs_are_json_and_never_contain_patient_data(tmp_path: Path) -> None:
    port = free_port()
    config = write_project(tmp_path, {"lab": CHANNEL.format(port=port, dead_port=free_port())})
    engine = EngineProcess(config, [port]).start()
    try:
        with MllpClient(port) as client:
            client.send(ORU_R01_25)  # accepted, then its delivery fails twice: dead letter
            client.send(ORU_R01_25.replace(b"|NM|6690-2^", b"|NM|^"))  # AE
            client.send(ADT_A01_23.replace(b"|2.3|", b"|9.9|"))  # AR, latin-1 name inside
        with MllpClient(port) as client:
            client.send_raw(frame(b"PID|1||" + MATRICULE.encode() + b"^^^RNPP||TEST^PATIENT"))  # no MSH
        with MllpClient(port) as client:
            client.send_raw(frame(ORU_R01_25 * 4))  # oversized
            client.closed_by_peer()
        time.sleep(1.5)  # let the delivery retries run and log
    finally:
        assert engine.stop() == 0
    logs = engine.logs()
    events = [json.loads(line)["event"] for line in logs.splitlines() if line.startswith("{")]
    assert {"engine_started", "mllp_unreadable", "mllp_frame_refused", "delivery_failed"} <= set(events)
    for fragment in PATIENT_DATA:
        assert fragment not in logs, f"patient data {fragment!r} leaked into the logs"


def test_idle_connections_are_closed_and_connections_are_bounded(tmp_path: Path) -> None:
    port = free_port()
    config = write_project(tmp_path, {"lab": CHANNEL.format(port=port, dead_port=free_port())})
    engine = EngineProcess(config, [port]).start()
    try:
        first, second = MllpClient(port), MllpClient(port)
        assert b"MSA|AA|" in first.send(ORU_R01_25)
        assert b"MSA|AA|" in second.send(ORU_R01_25.replace(b"LAB20250314000123", b"OTHER1"))
        with MllpClient(port) as third:
            assert third.closed_by_peer()  # max_connections: 2
        assert first.closed_by_peer() and second.closed_by_peer()  # idle_timeout: 1 s
        first.close()
        second.close()
        with MllpClient(port) as again:
            assert b"MSA|AA|" in again.send(ORU_R01_25.replace(b"LAB20250314000123", b"OTHER2"))
    finally:
        assert engine.stop() == 0
