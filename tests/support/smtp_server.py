"""A real SMTP server on 127.0.0.1 for the secure-mail tests: aiosmtpd in its own thread, with
STARTTLS required, AUTH (PLAIN/LOGIN), a chosen answer to DATA, and the mails it accepted.
Also a "silent" server that accepts connections and never answers (timeouts)."""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from tests.support.engine_process import free_port
from tests.support.pki import Pki


class Recorder:
    def __init__(self, answer: str) -> None:
        self.answer = answer
        self.mails: list[tuple[str, list[str], bytes]] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.answer.startswith("250"):
            content = envelope.original_content or b""
            self.mails.append((envelope.mail_from or "", list(envelope.rcpt_tos), bytes(content)))
        return self.answer


class Credentials:
    def __init__(self, user: str, password: str) -> None:
        self.expected = (user.encode(), password.encode())

    def __call__(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        ok = isinstance(data, LoginPassword) and (data.login, data.password) == self.expected
        return AuthResult(success=ok, handled=False)  # handled=False: aiosmtpd answers 535 itself


class SmtpServer:
    """Answers DATA with `answer` ("250 OK", "451 4.3.0 busy", "554 5.7.1 no"); keeps accepted mail."""

    user = "passerelle"
    password = "s3cret"

    def __init__(self, pki: Pki, answer: str = "250 2.0.0 queued as 1234") -> None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(pki.server_cert, pki.server_key)
        self.recorder = Recorder(answer)
        self.port = free_port()
        self.loop = asyncio.new_event_loop()  # ours, so that stop() can close it
        self.controller = Controller(
            self.recorder,
            loop=self.loop,
            hostname="127.0.0.1",
            port=self.port,
            tls_context=context,
            require_starttls=True,
            auth_required=True,
            authenticator=Credentials(self.user, self.password),
        )
        self.controller.start()

    @property
    def mails(self) -> list[tuple[str, list[str], bytes]]:
        return list(self.recorder.mails)

    def save(self, folder: Path) -> list[Path]:
        folder.mkdir(parents=True, exist_ok=True)
        paths = [folder / f"mail-{i}.eml" for i in range(len(self.recorder.mails))]
        for path, (_, _, content) in zip(paths, self.recorder.mails, strict=True):
            path.write_bytes(content)
        return paths

    def stop(self) -> None:
        self.controller.stop()
        self.loop.close()


class SilentServer:
    """Accepts TCP connections and never says a word (no greeting)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        self.held: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)

    def stop(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()
