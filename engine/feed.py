"""A bounded in-memory FIFO in front of work that is already committed to the store.

Contract: every item pushed is already durable and stays "open" in the store until its
consumer commits the outcome and then calls `done(id)`. So the feed may drop an item from
memory when it is full ("spilled") and reload it from the store later: nothing is lost and
memory stays bounded. The feed starts spilled, so the first `get` loads whatever a previous
run left unfinished (that is the whole of crash recovery for queued work).

No item is handed out twice: ids in memory or taken-but-not-done are `known` and skipped by
reloads, and ids finished while a reload query ran are filtered out of its page. No item is
missed: while spilled, a reload starts below the lowest dropped id, and the feed returns to
memory mode only after a reload during which nothing was dropped came back short.

`give_back(id)` returns a taken item to the store (it is reloaded like a dropped one).
`reload_from(id)`, from inside a reload, makes the next reload start below an item the store
holds for this consumer but memory does not (as if it had been dropped).

A reload that fails with StoreError (a claim chosen as a deadlock victim, a dropped connection)
is logged and tried again after `retry_seconds`, from the first id (what it consumed of the
cursor state is not known); it never reaches the consumers, whose tasks must not end.

`rescan()` (a store shared by several processes) makes the next reload start again from the
first id: work can become this worker's without being pushed (another worker died, or released
an order key). It is the spilled state with the cursor reset, so the invariants above hold.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

import structlog

from engine.errors import StoreError

log = structlog.get_logger("passerelle.feed")

T = TypeVar("T")
Reload = Callable[[int, int], Awaitable[list[tuple[int, T]]]]


class Feed(Generic[T]):
    def __init__(self, capacity: int, reload: Reload[T], retry_seconds: float = 1.0) -> None:
        self.capacity = capacity
        self.retry_seconds = retry_seconds
        self._reload = reload
        self._items: deque[tuple[int, T]] = deque()
        self._urgent: deque[T] = deque()
        self._known: set[int] = set()
        self._spilled = True
        self._cursor = 0
        self._min_dropped: int | None = None
        self._drops = 0
        self._finished_during_reload: set[int] | None = None
        self._refilling = False
        self._rescan = False
        self._wakeup = asyncio.Event()
        self._closed = False

    def __len__(self) -> int:
        return len(self._items) + len(self._urgent)

    @property
    def spilled(self) -> bool:
        return self._spilled

    def push(self, item_id: int, item: T) -> None:
        """Offer committed work. Never blocks; when full, the store keeps it until a reload."""
        if item_id in self._known:
            return
        if self._spilled or len(self._items) >= self.capacity:
            self._spilled = True
            self._drops += 1
            self._min_dropped = item_id if self._min_dropped is None else min(self._min_dropped, item_id)
        else:
            self._items.append((item_id, item))
            self._known.add(item_id)
        self._wakeup.set()

    def push_urgent(self, item: T) -> None:
        """Re-offer an item already taken (a retry that is due): first in line, still `known`."""
        self._urgent.append(item)
        self._wakeup.set()

    def done(self, item_id: int) -> None:
        """The item's outcome is committed: it may be forgotten."""
        self._known.discard(item_id)
        if self._finished_during_reload is not None:
            self._finished_during_reload.add(item_id)

    def reload_from(self, item_id: int) -> None:
        """An item not in memory must come before work a reload is reading (its reload function
        found out): the next reload starts below it, as after a drop. Call it from inside the
        reload function, which returns none of the page's items that must follow that one."""
        self._spilled = True
        self._drops += 1
        self._min_dropped = item_id if self._min_dropped is None else min(self._min_dropped, item_id)

    def give_back(self, item_id: int) -> None:
        """An item taken but not run (a delivery found out of line): forget it and look at the
        store again from the first id, so a reload hands it out again, after what must go first."""
        self._known.discard(item_id)
        self.rescan()

    def holds(self, item_id: int) -> bool:
        """Whether the item is in memory or taken and not done (diagnostics)."""
        return item_id in self._known

    def state(self) -> str:
        """The reload state in one line (diagnostics): spilled or not, cursor, lowest dropped id."""
        return f"spilled={self._spilled} cursor={self._cursor} min_dropped={self._min_dropped}" \
            f" refilling={self._refilling}"

    def queued(self, item_id: int) -> bool:
        """Whether the item waits in memory, not taken yet (diagnostics: a linear search)."""
        return any(i == item_id for i, _ in self._items)

    def rescan(self) -> None:
        """Look at the store again from the first id (claims: see the module docstring)."""
        self._rescan = True
        self._spilled = True
        self._wakeup.set()

    def close(self) -> None:
        self._closed = True
        self._wakeup.set()

    async def get(self) -> T | None:
        """The next item, or None once closed. Any number of consumers may wait at once."""
        while not self._closed:
            if self._urgent:
                return self._urgent.popleft()
            if self._items:
                return self._items.popleft()[1]
            if self._spilled and not self._refilling:
                await self._refill_once()
                continue
            self._wakeup.clear()
            await self._wakeup.wait()
        return None

    async def _refill_once(self) -> None:
        """One consumer refills; the others wait for it. Two overlapping reloads could each
        return an item the other's consumers already finished, and hand it out twice."""
        self._refilling = True
        try:
            while self._spilled and not self._items and await self._refill():
                pass
        except StoreError as err:
            # Store errors carry the database's reason, never message content: safe to log.
            log.error("feed_reload_failed", error=str(err), retry_seconds=self.retry_seconds)
            self.rescan()
            await asyncio.sleep(self.retry_seconds)
        finally:
            self._refilling = False
            self._wakeup.set()

    async def _refill(self) -> bool:
        """Load the next page of open work from the store; True when another look is needed."""
        if self._rescan:
            self._rescan, self._cursor = False, 0
        start = self._cursor if self._min_dropped is None else min(self._cursor, self._min_dropped - 1)
        self._min_dropped = None
        drops_before = self._drops
        finished: set[int] = set()
        self._finished_during_reload = finished
        try:
            page = await self._reload(start, self.capacity)
        finally:
            self._finished_during_reload = None
        fresh = [(i, item) for i, item in page if i not in self._known and i not in finished]
        self._items.extend(fresh)
        self._known.update(i for i, _ in fresh)
        self._cursor = page[-1][0] if page else start
        if len(page) >= self.capacity or fresh:
            return True
        if self._drops == drops_before and not self._rescan:
            self._spilled = False
            return False
        return True
