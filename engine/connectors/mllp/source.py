"""MLLP listener: HL7 v2 over TCP (optionally TLS / mutual TLS), persist-then-ACK.

Per connection, frames are handled in order: read the MSH header (fast, no full parse),
check version / processing id / character set, `await deliver(...)` (the store commit),
then write the ACK. Original mode answers AA/AE/AR with ERR segments; enhanced mode
(MSH-15/16) answers a commit ACK (CA/CE/CR) once stored and, when MSH-16 asks for it, an
application ACK after the channel's steps ran. A store failure is answered AR (CR): the
sender keeps the message and resends it unchanged.

Bad input never stops the listener: an undecodable or unsupported message is stored as
rejected and answered AR with the reason; a frame with no readable MSH has no control id
to answer to, so it is stored as rejected and the connection is closed; an oversized frame
closes the connection after the evidence is stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog
from pydantic import Field

from engine import metrics
from engine.connectors.mllp.framing import MllpDecoder, frame
from engine.connectors.tls import TlsServerConfig, peer_subject, server_context, subject_allowed
from engine.contracts import BuildContext, ComponentConfig, Deliver, Intake, Receipt, Verdict
from engine.errors import Finding, FrameError, ParseError, StoreError
from engine.formats.hl7v2 import SUPPORTED_VERSIONS, Header, build_ack, codec_for, read_header
from engine.message import HL7V2, SourceMeta

log = structlog.get_logger("passerelle.mllp")

COMMIT_CODES = {"AA": "CA", "AE": "CE", "AR": "CR"}
EVIDENCE_BYTES = 64 * 1024  # of an oversized frame, what is kept in the store as evidence
REUSE_PORT_ENV = "PASSERELLE_REUSE_PORT"  # "1": every listener reuses its port (engine/workers.py)


class Config(ComponentConfig):
    host: str = "127.0.0.1"
    """Listen address (`0.0.0.0` for every interface)."""
    port: int = Field(ge=0, le=65535)
    """Listen port (2575 is HL7's registered port)."""
    tls: TlsServerConfig | None = None
    """TLS settings; mutual TLS when `client_ca` is set. Without it, traffic is in clear text."""
    charset: str = ""
    """Character set when MSH-18 is empty: HL7 name (`8859/1`, `UNICODE UTF-8`) or Python codec."""
    max_frame_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)
    """Largest accepted frame; a larger one is refused and the connection closed."""
    idle_timeout: float = Field(default=600.0, gt=0)
    """Seconds a connection may stay silent before it is closed."""
    max_connections: int = Field(default=256, ge=1)
    """Concurrent connections; further ones are closed at once (bounded in-flight work)."""
    versions: list[str] = Field(default_factory=lambda: sorted(SUPPORTED_VERSIONS))
    """HL7 versions (MSH-12) accepted; others are answered AR with error 203."""
    processing_ids: list[str] = Field(default_factory=lambda: ["P", "T"])
    """Processing ids (MSH-11) accepted; others are answered AR with error 202."""
    reuse_port: bool = False
    """Open the port with SO_REUSEPORT, so several engine processes listen on it and the kernel spreads
    connections over them; set automatically for every listener by `passerelle run --workers N`."""


EXAMPLE = {
    "type": "mllp",
    "host": "0.0.0.0",
    "port": 2575,
    "charset": "8859/1",
    "tls": {
        "cert": "config/tls/server.pem",
        "key": "config/tls/server.key",
        "client_ca": "config/tls/labs-ca.pem",
        "allowed_subjects": ["CN=lis.lab-a.example"],
    },
}


@dataclass(frozen=True)
class Connection:
    meta: SourceMeta
    writer: asyncio.StreamWriter


class MllpSource:
    def __init__(self, config: Config, context: BuildContext) -> None:
        self.config = config
        self.channel = context.channel
        self.ssl = server_context(config.tls, context) if config.tls else None
        self.server: asyncio.Server | None = None
        self.connections: set[asyncio.Task[None]] = set()
        self.port = config.port
        self._deliver: Deliver | None = None
        self.meter = metrics.channel_meter(context.channel)  # ACK latency, connected peers

    async def start(self, deliver: Deliver) -> None:
        self._deliver = deliver
        self.server = await asyncio.start_server(
            self._serve,
            self.config.host,
            self.config.port,
            ssl=self.ssl,
            limit=2**16,
            ssl_handshake_timeout=30.0 if self.ssl else None,
            reuse_port=self.config.reuse_port or os.environ.get(REUSE_PORT_ENV) == "1",
        )
        self.port = self.server.sockets[0].getsockname()[1]
        log.info(
            "mllp_listening",
            channel=self.channel,
            host=self.config.host,
            port=self.port,
            tls=self.ssl is not None,
        )

    async def stop(self) -> None:
        """Stop accepting; let each connection finish the frame it is handling, then close it."""
        if self.server is not None:
            self.server.close()
        for task in list(self.connections):
            task.cancel()
        await asyncio.gather(*self.connections, return_exceptions=True)
        if self.server is not None:
            await self.server.wait_closed()

    # -- one connection --------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self.connections) >= self.config.max_connections:
            log.warning("mllp_connection_refused", channel=self.channel, reason="max_connections")
            await close(writer)
            return
        self.connections.add(task)
        self.meter.connection(+1)
        try:
            conn = self._identify(writer)
            if conn is not None:
                await self._read_frames(reader, conn)
        except asyncio.CancelledError:
            pass  # engine stopping: the frame being handled was finished or not ACKed
        finally:
            self.meter.connection(-1)
            self.connections.discard(task)
            await close(writer)

    def _identify(self, writer: asyncio.StreamWriter) -> Connection | None:
        peername = writer.get_extra_info("peername")
        peer = f"{peername[0]}:{peername[1]}" if peername else ""
        subject = peer_subject(writer.get_extra_info("ssl_object"))
        allowed = self.config.tls.allowed_subjects if self.config.tls else []
        if not subject_allowed(subject, allowed):
            log.warning("mllp_subject_refused", channel=self.channel, peer=peer, subject=subject)
            return None
        return Connection(SourceMeta("mllp", peer, subject), writer)

    async def _read_frames(self, reader: asyncio.StreamReader, conn: Connection) -> None:
        decoder = MllpDecoder(self.config.max_frame_bytes)
        while True:
            try:
                async with asyncio.timeout(self.config.idle_timeout):
                    data = await reader.read(2**16)
            except (TimeoutError, ConnectionError, ssl.SSLError):
                return
            if not data:
                return
            try:
                payloads = decoder.feed(data)
            except FrameError as err:
                await self._refuse_frame(conn, err, data)
                return
            for payload in payloads:
                if not await self._handle(payload, conn):
                    return

    async def _refuse_frame(self, conn: Connection, err: FrameError, data: bytes) -> None:
        """A frame we will not read to its end: keep evidence, tell the operators, close."""
        log.warning("mllp_frame_refused", channel=self.channel, peer=conn.meta.peer, reason=str(err))
        finding = Finding(f"MLLP framing error: {err}; the connection was closed", code="100")
        with contextlib.suppress(StoreError):
            await self._store_problem(data[:EVIDENCE_BYTES], conn.meta, finding)

    async def _store_problem(self, raw: bytes, meta: SourceMeta, finding: Finding) -> Receipt:
        assert self._deliver is not None
        return await self._deliver(Intake(raw, meta, HL7V2, problem=finding))

    # -- one message -----------------------------------------------------------------------------

    async def _handle(self, payload: bytes, conn: Connection) -> bool:
        """Store, then answer one message. False when the connection must close."""
        started = time.perf_counter()
        try:
            header = read_header(payload)
        except ParseError as err:
            log.warning("mllp_unreadable", channel=self.channel, peer=conn.meta.peer)
            with contextlib.suppress(StoreError):
                await self._store_problem(
                    payload, conn.meta, Finding(f"{err}; no ACK is possible", code="100")
                )
            return False
        intake = self.intake_for(payload, header, conn.meta)
        try:
            assert self._deliver is not None
            receipt = await self._deliver(intake)
        except StoreError as err:
            log.error("mllp_store_failed", channel=self.channel, peer=conn.meta.peer, error=str(err))
            await self._write(conn, failure_ack(header, STORE_FAILURE))
            return True
        except Exception as err:  # a bug behind deliver: answer AR so the sender keeps the message
            log.error("mllp_intake_bug", channel=self.channel, peer=conn.meta.peer, error=type(err).__name__)
            await self._write(conn, failure_ack(header, INTERNAL_FAILURE))
            return True
        await self._answer(conn, header, receipt, intake)
        self.meter.acknowledged(time.perf_counter() - started)
        return True

    def intake_for(self, payload: bytes, header: Header, meta: SourceMeta) -> Intake:
        """The Intake this listener builds for a frame (also used by `passerelle test`)."""
        problem, codec = self._envelope_problem(payload, header)
        return Intake(
            payload,
            meta,
            HL7V2,
            control_id=header.control_id,
            sender=header.sender,
            charset=codec,
            problem=problem,
            respond=self.responder(payload, header, codec, problem is not None),
        )

    def responder(
        self, payload: bytes, header: Header, codec: str, problem: bool
    ) -> Callable[[Verdict], bytes]:
        """How the first answer to this message is rendered. Subclasses answering queries
        (PIX/PDQ) override this to return their response instead of an ACK."""
        return ack_responder(header, codec, problem)

    def _envelope_problem(self, payload: bytes, header: Header) -> tuple[Finding | None, str]:
        """What makes a message unacceptable before any step runs, and the codec to read it with."""
        if not header.control_id:
            return Finding("MSH-10 (message control id) is empty", code="101", location="MSH^1^10"), "latin-1"
        if header.version not in self.config.versions:
            return Finding(
                f'HL7 version "{header.version}" is not accepted here (accepted: '
                f"{', '.join(self.config.versions)})",
                code="203",
                location="MSH^1^12",
            ), "latin-1"
        if header.processing_id not in self.config.processing_ids:
            return Finding(
                f'processing id "{header.processing_id}" is not accepted here',
                code="202",
                location="MSH^1^11",
            ), "latin-1"
        try:
            codec = codec_for(header.charset, self.config.charset)
            payload.decode(codec)
        except (ParseError, LookupError, UnicodeDecodeError) as err:
            return Finding(decode_problem(payload, header, err), code="102", location="MSH^1^18"), "latin-1"
        return None, codec

    async def _answer(self, conn: Connection, header: Header, receipt: Receipt, intake: Intake) -> None:
        if not header.enhanced:
            if receipt.response is not None:
                await self._write(conn, receipt.response)
            return
        if wanted(header.accept_ack or "AL", intake.problem is None) and receipt.response is not None:
            await self._write(conn, receipt.response)
        if intake.problem is not None or header.app_ack in ("", "NE") or receipt.processed is None:
            return
        verdict = await receipt.processed
        if wanted(header.app_ack, verdict.accepted):
            await self._write(conn, build_ack(header, verdict.code, verdict.findings, codec=intake.charset))

    async def _write(self, conn: Connection, data: bytes) -> None:
        conn.writer.write(frame(data))
        await conn.writer.drain()


def ack_responder(header: Header, codec: str, envelope_problem: bool) -> Callable[[Verdict], bytes]:
    """How this message's first answer is rendered (stored with the message in the same commit)."""

    def respond(verdict: Verdict) -> bytes:
        if not header.enhanced:
            return build_ack(header, verdict.code, verdict.findings, codec=codec)
        if envelope_problem:
            return build_ack(header, COMMIT_CODES[verdict.code], verdict.findings, codec=codec)
        return build_ack(header, "CA", (), codec=codec)

    return respond


STORE_FAILURE = Finding(
    "the message could not be stored (receiver storage failure); resend it unchanged", code="207"
)
INTERNAL_FAILURE = Finding("internal error while accepting the message; resend it unchanged", code="207")


def failure_ack(header: Header, finding: Finding) -> bytes:
    return build_ack(header, "CR" if header.enhanced else "AR", (finding,), codec="latin-1")


def wanted(condition: str, success: bool) -> bool:
    """HL7 table 0155: AL always, NE never, ER only on error, SU only on success."""
    return condition == "AL" or (condition == "ER" and not success) or (condition == "SU" and success)


def decode_problem(payload: bytes, header: Header, err: Exception) -> str:
    if isinstance(err, UnicodeDecodeError):
        segment = payload[: err.start].count(b"\r") + 1
        declared = header.charset or "the configured default"
        return (
            f"byte 0x{payload[err.start]:02X} at offset {err.start} (segment {segment}) is not valid in "
            f"{declared} ({err.encoding})"
        )
    return str(err)


async def close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(writer.wait_closed(), 5.0)
