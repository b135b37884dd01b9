"""Harnesses of the `sftp` and `amqp` sources for the source contract suite.

Each starts the real server (OpenSSH sshd / RabbitMQ on 127.0.0.1), returns the source's
configuration, plays the remote party (`offer`) and reports what that party can see of the
last message it offered (`observed`):

- "pending": not answered yet (file in place and not yet read / message unacknowledged);
- "accepted": file moved to done/ / message acknowledged (gone from the queue, not dead-lettered);
- "kept_for_retry": the commit failed: the file is still in place and was read again by a later
  poll (each read shows as atime > ctime; the harness resets atime after counting one) / the
  message went back to the queue (redelivered flag, seen by the firehose);
- "rejected": file in error/ with its `.err.json` / message in the dead-letter queue.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from pathlib import Path
from typing import ClassVar

import pika

from tests.support.rabbitmq import RabbitMq
from tests.support.sshd import Sshd
from tests.unit.hl7_samples import ORU_R01_25


class SftpHarness:
    type: ClassVar[str] = "sftp"

    def __init__(self, tmp_path: Path) -> None:
        self.sshd = Sshd(tmp_path / "sshd")
        self.inbox = self.sshd.root / "in"
        self.name = ""
        self.count = 0
        self.reads = 0

    def sample(self) -> bytes:
        return ORU_R01_25

    async def start(self) -> dict[str, object]:
        await asyncio.to_thread(self.sshd.start)
        self.inbox.mkdir(parents=True, exist_ok=True)
        return self.sshd.source_config(poll_interval=0.1, workers=1, max_backoff=1.0)

    async def offer(self, payload: bytes) -> None:
        self.count += 1
        self.reads = 0
        self.name = f"message-{self.count:04d}.dat"
        await asyncio.to_thread(self._upload, payload)

    def _upload(self, payload: bytes) -> None:
        """Write under a hidden name, then rename: the file appears complete (ctime > atime)."""
        client = self.sshd.client()
        try:
            temp = f"{self.inbox}/.{self.name}.part"
            with client.open(temp, "wb") as remote:
                remote.write(payload)
            client.rename(temp, f"{self.inbox}/{self.name}")
        finally:
            client.close()

    async def observed(self) -> str:
        errors = self.inbox / "error"
        if (errors / self.name).exists() and (errors / f"{self.name}.err.json").exists():
            return "rejected"
        if (self.inbox / "done" / self.name).exists():
            return "accepted"
        try:
            self._count_reads(self.inbox / self.name)
        except FileNotFoundError:
            return "pending"  # between the move and its destination appearing
        return "kept_for_retry" if self.reads >= 2 else "pending"  # read again: it was left for a retry

    def _count_reads(self, path: Path) -> None:
        """A read since the last reset shows as atime > ctime (relatime); count it and reset
        atime below ctime (utime sets ctime to now), keeping mtime so the file stays stable."""
        info = os.stat(path)
        if info.st_atime_ns > info.st_ctime_ns:
            self.reads += 1
            os.utime(path, ns=(info.st_mtime_ns, info.st_mtime_ns))

    async def stop(self) -> None:
        await asyncio.to_thread(self.sshd.stop)


class AmqpHarness:
    type: ClassVar[str] = "amqp"

    def __init__(self, tmp_path: Path) -> None:
        self.broker = RabbitMq(tmp_path / "rabbitmq")
        suffix = secrets.token_hex(3)
        self.queue = f"contract-{suffix}"
        self.dead = f"{self.queue}.dead"
        self.dlx = f"{self.queue}.dlx"
        self.trace = f"{self.queue}.trace"
        self.message_id = ""
        self.requeued: set[str] = set()

    def sample(self) -> bytes:
        return ORU_R01_25

    async def start(self) -> dict[str, object]:
        await asyncio.to_thread(self._start)
        return {"port": self.broker.port, "queue": self.queue, "queue_type": "classic",
                "dead_letter_exchange": self.dlx, "dead_letter_queue": self.dead, "max_backoff": 1.0}

    def _start(self) -> None:
        self.broker.start()
        self.broker.ctl("trace_on")  # the firehose shows every delivery, with its redelivered flag
        with self.broker.connection() as conn:
            channel = conn.channel()
            channel.exchange_declare(self.dlx, "fanout", durable=True)
            channel.queue_declare(self.dead, durable=True, arguments={"x-queue-type": "classic"})
            channel.queue_bind(self.dead, self.dlx, "")
            channel.queue_declare(self.queue, durable=True, arguments={
                "x-queue-type": "classic", "x-dead-letter-exchange": self.dlx})
            channel.queue_declare(self.trace, durable=True)
            channel.queue_bind(self.trace, "amq.rabbitmq.trace", f"deliver.{self.queue}")

    async def offer(self, payload: bytes) -> None:
        self.message_id = secrets.token_hex(8)
        await asyncio.to_thread(self._publish, payload)

    def _publish(self, payload: bytes) -> None:
        with self.broker.connection() as conn:
            channel = conn.channel()
            channel.confirm_delivery()
            channel.basic_publish("", self.queue, payload, pika.BasicProperties(
                delivery_mode=2, message_id=self.message_id, app_id="contract"), mandatory=True)

    async def observed(self) -> str:
        return await asyncio.to_thread(self._observe)

    def _observe(self) -> str:
        self._read_trace()
        counts = self._queue_counts()
        if counts.get(self.dead, 0) > 0 and self._dead_letters_hold(self.message_id):
            return "rejected"
        if counts.get(self.queue, 0) == 0:
            return "accepted"
        return "kept_for_retry" if self.message_id in self.requeued else "pending"

    def _read_trace(self) -> None:
        with self.broker.connection() as conn:
            channel = conn.channel()
            while (item := channel.basic_get(self.trace, auto_ack=True))[0] is not None:
                headers = item[1].headers or {}
                properties = headers.get("properties") or {}
                if headers.get("redelivered") and properties.get("message_id"):
                    self.requeued.add(str(properties["message_id"]))

    def _queue_counts(self) -> dict[str, int]:
        """Ready + unacknowledged messages per queue, asked of the queue processes themselves
        (unacknowledged is not visible over AMQP; `list_queues` reports periodic statistics).
        Classic queues answer live, which is why this harness declares its queue classic."""
        return {name: self._messages(name) for name in (self.queue, self.dead)}

    def _messages(self, queue: str) -> int:
        expr = (f'{{ok, Q}} = rabbit_amqqueue:lookup(rabbit_misc:r(<<"/">>, queue, <<"{queue}">>)), '
                "rabbit_amqqueue:info(Q, [messages]).")
        text = self.broker.ctl("eval", expr).stdout
        digits = "".join(c for c in text.split("messages,")[-1] if c.isdigit())
        return int(digits or 0)

    def _dead_letters_hold(self, message_id: str) -> bool:
        """Peek at the dead-letter queue (messages are requeued, not consumed)."""
        with self.broker.connection() as conn:
            channel = conn.channel()
            seen = []
            while (item := channel.basic_get(self.dead, auto_ack=False))[0] is not None:
                seen.append(item[1].message_id)
            channel.basic_recover(requeue=True)
        return message_id in seen

    async def stop(self) -> None:
        await asyncio.to_thread(self.broker.close)
