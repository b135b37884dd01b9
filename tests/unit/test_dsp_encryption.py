"""Encryption at rest of DSP document blobs: a copied blob folder shows no patient data and no
plain content address; tampering and moved blobs are refused; keys rotate (older blobs and blobs
stored before encryption included) while every document stays readable."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from engine.contracts import BuildContext
from engine.dsp.repository import IntegrityError, Repository
from engine.dsp.service import dsp_from, reencrypt_blobs
from engine.store.cipher import PayloadCipher, new_key_file
from engine.store.sqlite import SqliteStore

ROOT = Path(__file__).resolve().parents[2]
LAB_REPORT = (ROOT / "tests/data/validation/lab-report.xml").read_bytes()
PATIENT_DATA = [b"Patient", b"<given>Test", b"19830101", b"1983010112374", b"LOCAL-42"]


def cipher(tmp_path: Path, active: str, *ids: str) -> PayloadCipher:
    keys = {}
    for key_id in {active, *ids}:
        path = tmp_path / "keys" / f"{key_id}.key"
        if not path.exists():
            new_key_file(path)
        keys[key_id] = path
    return PayloadCipher.from_files(keys, active)


def blob_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()]


def other_document(number: int) -> bytes:
    return LAB_REPORT.replace(b'extension="DOC-0001"', f'extension="DOC-{number:04d}"'.encode())


def test_a_copied_blob_folder_shows_no_patient_data_nor_content_address(tmp_path: Path) -> None:
    assert all(marker in LAB_REPORT for marker in PATIENT_DATA)  # the sample does carry them
    repository = Repository(tmp_path / "blobs", cipher=cipher(tmp_path, "k1"))
    sha = repository.put(LAB_REPORT)
    assert sha == hashlib.sha256(LAB_REPORT).hexdigest()  # the address is the plaintext's SHA-256
    (copied,) = blob_files(tmp_path / "blobs")
    data = copied.read_bytes()
    assert not any(marker in data for marker in PATIENT_DATA)
    assert sha not in str(copied)  # a guessed document cannot be confirmed from the file names
    assert repository.get(sha) == LAB_REPORT
    assert repository.put(LAB_REPORT) == sha and blob_files(tmp_path / "blobs") == [copied]  # stored once


def test_a_flipped_byte_or_a_swapped_blob_is_refused(tmp_path: Path) -> None:
    repository = Repository(tmp_path / "blobs", cipher=cipher(tmp_path, "k1"))
    first, second = repository.put(other_document(1)), repository.put(other_document(2))
    path = repository.path(first)
    sealed = bytearray(path.read_bytes())
    sealed[-20] ^= 1
    path.write_bytes(bytes(sealed))
    with pytest.raises(IntegrityError, match="failed its integrity check"):
        repository.get(first)
    repository.path(first).write_bytes(repository.path(second).read_bytes())  # another patient's blob
    with pytest.raises(IntegrityError, match="failed its integrity check"):
        repository.get(first)


def test_without_the_key_an_encrypted_blob_is_refused_not_returned(tmp_path: Path) -> None:
    sha = Repository(tmp_path / "blobs", cipher=cipher(tmp_path, "k1")).put(LAB_REPORT)
    with pytest.raises(IntegrityError):
        Repository(tmp_path / "blobs", cipher=cipher(tmp_path, "k2")).get(sha)  # a key not used for it


def test_rotation_moves_every_blob_to_the_new_key_then_the_old_key_can_go(tmp_path: Path) -> None:
    folder = tmp_path / "blobs"
    plain = Repository(folder).put(other_document(1))  # stored before encryption was enabled
    old = Repository(folder, cipher=cipher(tmp_path, "k1")).put(other_document(2))
    both = Repository(folder, cipher=cipher(tmp_path, "k2", "k1"))  # k2 added and made active
    assert both.get(plain) == other_document(1) and both.get(old) == other_document(2)
    assert both.reencrypt() == 2
    assert both.reencrypt() == 0  # nothing left to move
    new_only = Repository(folder, cipher=cipher(tmp_path, "k2"))  # k1 removed from the configuration
    assert new_only.get(plain) == other_document(1) and new_only.get(old) == other_document(2)
    assert len(blob_files(folder)) == 2
    assert not any(marker in p.read_bytes() for p in blob_files(folder) for marker in PATIENT_DATA)


def test_reencrypt_blobs_finds_the_installations_blob_folder(tmp_path: Path) -> None:
    Repository(tmp_path / "var/dsp/blobs").put(LAB_REPORT)  # the default blob_dir, in clear
    assert reencrypt_blobs(tmp_path, cipher(tmp_path, "k1")) == 1
    assert not any(m in p.read_bytes() for p in blob_files(tmp_path / "var/dsp/blobs") for m in PATIENT_DATA)


def test_the_engines_dsp_seals_blobs_with_the_stores_keys(tmp_path: Path) -> None:
    keys = cipher(tmp_path, "k1")
    store = SqliteStore(tmp_path / "var/passerelle.db", cipher=keys)
    dsp = dsp_from(BuildContext(tmp_path, "documents", {"store": store}))
    try:
        assert dsp.repository.cipher is keys
    finally:
        dsp.close()
