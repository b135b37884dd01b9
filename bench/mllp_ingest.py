"""MLLP ingest benchmark: 16 connections sending ORU^R01 (12 OBX), each waiting for its ACK.

Targets (issue 12, this 2-core machine, load client included): engine with
`respond_after: received` >= 12,000 msgs/s and >= 8x the python-hl7 baseline, p99 < 10 ms,
RSS < 250 MB; with `respond_after: processed` (parse + validate_hl7 + routing) >= 5,000 msgs/s.

Each server runs in its own process; the load client (uvloop, 16 connections) in this one.
The baseline is python-hl7's own asyncio MLLP server parsing each message and answering its
`create_ack()`, without storing anything.

`delivered` (engine rows): deliveries of the measured window committed as sent by the file
destination, per second, from the start of the measured load until the queue is empty again
(what the archive sustains; below `msgs/s` its backlog grows). `--fsync` makes the archive
fsync each file and its folder (the destination's default) instead of the benchmark's
`fsync: false`; `--only engine` skips the reference servers.

    python bench/mllp_ingest.py [--seconds 8] [--runs 3] [--connections 16] [--fsync] [--only engine] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.unit.hl7_samples import ORU_R01_25  # noqa: E402

SB, EB = b"\x0b", b"\x1c\x0d"

RECEIVED = """
respond_after: received
source: {{type: mllp, port: {port}}}
destinations:
  - {{name: archive, type: file, directory: out, fsync: {fsync}}}
"""
PROCESSED = """
respond_after: processed
source: {{type: mllp, port: {port}}}
steps:
  - {{type: filter_message_type, accept: [ORU^R01]}}
  - {{type: validate_hl7, required_segments: [PID, OBR, OBX], required_fields: [PID-3, OBR-4, "OBX[*]-3"]}}
destinations:
  - {{name: archive, type: file, directory: out, fsync: {fsync}, queue: {{order_by: PID-3.1}}}}
"""
BASELINE = """
import asyncio, sys, hl7, hl7.mllp
async def handle(reader, writer):
    try:
        while not writer.is_closing():
            message = await reader.readmessage()
            writer.writemessage(message.create_ack())
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()
async def main():
    port = int(sys.argv[1])
    server = await hl7.mllp.start_hl7_server(handle, host="127.0.0.1", port=port, encoding="utf-8")
    async with server:
        await server.serve_forever()
asyncio.run(main())
"""


BARE = """
import asyncio, sys, uvloop
ACK = b"\\x0bMSH|^~\\\\&|R|R|S|S|1||ACK|1|P|2.5\\rMSA|AA|1\\r\\x1c\\r"
async def handle(reader, writer):
    try:
        while True:
            await reader.readuntil(b"\\x1c\\r")
            writer.write(ACK)
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()
async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", int(sys.argv[1]))
    await server.serve_forever()
uvloop.run(main())
"""
# The second reference point: frame, group-commit to SQLite (WAL, synchronous=FULL) in a
# writer thread, then answer. What any persist-then-ACK engine in Python pays at the least.
GROUP_COMMIT = """
import asyncio, queue, sqlite3, sys, threading, uvloop
ACK = b"\\x0bMSH|^~\\\\&|R|R|S|S|1||ACK|1|P|2.5\\rMSA|AA|1\\r\\x1c\\r"
jobs = queue.SimpleQueue()
def writer(loop):
    db = sqlite3.connect(sys.argv[2], isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL"); db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE IF NOT EXISTS m (id INTEGER PRIMARY KEY, raw BLOB)")
    while True:
        batch = [jobs.get()]
        while not jobs.empty():
            batch.append(jobs.get_nowait())
        db.execute("BEGIN IMMEDIATE")
        db.executemany("INSERT INTO m (raw) VALUES (?)", [(raw,) for raw, _ in batch])
        db.execute("COMMIT")
        loop.call_soon_threadsafe(lambda futures=[f for _, f in batch]: [f.set_result(None) for f in futures])
async def handle(reader, writer_):
    loop = asyncio.get_running_loop()
    try:
        while True:
            frame = await reader.readuntil(b"\\x1c\\r")
            done = loop.create_future()
            jobs.put((frame, done))
            await done
            writer_.write(ACK)
    except (asyncio.IncompleteReadError, ConnectionError):
        writer_.close()
async def main():
    threading.Thread(target=writer, args=(asyncio.get_running_loop(),), daemon=True).start()
    server = await asyncio.start_server(handle, "127.0.0.1", int(sys.argv[1]))
    await server.serve_forever()
uvloop.run(main())
"""


@dataclass
class Result:
    server: str
    msgs_per_s: float
    p50_ms: float
    p99_ms: float
    peak_rss_mb: float
    errors: int
    delivered_per_s: float | None = None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_listening(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("server did not start")


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


class DeliveryClock:
    """Deliveries committed as sent in the engine's store, from the start of the measured load
    until no delivery is open any more (read-only WAL reader: never blocks the engine's writer)."""

    def __init__(self, database: Path) -> None:
        self.database = database
        self.started = 0.0
        self.sent_before = 0

    def counts(self) -> tuple[int, int]:
        conn = sqlite3.connect(f"file:{self.database}?mode=ro", uri=True, timeout=30)
        try:
            sent, open_ = conn.execute(
                "SELECT count(*) FILTER (WHERE status='sent'),"
                " count(*) FILTER (WHERE status IN ('queued','retrying')) FROM deliveries"
            ).fetchone()
        finally:
            conn.close()
        return int(sent), int(open_)

    def start(self) -> None:
        self.started = time.perf_counter()
        self.sent_before = self.counts()[0]

    def wait_drained(self, timeout: float = 600.0) -> float:
        """Deliveries per second over the window; raises if the queue does not drain."""
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            sent, open_ = self.counts()
            if not open_:
                return (sent - self.sent_before) / (time.perf_counter() - self.started)
            time.sleep(0.05)
        raise RuntimeError(f"deliveries still open after {timeout:.0f} s")


def start_engine(folder: Path, channel: str, port: int) -> subprocess.Popen[bytes]:
    (folder / "config").mkdir(parents=True)
    (folder / "channels").mkdir()
    (folder / "config" / "engine.yaml").write_text("store: {path: var/bench.db}\nlogging: {level: warning}\n")
    (folder / "channels" / "bench.yaml").write_text(channel)
    cmd = [
        sys.executable,
        str(ROOT / "run_engine.py"),
        "run",
        "--config",
        str(folder / "config" / "engine.yaml"),
    ]
    return subprocess.Popen(cmd, cwd=folder, env={**os.environ, "PYTHONPATH": str(ROOT)})


def start_baseline(port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", BASELINE, str(port)])


async def connection(port: int, index: int, stop_at: float, latencies: list[float]) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    number, errors = 0, 0
    while time.perf_counter() < stop_at:
        control = f"B{index}N{number}".encode()
        payload = ORU_R01_25.replace(b"LAB20250314000123", control).replace(b"P000123456", b"P%d" % index)
        started = time.perf_counter()
        writer.write(SB + payload + EB)
        ack = await reader.readuntil(EB)
        latencies.append(time.perf_counter() - started)
        errors += b"|AA|" not in ack and b"MSA|AA" not in ack
        number += 1
    writer.close()
    return errors


async def load(
    port: int, connections: int, seconds: float, clock: DeliveryClock | None = None
) -> tuple[int, list[float], int]:
    latencies: list[float] = []
    await asyncio.gather(*(connection(port, i, time.perf_counter() + 1.0, []) for i in range(connections)))
    if clock is not None:
        clock.wait_drained()  # the warm-up's deliveries are not part of the window
        clock.start()
    stop_at = time.perf_counter() + seconds  # after a one-second warm-up on fresh connections
    errors = await asyncio.gather(
        *(connection(port, i + 1000, stop_at, latencies) for i in range(connections))
    )
    return len(latencies), latencies, sum(errors)


def measure(
    name: str,
    proc: subprocess.Popen[bytes],
    port: int,
    connections: int,
    seconds: float,
    clock: DeliveryClock | None = None,
) -> Result:
    import uvloop

    try:
        wait_listening(port, proc)
        count, latencies, errors = uvloop.run(load(port, connections, seconds, clock))
        latencies.sort()
        delivered = clock.wait_drained() if clock is not None else None
        rss = peak_rss_mb(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    return Result(
        name,
        count / seconds,
        1000 * latencies[len(latencies) // 2],
        1000 * latencies[int(len(latencies) * 0.99)],
        rss,
        errors,
        delivered,
    )


def run_once(connections: int, seconds: float, fsync: bool, only_engine: bool) -> list[Result]:
    results = [] if only_engine else run_references(connections, seconds)
    for name, channel in (("engine received", RECEIVED), ("engine processed", PROCESSED)):
        with tempfile.TemporaryDirectory() as folder:
            port = free_port()
            proc = start_engine(Path(folder), channel.format(port=port, fsync=str(fsync).lower()), port)
            clock = DeliveryClock(Path(folder) / "var" / "bench.db")
            results.append(measure(name, proc, port, connections, seconds, clock))
    return results


def run_references(connections: int, seconds: float) -> list[Result]:
    results = []
    port = free_port()
    results.append(measure("python-hl7 baseline", start_baseline(port), port, connections, seconds))
    port = free_port()
    bare = subprocess.Popen([sys.executable, "-c", BARE, str(port)])
    results.append(measure("reference: bare asyncio frame + answer", bare, port, connections, seconds))
    with tempfile.TemporaryDirectory() as folder:
        port = free_port()
        minimal = subprocess.Popen([sys.executable, "-c", GROUP_COMMIT, str(port), f"{folder}/m.db"])
        results.append(
            measure("reference: frame + SQLite group commit + answer", minimal, port, connections, seconds)
        )
    return results


def median_results(runs: list[list[Result]]) -> list[Result]:
    merged = []
    for i, first in enumerate(runs[0]):
        rows = [run[i] for run in runs]

        def median(name: str, rows: list[Result] = rows) -> float:
            return float(statistics.median(getattr(r, name) for r in rows))

        merged.append(
            Result(
                first.server,
                median("msgs_per_s"),
                median("p50_ms"),
                median("p99_ms"),
                median("peak_rss_mb"),
                sum(r.errors for r in rows),
                None if first.delivered_per_s is None else median("delivered_per_s"),
            )
        )
    return merged


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--fsync", action="store_true", help="the archive fsyncs each file (its default)")
    parser.add_argument("--only", choices=["all", "engine"], default="all")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    only_engine = args.only == "engine"
    runs = [run_once(args.connections, args.seconds, args.fsync, only_engine) for _ in range(args.runs)]
    results = median_results(runs)
    if args.json:
        print(json.dumps([asdict(r) for r in results], indent=2))
        return
    baseline = results[0].msgs_per_s if args.only == "all" else None
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
        f"median of {args.runs} runs x {args.seconds:g} s, {args.connections} connections, "
        f"archive fsync {'on' if args.fsync else 'off'}"
    )
    print("| server | msgs/s | x baseline | p50 ms | p99 ms | peak RSS MB | errors | delivered/s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        ratio = f"{r.msgs_per_s / baseline:.1f}" if baseline else "-"
        delivered = "-" if r.delivered_per_s is None else f"{r.delivered_per_s:,.0f}"
        print(
            f"| {r.server} | {r.msgs_per_s:,.0f} | {ratio} | {r.p50_ms:.2f} | "
            f"{r.p99_ms:.2f} | {r.peak_rss_mb:.0f} | {r.errors} | {delivered} |"
        )


if __name__ == "__main__":
    main()
