"""The engine in a background thread with its own event loop: fast protocol tests over real sockets."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from engine.config import load_project
from engine.connectors.mllp.source import MllpSource
from engine.supervisor import Engine

T = TypeVar("T")


class EngineThread:
    def __init__(self, config: Path) -> None:
        self.engine = Engine(load_project(config))
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._main())
        except BaseException as err:  # surfaced to the test by start()
            self.error = err
            self.ready.set()

    async def _main(self) -> None:
        await self.engine.start()
        self.ready.set()
        await self.engine._stopping.wait()
        await self.engine.stop()

    def start(self) -> EngineThread:
        self.thread.start()
        self.ready.wait(30)
        if self.error is not None:
            raise self.error
        return self

    def port(self, channel: str) -> int:
        source = next(c.source for c in self.engine.channels if c.name == channel)
        assert isinstance(source, MllpSource)
        return source.port

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on the engine's loop (e.g. a store query) and wait for it."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.engine.request_stop)
        self.thread.join(60)
        self.loop.close()
