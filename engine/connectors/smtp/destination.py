"""Secure-mail destination: the document, signed and encrypted (S/MIME), to a professional.

The recipient is an eHealth ID (fixed in the config, or the CDA's
informationRecipient/intendedRecipient/id), looked up in the provider directory for the
address and certificate. A recipient not in the directory, without a certificate, or whose
certificate is expired or not from a trusted CA is a PermanentError before anything is sent.

The mail: a plain-text note (the subject and body are fixed text: never patient data), the
document as an attachment, signed with the platform's certificate (multipart/signed), then
encrypted for the recipient (AES-256-CBC; RSA-OAEP or PKCS#1 v1.5 key transport per the
recipient's certificate). The Message-ID is stable per stored message, so a retried delivery
can be recognised by the receiver.

SMTP: STARTTLS is required (a server without it is an error, never clear text), then AUTH
when configured. Replies to MAIL/RCPT/DATA: 2xx sent; 4xx RetryableError; 5xx PermanentError
with the server's reason. A refused login is retryable (our credentials are wrong: operators
fix them, the messages wait). Connection failures and timeouts are retryable. smtplib runs in
a worker thread; every socket operation has a timeout, so a cancelled send ends by itself.
"""

from __future__ import annotations

import asyncio
import smtplib
import ssl
from email.utils import formatdate

from pydantic import Field

from engine.connectors.file.destination import EXTENSIONS
from engine.connectors.smtp.mail import document_entity, enveloped_message
from engine.connectors.smtp.smime import (
    Identity,
    IdentityConfig,
    SmimeError,
    encrypt,
    key_transport_for,
    sign,
)
from engine.connectors.tls import TlsClientConfig, client_context
from engine.contracts import BuildContext, ComponentConfig
from engine.directory import Provider, directory_from
from engine.errors import ParseError, PermanentError, RetryableError
from engine.formats.cda import NS, parse_xml
from engine.message import CDA, Message

RECIPIENT_PATH = "cda:informationRecipient/cda:intendedRecipient/cda:id"


class Config(ComponentConfig):
    host: str
    """SMTP relay (submission server) host name."""
    port: int = Field(default=587, ge=1, le=65535)
    """SMTP port (587: submission with STARTTLS)."""
    tls: TlsClientConfig = TlsClientConfig()
    """STARTTLS settings (always required): CA bundle to verify the relay, optional client cert."""
    username: str = ""
    """SMTP AUTH user name (empty: no authentication)."""
    password: str = ""
    """SMTP AUTH password; use `${file:config/secrets/smtp-password}`."""
    sender: str = Field(pattern=r"^[^@\s]+@[^@\s]+$")
    """The platform's secure-mail address (From and envelope sender)."""
    signer: IdentityConfig
    """The platform's S/MIME certificate and key, used to sign."""
    recipient: str = ""
    """eHealth ID of the recipient; empty: the CDA's informationRecipient/intendedRecipient/id."""
    recipient_id_root: str = ""
    """With a CDA recipient: only an intendedRecipient id with this root (OID) counts."""
    subject: str = "Secure medical document"
    """Subject line: fixed text, never patient data (it is not encrypted)."""
    body: str = "Please find the attached medical document.\nThis message was sent by Passerelle."
    """Plain-text note sent with the document (inside the encryption)."""
    filename: str = "document-{id}.{ext}"
    """Attachment name: {id} (store id), {control_id}, {ext} (from the content type)."""
    helo: str = ""
    """Name sent in EHLO (default: this machine's name)."""
    connect_timeout: float = Field(default=10.0, gt=0)
    """Seconds to connect."""
    timeout: float = Field(default=60.0, gt=0)
    """Seconds to wait for each reply of the server."""


EXAMPLE = {
    "type": "secure_mail",
    "name": "gp",
    "host": "smtp.secure.platform.example",
    "port": 587,
    "tls": {"ca": "config/tls/dev-ca.pem"},
    "username": "passerelle",
    "password": "${file:config/secrets/smtp-password}",
    "sender": "relay@secure.passerelle.example",
    "signer": {"cert": "config/tls/dev-platform.pem", "key": "config/tls/dev-platform.key"},
}


class SecureMailDestination:
    def __init__(self, config: Config, context: BuildContext) -> None:
        self.config = config
        self.channel = context.channel
        self.where = f"{config.host}:{config.port}"
        self.ssl = client_context(config.tls, context)
        chain = context.path(config.signer.chain) if config.signer.chain else None
        self.identity = Identity.load(
            context.path(config.signer.cert), context.path(config.signer.key), chain
        )
        self.directory = directory_from(context)

    async def send(self, message: Message) -> bytes | None:
        provider = self.recipient(message)
        mail = self.compose(message, provider)
        reply = await asyncio.to_thread(self.transmit, provider.email, mail)
        return reply.encode("utf-8", "replace")

    async def close(self) -> None:
        return None

    # -- what is sent ----------------------------------------------------------------------------

    def recipient(self, message: Message) -> Provider:
        """The directory entry to send to, with a usable certificate, or PermanentError."""
        ehealth_id = self.config.recipient or cda_recipient(message, self.config.recipient_id_root)
        if not ehealth_id:
            raise PermanentError(
                "no recipient: the document names no intendedRecipient id, and none is configured"
            )
        provider = self.directory.get(ehealth_id)
        if provider is None:
            raise PermanentError(f"recipient eHealth ID {ehealth_id} is not in the provider directory")
        problem = self.directory.certificate_problem(provider)
        if problem:
            raise PermanentError(f"cannot encrypt for {ehealth_id}: the certificate {problem}")
        return provider

    def compose(self, message: Message, provider: Provider) -> bytes:
        assert provider.certificate is not None  # recipient() checked it
        entity = document_entity(
            message.content(), message.content_type, self.filename(message), self.config.body
        )
        try:
            transport = key_transport_for(provider.certificate, provider.key_transport)
            der = encrypt(sign(entity, self.identity), provider.certificate, transport)
        except SmimeError as err:
            raise PermanentError(f"cannot encrypt for {provider.ehealth_id}: {err}") from err
        return enveloped_message(der, self.headers(message, provider))

    def headers(self, message: Message, provider: Provider) -> dict[str, str]:
        domain = self.config.sender.rpartition("@")[2]
        return {
            "From": self.config.sender,
            "To": provider.email,
            "Subject": self.config.subject,
            "Date": formatdate(usegmt=True),
            "Message-ID": f"<passerelle.{message.channel}.{message.id or 0}@{domain}>",
        }

    def filename(self, message: Message) -> str:
        try:
            return self.config.filename.format(
                id=message.id or 0,
                control_id=message.control_id or "none",
                ext=EXTENSIONS.get(message.content_type, "bin"),
            )
        except (KeyError, IndexError, ValueError) as err:
            raise PermanentError(f"filename template {self.config.filename!r} is invalid: {err}") from err

    # -- SMTP (in a worker thread) ---------------------------------------------------------------

    def transmit(self, to: str, mail: bytes) -> str:
        """Send one mail; the server's final reply, or the error the queue needs."""
        try:
            with smtplib.SMTP(
                self.config.host, self.config.port, self.config.helo or None, self.config.connect_timeout
            ) as smtp:
                smtp._host = self.config.tls.server_name or self.config.host  # type: ignore[attr-defined]  # STARTTLS checks it
                if smtp.sock is not None:
                    smtp.sock.settimeout(self.config.timeout)
                self.secure(smtp)
                return self.exchange(smtp, to, mail)
        except smtplib.SMTPResponseException as err:
            raise classify(err.smtp_code, err.smtp_error, self.where, "answered") from err
        except (smtplib.SMTPException, OSError) as err:
            raise RetryableError(f"cannot send to {self.where}: {describe(err)}") from err

    def secure(self, smtp: smtplib.SMTP) -> None:
        smtp.ehlo()
        if not smtp.has_extn("starttls"):
            raise RetryableError(
                f"{self.where} does not offer STARTTLS; secure mail is never sent in clear text"
            )
        smtp.starttls(context=self.ssl)
        smtp.ehlo()
        if not self.config.username:
            return
        try:
            smtp.login(self.config.username, self.config.password)
        except smtplib.SMTPAuthenticationError as err:
            refusal = f"{err.smtp_code} {text(err.smtp_error)}"
            raise RetryableError(
                f"{self.where} refused our login ({refusal}): check the credentials"
            ) from err

    def exchange(self, smtp: smtplib.SMTP, to: str, mail: bytes) -> str:
        for command, (code, reply) in (
            ("MAIL FROM", smtp.mail(self.config.sender)),
            ("RCPT TO", smtp.rcpt(to)),
        ):
            if code >= 300:
                raise classify(code, reply, self.where, f"refused {command} with")
        code, reply = smtp.data(mail)
        if code >= 300:
            raise classify(code, reply, self.where, "refused the message with")
        return f"{code} {text(reply)}"


def classify(code: int, reply: bytes | str, where: str, what: str) -> RetryableError | PermanentError:
    """4xx (and anything odd) -> retry; 5xx -> permanent, with the server's reason."""
    detail = f"{where} {what} {code} {text(reply)}"
    return PermanentError(detail) if 500 <= code < 600 else RetryableError(detail)


def text(reply: bytes | str) -> str:
    value = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else reply
    return " ".join(value.split())


def describe(err: BaseException) -> str:
    if isinstance(err, ssl.SSLError):
        return f"TLS failed: {err.reason or err}"
    return getattr(err, "strerror", None) or str(err) or type(err).__name__


def cda_recipient(message: Message, root: str) -> str:
    """The eHealth ID of the CDA's intended recipient ("" when none or not a CDA)."""
    if message.content_type != CDA:
        return ""
    try:
        tree = parse_xml(message.content())
    except ParseError:
        return ""
    for element in tree.getroot().findall(RECIPIENT_PATH, NS):
        if not root or element.get("root") == root:
            return str(element.get("extension", ""))
    return ""
