"""Give freed heap memory back to the operating system (glibc only), every half minute.

Why: CPython hands freed memory back to glibc's malloc, which keeps it in per-thread arenas
instead of returning it to the kernel. A burst (a destination backlog held in memory up to its
`max_in_memory` bound, a large SFTP batch, a slow minute on a shared machine) therefore leaves the
process's RSS at its high-water mark for the rest of its life. The engine then looks like it
leaks (the soak's RSS crept up at every backlog spike and never came down), and a real leak hides
in that noise. `malloc_trim(0)` releases the free pages of every arena (glibc >= 2.8); it takes
a few milliseconds and ctypes releases the GIL during the call.

Arenas: glibc gives each thread that allocates its own arena (up to 8 per core), and a freed
chunk can only be reused by its own arena, so the engine's worker threads (store readers, file
writes, SFTP transfers) each keep a private high-water mark. `limit_arenas` caps them at two
(mallopt M_ARENA_MAX, the remedy glibc documents for multi-threaded servers whose RSS creeps);
it must run before the threads start.

Contract: never raises; a no-op where the C library has no malloc_trim/mallopt (musl, macOS).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
from collections.abc import Callable

TRIM_EVERY_SECONDS = 30.0
M_ARENA_MAX = -8  # glibc's malloc.h
ENGINE_ARENAS = 2


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return ctypes.CDLL(name)
    except OSError:
        return None


def limit_arenas(arenas: int = ENGINE_ARENAS) -> bool:
    """Cap glibc's malloc arenas (call before starting threads); True when the C library took it."""
    libc = _libc()
    mallopt = getattr(libc, "mallopt", None)
    return bool(mallopt(M_ARENA_MAX, arenas)) if mallopt is not None else False


def find_malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None where the C library does not have it."""
    trim = getattr(_libc(), "malloc_trim", None)
    if trim is None:
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim  # type: ignore[no-any-return]


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
