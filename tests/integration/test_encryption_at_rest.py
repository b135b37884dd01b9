"""Encryption at rest, on both store backends: a copied database (SQLite files, `pg_dump`) reveals
no patient data; keys rotate while the engine runs; tampering is detected; metadata stays
searchable. PostgreSQL runs on a real server (tests/support/postgres.py)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from engine.cli import main
from engine.config import load_engine_config
from engine.errors import StoreError
from engine.store import open_store, payload_cipher
from engine.store.base import Store
from tests.support.engine_process import write_project
from tests.support.engine_thread import EngineThread
from tests.support.mllp_peers import MllpClient
from tests.support.store_backends import StoreBackend
from tests.unit.hl7_samples import MATRICULE, ORU_R01_25

CHANNEL = """
respond_after: processed
source: {type: mllp, port: 0}
destinations:
  - {name: out, type: file, directory: out, queue: {order_by: PID-3.1}}
"""  # ordered by the national id, like the shipped lab-results channel
CONTROL_ID = b"|LAB20250314000123|"
PHI = [b"TEST^PATIENT", MATRICULE.encode(), b"19800101", b"P000123456", b"Thrombocytose"]


@pytest.fixture(params=["postgresql", "sqlite"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> StoreBackend:
    """The store of the project in tmp_path: SQLite at var/store.db, or a fresh PostgreSQL database."""
    (tmp_path / "var").mkdir()
    return StoreBackend.fresh(str(request.param), tmp_path / "var")


def engine_yaml(backend: StoreBackend, keys: dict[str, str], active: str) -> str:
    listed = ", ".join(f"{k}: {v}" for k, v in keys.items())
    where = "path: var/store.db"
    if backend.name == "postgresql":
        where = f'type: postgresql, dsn: "{backend.location}"'
    return f"store: {{{where}, encryption: {{keys: {{{listed}}}, active: {active}}}}}\nreload_interval: 0\n"


def open_configured(config: Path) -> Store:
    return open_store(load_engine_config(config).store, config.parent.parent)


async def read_raw(config: Path, message_id: int) -> bytes:
    store = open_configured(config)
    await store.open()
    try:
        stored = await store.message(message_id)
        assert stored is not None
        return stored.raw
    finally:
        await store.close()


@pytest.fixture
def config(tmp_path: Path, backend: StoreBackend) -> Path:
    assert main(["store", "new-key", str(tmp_path / "keys" / "k1.key")]) == 0
    assert main(["store", "new-key", str(tmp_path / "keys" / "k2.key")]) == 0
    keys = {"k1": "keys/k1.key", "k2": "keys/k2.key"}  # k2 ready for the rotation, k1 active
    return write_project(tmp_path, {"lab": CHANNEL}, engine_yaml(backend, keys, "k1"))


def order_digest(config: Path) -> str:
    """The order key the engine stores for the test patient (a keyed digest of the national id)."""
    cipher = payload_cipher(load_engine_config(config).store, config.parent.parent)
    assert cipher is not None
    return cipher.order_digest(MATRICULE)


def send(engine: EngineThread, message: bytes) -> None:
    with MllpClient(engine.port("lab")) as client:
        assert b"MSA|AA|" in client.send(message)


def delivered(folder: Path, count: int) -> list[bytes]:
    deadline = time.monotonic() + 20
    while len(list(folder.glob("*.hl7"))) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    return [p.read_bytes() for p in sorted(folder.glob("*.hl7"))]


def settled(engine: EngineThread) -> dict[str, int]:
    """The channel's message counts once no message waits for its delivery outcome to commit."""
    deadline = time.monotonic() + 20
    while True:
        counts: dict[str, int] = engine.call(engine.engine.store.stats())["channels"]["lab"]["messages"]
        if "queued" not in counts or time.monotonic() > deadline:
            return counts
        time.sleep(0.05)


def test_stored_payloads_reveal_no_patient_data_and_rotate_online(
    config: Path, backend: StoreBackend, tmp_path: Path
) -> None:
    engine = EngineThread(config).start()
    try:
        send(engine, ORU_R01_25)
        assert delivered(tmp_path / "out", 1) == [ORU_R01_25]  # decrypted for delivery
        assert settled(engine) == {"sent": 1}  # metadata in clear
        dump = backend.dump()
        assert not [phi for phi in PHI if phi in dump]
        assert order_digest(config).encode() in dump  # the order key is stored, as a digest
        # rotation while the engine runs: k2 becomes active for `reencrypt`, payloads move to it
        config.write_text(engine_yaml(backend, {"k1": "keys/k1.key", "k2": "keys/k2.key"}, "k2"))
        assert main(["store", "reencrypt", "--config", str(config)]) == 0
        send(engine, ORU_R01_25.replace(CONTROL_ID, b"|MSG-AFTER-ROTATION|"))
        assert len(delivered(tmp_path / "out", 2)) == 2  # the engine served on, no downtime
    finally:
        engine.stop()
    assert main(["store", "reencrypt", "--config", str(config)]) == 0  # what it wrote under k1 meanwhile
    config.write_text(engine_yaml(backend, {"k2": "keys/k2.key"}, "k2"))  # k1 can go
    assert asyncio.run(read_raw(config, 1)) == ORU_R01_25
    assert asyncio.run(read_raw(config, 2)) == ORU_R01_25.replace(CONTROL_ID, b"|MSG-AFTER-ROTATION|")


def test_a_tampered_payload_is_refused(config: Path, backend: StoreBackend) -> None:
    engine = EngineThread(config).start()
    try:
        send(engine, ORU_R01_25)
    finally:
        engine.stop()
    backend.tamper(1)
    with pytest.raises(StoreError, match="failed its integrity check"):
        asyncio.run(read_raw(config, 1))


def test_a_missing_key_is_named(config: Path, backend: StoreBackend) -> None:
    config.write_text(engine_yaml(backend, {"k9": "keys/none.key"}, "k9"))
    assert main(["check", "--config", str(config)]) == 0  # check validates shapes; opening needs the key
    with pytest.raises(Exception, match="cannot read the store encryption key"):
        open_configured(config)
