"""A broker link for publishing destinations: one connection and one confirming publisher,
opened on first use and reopened after any failure. Shared by the `amqp` destination and the
notifiable-disease `reporting_feed`, which publish the same way and differ only in what.

Contract: `publish` returns once the broker confirmed the message; an unroutable message
(mandatory flag) or any broker failure is a RetryableError naming the peer.
"""

from __future__ import annotations

import asyncio

import pika

from engine.connectors.amqp.client import AmqpError, Connection, Publisher, Unroutable
from engine.errors import RetryableError


class PublisherLink:
    def __init__(
        self,
        params: pika.ConnectionParameters,
        where: str,
        exchange: str,
        exchange_type: str,
        connect_timeout: float,
        operation_timeout: float,
    ) -> None:
        self.params = params
        self.where = where
        self.exchange = exchange
        self.exchange_type = exchange_type
        self.connect_timeout = connect_timeout
        self.operation_timeout = operation_timeout
        self._connection: Connection | None = None
        self._publisher: Publisher | None = None
        self._lock = asyncio.Lock()

    @property
    def confirmed(self) -> int:
        """Publisher confirms received on the current channel (for tests and metrics)."""
        return self._publisher.confirmed if self._publisher is not None else 0

    async def publish(self, routing_key: str, body: bytes, properties: pika.BasicProperties) -> None:
        publisher = await self._connected()
        try:
            await publisher.publish(self.exchange, routing_key, body, properties, self.operation_timeout)
        except Unroutable as err:
            raise RetryableError(
                f"{self.where}: exchange {self.exchange!r}, routing key {routing_key!r}: {err}"
            ) from err
        except AmqpError as err:
            await self.drop()
            raise RetryableError(f"publishing to {self.where} failed: {err}") from err

    async def drop(self) -> None:
        connection, self._connection, self._publisher = self._connection, None, None
        if connection is not None:
            await connection.aclose()

    async def _connected(self) -> Publisher:
        async with self._lock:
            if self._publisher is not None and self._publisher.channel.is_open:
                return self._publisher
            await self.drop()
            try:
                self._publisher = await self._open()
            except AmqpError as err:
                await self.drop()
                raise RetryableError(f"cannot publish to {self.where}: {err}") from err
            return self._publisher

    async def _open(self) -> Publisher:
        self._connection = await Connection.open(self.params, self.connect_timeout)
        channel = await self._connection.channel(self.connect_timeout)
        if self.exchange_type:
            await channel.call(
                "exchange_declare",
                self.operation_timeout,
                exchange=self.exchange,
                exchange_type=self.exchange_type,
                durable=True,
            )
        return await Publisher(channel).enable(self.operation_timeout)
