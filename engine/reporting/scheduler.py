"""The engine's reporting jobs (apscheduler, on the engine's event loop), when config/reporting.yaml exists.

- weekly: the previous ISO week's aggregate CSV, written atomically to the configured folder
  (`domi-aggregate-YYYY-Www.csv`; a re-run rewrites the same file) and, when `publish` is set,
  published over AMQP with confirms; an `.unsent` marker stays beside it until the broker
  confirmed, and every timeliness check retries (a broker outage delays a week, never loses it);
- every `check_interval_seconds`: the overdue-report gauge.
Both run the blocking SQLite work in a thread; a failure is logged (no patient data) and retried
at the next run.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pika
import structlog
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from engine.connectors.amqp.client import parameters
from engine.connectors.amqp.link import PublisherLink
from engine.connectors.file.destination import write_synced
from engine.contracts import BuildContext
from engine.errors import RetryableError
from engine.reporting.aggregates import previous_week, weekly_csv
from engine.reporting.cases import CaseStore
from engine.reporting.settings import ReportingSettings, load_settings
from engine.reporting.status import refresh_overdue
from engine.store.cipher import PayloadCipher

SETTINGS = Path("config/reporting.yaml")
log = structlog.get_logger("passerelle.reporting")


def write_aggregate(
    root: Path, database: Path, settings: ReportingSettings, week: str, cipher: PayloadCipher | None = None
) -> Path:
    folder = root / settings.aggregates.directory
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"domi-aggregate-{week}.csv"
    temp = folder / f".{target.name}.tmp"
    cases = CaseStore(database, cipher=cipher)
    write_synced(temp, weekly_csv(cases, week, settings.aggregates).encode("utf-8"), 0o640, True)
    temp.replace(target)
    if settings.aggregates.publish is not None:
        unsent(target).touch()  # removed once the broker confirmed the publication
    return target


def unsent(aggregate: Path) -> Path:
    return aggregate.with_name(f".{aggregate.name}.unsent")


class ReportingJobs:
    def __init__(
        self, root: Path, database: Path, settings: ReportingSettings, cipher: PayloadCipher | None = None
    ) -> None:
        self.root, self.database, self.settings = root, database, settings
        self.cipher = cipher  # the store's encryption at rest: the cases' patient data are sealed
        self.scheduler = AsyncIOScheduler(event_loop=asyncio.get_running_loop())
        publish = settings.aggregates.publish
        self.link = (
            None
            if publish is None
            else PublisherLink(
                parameters(publish, BuildContext(root, "reporting")),
                f"{publish.host}:{publish.port}",
                publish.exchange,
                publish.exchange_type,
                publish.connect_timeout,
                publish.operation_timeout,
            )
        )

    def start(self) -> ReportingJobs:
        a, t = self.settings.aggregates, self.settings.timeliness
        if a.enabled:
            self.scheduler.add_job(
                self.aggregate,
                "cron",
                day_of_week=a.day_of_week,
                hour=a.hour,
                minute=a.minute,
                id="domi-weekly-aggregate",
                coalesce=True,
                misfire_grace_time=6 * 3600,
            )
        self.scheduler.add_job(
            self.timeliness,
            "interval",
            seconds=t.check_interval_seconds,
            id="domi-timeliness",
            coalesce=True,
            max_instances=1,
        )
        self.scheduler.start()
        return self

    async def aggregate(self, week: str = "") -> Path | None:
        week = week or previous_week(time.time())
        try:
            path = await asyncio.to_thread(
                write_aggregate, self.root, self.database, self.settings, week, self.cipher
            )
        except Exception as err:  # kept running: the next run retries
            log.error("reporting_aggregate_failed", week=week, error=type(err).__name__)
            return None
        log.info("reporting_aggregate_written", week=week)
        await self.publish_pending()
        return path

    async def publish_pending(self) -> int:
        """Publish every aggregate not yet confirmed by the broker (oldest first); the count sent."""
        if self.link is None:
            return 0
        folder = self.root / self.settings.aggregates.directory
        sent = 0
        for marker in sorted(folder.glob(".domi-aggregate-*.csv.unsent")):
            aggregate = folder / marker.name[1 : -len(".unsent")]
            try:
                await self._publish(aggregate)
            except (RetryableError, OSError) as err:  # kept: the next check retries
                log.warning("reporting_aggregate_unsent", file=aggregate.name, error=str(err))
                break
            marker.unlink()
            sent += 1
        return sent

    async def _publish(self, aggregate: Path) -> None:
        assert self.link is not None and self.settings.aggregates.publish is not None
        week = aggregate.stem.removeprefix("domi-aggregate-")
        properties = pika.BasicProperties(
            content_type="text/csv",
            delivery_mode=2,
            timestamp=int(time.time()),
            message_id=aggregate.stem,
            headers={"x-iso-week": week},  # the receiver de-duplicates on it
        )
        body = await asyncio.to_thread(aggregate.read_bytes)
        await self.link.publish(self.settings.aggregates.publish.routing_key, body, properties)

    async def timeliness(self) -> None:
        try:
            await asyncio.to_thread(
                refresh_overdue, self.database, self.settings.timeliness.alert_after_seconds
            )
        except Exception as err:  # the database may be busy: next interval
            log.warning("reporting_timeliness_failed", error=type(err).__name__)
        await self.publish_pending()

    def stop(self) -> None:
        self.scheduler.shutdown(wait=False)
        if self.link is not None:
            asyncio.get_running_loop().create_task(self.link.drop())


def start_reporting_jobs(root: Path, store: Any) -> ReportingJobs | None:
    """Start the jobs if `root/config/reporting.yaml` exists (else None). Call on the engine's loop."""
    path = root / SETTINGS
    if not path.exists():
        return None
    settings = load_settings(path)
    database = root / settings.database if settings.database else getattr(store, "path", None)
    if not isinstance(database, Path):
        log.warning("reporting_jobs_disabled", reason="no SQLite database for the cases")
        return None
    return ReportingJobs(root, database, settings, getattr(store, "cipher", None)).start()
