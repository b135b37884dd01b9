"""AMQP destination: publishes each message persistent, mandatory, and waits for the broker's confirm.

Outcome mapping: basic.ack -> sent. Returned as unroutable (no queue bound for the routing key),
basic.nack, a lost connection or no confirm within `operation_timeout` -> RetryableError: the
message waits in its durable queue (with backoff) until a binding exists or the broker is back,
and is never silently dropped. A routing key or header template naming an unknown field ->
PermanentError (the channel configuration is wrong for this message).

Routing key and headers are templates over the message's metadata: {channel}, {id} (store id),
{control_id}, {sender}, {content_type}, and for HL7 v2 {message_code}, {trigger_event} (MSH-9).
The AMQP message_id is the control id (receivers de-duplicate on it), else `<channel>-<id>`.
"""

from __future__ import annotations

import time

import pika
from pydantic import Field

from engine.connectors.amqp.client import BrokerConfig
from engine.connectors.amqp.client import parameters as connection_parameters
from engine.connectors.amqp.link import PublisherLink
from engine.contracts import BuildContext
from engine.errors import ParseError, PermanentError
from engine.formats.hl7v2 import read_header
from engine.message import HL7V2, Message


class Config(BrokerConfig):
    exchange: str
    """Exchange to publish to (`""`: the default exchange, routing key = queue name)."""
    exchange_type: str = ""
    """When set (`topic`, `direct`, `fanout`, `headers`): declare the exchange, durable, at connect."""
    routing_key: str = "{channel}"
    """Routing key template (see the module documentation for the fields)."""
    headers: dict[str, str] = Field(default_factory=dict)
    """Extra headers, each a template like the routing key."""


AmqpDestinationConfig = Config  # a distinct name for annotations

EXAMPLE = {
    "type": "amqp",
    "name": "bus",
    "host": "rabbitmq.internal",
    "exchange": "passerelle.results",
    "exchange_type": "topic",
    "routing_key": "lab.{message_code}.{trigger_event}",
    "headers": {"x-source-channel": "{channel}"},
}


class AmqpDestination:
    def __init__(self, config: AmqpDestinationConfig, context: BuildContext) -> None:
        self.config = config
        self.where = f"{config.host}:{config.port}"
        self.link = PublisherLink(
            connection_parameters(config, context),
            self.where,
            config.exchange,
            config.exchange_type,
            config.connect_timeout,
            config.operation_timeout,
        )

    @property
    def confirmed(self) -> int:
        """Publisher confirms received on the current channel (for tests and metrics)."""
        return self.link.confirmed

    async def send(self, message: Message) -> bytes | None:
        fields = template_fields(message)
        routing_key = render(self.config.routing_key, fields, "routing_key")
        headers = {
            name: render(value, fields, f"headers.{name}") for name, value in self.config.headers.items()
        }
        properties = pika.BasicProperties(
            content_type=message.content_type,
            delivery_mode=2,
            timestamp=int(time.time()),
            message_id=message.control_id or f"{message.channel}-{message.id}",
            headers={
                "x-passerelle-channel": message.channel,
                "x-passerelle-message-id": message.id,
                **headers,
            },
        )
        await self.link.publish(routing_key, message.content(), properties)
        return None

    async def close(self) -> None:
        await self.link.drop()


def template_fields(message: Message) -> dict[str, object]:
    fields: dict[str, object] = {
        "channel": message.channel,
        "id": message.id or 0,
        "control_id": message.control_id,
        "sender": message.sender,
        "content_type": message.content_type,
        "message_code": "",
        "trigger_event": "",
    }
    if message.content_type == HL7V2:
        try:
            header = read_header(message.content())
            fields.update(message_code=header.message_code, trigger_event=header.trigger_event)
        except ParseError:
            pass
    return fields


def render(template: str, fields: dict[str, object], option: str) -> str:
    try:
        return template.format(**fields)
    except (KeyError, IndexError, ValueError) as err:
        raise PermanentError(f"{option} template {template!r} is invalid: {err}") from err
