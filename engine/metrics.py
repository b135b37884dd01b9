"""Prometheus metrics of the engine (prometheus-client), and the live counters the dashboard reads.

One module-level `REGISTRY`. The hot path only touches a `ChannelMeter` / `DestinationMeter`
fetched once per component at build time: their labelled children are looked up once
(`Counter.labels(...)` is a dict lookup under a lock, too slow per message), and each keeps
plain in-process totals the dashboard samples every second for its sparklines.

Gauges that describe state (queue depth, in-flight, oldest open delivery, alerts) are set by
the dashboard just before a scrape, from the store and the running queues. Labels are channel,
destination and status names only: never message content.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

# No `*_created` timestamp series: they double the scrape and nothing here uses them.
disable_created_metrics()  # type: ignore[no-untyped-call]

REGISTRY = CollectorRegistry(auto_describe=True)

MESSAGES = Counter(
    "passerelle_messages",
    "Messages stored, by the status they reached at intake or after their steps.",
    ["channel", "status"],
    registry=REGISTRY,
)
ACK_LATENCY = Histogram(
    "passerelle_ack_latency_seconds",
    "From a frame read to its acknowledgement written (store commit included).",
    ["channel"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
    registry=REGISTRY,
)
CONNECTED = Gauge("passerelle_connected_peers", "Open source connections.", ["channel"], registry=REGISTRY)
DELIVERIES = Counter(
    "passerelle_deliveries",
    "Delivery attempt outcomes (sent, retrying, dead, rejected) and resends (queued).",
    ["channel", "destination", "status"],
    registry=REGISTRY,
)
QUEUE_DEPTH = Gauge(
    "passerelle_queue_depth",
    "Open deliveries (queued or retrying).",
    ["channel", "destination"],
    registry=REGISTRY,
)
QUEUE_IN_FLIGHT = Gauge(
    "passerelle_queue_in_flight",
    "Delivery attempts running now.",
    ["channel", "destination"],
    registry=REGISTRY,
)
QUEUE_OLDEST = Gauge(
    "passerelle_queue_oldest_age_seconds",
    "Age of the oldest open delivery (0 when empty).",
    ["channel", "destination"],
    registry=REGISTRY,
)
DEAD_LETTERS = Gauge(
    "passerelle_dead_letters",
    "Deliveries closed as dead or rejected, kept for resend.",
    ["channel", "destination"],
    registry=REGISTRY,
)
SOURCE_UP = Gauge(
    "passerelle_source_up", "1 when the channel's source is listening.", ["channel"], registry=REGISTRY
)
ALERT_ACTIVE = Gauge(
    "passerelle_alert_active", "1 while an alert rule fires.", ["alert", "channel"], registry=REGISTRY
)

MESSAGE_STATUSES = ("received", "queued", "sent", "filtered", "rejected", "errored")
DELIVERY_OUTCOMES = ("queued", "retrying", "sent", "dead", "rejected")


@dataclass
class ChannelMeter:
    """Per-channel counters for the hot path; `totals` are read by the dashboard's sampler."""

    channel: str
    totals: dict[str, int] = field(default_factory=dict)
    intake: int = 0
    ack_count: int = 0
    ack_seconds: float = 0.0
    peers: int = 0

    def __post_init__(self) -> None:
        self._messages = {s: MESSAGES.labels(self.channel, s) for s in MESSAGE_STATUSES}
        self._latency = ACK_LATENCY.labels(self.channel)
        self._connected = CONNECTED.labels(self.channel)
        self.totals = dict.fromkeys(MESSAGE_STATUSES, 0)

    def stored(self, status: str) -> None:
        """A new message was committed at intake with `status` (duplicates are not stored)."""
        self.intake += 1
        self.processed(status)

    def processed(self, status: str) -> None:
        """A message reached `status` (at intake, or after its steps in received mode)."""
        child = self._messages.get(status)
        if child is not None:
            child.inc()
            self.totals[status] += 1

    def acknowledged(self, seconds: float) -> None:
        self._latency.observe(seconds)
        self.ack_count += 1
        self.ack_seconds += seconds

    def connection(self, delta: int) -> None:
        self.peers += delta
        self._connected.inc(delta)


@dataclass
class DestinationMeter:
    channel: str
    destination: str
    totals: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._children = {s: DELIVERIES.labels(self.channel, self.destination, s) for s in DELIVERY_OUTCOMES}
        self.totals = dict.fromkeys(DELIVERY_OUTCOMES, 0)

    def outcome(self, status: str) -> None:
        child = self._children.get(status)
        if child is not None:
            child.inc()
            self.totals[status] += 1


_LOCK = threading.Lock()
_CHANNELS: dict[str, ChannelMeter] = {}
_DESTINATIONS: dict[tuple[str, str], DestinationMeter] = {}


def channel_meter(channel: str) -> ChannelMeter:
    """The channel's meter (one per channel name and process; shared by its source and intake)."""
    with _LOCK:
        meter = _CHANNELS.get(channel)
        if meter is None:
            meter = _CHANNELS[channel] = ChannelMeter(channel)
        return meter


def destination_meter(channel: str, destination: str) -> DestinationMeter:
    with _LOCK:
        key = (channel, destination)
        meter = _DESTINATIONS.get(key)
        if meter is None:
            meter = _DESTINATIONS[key] = DestinationMeter(channel, destination)
        return meter
