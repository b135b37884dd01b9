"""engine/heap.py: memory freed after a burst goes back to the kernel (the soak's creeping RSS)."""

from __future__ import annotations

import asyncio
import gc
import threading
from pathlib import Path

import pytest

from engine.heap import find_malloc_trim, trim_heap, trim_heap_forever


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def burst_in_a_thread(kept: list[bytes]) -> None:
    """What a destination backlog does: many message-sized buffers, then most of them freed."""
    def run() -> None:
        burst = [bytes(2000) + i.to_bytes(4, "big") for i in range(100_000)]  # ~200 MB
        kept.extend(burst[::50])  # a few survivors scattered through the heap (fragmentation)
        del burst

    worker = threading.Thread(target=run)
    worker.start()
    worker.join()
    gc.collect()


def test_this_platform_has_malloc_trim() -> None:
    # The engine's Debian target is glibc: a missing malloc_trim here would mean the trim task
    # silently does nothing in production.
    assert find_malloc_trim() is not None


def test_a_freed_burst_is_given_back_to_the_kernel() -> None:
    kept: list[bytes] = []
    burst_in_a_thread(kept)
    before = rss_mb()
    trim_heap()
    after = rss_mb()
    assert before - after > 100, f"RSS {before:.0f} MB -> {after:.0f} MB after trimming"
    assert len(kept) == 2000  # the survivors are untouched


async def test_the_trim_task_stops_when_cancelled() -> None:
    task = asyncio.create_task(trim_heap_forever(interval=0.01))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def test_the_arena_cap_is_accepted_by_this_platform() -> None:
    # glibc answers 1 when it takes the setting; 0 would mean the engine's cap silently failed.
    from engine.heap import limit_arenas

    assert limit_arenas()
