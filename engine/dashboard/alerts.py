"""Alert rules (engine.yaml `alerts:`) evaluated on each live snapshot: pure functions of it.

A rule applies to every channel (and destination) its globs match; each match that is over its
threshold is one active alert. `error_rate` needs the history of per-channel totals, kept by the
sampler: the fraction of the messages taken in over the window that were rejected at intake or
whose delivery failed for good.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

from engine.config import AlertRule


@dataclass(frozen=True)
class Sample:
    """Totals of one channel at one instant (for windowed rates)."""

    at: float
    intake: int
    errors: int


def evaluate(
    rules: list[AlertRule], snapshot: dict[str, Any], history: dict[str, deque[Sample]]
) -> list[dict[str, Any]]:
    active = []
    for rule in rules:
        if rule.kind == "reporting_overdue":  # platform-wide, not per channel
            overdue = float(snapshot.get("reporting_overdue", 0))
            active += [alert(rule, "", "", overdue)] if overdue > rule.threshold else []
            continue
        for channel in snapshot["channels"]:
            if fnmatchcase(channel["name"], rule.channel):
                active.extend(channel_alerts(rule, channel, history.get(channel["name"], deque())))
    return active


def channel_alerts(rule: AlertRule, channel: dict[str, Any], samples: deque[Sample]) -> list[dict[str, Any]]:
    name = channel["name"]
    if rule.kind == "channel_down":
        return [alert(rule, name, "", 1.0)] if not channel["up"] else []
    if rule.kind == "error_rate":
        rate = error_rate(samples, rule.window)
        return [alert(rule, name, "", round(rate, 4))] if rate > rule.threshold else []
    key = "depth" if rule.kind == "queue_depth" else "oldest_age"
    return [
        alert(rule, name, q["destination"], float(q[key]))
        for q in channel["queues"]
        if fnmatchcase(q["destination"], rule.destination) and float(q[key]) > rule.threshold
    ]


def error_rate(samples: deque[Sample], window: float) -> float:
    if len(samples) < 2:
        return 0.0
    last = samples[-1]
    first = next((s for s in samples if s.at >= last.at - window), samples[0])
    taken = last.intake - first.intake
    errors = last.errors - first.errors
    if errors <= 0:
        return 0.0
    return errors / max(taken, errors)


def alert(rule: AlertRule, channel: str, destination: str, value: float) -> dict[str, Any]:
    return {
        "name": rule.name,
        "kind": rule.kind,
        "channel": channel,
        "destination": destination,
        "value": value,
        "threshold": rule.threshold,
    }
