"""kill -9 the engine under load: nothing acknowledged is lost, nothing is stored twice.

Eight senders (real sockets) each send their messages one by one, resending a message whose
ACK never came, as an LIS does. After a third of the messages are acknowledged the engine is
killed with SIGKILL and started again. At the end every message must have reached the real
downstream MLLP receiver, and the store must hold each exactly once.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from tests.support.engine_process import ROOT, EngineProcess, free_port, write_project
from tests.support.mllp_peers import MllpClient, MllpReceiver
from tests.unit.hl7_samples import ORU_R01_25

SENDERS = 8
PER_SENDER = 400
CHANNEL = """
respond_after: {mode}
source: {{type: mllp, port: {port}}}
steps:
  - {{type: validate_hl7, required_fields: [PID-3]}}
destinations:
  - name: downstream
    type: mllp
    host: 127.0.0.1
    port: {downstream}
    queue: {{order_by: "PID-3[2].1", concurrency: 8, initial_backoff: 0.05, max_backoff: 0.5}}
"""


def message(sender: int, number: int) -> bytes:
    control = f"S{sender}N{number}"
    return ORU_R01_25.replace(b"|LAB20250314000123|", f"|{control}|".encode()).replace(
        b"P000123456", f"PAT{sender}".encode()
    )


class Sender(threading.Thread):
    """Sends its messages in order; resends the current one until it is acknowledged."""

    def __init__(self, index: int, port: int, acked: list[str]) -> None:
        super().__init__(daemon=True)
        self.index, self.port, self.acked = index, port, acked
        self.error: BaseException | None = None

    def run(self) -> None:
        client: MllpClient | None = None
        try:
            for number in range(PER_SENDER):
                client = self._send_until_acked(client, number)
        except BaseException as err:
            self.error = err
        finally:
            if client is not None:
                client.close()

    def _send_until_acked(self, client: MllpClient | None, number: int) -> MllpClient:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                client = client or MllpClient(self.port, timeout=10)
                ack = client.send(message(self.index, number))
                if b"MSA|AA|" in ack:
                    self.acked.append(f"S{self.index}N{number}")
                    return client
            except OSError:
                pass
            if client is not None:
                client.close()
                client = None
            time.sleep(0.05)
        raise TimeoutError(f"S{self.index}N{number} was never acknowledged")


def control_ids(payloads: list[bytes]) -> list[str]:
    return [p.split(b"\r", 1)[0].split(b"|")[9].decode() for p in payloads]


def run_crash_scenario(tmp_path: Path, mode: str) -> None:
    receiver = MllpReceiver()
    port = free_port()
    config = write_project(tmp_path, {"lab": CHANNEL.format(mode=mode, port=port, downstream=receiver.port)})
    engine = EngineProcess(config, [port]).start()
    acked: list[str] = []
    senders = [Sender(i, port, acked) for i in range(SENDERS)]
    for s in senders:
        s.start()
    while len(acked) < SENDERS * PER_SENDER // 3:
        time.sleep(0.01)
    engine.kill()  # SIGKILL: no shutdown code runs
    acked_before_kill = set(acked)
    engine = EngineProcess(config, [port]).start()
    for s in senders:
        s.join(180)
        assert s.error is None, s.error
    expected = {f"S{i}N{n}" for i in range(SENDERS) for n in range(PER_SENDER)}
    try:
        wait_until_delivered(receiver, expected)
    finally:
        assert engine.stop() == 0, engine.logs()
        receiver.close()
    assert acked_before_kill <= set(control_ids(receiver.messages()))
    stats = read_stats(config)["channels"]["lab"]
    assert stats["messages"] == {"sent": len(expected)}, stats
    assert stats["destinations"]["downstream"]["deliveries"] == {"sent": len(expected)}
    assert_per_patient_order(receiver.messages())


def wait_until_delivered(receiver: MllpReceiver, expected: set[str]) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if set(control_ids(receiver.messages())) >= expected:
            return
        time.sleep(0.1)
    missing = expected - set(control_ids(receiver.messages()))
    raise AssertionError(f"{len(missing)} acknowledged messages never reached the receiver")


def assert_per_patient_order(payloads: list[bytes]) -> None:
    """Per sender (= patient, PID-3[2] local id: the ordering key), first deliveries come in sending
    order; different patients run in parallel (redeliveries may repeat)."""
    first_seen: dict[str, list[int]] = {}
    for control in dict.fromkeys(control_ids(payloads)):
        sender, number = control[1:].split("N")
        first_seen.setdefault(sender, []).append(int(number))
    for numbers in first_seen.values():
        assert numbers == sorted(numbers)


def read_stats(config: Path) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, str(ROOT / "run_engine.py"), "stats", "--json", "--config", str(config)],
        capture_output=True,
        check=True,
        cwd=ROOT,
    ).stdout
    result: dict[str, Any] = json.loads(out)
    return result


def test_kill_9_during_load_loses_nothing_acknowledged_processed_mode(tmp_path: Path) -> None:
    run_crash_scenario(tmp_path, "processed")


def test_kill_9_during_load_loses_nothing_acknowledged_received_mode(tmp_path: Path) -> None:
    run_crash_scenario(tmp_path, "received")
