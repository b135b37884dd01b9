"""Destination `reporting_feed`: a report per new or updated notifiable case, to the authority's AMQP.

For each message it reads `message.vars["notifiable"]` (set by the `detect_notifiable` step, whose
vars survive the later CDA transform); without that var an HL7 v2 message is examined here with the
same catalogue. A message with nothing notifiable is skipped: `send` returns at once and the
delivery counts as sent (the lab channel's other destinations are unaffected, nothing is filtered).

Per disease found: upsert the case (engine/reporting/cases.py, idempotent per message), and unless
the case's current version is already delivered, render the report (report.py, MSH-10
`<case>-v<version>`) and publish it persistent, mandatory, with publisher confirms (the AMQP
connector's client); the confirm time is stored as the delivery time. Broker trouble, an unroutable
report or a busy database -> RetryableError (the case stays recorded: the retry publishes its
latest version). A malformed `notifiable` var or a bad routing-key template -> PermanentError.
The broker is only contacted when sending: the engine starts without it.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import ParamSpec, TypeVar

import pika

from engine.connectors.amqp.client import BrokerConfig
from engine.connectors.amqp.client import parameters as connection_parameters
from engine.connectors.amqp.link import PublisherLink
from engine.contracts import BuildContext
from engine.errors import ParseError, PermanentError, RetryableError
from engine.message import HL7V2, Message
from engine.reporting import metrics
from engine.reporting.cases import Case, CaseStore, Identity, Incoming, split_by_disease
from engine.reporting.catalogue import Catalogue, load_catalogue
from engine.reporting.detection import VAR, Detection, detect_hl7
from engine.reporting.report import control_id, render_report

P = ParamSpec("P")
T = TypeVar("T")


class Config(BrokerConfig):
    exchange: str = "domi.reports"
    """Durable exchange of the health authority, declared at connect (type `exchange_type`)."""
    exchange_type: str = "topic"
    """Exchange type to declare (`topic`, `direct`, `fanout`); '' uses an existing exchange as is."""
    routing_key: str = "notifiable.{disease}"
    """Routing key template: {disease}, {case_id}, {version}, {action}, {channel}."""
    catalogue: str = "config/notifiable-diseases.yaml"
    """Notifiable-disease catalogue (disease names, windows), relative to the project root."""
    database: str = ""
    """SQLite file of the cases; '' uses the engine's store file (tables `reporting_*`)."""
    national_authority: str = "RNPP"
    """Assigning authority of the national id, when this destination has to examine HL7 itself."""
    sending_facility: str = "PLATFORM"
    """MSH-4 of the reports."""
    receiving_facility: str = "HEALTH-AUTHORITY"
    """MSH-6 of the reports."""


EXAMPLE = {
    "type": "reporting_feed",
    "name": "authority",
    "host": "rabbitmq.authority.example",
    "exchange": "domi.reports",
    "routing_key": "notifiable.{disease}",
}


class ReportingFeed:
    def __init__(self, config: Config, context: BuildContext) -> None:
        self.config = config
        self.catalogue: Catalogue = load_catalogue(context.path(config.catalogue))
        self.context = context
        self._cases: CaseStore | None = None
        self.where = f"{config.host}:{config.port}"
        self.link = PublisherLink(
            connection_parameters(config, context),
            self.where,
            config.exchange,
            config.exchange_type,
            config.connect_timeout,
            config.operation_timeout,
        )

    async def send(self, message: Message) -> bytes | None:
        detection = self.detection(message)
        enterprise_id = message.vars.get("enterprise_id", "")
        for disease, found in split_by_disease(detection).items():
            await self._report(message, disease, found, Identity.of(enterprise_id, detection.patient))
        return None

    async def close(self) -> None:
        await self.link.drop()

    @property
    def cases(self) -> CaseStore:
        """The case store, opened on first use (building the channel needs no database)."""
        if self._cases is None:
            store = self.context.services.get("store")  # its encryption keys seal the cases' patient data
            cipher = getattr(store, "cipher", None)
            self._cases = CaseStore(_database(self.config, self.context), cipher=cipher)
        return self._cases

    def detection(self, message: Message) -> Detection:
        text = message.vars.get(VAR)
        if text is None:
            return self._examine(message)
        try:
            return Detection.from_json(text)
        except (ValueError, KeyError, TypeError) as err:
            raise PermanentError(
                f"message var {VAR!r} is not a detection record: {type(err).__name__}"
            ) from err

    def _examine(self, message: Message) -> Detection:
        """No detect_notifiable step ran: HL7 v2 is examined here, anything else has nothing to report."""
        if message.content_type != HL7V2:
            return Detection()
        try:
            return detect_hl7(message.hl7, self.catalogue, self.config.national_authority)
        except ParseError as err:
            raise PermanentError(f"the HL7 message cannot be read: {err}") from err

    async def _report(self, message: Message, disease: str, found: Detection, identity: Identity) -> None:
        disease_def = self.catalogue.diseases.get(disease)
        window = disease_def.window_days if disease_def is not None else 90
        key = str(message.id) if message.id is not None else f"{message.channel}/{message.control_id}"
        incoming = Incoming(key, message.id, message.received_at, identity, disease, window, found)
        upsert = await self._db(self.cases.record, incoming)
        if upsert.delivered:
            return
        case = await self._db(self.cases.case, upsert.case_id)
        assert case is not None  # recorded just above; cases are never deleted
        await self._publish(case, message.channel)
        await self._db(self.cases.mark_delivered, case.case_id, case.version)
        metrics.REPORTS.labels(case.action).inc()
        metrics.DELAY.observe(max(0.0, time.time() - message.received_at))

    async def _db(self, call: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """A blocking case-store call in a thread; a locked or failing database is retryable."""
        try:
            return await asyncio.to_thread(call, *args, **kwargs)
        except sqlite3.Error as err:
            raise RetryableError(f"reporting case database: {type(err).__name__}: {err}") from err

    async def _publish(self, case: Case, channel: str) -> None:
        fields = {
            "disease": case.disease,
            "case_id": case.case_id,
            "version": case.version,
            "action": case.action,
            "channel": channel,
        }
        try:
            routing_key = self.config.routing_key.format(**fields)
        except (KeyError, IndexError, ValueError) as err:
            raise PermanentError(
                f"routing_key template {self.config.routing_key!r} is invalid: {err}"
            ) from err
        body = render_report(
            case,
            self.catalogue,
            ("PASSERELLE", self.config.sending_facility),
            ("DOMI", self.config.receiving_facility),
        )
        properties = pika.BasicProperties(
            content_type=HL7V2,
            delivery_mode=2,
            timestamp=int(time.time()),
            message_id=control_id(case.case_id, case.version),
            headers={
                "x-case-id": case.case_id,
                "x-case-version": case.version,
                "x-case-action": case.action,
                "x-disease": case.disease,
            },
        )
        await self.link.publish(routing_key, body, properties)


def _database(config: Config, context: BuildContext) -> Path:
    if config.database:
        return context.path(config.database)
    store = context.services.get("store")
    path = getattr(store, "path", None)
    if not isinstance(path, Path):
        raise PermanentError("reporting_feed: set `database`: the engine's store has no SQLite file")
    return path
