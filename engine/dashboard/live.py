"""The live view: one sampler task builds a snapshot of every channel each second.

Every page, the server-sent events stream and `/api/channels` read the same snapshot, so the
cost does not grow with the number of people watching. In-process counters (engine.metrics
meters) give rates and ACK latency; the store gives queue depths, dead letters and totals.
The per-status totals are a wider query: it runs at most every `20 x its own duration` (at
least every second), so it can never take more than ~5 % of a core however big the store is.
The snapshot also sets the state gauges of `/metrics` and evaluates the alert rules.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from typing import TYPE_CHECKING, Any

import structlog

from engine import metrics
from engine.config import AlertRule
from engine.dashboard.alerts import Sample, evaluate
from engine.dashboard.queries import StoreQueries
from engine.errors import StoreError

if TYPE_CHECKING:
    from engine.channel import Channel
    from engine.dispatch import DestinationQueue
    from engine.supervisor import Engine

log = structlog.get_logger("passerelle.dashboard")

SERIES = 120  # points (seconds) of each sparkline
HISTORY = 3601  # samples kept for windowed alert rates (up to an hour)
TICK = 1.0


def overdue_reports() -> float:
    """The notifiable-disease feed's overdue count, kept by its scheduler (engine/reporting)."""
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value("passerelle_reporting_overdue_reports") or 0.0


def source_up(source: object) -> bool:
    """Whether a source is taking messages: a listening server, or a running polling task."""
    server = getattr(source, "server", None)
    if server is not None:
        return bool(server.is_serving())
    if hasattr(source, "server"):
        return False  # a listener that is not listening (yet, or any more)
    task = getattr(source, "_task", None)  # polling sources (sftp, amqp) run one task
    if task is not None:
        return not task.done()
    return not hasattr(source, "_task")


class Live:
    def __init__(self, engine: Engine, queries: StoreQueries, rules: list[AlertRule]) -> None:
        self.engine = engine
        self.queries = queries
        self.rules = rules
        self.snapshot: dict[str, Any] = {"at": 0.0, "channels": [], "alerts": []}
        self.version = 0
        self._changed = asyncio.Event()
        self._rates: dict[str, deque[float]] = {}
        self._latency: dict[str, deque[float | None]] = {}
        self._previous: dict[str, tuple[int, int, float]] = {}
        self._history: dict[str, deque[Sample]] = {}
        self._counts: dict[str, dict[str, int]] = {}
        self._rejections: dict[str, dict[str, Any]] = {}
        self._counts_due = 0.0
        self._alerting: set[tuple[str, str]] = set()
        self._task: asyncio.Task[None] | None = None
        self.closed = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="dashboard-sampler")

    async def stop(self) -> None:
        self.closed = True
        self._notify()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def wait_newer(self, version: int, timeout: float = 15.0) -> int:
        """Wait for a snapshot newer than `version` (or the timeout); the current version."""
        if self.version == version and not self.closed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout)
        return self.version

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def _run(self) -> None:
        while True:
            try:
                await self.sample()
            except StoreError as err:
                log.warning("dashboard_sample_failed", error=str(err))
            await asyncio.sleep(TICK)

    # -- one sample ----------------------------------------------------------------------------

    async def sample(self) -> None:
        channels = list(self.engine.channels)
        names = [c.name for c in channels]
        pairs = [(c.name, q.name) for c in channels for q in c.queues]
        queues = await self.queries.queue_states(pairs)
        await self._refresh_counts(names)
        now = time.time()
        views = [self._channel(c, queues, now) for c in channels]
        snapshot: dict[str, Any] = {
            "at": now,
            "channels": views,
            "alerts": [],
            "reporting_overdue": overdue_reports(),
        }
        snapshot["alerts"] = evaluate(self.rules, snapshot, self._history)
        self._export(snapshot)
        self.snapshot = snapshot
        self.version += 1
        self._notify()

    async def _refresh_counts(self, names: list[str]) -> None:
        if time.monotonic() < self._counts_due and set(names) <= set(self._counts):
            return
        began = time.monotonic()
        self._counts = await self.queries.message_counts(names)
        self._rejections = await self.queries.last_rejections(names)
        took = time.monotonic() - began
        self._counts_due = time.monotonic() + max(TICK, 20 * took)

    def _channel(
        self, channel: Channel, queues: dict[tuple[str, str], dict[str, Any]], now: float
    ) -> dict[str, Any]:
        meter = channel.meter
        rate, latency = self._rates_of(channel, now)
        qviews = [queue_view(q, queues.get((channel.name, q.name), {}), now) for q in channel.queues]
        return {
            "name": channel.name,
            "description": channel.spec.description,
            "source_type": channel.spec.source.type,
            "respond_after": channel.spec.respond_after,
            "up": source_up(channel.source),
            "peers": meter.peers,
            "counts": self._counts.get(channel.name, {}),
            "intake_since_start": meter.intake,
            "rate": rate,
            "latency_ms": latency,
            "rate_series": list(self._rates[channel.name]),
            "latency_series": list(self._latency[channel.name]),
            "queues": qviews,
            "last_rejection": self._rejections.get(channel.name),
            "last_error": next((q["last_error"] for q in qviews if q["last_error"]), ""),
        }

    def _rates_of(self, channel: Channel, now: float) -> tuple[float, float | None]:
        """Messages per second and mean ACK latency (ms) since the previous sample; records history."""
        name, meter = channel.name, channel.meter
        intake, acks, seconds = meter.intake, meter.ack_count, meter.ack_seconds
        last = self._previous.get(name, (intake, acks, seconds))
        self._previous[name] = (intake, acks, seconds)
        rate = float(intake - last[0]) / TICK
        latency = round(1000 * (seconds - last[2]) / (acks - last[1]), 2) if acks > last[1] else None
        self._rates.setdefault(name, deque([0.0] * SERIES, maxlen=SERIES)).append(rate)
        self._latency.setdefault(name, deque([None] * SERIES, maxlen=SERIES)).append(latency)
        errors = meter.totals["rejected"] + sum(
            q.meter.totals["dead"] + q.meter.totals["rejected"] for q in channel.queues
        )
        self._history.setdefault(name, deque(maxlen=HISTORY)).append(Sample(now, intake, errors))
        return rate, latency

    def _export(self, snapshot: dict[str, Any]) -> None:
        """State gauges of /metrics, from the snapshot."""
        for channel in snapshot["channels"]:
            metrics.SOURCE_UP.labels(channel["name"]).set(1 if channel["up"] else 0)
            for q in channel["queues"]:
                labels = (channel["name"], q["destination"])
                metrics.QUEUE_DEPTH.labels(*labels).set(q["depth"])
                metrics.QUEUE_IN_FLIGHT.labels(*labels).set(q["in_flight"])
                metrics.QUEUE_OLDEST.labels(*labels).set(q["oldest_age"])
                metrics.DEAD_LETTERS.labels(*labels).set(q["dead"])
        firing = {(a["name"], a["channel"]) for a in snapshot["alerts"]}
        for key in firing | self._alerting:
            metrics.ALERT_ACTIVE.labels(*key).set(1 if key in firing else 0)
        self._alerting = firing


def queue_view(queue: DestinationQueue, state: dict[str, Any], now: float) -> dict[str, Any]:
    oldest = state.get("oldest_created_at")
    return {
        "destination": queue.name,
        "depth": int(state.get("depth", 0)),
        "in_flight": queue.in_flight,
        "oldest_age": round(now - oldest, 1) if oldest else 0.0,
        "dead": int(state.get("dead", 0)),
        "last_error": queue.last_error,
        "sent": queue.meter.totals["sent"],
        "failed": queue.meter.totals["dead"] + queue.meter.totals["rejected"],
    }
