"""Server-rendered pages (Jinja2 templates), the live event stream, `/metrics` and `/health/*`.

Forms post back with the session's CSRF token (hidden field `csrf`) and redirect after the
action (post/redirect/get). The patient search is a POST so the term never appears in a URL.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlencode

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from engine import metrics
from engine.dashboard import actions
from engine.dashboard.actions import ActionError
from engine.dashboard.api import (
    authenticate,
    board,
    client,
    message_detail,
    message_filter,
    search,
    set_session_cookie,
)
from engine.dashboard.app import LOGIN_COOKIE, SESSION_COOKIE, Dashboard, Handler, form, guard
from engine.dashboard.auth import Session, csrf_ok
from engine.dashboard.live import source_up
from engine.store.base import MESSAGE_STATUSES


def safe_next(value: str) -> str:
    """Only a local path: never an open redirect."""
    return value if value.startswith("/") and not value.startswith("//") and "\\" not in value else "/"


def first(data: dict[str, list[str]], name: str, default: str = "") -> str:
    values = data.get(name)
    return values[0] if values else default


def problem(request: Request, session: Session, err: ActionError) -> Response:
    return board(request).render(request, session, "error.html", status_code=err.status, message=str(err))


# -- login ---------------------------------------------------------------------------------------


async def login_form(request: Request) -> Response:
    dash = board(request)
    token = secrets.token_urlsafe(24)
    response = dash.render(
        request,
        None,
        "login.html",
        login_csrf=token,
        next=safe_next(request.query_params.get("next", "/")),
        error=request.query_params.get("error", ""),
        no_users=not dash.user_count(),
    )
    response.set_cookie(
        LOGIN_COOKIE,
        token,
        httponly=True,
        samesite="strict",
        path="/login",
        secure=dash.secure(request),
        max_age=3600,
    )
    return response


async def login(request: Request) -> Response:
    dash = board(request)
    data = await form(request)
    given, target = first(data, "csrf"), safe_next(first(data, "next", "/"))
    if not csrf_ok(request.cookies.get(LOGIN_COOKIE, ""), given):
        return RedirectResponse("/login?error=expired", status_code=303)
    outcome = await authenticate(dash, request, first(data, "user"), first(data, "password"))
    if not isinstance(outcome, Session):
        return dash.render(
            request,
            None,
            "login.html",
            status_code=429 if outcome == "blocked" else 401,
            login_csrf=given,
            next=target,
            error=outcome,
            no_users=not dash.user_count(),
        )
    response = RedirectResponse(target, status_code=303)
    set_session_cookie(dash, request, response, outcome)
    return response


async def logout(request: Request, session: Session) -> Response:
    dash = board(request)
    dash.sessions.end(session.token)
    await dash.queries.audit(
        session.user, session.role, "logout", f"user {session.user}", {}, client(request)
    )
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


# -- channels --------------------------------------------------------------------------------------


async def overview(request: Request, session: Session) -> Response:
    dash = board(request)
    return dash.render(request, session, "overview.html", snapshot=dash.live.snapshot)


async def channel(request: Request, session: Session) -> Response:
    dash, name = board(request), request.path_params["name"]
    found = next((c for c in dash.live.snapshot["channels"] if c["name"] == name), None)
    if found is None:
        return problem(request, session, ActionError(f"no channel {name}", 404))
    recent = await dash.queries.search(message_filter({"channel": name, "limit": 25}, session))
    running = dash.channel(name)
    steps = [s.type for s in running.spec.steps] if running else []
    return dash.render(request, session, "channel.html", channel=found, recent=recent, steps=steps)


async def events(request: Request, session: Session) -> Response:
    """Server-sent events: the live snapshot each second, while the session lasts."""
    live, sessions = board(request).live, board(request).sessions

    async def stream() -> AsyncIterator[str]:
        version = -1
        yield "retry: 3000\n\n"
        while not live.closed and sessions.alive(session.token):
            version = await live.wait_newer(version)
            if not live.closed:
                yield f"data: {json.dumps(live.snapshot)}\n\n"

    return StreamingResponse(stream(), media_type="text/event-stream", headers={"X-Accel-Buffering": "no"})


# -- messages -------------------------------------------------------------------------------------


async def messages(request: Request, session: Session) -> Response:
    dash = board(request)
    params: dict[str, Any] = dict(request.query_params)
    if request.method == "POST":
        params = {k: v[0] for k, v in (await form(request)).items() if k != "csrf"}
    error, rows = "", []
    try:
        rows = await search(dash, session, message_filter(params, session), client(request))
    except ActionError as err:
        error = str(err)
    return dash.render(
        request,
        session,
        "messages.html",
        rows=rows,
        params=params,
        error=error,
        statuses=MESSAGE_STATUSES,
        channels=[c.name for c in dash.engine.channels],
    )


async def message(request: Request, session: Session) -> Response:
    dash = board(request)
    found = await message_detail(dash, session, int(request.path_params["id"]), client(request), full=False)
    if found is None:
        return problem(request, session, ActionError("no such message", 404))
    return dash.render(
        request, session, "message.html", m=found, notice=request.query_params.get("notice", "")
    )


async def reprocess(request: Request, session: Session) -> Response:
    message_id = int(request.path_params["id"])
    try:
        result = await actions.reprocess(board(request), session, message_id, client(request))
    except ActionError as err:
        return problem(request, session, err)
    notice = f"reprocessed from #{message_id}: {result['status']}"
    return RedirectResponse(
        f"/messages/{result['new_message']}?{urlencode({'notice': notice})}", status_code=303
    )


# -- queues ----------------------------------------------------------------------------------------


async def queues(request: Request, session: Session) -> Response:
    dash, query = board(request), request.query_params
    dead = await dash.queries.deliveries(
        ("dead", "rejected"), query.get("channel", ""), query.get("destination", ""), 200
    )
    return dash.render(
        request,
        session,
        "queues.html",
        snapshot=dash.live.snapshot,
        dead=dead,
        notice=query.get("notice", ""),
    )


async def resend(request: Request, session: Session) -> Response:
    data = await form(request)
    try:
        ids = [int(i) for i in data.get("ids", [])]
        result = await actions.resend(board(request), session, ids, client(request))
    except ValueError:
        return problem(request, session, ActionError("ids must be delivery numbers"))
    except ActionError as err:
        return problem(request, session, err)
    notice = f"{len(result['resent'])} resent, {len(result['skipped'])} skipped"
    back = safe_next(first(data, "back", "/queues"))
    return RedirectResponse(
        f"{back}{'&' if '?' in back else '?'}{urlencode({'notice': notice})}", status_code=303
    )


# -- MPI review -----------------------------------------------------------------------------------


async def review(request: Request, session: Session) -> Response:
    dash = board(request)
    status = request.query_params.get("status", "open")
    error, items = "", []
    try:
        items = await actions.review_items(dash, status)
    except Exception as err:  # the MPI is optional: say why the queue cannot be shown
        error = f"the MPI review queue is not available ({type(err).__name__})"
    return dash.render(
        request,
        session,
        "review.html",
        items=items,
        status=status,
        error=error,
        notice=request.query_params.get("notice", ""),
    )


async def review_item(request: Request, session: Session) -> Response:
    try:
        item = await actions.review_item(
            board(request), session, int(request.path_params["id"]), client(request)
        )
    except ActionError as err:
        return problem(request, session, err)
    return board(request).render(request, session, "review_item.html", item=item)


async def review_decision(request: Request, session: Session) -> Response:
    review_id = int(request.path_params["id"])
    data = await form(request)
    try:
        await actions.review_decision(
            board(request),
            session,
            review_id,
            first(data, "decision"),
            first(data, "enterprise_id"),
            first(data, "reason"),
            client(request),
        )
    except ActionError as err:
        return problem(request, session, err)
    return RedirectResponse(
        f"/review?{urlencode({'notice': f'review {review_id} decided'})}", status_code=303
    )


async def audit(request: Request, session: Session) -> Response:
    dash = board(request)
    before = request.query_params.get("before_id")
    entries = await dash.queries.audit_entries(200, int(before) if before else None)
    return dash.render(request, session, "audit.html", entries=entries)


# -- metrics and health (no login: Prometheus and load balancers) ------------------------------------


async def metrics_endpoint(request: Request) -> Response:
    dash = board(request)
    if not dash.config.public_metrics and dash.session(request) is None:
        return PlainTextResponse("log in first", status_code=401)
    return Response(generate_latest(metrics.REGISTRY), media_type=CONTENT_TYPE_LATEST)


async def health_live(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def health_ready(request: Request) -> Response:
    """Ready: the store accepts a write transaction and every channel's source is taking messages."""
    dash = board(request)
    writable = await asyncio.to_thread(dash.queries.writable)
    sources = {c.name: source_up(c.source) for c in dash.engine.channels}
    ok = writable and all(sources.values())
    return JSONResponse(
        {"status": "ready" if ok else "not ready", "store_writable": writable, "sources": sources},
        status_code=200 if ok else 503,
    )


PAGES: list[tuple[str, str, Handler, tuple[str, ...]]] = [
    ("/logout", "view", logout, ("POST",)),
    ("/", "view", overview, ("GET",)),
    ("/channels/{name}", "view", channel, ("GET",)),
    ("/events", "view", events, ("GET",)),
    ("/messages", "view", messages, ("GET", "POST")),
    ("/messages/{id:int}", "view", message, ("GET",)),
    ("/messages/{id:int}/reprocess", "act", reprocess, ("POST",)),
    ("/queues", "view", queues, ("GET",)),
    ("/deliveries/resend", "act", resend, ("POST",)),
    ("/review", "review", review, ("GET",)),
    ("/review/{id:int}", "review", review_item, ("GET",)),
    ("/review/{id:int}/decision", "review", review_decision, ("POST",)),
    ("/audit", "audit", audit, ("GET",)),
]


def routes(dash: Dashboard) -> list[BaseRoute]:
    found: list[BaseRoute] = [
        Route("/login", login_form, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
        Route("/health/live", health_live, methods=["GET"]),
        Route("/health/ready", health_ready, methods=["GET"]),
    ]
    found += [
        Route(path, guard(dash, perm, handler), methods=list(methods))
        for path, perm, handler, methods in PAGES
    ]
    return found
