"""`config/reporting.yaml`: the weekly aggregate job and the timeliness alert (unknown keys refused)."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field

from engine.connectors.amqp.client import BrokerConfig


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class AggregatePublish(BrokerConfig):
    """Where each weekly aggregate is published (RabbitMQ, persistent, publisher confirms)."""

    exchange: str = "domi.aggregates"
    """Exchange the aggregate CSV is published to (declared durable)."""
    exchange_type: str = "topic"
    """Type of the exchange when declared."""
    routing_key: str = "domi.aggregate.weekly"
    """Routing key of the aggregate message (mandatory routing: unroutable is retried)."""


class AggregateSettings(Model):
    enabled: bool = True
    """Produce the weekly aggregate file."""
    day_of_week: str = "mon"
    """Cron day of week of the weekly run (apscheduler syntax); it covers the previous ISO week."""
    hour: int = Field(default=6, ge=0, le=23)
    """Hour of the weekly run (engine local time)."""
    minute: int = Field(default=0, ge=0, le=59)
    """Minute of the weekly run."""
    directory: str = "var/out/domi-aggregates"
    """Folder (file drop, e.g. a folder an SFTP server publishes) receiving `domi-aggregate-YYYY-Www.csv`."""
    country: str = "LU"
    """ReportingCountry column (ISO 3166-1 alpha-2)."""
    age_groups: list[int] = Field(default_factory=lambda: [0, 1, 5, 15, 25, 45, 65])
    """Lower bounds of the age groups, ascending (ECDC: <1, 1-4, 5-14, 15-24, 25-44, 45-64, 65+)."""
    regions: dict[str, str] = Field(default_factory=dict)
    """Postal-code prefix -> region code (NUTS); the longest matching prefix wins."""
    default_region: str = "UNK"
    """Region of a patient whose postal code matches no prefix (or is missing)."""
    publish: AggregatePublish | None = None
    """Also publish each aggregate over AMQP; it is retried every timeliness check until confirmed."""


class TimelinessSettings(Model):
    alert_after_seconds: float = Field(default=3600, gt=0)
    """A report still undelivered this long after its result was received is overdue (dashboard, metric)."""
    check_interval_seconds: float = Field(default=60, gt=0)
    """How often the overdue gauge is refreshed."""


class ReportingSettings(Model):
    database: str = ""
    """SQLite file of the cases; '' is the engine's store file."""
    catalogue: str = "config/notifiable-diseases.yaml"
    """Notifiable-disease catalogue (disease names in the aggregates)."""
    aggregates: AggregateSettings = Field(default_factory=AggregateSettings)
    """The weekly aggregates for the European surveillance reporting."""
    timeliness: TimelinessSettings = Field(default_factory=TimelinessSettings)
    """The delivery-delay alert."""


def load_settings(path: Path) -> ReportingSettings:
    data = yaml.safe_load(path.read_text(encoding="utf-8")) if path.exists() else None
    return ReportingSettings.model_validate(data or {})
