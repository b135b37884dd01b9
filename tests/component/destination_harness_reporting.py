"""Contract-suite harness for `reporting_feed`: a real RabbitMQ node (shared by the suite, started on
first use) with the authority's exchange and queue. The contract's sample (a blood count) is made
notifiable by a harness catalogue (platelets flagged H), and `delivered()` answers, per report on the
queue, the lab control id it reports on: "the peer has exactly one report about this message"."""

from __future__ import annotations

import asyncio
import atexit
import re
import secrets
import socket
import tempfile
from pathlib import Path
from typing import ClassVar

from engine.formats.hl7v2 import read_header
from engine.reporting.catalogue import Catalogue, Disease, dump_catalogue
from tests.support.engine_process import free_port
from tests.support.rabbitmq import RabbitMq

_NODE: list[RabbitMq] = []
_LAB_ID = re.compile(rb"lab control id (\S+) ")


def _broker() -> RabbitMq:
    if not _NODE:
        node = RabbitMq(Path(tempfile.mkdtemp(prefix="reporting-harness-"))).start()
        atexit.register(node.close)
        _NODE.append(node)
    return _NODE[0]


class ReportingFeedHarness:
    type: ClassVar[str] = "reporting_feed"

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.exchange = f"domi-{secrets.token_hex(3)}"
        self.queue = f"{self.exchange}.inbox"
        self.silent: socket.socket | None = None

    @staticmethod
    def expected(raw: bytes) -> bytes:
        return read_header(raw).control_id.encode()

    async def config(self, scenario: str) -> dict[str, object]:
        broker = await asyncio.to_thread(_broker)
        catalogue = self.tmp_path / "catalogue.yaml"
        test_disease = Disease(name="Contract test", tests=["777-3"], positive=["H"])
        catalogue.write_text(dump_catalogue(Catalogue(diseases={"contract": test_disease})))
        await asyncio.to_thread(self._declare, broker, bind=scenario != "retryable")
        options: dict[str, object] = {
            "port": broker.port,
            "exchange": self.exchange,
            "catalogue": str(catalogue),
            "database": str(self.tmp_path / "cases.db"),
            "connect_timeout": 2,
            "operation_timeout": 2,
        }
        if scenario == "unavailable":
            options["port"] = free_port()
        elif scenario == "silent":
            self.silent = socket.create_server(("127.0.0.1", 0))  # accepts in the kernel, never answers
            options["port"] = self.silent.getsockname()[1]
        elif scenario == "permanent":
            options["routing_key"] = "notifiable.{no_such_field}"
        return options

    def _declare(self, broker: RabbitMq, bind: bool) -> None:
        with broker.connection() as conn:
            ch = conn.channel()
            ch.exchange_declare(self.exchange, "topic", durable=True)
            if bind:
                ch.queue_declare(self.queue, durable=True)
                ch.queue_bind(self.queue, self.exchange, "notifiable.#")

    async def delivered(self) -> list[bytes]:
        return await asyncio.to_thread(self._take)

    def _take(self) -> list[bytes]:
        found: list[bytes] = []
        with _broker().connection() as conn:
            ch = conn.channel()
            while True:
                method, _props, body = ch.basic_get(self.queue, auto_ack=True)
                if method is None:
                    return found
                match = _LAB_ID.search(body)
                found.append(match.group(1) if match else body)

    async def stop(self) -> None:
        if self.silent is not None:
            self.silent.close()


HARNESSES = [ReportingFeedHarness]
