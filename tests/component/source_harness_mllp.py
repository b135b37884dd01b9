"""Contract-suite harness for the `mllp` source: a real client on a real socket."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.support.mllp_peers import EB, SB, frame
from tests.unit.hl7_samples import ORU_R01_25


class MllpHarness:
    type = "mllp"

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.port = 0
        self.stream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self.answer = b""

    async def start(self) -> dict[str, object]:
        from tests.support.engine_process import free_port

        self.port = free_port()
        return {"port": self.port}

    def sample(self) -> bytes:
        return ORU_R01_25

    async def offer(self, payload: bytes) -> None:
        self.stream = await asyncio.open_connection("127.0.0.1", self.port)
        self.stream[1].write(frame(payload))
        await self.stream[1].drain()

    async def observed(self) -> str:
        assert self.stream is not None
        if EB not in self.answer:
            try:
                self.answer += await asyncio.wait_for(self.stream[0].read(65536), 0.05)
            except TimeoutError:
                return "pending"
        if EB not in self.answer:
            return "pending"
        ack = self.answer[self.answer.index(SB) + 1 : self.answer.index(EB)]
        if b"MSA|AA|" in ack:
            return "accepted"
        if b"MSA|AR|" in ack and b"resend it unchanged" in ack:
            return "kept_for_retry"
        return "rejected" if b"MSA|AE|" in ack else f"unexpected answer {ack!r}"

    async def stop(self) -> None:
        if self.stream is not None:
            self.stream[1].close()
            await self.stream[1].wait_closed()
