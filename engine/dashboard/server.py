"""The dashboard's web server: uvicorn serving the Starlette app inside the engine's event loop.

No separate process: the pages read live engine state (queues, meters) and actions reach the
running channels directly. The socket is bound here (so a busy port is an error at start, and
port 0 works for tests); uvicorn's own signal handling is disabled because the engine owns
SIGTERM/SIGINT and stops the dashboard first.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator
from typing import TYPE_CHECKING

import structlog
import uvicorn

from engine.dashboard.app import Dashboard, create_app
from engine.errors import PasserelleError

if TYPE_CHECKING:
    from engine.supervisor import Engine

log = structlog.get_logger("passerelle.dashboard")


class _EmbeddedServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # the engine handles signals and stops us


class DashboardServer:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.config = engine.project.engine.dashboard
        self.dashboard = Dashboard(engine)
        self.port = self.config.port
        self._server: _EmbeddedServer | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        sock = bind(self.config.host, self.config.port)
        self.port = sock.getsockname()[1]
        await self.dashboard.start()
        config = uvicorn.Config(
            create_app(self.dashboard),
            loop="none",
            lifespan="off",
            log_config=None,
            access_log=False,
            http="h11",
            ws="none",
            proxy_headers=True,
            server_header=False,
            timeout_graceful_shutdown=3,
        )
        self._server = _EmbeddedServer(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]), name="dashboard-server")
        # uvicorn sets a flag, not an event, once it listens (or the task ends on a startup error).
        while not self._server.started and not self._task.done():  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        if self._task.done():
            self._task.result()  # raises what stopped it
        log.info(
            "dashboard_listening", host=self.config.host, port=self.port, users=self.dashboard.user_count()
        )
        if not self.dashboard.user_count():
            log.warning("dashboard_no_users", hint="create one: passerelle user add NAME --role admin")

    async def stop(self) -> None:
        """Stop serving (live streams end), then the sampler."""
        await self.dashboard.closing()
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.dashboard.stop()


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise PasserelleError(f"dashboard cannot listen on {host}:{port}: {err.strerror}") from err
    sock.listen(128)
    sock.setblocking(False)
    return sock
