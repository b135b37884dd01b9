"""Soak: the engine under steady load for a long time; resources must stay flat.

    python bench/soak.py [--minutes 60] [--rate 300] [--interval 60] [--json FILE]

Runs the real engine (subprocess) with three channels like the examples: lab results over MLLP
with mutual TLS (validate_hl7, file archive), an SFTP lab drop (real OpenSSH sshd) and an AMQP
intake (real RabbitMQ). Drives MLLP at `--rate` msgs/s (default 300: about half the
end-to-end capacity of the slowest destination measured on this machine, see RELIABILITY.md),
one SFTP file every 2 s and 50 AMQP messages/s. Every interval it records: MLLP msgs
acknowledged, ACK latency p50/p95/p99, engine RSS and open descriptors, and messages stored per
channel. Verdict: RSS and descriptors flat (the last third of the run
within 10 % / 10 descriptors of the first third after warm-up), no MLLP error, every channel
keeping up (nothing left unprocessed at the end).
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import ssl
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.engine_process import EngineProcess, free_port, write_project  # noqa: E402
from tests.support.mllp_peers import MllpClient  # noqa: E402
from tests.support.pki import make_pki  # noqa: E402
from tests.support.rabbitmq import RabbitMq  # noqa: E402
from tests.support.sshd import Sshd  # noqa: E402
from tests.unit.hl7_samples import ORU_R01_25  # noqa: E402

LAB = """
respond_after: processed
source:
  type: mllp
  port: {port}
  tls: {{cert: "{pki.server_cert}", key: "{pki.server_key}", client_ca: "{pki.ca}",
        allowed_subjects: ["CN=lis.lab-a.example"]}}
steps:
  - {{type: validate_hl7, required_fields: [PID-3, "OBX[*]-3"]}}
destinations:
  - {{name: archive, type: file, directory: out/lab, fsync: false}}
"""
SFTP = """
respond_after: processed
source: {source}
destinations:
  - {{name: archive, type: file, directory: out/sftp, fsync: false}}
"""
AMQP = """
respond_after: processed
source: {{type: amqp, port: {port}, queue: soak-in}}
destinations:
  - {{name: archive, type: file, directory: out/amqp, fsync: false}}
"""


@dataclass
class Sample:
    minute: float
    mllp_msgs_per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    rss_mb: float
    open_fds: int
    stored: dict[str, int]
    backlog: int
    errors: int


class MllpLoad:
    """Paced TLS senders: `rate` messages per second over 4 connections, latencies recorded."""

    def __init__(self, port: int, rate: float, tls: ssl.SSLContext) -> None:
        self.port, self.rate, self.tls = port, rate, tls
        self.latencies: list[float] = []
        self.errors = 0
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(4)]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def take(self) -> tuple[list[float], int]:
        with self.lock:
            taken, errors = self.latencies, self.errors
            self.latencies, self.errors = [], 0
        return taken, errors

    def _run(self, index: int) -> None:
        period, number = 4 / self.rate, 0
        with MllpClient(self.port, self.tls) as client:
            next_at = time.monotonic()
            while not self.stop.is_set():
                payload = ORU_R01_25.replace(b"LAB20250314000123", f"S{index}N{number}".encode())
                started = time.perf_counter()
                ack = client.send(payload)
                with self.lock:
                    self.latencies.append(time.perf_counter() - started)
                    self.errors += b"MSA|AA|" not in ack
                number += 1
                next_at += period
                time.sleep(max(0.0, next_at - time.monotonic()))


def drop_files(sshd: Sshd, stop: threading.Event) -> None:
    client = sshd.client()
    number = 0
    while not stop.is_set():
        hidden, final = f"in/.drop{number}.hl7", f"in/drop{number}.hl7"
        with client.open(str(sshd.root / hidden), "wb") as handle:
            handle.write(ORU_R01_25.replace(b"LAB20250314000123", f"F{number}".encode()))
        client.rename(str(sshd.root / hidden), str(sshd.root / final))
        number += 1
        stop.wait(2.0)
    client.close()


def publish(broker: RabbitMq, stop: threading.Event) -> None:
    import pika

    connection = broker.connection()
    channel = connection.channel()
    while not stop.is_set():  # the engine's amqp source declares the queue (quorum, dead letters)
        try:
            channel.queue_declare("soak-in", passive=True)
            break
        except pika.exceptions.ChannelClosedByBroker:
            channel = connection.channel()
            stop.wait(0.5)
    number = 0
    while not stop.is_set():
        body = ORU_R01_25.replace(b"LAB20250314000123", f"Q{number}".encode())
        channel.basic_publish("", "soak-in", body, pika.BasicProperties(delivery_mode=2))
        number += 1
        stop.wait(0.02)
    connection.close()


def resources(pid: int) -> tuple[float, int]:
    status = Path(f"/proc/{pid}/status").read_text()
    rss = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
    return rss / 1024, len(os.listdir(f"/proc/{pid}/fd"))


def stored(db: Path) -> tuple[dict[str, int], int]:
    """Messages stored per channel, and deliveries still open (the backlog, all channels)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        counts = dict(conn.execute("SELECT channel, count(*) FROM messages GROUP BY channel").fetchall())
        open_ = conn.execute("SELECT count(*) FROM deliveries WHERE status IN ('queued', 'retrying')")
        return counts, int(open_.fetchone()[0])
    finally:
        conn.close()


def sample(minute: float, load: MllpLoad, interval: float, pid: int, db: Path) -> Sample:
    latencies, errors = load.take()
    latencies.sort()
    rss, fds = resources(pid)

    def pct(p: float) -> float:
        return 1000 * latencies[min(len(latencies) - 1, int(len(latencies) * p))] if latencies else 0.0

    counts, backlog = stored(db)
    return Sample(
        round(minute, 1),
        len(latencies) / interval,
        pct(0.5),
        pct(0.95),
        pct(0.99),
        round(rss, 1),
        fds,
        counts,
        backlog,
        errors,
    )


def verdict(samples: list[Sample]) -> dict[str, object]:
    steady = samples[1:] if len(samples) > 3 else samples
    third = max(1, len(steady) // 3)
    first, last = steady[:third], steady[-third:]
    rss_growth = statistics.mean(s.rss_mb for s in last) / statistics.mean(s.rss_mb for s in first) - 1
    fd_growth = statistics.mean(s.open_fds for s in last) - statistics.mean(s.open_fds for s in first)
    errors = sum(s.errors for s in samples)
    backlog_growth = statistics.mean(s.backlog for s in last) - statistics.mean(s.backlog for s in first)
    keeping_up = backlog_growth <= 2 * samples[-1].mllp_msgs_per_s  # within a couple of seconds of load
    return {
        "rss_growth": round(rss_growth, 3),
        "fd_growth": round(fd_growth, 1),
        "mllp_errors": errors,
        "backlog_growth": round(backlog_growth),
        "keeping_up": keeping_up,
        "flat": rss_growth < 0.10 and fd_growth <= 10 and errors == 0 and keeping_up,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=60)
    parser.add_argument("--rate", type=float, default=300)
    parser.add_argument("--interval", type=float, default=60)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="soak-"))
    pki = make_pki(folder / "pki")
    sshd, broker = Sshd(folder / "sshd").start(), RabbitMq(folder / "rabbit").start()
    (sshd.root / "in").mkdir(exist_ok=True)
    port = free_port()
    sftp_source = json.dumps({"type": "sftp", **sshd.source_config(poll_interval=1.0, completion="stable")})
    config = write_project(
        folder / "project",
        {
            "lab": LAB.format(port=port, pki=pki),
            "drop": SFTP.format(source=sftp_source),
            "bus": AMQP.format(port=broker.port),
        },
        "store: {path: var/soak.db}\nlogging: {level: warning}\n",
    )
    engine = EngineProcess(config, [port]).start()
    tls = ssl.create_default_context(cafile=str(pki.ca))
    tls.load_cert_chain(pki.client_cert, pki.client_key)
    load, stop = MllpLoad(port, args.rate, tls), threading.Event()
    load.start()
    for target, server in ((drop_files, sshd), (publish, broker)):
        threading.Thread(target=target, args=(server, stop), daemon=True).start()
    samples: list[Sample] = []
    started = time.monotonic()
    try:
        while time.monotonic() - started < args.minutes * 60:
            time.sleep(args.interval)
            assert engine.proc is not None
            samples.append(
                sample(
                    (time.monotonic() - started) / 60,
                    load,
                    args.interval,
                    engine.proc.pid,
                    folder / "project" / "var" / "soak.db",
                )
            )
            print(json.dumps(asdict(samples[-1])), flush=True)
    finally:
        load.stop.set()
        stop.set()
        time.sleep(3)
        engine.stop()
        sshd.stop()
        broker.close()
    result = {
        "minutes": args.minutes,
        "rate": args.rate,
        "samples": [asdict(s) for s in samples],
        **verdict(samples),
    }
    print(json.dumps({k: v for k, v in result.items() if k != "samples"}))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    sys.exit(0 if result["flat"] else 1)


if __name__ == "__main__":
    main()
