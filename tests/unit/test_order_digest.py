"""The order key of an encrypted store is a keyed digest of the `order_by` value (e.g. a national
id), never the value itself (engine/store/cipher.py `order_digest`, engine/channel.py `order_key`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.channel import order_key
from engine.cli import main
from engine.message import HL7V2, Message, SourceMeta
from engine.store.cipher import PayloadCipher, new_key_file
from tests.support.engine_process import write_project
from tests.unit.hl7_samples import MATRICULE, ORU_R01_25


def key(folder: Path, name: str) -> Path:
    path = folder / f"{name}.key"
    if not path.exists():
        new_key_file(path)
    return path


def cipher(folder: Path, active: str, digest_key: str = "") -> PayloadCipher:
    keys = {k: key(folder, k) for k in ("k1", "k2")}
    return PayloadCipher.from_files(keys, active, key(folder, digest_key) if digest_key else None)


def lab_result() -> Message:
    return Message("lab", ORU_R01_25, HL7V2, SourceMeta("mllp"))


def test_the_order_key_is_a_digest_of_the_national_id(tmp_path: Path) -> None:
    c = cipher(tmp_path, "k1", "d1")
    digest = order_key(lab_result(), "PID-3.1", c)
    assert digest == c.order_digest(MATRICULE) and MATRICULE not in digest
    assert len(digest) == 32  # 128 bits, hex
    assert order_key(lab_result(), "PID-3.1", None) == MATRICULE  # no encryption: as before


def test_same_value_same_digest_and_another_key_another_digest(tmp_path: Path) -> None:
    c = cipher(tmp_path, "k1", "d1")
    assert c.order_digest(MATRICULE) == cipher(tmp_path, "k1", "d1").order_digest(MATRICULE)
    assert c.order_digest(MATRICULE) != c.order_digest("1975061504286")
    assert c.order_digest(MATRICULE) != cipher(tmp_path, "k1", "d2").order_digest(MATRICULE)


def test_an_empty_key_stays_empty_no_ordering(tmp_path: Path) -> None:
    assert cipher(tmp_path, "k1", "d1").order_digest("") == ""
    assert order_key(lab_result(), "", cipher(tmp_path, "k1")) == ""


def test_a_digest_key_keeps_the_digest_across_payload_key_rotation(tmp_path: Path) -> None:
    before, after = cipher(tmp_path, "k1", "d1"), cipher(tmp_path, "k2", "d1")
    assert before.order_digest(MATRICULE) == after.order_digest(MATRICULE)


def test_without_a_digest_key_the_digest_follows_the_active_key(tmp_path: Path) -> None:
    """The documented cost of leaving `digest_key` out (docs/design-notes.md)."""
    assert cipher(tmp_path, "k1").order_digest(MATRICULE) != cipher(tmp_path, "k2").order_digest(MATRICULE)
    assert cipher(tmp_path, "k1").order_digest(MATRICULE) == cipher(tmp_path, "k1").order_digest(MATRICULE)


@pytest.mark.parametrize("digest_key", ["", "keys/digest.key"])
def test_check_suggests_a_digest_key(
    tmp_path: Path, digest_key: str, capsys: pytest.CaptureFixture[str]
) -> None:
    extra = f", digest_key: {digest_key}" if digest_key else ""
    engine_yaml = f"store: {{encryption: {{keys: {{k1: keys/k1.key}}, active: k1{extra}}}}}\n"
    config = write_project(tmp_path, {}, engine_yaml)
    assert main(["check", "--config", str(config)]) == 0
    warned = "warning: store.encryption has no digest_key" in capsys.readouterr().out
    assert warned == (not digest_key)
