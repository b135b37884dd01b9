"""The operations dashboard: server-rendered pages, the JSON API, `/metrics` and `/health/*`.

Served by the engine itself (uvicorn inside the engine's event loop, `server.py`) when
`dashboard.enabled` is set in engine.yaml. Reads go straight to the store's SQLite file on
read-only connections (`queries.py`); actions (reprocess, resend, review decisions) go through
the running engine so that its queues see them.
"""
