"""The DSP repository: document bytes, content-addressed by SHA-256.

Contract: a blob file with its final name is always complete (written to a temporary name in the
same folder, fsynced, renamed, folder fsynced), and every read re-computes the SHA-256 so a
damaged or altered file is never returned as a document (`IntegrityError`). Storing the same
bytes twice writes nothing the second time.

Encryption at rest (when the store has encryption keys, `store.encryption` in engine.yaml): each
blob is sealed with AES-256-GCM (engine/store/cipher.py), and its file is named by a keyed hash,
HMAC-SHA256(name key of the active key, SHA-256 of the document), not by the SHA-256 itself.
Why a keyed name: a plain SHA-256 of the document lets whoever copies the folder confirm a
guessed document (lab reports are generated from templates: patient id, date and a handful of
result values may be enumerable), which is exactly what encryption is meant to prevent. The
document's address for the rest of the engine stays the SHA-256 of its plaintext (the registry
row, the API, integrity checks): only the file name is keyed, so rotating keys renames files and
touches no registry row. The file name is the associated data of the seal, so swapping two blob
files is detected, and the plaintext's SHA-256 is checked after opening as before.
Reading tries the active key's name, then older keys' names, then the plain SHA-256 name (blobs
stored before encryption was enabled); `reencrypt()` moves every blob to the active key.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from collections.abc import Iterator
from pathlib import Path

from engine.connectors.file.destination import sync_directory, write_synced
from engine.errors import PasserelleError, StoreError
from engine.store.cipher import HEADER_BYTES, TAG_BYTES, PayloadCipher

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class IntegrityError(PasserelleError):
    """A stored blob is missing or its content no longer matches its SHA-256."""


class Repository:
    def __init__(self, folder: Path, fsync: bool = True, cipher: PayloadCipher | None = None) -> None:
        self.folder = folder
        self.fsync = fsync
        self.cipher = cipher

    def path(self, sha256: str) -> Path:
        """Where `put` writes the blob of this SHA-256 (its keyed name when encrypting)."""
        if not _SHA256.match(sha256):
            raise ValueError("a blob is named by its lowercase hex SHA-256")
        if self.cipher is None:
            return self._file(sha256)
        return self._file(self.cipher.keyed_name(sha256.encode(), self.cipher.active))

    def _file(self, name: str) -> Path:
        return self.folder / name[:2] / name[2:4] / name

    def _candidates(self, sha256: str) -> Iterator[Path]:
        """Where a blob may be: under each key's name (active first), then under its plain name."""
        if not _SHA256.match(sha256):
            raise ValueError("a blob is named by its lowercase hex SHA-256")
        if self.cipher is not None:
            for key_id in self.cipher.key_ids():
                yield self._file(self.cipher.keyed_name(sha256.encode(), key_id))
        yield self._file(sha256)

    def put(self, content: bytes) -> str:
        """Store `content` (idempotent); its SHA-256. OSError when the disk refuses."""
        sha = hashlib.sha256(content).hexdigest()
        target = self.path(sha)
        size = len(content) + (HEADER_BYTES + TAG_BYTES if self.cipher is not None else 0)
        if target.exists() and target.stat().st_size == size:
            return sha
        data = content if self.cipher is None else self._seal(content, target.name)
        self._write(target, data)
        return sha

    def _seal(self, content: bytes, name: str) -> bytes:
        assert self.cipher is not None
        sealed = self.cipher.encrypt(content, seal_label(name))
        assert sealed is not None
        return sealed

    def _write(self, target: Path, data: bytes) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        temp = target.parent / f".{target.name}.{os.getpid()}.tmp"
        try:
            write_synced(temp, data, 0o640, self.fsync)
            os.replace(temp, target)
        finally:
            with contextlib.suppress(OSError):
                temp.unlink(missing_ok=True)
        if self.fsync:
            sync_directory(target.parent)

    def get(self, sha256: str) -> bytes:
        """The blob's bytes, verified against its name; IntegrityError otherwise."""
        for path in self._candidates(sha256):
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                continue
            return self._open(data, path.name, sha256)
        raise IntegrityError(f"blob {sha256} is missing from the repository")

    def _open(self, data: bytes, name: str, sha256: str) -> bytes:
        plain_name = name == sha256
        if self.cipher is not None and (not plain_name or self.cipher.sealed_by(data) is not None):
            try:
                content = self.cipher.decrypt(data, seal_label(name)) or b""
            except StoreError as err:
                reason = "tampered, moved or sealed with an unknown key"
                raise IntegrityError(f"blob {sha256} failed its integrity check ({reason})") from err
        elif not plain_name:
            raise IntegrityError(f"blob {sha256} is encrypted and no store encryption key is configured")
        else:
            content = data
        if hashlib.sha256(content).hexdigest() != sha256:
            raise IntegrityError(f"blob {sha256} is damaged: its content does not match its SHA-256")
        return content

    def reencrypt(self) -> int:
        """Move every blob to the active key (plaintext blobs included); blobs moved. Safe while the
        engine runs: the new file is complete and synced before the old one is removed, and a
        reader tries every name."""
        if self.cipher is None:
            raise StoreError("encryption is not configured for this store")
        moved = 0
        for path in sorted(self.folder.glob("??/??/*")):
            if path.name.startswith(".") or self._is_current(path):
                continue
            sha = self._sha_of(path)
            if sha is None:
                continue  # unreadable: left as it is for an operator (get() reports it)
            self._write(self.path(sha), self._seal(self.get(sha), self.path(sha).name))
            path.unlink()
            moved += 1
        return moved

    def _is_current(self, path: Path) -> bool:
        assert self.cipher is not None
        with path.open("rb") as handle:
            return self.cipher.sealed_by(handle.read(HEADER_BYTES)) == self.cipher.active

    def _sha_of(self, path: Path) -> str | None:
        """The SHA-256 of the document in an old blob file (plain name, or sealed under an old key)."""
        data = path.read_bytes()
        if self.cipher is None or self.cipher.sealed_by(data) is None:
            return path.name if _SHA256.match(path.name) else None
        try:
            content = self.cipher.decrypt(data, seal_label(path.name)) or b""
        except StoreError:
            return None
        return hashlib.sha256(content).hexdigest()


def seal_label(name: str) -> str:
    """The associated data of a blob's seal: its file name (a blob moved to another name fails)."""
    return f"dsp-blob:{name}"
