"""The JSON API: everything the pages show and do. Described by `ENDPOINTS` (openapi.py builds
the OpenAPI document from the same table, so the description cannot drift from the routes).

Authentication: `POST /api/login` sets the session cookie and returns the CSRF token; every
other route needs the session, and unsafe methods the `X-CSRF-Token` header.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from engine.dashboard import actions
from engine.dashboard.actions import ActionError
from engine.dashboard.app import LOGIN_COOKIE, SESSION_COOKIE, Handler, guard
from engine.dashboard.auth import PERMISSIONS, Session, dummy_hash, verify_password
from engine.dashboard.queries import MessageFilter
from engine.dashboard.render import view
from engine.store.base import DELIVERY_STATUSES, MESSAGE_STATUSES

if TYPE_CHECKING:
    from engine.dashboard.app import Dashboard


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str
    permission: str
    summary: str
    handler: Handler
    query: tuple[str, ...] = ()
    body: tuple[str, ...] = ()


def client(request: Request) -> str:
    return request.client.host if request.client else ""


def fail(err: ActionError) -> JSONResponse:
    return JSONResponse({"error": str(err)}, status_code=err.status)


async def json_body(request: Request) -> dict[str, Any]:
    try:
        data = json.loads(await request.body() or b"{}")
    except ValueError as err:
        raise ActionError("the body is not JSON") from err
    if not isinstance(data, dict):
        raise ActionError("the body must be a JSON object")
    return data


# -- login -----------------------------------------------------------------------------------


async def authenticate(dash: Dashboard, request: Request, name: str, password: str) -> Session | str:
    """A new session, or why not (`blocked` when rate limited, `wrong` otherwise). Audited."""
    address = client(request)
    if dash.limiter.blocked(name) or dash.client_limiter.blocked(address):
        await dash.queries.audit(name, "", "login-blocked", f"user {name}", {}, address)
        return "blocked"
    user = dash.users.get(name)
    ok = await asyncio.to_thread(verify_password, password, user.password if user else dummy_hash())
    if user is None or not ok:
        dash.limiter.failed(name)
        dash.client_limiter.failed(address)
        await dash.queries.audit(name, "", "login-failed", f"user {name}", {}, address)
        return "wrong"
    dash.limiter.succeeded(name)
    session = dash.sessions.create(user)
    await dash.queries.audit(user.name, user.role, "login", f"user {name}", {}, client(request))
    return session


def set_session_cookie(dash: Dashboard, request: Request, response: Response, session: Session) -> None:
    response.set_cookie(
        SESSION_COOKIE,
        session.token,
        httponly=True,
        samesite="strict",
        path="/",
        secure=dash.secure(request),
        max_age=int(dash.sessions.max_seconds),
    )
    response.delete_cookie(LOGIN_COOKIE, path="/login")


def session_info(session: Session) -> dict[str, Any]:
    return {
        "user": session.user,
        "role": session.role,
        "csrf": session.csrf,
        "permissions": sorted(p for p, roles in PERMISSIONS.items() if session.role in roles),
    }


# -- message search --------------------------------------------------------------------------


def parse_time(value: str) -> float | None:
    """Epoch seconds, or ISO 8601 (local time when no offset, as a browser's datetime-local sends)."""
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError as err:
        raise ActionError(f"bad time {value!r}: use ISO 8601 (2025-03-14T09:30) or epoch seconds") from err


def message_filter(params: Mapping[str, Any], session: Session) -> MessageFilter:
    status = str(params.get("status") or "")
    if status and status not in MESSAGE_STATUSES:
        raise ActionError(f"status must be one of {', '.join(MESSAGE_STATUSES)}")
    patient = str(params.get("patient") or "").strip()
    if patient and not session.may("phi"):
        raise ActionError("your role may not search by patient", 403)
    if patient and len(patient) < 3:
        raise ActionError("a patient search needs at least 3 characters")
    try:
        limit = int(params.get("limit") or 50)
        before = int(params["before_id"]) if params.get("before_id") else None
    except ValueError as err:
        raise ActionError("limit and before_id are numbers") from err
    return MessageFilter(
        channel=str(params.get("channel") or ""),
        control_id=str(params.get("control_id") or "").strip(),
        sender=str(params.get("sender") or "").strip(),
        status=status,
        since=parse_time(str(params.get("since") or "")),
        until=parse_time(str(params.get("until") or "")),
        patient=patient,
        before_id=before,
        limit=limit,
    )


async def search(
    dash: Dashboard, session: Session, f: MessageFilter, client_host: str
) -> list[dict[str, Any]]:
    if f.patient:  # the search term itself is patient data: audited before anything is returned
        await dash.queries.audit(
            session.user,
            session.role,
            "patient-search",
            "messages",
            {"term": f.patient, "channel": f.channel},
            client_host,
            patient_data=True,
        )
    return await dash.queries.search(f)


async def message_detail(
    dash: Dashboard, session: Session, message_id: int, client_host: str, full: bool = True
) -> dict[str, Any] | None:
    """A message with its stages rendered for this role (masked without `phi`; audited with it)."""
    found = await dash.queries.message(message_id)
    if found is None:
        return None
    phi = session.may("phi")
    if phi:
        await dash.queries.audit(
            session.user, session.role, "view-message", f"message {message_id}", {}, client_host
        )
    channel = dash.channel(found["channel"])
    charset = channel.charset if channel is not None else ""
    for stage in ("raw", "transformed", "response"):
        data = found.pop(stage)
        found[stage] = view(data if full else (data or b"")[: 512 * 1024], phi, charset)
    for delivery in found["deliveries"]:
        delivery["response"] = view(delivery["response"], phi, charset)
    found["masked"] = not phi
    found["mpi"] = [
        f
        for f in found["findings"]
        if "patient identity" in str(f.get("text", "")) or f.get("location", "").startswith("PID^1^3")
    ]
    return found


def detail_json(found: dict[str, Any]) -> dict[str, Any]:
    out = dict(found)
    for stage in ("raw", "transformed", "response"):
        out[stage] = found[stage].as_dict()
    out["deliveries"] = [{**d, "response": d["response"].as_dict()} for d in found["deliveries"]]
    return out


# -- handlers (the Dashboard is the app's state: `board(request)`) ------------------------------


def board(request: Request) -> Dashboard:
    found: Dashboard = request.app.state.dash
    return found


async def get_session(request: Request, session: Session) -> Response:
    return JSONResponse(session_info(session))


async def logout(request: Request, session: Session) -> Response:
    dash = board(request)
    dash.sessions.end(session.token)
    await dash.queries.audit(
        session.user, session.role, "logout", f"user {session.user}", {}, client(request)
    )
    response = JSONResponse({"ok": True})
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


async def channels(request: Request, session: Session) -> Response:
    return JSONResponse(board(request).live.snapshot)


async def channel(request: Request, session: Session) -> Response:
    name = request.path_params["name"]
    found = next((c for c in board(request).live.snapshot["channels"] if c["name"] == name), None)
    return JSONResponse(found) if found else JSONResponse({"error": f"no channel {name}"}, status_code=404)


async def alerts(request: Request, session: Session) -> Response:
    live = board(request).live
    return JSONResponse({"alerts": live.snapshot["alerts"], "rules": [r.model_dump() for r in live.rules]})


async def messages(request: Request, session: Session) -> Response:
    try:
        f = message_filter(request.query_params, session)
        if f.patient:
            raise ActionError("search by patient with POST /api/messages/search (no patient data in URLs)")
        return JSONResponse({"messages": await search(board(request), session, f, client(request))})
    except ActionError as err:
        return fail(err)


async def messages_search(request: Request, session: Session) -> Response:
    try:
        f = message_filter(await json_body(request), session)
        return JSONResponse({"messages": await search(board(request), session, f, client(request))})
    except ActionError as err:
        return fail(err)


async def message(request: Request, session: Session) -> Response:
    found = await message_detail(board(request), session, int(request.path_params["id"]), client(request))
    if found is None:
        return JSONResponse({"error": "no such message"}, status_code=404)
    return JSONResponse(detail_json(found))


async def reprocess(request: Request, session: Session) -> Response:
    try:
        message_id = int(request.path_params["id"])
        return JSONResponse(await actions.reprocess(board(request), session, message_id, client(request)))
    except ActionError as err:
        return fail(err)


async def deliveries(request: Request, session: Session) -> Response:
    query = request.query_params
    statuses = tuple(s for s in (query.get("status") or "dead,rejected").split(",") if s)
    if not statuses or any(s not in DELIVERY_STATUSES for s in statuses):
        return fail(ActionError(f"status: comma-separated, among {', '.join(DELIVERY_STATUSES)}"))
    rows = await board(request).queries.deliveries(
        statuses, query.get("channel", ""), query.get("destination", ""), int(query.get("limit") or 100)
    )
    return JSONResponse({"deliveries": rows})


async def resend(request: Request, session: Session) -> Response:
    try:
        body = await json_body(request)
        ids = [int(i) for i in body.get("ids", [])]
        return JSONResponse(await actions.resend(board(request), session, ids, client(request)))
    except (ValueError, TypeError):
        return fail(ActionError("ids: a list of delivery ids"))
    except ActionError as err:
        return fail(err)


async def review(request: Request, session: Session) -> Response:
    status = request.query_params.get("status", "open")
    return JSONResponse({"items": await actions.review_items(board(request), status)})


async def review_item(request: Request, session: Session) -> Response:
    try:
        review_id = int(request.path_params["id"])
        return JSONResponse(await actions.review_item(board(request), session, review_id, client(request)))
    except ActionError as err:
        return fail(err)


async def review_decision(request: Request, session: Session) -> Response:
    try:
        body = await json_body(request)
        return JSONResponse(
            await actions.review_decision(
                board(request),
                session,
                int(request.path_params["id"]),
                str(body.get("decision", "")),
                str(body.get("enterprise_id", "")),
                str(body.get("reason", "")),
                client(request),
            )
        )
    except ActionError as err:
        return fail(err)


async def merge(request: Request, session: Session) -> Response:
    try:
        body = await json_body(request)
        return JSONResponse(
            await actions.merge(
                board(request),
                session,
                str(body.get("survivor", "")),
                str(body.get("absorbed", "")),
                str(body.get("reason", "")),
                client(request),
            )
        )
    except ActionError as err:
        return fail(err)


async def audit(request: Request, session: Session) -> Response:
    before = request.query_params.get("before_id")
    rows = await board(request).queries.audit_entries(
        int(request.query_params.get("limit") or 200), int(before) if before else None
    )
    return JSONResponse({"entries": rows})


async def openapi(request: Request, session: Session) -> Response:
    from engine.dashboard.openapi import document

    return JSONResponse(document(ENDPOINTS))


async def login(request: Request) -> Response:
    # JSON only: a cross-site form cannot send application/json (no login CSRF through here).
    if not request.headers.get("content-type", "").startswith("application/json"):
        return JSONResponse({"error": "send application/json"}, status_code=415)
    try:
        body = await json_body(request)
    except ActionError as err:
        return fail(err)
    dash = board(request)
    outcome = await authenticate(dash, request, str(body.get("user", "")), str(body.get("password", "")))
    if outcome == "blocked":
        return JSONResponse({"error": "too many failed logins; wait and retry"}, status_code=429)
    if not isinstance(outcome, Session):
        return JSONResponse({"error": "wrong user name or password"}, status_code=401)
    response = JSONResponse(session_info(outcome))
    set_session_cookie(dash, request, response, outcome)
    return response


SEARCH = ("channel", "control_id", "sender", "status", "since", "until", "before_id", "limit")
ENDPOINTS: list[Endpoint] = [
    Endpoint(
        "GET", "/api/session", "view", "The current user, role, permissions and CSRF token", get_session
    ),
    Endpoint("POST", "/api/logout", "view", "End the session", logout),
    Endpoint("GET", "/api/channels", "view", "Every channel with live counters, queues and alerts", channels),
    Endpoint("GET", "/api/channels/{name}", "view", "One channel's live state", channel),
    Endpoint("GET", "/api/alerts", "view", "Active alerts and the configured rules", alerts),
    Endpoint("GET", "/api/messages", "view", "Search messages (newest first)", messages, query=SEARCH),
    Endpoint(
        "POST",
        "/api/messages/search",
        "view",
        "Search messages, by patient too (roles vigilance/admin; audited)",
        messages_search,
        body=(*SEARCH, "patient"),
    ),
    Endpoint(
        "GET",
        "/api/messages/{id}",
        "view",
        "A message: every stage, history, deliveries (masked without patient-data permission)",
        message,
    ),
    Endpoint(
        "POST",
        "/api/messages/{id}/reprocess",
        "act",
        "Run the message through its channel again as a new message (audited)",
        reprocess,
    ),
    Endpoint(
        "GET",
        "/api/deliveries",
        "view",
        "Deliveries by status (default: dead letters)",
        deliveries,
        query=("status", "channel", "destination", "limit"),
    ),
    Endpoint(
        "POST",
        "/api/deliveries/resend",
        "act",
        "Resend dead or rejected deliveries (audited)",
        resend,
        body=("ids",),
    ),
    Endpoint("GET", "/api/review", "review", "The MPI review queue", review, query=("status",)),
    Endpoint(
        "GET", "/api/review/{id}", "review", "A review item, traits side by side (audited)", review_item
    ),
    Endpoint(
        "POST",
        "/api/review/{id}/decision",
        "review",
        "Link the item to a candidate or reject a candidate (audited)",
        review_decision,
        body=("decision", "enterprise_id", "reason"),
    ),
    Endpoint(
        "POST",
        "/api/mpi/merge",
        "review",
        "Merge two certified identities (audited)",
        merge,
        body=("survivor", "absorbed", "reason"),
    ),
    Endpoint(
        "GET", "/api/audit", "audit", "The audit log, newest first", audit, query=("limit", "before_id")
    ),
    Endpoint("GET", "/api/openapi.json", "view", "This API's OpenAPI description", openapi),
]


def routes(dash: Dashboard) -> list[BaseRoute]:
    found: list[BaseRoute] = [Route("/api/login", login, methods=["POST"])]
    found += [Route(e.path, guard(dash, e.permission, e.handler), methods=[e.method]) for e in ENDPOINTS]
    return found
