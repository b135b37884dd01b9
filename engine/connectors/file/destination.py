"""File destination: one file per message, written atomically.

Contract: a file with the final name is always complete. The content goes to a hidden
temporary name in the same folder, is fsynced, renamed, and the folder is fsynced, so a
reader polling the folder (or a crash) never sees half a message. The name is stable per
message, so a retried delivery overwrites instead of duplicating. Any OSError (disk full,
permissions) is retryable: the message waits in its queue until the disk is fixed.

Concurrent deliveries share the folder's fsync (`FolderSync`): each file is fsynced on its own,
and after its rename it waits for a folder fsync that started after that rename; one such fsync
covers every rename before it. Same durability as one folder fsync per file, fewer flushes
(measured in bench/BENCHMARKS.md, `bench/delivery_drain.py --fsync`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import threading
from pathlib import Path

from pydantic import Field

from engine.contracts import BuildContext, ComponentConfig
from engine.errors import PermanentError, RetryableError
from engine.message import CDA, DICOM, HL7V2, JSON, XML, Message

EXTENSIONS = {HL7V2: "hl7", CDA: "xml", XML: "xml", DICOM: "dcm", JSON: "json"}
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


class Config(ComponentConfig):
    directory: str
    """Folder to write into (created if missing), relative to the project root."""
    filename: str = "{channel}-{id}-{control_id}.{ext}"
    """Name template: {channel}, {id} (store id), {control_id}, {ext} (from the content type)."""
    fsync: bool = True
    """fsync file and folder before the delivery counts as sent."""
    mode: int = Field(default=0o640, ge=0, le=0o777)
    """File permissions (octal); messages hold patient data, keep them private."""


EXAMPLE = {"type": "file", "name": "archive", "directory": "var/out/lab-results"}


class FileDestination:
    def __init__(self, config: Config, context: BuildContext) -> None:
        self.config = config
        self.directory = context.path(config.directory)
        self.folder_sync = FolderSync(self.directory)

    async def send(self, message: Message) -> bytes | None:
        name = self.filename(message)
        await asyncio.to_thread(self._write, name, message.content())
        return None

    async def close(self) -> None:
        return None

    def filename(self, message: Message) -> str:
        try:
            name = self.config.filename.format(
                channel=message.channel,
                id=message.id or 0,
                control_id=message.control_id or "none",
                ext=EXTENSIONS.get(message.content_type, "bin"),
            )
        except (KeyError, IndexError, ValueError) as err:
            raise PermanentError(f"filename template {self.config.filename!r} is invalid: {err}") from err
        return _UNSAFE.sub("_", name).lstrip(".") or "message"

    def _write(self, name: str, content: bytes) -> None:
        target = self.directory / name
        temp = self.directory / f".{name}.tmp"
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            write_synced(temp, content, self.config.mode, self.config.fsync)
            os.replace(temp, target)
            if self.config.fsync:
                self.folder_sync.after_rename()
        except OSError as err:
            with contextlib.suppress(OSError):  # the folder itself may be what is broken
                temp.unlink(missing_ok=True)
            raise RetryableError(f"cannot write {target}: {err.strerror or err}") from err


def write_synced(path: Path, content: bytes, mode: int, fsync: bool) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        view = memoryview(content)
        while view:
            view = view[os.write(fd, view) :]
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)


class FolderSync:
    """One folder's fsync shared by the threads that renamed into it (group fsync).

    `after_rename()` returns once a folder fsync that started after the caller's rename has
    completed; a failed fsync raises OSError in the thread that ran it, and the others run
    their own. Thread-safe: called from the delivery threads."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._changed = threading.Condition()
        self._renames = 0  # renames announced so far
        self._synced = 0  # every rename up to this number is durable
        self._running = False

    def after_rename(self) -> None:
        with self._changed:
            self._renames += 1
            mine = self._renames
            while self._synced < mine:
                if self._running:
                    self._changed.wait()  # a sync is running; it may have started before my rename
                    continue
                self._running = True
                covered = self._renames  # every rename announced before this sync starts
                try:
                    self._changed.release()
                    try:
                        sync_directory(self.directory)
                    finally:
                        self._changed.acquire()
                    self._synced = max(self._synced, covered)
                finally:
                    self._running = False
                    self._changed.notify_all()


def sync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
