"""Prometheus metrics of the reporting feed, on the default registry (engine/metrics.py serves it).

`passerelle_reporting_overdue_reports` is the timeliness alert: reports of notifiable results not yet
delivered `alert_after` seconds after the result was received (set by `status.refresh_overdue`).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

REPORTS = Counter(
    "passerelle_reporting_reports", "Case reports confirmed by the health authority's broker", ["action"]
)
DELAY = Histogram(
    "passerelle_reporting_delivery_delay_seconds",
    "From receipt of the notifiable result to the broker's confirm of its report",
    buckets=(1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 24 * 3600),
)
OVERDUE = Gauge(
    "passerelle_reporting_overdue_reports",
    "Reports still undelivered after the configured delay (alert when above 0)",
)
