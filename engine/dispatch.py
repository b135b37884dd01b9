"""Destination queues: durable, retried with backoff and jitter, aged out, optionally ordered by key.

Each destination of each channel has one `DestinationQueue`. Its work is the `deliveries` rows
of the store; the in-memory `Feed` only caches them. A delivery is attempted by one of
`concurrency` workers; the outcome is committed before the next delivery of the same key may
start, so with `order_by` one patient's messages never overtake each other, retries included.

Outcomes are committed in batches: a worker hands its outcome to the queue's committer and
takes its next delivery at once; the committer writes everything handed in meanwhile with one
`Store.update_deliveries` (one transaction), then finishes each delivery (forgets it, frees its
order key, schedules its retry). So a worker never waits for a commit (measured: with four
workers each waiting for its own commit, a file archive delivered ~2 outcomes per commit and
fell behind intake; bench/BENCHMARKS.md), and nothing changes for durability: a delivery is
finished only once its outcome is committed, a crash before that sends it again.

Outcomes: sent; `RetryableError` -> retrying (backoff) until `max_attempts` or `max_age`, then
dead; `PermanentError` -> rejected. Any other exception from a destination is a bug in it and
is treated as retryable so the message is not lost, with the error type logged.

With a store shared by several processes, a queue runs only the deliveries its worker owns:
reloads are claim scans (`Store.claim_deliveries`), repeated every `store.rescan_interval` to
take over a dead worker's deliveries and keys released by others (store/base.py). Before each
keyed attempt it checks in the store that no older delivery of the key is still open (the order
guard, `_first_in_line`); if one is, the key's line goes back to the store for the claim scans.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from engine import metrics
from engine.config import QueueConfig
from engine.contracts import Destination
from engine.errors import PermanentError, RetryableError, StoreError
from engine.feed import Feed
from engine.message import Message
from engine.store.base import DeliveryUpdate, PendingDelivery, Store

log = structlog.get_logger("passerelle.dispatch")

LoadMessage = Callable[[int], Awaitable[Message]]


@dataclass
class Work:
    """One delivery to attempt. `message` is None when it was reloaded from the store."""

    delivery_id: int
    message_id: int
    order_key: str
    attempts: int
    created_at: float
    next_attempt_at: float = 0.0
    message: Message | None = field(default=None, repr=False)


@dataclass
class Outcome:
    """An attempt's outcome waiting for the committer, and what follows once it is committed."""

    work: Work
    update: DeliveryUpdate
    then: Callable[[], None]


def backoff(config: QueueConfig, attempts: int) -> float:
    """Seconds to wait before attempt `attempts + 1`: exponential, capped, with jitter."""
    base = min(config.max_backoff, config.initial_backoff * config.backoff_multiplier ** (attempts - 1))
    return max(0.0, base * (1 + random.uniform(-config.jitter, config.jitter)))


class DestinationQueue:
    def __init__(
        self,
        channel: str,
        name: str,
        destination: Destination,
        config: QueueConfig,
        store: Store,
        load_message: LoadMessage,
    ) -> None:
        self.channel = channel
        self.name = name
        self.destination = destination
        self.config = config
        self.store = store
        self.load_message = load_message
        self.feed: Feed[Work] = Feed(config.max_in_memory, self._reload)
        self._held = asyncio.Semaphore(config.max_in_memory)
        self._owner: dict[str, int] = {}
        self._waiting: dict[str, deque[Work]] = {}
        self._timers: set[asyncio.TimerHandle] = set()
        self._workers: list[asyncio.Task[None]] = []
        self._outcomes: list[Outcome] = []  # handed in, not yet committed
        self._outcomes_ready = asyncio.Event()
        self._committer: asyncio.Task[None] | None = None
        self._rescans: asyncio.Task[None] | None = None
        self.in_flight = 0  # attempts started whose outcome is not committed yet
        self._idle = asyncio.Event()  # set while no attempt is in flight (shutdown waits on it)
        self._idle.set()
        self.last_error = ""
        self.meter = metrics.destination_meter(channel, name)  # outcome counters (dashboard, /metrics)

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        if self._workers:
            return  # already running: a hot reload kept this queue
        self._workers = [
            asyncio.create_task(self._worker(), name=f"{self.channel}/{self.name}/{i}")
            for i in range(self.config.concurrency)
        ]
        self._committer = asyncio.create_task(
            self._commit_outcomes(), name=f"{self.channel}/{self.name}/commit"
        )
        if self.store.shared:
            self._rescans = asyncio.create_task(rescan_every(self.store.rescan_interval, self.feed))

    async def stop(self, timeout: float) -> None:
        """Stop taking work; wait for attempts in flight (their outcome is committed), up to `timeout`."""
        self.feed.close()
        if self._rescans is not None:
            self._rescans.cancel()
        for timer in self._timers:
            timer.cancel()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout)
        # Workers between attempts hold nothing (waiting for a slot, for work or for a key's turn):
        # cancelling them is safe, and their deliveries stay open in the store for the next start.
        tasks = [*self._workers, *([self._committer] if self._committer else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.destination.close()

    def offer(self, delivery_id: int, message: Message, order_key: str) -> None:
        """Hand over a delivery that is already committed as queued."""
        now = time.time()
        work = Work(delivery_id, message.id or 0, order_key, 0, now, now, message)
        self.feed.push(delivery_id, work)

    def resume(self, row: PendingDelivery) -> None:
        """Take back a delivery the store re-opened (an operator's resend, `Store.requeue_delivery`).

        Its attempts and age are kept: a resend is one more attempt, dead again if that fails."""
        self.feed.push(row.id, work_from_row(row))
        self.meter.outcome("queued")

    async def _reload(self, after_id: int, limit: int) -> list[tuple[int, Work]]:
        """A claim page, cut before the first delivery whose key has an older open delivery of this
        worker that memory does not hold (`PendingDelivery.follows`): that one lies at or below the
        cursor (committed after an earlier page passed its id, or offered while the feed was
        spilled), so the next reload starts below it and brings both in id order. Handing the
        newer one out first made the order guard hold it back in most kill-a-worker bus runs."""
        rows = await self.store.claim_deliveries(self.channel, self.name, after_id, limit)
        page: list[tuple[int, Work]] = []
        for row in rows:
            if row.follows and not self.feed.holds(row.follows):
                self.feed.reload_from(row.follows)
                break
            page.append((row.id, work_from_row(row)))
        return page

    # -- the worker loop -----------------------------------------------------------------------

    async def _worker(self) -> None:
        while True:
            await self._held.acquire()
            work = await self.feed.get()
            if work is None:
                self._held.release()
                return
            if not self._may_run(work):
                continue  # parked behind an earlier delivery of the same key; still held
            if work.next_attempt_at > time.time():
                self._schedule(work, work.next_attempt_at - time.time())
                continue
            if await self._first_in_line(work):
                await self._attempt(work)

    def _may_run(self, work: Work) -> bool:
        """Ordering: only the key's current owner runs; later deliveries wait in line."""
        key = work.order_key
        if not (self.config.order_by and key):
            return True
        owner = self._owner.setdefault(key, work.delivery_id)
        if owner == work.delivery_id:
            return True
        self._waiting.setdefault(key, deque()).append(work)
        return False

    async def _first_in_line(self, work: Work) -> bool:
        """The order guard of a shared store: a keyed delivery is sent only when no older one of its
        key is still open in the store. The queue's memory can be wrong there (work of several
        processes meets in the store; docs/design-notes.md, "Delivery order across workers"); when
        it is, the key's line goes back to the store and claim scans hand it out again in id order.
        One store read per keyed attempt; a single-process store's memory holds all its work, so
        it is not asked."""
        if not (self.store.shared and self.config.order_by and work.order_key):
            return True
        try:
            older = await self.store.open_line(self.channel, self.name, work.order_key, work.delivery_id)
        except StoreError as err:
            log.error("delivery_store_failed", channel=self.channel, destination=self.name,
                      delivery=work.delivery_id, error=str(err))
            self._schedule(work, backoff(self.config, max(work.attempts, 1)))
            return False
        if older is None:
            return True
        owner = "unknown"
        with contextlib.suppress(StoreError):
            owner = await self.store.delivery_owner(older)
        self._give_back_line(work, older, owner)
        return False

    def _give_back_line(self, work: Work, older: int, owner: str) -> None:
        """`work` (its key's owner here) and the deliveries waiting behind it go back to the store."""
        line = [work, *self._waiting.pop(work.order_key, ())]
        self._owner.pop(work.order_key, None)
        # Ids only: an order key may be a patient id.
        log.warning("delivery_out_of_line", channel=self.channel, destination=self.name,
                    delivery=work.delivery_id, open_before=older, older_owner=owner,
                    older_where=self._where(older, line), newer_from="store" if work.message is None
                    else "offer", given_back=len(line), feed=self.feed.state())
        for item in line:
            self._held.release()
            self.feed.give_back(item.delivery_id)

    def _where(self, delivery_id: int, line: list[Work]) -> str:
        """Where this queue holds a delivery (diagnostics of the order guard)."""
        if not self.feed.holds(delivery_id):
            return "store only"
        if any(w.delivery_id == delivery_id for w in line):
            return "waiting behind it"
        return "queued" if self.feed.queued(delivery_id) else "taken elsewhere"

    async def _attempt(self, work: Work) -> None:
        """Send once and hand the outcome to the committer (the attempt stays in flight until then)."""
        try:
            message = work.message = work.message or await self.load_message(work.message_id)
        except StoreError as err:
            # The message could not be read back, no attempt was made: try again later.
            # Store errors carry SQLite's reason, never message content: safe to log.
            log.error("delivery_store_failed", channel=self.channel, destination=self.name,
                      delivery=work.delivery_id, error=str(err))
            self._schedule(work, backoff(self.config, max(work.attempts, 1)))
            return
        self.in_flight += 1
        self._idle.clear()
        work.attempts += 1
        try:
            response = await self.destination.send(message)
        except RetryableError as err:
            self._failed(work, str(err))
        except PermanentError as err:
            self._finish(work, "rejected", str(err))
        except asyncio.CancelledError:
            self._end_attempts(1)
            raise
        except Exception as err:
            log.error(
                "destination_bug", channel=self.channel, destination=self.name, error=type(err).__name__
            )
            self._failed(work, f"unexpected {type(err).__name__} in destination")
        else:
            self._finish(work, "sent", "", response)

    def _failed(self, work: Work, error: str) -> None:
        self.last_error = error
        aged = time.time() - work.created_at >= self.config.max_age
        if work.attempts >= self.config.max_attempts or aged:
            reason = "maximum age reached" if aged else f"{work.attempts} attempts failed"
            self._finish(work, "dead", f"{reason}; last error: {error}")
            return
        delay = backoff(self.config, work.attempts)
        work.next_attempt_at = time.time() + delay
        self._hand_in(work, "retrying", error, None, lambda: self._schedule(work, delay))

    def _finish(self, work: Work, status: str, error: str, response: bytes | None = None) -> None:
        if status != "sent":
            self.last_error = error
            log.warning(
                "delivery_failed",
                channel=self.channel,
                destination=self.name,
                delivery=work.delivery_id,
                status=status,
            )
        self._hand_in(work, status, error, response, lambda: self._close(work))

    def _close(self, work: Work) -> None:
        """The final outcome is committed: forget the delivery and let its key's next one run."""
        self.feed.done(work.delivery_id)
        self._held.release()
        self._release_key(work)

    def _hand_in(
        self, work: Work, status: str, error: str, response: bytes | None, then: Callable[[], None]
    ) -> None:
        update = DeliveryUpdate(
            work.delivery_id, work.message_id, self.name, status, work.attempts, work.next_attempt_at,
            error, response,
        )  # fmt: skip
        self._outcomes.append(Outcome(work, update, then))
        self._outcomes_ready.set()

    async def _commit_outcomes(self) -> None:
        """The committer: everything handed in since the last commit, in one store call."""
        while True:
            await self._outcomes_ready.wait()
            self._outcomes_ready.clear()
            batch, self._outcomes = self._outcomes, []
            if not batch:
                continue
            try:
                await self.store.update_deliveries([o.update for o in batch])
            except Exception as err:
                # Not recorded: the deliveries are still open in the store, so they are attempted
                # again (at-least-once; receivers de-duplicate on the control id). Store errors
                # carry the database's reason, never message content; anything else (a bug) is
                # named by its type only, and the committer goes on either way.
                reason = str(err) if isinstance(err, StoreError) else f"unexpected {type(err).__name__}"
                log.error("delivery_store_failed", channel=self.channel, destination=self.name,
                          deliveries=len(batch), error=reason)
                for outcome in batch:
                    self._schedule(outcome.work, backoff(self.config, max(outcome.work.attempts, 1)))
            else:
                for outcome in batch:
                    self.meter.outcome(outcome.update.status)
                    outcome.then()
            finally:
                self._end_attempts(len(batch))

    def _end_attempts(self, count: int) -> None:
        self.in_flight -= count
        if not self.in_flight:
            self._idle.set()

    def _schedule(self, work: Work, delay: float) -> None:
        loop = asyncio.get_running_loop()
        timer: asyncio.TimerHandle

        def due() -> None:
            self._timers.discard(timer)
            self._requeue(work)

        timer = loop.call_later(delay, due)
        self._timers.add(timer)

    def _release_key(self, work: Work) -> None:
        key = work.order_key
        if not (self.config.order_by and key) or self._owner.get(key) != work.delivery_id:
            return
        line = self._waiting.get(key)
        if not line:
            self._owner.pop(key, None)
            self._waiting.pop(key, None)
            return
        following = line.popleft()
        self._owner[key] = following.delivery_id
        self._requeue(following)

    def _requeue(self, work: Work) -> None:
        """Put a taken item first in line again (it gives back its place; its next worker re-takes one)."""
        self._held.release()
        self.feed.push_urgent(work)


async def rescan_every(seconds: float, feed: Feed[Any]) -> None:
    """A shared store: look for work that became this worker's without being pushed."""
    while True:
        await asyncio.sleep(seconds)
        feed.rescan()


def work_from_row(row: PendingDelivery) -> Work:
    return Work(row.id, row.message_id, row.order_key, row.attempts, row.created_at, row.next_attempt_at)
