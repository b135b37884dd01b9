"""MLLP sender: keeps connections open, sends one frame, waits for the matching ACK.

Outcome mapping (HL7 original and enhanced mode): AA/CA -> sent; AE/CE -> PermanentError
(the receiver says the content is wrong: resending it unchanged cannot help); AR/CR,
timeouts, refused or dropped connections -> RetryableError. An ACK whose MSA-2 is not our
MSH-10 (e.g. a late application ACK) is skipped; a connection that misbehaves is dropped
and a fresh one opened for the next attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl

from pydantic import Field

from engine.connectors.mllp.framing import MllpDecoder, frame
from engine.connectors.tls import TlsClientConfig, client_context
from engine.contracts import BuildContext, ComponentConfig
from engine.errors import FrameError, ParseError, PermanentError, RetryableError
from engine.formats.hl7v2 import parse, read_header
from engine.message import Message

Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class Config(ComponentConfig):
    host: str
    """Receiver host name or address."""
    port: int = Field(ge=1, le=65535)
    """Receiver port."""
    tls: TlsClientConfig | None = None
    """TLS settings (server verification, optional client certificate)."""
    connect_timeout: float = Field(default=10.0, gt=0)
    """Seconds to establish a connection (and TLS handshake)."""
    ack_timeout: float = Field(default=30.0, gt=0)
    """Seconds to wait for the ACK after sending."""
    max_frame_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)
    """Largest ACK accepted from the receiver."""


EXAMPLE = {
    "type": "mllp",
    "name": "ris",
    "host": "ris.hospital.example",
    "port": 2575,
    "tls": {"ca": "config/tls/hospital-ca.pem"},
}


class MllpDestination:
    def __init__(self, config: Config, context: BuildContext) -> None:
        self.config = config
        self.where = f"{config.host}:{config.port}"
        self.ssl = client_context(config.tls, context) if config.tls else None
        self._idle: list[Stream] = []

    async def send(self, message: Message) -> bytes | None:
        payload = message.content()
        try:
            control_id = read_header(payload).control_id
        except ParseError as err:
            raise PermanentError(f"not an HL7 v2 message, cannot send over MLLP: {err}") from err
        stream = await self._connection()
        try:
            ack = await self._exchange(stream, payload, control_id)
        except BaseException:
            await discard(stream)
            raise
        self._idle.append(stream)
        return check_ack(ack, self.where)

    async def close(self) -> None:
        while self._idle:
            await discard(self._idle.pop())

    async def _connection(self) -> Stream:
        while self._idle:
            stream = self._idle.pop()
            if not stream[0].at_eof() and not stream[1].is_closing():
                return stream
            await discard(stream)
        try:
            async with asyncio.timeout(self.config.connect_timeout):
                return await asyncio.open_connection(
                    self.config.host,
                    self.config.port,
                    ssl=self.ssl,
                    server_hostname=(self.config.tls.server_name or None) if self.config.tls else None,
                )
        except (OSError, TimeoutError, ssl.SSLError) as err:
            raise RetryableError(f"cannot connect to {self.where}: {describe(err)}") from err

    async def _exchange(self, stream: Stream, payload: bytes, control_id: str) -> bytes:
        reader, writer = stream
        decoder = MllpDecoder(self.config.max_frame_bytes)
        try:
            writer.write(frame(payload))
            async with asyncio.timeout(self.config.ack_timeout):
                await writer.drain()
                return await read_matching_ack(reader, decoder, control_id)
        except TimeoutError as err:
            raise RetryableError(f"no ACK from {self.where} within {self.config.ack_timeout:g} s") from err
        except (OSError, ssl.SSLError) as err:
            raise RetryableError(f"connection to {self.where} failed: {describe(err)}") from err
        except FrameError as err:
            raise RetryableError(f"malformed MLLP answer from {self.where}: {err}") from err
        except UnreadableAck as err:
            raise RetryableError(f"{self.where} answered with an unreadable ACK: {err}") from err


async def read_matching_ack(reader: asyncio.StreamReader, decoder: MllpDecoder, control_id: str) -> bytes:
    """Frames until one acknowledges `control_id` (MSA-2); others are late answers, skipped."""
    while True:
        data = await reader.read(2**16)
        if not data:
            raise ConnectionResetError("the receiver closed the connection before answering")
        for payload in decoder.feed(data):
            if ack_control_id(payload) == control_id:
                return payload


def ack_control_id(payload: bytes) -> str:
    try:
        return parse(payload).get("MSA-2")
    except ParseError as err:
        raise UnreadableAck(str(err)) from err


class UnreadableAck(Exception):
    """The receiver's answer cannot be read as HL7."""


def check_ack(ack: bytes, where: str) -> bytes:
    msg = parse(ack)  # readable: ack_control_id parsed it already
    code = msg.get("MSA-1")
    if code in ("AA", "CA"):
        return ack
    reason = ack_reason(msg.get_all("ERR[*]-8"), msg.get("MSA-3"), msg.get_all("ERR[*]-1"))
    if code in ("AE", "CE"):
        raise PermanentError(f"{where} answered {code}: {reason}")
    raise RetryableError(f"{where} answered {code or 'an ACK without MSA-1'}: {reason}")


def ack_reason(err8: list[str], msa3: str, err1: list[str]) -> str:
    texts = [t for t in (*err8, msa3, *err1) if t]
    return "; ".join(dict.fromkeys(texts)) or "no reason given"


def describe(err: BaseException) -> str:
    return getattr(err, "strerror", None) or str(err) or type(err).__name__


async def discard(stream: Stream) -> None:
    stream[1].close()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(stream[1].wait_closed(), 2.0)
