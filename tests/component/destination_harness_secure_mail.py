"""Contract-suite harness for the `secure_mail` destination: a real SMTP server (aiosmtpd,
STARTTLS + AUTH) answering DATA as the scenario says; what it accepted is decrypted with the
recipient's key and verified, and the attachment returned."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import ClassVar

from cryptography import x509

from engine.connectors.smtp.mail import attachments, enveloped_der, parse, signed_parts
from engine.connectors.smtp.smime import Identity, decrypt, verify
from tests.support.engine_process import free_port
from tests.support.smime_pki import PLATFORM_EMAIL, SmimePki, make_smime_pki
from tests.support.smtp_server import SilentServer, SmtpServer

ANSWERS = {"accept": "250 2.0.0 queued", "retryable": "451 4.3.0 try later", "permanent": "554 5.7.1 refused"}


def destination_config(pki: SmimePki, port: int, recipient: str) -> dict[str, object]:
    return {
        "host": "127.0.0.1",
        "port": port,
        "tls": {"ca": str(pki.tls.ca)},
        "username": SmtpServer.user,
        "password": SmtpServer.password,
        "sender": PLATFORM_EMAIL,
        "signer": {"cert": str(pki.platform.cert), "key": str(pki.platform.key)},
        "recipient": recipient,
        "connect_timeout": 2,
        "timeout": 1,
    }


def opened(pki: SmimePki, mail: bytes) -> list[bytes]:
    """The attachments of a mail sent to the GP, after decryption and signature verification."""
    content, signature = signed_parts(
        decrypt(enveloped_der(parse(mail)), Identity.load(pki.gp.cert, pki.gp.key))
    )
    verify(content, signature, x509.load_pem_x509_certificate(pki.platform.cert.read_bytes()))
    return [a.data for a in attachments(content)]


class SecureMailHarness:
    type: ClassVar[str] = "secure_mail"

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.pki: SmimePki | None = None
        self.servers: list[SmtpServer | SilentServer] = []
        self.accepting: SmtpServer | None = None

    async def config(self, scenario: str) -> dict[str, object]:
        if self.pki is None:
            self.pki = await asyncio.to_thread(make_smime_pki, self.tmp_path)
        if scenario == "unavailable":
            return destination_config(self.pki, free_port(), self.pki.gp.ehealth_id)
        server = SilentServer() if scenario == "silent" else SmtpServer(self.pki.tls, ANSWERS[scenario])
        self.servers.append(server)
        if scenario == "accept" and isinstance(server, SmtpServer):
            self.accepting = server
        return destination_config(self.pki, server.port, self.pki.gp.ehealth_id)

    async def delivered(self) -> list[bytes]:
        if self.accepting is None or self.pki is None:
            return []
        pki = self.pki
        return [data for _, _, mail in self.accepting.mails for data in opened(pki, mail)]

    async def stop(self) -> None:
        for server in self.servers:
            await asyncio.to_thread(server.stop)
