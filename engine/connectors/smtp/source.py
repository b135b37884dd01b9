"""SMTP listener for the platform's secure address: S/MIME mail in, CDA documents stored.

An aiosmtpd server on the engine's own event loop. STARTTLS is required before MAIL; RCPT is
accepted only for the platform's domains. At DATA, the mail is checked and answered only after
the store committed (the reply is the line after `await deliver(...)`):

- decrypt with the platform's key (not encrypted, encrypted for someone else or damaged:
  refused); verify the signature with the certificate the provider directory holds for the
  signer (unsigned, unknown signer, changed content, expired or untrusted certificate, or a
  From address that is not the signer's: refused);
- each accepted attachment (CDA: application/cda+xml, or XML) becomes one stored message:
  control id `<Message-ID>#<n>`, sender the signer's eHealth ID, `tls_subject` the signer's
  certificate subject. A mail without one is refused.

Answers: 250 once every document is stored; a refusal (above, or a rejected verdict from the
channel's steps) is 554 5.7.1 (security) / 550 5.6.0 (content) with the reason, and the mail
is stored as `rejected` (evidence); a store failure is 451 4.3.0 (the sender's MTA retries,
and documents already stored are recognised as duplicates then). Replies carry reasons,
never content. Other attachments of an accepted mail are not routed.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import weakref
from dataclasses import dataclass
from email.message import Message
from email.utils import parseaddr
from typing import Any

import structlog
from aiosmtpd.smtp import SMTP, Envelope, Session
from pydantic import Field

from engine.connectors.smtp.mail import Attachment, attachments, enveloped_der, parse, signed_parts
from engine.connectors.smtp.smime import Identity, IdentityConfig, SmimeError, decrypt, signer_refs, verify
from engine.connectors.tls import TlsServerConfig, server_context
from engine.contracts import BuildContext, ComponentConfig, Deliver, Intake, Verdict
from engine.directory import Directory, Provider, directory_from
from engine.errors import Finding, StoreError
from engine.message import CDA, SourceMeta

log = structlog.get_logger("passerelle.smtp")

MAIL = "message/rfc822"
SECURITY = "smime"  # Finding code of S/MIME refusals (answered 554 5.7.1)
CONTENT = "mail"  # Finding code of content refusals (answered 550 5.6.0)
ACCEPTED = "250 2.0.0 accepted"
STORE_FAILED = "451 4.3.0 the message could not be stored; try again later"
INTERNAL = "451 4.3.0 internal error while accepting the message; try again later"
MAX_REPLY = 400
_UNPRINTABLE = re.compile(r"[^\x20-\x7e]+")


class Config(ComponentConfig):
    host: str = "127.0.0.1"
    """Listen address (`0.0.0.0` for every interface)."""
    port: int = Field(ge=0, le=65535)
    """Listen port (25 for a public MX; any port behind the platform's mail gateway)."""
    hostname: str = ""
    """Name in the greeting and EHLO answer (default: this machine's name)."""
    domains: list[str] = Field(min_length=1)
    """Mail domains of the platform; RCPT to any other domain is refused (no relaying)."""
    tls: TlsServerConfig
    """STARTTLS certificate and key; STARTTLS is required before any mail is accepted."""
    identity: IdentityConfig
    """The platform's S/MIME certificate and RSA key: mail must be encrypted for it."""
    document_types: list[str] = Field(default_factory=lambda: [CDA, "application/xml", "text/xml"])
    """Attachment content types routed as CDA documents (also any attachment named *.xml)."""
    max_message_bytes: int = Field(default=25 * 1024 * 1024, ge=1024)
    """Largest mail accepted (SIZE); a larger one is refused with 552."""
    idle_timeout: float = Field(default=300.0, gt=0)
    """Seconds a connection may stay silent before it is closed."""


EXAMPLE = {
    "type": "smtp",
    "port": 2525,
    "domains": ["secure.passerelle.example"],
    "tls": {"cert": "config/tls/dev-smtp.pem", "key": "config/tls/dev-smtp.key"},
    "identity": {"cert": "config/tls/dev-platform.pem", "key": "config/tls/dev-platform.key"},
}


class Refused(Exception):
    """This mail is refused; `finding` says why (sent to the peer and stored)."""

    def __init__(self, finding: Finding) -> None:
        super().__init__(finding.text)
        self.finding = finding


@dataclass(frozen=True)
class Opened:
    """A mail that passed every check: who signed it and the documents to store."""

    signer: Provider
    message_id: str
    documents: list[Attachment]


class SmtpSource:
    def __init__(self, config: Config, context: BuildContext) -> None:
        self.config = config
        self.channel = context.channel
        self.ssl = server_context(config.tls, context)
        self.identity = Identity.load(context.path(config.identity.cert), context.path(config.identity.key))
        self.directory: Directory = directory_from(context)
        self.domains = {d.lower() for d in config.domains}
        self.server: asyncio.Server | None = None
        self.port = config.port
        self.protocols: weakref.WeakSet[SMTP] = weakref.WeakSet()
        self.in_flight: set[asyncio.Task[Any]] = set()
        self._deliver: Deliver | None = None

    async def start(self, deliver: Deliver) -> None:
        self._deliver = deliver
        logging.getLogger("mail.log").setLevel(logging.WARNING)  # aiosmtpd logs every connection
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(self._protocol, self.config.host, self.config.port)
        self.port = self.server.sockets[0].getsockname()[1]
        log.info("smtp_listening", channel=self.channel, host=self.config.host, port=self.port)

    async def stop(self) -> None:
        """Stop accepting; let mail being stored finish (its sender gets the answer), then close."""
        if self.server is not None:
            self.server.close()
        if self.in_flight:
            await asyncio.wait(self.in_flight, timeout=30)
        for protocol in list(self.protocols):
            if protocol.transport is not None:
                protocol.transport.close()
        if self.server is not None:
            await self.server.wait_closed()

    def _protocol(self) -> SMTP:
        protocol = SMTP(
            Handler(self),
            hostname=self.config.hostname or None,
            tls_context=self.ssl,
            require_starttls=True,
            data_size_limit=self.config.max_message_bytes,
            timeout=self.config.idle_timeout,
            loop=asyncio.get_running_loop(),
        )
        self.protocols.add(protocol)
        return protocol

    # -- one mail --------------------------------------------------------------------------------

    async def receive(self, mail: bytes, peer: str) -> str:
        """Check, store and answer one mail: the SMTP reply, sent only after the commit."""
        task = asyncio.current_task()
        assert task is not None
        self.in_flight.add(task)
        try:
            return await self._receive(mail, SourceMeta("smtp", peer))
        finally:
            self.in_flight.discard(task)

    async def _receive(self, mail: bytes, meta: SourceMeta) -> str:
        try:
            opened = self.open(mail)
        except Refused as err:
            log.warning("smtp_mail_refused", channel=self.channel, peer=meta.peer, reason=err.finding.text)
            return await self._store([Intake(mail, meta, MAIL, problem=err.finding, respond=reply_bytes)])
        return await self._store(
            self.intakes(opened, SourceMeta("smtp", meta.peer, subject_of(opened.signer)))
        )

    async def _store(self, intakes: list[Intake]) -> str:
        assert self._deliver is not None
        for intake in intakes:
            try:
                receipt = await self._deliver(intake)
            except StoreError:
                log.error("smtp_store_failed", channel=self.channel, peer=intake.meta.peer)
                return STORE_FAILED
            except Exception as err:  # a bug behind deliver: a 4xx keeps the mail at the sender
                log.error("smtp_intake_bug", channel=self.channel, error=type(err).__name__)
                return INTERNAL
            if receipt.verdict.status == "rejected":
                return reply(receipt.verdict)
        return f"{ACCEPTED}: {len(intakes)} document(s) stored"

    def intakes(self, opened: Opened, meta: SourceMeta) -> list[Intake]:
        return [
            Intake(
                doc.data,
                meta,
                CDA,
                control_id=f"{opened.message_id}#{index}",
                sender=opened.signer.ehealth_id,
                respond=reply_bytes,
            )
            for index, doc in enumerate(opened.documents, start=1)
        ]

    # -- the checks ------------------------------------------------------------------------------

    def open(self, raw: bytes) -> Opened:
        """Decrypt, verify and unpack one mail, or raise Refused with the reason."""
        mail = parse(raw)
        try:
            entity = decrypt(enveloped_der(mail), self.identity)
            content, signature = signed_parts(entity)
            signer = self.signer(signature)
            verify(content, signature, signer.certificate)  # type: ignore[arg-type]
        except SmimeError as err:
            raise Refused(Finding(str(err), code=SECURITY)) from err
        self.check_from(mail, signer)
        documents = [a for a in attachments(content) if self.is_document(a)]
        if not documents:
            raise Refused(Finding("no CDA document attached (application/cda+xml or *.xml)", code=CONTENT))
        message_id = str(mail.get("Message-ID", "")).strip() or hashlib.sha256(raw).hexdigest()[:32]
        return Opened(signer, message_id, documents)

    def signer(self, signature: bytes) -> Provider:
        """The directory entry of a signer, with a certificate usable now."""
        for ref in signer_refs(signature):
            provider = self.directory.by_signer(ref.issuer_der, ref.serial, ref.key_id)
            if provider is None:
                continue
            problem = self.directory.certificate_problem(provider)
            if problem:
                raise SmimeError(f"the signer's certificate {problem}")
            return provider
        raise SmimeError("the signer is not a professional in the provider directory")

    def check_from(self, mail: Message, signer: Provider) -> None:
        """RFC 8551 3.1: the From address must be the signer's (here: their directory address)."""
        address = parseaddr(str(mail.get("From", "")))[1].lower()
        if address != signer.email.lower():
            raise Refused(Finding("the From address is not the address of the signer", code=SECURITY))

    def is_document(self, attachment: Attachment) -> bool:
        return attachment.content_type in self.config.document_types or attachment.filename.lower().endswith(
            ".xml"
        )


class Handler:
    """aiosmtpd hooks: RCPT restricted to the platform's domains, DATA stored then answered."""

    def __init__(self, source: SmtpSource) -> None:
        self.source = source

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        if address.rpartition("@")[2].lower() not in self.source.domains:
            return "550 5.7.1 relaying denied: not a mailbox of this platform"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        peer = session.peer
        where = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer or "")
        content = envelope.original_content or b""
        return await self.source.receive(bytes(content), where)


def reply(verdict: Verdict) -> str:
    """The SMTP answer to an intake verdict (one line, printable ASCII, bounded)."""
    if verdict.status != "rejected":
        return ACCEPTED
    reason = "; ".join(f.text for f in verdict.findings) or "refused"
    reason = _UNPRINTABLE.sub(" ", reason)[:MAX_REPLY].strip()
    security = any(f.code == SECURITY for f in verdict.findings)
    return f"{'554 5.7.1' if security else '550 5.6.0'} {reason}"


def reply_bytes(verdict: Verdict) -> bytes:
    return reply(verdict).encode("ascii")


def subject_of(provider: Provider) -> str:
    return provider.certificate.subject.rfc4514_string() if provider.certificate is not None else ""
