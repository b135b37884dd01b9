"""SFTP destination: one file per message on a remote server, written atomically.

Contract: a file with the final name is always complete. The content is written under a hidden
temporary name (`.<name>.<stamp>.part`) in the target folder, then renamed (posix-rename when the
server supports it, so a retried delivery replaces instead of duplicating: the name is stable
per message). Missing folders are created. Connection problems, refused operations and a
changed host key are retryable: the message waits in its queue (with backoff) until the server
is fixed; a bad file name template is permanent.
"""

from __future__ import annotations

import asyncio
import posixpath
import re

from pydantic import Field

from engine.connectors.file.destination import EXTENSIONS
from engine.connectors.sftp.remote import Endpoint, RemoteError, Session
from engine.contracts import BuildContext, ComponentConfig
from engine.errors import PermanentError, RetryableError
from engine.message import Message

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


class Config(ComponentConfig):
    host: str
    """SFTP server host name or address."""
    port: int = Field(default=22, ge=1, le=65535)
    """SFTP server port."""
    username: str
    """Account to log in with."""
    private_key: str
    """OpenSSH private key file (Ed25519, ECDSA or RSA); password login is not supported."""
    private_key_passphrase: str = ""
    """Passphrase of `private_key` (use a `${file:...}` reference), if it has one."""
    known_hosts: str
    """OpenSSH known_hosts file pinning the server's host key; an unknown or changed key is refused."""
    directory: str
    """Remote folder to write into (created with its parents if missing)."""
    filename: str = "{channel}-{id}-{control_id}.{ext}"
    """Name template: {channel}, {id} (store id), {control_id}, {ext} (from the content type)."""
    create_directories: bool = True
    """Create `directory` when it does not exist (else a missing folder is a retryable error)."""
    connect_timeout: float = Field(default=15.0, gt=0)
    """Seconds to connect, check the host key and log in."""
    io_timeout: float = Field(default=60.0, gt=0)
    """Seconds any single SFTP operation may take."""


SftpDestinationConfig = Config  # a distinct name for annotations

EXAMPLE = {"type": "sftp", "name": "archive-ris", "host": "sftp.ris.example", "username": "passerelle",
           "private_key": "config/ssh/id_ed25519", "known_hosts": "config/ssh/known_hosts",
           "directory": "/incoming/results"}


class SftpDestination:
    def __init__(self, config: SftpDestinationConfig, context: BuildContext) -> None:
        self.config = config
        self.endpoint = Endpoint(config.host, config.port, config.username, context.path(config.private_key),
                                 config.private_key_passphrase, context.path(config.known_hosts),
                                 config.connect_timeout, config.io_timeout)
        self._session: Session | None = None
        self._lock = asyncio.Lock()  # one SFTP session, used by one thread at a time
        self._ready_dirs: set[str] = set()

    async def send(self, message: Message) -> bytes | None:
        name = self.filename(message)
        content = message.content()
        async with self._lock:
            try:
                session = await self._connected()
                await asyncio.to_thread(self._write, session, name, content)
            except RemoteError as err:
                await self._drop()
                raise RetryableError(f"SFTP delivery to {self.endpoint.where} failed: {err}") from err
        return None

    async def close(self) -> None:
        async with self._lock:
            await self._drop()

    async def _connected(self) -> Session:
        if self._session is None or not self._session.alive:
            await self._drop()
            self._session = await asyncio.to_thread(Session(self.endpoint).connect)
        return self._session

    async def _drop(self) -> None:
        if self._session is not None:
            await asyncio.to_thread(self._session.close)
        self._session = None
        self._ready_dirs.clear()

    def _write(self, session: Session, name: str, content: bytes) -> None:
        folder = self.config.directory
        if self.config.create_directories and folder not in self._ready_dirs:
            session.makedirs(folder)
            self._ready_dirs.add(folder)
        session.write_atomic(folder, name, content)

    def filename(self, message: Message) -> str:
        try:
            name = self.config.filename.format(
                channel=message.channel, id=message.id or 0, control_id=message.control_id or "none",
                ext=EXTENSIONS.get(message.content_type, "bin"),
            )
        except (KeyError, IndexError, ValueError) as err:
            raise PermanentError(f"filename template {self.config.filename!r} is invalid: {err}") from err
        return _UNSAFE.sub("_", posixpath.basename(name)).lstrip(".") or "message"
