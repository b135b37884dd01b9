"""The Starlette application: routes, the access-control guard, security headers.

Every page and API route goes through `guard(permission, ...)`: no session -> 401 (API) or the
login page; a role without the permission -> 403; an unsafe method without the session's CSRF
token -> 403. `/metrics` (unless `public_metrics: false`) and `/health/*` are open: they carry
counts and states only.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from engine.contracts import BuildContext
from engine.dashboard.auth import RateLimiter, Session, Sessions, UserFile, csrf_ok
from engine.dashboard.live import Live
from engine.dashboard.pg_queries import PostgresQueries
from engine.dashboard.queries import Queries, StoreQueries

if TYPE_CHECKING:
    from engine.mpi.service import Mpi
    from engine.supervisor import Engine

HERE = Path(__file__).parent
SESSION_COOKIE = "passerelle_session"
LOGIN_COOKIE = "passerelle_login"
UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})
MAX_FORM_BYTES = 64 * 1024

Handler = Callable[[Request, Session], Awaitable[Response]]


class Dashboard:
    """What every route needs: the engine, read queries, the live sampler, users and sessions."""

    def __init__(self, engine: Engine) -> None:
        config = engine.project.engine.dashboard
        self.engine = engine
        self.config = config
        self.queries = store_queries(engine)
        self.live = Live(engine, self.queries, list(engine.project.engine.alerts))
        self.users = UserFile(engine.project.root / config.users_file)
        self.sessions = Sessions(config.session_idle_minutes * 60, config.session_max_hours * 3600)
        # Per user name, and (more loosely: an office may share one address) per client address.
        self.limiter = RateLimiter(config.login_attempts, config.login_window)
        self.client_limiter = RateLimiter(config.login_attempts * 4, config.login_window)
        self.templates = Environment(
            loader=FileSystemLoader(HERE / "templates"),
            autoescape=select_autoescape(default=True),
            auto_reload=False,
        )
        self.templates.filters["ts"] = format_time
        self.templates.filters["tojson_pretty"] = lambda v: json.dumps(v, indent=2, ensure_ascii=False)

    async def start(self) -> None:
        await self.queries.open()
        await self.live.sample()
        self.live.start()

    async def closing(self) -> None:
        """Tell live streams to end so the server can stop without waiting for them."""
        self.live.closed = True
        self.live._notify()

    async def stop(self) -> None:
        await self.live.stop()
        await self.queries.close()

    def user_count(self) -> int:
        return len(self.users.users())

    def channel(self, name: str) -> Any:
        return next((c for c in self.engine.channels if c.name == name), None)

    def mpi(self) -> Mpi:
        from engine.contracts import BuildContext
        from engine.mpi.service import mpi_from

        return mpi_from(BuildContext(self.engine.project.root, "dashboard", self.engine.services))

    # -- sessions ------------------------------------------------------------------------------

    def session(self, request: Request) -> Session | None:
        token = request.cookies.get(SESSION_COOKIE, "")
        return self.sessions.get(token, self.users) if token else None

    def secure(self, request: Request) -> bool:
        if self.config.secure_cookies == "auto":
            return request.url.scheme == "https"
        return self.config.secure_cookies == "always"

    def render(
        self, request: Request, session: Session | None, name: str, status_code: int = 200, **context: Any
    ) -> HTMLResponse:
        template = self.templates.get_template(name)
        alerts = self.live.snapshot.get("alerts", [])
        html = template.render(
            session=session, request=request, alerts=alerts, path=request.url.path, **context
        )
        return HTMLResponse(html, status_code=status_code)


def store_queries(engine: Engine) -> StoreQueries:
    """The dashboard's reads and audit log on the engine's store backend."""
    from engine.store.postgres import PostgresStore

    if isinstance(engine.store, PostgresStore):
        return PostgresQueries(engine.store.dsn, engine.store.cipher)
    return Queries(engine.project.store_path, engine.store.cipher)


def format_time(value: float | None) -> str:
    if not value:
        return ""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(value)))


# -- request helpers --------------------------------------------------------------------------


async def form(request: Request) -> dict[str, list[str]]:
    """The urlencoded form body (parsed once, bounded)."""
    cached = request.scope.get("passerelle.form")
    if cached is None:
        body = await request.body()
        text = body[:MAX_FORM_BYTES].decode("utf-8", errors="replace")
        is_form = request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded")
        cached = parse_qs(text, keep_blank_values=True) if is_form else {}
        request.scope["passerelle.form"] = cached
    return dict(cached)


async def field(request: Request, name: str, default: str = "") -> str:
    values = (await form(request)).get(name)
    return values[0] if values else default


def is_api(request: Request) -> bool:
    return request.url.path.startswith("/api/")


def denied(request: Request, status: int, reason: str) -> Response:
    if is_api(request):
        return JSONResponse({"error": reason}, status_code=status)
    if status == 401:
        return RedirectResponse(f"/login?next={request.url.path}", status_code=303)
    return HTMLResponse(f"<h1>{status}</h1><p>{reason}</p><p><a href='/'>Back</a></p>", status_code=status)


def guard(dash: Dashboard, permission: str, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        session = dash.session(request)
        if session is None:
            return denied(request, 401, "log in first")
        if not session.may(permission):
            return denied(request, 403, f"your role ({session.role}) may not do this")
        if request.method in UNSAFE:
            given = request.headers.get("x-csrf-token") or await field(request, "csrf")
            if not csrf_ok(session.csrf, given):
                return denied(request, 403, "missing or wrong CSRF token: reload the page")
        return await handler(request, session)

    return endpoint


class SecurityHeaders:
    """Headers on every response: no framing, no sniffing, no referrer, no caching of pages."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        static = str(scope.get("path", "")).startswith("/static/")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [
                    (
                        b"content-security-policy",
                        b"default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self';"
                        b" frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
                    ),
                    (b"x-content-type-options", b"nosniff"),
                    (b"x-frame-options", b"DENY"),
                    (b"referrer-policy", b"no-referrer"),
                ]
                if not static:
                    headers.append((b"cache-control", b"no-store"))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


def create_app(dash: Dashboard) -> Starlette:
    from engine.dashboard import api, pages

    routes: list[BaseRoute] = [
        *pages.routes(dash),
        *api.routes(dash),
        Mount("/static", app=StaticFiles(directory=HERE / "static"), name="static"),
        *dsp_mount(dash),
    ]
    app = Starlette(routes=routes)
    app.state.dash = dash
    app.add_middleware(SecurityHeaders)
    return app


def dsp_mount(dash: Dashboard) -> list[BaseRoute]:
    """The DSP query API (engine/dsp/api.py) under /api/dsp: roles with patient-data permission
    only, each request audited (documents are patient data). The DSP opens on first use."""
    try:
        from engine.dsp.api import dsp_routes
        from engine.dsp.service import dsp_from
    except ImportError:  # the DSP is not part of this installation
        return []
    opened: list[Starlette] = []

    async def protected(scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        session = dash.session(request)
        if session is None or not session.may("phi"):
            status, text = (
                (401, "log in first") if session is None else (403, "your role may not see documents")
            )
            await JSONResponse({"error": text}, status_code=status)(scope, receive, send)
            return
        where = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        client = request.client.host if request.client else ""
        await dash.queries.audit(session.user, session.role, "dsp-query", where, {}, client)
        if not opened:
            context = BuildContext(dash.engine.project.root, "dashboard", dash.engine.services)
            opened.append(Starlette(routes=dsp_routes(await asyncio.to_thread(dsp_from, context))))
        await opened[0](scope, receive, send)

    return [Mount("/api/dsp", app=protected)]
