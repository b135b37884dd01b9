"""Encryption at rest: a copied database reveals no patient data; keys rotate online;
tampering is detected; metadata stays searchable."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import pytest

from engine.cli import main
from engine.config import load_engine_config
from engine.errors import StoreError
from engine.store import open_store
from engine.store.sqlite import SqliteStore
from tests.support.engine_process import write_project
from tests.support.engine_thread import EngineThread
from tests.support.mllp_peers import MllpClient
from tests.unit.hl7_samples import MATRICULE, ORU_R01_25

CHANNEL = """
respond_after: processed
source: {type: mllp, port: 0}
destinations:
  - {name: out, type: file, directory: out}
"""
PHI = [b"TEST^PATIENT", MATRICULE.encode(), b"19800101", b"P000123456", b"Thrombocytose"]


def engine_yaml(keys: dict[str, str], active: str) -> str:
    listed = ", ".join(f"{k}: {v}" for k, v in keys.items())
    store = f"{{path: var/p.db, encryption: {{keys: {{{listed}}}, active: {active}}}}}"
    return f"store: {store}\nreload_interval: 0\n"


def database_bytes(root: Path) -> bytes:
    return b"".join(p.read_bytes() for p in (root / "var").glob("p.db*"))


def open_configured(config: Path) -> SqliteStore:
    store = open_store(load_engine_config(config).store, config.parent.parent)
    assert isinstance(store, SqliteStore)
    return store


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
def config(tmp_path: Path) -> Path:
    assert main(["store", "new-key", str(tmp_path / "keys" / "k1.key")]) == 0
    return write_project(tmp_path, {"lab": CHANNEL}, engine_yaml({"k1": "keys/k1.key"}, "k1"))


def test_stored_payloads_reveal_no_patient_data_and_rotate_online(config: Path, tmp_path: Path) -> None:
    engine = EngineThread(config).start()
    try:
        with MllpClient(engine.port("lab")) as client:
            assert b"MSA|AA|" in client.send(ORU_R01_25)
        deadline = time.monotonic() + 20
        while not list((tmp_path / "out").glob("*.hl7")) and time.monotonic() < deadline:
            time.sleep(0.05)
        stats = engine.call(engine.engine.store.stats())
    finally:
        engine.stop()
    assert [p.read_bytes() for p in (tmp_path / "out").glob("*.hl7")] == [
        ORU_R01_25
    ]  # decrypted for delivery
    assert stats["channels"]["lab"]["messages"] == {"sent": 1}  # metadata in clear
    assert not [phi for phi in PHI if phi in database_bytes(tmp_path)]
    # rotation: a second key becomes active, payloads move to it, the first key can go
    assert main(["store", "new-key", str(tmp_path / "keys" / "k2.key")]) == 0
    config.write_text(engine_yaml({"k1": "keys/k1.key", "k2": "keys/k2.key"}, "k2"))
    assert main(["store", "reencrypt", "--config", str(config)]) == 0
    config.write_text(engine_yaml({"k2": "keys/k2.key"}, "k2"))
    assert asyncio.run(read_raw(config, 1)) == ORU_R01_25


def test_a_tampered_payload_is_refused(config: Path, tmp_path: Path) -> None:
    engine = EngineThread(config).start()
    try:
        with MllpClient(engine.port("lab")) as client:
            client.send(ORU_R01_25)
    finally:
        engine.stop()
    with sqlite3.connect(tmp_path / "var" / "p.db") as db:
        raw = bytearray(db.execute("SELECT raw FROM contents WHERE message_id=1").fetchone()[0])
        raw[-5] ^= 0x01
        db.execute("UPDATE contents SET raw=? WHERE message_id=1", (bytes(raw),))
    with pytest.raises(StoreError, match="failed its integrity check"):
        asyncio.run(read_raw(config, 1))


def test_a_missing_key_is_named(config: Path, tmp_path: Path) -> None:
    config.write_text(engine_yaml({"k9": "keys/none.key"}, "k9"))
    assert main(["check", "--config", str(config)]) == 0  # check validates shapes; opening needs the key
    with pytest.raises(Exception, match="cannot read the store encryption key"):
        open_configured(config)
