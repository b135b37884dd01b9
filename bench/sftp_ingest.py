"""SFTP intake benchmark against a real OpenSSH sshd on 127.0.0.1 (tests/support/sshd.py).

1. `--files` small files (one ORU^R01 each, ~1.6 KB): files/s from the first file moved to
   done/ to the last (listing, stability check, download, store commit, move).
2. One HL7 batch file of `--big-mb` MB (FHS/BHS, ORU^R01 messages, BTS/FTS): MB/s from the
   moment the file is complete to its move to done/, and the engine's peak RSS, which must not
   grow with the file (it is streamed and split message by message).

The engine is the real process (`run_engine.py run`, uvloop, SQLite synchronous=full) with
`respond_after: received` (or `--respond-after processed`), `completion: stable`, 4 SFTP sessions.

    python bench/sftp_ingest.py [--files 10000] [--big-mb 200]
"""

from __future__ import annotations

import argparse
import json
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

from tests.support.sshd import Sshd  # noqa: E402
from tests.unit.hl7_samples import ORU_R01_25  # noqa: E402


def oru(n: int) -> bytes:
    return ORU_R01_25.replace(b"LAB20250314000123", b"S%09d" % n)


RESPOND_AFTER = ["received"]


def start_engine(folder: Path, sshd: Sshd) -> subprocess.Popen[bytes]:
    (folder / "config").mkdir(parents=True)
    (folder / "channels").mkdir()
    (folder / "config" / "engine.yaml").write_text("store: {path: var/bench.db}\nlogging: {level: warning}\n")
    source = {"type": "sftp", **sshd.source_config(poll_interval=0.5, workers=4, max_files_per_poll=2000,
                                                     max_file_bytes=1 << 30)}
    channel = f"respond_after: {RESPOND_AFTER[0]}\nsource: {json.dumps(source)}\n"
    (folder / "channels" / "bench.yaml").write_text(channel)
    config = str(folder / "config" / "engine.yaml")
    cmd = [sys.executable, str(ROOT / "run_engine.py"), "run", "--config", config]
    return subprocess.Popen(cmd, cwd=folder, env={**os.environ, "PYTHONPATH": str(ROOT)})


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def count_done(done: Path) -> int:
    return sum(1 for _ in os.scandir(done)) if done.exists() else 0


def small_files(base: Path, count: int) -> float:
    sshd = Sshd(base / "sshd").start()
    inbox = sshd.root / "in"
    inbox.mkdir()
    for i in range(count):
        (inbox / f"r{i:06d}.hl7").write_bytes(oru(i))
    proc = start_engine(base / "engine", sshd)
    try:
        done = inbox / "done"
        while count_done(done) == 0:
            time.sleep(0.01)
        started, first = time.perf_counter(), count_done(done)
        while count_done(done) < count:
            time.sleep(0.05)
        rate = (count - first) / (time.perf_counter() - started)
    finally:
        proc.terminate()
        proc.wait(60)
        sshd.stop()
    check_stored(base / "engine", count)
    return rate


def big_file(base: Path, megabytes: int) -> tuple[float, float, int]:
    sshd = Sshd(base / "sshd").start()
    inbox = sshd.root / "in"
    inbox.mkdir()
    proc = start_engine(base / "engine", sshd)
    try:
        time.sleep(2)  # the engine is up and polling, its baseline memory reached
        messages, size = write_batch(inbox / ".big.hl7", megabytes)
        (inbox / ".big.hl7").rename(inbox / "big.hl7")
        started = time.perf_counter()
        while not (inbox / "done" / "big.hl7").exists():
            time.sleep(0.05)
        elapsed = time.perf_counter() - started
        rss = peak_rss_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(60)
        sshd.stop()
    check_stored(base / "engine", messages)
    return size / (1 << 20) / elapsed, rss, messages


def write_batch(path: Path, megabytes: int) -> tuple[int, int]:
    n, size = 0, 0
    with path.open("wb") as out:
        out.write(b"FHS|^~\\&|GLIMS|LABO-TEST\rBHS|^~\\&|GLIMS|LABO-TEST\r")
        while size < megabytes << 20:
            message = oru(n)
            out.write(message)
            size += len(message)
            n += 1
        out.write(f"BTS|{n}\rFTS|1\r".encode())
    return n, path.stat().st_size


def check_stored(folder: Path, expected: int) -> None:
    with sqlite3.connect(folder / "var" / "bench.db") as db:
        stored = int(db.execute("SELECT count(*) FROM messages").fetchone()[0])
    if stored != expected:
        raise SystemExit(f"stored {stored} messages, expected {expected}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--big-mb", type=int, default=200)
    parser.add_argument("--respond-after", choices=["received", "processed"], default="received")
    args = parser.parse_args()
    RESPOND_AFTER[0] = args.respond_after
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    with tempfile.TemporaryDirectory() as folder:
        rate = small_files(Path(folder) / "small", args.files)
        print(f"| {args.files:,} small files (ORU^R01, 1 message each) | {rate:,.0f} files/s |")
    with tempfile.TemporaryDirectory() as folder:
        mb_s, rss, messages = big_file(Path(folder) / "big", args.big_mb)
        print(f"| one {args.big_mb} MB HL7 batch ({messages:,} messages) | {mb_s:.1f} MB/s "
              f"({messages / (args.big_mb / mb_s):,.0f} msgs/s), engine peak RSS {rss:.0f} MB |")


if __name__ == "__main__":
    main()
