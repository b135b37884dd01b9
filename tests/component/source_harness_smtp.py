"""Contract-suite harness for the `smtp` source: a real SMTP client (smtplib, STARTTLS) sending
a signed and encrypted mail from a professional of the directory.

"pending": no reply to DATA yet; "accepted": 250; "kept_for_retry": 451; "rejected": 5xx
with the channel's reason in the reply."""

from __future__ import annotations

import asyncio
import re
import smtplib
import ssl
from concurrent.futures import Future
from pathlib import Path
from typing import ClassVar

from cryptography import x509

from engine.connectors.smtp.mail import document_entity, enveloped_message
from engine.connectors.smtp.smime import Identity, encrypt, sign
from tests.support.engine_process import free_port
from tests.support.smime_pki import PLATFORM_DOMAIN, SmimePki, make_smime_pki

CDA_SAMPLE = (
    b'<ClinicalDocument xmlns="urn:hl7-org:v3"><id root="1.2.3" extension="contract"/></ClinicalDocument>'
)


def smime_mail(
    pki: SmimePki, document: bytes = CDA_SAMPLE, message_id: str = "<contract-1@practice.test>"
) -> bytes:
    """A mail from the directory's GP to the platform: signed, then encrypted, as clients do."""
    entity = document_entity(document, "application/cda+xml", "letter.xml", "Discharge letter attached.")
    signed = sign(entity, Identity.load(pki.gp.cert, pki.gp.key))
    platform = x509.load_pem_x509_certificate(pki.platform.cert.read_bytes())
    headers = {"From": pki.gp.email, "To": pki.platform.email, "Subject": "Letter", "Message-ID": message_id}
    return enveloped_message(encrypt(signed, platform, "pkcs1v15"), headers)


def smtp_send(port: int, ca: Path, sender: str, mail: bytes, to: str = f"inbox@{PLATFORM_DOMAIN}") -> None:
    """Send one mail over STARTTLS; raises smtplib's errors (their code is the server's reply)."""
    context = ssl.create_default_context(cafile=str(ca))
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as client:
        client.starttls(context=context)
        client.sendmail(sender, [to], re.sub(rb"\r?\n", b"\r\n", mail))  # SMTP lines end in CRLF


def source_config(pki: SmimePki, port: int) -> dict[str, object]:
    return {
        "port": port,
        "domains": [PLATFORM_DOMAIN],
        "tls": {"cert": str(pki.tls.server_cert), "key": str(pki.tls.server_key)},
        "identity": {"cert": str(pki.platform.cert), "key": str(pki.platform.key)},
    }


class SmtpHarness:
    type: ClassVar[str] = "smtp"

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.pki: SmimePki | None = None
        self.port = 0
        self.sent: Future[None] | None = None

    async def start(self) -> dict[str, object]:
        self.pki = await asyncio.to_thread(make_smime_pki, self.tmp_path)
        self.port = free_port()
        return source_config(self.pki, self.port)

    def sample(self) -> bytes:
        assert self.pki is not None
        return smime_mail(self.pki)

    async def offer(self, payload: bytes) -> None:
        assert self.pki is not None
        future: Future[None] = Future()
        self.sent = future
        pki = self.pki

        def run() -> None:
            try:
                smtp_send(self.port, pki.tls.ca, pki.gp.email, payload)
                future.set_result(None)
            except Exception as err:  # the reply is what the test observes
                future.set_exception(err)

        asyncio.get_running_loop().run_in_executor(None, run)

    async def observed(self) -> str:
        assert self.sent is not None
        if not self.sent.done():
            return "pending"
        err = self.sent.exception()
        if err is None:
            return "accepted"
        code = getattr(err, "smtp_code", 0)
        if 400 <= code < 500:
            return "kept_for_retry"
        if 500 <= code < 600 and b"PID-3 is empty" in getattr(err, "smtp_error", b""):
            return "rejected"
        return f"unexpected answer {err!r}"

    async def stop(self) -> None:
        return None
