"""The OpenAPI 3.1 description of the JSON API, built from the endpoint table in api.py."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.dashboard.api import Endpoint

ROLE_NOTE = {
    "view": "any logged-in role",
    "act": "operator, admin",
    "phi": "vigilance, admin",
    "review": "vigilance, admin",
    "audit": "admin",
}


def document(endpoints: list[Endpoint]) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {
        "/api/login": {
            "post": {
                "summary": "Log in: sets the session cookie, returns the CSRF token",
                "security": [],
                "requestBody": body_schema(("user", "password")),
                "responses": {
                    "200": {"description": "logged in"},
                    "401": {"description": "wrong credentials"},
                    "429": {"description": "too many failed logins"},
                },
            }
        },
    }
    for e in endpoints:
        paths.setdefault(e.path, {})[e.method.lower()] = operation(e)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Passerelle dashboard API",
            "version": "1",
            "description": "Session cookie from POST /api/login; unsafe methods need the X-CSRF-Token "
            "header. Patient data is masked for roles without patient-data permission; "
            "every view of it and every action is written to the audit log.",
        },
        "components": {
            "securitySchemes": {
                "session": {"type": "apiKey", "in": "cookie", "name": "passerelle_session"},
                "csrf": {"type": "apiKey", "in": "header", "name": "X-CSRF-Token"},
            }
        },
        "security": [{"session": []}],
        "paths": paths,
    }


def operation(e: Endpoint) -> dict[str, Any]:
    params = [
        {"name": n, "in": "path", "required": True, "schema": {"type": "string"}}
        for n in re.findall(r"{(\w+)}", e.path)
    ]
    params += [{"name": n, "in": "query", "required": False, "schema": {"type": "string"}} for n in e.query]
    op: dict[str, Any] = {
        "summary": e.summary,
        "description": f"Roles: {ROLE_NOTE[e.permission]}.",
        "parameters": params,
        "responses": {
            "200": {"description": "OK (JSON)"},
            "401": {"description": "not logged in"},
            "403": {"description": "role not allowed, or CSRF token missing"},
        },
    }
    if e.method != "GET":
        op["security"] = [{"session": [], "csrf": []}]
    if e.body:
        op["requestBody"] = body_schema(e.body)
    return op


def body_schema(fields: tuple[str, ...]) -> dict[str, Any]:
    props = {
        f: {"type": "array", "items": {"type": "integer"}} if f == "ids" else {"type": "string"}
        for f in fields
    }
    return {
        "required": True,
        "content": {"application/json": {"schema": {"type": "object", "properties": props}}},
    }
