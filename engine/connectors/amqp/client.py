"""pika's asyncio adapter behind awaitables: connect, open a channel, declare, publish with confirms.

pika runs on the engine's own event loop (its `AsyncioConnection` uses add_reader/add_writer):
no thread, no blocking call. Every wait here has a timeout and ends early, with `AmqpError`, when
the channel or the connection closes, so a broker restart never leaves a coroutine hanging.

Publishing (`Publisher`) is always mandatory and confirmed: `publish` returns once the broker
has taken responsibility for the message (basic.ack), and raises `Unroutable` when the broker
returned it (no queue bound for its routing key) and `AmqpError` on basic.nack or a closed
channel. Returns are matched to publishes by the `x-passerelle-publish-id` header.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import ssl
from collections.abc import Callable
from typing import Any

import pika
from pika.adapters.asyncio_connection import AsyncioConnection
from pydantic import Field

from engine.connectors.tls import TlsClientConfig, client_context
from engine.contracts import BuildContext, ComponentConfig
from engine.errors import PasserelleError

PUBLISH_ID = "x-passerelle-publish-id"


class AmqpError(PasserelleError):
    """The broker is unreachable, closed the channel, or refused an operation."""


class Unroutable(AmqpError):
    """The broker returned a mandatory message: no queue is bound for its routing key."""


class BrokerConfig(ComponentConfig):
    host: str = "127.0.0.1"
    """Broker host name or address."""
    port: int = Field(default=5672, ge=1, le=65535)
    """Broker port (5671 is the usual AMQPS port)."""
    virtual_host: str = "/"
    """RabbitMQ virtual host."""
    username: str = "guest"
    """Login."""
    password: str = "guest"
    """Password; use a `${file:...}` reference, never the YAML itself."""
    tls: TlsClientConfig | None = None
    """TLS settings (server verification, optional client certificate). Without it: clear text."""
    heartbeat: int = Field(default=30, ge=0)
    """Seconds between heartbeats (0: none); a silent broker is detected within two of them."""
    connect_timeout: float = Field(default=10.0, gt=0)
    """Seconds to connect, log in and open a channel."""
    operation_timeout: float = Field(default=30.0, gt=0)
    """Seconds a declaration or a publisher confirm may take."""


def parameters(config: BrokerConfig, context: BuildContext) -> pika.ConnectionParameters:
    tls = None
    if config.tls is not None:
        server = config.tls.server_name or config.host
        tls = pika.SSLOptions(client_context(config.tls, context), server)
    return pika.ConnectionParameters(
        host=config.host, port=config.port, virtual_host=config.virtual_host,
        credentials=pika.PlainCredentials(config.username, config.password), heartbeat=config.heartbeat,
        ssl_options=tls, socket_timeout=config.connect_timeout, connection_attempts=1,
        blocked_connection_timeout=config.operation_timeout, client_properties={"product": "Passerelle"},
    )


def describe(err: BaseException | Any) -> str:
    """The innermost useful reason: pika wraps socket errors in workflow and connector errors."""
    inner = getattr(err, "exceptions", None)
    if inner:
        return describe(inner[-1])
    wrapped = getattr(err, "exception", None)
    if isinstance(wrapped, BaseException):
        return describe(wrapped)
    if getattr(err, "args", None) and isinstance(err.args[0], BaseException):
        return describe(err.args[0])
    if isinstance(err, ssl.SSLError | OSError) and getattr(err, "strerror", None):
        return str(err.strerror)
    return str(err) or type(err).__name__


class Connection:
    """One AMQP connection; `closed` resolves (with the reason) when it closes for any cause."""

    def __init__(self, where: str) -> None:
        loop = asyncio.get_running_loop()
        self.where = where
        self.opened: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[str] = loop.create_future()
        self.pika: Any = None

    @classmethod
    async def open(cls, params: pika.ConnectionParameters, timeout: float) -> Connection:
        conn = cls(f"{params.host}:{params.port}")
        conn.pika = AsyncioConnection(params, conn._on_open, conn._on_open_error, conn._on_close,
                                      custom_ioloop=asyncio.get_running_loop())
        try:
            async with asyncio.timeout(timeout):
                await conn.opened
        except TimeoutError as err:
            conn.close()
            raise AmqpError(f"cannot connect to {conn.where}: no answer within {timeout:g} s") from err
        return conn

    def _on_open(self, _conn: Any) -> None:
        settle(self.opened, None)

    def _on_open_error(self, _conn: Any, err: BaseException) -> None:
        fail(self.opened, AmqpError(f"cannot connect to {self.where}: {describe(err)}"))
        settle(self.closed, describe(err))

    def _on_close(self, _conn: Any, reason: BaseException) -> None:
        fail(self.opened, AmqpError(f"connection to {self.where} closed: {describe(reason)}"))
        settle(self.closed, describe(reason))

    async def channel(self, timeout: float) -> Channel:
        channel = Channel(self)
        self.pika.channel(on_open_callback=channel._on_open)
        await channel.wait(channel.opened, timeout, "opening a channel")
        channel.pika.add_on_close_callback(channel._on_close)
        return channel

    def close(self) -> None:
        with contextlib.suppress(Exception):
            if self.pika is not None and not (self.pika.is_closing or self.pika.is_closed):
                self.pika.close()

    async def aclose(self, timeout: float = 5.0) -> None:
        self.close()
        with contextlib.suppress(TimeoutError, AmqpError, asyncio.CancelledError):
            async with asyncio.timeout(timeout):
                await asyncio.shield(self.closed)


class Channel:
    """One AMQP channel; every awaited operation fails fast when the channel or connection closes."""

    def __init__(self, connection: Connection) -> None:
        loop = asyncio.get_running_loop()
        self.connection = connection
        self.opened: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[str] = loop.create_future()
        self.pika: Any = None

    def _on_open(self, channel: Any) -> None:
        self.pika = channel
        settle(self.opened, None)

    def _on_close(self, _channel: Any, reason: BaseException) -> None:
        settle(self.closed, describe(reason))

    @property
    def is_open(self) -> bool:
        return self.pika is not None and bool(self.pika.is_open) and not self.closed.done()

    async def wait(self, future: asyncio.Future[Any], timeout: float, doing: str) -> Any:
        """`future`'s result, unless the channel/connection closes or `timeout` passes first."""
        ends = [self.closed, self.connection.closed]
        try:
            async with asyncio.timeout(timeout):
                await asyncio.wait([future, *ends], return_when=asyncio.FIRST_COMPLETED)
        except TimeoutError as err:
            raise AmqpError(f"{doing} on {self.connection.where}: no answer within {timeout:g} s") from err
        if future.done():
            return future.result()
        reason = next(f.result() for f in ends if f.done())
        raise AmqpError(f"{doing} on {self.connection.where} failed: {reason}")

    async def call(self, method: str, timeout: float, **kwargs: Any) -> Any:
        """Call a pika channel method that takes `callback`, and await that callback."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        getattr(self.pika, method)(callback=lambda frame: settle(future, frame), **kwargs)
        return await self.wait(future, timeout, method.replace("_", " "))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            if self.pika is not None and self.pika.is_open:
                self.pika.close()


class Publisher:
    """Confirmed, mandatory publishing on one channel (confirm mode is set by `enable`)."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self.confirmed = 0
        self._next_tag = 1
        self._pending: dict[int, tuple[str, asyncio.Future[None]]] = {}
        self._returned: dict[str, str] = {}

    async def enable(self, timeout: float) -> Publisher:
        self.channel.pika.add_on_return_callback(self._on_return)
        await self.channel.call("confirm_delivery", timeout, ack_nack_callback=self._on_confirm)
        return self

    async def publish(self, exchange: str, routing_key: str, body: bytes, properties: pika.BasicProperties,
                      timeout: float) -> None:
        if not self.channel.is_open:
            raise AmqpError(f"the channel to {self.channel.connection.where} is closed")
        publish_id = secrets.token_hex(8)
        properties.headers = {**(properties.headers or {}), PUBLISH_ID: publish_id}
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending[self._next_tag] = (publish_id, future)
        self._next_tag += 1
        self.channel.pika.basic_publish(exchange, routing_key, body, properties, mandatory=True)
        await self.channel.wait(future, timeout, "waiting for the publisher confirm")

    def _on_return(self, _channel: Any, method: Any, properties: Any, _body: bytes) -> None:
        publish_id = (properties.headers or {}).get(PUBLISH_ID)
        if publish_id:
            self._returned[str(publish_id)] = f"{method.reply_code} {method.reply_text}"

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        last = method.delivery_tag
        tags = [t for t in self._pending if t <= last] if method.multiple else [last]
        acked = isinstance(method, pika.spec.Basic.Ack)
        for tag in tags:
            entry = self._pending.pop(tag, None)
            if entry is None:
                continue
            publish_id, future = entry
            self.confirmed += 1
            returned = self._returned.pop(publish_id, None)
            if returned is not None:
                fail(future, Unroutable(f"the broker returned the message as unroutable ({returned})"))
            elif not acked:
                fail(future, AmqpError("the broker refused the message (basic.nack)"))
            else:
                settle(future, None)


def settle(future: asyncio.Future[Any], value: Any) -> None:
    if not future.done():
        future.set_result(value)


def fail(future: asyncio.Future[Any], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)
        future.exception()  # retrieved: nobody may be waiting any more (a closed connection)


OnMessage = Callable[[Any, Any, Any, bytes], None]
