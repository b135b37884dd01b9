"""The engine process: builds every channel, resumes unfinished work, runs until told to stop.

Start order: store, the work bus when configured (`bus: amqp`, engine/bus/), then per channel
its destination queues and work (which reload everything a previous run left open), then its
source. Stop order on SIGTERM/SIGINT: every source stops accepting (peers get no new ACKs),
in-flight intake finishes, queues finish their current attempts up to `shutdown_timeout`, the
bus publishes what it holds, the store closes. Anything unfinished stays open in the store and
resumes at the next start; `kill -9` at any moment loses nothing that was acknowledged, because
an ACK is only sent after the commit.
"""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import structlog

from engine import registry
from engine.bus.base import WorkFactory
from engine.channel import Channel, message_loader
from engine.config import ChannelSpec, Project
from engine.contracts import BuildContext, Destination, Source, Step
from engine.dispatch import DestinationQueue
from engine.heap import limit_arenas, trim_heap_forever
from engine.reload import ChannelSlot, load_or_report, snapshot, swap
from engine.store import open_store
from engine.store.base import Store
from engine.workers import serves_dashboard

log = structlog.get_logger("passerelle.engine")


def build(kind: registry.Kind, type_name: str, config: Any, context: BuildContext) -> Any:
    return registry.load(kind, type_name)(config, context)


def build_channel(
    spec: ChannelSpec,
    store: Store,
    context: BuildContext,
    source: Source | None = None,
    kept: dict[str, DestinationQueue] | None = None,
    work: WorkFactory | None = None,
) -> Channel:
    """A channel version. On hot reload, `source` and `kept` queues are the running ones reused."""
    source = source or build("source", spec.source.type, spec.source.config, context)
    steps: list[Step] = [build("step", s.type, s.config, context) for s in spec.steps]
    charset = str(getattr(spec.source.config, "charset", ""))
    queues = []
    for dest in spec.destinations:
        if kept and dest.name in kept:
            queues.append(kept[dest.name])
            continue
        destination: Destination = build("destination", dest.type, dest.config, context)
        queues.append(
            DestinationQueue(
                spec.name, dest.name, destination, dest.queue, store, message_loader(store, charset)
            )
        )
    return Channel(spec, source, steps, queues, store, work)


class Engine:
    def __init__(self, project: Project, services: dict[str, Any] | None = None) -> None:
        self.project = project
        self.store = open_store(project.engine.store, project.root)
        self.services = services or {}
        self.slots: dict[str, ChannelSlot] = {}
        self._stopping = asyncio.Event()
        self._watcher: asyncio.Task[None] | None = None
        self._reloading = asyncio.Lock()
        self.dashboard: Any = None  # engine.dashboard.server.DashboardServer when dashboard.enabled
        self.bus: Any = None  # engine.bus.amqp.AmqpBus with `bus: amqp`

    @property
    def channels(self) -> list[Channel]:
        """The channel versions currently in charge."""
        return [slot.current for slot in self.slots.values()]

    async def start(self) -> None:
        if self.project.engine.bus.type == "amqp":  # before the store opens: it names the worker
            from engine.bus.amqp import AmqpBus
            from engine.store.postgres import PostgresStore

            assert isinstance(self.store, PostgresStore)  # config: the bus needs the PostgreSQL store
            self.bus = AmqpBus(self.project.engine.bus, self.store)
        await self.store.open()
        self.services.setdefault("store", self.store)
        if self.bus is not None:
            await self.bus.start()
        # Notifiable-disease reporting jobs (weekly aggregates, overdue-report gauge): started only
        # when config/reporting.yaml exists (engine/reporting/scheduler.py).
        from engine.reporting.scheduler import start_reporting_jobs

        self.reporting_jobs = start_reporting_jobs(self.project.root, self.store)
        for spec in self.project.channels:
            if spec.enabled:
                await self._start_channel(spec)
        if self.project.engine.reload_interval:
            self._watcher = asyncio.create_task(self._watch_channels(), name="channel-watcher")
        # After the channels: it shows and acts on them. With --workers, the first worker serves it.
        if self.project.engine.dashboard.enabled and serves_dashboard():
            from engine.dashboard.server import DashboardServer

            self.dashboard = DashboardServer(self)
            await self.dashboard.start()
        log.info("engine_started", channels=list(self.slots))

    async def _start_channel(self, spec: ChannelSpec) -> None:
        channel = self._build(spec)
        slot = self.slots[spec.name] = ChannelSlot(channel)
        await self.store.record_channel_version(
            spec.name, spec.version, spec.file.read_text(encoding="utf-8")
        )
        channel.start_work()
        await channel.source.start(slot.accept)

    def _build(
        self, spec: ChannelSpec, source: Source | None = None, kept: dict[str, DestinationQueue] | None = None
    ) -> Channel:
        context = BuildContext(self.project.root, spec.name, self.services)
        return build_channel(spec, self.store, context, source, kept, self.bus.work if self.bus else None)

    async def stop(self) -> None:
        timeout = self.project.engine.shutdown_timeout
        if self.dashboard is not None:  # first: no action may reach a channel that is stopping
            await self.dashboard.stop()
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.gather(self._watcher, return_exceptions=True)
        async with self._reloading:
            await asyncio.gather(*(c.stop_intake() for c in self.channels))
            await asyncio.gather(*(c.stop(timeout) for c in self.channels))
        if self.bus is not None:
            await self.bus.stop(timeout)
        jobs = getattr(self, "reporting_jobs", None)  # see start()
        if jobs is not None:
            jobs.stop()
        await self.store.close()
        log.info("engine_stopped")

    # -- hot reload ----------------------------------------------------------------------------

    async def _watch_channels(self) -> None:
        folder = self.project.root / self.project.engine.channels_dir
        seen = snapshot(folder)
        while True:
            await asyncio.sleep(self.project.engine.reload_interval)
            current = snapshot(folder)
            if current != seen:
                seen = current
                await self.reload()

    async def reload(self) -> bool:
        """Apply the channel files as they are now; False (and nothing changes) when one is invalid."""
        specs = load_or_report(self.project)
        if specs is None:
            return False
        async with self._reloading:
            await self._apply({s.name: s for s in specs if s.enabled})
        return True

    async def _apply(self, wanted: dict[str, ChannelSpec]) -> None:
        timeout = self.project.engine.shutdown_timeout
        for name in [n for n in self.slots if n not in wanted]:
            channel = self.slots.pop(name).current
            await channel.stop_intake()
            await channel.stop(timeout)
            log.info("channel_removed", channel=name)
        for name, spec in wanted.items():
            slot = self.slots.get(name)
            if slot is None:
                await self._start_channel(spec)
            elif slot.current.spec.version != spec.version:
                content = spec.file.read_text(encoding="utf-8")
                await self.store.record_channel_version(name, spec.version, content)
                await swap(slot, spec, self._build, timeout)

    def request_stop(self) -> None:
        self._stopping.set()

    async def run_until_stopped(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        await self.start()
        trimming = asyncio.create_task(trim_heap_forever(), name="heap-trim")  # engine/heap.py: why
        await self._stopping.wait()
        log.info("engine_stopping")
        trimming.cancel()
        await self.stop()


def run(project: Project) -> None:
    """Run the engine in this process until SIGTERM/SIGINT."""
    limit_arenas()  # before any thread starts (engine/heap.py: why)
    engine = Engine(project)
    if project.engine.event_loop == "uvloop":
        import uvloop

        uvloop.run(engine.run_until_stopped())
    else:
        asyncio.run(engine.run_until_stopped())
