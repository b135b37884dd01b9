"""The bounded feed: memory first, the store as overflow; nothing missed, nothing handed out twice."""

from __future__ import annotations

import asyncio

import pytest
import structlog
from structlog.testing import capture_logs

from engine import feed as feed_module
from engine.errors import StoreError
from engine.feed import Feed


class FakeStore:
    """Open work by id, as the store would list it; `done` closes an item."""

    def __init__(self) -> None:
        self.open: dict[int, str] = {}
        self.queries = 0

    async def reload(self, after_id: int, limit: int) -> list[tuple[int, str]]:
        """Like a database query: a snapshot taken when it starts, returned a little later."""
        self.queries += 1
        page = [(i, v) for i, v in sorted(self.open.items()) if i > after_id][:limit]
        await asyncio.sleep(0.001 * (self.queries % 3))  # some queries are slower than others
        return page

    def commit(self, feed: Feed[str], item_id: int) -> None:
        self.open[item_id] = f"m{item_id}"
        feed.push(item_id, f"m{item_id}")


async def drain(feed: Feed[str], store: FakeStore, count: int) -> list[str]:
    taken = []
    for _ in range(count):
        item = await asyncio.wait_for(feed.get(), 2)
        assert item is not None
        taken.append(item)
        item_id = int(item[1:])
        del store.open[item_id]
        feed.done(item_id)
    return taken


async def test_first_get_recovers_what_a_previous_run_left_open() -> None:
    store = FakeStore()
    store.open = {3: "m3", 7: "m7"}
    feed: Feed[str] = Feed(10, store.reload)
    assert await drain(feed, store, 2) == ["m3", "m7"]


async def test_overflow_is_reloaded_from_the_store_in_order_without_loss() -> None:
    store = FakeStore()
    feed: Feed[str] = Feed(5, store.reload)
    await drain(feed, store, 0)
    for i in range(1, 31):
        store.commit(feed, i)
    assert await drain(feed, store, 30) == [f"m{i}" for i in range(1, 31)]
    waiter = asyncio.create_task(feed.get())  # finds the store empty: back to memory mode
    await asyncio.sleep(0.01)
    assert not feed.spilled
    store.commit(feed, 31)
    assert await asyncio.wait_for(waiter, 1) == "m31"


async def test_item_committed_during_a_reload_is_not_missed() -> None:
    store = FakeStore()
    feed: Feed[str] = Feed(2, store.reload)
    for i in range(1, 6):
        store.commit(feed, i)  # spilled from the start: all dropped, all in the store

    async def commit_during_reload() -> None:
        await asyncio.sleep(0)
        store.commit(feed, 6)

    task = asyncio.create_task(commit_during_reload())
    assert await drain(feed, store, 6) == [f"m{i}" for i in range(1, 7)]
    await task


async def test_an_item_in_flight_is_not_handed_out_again_by_a_reload() -> None:
    store = FakeStore()
    feed: Feed[str] = Feed(2, store.reload)
    for i in range(1, 5):
        store.commit(feed, i)
    first = await feed.get()  # taken, not done: still open in the store
    rest = [await feed.get() for _ in range(3)]
    assert first == "m1" and rest == ["m2", "m3", "m4"]


async def test_urgent_items_come_first() -> None:
    store = FakeStore()
    feed: Feed[str] = Feed(10, store.reload)
    store.commit(feed, 1)
    feed.push_urgent("retry")
    assert await feed.get() == "retry"


async def test_close_wakes_waiting_consumers() -> None:
    store = FakeStore()
    feed: Feed[str] = Feed(10, store.reload)
    waiter = asyncio.create_task(feed.get())
    await asyncio.sleep(0.01)
    feed.close()
    assert await asyncio.wait_for(waiter, 1) is None


async def test_concurrent_consumers_never_get_an_item_twice_while_spilled() -> None:
    """Regression: several consumers refilling at once re-added items already done (crash test)."""
    store = FakeStore()
    feed: Feed[str] = Feed(7, store.reload)
    for i in range(1, 201):
        store.commit(feed, i)
    handed: list[str] = []

    async def consumer() -> None:
        while len(handed) < 200:
            try:
                item = await asyncio.wait_for(feed.get(), 0.5)
            except TimeoutError:
                return
            assert item is not None
            handed.append(item)
            await asyncio.sleep(0)  # processing yields, as a real commit does
            del store.open[int(item[1:])]
            feed.done(int(item[1:]))

    await asyncio.gather(*(consumer() for _ in range(16)))
    assert sorted(handed, key=lambda s: int(s[1:])) == [f"m{i}" for i in range(1, 201)]


async def test_an_item_given_back_comes_again_after_older_work_found_in_the_store() -> None:
    store = FakeStore()
    feed: Feed[str] = Feed(10, store.reload)
    waiter = asyncio.create_task(feed.get())
    await asyncio.sleep(0.01)  # the first reload found nothing: memory mode
    assert not feed.spilled
    store.open[4] = "m4"  # committed, never pushed (its pusher was cancelled)
    store.commit(feed, 9)
    assert await asyncio.wait_for(waiter, 1) == "m9"
    assert feed.holds(9) and not feed.holds(4)
    feed.give_back(9)
    assert not feed.holds(9)
    assert await drain(feed, store, 2) == ["m4", "m9"]


async def test_a_reload_that_finds_an_earlier_item_missing_makes_the_next_one_start_below_it() -> None:
    """`reload_from`: a reload function that sees an item the feed must hand out first (a
    destination queue: an older delivery of the same key below the cursor, not in memory) holds
    the page back and the feed reads again from below that item, so the order is kept."""
    store = FakeStore()
    store.open = {2: "m2", 5: "m5"}
    starts: list[int] = []

    async def reload(after_id: int, limit: int) -> list[tuple[int, str]]:
        starts.append(after_id)
        page = await store.reload(after_id, limit)
        if after_id >= 2:  # m2 lies at or below this page's start: m5 must wait for it
            feed.reload_from(2)
            return []
        return page

    feed: Feed[str] = Feed(10, reload)
    feed._cursor = 4  # as after a page that passed id 2 before m2 was committed
    assert await drain(feed, store, 2) == ["m2", "m5"]
    assert starts == [4, 1]


async def test_a_reload_that_fails_is_logged_and_tried_again_from_the_first_id(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A store error in a reload must never reach the consumers (their tasks would end)."""
    store = FakeStore()
    store.open = {1: "m1"}
    failures = [StoreError("store read failed: OperationalError")]

    async def reload(after_id: int, limit: int) -> list[tuple[int, str]]:
        if failures:
            raise failures.pop()
        return await store.reload(after_id, limit)

    feed: Feed[str] = Feed(10, reload, retry_seconds=0.01)
    with capture_logs() as logs:
        # A logger first used inside the capture (engine/log.py caches loggers on first use).
        monkeypatch.setattr(feed_module, "log", structlog.get_logger("passerelle.feed"))
        assert await drain(feed, store, 1) == ["m1"]
    assert [e["event"] for e in logs] == ["feed_reload_failed"]
