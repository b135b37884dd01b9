"""A blocking SFTP session (paramiko), used from worker threads by the source and destination.

Contracts:
- The server's host key must be pinned in `known_hosts` (OpenSSH format, `[host]:port` for a
  port other than 22). An unknown or different key refuses the connection before any
  authentication: `HostKeyError`. Authentication is by private key only.
- Every network call has a timeout (`io_timeout`): a silent server raises instead of hanging
  a thread. A session is used by one thread at a time.
- Errors are `RemoteError` (retry later) or `HostKeyError`, with the cause chained.
"""

from __future__ import annotations

import contextlib
import hashlib
import posixpath
import secrets
import socket
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import paramiko

from engine.errors import PasserelleError

CHUNK = 256 * 1024
REQUEST = 32 * 1024  # bytes per SFTP read request (what OpenSSH serves at most)
WINDOW = 1024 * 1024  # bytes requested ahead of the reader


class RemoteError(PasserelleError):
    """The SFTP server could not be reached or refused an operation."""


class HostKeyError(RemoteError):
    """The server's host key is unknown or differs from the pinned one: never connect."""


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int
    username: str
    private_key: Path
    passphrase: str
    known_hosts: Path
    connect_timeout: float
    io_timeout: float

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class RemoteFile:
    name: str
    size: int
    mtime: int


class Session:
    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.transport: paramiko.Transport | None = None
        self.sftp: paramiko.SFTPClient | None = None

    # -- connection ------------------------------------------------------------------------------

    def connect(self) -> Session:
        """Open, verify the host key, authenticate, start SFTP. Raises RemoteError / HostKeyError."""
        pinned = self._pinned_keys()
        key = self._user_key()
        try:
            address = (self.endpoint.host, self.endpoint.port)
            sock = socket.create_connection(address, self.endpoint.connect_timeout)
            self.transport = paramiko.Transport(sock)
            self.transport.start_client(timeout=self.endpoint.connect_timeout)
            self._check_host_key(self.transport.get_remote_server_key(), pinned)
            self.transport.auth_publickey(self.endpoint.username, key)
            self.sftp = self._open_sftp(self.transport)
        except HostKeyError:
            self.close()
            raise
        except (OSError, paramiko.SSHException, EOFError) as err:
            self.close()
            raise RemoteError(f"cannot connect to {self.endpoint.where}: {describe(err)}") from err
        return self

    def _open_sftp(self, transport: paramiko.Transport) -> paramiko.SFTPClient:
        sftp = paramiko.SFTPClient.from_transport(transport)
        if sftp is None:
            raise RemoteError(f"{self.endpoint.where} refused the SFTP subsystem")
        sftp.get_channel().settimeout(self.endpoint.io_timeout)  # type: ignore[union-attr]
        return sftp

    def _pinned_keys(self) -> dict[str, paramiko.PKey]:
        path = self.endpoint.known_hosts
        try:
            keys = paramiko.HostKeys(str(path))
        except (OSError, paramiko.SSHException) as err:
            raise HostKeyError(f"known_hosts file {path} cannot be read: {describe(err)}") from err
        host, port = self.endpoint.host, self.endpoint.port
        name = host if port == 22 else f"[{host}]:{port}"
        entry = keys.lookup(name)
        if not entry:
            raise HostKeyError(f"no host key for {name} in {path}: refusing an unknown server "
                               f"(add it with: ssh-keyscan -p {self.endpoint.port} {self.endpoint.host})")
        return dict(entry)

    def _check_host_key(self, offered: paramiko.PKey, pinned: dict[str, paramiko.PKey]) -> None:
        expected = pinned.get(offered.get_name())
        if expected is None or expected.asbytes() != offered.asbytes():
            raise HostKeyError(f"the host key of {self.endpoint.where} ({offered.get_name()} "
                               f"SHA256:{offered.fingerprint.removeprefix('SHA256:')}) does not match "
                               f"{self.endpoint.known_hosts}: refusing to connect "
                               "(changed or impersonated server)")

    def _user_key(self) -> paramiko.PKey:
        path = self.endpoint.private_key
        try:
            return paramiko.PKey.from_path(path, self.endpoint.passphrase or None)
        except (OSError, paramiko.SSHException, ValueError) as err:
            raise RemoteError(f"private key {path} cannot be loaded: {describe(err)}") from err

    def close(self) -> None:
        with contextlib.suppress(Exception):
            if self.sftp is not None:
                self.sftp.close()
        with contextlib.suppress(Exception):
            if self.transport is not None:
                self.transport.close()
        self.sftp = None
        self.transport = None

    @property
    def alive(self) -> bool:
        return self.sftp is not None and self.transport is not None and self.transport.is_active()

    def client(self) -> paramiko.SFTPClient:
        if self.sftp is None:
            raise RemoteError(f"not connected to {self.endpoint.where}")
        return self.sftp

    # -- operations --------------------------------------------------------------------------------

    def list(self, directory: str) -> list[RemoteFile]:
        """Regular files of `directory`."""
        with self._errors("listing", directory):
            entries = self.client().listdir_attr(directory)
        return [RemoteFile(e.filename, e.st_size or 0, e.st_mtime or 0)
                for e in entries if e.st_mode is not None and stat.S_ISREG(e.st_mode)]

    def download(self, path: str, sink: IO[bytes], limit: int) -> tuple[int, str]:
        """Copy at most `limit` bytes into `sink`; (bytes read, sha256 hex of them)."""
        digest = hashlib.sha256()
        size = 0
        with self._errors("reading", path), self.client().open(path, "rb") as remote:
            end = min(remote.stat().st_size or 0, limit)
            while size < end:
                # readv pipelines one window of requests: fast, and memory bounded by WINDOW
                # (paramiko's prefetch() buffers the whole file when we read slower than the network)
                window = [(o, min(REQUEST, end - o)) for o in range(size, min(size + WINDOW, end), REQUEST)]
                before = size
                for chunk in remote.readv(window):
                    digest.update(chunk)
                    sink.write(chunk)
                    size += len(chunk)
                if size == before:  # the file shrank while being read: the caller sees the size
                    break
        return size, digest.hexdigest()

    def move(self, source: str, folder: str, name: str) -> str:
        """Rename `source` into `folder` under `name`, never over an existing file; the new path."""
        target = posixpath.join(folder, name)
        try:
            self.client().rename(source, target)
        except OSError:
            target = posixpath.join(folder, f"{name}.{unique_suffix()}")
            with self._errors("moving", source):
                self.client().rename(source, target)
        return target

    def remove(self, path: str) -> None:
        with self._errors("removing", path):
            self.client().remove(path)

    def makedirs(self, folder: str) -> None:
        """Create `folder` and its parents when missing."""
        parts = [p for p in folder.split("/") if p]
        current = "/" if folder.startswith("/") else ""
        for part in parts:
            current = posixpath.join(current, part) if current else part
            try:
                self.client().stat(current)
            except OSError:
                with self._errors("creating", current), contextlib.suppress(OSError):
                    self.client().mkdir(current)
                with self._errors("creating", current):
                    self.client().stat(current)

    def write_atomic(self, folder: str, name: str, data: bytes, overwrite: bool = True) -> str:
        """Write under a temporary dot-name, then rename it to `name`; the final path."""
        temp = posixpath.join(folder, f".{name}.{unique_suffix()}.part")
        target = posixpath.join(folder, name)
        client = self.client()
        try:
            with self._errors("writing", temp):
                with client.open(temp, "wb") as remote:
                    remote.set_pipelined(True)
                    for start in range(0, len(data), CHUNK):
                        remote.write(data[start:start + CHUNK])
                self._rename_over(temp, target) if overwrite else client.rename(temp, target)
        except RemoteError:
            with contextlib.suppress(Exception):
                client.remove(temp)
            raise
        return target

    def _rename_over(self, temp: str, target: str) -> None:
        client = self.client()
        try:
            client.posix_rename(temp, target)
        except OSError:  # server without the posix-rename extension
            with contextlib.suppress(OSError):
                client.remove(target)
            client.rename(temp, target)

    @contextlib.contextmanager
    def _errors(self, doing: str, path: str) -> Iterator[None]:
        """Wrap library errors; `path` is not put in the message (it may name a patient)."""
        try:
            yield
        except RemoteError:
            raise
        except (OSError, paramiko.SSHException, EOFError) as err:
            raise RemoteError(f"{doing} a file on {self.endpoint.where} failed: {describe(err)}") from err


def unique_suffix() -> str:
    return f"{time.strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(3)}"


def describe(err: BaseException) -> str:
    """An error's text without the file path (a path may hold a patient name)."""
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    return str(err) or type(err).__name__
