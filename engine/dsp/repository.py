"""The DSP repository: document bytes, content-addressed by SHA-256.

Contract: a blob file with its final name is always complete (written to a temporary name in the
same folder, fsynced, renamed, folder fsynced), and every read re-computes the SHA-256 so a
damaged or altered file is never returned as a document (`IntegrityError`). Storing the same
bytes twice writes nothing the second time.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from pathlib import Path

from engine.connectors.file.destination import sync_directory, write_synced
from engine.errors import PasserelleError

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class IntegrityError(PasserelleError):
    """A stored blob is missing or its content no longer matches its SHA-256."""


class Repository:
    def __init__(self, folder: Path, fsync: bool = True) -> None:
        self.folder = folder
        self.fsync = fsync

    def path(self, sha256: str) -> Path:
        if not _SHA256.match(sha256):
            raise ValueError("a blob is named by its lowercase hex SHA-256")
        return self.folder / sha256[:2] / sha256[2:4] / sha256

    def put(self, content: bytes) -> str:
        """Store `content` (idempotent); its SHA-256. OSError when the disk refuses."""
        sha = hashlib.sha256(content).hexdigest()
        target = self.path(sha)
        if target.exists() and target.stat().st_size == len(content):
            return sha
        target.parent.mkdir(parents=True, exist_ok=True)
        temp = target.parent / f".{sha}.{os.getpid()}.tmp"
        try:
            write_synced(temp, content, 0o640, self.fsync)
            os.replace(temp, target)
        finally:
            with contextlib.suppress(OSError):
                temp.unlink(missing_ok=True)
        if self.fsync:
            sync_directory(target.parent)
        return sha

    def get(self, sha256: str) -> bytes:
        """The blob's bytes, verified against its name; IntegrityError otherwise."""
        try:
            content = self.path(sha256).read_bytes()
        except FileNotFoundError as err:
            raise IntegrityError(f"blob {sha256} is missing from the repository") from err
        if hashlib.sha256(content).hexdigest() != sha256:
            raise IntegrityError(f"blob {sha256} is damaged: its content does not match its SHA-256")
        return content
