"""Dashboard building blocks without a server: masking, passwords, rate limiting, alert rates,
and the store's operator resend (`requeue_delivery` + `DestinationQueue.resume`)."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from engine.dashboard.alerts import Sample, error_rate
from engine.dashboard.auth import RateLimiter, hash_password, verify_password
from engine.dashboard.masking import MASK, mask_hl7_text, masked_text
from engine.dashboard.render import hl7_segments
from engine.store.sqlite import SqliteStore
from tests.unit.hl7_samples import ADT_A01_23, MATRICULE, ORU_R01_25
from tests.unit.test_dispatch import Peer, enqueue, make_queue, settled

CDA = b"""<?xml version="1.0" encoding="UTF-8"?>
<ClinicalDocument xmlns="urn:hl7-org:v3">
  <id root="2.999.5" extension="DOC1"/>
  <recordTarget><patientRole><id root="2.999.1" extension="1980010112302"/>
    <patient><name><given>Patient</given><family>Test</family></name>
      <administrativeGenderCode code="F" codeSystem="2.16.840.1.113883.5.1"/><birthTime value="19800101"/>
    </patient></patientRole></recordTarget>
  <title>Compte rendu</title>
</ClinicalDocument>"""


def test_hl7_masking_hides_identifying_fields_and_keeps_the_structure() -> None:
    text = mask_hl7_text(ORU_R01_25.decode("utf-8"))
    assert MATRICULE not in text and "TEST^PATIENT" not in text and "19800101" not in text
    pid = next(line for line in text.split("\r") if line.startswith("PID"))
    assert pid == f"PID|1||{MASK}||{MASK}||{MASK}|F|||{MASK}"
    assert "OBX|3|NM|718-7^Hemoglobin [Mass/volume] in Blood^LN||13.8|" in text


def test_hl7_masking_of_latin1_content_with_the_mothers_name() -> None:
    text = masked_text(ADT_A01_23)
    assert "Müller" not in text and "TEST^PATIENT" not in text and "EVN|A01|" in text


def test_cda_masking_hides_the_record_target_only() -> None:
    text = masked_text(CDA)
    assert "1980010112302" not in text and "Test" not in text and "19800101" not in text
    assert 'root="2.999.1"' in text and 'codeSystem="2.16.840.1.113883.5.1"' in text
    assert "<title>Compte rendu</title>" in text and 'extension="DOC1"' in text


def test_unreadable_content_is_hidden_whole() -> None:
    assert masked_text(b"\x00\x01binary TEST^PATIENT").startswith("[content hidden")
    assert masked_text(b"<broken><xml>TEST").startswith("[content hidden")


def test_hl7_view_numbers_fields_as_hl7_does() -> None:
    msh, pid = hl7_segments(ORU_R01_25.decode("utf-8"))[:2]
    assert msh.fields[0] == ("MSH-2", "^~\\&") and dict(msh.fields)["MSH-10"] == "LAB20250314000123"
    assert dict(pid.fields)["PID-7"] == "19800101"


def test_passwords_are_scrypt_hashed_and_verified() -> None:
    encoded = hash_password("correct horse battery", n=2**10)
    assert encoded.startswith("scrypt$1024$") and "correct" not in encoded
    assert verify_password("correct horse battery", encoded)
    assert not verify_password("correct horse batterz", encoded)
    assert not verify_password("anything", "garbage")


def test_rate_limiter_blocks_after_the_allowed_failures() -> None:
    limiter = RateLimiter(attempts=2, window=60)
    limiter.failed("ana")
    assert not limiter.blocked("ana")
    limiter.failed("ana")
    assert limiter.blocked("ana") and not limiter.blocked("bob")
    limiter.succeeded("ana")
    assert not limiter.blocked("ana")


def test_error_rate_is_errors_over_messages_taken_in_the_window() -> None:
    samples = deque([Sample(0, 0, 0), Sample(100, 10, 0), Sample(200, 30, 5)])
    assert error_rate(samples, 150) == 0.25  # from t=100: 20 taken, 5 errors
    assert error_rate(deque([Sample(0, 5, 1)]), 60) == 0.0


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    s = SqliteStore(tmp_path / "store.db")
    await s.open()
    yield s
    await s.close()


async def test_requeue_reopens_a_dead_delivery_and_its_queue_sends_it(store: SqliteStore) -> None:
    peer = Peer({"m1": ["retry", "ok"]})
    queue = make_queue(store, peer, max_attempts=1)
    queue.start()
    mid = await enqueue(store, queue, "m1")
    assert await settled(store, mid) == "errored"
    [(delivery_id,)] = await store._read(lambda c: c.execute("SELECT id FROM deliveries").fetchall())
    row = await store.requeue_delivery(delivery_id)
    assert row is not None and row.status == "queued" and row.attempts == 1  # attempts kept
    assert (await store.message(mid)).status == "queued"  # type: ignore[union-attr]
    queue.resume(row)
    assert await settled(store, mid) == "sent"
    assert peer.sent == ["m1"]
    events = [(e["status"], e["destination"]) for e in await store.events(mid)]
    assert events == [
        ("queued", None),
        ("dead", "out"),
        ("errored", None),
        ("queued", None),
        ("queued", "out"),
        ("sent", "out"),
        ("sent", None),
    ]
    assert await store.requeue_delivery(delivery_id) is None  # sent: nothing to resend
    await queue.stop(1)
    await asyncio.sleep(0)


def test_an_overdue_notifiable_report_raises_the_platform_alert() -> None:
    from collections import deque

    from engine.config import AlertRule
    from engine.dashboard.alerts import evaluate

    rule = AlertRule(name="notifiable-report-overdue", kind="reporting_overdue", threshold=0)
    quiet = {"channels": [], "reporting_overdue": 0.0}
    late = {"channels": [], "reporting_overdue": 2.0}
    assert evaluate([rule], quiet, {}) == []
    [active] = evaluate([rule], late, {"x": deque()})
    assert active["name"] == "notifiable-report-overdue" and active["value"] == 2.0
