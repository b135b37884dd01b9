"""Independent MLLP peers for tests: a blocking client and a threaded receiver on real sockets.

They frame bytes themselves (not with the engine's framing) so the engine is checked by a
second implementation of the protocol.
"""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Callable

SB, EB = b"\x0b", b"\x1c\x0d"


def frame(payload: bytes) -> bytes:
    return SB + payload + EB


class MllpClient:
    def __init__(self, port: int, tls: ssl.SSLContext | None = None, timeout: float = 20.0) -> None:
        raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock = tls.wrap_socket(raw, server_hostname="localhost") if tls else raw
        self.buffer = b""

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send(self, payload: bytes) -> bytes:
        self.sock.sendall(frame(payload))
        return self.read_frame()

    def read_frame(self) -> bytes:
        while EB not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed by the engine; pending bytes {self.buffer!r}")
            self.buffer += chunk
        end = self.buffer.index(EB)
        payload = self.buffer[self.buffer.index(SB) + 1 : end]
        self.buffer = self.buffer[end + 2 :]
        return payload

    def closed_by_peer(self) -> bool:
        try:
            return self.sock.recv(1) == b""
        except (ConnectionError, ssl.SSLError):
            return True

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> MllpClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def ack_for(payload: bytes, code: str = "AA") -> bytes:
    fields = payload.split(b"\r", 1)[0].split(b"|")
    control = fields[9] if len(fields) > 9 else b""
    return (
        b"MSH|^~\\&|RECV|R|ENGINE|E|20260101||ACK|A"
        + control
        + b"|P|2.5\rMSA|"
        + code.encode()
        + b"|"
        + control
        + b"\r"
    )


class MllpReceiver:
    """A downstream system: records every message, answers per `answer(payload) -> code`."""

    def __init__(self, answer: Callable[[bytes], str] = lambda _: "AA") -> None:
        self.answer = answer
        self.received: list[bytes] = []
        self.lock = threading.Lock()
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.stopped = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        buffer = b""
        with conn:
            while True:
                try:
                    chunk = conn.recv(65536)
                except OSError:
                    return
                if not chunk:
                    return
                buffer += chunk
                while EB in buffer:
                    end = buffer.index(EB)
                    payload, buffer = buffer[buffer.index(SB) + 1 : end], buffer[end + 2 :]
                    code = self.answer(payload)
                    with self.lock:
                        if code in ("AA", "CA"):
                            self.received.append(payload)
                    if code != "silent":
                        conn.sendall(frame(ack_for(payload, code)))

    def messages(self) -> list[bytes]:
        with self.lock:
            return list(self.received)

    def close(self) -> None:
        self.stopped.set()
        self.server.close()
