"""SFTP source: polls a remote folder, takes each complete file once, stores it, then moves it.

The contract, per file:
- A file is taken only when complete: with `completion: stable` when its size and mtime did
  not change between two polls; with `completion: marker` when `<name><marker_suffix>` exists.
  Hidden files (`.name`, an upload in progress by convention) are never taken.
- It is streamed to a spooled temporary file (bounded by `max_file_bytes`), sniffed (HL7 v2,
  CDA, DICOM, or the configured fallback), and HL7 batch files (FHS/BHS) are split into their
  messages in constant memory. Each message is `deliver`ed (persist first); only then is the
  file moved to `done_directory` (or deleted), and its marker removed.
- A store failure leaves the file where it is: the next poll takes it again.
- A rejected message (bad envelope, failed validation) or a bad file (empty, truncated batch,
  too large, unrecognised or undecodable content) moves the file to `error_directory` with a
  report `<name>.err.json` beside it: per problem its severity, code, location and text.

What was taken is recorded by the store itself, which makes "store, then move" safe across a
crash: each intake carries a de-duplication key, MSH-10 + MSH-3/4 for HL7 messages, else the
file's SHA-256 (first 32 hex digits) with `sftp:<host>:<port>:<path>` as sender. A file
re-offered after a crash between the commit and the move is answered "duplicate" with the first
verdict, stored nothing, and is moved as it would have been. No local state is needed.

Connection problems (server down, refused key, changed host key) are logged and retried with
backoff; they never stop the engine. Logs never carry file names (they may name a patient).
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import json
import posixpath
import random
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any, Literal

import structlog
from pydantic import Field

from engine.connectors.sftp.batch import Hl7Splitter
from engine.connectors.sftp.remote import Endpoint, HostKeyError, RemoteError, RemoteFile, Session
from engine.contracts import BuildContext, ComponentConfig, Deliver, Intake, Receipt
from engine.errors import Finding, ParseError, StoreError
from engine.formats.hl7v2 import read_header
from engine.formats.sniff import BINARY, HEAD_BYTES, hl7_envelope, sniff, text_problem
from engine.message import HL7V2, SourceMeta

log = structlog.get_logger("passerelle.sftp")

EVIDENCE_BYTES = 64 * 1024  # of a refused file, what is kept in the store as evidence
SPOOL_MEMORY = 1024 * 1024  # a file larger than this is spooled to a temporary file on disk
READ_CHUNK = 256 * 1024


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
    """Remote folder to poll."""
    patterns: list[str] = Field(default_factory=lambda: ["*"], min_length=1)
    """Glob patterns (fnmatch) of the file names to take, e.g. `["*.hl7", "*.xml"]`."""
    completion: Literal["stable", "marker"] = "stable"
    """When a file is complete: `stable` (size and mtime unchanged across two polls) or `marker`
    (the sender creates `<name><marker_suffix>` once the file is written)."""
    marker_suffix: str = Field(default=".done", min_length=1)
    """With `completion: marker`: the marker file's suffix; it is removed with the file."""
    poll_interval: float = Field(default=10.0, gt=0)
    """Seconds between polls."""
    after: Literal["move", "delete"] = "move"
    """What happens to a stored file: moved to `done_directory`, or deleted."""
    done_directory: str = "done"
    """Where stored files go (relative to `directory` unless absolute); created if missing."""
    error_directory: str = "error"
    """Where refused files go, each with `<name>.err.json`; created if missing."""
    split_batches: bool = True
    """Split HL7 v2 files (FHS/BHS batches, or several MSH messages) into one message each."""
    content_type: str = "auto"
    """`auto` recognises HL7 v2, CDA, XML and DICOM from the content; or a fixed content type."""
    fallback_content_type: str = ""
    """With `auto`: the type of unrecognised content; empty refuses such files."""
    charset: str = ""
    """HL7 character set when MSH-18 is empty (HL7 name like `8859/1`, or a Python codec)."""
    max_file_bytes: int = Field(default=256 * 1024 * 1024, ge=1024)
    """Largest file taken; a larger one goes to the error folder (only its head is stored)."""
    max_message_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    """Largest single message (a whole non-HL7 file, or one message of an HL7 batch)."""
    max_files_per_poll: int = Field(default=1000, ge=1)
    """Files taken per poll at most (the oldest first); the rest wait for the next poll."""
    workers: int = Field(default=4, ge=1, le=32)
    """SFTP sessions working in parallel (each takes one file at a time)."""
    max_in_flight: int = Field(default=64, ge=1, le=1024)
    """Messages of one HL7 batch awaiting their commit at once (their commits are grouped)."""
    connect_timeout: float = Field(default=15.0, gt=0)
    """Seconds to connect, check the host key and log in."""
    io_timeout: float = Field(default=60.0, gt=0)
    """Seconds any single SFTP operation may take."""
    max_backoff: float = Field(default=300.0, gt=0)
    """Upper bound of the wait between reconnection attempts."""


SftpSourceConfig = Config  # a distinct name for annotations

EXAMPLE = {"type": "sftp", "host": "sftp.lab-b.example", "username": "passerelle",
           "private_key": "config/ssh/id_ed25519", "known_hosts": "config/ssh/known_hosts",
           "directory": "/outgoing/results", "patterns": ["*.hl7", "*.xml"], "poll_interval": 30}


@dataclass
class Problem:
    """Why a whole file is refused: a short `kind` for the report, and the stored finding."""

    kind: str
    finding: Finding


@dataclass
class Outcome:
    """What became of one file's messages."""

    accepted: int = 0
    rejected: list[dict[str, Any]] = field(default_factory=list)
    problem: Problem | None = None

    @property
    def ok(self) -> bool:
        return not self.rejected and self.problem is None


class SftpSource:
    def __init__(self, config: SftpSourceConfig, context: BuildContext) -> None:
        self.config = config
        self.channel = context.channel
        self.endpoint = Endpoint(config.host, config.port, config.username, context.path(config.private_key),
                                 config.private_key_passphrase, context.path(config.known_hosts),
                                 config.connect_timeout, config.io_timeout)
        self.peer = f"{config.host}:{config.port}"
        self.done_dir = posixpath.join(config.directory, config.done_directory)
        self.error_dir = posixpath.join(config.directory, config.error_directory)
        self.polls = 0
        self.last_error = ""
        self._seen: dict[str, tuple[int, int]] = {}
        self._sessions: list[Session] = []
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._deliver: Deliver | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self, deliver: Deliver) -> None:
        """Start polling in the background: an unreachable server never fails the engine start."""
        self._deliver = deliver
        self._stopping.clear()
        self._task = asyncio.create_task(self._run(), name=f"{self.channel}/sftp")

    async def stop(self) -> None:
        """Take no new file; let the files in hand finish (bounded by the I/O timeout)."""
        self._stopping.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(self._task, self.config.io_timeout + 5)
        await asyncio.gather(*(asyncio.to_thread(s.close) for s in self._sessions))
        self._sessions = []

    async def _run(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            failures = await self._attempt(failures)
            delay = self.config.poll_interval if failures == 0 else self._backoff(failures)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)

    async def _attempt(self, failures: int) -> int:
        """One poll; the new count of consecutive connection failures."""
        try:
            await self._connect()
            await self.poll_once()
        except RemoteError as err:
            self._connection_failed(err, failures)
            return failures + 1
        except StoreError:
            log.error("sftp_store_failed", channel=self.channel)  # files stay; retaken next poll
        except Exception as err:  # a bug must not stop polling; the files stay in place
            log.exception("sftp_poll_bug", channel=self.channel, error=type(err).__name__)
        return 0

    def _connection_failed(self, err: RemoteError, failures: int) -> None:
        self.last_error = str(err)
        level = log.error if isinstance(err, HostKeyError) else log.warning
        if failures == 0 or isinstance(err, HostKeyError):
            level("sftp_unavailable", channel=self.channel, server=self.peer, error=str(err))
        for session in self._sessions:
            session.close()
        self._sessions = []

    def _backoff(self, failures: int) -> float:
        base = min(self.config.max_backoff, self.config.poll_interval * 2.0 ** min(failures - 1, 16))
        return base * random.uniform(0.8, 1.2)

    async def _connect(self) -> None:
        self._sessions = [s for s in self._sessions if s.alive]
        missing = self.config.workers - len(self._sessions)
        if missing <= 0:
            return
        connects = (asyncio.to_thread(Session(self.endpoint).connect) for _ in range(missing))
        opened = await asyncio.gather(*connects, return_exceptions=True)
        self._sessions += [s for s in opened if isinstance(s, Session)]
        errors = [e for e in opened if isinstance(e, BaseException)]
        if errors and not self._sessions:
            raise errors[0]
        await asyncio.to_thread(self._prepare_folders, self._sessions[0])
        if self.last_error:
            log.info("sftp_connected", channel=self.channel, server=self.peer)
            self.last_error = ""

    def _prepare_folders(self, session: Session) -> None:
        session.makedirs(self.error_dir)
        if self.config.after == "move":
            session.makedirs(self.done_dir)

    # -- one poll --------------------------------------------------------------------------------

    async def poll_once(self) -> None:
        """List the folder, then take every complete file with the sessions in parallel."""
        listing = await asyncio.to_thread(self._sessions[0].list, self.config.directory)
        todo = iter(self._complete(listing))
        results = await asyncio.gather(*(self._worker(s, todo) for s in list(self._sessions)),
                                       return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        self.polls += 1

    def _complete(self, listing: list[RemoteFile]) -> list[RemoteFile]:
        """Files ready to take, oldest first; remembers sizes for the next poll's stability check."""
        names = {f.name for f in listing}
        wanted = [f for f in listing if self._wanted(f.name)]
        if self.config.completion == "marker":
            ready = [f for f in wanted if f.name + self.config.marker_suffix in names]
        else:
            ready = [f for f in wanted if self._seen.get(f.name) == (f.size, f.mtime)]
            self._seen = {f.name: (f.size, f.mtime) for f in wanted}
        return sorted(ready, key=lambda f: (f.mtime, f.name))[: self.config.max_files_per_poll]

    def _wanted(self, name: str) -> bool:
        if name.startswith(".") or name.endswith(self.config.marker_suffix):
            return False
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in self.config.patterns)

    async def _worker(self, session: Session, todo: Iterator[RemoteFile]) -> None:
        for remote in todo:
            if self._stopping.is_set():
                return
            await self._take(session, remote)

    # -- one file --------------------------------------------------------------------------------

    async def _take(self, session: Session, remote: RemoteFile) -> None:
        """Store the file's messages, then move it. StoreError and RemoteError leave it in place."""
        path = posixpath.join(self.config.directory, remote.name)
        with tempfile.SpooledTemporaryFile(SPOOL_MEMORY) as spool:
            limit = min(remote.size, self.config.max_file_bytes, EVIDENCE_BYTES) \
                if remote.size > self.config.max_file_bytes else self.config.max_file_bytes + 1
            size, digest = await asyncio.to_thread(session.download, path, spool, limit)
            if remote.size <= self.config.max_file_bytes and size != remote.size:
                self._seen.pop(remote.name, None)  # still being written: wait for two stable polls
                return
            spool.seek(0)
            outcome = await self._ingest(spool, remote, path, digest)
        await asyncio.to_thread(self._finish, session, remote, path, outcome, digest)
        self._seen.pop(remote.name, None)

    async def _ingest(self, spool: IO[bytes], remote: RemoteFile, path: str, digest: str) -> Outcome:
        head = spool.read(HEAD_BYTES)
        spool.seek(0)
        sender = f"sftp:{self.peer}:{path}"
        meta = SourceMeta("sftp", self.peer, "", remote.name)
        problem = self._file_problem(remote, head)
        if problem is not None:
            return await self._refuse(spool.read(EVIDENCE_BYTES), meta, sender, digest, problem)
        content_type = self._content_type(head)
        if content_type == HL7V2 and self.config.split_batches:
            return await self._ingest_hl7(spool, meta, sender, digest)
        return await self._ingest_whole(spool.read(), content_type, meta, sender, digest)

    def _file_problem(self, remote: RemoteFile, head: bytes) -> Problem | None:
        if remote.size == 0:
            return Problem("empty", Finding("the file is empty", code="100"))
        if remote.size > self.config.max_file_bytes:
            return too_large(remote.size, "max_file_bytes", self.config.max_file_bytes)
        splits = self._content_type(head) == HL7V2 and self.config.split_batches
        if remote.size > self.config.max_message_bytes and not splits:
            return too_large(remote.size, "max_message_bytes", self.config.max_message_bytes)
        if not self._content_type(head):
            return Problem("unrecognised", Finding("the content is not HL7 v2, CDA, XML or DICOM (binary or "
                                                   "unknown format) and no fallback_content_type is set",
                                                   code="102"))
        return None

    def _content_type(self, head: bytes) -> str:
        if self.config.content_type != "auto":
            return self.config.content_type
        return sniff(head) or self.config.fallback_content_type

    async def _refuse(
        self, evidence: bytes, meta: SourceMeta, sender: str, digest: str, problem: Problem,
    ) -> Outcome:
        """Store the evidence of a refused file (rejected, with the finding), for the operators."""
        content_type = self._content_type(evidence[:HEAD_BYTES]) or BINARY
        await self._intake(Intake(evidence, meta, content_type, control_id=digest[:32], sender=sender,
                                  problem=problem.finding))
        return Outcome(problem=problem)

    async def _ingest_whole(self, raw: bytes, content_type: str, meta: SourceMeta, sender: str,
                            digest: str) -> Outcome:
        finding = text_problem(raw, content_type)
        intake = Intake(raw, meta, content_type, control_id=digest[:32], sender=sender, problem=finding)
        receipt = await self._intake(intake)
        outcome = Outcome()
        record(outcome, receipt, 1, "")
        return outcome

    async def _ingest_hl7(self, spool: IO[bytes], meta: SourceMeta, sender: str, digest: str) -> Outcome:
        """Split and deliver in order, at most `max_in_flight` commits pending at once."""
        outcome = Outcome()
        splitter = Hl7Splitter(self.config.max_message_bytes)
        pending: list[asyncio.Task[None]] = []
        try:
            while chunk := await asyncio.to_thread(spool.read, READ_CHUNK):
                for raw in splitter.feed(chunk):
                    pending.append(self._spawn(raw, meta, sender, outcome, splitter.messages))
                    pending = await self._bound(pending)
            for raw in splitter.close():
                pending.append(self._spawn(raw, meta, sender, outcome, splitter.messages))
        except ParseError as err:
            outcome.problem = Problem("truncated" if "truncated" in str(err) else "malformed",
                                      Finding(str(err), code="100"))
        await self._drain(pending)
        if outcome.problem is not None:
            spool.seek(0)
            await self._refuse(spool.read(EVIDENCE_BYTES), meta, sender, digest, outcome.problem)
        return outcome

    def _spawn(
        self, raw: bytes, meta: SourceMeta, sender: str, outcome: Outcome, index: int,
    ) -> asyncio.Task[None]:
        async def one() -> None:
            receipt = await self._intake(self.hl7_intake(raw, meta, sender))
            record(outcome, receipt, index, control_id_of(raw))

        return asyncio.create_task(one())

    async def _bound(self, pending: list[asyncio.Task[None]]) -> list[asyncio.Task[None]]:
        if len(pending) < self.config.max_in_flight:
            return pending
        done, rest = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            task.result()  # StoreError surfaces here
        return list(rest)

    async def _drain(self, pending: list[asyncio.Task[None]]) -> None:
        results = await asyncio.gather(*pending, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result

    def hl7_intake(self, raw: bytes, meta: SourceMeta, sender: str) -> Intake:
        """One HL7 message: de-duplicated on MSH-10 + MSH-3/4; envelope problems as findings."""
        env = hl7_envelope(raw, self.config.charset, sender)
        return Intake(raw, meta, HL7V2, control_id=env.control_id, sender=env.sender, charset=env.charset,
                      problem=env.problem)

    async def _intake(self, intake: Intake) -> Receipt:
        assert self._deliver is not None
        return await self._deliver(intake)

    # -- after the commit ------------------------------------------------------------------------

    def _finish(self, session: Session, remote: RemoteFile, path: str, outcome: Outcome, digest: str) -> None:
        """Runs in a worker thread, after every message of the file was committed."""
        if outcome.ok:
            if self.config.after == "move":
                session.move(path, self.done_dir, remote.name)
            else:
                session.remove(path)
        else:
            report = error_report(self.channel, remote, digest, outcome)
            session.write_atomic(self.error_dir, f"{remote.name}.err.json", report)
            session.move(path, self.error_dir, remote.name)
            reason = outcome.problem.kind if outcome.problem else "rejected"
            log.warning("sftp_file_refused", channel=self.channel, reason=reason,
                        rejected=len(outcome.rejected), accepted=outcome.accepted)
        if self.config.completion == "marker":
            with contextlib.suppress(RemoteError):
                session.remove(path + self.config.marker_suffix)


def record(outcome: Outcome, receipt: Receipt, index: int, control_id: str) -> None:
    if receipt.verdict.status != "rejected":
        outcome.accepted += 1
        return
    outcome.rejected.append({
        "index": index, "control_id": control_id, "message_id": receipt.message_id,
        "ack_code": receipt.verdict.code, "duplicate": receipt.duplicate,
        "findings": [finding_json(f) for f in receipt.verdict.findings],
    })


def finding_json(finding: Finding) -> dict[str, str]:
    return {"severity": finding.severity, "code": finding.code, "location": finding.location,
            "text": finding.text}


def error_report(channel: str, remote: RemoteFile, digest: str, outcome: Outcome) -> bytes:
    """The `<name>.err.json` written beside a refused file: what the sender must fix."""
    problem = outcome.problem
    report = {
        "file": remote.name, "size": remote.size, "mtime": remote.mtime, "sha256": digest,
        "channel": channel, "refused_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "error": problem.kind if problem else "rejected",
        "text": problem.finding.text if problem else f"{len(outcome.rejected)} message(s) were rejected",
        "findings": [finding_json(problem.finding)] if problem else [],
        "accepted_messages": outcome.accepted, "rejected_messages": outcome.rejected,
    }
    return json.dumps(report, indent=2, ensure_ascii=False).encode("utf-8")


def too_large(size: int, option: str, limit: int) -> Problem:
    text = f"the file is {size} bytes, more than {option} ({limit}); only its head was stored"
    return Problem("too_large", Finding(text, code="100"))


def control_id_of(raw: bytes) -> str:
    try:
        return read_header(raw).control_id
    except ParseError:
        return ""
