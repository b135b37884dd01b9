"""Destination harnesses for the contract suite: a real peer per destination type that can be
told to accept, refuse for good, or be unavailable."""

from __future__ import annotations

from pathlib import Path

from tests.support.engine_process import free_port
from tests.support.mllp_peers import MllpReceiver


class MllpDestinationHarness:
    type = "mllp"

    def __init__(self, tmp_path: Path) -> None:
        self.receivers: list[MllpReceiver] = []
        self.accepted: MllpReceiver | None = None

    async def config(self, scenario: str) -> dict[str, object]:
        if scenario == "unavailable":
            return {"host": "127.0.0.1", "port": free_port(), "connect_timeout": 2}
        if scenario == "silent":
            receiver = MllpReceiver(lambda _: "silent")
        else:
            code = {"accept": "AA", "permanent": "AE", "retryable": "AR"}[scenario]
            receiver = MllpReceiver(lambda _: code)
        self.receivers.append(receiver)
        self.accepted = receiver if scenario == "accept" else self.accepted
        return {"host": "127.0.0.1", "port": receiver.port, "ack_timeout": 0.5}

    async def delivered(self) -> list[bytes]:
        return self.accepted.messages() if self.accepted else []

    async def stop(self) -> None:
        for receiver in self.receivers:
            receiver.close()


class FileDestinationHarness:
    type = "file"

    def __init__(self, tmp_path: Path) -> None:
        self.folder = tmp_path / "out"
        self.tmp_path = tmp_path

    async def config(self, scenario: str) -> dict[str, object]:
        if scenario in ("unavailable", "retryable", "silent"):
            blocker = self.tmp_path / "not-a-folder"
            blocker.write_text("a file where the folder should be")
            return {"directory": str(blocker / "out")}
        if scenario == "permanent":
            return {"directory": str(self.folder), "filename": "{patient_name}.hl7"}
        return {"directory": str(self.folder)}

    async def delivered(self) -> list[bytes]:
        return [p.read_bytes() for p in sorted(self.folder.glob("*"))] if self.folder.exists() else []

    async def stop(self) -> None:
        return None
