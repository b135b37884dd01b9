"""The dashboard's JSON API, /metrics and /health against a running engine (real sockets):
authentication, CSRF, roles, masking of patient data, the audit log, reprocess and resend.

Run over both store backends (SQLite, and PostgreSQL on a real server), payloads encrypted at
rest: the dashboard reads and audits through the configured store and shows payloads in clear."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from engine.config import load_engine_config
from engine.dashboard.api import ENDPOINTS
from engine.dashboard.auth import User, hash_password, write_users
from engine.store.cipher import new_key_file
from tests.support.engine_process import write_project
from tests.support.engine_thread import EngineThread
from tests.support.mllp_peers import MllpClient
from tests.support.postgres import fresh_database, shared_cluster
from tests.support.store_backends import StoreBackend
from tests.unit.hl7_samples import MATRICULE, ORU_R01_25

PASSWORD = "correct horse battery staple"
ROLES = {"ada": "admin", "otto": "operator", "vera": "viewer", "vigo": "vigilance", "rita": "viewer"}

ENGINE = """
store: {path: var/passerelle.db, encryption: {keys: {k1: config/k1.key}, active: k1}}
dashboard: {enabled: true, port: 0, login_attempts: 3}
alerts:
  - {name: failing, kind: error_rate, channel: flaky, threshold: 0}
  - {name: lab-down, kind: channel_down, channel: lab}
"""
LAB = """
description: lab results
source: {type: mllp, port: 0}
steps:
  - {type: filter_message_type, accept: [ORU^R01], on_mismatch: reject}
destinations:
  - {name: archive, type: file, directory: var/out/lab}
"""
FLAKY = """
description: a destination that cannot write until the folder is fixed
source: {type: mllp, port: 0}
destinations:
  - {name: broken, type: file, directory: var/blocker/out, queue: {max_attempts: 1}}
"""


def engine_yaml(backend: str) -> str:
    if backend == "sqlite":
        return ENGINE
    dsn = fresh_database(shared_cluster())
    return ENGINE.replace("store: {path: var/passerelle.db,", f'store: {{type: postgresql, dsn: "{dsn}",')


def store_of(engine: EngineThread) -> StoreBackend:
    config = engine.engine.project.engine.store
    if config.type == "postgresql":
        return StoreBackend("postgresql", config.dsn)
    return StoreBackend("sqlite", str(engine.engine.project.store_path))


@pytest.fixture(scope="module", params=["postgresql", "sqlite"])
def engine(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[EngineThread]:
    root = tmp_path_factory.mktemp("dashboard")
    config = write_project(root, {"lab": LAB, "flaky": FLAKY}, engine_yaml(str(request.param)))
    users = {name: User(name, role, hash_password(PASSWORD, n=2**14)) for name, role in ROLES.items()}
    write_users(root / "config" / "users.yaml", users)
    (root / "var").mkdir()
    new_key_file(root / "config" / "k1.key")  # payloads encrypted at rest: the dashboard shows them clear
    (root / "var" / "blocker").write_text("a file where the destination wants a folder")
    running = EngineThread(config).start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def base(engine: EngineThread) -> str:
    return f"http://127.0.0.1:{engine.engine.dashboard.port}"


@pytest.fixture
def login(base: str) -> Iterator[Callable[[str], tuple[httpx.Client, str]]]:
    clients: list[httpx.Client] = []

    def open_as(user: str) -> tuple[httpx.Client, str]:
        client = httpx.Client(base_url=base, timeout=20)
        clients.append(client)
        response = client.post("/api/login", json={"user": user, "password": PASSWORD})
        assert response.status_code == 200, response.text
        return client, str(response.json()["csrf"])

    yield open_as
    for client in clients:
        client.close()


def send(engine: EngineThread, channel: str, payload: bytes) -> bytes:
    with MllpClient(engine.port(channel)) as client:
        return client.send(payload)


def with_control_id(control_id: str) -> bytes:
    return ORU_R01_25.replace(b"LAB20250314000123", control_id.encode())


def wait_for(check: Callable[[], Any], what: str) -> Any:
    for _ in range(300):
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def find_message(client: httpx.Client, control_id: str) -> dict[str, Any]:
    found = client.get("/api/messages", params={"control_id": control_id}).json()["messages"]
    return dict(found[-1])  # newest first: the last is the original


def audit_actions(
    engine: EngineThread, base: str, login: Callable[[str], tuple[httpx.Client, str]]
) -> list[Any]:
    admin, _ = login("ada")
    return list(admin.get("/api/audit").json()["entries"])


# -- anonymous access -------------------------------------------------------------------------


def test_every_api_route_refuses_anonymous_access(base: str) -> None:
    with httpx.Client(base_url=base) as client:
        for endpoint in ENDPOINTS:
            path = endpoint.path.replace("{id}", "1").replace("{name}", "lab")
            response = client.request(endpoint.method, path, json={})
            assert response.status_code == 401, (endpoint.path, response.status_code)
        page = client.get("/messages")
        assert page.status_code == 303 and page.headers["location"].startswith("/login")


def test_metrics_and_health_need_no_login(engine: EngineThread, base: str) -> None:
    send(engine, "lab", with_control_id("METRICS1"))
    with httpx.Client(base_url=base) as client:
        assert client.get("/health/live").json() == {"status": "ok"}
        ready = client.get("/health/ready")
        assert ready.status_code == 200
        assert ready.json()["store_writable"] is True and ready.json()["sources"] == {
            "lab": True,
            "flaky": True,
        }
        text = client.get("/metrics").text
    assert 'passerelle_messages_total{channel="lab",status="queued"}' in text
    assert 'passerelle_ack_latency_seconds_count{channel="lab"}' in text
    assert 'passerelle_queue_depth{channel="lab",destination="archive"}' in text
    assert 'passerelle_source_up{channel="lab"} 1.0' in text


# -- logging in --------------------------------------------------------------------------------


def test_wrong_password_is_refused_and_repeated_failures_are_rate_limited(base: str) -> None:
    with httpx.Client(base_url=base) as client:
        for _ in range(3):
            wrong = client.post("/api/login", json={"user": "rita", "password": "not it"})
            assert wrong.status_code == 401
        blocked = client.post("/api/login", json={"user": "rita", "password": PASSWORD})
        assert blocked.status_code == 429  # even the right password, until the window passes
        other = client.post("/api/login", json={"user": "vera", "password": PASSWORD})
        assert other.status_code == 200  # another user from the same address is not locked out


def test_session_cookie_is_http_only_and_same_site_strict(base: str) -> None:
    with httpx.Client(base_url=base) as client:
        response = client.post("/api/login", json={"user": "vera", "password": PASSWORD})
    cookie = response.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    assert "password" not in response.text


def test_unsafe_requests_need_the_session_csrf_token(
    engine: EngineThread, login: Callable[[str], tuple[httpx.Client, str]]
) -> None:
    send(engine, "lab", with_control_id("CSRF1"))
    client, csrf = login("otto")
    message_id = find_message(client, "CSRF1")["id"]
    assert client.post(f"/api/messages/{message_id}/reprocess").status_code == 403
    wrong = client.post(f"/api/messages/{message_id}/reprocess", headers={"X-CSRF-Token": "x" + csrf})
    assert wrong.status_code == 403
    right = client.post(f"/api/messages/{message_id}/reprocess", headers={"X-CSRF-Token": csrf})
    assert right.status_code == 200


# -- roles and patient data ---------------------------------------------------------------------


def test_viewer_sees_masked_content_and_cannot_act(
    engine: EngineThread, login: Callable[[str], tuple[httpx.Client, str]]
) -> None:
    send(engine, "lab", with_control_id("VIEWER1"))
    client, csrf = login("vera")
    found = find_message(client, "VIEWER1")
    detail = client.get(f"/api/messages/{found['id']}").json()
    raw = detail["raw"]["text"]
    assert detail["masked"] is True and detail["raw"]["kind"] == "hl7"
    assert "TEST^PATIENT" not in raw and MATRICULE not in raw and "19800101" not in raw
    assert "PID|1||***||***||***|" in raw and "OBX|1|NM|6690-2" in raw  # results still visible
    headers = {"X-CSRF-Token": csrf}
    assert client.post(f"/api/messages/{found['id']}/reprocess", headers=headers).status_code == 403
    assert client.post("/api/deliveries/resend", json={"ids": [1]}, headers=headers).status_code == 403
    search = client.post("/api/messages/search", json={"patient": "TEST"}, headers=headers)
    assert search.status_code == 403
    assert client.get("/api/review").status_code == 403
    assert client.get("/api/audit").status_code == 403


def test_vigilance_sees_patient_data_and_every_view_is_audited(
    engine: EngineThread, base: str, login: Callable[[str], tuple[httpx.Client, str]]
) -> None:
    send(engine, "lab", with_control_id("VIGIL1"))
    client, csrf = login("vigo")
    found = find_message(client, "VIGIL1")
    detail = client.get(f"/api/messages/{found['id']}").json()
    assert detail["masked"] is False and "TEST^PATIENT" in detail["raw"]["text"]
    hits = client.post(
        "/api/messages/search",
        json={"patient": MATRICULE, "control_id": "VIGIL1"},
        headers={"X-CSRF-Token": csrf},
    ).json()["messages"]
    assert [m["id"] for m in hits] == [found["id"]]
    entries = audit_actions(engine, base, login)
    views = [e for e in entries if e["user"] == "vigo" and e["action"] == "view-message"]
    assert views and views[0]["subject"] == f"message {found['id']}"
    searches = [e for e in entries if e["user"] == "vigo" and e["action"] == "patient-search"]
    assert searches and searches[0]["detail"]["term"] == MATRICULE
    stored = store_of(engine).dump()  # the search term is in the audit log: sealed too
    assert b"TEST^PATIENT" not in stored and MATRICULE.encode() not in stored


def test_patient_search_is_refused_in_urls(login: Callable[[str], tuple[httpx.Client, str]]) -> None:
    client, _ = login("vigo")
    response = client.get("/api/messages", params={"patient": "TEST"})
    assert response.status_code == 400 and "POST" in response.json()["error"]


# -- actions -----------------------------------------------------------------------------------


def test_reprocess_stores_a_new_linked_message_and_is_audited(
    engine: EngineThread, base: str, login: Callable[[str], tuple[httpx.Client, str]]
) -> None:
    send(engine, "lab", with_control_id("REPRO1"))
    client, csrf = login("otto")
    original = find_message(client, "REPRO1")
    result = client.post(f"/api/messages/{original['id']}/reprocess", headers={"X-CSRF-Token": csrf}).json()
    assert result["original"] == original["id"] and result["new_message"] > original["id"]
    both = client.get("/api/messages", params={"control_id": "REPRO1"}).json()["messages"]
    assert [m["id"] for m in both] == [result["new_message"], original["id"]]
    assert both[0]["control_id"].startswith("REPRO1~reprocess-") and both[0]["source_type"] == "dashboard"
    detail = client.get(f"/api/messages/{original['id']}").json()
    assert detail["related"][0]["new_message"] == result["new_message"]
    entries = audit_actions(engine, base, login)
    assert any(
        e["action"] == "reprocess"
        and e["user"] == "otto"
        and e["detail"]["new_message"] == result["new_message"]
        for e in entries
    )


def test_dead_letter_is_resent_once_the_destination_is_fixed(
    engine: EngineThread, base: str, login: Callable[[str], tuple[httpx.Client, str]]
) -> None:
    send(engine, "flaky", with_control_id("DEAD1"))
    client, csrf = login("otto")

    def dead() -> list[Any]:
        rows = client.get("/api/deliveries", params={"channel": "flaky"}).json()["deliveries"]
        return [r for r in rows if r["control_id"] == "DEAD1"]

    [row] = wait_for(dead, "the dead letter")
    assert row["status"] == "dead"
    alerts = wait_for(lambda: client.get("/api/alerts").json()["alerts"], "the error-rate alert")
    assert [a["name"] for a in alerts] == ["failing"]
    root = engine.engine.project.root
    (root / "var" / "blocker").unlink()
    result = client.post("/api/deliveries/resend", json={"ids": [row["id"]]}, headers={"X-CSRF-Token": csrf})
    assert result.json() == {"resent": [row["id"]], "skipped": []}

    def sent() -> bool:
        return bool(client.get(f"/api/messages/{row['message_id']}").json()["status"] == "sent")

    wait_for(sent, "the resent message to be sent")
    history = client.get(f"/api/messages/{row['message_id']}").json()["events"]
    assert [e["status"] for e in history] == ["queued", "dead", "errored", "queued", "queued", "sent", "sent"]
    again = client.post("/api/deliveries/resend", json={"ids": [row["id"]]}, headers={"X-CSRF-Token": csrf})
    assert again.json() == {"resent": [], "skipped": [row["id"]]}  # only dead or rejected ones
    text = httpx.get(f"{base}/metrics").text
    assert 'passerelle_alert_active{alert="failing",channel="flaky"} 1.0' in text
    # counters are per process: each backend's engine in this test process added its own dead letter
    assert 'passerelle_deliveries_total{channel="flaky",destination="broken",status="dead"} ' in text


# -- live state and description ------------------------------------------------------------------


def test_channels_show_live_counters(
    engine: EngineThread, login: Callable[[str], tuple[httpx.Client, str]]
) -> None:
    client, _ = login("vera")
    before = client.get("/api/channels/lab").json()["intake_since_start"]
    send(engine, "lab", with_control_id("LIVE1"))

    def moved() -> bool:
        return bool(client.get("/api/channels/lab").json()["intake_since_start"] > before)

    wait_for(moved, "the intake counter to move")
    lab = client.get("/api/channels/lab").json()
    assert lab["up"] is True and lab["queues"][0]["destination"] == "archive"
    assert len(lab["rate_series"]) == 120


def test_openapi_describes_every_api_route(login: Callable[[str], tuple[httpx.Client, str]]) -> None:
    client, _ = login("vera")
    document = client.get("/api/openapi.json").json()
    assert document["openapi"].startswith("3.")
    for endpoint in ENDPOINTS:
        assert endpoint.method.lower() in document["paths"][endpoint.path]
    assert "post" in document["paths"]["/api/login"]


def test_pages_render_for_each_role(
    engine: EngineThread, login: Callable[[str], tuple[httpx.Client, str]]
) -> None:
    send(engine, "lab", with_control_id("PAGES1"))
    for user in ("vera", "otto", "vigo", "ada"):
        client, _ = login(user)
        message_id = find_message(client, "PAGES1")["id"]
        for path in ("/", "/channels/lab", "/messages", f"/messages/{message_id}", "/queues"):
            response = client.get(path)
            assert response.status_code == 200, (user, path)
            assert "default-src 'self'" in response.headers["content-security-policy"]
        page = client.get(f"/messages/{message_id}").text
        assert ("TEST^PATIENT" in page) == (user in ("vigo", "ada"))
        assert ("Reprocess" in page) == (user in ("otto", "ada"))
        assert client.get("/audit").status_code == (200 if user == "ada" else 403)


def test_logout_ends_the_session(login: Callable[[str], tuple[httpx.Client, str]]) -> None:
    client, csrf = login("vera")
    assert client.post("/api/logout", headers={"X-CSRF-Token": csrf}).status_code == 200
    assert client.get("/api/channels").status_code == 401


def test_user_command_writes_a_private_file_and_audits(tmp_path: Path) -> None:
    from engine.cli import main

    config = write_project(tmp_path, {"lab": LAB}, ENGINE)
    secret = tmp_path / "pw"
    secret.write_text(PASSWORD + "\n")
    assert (
        main(
            ["user", "add", "ana", "--role", "admin", "--password-file", str(secret), "--config", str(config)]
        )
        == 0
    )
    users = tmp_path / "config" / "users.yaml"
    assert users.stat().st_mode & 0o777 == 0o600
    assert PASSWORD not in users.read_text() and "scrypt$" in users.read_text()
    assert (
        main(
            [
                "user",
                "add",
                "ana",
                "--role",
                "viewer",
                "--password-file",
                str(secret),
                "--config",
                str(config),
            ]
        )
        == 1
    )  # exists: needs --force
    short = tmp_path / "short"
    short.write_text("short")
    assert (
        main(
            ["user", "add", "bob", "--role", "viewer", "--password-file", str(short), "--config", str(config)]
        )
        == 1
    )
    assert main(["user", "remove", "ana", "--config", str(config)]) == 0
    import sqlite3

    with sqlite3.connect(tmp_path / "var" / "passerelle.db") as conn:
        actions = [r[0] for r in conn.execute("SELECT action FROM audit_log ORDER BY id")]
    assert actions == ["user-add", "user-remove"]


@pytest.mark.parametrize("engine", ["sqlite"], indirect=True)  # the DSP keeps its documents in SQLite
def test_dsp_api_is_mounted_for_roles_that_may_see_documents(
    base: str, login: Callable[[str], tuple[httpx.Client, str]]
) -> None:
    with httpx.Client(base_url=base) as anonymous:
        assert anonymous.get("/api/dsp/documents", params={"patient": MATRICULE}).status_code == 401
    viewer, _ = login("vera")
    assert viewer.get("/api/dsp/documents", params={"patient": MATRICULE}).status_code == 403
    vigilance, _ = login("vigo")
    found = vigilance.get("/api/dsp/documents", params={"patient": MATRICULE})
    assert found.status_code in (200, 400), found.text  # the DSP answers (400: unknown patient)
    admin, _ = login("ada")
    entries = admin.get("/api/audit").json()["entries"]
    assert any(e["action"] == "dsp-query" and e["user"] == "vigo" for e in entries)


def test_user_changes_are_audited_in_the_postgresql_store(tmp_path: Path) -> None:
    """`passerelle user add` on a PostgreSQL deployment audits in its shared audit log (the schema is
    created if no engine ran yet), not in a stray SQLite file."""
    from engine.cli import main

    config = write_project(tmp_path, {"lab": LAB}, engine_yaml("postgresql"))
    secret = tmp_path / "pw"
    secret.write_text(PASSWORD + "\n")
    options = ["--role", "admin", "--password-file", str(secret), "--config", str(config)]
    assert main(["user", "add", "ana", *options]) == 0
    with psycopg.connect(load_engine_config(config).store.dsn) as conn:
        rows = conn.execute("SELECT action, subject, client FROM audit_log").fetchall()
    assert rows == [("user-add", "user ana", "cli")]
    assert not (tmp_path / "var" / "passerelle.db").exists()
