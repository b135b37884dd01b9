"""The DSP query API (JSON over HTTP, Starlette routes; the dashboard mounts them under `/api/dsp`
behind its authentication — these routes do no access control themselves).

GET /documents?patient=<matricule|enterprise id>[&type=LOINC][&from=YYYY-MM-DD][&to=...]
    [&status=current|deprecated][&limit=N]        the patient's documents, newest first
GET /documents/{document_id}                      one document's registry entry
GET /documents/{document_id}/content              the document itself (CDA XML or DICOM), verified

Document ids are `root^extension` (URL-encode the `^` as %5E). Errors are JSON
`{"error": "..."}` with 400 (fix the request), 404 (no such document) or 500 (a stored document
failed its integrity check). Handlers are plain functions: Starlette runs them in its thread pool,
so the registry's blocking reads never stall the event loop.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from engine.dsp.query import QueryError, build_query
from engine.dsp.registry import Entry
from engine.dsp.repository import IntegrityError
from engine.dsp.service import Dsp


def entry_json(entry: Entry) -> dict[str, Any]:
    return entry.as_dict()


def _error(status: int, text: str) -> JSONResponse:
    return JSONResponse({"error": text}, status_code=status)


def dsp_routes(dsp: Dsp) -> list[BaseRoute]:
    """The API's routes, bound to one DSP."""

    def list_documents(request: Request) -> Response:
        p = request.query_params
        try:
            limit = int(p.get("limit", "100"))
            query = build_query(p.get("patient", ""), p.get("type", ""), p.get("status", ""),
                                p.get("from", ""), p.get("to", ""), limit, dsp.config.max_list)
        except ValueError as err:
            return _error(400, str(err) if isinstance(err, QueryError) else "limit must be a whole number")
        documents = [entry_json(e) for e in dsp.registry.documents(query)]
        return JSONResponse({"count": len(documents), "documents": documents})

    def get_document(request: Request) -> Response:
        entry = dsp.registry.get(request.path_params["document_id"])
        if entry is None:
            return _error(404, "no document with this id in the DSP")
        return JSONResponse(entry_json(entry))

    def get_content(request: Request) -> Response:
        entry = dsp.registry.get(request.path_params["document_id"])
        if entry is None:
            return _error(404, "no document with this id in the DSP")
        try:
            return Response(dsp.content(entry), media_type=entry.mime)
        except IntegrityError as err:
            return _error(500, str(err))

    return [
        Route("/documents", list_documents, methods=["GET"]),
        Route("/documents/{document_id}", get_document, methods=["GET"]),
        Route("/documents/{document_id}/content", get_content, methods=["GET"]),
    ]
