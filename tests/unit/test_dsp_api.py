"""The DSP query API's answers to requests it cannot serve: 400 saying what to fix, 404 for an
unknown document, 500 when a stored document fails its integrity check."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

from engine.dsp.api import dsp_routes
from engine.dsp.service import Dsp, open_dsp
from tests.unit.hl7_samples import MATRICULE
from tests.unit.test_dsp_registry import entry


def _no_mpi() -> object:
    raise AssertionError("the query API never asks the MPI")


@pytest.fixture
def dsp(tmp_path: Path) -> Dsp:
    return open_dsp(tmp_path, tmp_path / "passerelle.db", _no_mpi)  # type: ignore[arg-type]


def get(dsp: Dsp, path: str, **params: str) -> httpx.Response:
    app = Starlette(routes=[Mount("/api/dsp", routes=dsp_routes(dsp))])

    async def call() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            return await client.get(path, params=params)

    return asyncio.run(call())


@pytest.mark.parametrize(("params", "text"), [
    ({}, "give the patient"),
    ({"patient": MATRICULE, "from": "14/03/2025"}, "from must be a date"),
    ({"patient": MATRICULE, "status": "archived"}, "status must be one of current, deprecated"),
    ({"patient": MATRICULE, "limit": "many"}, "limit must be a whole number"),
    ({"patient": MATRICULE, "limit": "100000"}, "limit must be between 1 and 500"),
])
def test_a_listing_that_cannot_be_served_says_what_to_fix(dsp: Dsp, params: dict[str, str],
                                                           text: str) -> None:
    answer = get(dsp, "/api/dsp/documents", **params)
    assert answer.status_code == 400 and text in answer.json()["error"]


def test_unknown_and_damaged_documents(dsp: Dsp) -> None:
    assert get(dsp, "/api/dsp/documents/2.999%5Enope").status_code == 404
    sha = dsp.repository.put(b"<ClinicalDocument/>")
    dsp.registry.register(entry("2.999^DOC-1", sha256=sha))
    listing = get(dsp, "/api/dsp/documents", patient=MATRICULE, **{"from": "2025-03-14", "to": "2025-03-14"})
    assert [d["document_id"] for d in listing.json()["documents"]] == ["2.999^DOC-1"]
    assert get(dsp, "/api/dsp/documents/2.999%5EDOC-1").json()["sha256"] == sha
    assert get(dsp, "/api/dsp/documents/2.999%5EDOC-1/content").content == b"<ClinicalDocument/>"
    dsp.repository.path(sha).write_bytes(b"tampered")
    damaged = get(dsp, "/api/dsp/documents/2.999%5EDOC-1/content")
    assert damaged.status_code == 500 and "damaged" in damaged.json()["error"]
