"""Editing a channel while it runs under load: behaviour changes, nothing is lost or refused,
an invalid edit is refused and the running version stays, and a version can be rolled back."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from engine.cli import main
from engine.formats.hl7v2 import parse
from tests.support.engine_process import write_project
from tests.support.engine_thread import EngineThread
from tests.support.mllp_peers import MllpClient
from tests.unit.hl7_samples import ORU_R01_25

V1 = """
respond_after: processed
source: {type: mllp, port: 0}
destinations:
  - {name: out, type: file, directory: out-a, fsync: false}
"""
V2 = V1.replace("destinations:", "steps:\n  - {type: set_field, path: MSH-5, value: V2}\ndestinations:")
V3 = V2.replace("out-a", "out-b")
BROKEN = V3.replace("set_field", "set_feild")


class Load(threading.Thread):
    """One LIS sending continuously; records every ACK code."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port, self.stop = port, threading.Event()
        self.codes: list[str] = []

    def run(self) -> None:
        with MllpClient(self.port) as client:
            while not self.stop.is_set():
                control = f"HR{len(self.codes)}".encode()
                ack = client.send(ORU_R01_25.replace(b"LAB20250314000123", control))
                self.codes.append(parse(ack).get("MSA-1"))


def delivered(root: Path) -> list[bytes]:
    return [
        p.read_bytes()
        for folder in ("out-a", "out-b")
        if (root / folder).exists()
        for p in sorted((root / folder).glob("*.hl7"))
    ]


def wait_for(condition: object, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def receivers(root: Path) -> set[str]:
    return {parse(p).get("MSH-5") for p in delivered(root)}


def test_edits_apply_under_load_without_loss_and_can_be_rolled_back(tmp_path: Path) -> None:
    config = write_project(tmp_path, {"lab": V1}, "store: {path: var/p.db}\nreload_interval: 0.1\n")
    channel_file = tmp_path / "channels" / "lab.yaml"
    engine = EngineThread(config).start()
    load = Load(engine.port("lab"))
    load.start()
    try:
        wait_for(lambda: len(load.codes) > 50, "traffic")
        channel_file.write_text(V2)  # new step: same listener, same queue
        wait_for(lambda: "V2" in receivers(tmp_path), "the new step to apply")
        channel_file.write_text(V3)  # new destination folder: the queue is replaced
        wait_for((tmp_path / "out-b").exists, "the new destination")
        channel_file.write_text(BROKEN)  # refused: the running version stays
        sent_before = len(load.codes)
        wait_for(lambda: len(load.codes) > sent_before + 50, "more traffic")
    finally:
        load.stop.set()
        load.join(30)
    wait_for(lambda: len(delivered(tmp_path)) >= len(load.codes), "every message to be delivered")
    assert set(load.codes) == {"AA"}, "a message was refused during a reload"
    assert len(delivered(tmp_path)) == len(load.codes)
    assert parse(sorted((tmp_path / "out-b").glob("*.hl7"))[-1].read_bytes()).get("MSH-5") == "V2"
    versions = engine.call(engine.engine.store.channel_versions("lab"))
    assert len(versions) == 3 and all(v["messages"] > 0 for v in versions)
    engine.stop()
    v1 = versions[-1]["version"]
    assert main(["channels", "rollback", "lab", v1[:8], "--config", str(config)]) == 0
    assert channel_file.read_text() == V1


def test_an_invalid_edit_keeps_the_running_version(tmp_path: Path) -> None:
    config = write_project(tmp_path, {"lab": V2}, "store: {path: var/p.db}\nreload_interval: 0.1\n")
    engine = EngineThread(config).start()
    try:
        (tmp_path / "channels" / "lab.yaml").write_text(BROKEN)
        assert engine.call(engine.engine.reload()) is False
        with MllpClient(engine.port("lab")) as client:
            assert b"MSA|AA|" in client.send(ORU_R01_25)
        wait_for(lambda: receivers(tmp_path) == {"V2"}, "delivery by the running version")
    finally:
        engine.stop()
