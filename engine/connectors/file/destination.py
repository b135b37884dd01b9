"""File destination: one file per message, written atomically.

Contract: a file with the final name is always complete. The content goes to a hidden
temporary name in the same folder, is fsynced, renamed, and the folder is fsynced, so a
reader polling the folder (or a crash) never sees half a message. The name is stable per
message, so a retried delivery overwrites instead of duplicating. Any OSError (disk full,
permissions) is retryable: the message waits in its queue until the disk is fixed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
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
                sync_directory(self.directory)
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


def sync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
