"""A store that cannot commit (quota reached, disk full) answers AR: the sender keeps the message."""

from __future__ import annotations

from pathlib import Path

from tests.support.engine_process import write_project
from tests.support.engine_thread import EngineThread
from tests.support.mllp_peers import MllpClient
from tests.unit.hl7_samples import ORU_R01_25

CHANNEL = """
respond_after: received
source: {type: mllp, port: 0, max_frame_bytes: 1048576}
destinations: []
"""


def test_full_store_answers_ar_and_what_was_acknowledged_stays(tmp_path: Path) -> None:
    config = write_project(tmp_path, {"lab": CHANNEL}, "store: {path: var/p.db, max_size_mb: 1}\n")
    engine = EngineThread(config).start()
    try:
        answers = []
        with MllpClient(engine.port("lab")) as client:
            for i in range(40):
                big = ORU_R01_25.replace(b"LAB20250314000123", f"BIG{i}".encode())
                answers.append(client.send(big + b"NTE|1||" + b"x" * 60_000 + b"\r"))
        accepted = [a for a in answers if b"MSA|AA|" in a]
        refused = [a for a in answers if b"MSA|AR|" in a]
        assert accepted and refused and len(accepted) + len(refused) == 40
        assert all(b"could not be stored" in a and b"207" in a for a in refused)
        counts = engine.call(engine.engine.store.stats())["channels"]["lab"]["messages"]
        # every acknowledged message is stored; those whose processing met the full store wait
        # as `received` and are retried until space is freed
        assert sum(counts.values()) == len(accepted) and set(counts) <= {"received", "sent"}
    finally:
        engine.stop()
