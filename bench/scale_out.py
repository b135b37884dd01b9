"""Scale-out benchmark (issue 9): MLLP ingest on the PostgreSQL store with 1, 2 and 4 workers.

A PostgreSQL 15 cluster (fsync on, synchronous_commit on: the durable setting) is started in a
temporary directory (tests/support/postgres.py). Each configuration runs `passerelle run
--workers N` (N processes sharing the port with SO_REUSEPORT) and is loaded by the same client
as bench/mllp_ingest.py (uvloop, `--connections` connections, each waiting for its ACK, one
patient per connection). Two tables are printed:

1. the scaling curve: `respond_after: processed` (parse + validate_hl7 + routing, file
   destination ordered by patient) with 1, 2 and 4 workers;
2. the foundation issue's ingest benchmark (bench/mllp_ingest.py's `received` and `processed`
   channels, one engine process) with the PostgreSQL store instead of SQLite; with
   `--encryption`, each also with payloads encrypted at rest (a store key in engine.yaml);
3. with `--bus`, the work bus (`bus: amqp`, a RabbitMQ node started by the benchmark): the same
   steps with `respond_after: received`, so the ACK follows the intake commit and the publisher
   confirm, and the steps run in whichever worker consumes the message's partition. Two rates:
   ACKs per second during the load, and end to end (every message sent, including the warm-up,
   divided by the time from the first send until no message is left `received`).
   `--runs R` repeats each configuration and reports the median of each column.

    python bench/scale_out.py [--seconds 8] [--connections 16] [--workers 1,2,4] [--encryption]
        [--bus] [--only-bus] [--runs 1]
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402

from bench.mllp_ingest import PROCESSED, RECEIVED, Result, free_port, load  # noqa: E402
from engine.store.cipher import new_key_file  # noqa: E402
from tests.support.postgres import PostgresCluster, fresh_database  # noqa: E402
from tests.support.rabbitmq import RabbitMq  # noqa: E402

# bench/mllp_ingest.py's `processed` channel, ordered by the patient each connection sends for
# (PID-3[2]; its PID-3.1 is the same for every message: one key, which no number of workers spreads).
SCALE = PROCESSED.replace("order_by: PID-3.1", 'order_by: "PID-3[2].1"')
ENGINE = 'store: {{type: postgresql, dsn: "{dsn}"{encryption}}}\nlogging: {{level: warning}}\n'
ENCRYPTION = ", encryption: {keys: {k1: config/k1.key}, active: k1}"
# The same steps behind the work bus: the ACK says "stored", any worker runs the steps.
BUS = SCALE.replace("respond_after: processed", "respond_after: received")
BUS_ENGINE = ENGINE + 'bus: {{type: amqp, url: "{url}", partitions: 12}}\n'


def listeners(port: int) -> int:
    local = f"0100007F:{port:04X}"
    lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    return sum(1 for line in lines if line.split()[1] == local and line.split()[3] == "0A")


def start(
    folder: Path, dsn: str, channel: str, port: int, workers: int, encrypted: bool = False,
    engine: str = ENGINE,
) -> subprocess.Popen[bytes]:
    (folder / "config").mkdir(parents=True)
    (folder / "channels").mkdir()
    if encrypted:
        new_key_file(folder / "config" / "k1.key")
    text = engine.format(dsn=dsn, encryption=ENCRYPTION if encrypted else "")
    (folder / "config" / "engine.yaml").write_text(text)
    (folder / "channels" / "bench.yaml").write_text(channel.format(port=port))
    cmd = [sys.executable, str(ROOT / "run_engine.py"), "run", "--workers", str(workers),
           "--config", str(folder / "config" / "engine.yaml")]
    proc = subprocess.Popen(cmd, cwd=folder, env={**os.environ, "PYTHONPATH": str(ROOT)})
    deadline = time.monotonic() + 60
    while listeners(port) < workers:
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("the engine did not start")
        time.sleep(0.05)
    return proc


def measure(
    name: str, dsn: str, channel: str, workers: int, connections: int, seconds: float, encrypted: bool = False
) -> Result:
    import uvloop

    port = free_port()
    with tempfile.TemporaryDirectory() as folder:
        proc = start(Path(folder), dsn, channel, port, workers, encrypted)
        try:
            count, latencies, errors = uvloop.run(load(port, connections, seconds))
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(120)
    latencies.sort()
    return Result(name, count / seconds, 1000 * latencies[len(latencies) // 2],
                  1000 * latencies[int(len(latencies) * 0.99)], 0.0, errors)


def measure_bus(name: str, dsn: str, url: str, workers: int, connections: int,
                seconds: float) -> tuple[Result, float]:
    """Result (ACK rate and latencies) and the end-to-end rate, with `bus: amqp`."""
    import uvloop

    port = free_port()
    engine = BUS_ENGINE.replace("{url}", url)
    with tempfile.TemporaryDirectory() as folder:
        proc = start(Path(folder), dsn, BUS, port, workers, engine=engine)
        try:
            began = time.perf_counter()
            count, latencies, errors = uvloop.run(load(port, connections, seconds))
            total = wait_processed(dsn)
            elapsed = time.perf_counter() - began
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(120)
    latencies.sort()
    result = Result(name, count / seconds, 1000 * latencies[len(latencies) // 2],
                    1000 * latencies[int(len(latencies) * 0.99)], 0.0, errors)
    return result, total / elapsed


def wait_processed(dsn: str) -> int:
    """Wait until no message is left `received`; how many messages were stored."""
    deadline = time.monotonic() + 600
    with psycopg.connect(dsn, autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute("SELECT count(*), count(*) FILTER (WHERE status = 'received')"
                               " FROM messages").fetchone()
            assert row is not None
            if row[1] == 0:
                return int(row[0])
            time.sleep(0.05)
    raise RuntimeError("the workers did not process every message within 10 minutes")


def bus_curve(cluster: PostgresCluster, folder: Path, args: argparse.Namespace) -> str:
    broker = RabbitMq(folder / "rabbitmq").start()
    rows: dict[int, list[tuple[Result, float]]] = {}
    try:
        for _ in range(args.runs):
            for n in map(int, args.workers.split(",")):
                rows.setdefault(n, []).append(
                    measure_bus(f"bus, {n} worker(s)", fresh_database(cluster), broker.url, n,
                                args.connections, args.seconds))
    finally:
        broker.close()
    lines = ["| configuration | ACKs/s | end to end msgs/s | x 1 worker (end to end) | p50 ms | p99 ms |"
             " errors |", "|---|---|---|---|---|---|---|"]
    base = statistics.median(e for _, e in next(iter(rows.values())))
    for runs in rows.values():
        acks = statistics.median(r.msgs_per_s for r, _ in runs)
        e2e = statistics.median(e for _, e in runs)
        p50 = statistics.median(r.p50_ms for r, _ in runs)
        p99 = statistics.median(r.p99_ms for r, _ in runs)
        lines.append(f"| {runs[0][0].server} | {acks:,.0f} | {e2e:,.0f} | {e2e / base:.2f} | {p50:.2f} | "
                     f"{p99:.2f} | {sum(r.errors for r, _ in runs)} |")
    return "\n".join(lines)


def table(results: list[Result], base: float) -> str:
    lines = ["| configuration | msgs/s | x 1 worker | p50 ms | p99 ms | errors |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r.server} | {r.msgs_per_s:,.0f} | {r.msgs_per_s / base:.2f} | {r.p50_ms:.2f} | "
              f"{r.p99_ms:.2f} | {r.errors} |" for r in results]
    return "\n".join(lines)


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--encryption", action="store_true", help="also measure ingest with a store key")
    parser.add_argument("--bus", action="store_true", help="also the work bus curve (RabbitMQ)")
    parser.add_argument("--only-bus", action="store_true", help="only the work bus curve")
    parser.add_argument("--runs", type=int, default=1, help="bus curve: runs per configuration (median)")
    args = parser.parse_args()
    modes = (False, True) if args.encryption else (False,)
    cluster = PostgresCluster(fsync=True).start()
    curve: list[Result] = []
    ingest: list[Result] = []
    bus = ""
    try:
        if not args.only_bus:
            curve = [measure(f"processed, {n} worker(s)", fresh_database(cluster), SCALE, n,
                             args.connections, args.seconds) for n in map(int, args.workers.split(","))]
            ingest = [measure(f"engine {name}, PostgreSQL{', encrypted' if sealed else ''}",
                              fresh_database(cluster), channel, 1, args.connections, args.seconds, sealed)
                      for name, channel in (("received", RECEIVED), ("processed", PROCESSED))
                      for sealed in modes]
        if args.bus or args.only_bus:
            with tempfile.TemporaryDirectory() as folder:
                bus = bus_curve(cluster, Path(folder), args)
    finally:
        cluster.stop()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
          f"{args.seconds:g} s per configuration, {args.connections} connections, PostgreSQL 15 fsync on")
    if curve:
        print(table(curve, curve[0].msgs_per_s))
        print()
        print(table(ingest, curve[0].msgs_per_s))
    if bus:
        print()
        print(bus)


if __name__ == "__main__":
    main()
