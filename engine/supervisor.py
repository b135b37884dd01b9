"""The engine process: builds every channel, resumes unfinished work, runs until told to stop.

Start order: store, then per channel its destination queues and pipeline (which reload
everything a previous run left open), then its source. Stop order on SIGTERM/SIGINT: every
source stops accepting (peers get no new ACKs), in-flight intake finishes, queues finish
their current attempts up to `shutdown_timeout`, the store closes. Anything unfinished stays
open in the store and resumes at the next start; `kill -9` at any moment loses nothing that
was acknowledged, because an ACK is only sent after the commit.
"""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import structlog

from engine import registry
from engine.channel import Channel, message_loader
from engine.config import ChannelSpec, Project
from engine.contracts import BuildContext, Destination, Source, Step
from engine.dispatch import DestinationQueue
from engine.store import open_store
from engine.store.base import Store

log = structlog.get_logger("passerelle.engine")


def build(kind: registry.Kind, type_name: str, config: Any, context: BuildContext) -> Any:
    return registry.load(kind, type_name)(config, context)


def build_channel(spec: ChannelSpec, store: Store, context: BuildContext) -> Channel:
    source: Source = build("source", spec.source.type, spec.source.config, context)
    steps: list[Step] = [build("step", s.type, s.config, context) for s in spec.steps]
    charset = str(getattr(spec.source.config, "charset", ""))
    queues = []
    for dest in spec.destinations:
        destination: Destination = build("destination", dest.type, dest.config, context)
        queues.append(
            DestinationQueue(
                spec.name, dest.name, destination, dest.queue, store, message_loader(store, charset)
            )
        )
    return Channel(spec, source, steps, queues, store)


class Engine:
    def __init__(self, project: Project, services: dict[str, Any] | None = None) -> None:
        self.project = project
        self.store = open_store(project.engine.store, project.root)
        self.services = services or {}
        self.channels: list[Channel] = []
        self._stopping = asyncio.Event()

    async def start(self) -> None:
        await self.store.open()
        self.services.setdefault("store", self.store)
        for spec in self.project.channels:
            if not spec.enabled:
                continue
            context = BuildContext(self.project.root, spec.name, self.services)
            channel = build_channel(spec, self.store, context)
            await channel.start()
            self.channels.append(channel)
        log.info("engine_started", channels=[c.name for c in self.channels])

    async def stop(self) -> None:
        timeout = self.project.engine.shutdown_timeout
        await asyncio.gather(*(c.stop_intake() for c in self.channels))
        await asyncio.gather(*(c.stop(timeout) for c in self.channels))
        await self.store.close()
        log.info("engine_stopped")

    def request_stop(self) -> None:
        self._stopping.set()

    async def run_until_stopped(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        await self.start()
        await self._stopping.wait()
        log.info("engine_stopping")
        await self.stop()


def run(project: Project) -> None:
    """Run the engine in this process until SIGTERM/SIGINT."""
    engine = Engine(project)
    if project.engine.event_loop == "uvloop":
        import uvloop

        uvloop.run(engine.run_until_stopped())
    else:
        asyncio.run(engine.run_until_stopped())
