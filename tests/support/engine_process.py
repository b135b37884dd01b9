"""Run the real engine as a subprocess on a throw-away project, as an operator would."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_project(folder: Path, channels: dict[str, str], engine: str = "") -> Path:
    (folder / "config").mkdir(parents=True, exist_ok=True)
    (folder / "channels").mkdir(exist_ok=True)
    config = folder / "config" / "engine.yaml"
    config.write_text(engine or "store: {path: var/passerelle.db}\nlogging: {level: info}\n")
    for name, text in channels.items():
        (folder / "channels" / f"{name}.yaml").write_text(text)
    return config


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class EngineProcess:
    def __init__(self, config: Path, ports: list[int]) -> None:
        self.config = config
        self.ports = ports
        self.log = config.parent.parent / "engine.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> EngineProcess:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, str(ROOT / "run_engine.py"), "run", "--config", str(self.config)],
                cwd=self.config.parent.parent,
                env=env,
                stdout=log,
                stderr=log,
            )
        deadline = time.monotonic() + timeout
        while not all(port_open(p) for p in self.ports):
            if self.proc.poll() is not None:
                raise RuntimeError(f"engine exited with {self.proc.returncode}:\n{self.log.read_text()}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"engine did not listen within {timeout} s:\n{self.log.read_text()}")
            time.sleep(0.05)
        return self

    def stop(self, timeout: float = 60.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def logs(self) -> str:
        return self.log.read_text(errors="replace")
