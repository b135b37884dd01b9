"""How long a destination queue's claim scan takes against an open delivery backlog (issue #9).

A queue on a shared store runs a claim scan (`PostgresStore.claim_deliveries`) at start, every
`rescan_interval` (a third of the lease) and whenever it spills or gives work back. This measures
one full rescan (from the first id, pages of 10,000 as a queue reads them) on a real PostgreSQL
server (started here, fsync on) for three backlogs of BACKLOG open deliveries over KEYS order
keys: the scanning worker's own, a live other worker's (nothing to take), and a dead worker's
(everything taken over). It also times the order guard's probe (`Store.open_line`, asked before
every keyed attempt on a shared store) against the same backlog.

    python bench/claim_scan.py --backlog 20000 --keys 16 --runs 3
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.store.base import IntakeRecord, NewDelivery
from engine.store.postgres import PostgresStore
from tests.support.postgres import PostgresCluster, fresh_database

PAGE = 10_000


def record(number: int, keys: int) -> IntakeRecord:
    raw = f"MSH|^~\\&|LAB|A|||x||ORU^R01|B{number}|P|2.5\r".encode()
    return IntakeRecord(
        "lab", "v1", time.time(), "application/hl7-v2", "mllp", "", "", "", f"B{number}", "LAB", raw,
        "queued", "AA", None, raw, deliveries=[NewDelivery("out", f"PAT{number % keys}")],
    )  # fmt: skip


async def fill(store: PostgresStore, backlog: int, keys: int) -> None:
    for start in range(0, backlog, 1000):
        chunk = range(start, min(backlog, start + 1000))
        await asyncio.gather(*(store.intake(record(n, keys)) for n in chunk))


async def rescan(store: PostgresStore) -> tuple[float, int]:
    """One claim scan from the first id to the end, page by page: (seconds, deliveries claimed)."""
    started, after, claimed = time.perf_counter(), 0, 0
    while True:
        page = await store.claim_deliveries("lab", "out", after, PAGE)
        claimed += len(page)
        if len(page) < PAGE:
            return time.perf_counter() - started, claimed
        after = page[-1].id


async def worker(dsn: str) -> PostgresStore:
    store = PostgresStore(dsn, lease_seconds=2.0)
    store.on_lease_lost = lambda: None
    await store.open()
    return store


async def scenario(cluster: PostgresCluster, name: str, backlog: int, keys: int, runs: int) -> str:
    times, claimed = [], 0
    for _ in range(runs):
        dsn = fresh_database(cluster)
        me, other = await worker(dsn), await worker(dsn)
        owner = me if name == "own" else other
        await fill(owner, backlog, keys)
        if name == "dead":
            for task in other._tasks:  # the other worker dies: no heartbeat, no clean close
                task.cancel()
            await asyncio.sleep(2.5)
        seconds, claimed = await rescan(me)
        times.append(seconds)
        if name == "dead":
            other._tasks = []
        await other.close()
        await me.close()
    median, worst = statistics.median(times), max(times)
    return f"| {name} | {backlog:,} | {keys} | {claimed:,} | {median:.2f} | {worst:.2f} |"


async def guard_probe(cluster: PostgresCluster, backlog: int, keys: int, probes: int = 2000) -> str:
    """The order guard's store read, one at a time as a queue asks it: median and p99 in ms."""
    dsn = fresh_database(cluster)
    me = await worker(dsn)
    try:
        await fill(me, backlog, keys)
        latencies = []
        for n in range(probes):
            started = time.perf_counter()
            await me.open_line("lab", "out", f"PAT{n % keys}", 1 + (n * 7919) % backlog)
            latencies.append(time.perf_counter() - started)
    finally:
        await me.close()
    latencies.sort()
    p99 = latencies[int(len(latencies) * 0.99) - 1]
    return (f"order guard probe (open_line), {probes:,} probes over {backlog:,} open deliveries: median"
            f" {statistics.median(latencies) * 1000:.2f} ms, p99 {p99 * 1000:.2f} ms")


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backlog", type=int, default=20_000)
    parser.add_argument("--keys", type=int, default=16)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    cluster = PostgresCluster(fsync=True).start()
    try:
        print(f"{platform.machine()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")
        print("| backlog owned by | open deliveries | keys | claimed | median s | max s |")
        print("|---|---|---|---|---|---|")
        for name in ("own", "live other", "dead"):
            print(await scenario(cluster, name, args.backlog, args.keys, args.runs), flush=True)
        print(await guard_probe(cluster, args.backlog, args.keys), flush=True)
        print(f"load average after: {os.getloadavg()[0]:.1f}")
    finally:
        cluster.stop()


if __name__ == "__main__":
    asyncio.run(main())
