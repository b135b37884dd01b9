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
import time
from pathlib import Path
from typing import Any

from tests.support.engine_process import ROOT, EngineProcess, free_port, write_project
from tests.support.mllp_peers import MllpReceiver
from tests.support.patient_senders import ORDERED_CHANNEL, Sender, assert_per_patient_order, control_ids

SENDERS = 8
PER_SENDER = 400


def run_crash_scenario(tmp_path: Path, mode: str) -> None:
    receiver = MllpReceiver()
    port = free_port()
    channel = ORDERED_CHANNEL.format(mode=mode, port=port, downstream=receiver.port)
    config = write_project(tmp_path, {"lab": channel})
    engine = EngineProcess(config, [port]).start()
    acked: list[str] = []
    senders = [Sender(i, port, acked, PER_SENDER) for i in range(SENDERS)]
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
