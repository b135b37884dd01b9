"""AMQP intake benchmark: the engine drains a queue of ORU^R01 messages, acking after each commit.

A real RabbitMQ node (tests/support/rabbitmq.py) is started on a free port; `--messages` ORU^R01
(12 OBX, ~1.6 KB) are published to the intake queue (quorum by default) before the engine starts,
then the real engine process (`run_engine.py run`, uvloop, SQLite store with synchronous=full)
consumes them with `respond_after: received` (and, with --processed, with validate_hl7 first).
The rate is measured from the first acknowledged message to the empty queue (polled through a
passive declare), so connection set-up is excluded; every message must be in the store at the end.

Target (issue 7, this 2-core machine, broker included): >= 5,000 msgs/s.

    python bench/amqp_ingest.py [--messages 30000] [--prefetch 512] [--queue-type quorum] [--processed]
"""

from __future__ import annotations

import argparse
import os
import platform
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pika  # noqa: E402

from tests.support.rabbitmq import RabbitMq  # noqa: E402
from tests.unit.hl7_samples import ORU_R01_25  # noqa: E402

CHANNEL = """
respond_after: {respond_after}
source: {{type: amqp, port: {port}, queue: bench, queue_type: {queue_type}, prefetch: {prefetch}}}
steps: {steps}
"""


def publish(broker: RabbitMq, count: int, queue_type: str) -> None:
    with broker.connection() as conn:
        channel = conn.channel()
        channel.queue_declare("bench", durable=True, arguments={
            "x-queue-type": queue_type, "x-dead-letter-exchange": "passerelle.dead-letter"})
        channel.confirm_delivery()
        properties = pika.BasicProperties(delivery_mode=2)
        for i in range(count):
            channel.basic_publish("", "bench", ORU_R01_25.replace(b"LAB20250314000123", b"A%07d" % i),
                                  properties)


def depth(broker: RabbitMq) -> int:
    return broker.queue_depth("bench")


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def run(args: argparse.Namespace) -> tuple[float, float, int]:
    with tempfile.TemporaryDirectory() as folder:
        base = Path(folder)
        broker = RabbitMq(base / "rabbitmq").start()
        try:
            publish(broker, args.messages, args.queue_type)
            return drain(base / "engine", broker, args)
        finally:
            broker.close()


def drain(folder: Path, broker: RabbitMq, args: argparse.Namespace) -> tuple[float, float, int]:
    (folder / "config").mkdir(parents=True)
    (folder / "channels").mkdir()
    (folder / "config" / "engine.yaml").write_text("store: {path: var/bench.db}\nlogging: {level: warning}\n")
    steps = "[{type: validate_hl7, required_fields: [PID-3]}]" if args.processed else "[]"
    (folder / "channels" / "bench.yaml").write_text(CHANNEL.format(
        respond_after="processed" if args.processed else "received", port=broker.port,
        queue_type=args.queue_type, prefetch=args.prefetch, steps=steps))
    config = str(folder / "config" / "engine.yaml")
    cmd = [sys.executable, str(ROOT / "run_engine.py"), "run", "--config", config]
    proc = subprocess.Popen(cmd, cwd=folder, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        while (first := depth(broker)) >= args.messages - args.prefetch:
            time.sleep(0.01)
        started = time.perf_counter()
        while (left := depth(broker)) > 0:
            time.sleep(0.05)
        elapsed = time.perf_counter() - started
        rss = peak_rss_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(60)
    with sqlite3.connect(folder / "var" / "bench.db") as db:
        stored = int(db.execute("SELECT count(*) FROM messages").fetchone()[0])
    return (first - left) / elapsed, rss, stored


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=30_000)
    parser.add_argument("--prefetch", type=int, default=512)
    parser.add_argument("--queue-type", choices=["quorum", "classic"], default="quorum")
    parser.add_argument("--processed", action="store_true")
    args = parser.parse_args()
    rate, rss, stored = run(args)
    mode = "processed (validate_hl7)" if args.processed else "received"
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print("| queue | respond_after | prefetch | messages | msgs/s | engine peak RSS MB | stored |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {args.queue_type} | {mode} | {args.prefetch} | {args.messages:,} | {rate:,.0f} | {rss:.0f} | "
          f"{stored:,} |")
    if stored != args.messages:
        raise SystemExit(f"LOST MESSAGES: {args.messages - stored}")


if __name__ == "__main__":
    main()
