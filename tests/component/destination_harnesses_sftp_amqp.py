"""Harnesses of the `sftp` and `amqp` destinations for the destination contract suite.

Scenarios: `accept` (a real sshd / RabbitMQ takes the message), `unavailable` (nothing listens),
`silent` (a socket that accepts connections and never speaks), `retryable` (the server refuses
for now: the target folder cannot be created / no queue is bound to the routing key) and
`permanent` (a name or routing key template naming an unknown field).
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import ClassVar

from tests.support.engine_process import free_port
from tests.support.rabbitmq import RabbitMq
from tests.support.sshd import Sshd


class SilentPeer:
    """Accepts TCP connections (kernel backlog) and never answers."""

    def __init__(self) -> None:
        self.socket = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.socket.getsockname()[1])

    def close(self) -> None:
        self.socket.close()


class SftpDestinationHarness:
    type: ClassVar[str] = "sftp"

    def __init__(self, tmp_path: Path) -> None:
        self.sshd = Sshd(tmp_path / "sshd")
        self.out = self.sshd.root / "out"
        self.silent: SilentPeer | None = None
        self.started = False

    async def config(self, scenario: str) -> dict[str, object]:
        common: dict[str, object] = {"host": "127.0.0.1", "username": self.sshd.user,
                                     "private_key": str(self.sshd.user_key),
                                     "known_hosts": str(self.sshd.known_hosts), "directory": str(self.out),
                                     "connect_timeout": 2.0, "io_timeout": 2.0}
        await asyncio.to_thread(self.sshd.start)
        self.started = True
        if scenario == "unavailable":
            return {**common, "port": free_port()}
        if scenario == "silent":
            self.silent = SilentPeer()
            return {**common, "port": self.silent.port}
        if scenario == "retryable":
            blocker = self.sshd.root / "not-a-folder"
            blocker.write_text("a file where the folder should be")
            return {**common, "port": self.sshd.port, "directory": str(blocker / "out")}
        if scenario == "permanent":
            return {**common, "port": self.sshd.port, "filename": "{patient_name}.hl7"}
        return {**common, "port": self.sshd.port}

    async def delivered(self) -> list[bytes]:
        return [p.read_bytes() for p in sorted(self.out.glob("*"))] if self.out.exists() else []

    async def stop(self) -> None:
        if self.silent is not None:
            self.silent.close()
        if self.started:
            await asyncio.to_thread(self.sshd.stop)


class AmqpDestinationHarness:
    type: ClassVar[str] = "amqp"

    def __init__(self, tmp_path: Path) -> None:
        self.broker = RabbitMq(tmp_path / "rabbitmq")
        self.silent: SilentPeer | None = None
        self.started = False

    async def config(self, scenario: str) -> dict[str, object]:
        common: dict[str, object] = {"exchange": "results", "exchange_type": "topic",
                                     "routing_key": "lab.{message_code}", "connect_timeout": 2.0,
                                     "operation_timeout": 5.0}
        if scenario == "unavailable":
            return {**common, "port": free_port()}
        if scenario == "silent":
            self.silent = SilentPeer()
            return {**common, "port": self.silent.port}
        if scenario == "permanent":
            return {**common, "port": free_port(), "routing_key": "{patient_name}"}
        await asyncio.to_thread(self._start, bind=scenario == "accept")
        return {**common, "port": self.broker.port}  # retryable: nothing bound, the message is returned

    def _start(self, bind: bool) -> None:
        self.broker.start()
        self.started = True
        with self.broker.connection() as conn:
            channel = conn.channel()
            channel.exchange_declare("results", "topic", durable=True)
            if bind:
                channel.queue_declare("collected", durable=True)
                channel.queue_bind("collected", "results", "lab.#")

    async def delivered(self) -> list[bytes]:
        return await asyncio.to_thread(self._drain)

    def _drain(self) -> list[bytes]:
        with self.broker.connection() as conn:
            channel = conn.channel()
            got = []
            while (item := channel.basic_get("collected", auto_ack=True))[0] is not None:
                got.append(item[2])
            return got

    async def stop(self) -> None:
        if self.silent is not None:
            self.silent.close()
        if self.started:
            await asyncio.to_thread(self.broker.close)


HARNESSES = [SftpDestinationHarness, AmqpDestinationHarness]
