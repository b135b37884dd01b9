"""Chaos runs: faults under load, then reconcile acknowledged vs stored vs delivered.

    python bench/chaos.py [--scenario kill9|disk_full|network_cut|broker_restart|sshd_restart|all]
                          [--seconds 60] [--json FILE]

Each scenario runs the real engine (subprocess) with an MLLP lab channel delivering to a real
MLLP receiver behind a proxy, and 8 senders that resend until acknowledged (as an LIS does):
- kill9: `kill -9` the engine 10 times during the load, restarting it each time;
- disk_full: the store lives on a small tmpfs (root only) that is filled up under the engine,
  then space is freed;
- network_cut: the proxy to the receiver black-holes traffic (accepts, never answers) for a
  while, then heals.
- broker_restart, sshd_restart: the real RabbitMQ node (AMQP intake and destination) or sshd
  (an SFTP drop) is stopped and started again under a continuous partner (bench/chaos_restarts.py).
After each, the run waits for the engine to settle and reports: acknowledged (the senders'
view), stored (unique control ids in the store), delivered (unique at the receiver),
downstream duplicates (allowed: at-least-once, de-duplicable on MSH-10), and lost =
acknowledged but never delivered (target 0).
"""

from __future__ import annotations

import argparse
import json
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.chaos_report import Report, print_report  # noqa: E402
from bench.chaos_restarts import RESTARTS  # noqa: E402
from tests.support.engine_process import EngineProcess, free_port, write_project  # noqa: E402
from tests.support.mllp_peers import MllpClient, MllpReceiver  # noqa: E402
from tests.unit.hl7_samples import MATRICULE, ORU_R01_25  # noqa: E402

CHANNEL = """
respond_after: processed
source: {{type: mllp, port: {port}}}
steps:
  - {{type: validate_hl7, required_fields: [PID-3]}}
destinations:
  - name: downstream
    type: mllp
    host: 127.0.0.1
    port: {downstream}
    ack_timeout: 2
    connect_timeout: 2
    queue: {{order_by: PID-3.1, concurrency: 8, initial_backoff: 0.2, max_backoff: 2, max_attempts: 1000}}
"""


class Senders:
    """8 LIS connections; each resends its current message until it is acknowledged AA."""

    def __init__(self, port: int, count: int = 8) -> None:
        self.port = port
        self.acked: set[str] = set()
        self.refused = 0
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(count)]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(60)

    def _run(self, index: int) -> None:
        number, client = 0, None
        while not self.stop.is_set():
            control = f"C{index}N{number}"
            payload = (  # one patient per sender: per-patient ordering, not one global line
                ORU_R01_25.replace(b"LAB20250314000123", control.encode())
                .replace(b"P000123456", f"PAT{index}".encode())
                .replace(MATRICULE.encode(), f"1980010100{index:03d}".encode())
            )
            try:
                client = client or MllpClient(self.port, timeout=5)
                ack = client.send(payload)
            except OSError:
                close(client)
                client = None
                time.sleep(0.1)
                continue
            if b"MSA|AA|" in ack:
                with self.lock:
                    self.acked.add(control)
                number += 1
            else:
                self.refused += 1
                time.sleep(0.05)
        close(client)


def close(client: MllpClient | None) -> None:
    if client is not None:
        client.close()


class CutProxy:
    """TCP proxy to the receiver; `cut()` black-holes new and existing traffic, `heal()` restores."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.cut_event = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def cut(self) -> None:
        self.cut_event.set()

    def heal(self) -> None:
        self.cut_event.clear()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            upstream = socket.create_connection(("127.0.0.1", self.target))
        except OSError:
            conn.close()
            return
        for a, b in ((conn, upstream), (upstream, conn)):
            threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                while self.cut_event.is_set():  # black hole: hold the bytes, answer nothing
                    time.sleep(0.1)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            src.close()
            dst.close()


def unique_stored(db: Path) -> int:
    conn = sqlite3.connect(db)
    try:
        query = "SELECT count(DISTINCT control_id) FROM messages WHERE status <> 'rejected'"
        return int(conn.execute(query).fetchone()[0])
    finally:
        conn.close()


def delivered_ids(receiver: MllpReceiver) -> list[str]:
    return [p.split(b"\r", 1)[0].split(b"|")[9].decode() for p in receiver.messages()]


def settle(receiver: MllpReceiver, acked: set[str], timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not acked <= set(delivered_ids(receiver)):
        time.sleep(0.5)


def run(scenario: str, seconds: float, store_dir: Path | None = None) -> Report:
    receiver = MllpReceiver()
    proxy = CutProxy(receiver.port)
    port = free_port()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        store = (store_dir or root / "var") / "chaos.db"
        config = write_project(
            root,
            {"lab": CHANNEL.format(port=port, downstream=proxy.port)},
            f"store: {{path: {store}}}\nlogging: {{level: warning}}\n",
        )
        engine = EngineProcess(config, [port]).start()
        senders = Senders(port)
        started = time.monotonic()
        senders.start()
        engine = FAULTS[scenario](engine, config, port, proxy, seconds, store)
        senders.finish()
        settle(receiver, senders.acked)
        engine.stop()
        delivered = delivered_ids(receiver)
        report = Report(
            scenario,
            round(time.monotonic() - started, 1),
            len(senders.acked),
            unique_stored(store),
            len(set(delivered)),
            len(delivered) - len(set(delivered)),
            len(senders.acked - set(delivered)),
            senders.refused,
        )
        if not report.ok:
            kept = ROOT / "var" / f"chaos-{scenario}.log"
            kept.parent.mkdir(exist_ok=True)
            kept.write_text(engine.logs())
            print(f"engine log kept in {kept}")
    receiver.close()
    return report


def kill9(
    engine: EngineProcess, config: Path, port: int, proxy: CutProxy, seconds: float, store: Path
) -> EngineProcess:
    for _ in range(10):
        time.sleep(seconds / 10)
        engine.kill()
        engine = EngineProcess(config, [port]).start()
    return engine


def disk_full(
    engine: EngineProcess, config: Path, port: int, proxy: CutProxy, seconds: float, store: Path
) -> EngineProcess:
    time.sleep(seconds / 3)
    filler = store.parent / "filler"
    try:
        fill(filler)  # the disk is now full under the engine: intake answers AR, senders keep their messages
        time.sleep(seconds / 3)
    finally:
        filler.unlink(missing_ok=True)  # operators free space: the engine must resume by itself
    time.sleep(seconds / 3)
    return engine


def fill(path: Path) -> None:
    """Write until the filesystem refuses (ENOSPC): a really full disk, racing the engine for it."""
    chunk = b"\0" * (1 << 20)
    with path.open("wb") as handle:
        try:
            while True:
                handle.write(chunk)
                handle.flush()
        except OSError:
            pass


def network_cut(
    engine: EngineProcess, config: Path, port: int, proxy: CutProxy, seconds: float, store: Path
) -> EngineProcess:
    time.sleep(seconds / 4)
    proxy.cut()
    time.sleep(seconds / 2)
    proxy.heal()
    time.sleep(seconds / 4)
    return engine


FAULTS = {"kill9": kill9, "disk_full": disk_full, "network_cut": network_cut}


def small_filesystem(megabytes: int) -> Path:
    mount = Path(tempfile.mkdtemp(prefix="chaos-fs-"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(mount)], check=True)
    return mount


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scenario", default="all", choices=[*FAULTS, *RESTARTS, "all"])
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    reports = []
    for scenario in [*FAULTS, *RESTARTS] if args.scenario == "all" else [args.scenario]:
        if scenario in RESTARTS:
            reports.append(RESTARTS[scenario](args.seconds))
            print_report(reports[-1])
            continue
        mount = small_filesystem(1024) if scenario == "disk_full" else None  # room once freed
        try:
            reports.append(run(scenario, args.seconds, mount))
        finally:
            if mount is not None:
                subprocess.run(["umount", str(mount)], check=False)
        print_report(reports[-1])
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in reports], indent=2))
    sys.exit(0 if all(r.ok for r in reports) else 1)


if __name__ == "__main__":
    main()
