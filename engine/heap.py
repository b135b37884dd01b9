"""Give freed heap memory back to the operating system (glibc only), every half minute.

Why: CPython hands freed memory back to glibc's malloc, which keeps it in per-thread arenas
instead of returning it to the kernel. A burst (a destination backlog held in memory up to its
`max_in_memory` bound, a large SFTP batch, a slow minute on a shared machine) therefore leaves the
process's RSS at its high-water mark for the rest of its life. The engine then looks like it
leaks (the soak's RSS crept up at every backlog spike and never came down), and a real leak hides
in that noise. `malloc_trim(0)` releases the free pages of every arena (glibc >= 2.8); it takes
a few milliseconds and ctypes releases the GIL during the call.

Contract: never raises; a no-op where the C library has no malloc_trim (musl, macOS).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
from collections.abc import Callable

TRIM_EVERY_SECONDS = 30.0


def find_malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None where the C library does not have it."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


def trim_heap() -> bool:
    """Return free heap pages to the kernel now; True when some memory was released."""
    trim = find_malloc_trim()
    return bool(trim(0)) if trim is not None else False


async def trim_heap_forever(interval: float = TRIM_EVERY_SECONDS) -> None:
    """Run for the life of the engine (cancelled at stop)."""
    trim = find_malloc_trim()
    if trim is None:
        return
    while True:
        await asyncio.sleep(interval)
        trim(0)
