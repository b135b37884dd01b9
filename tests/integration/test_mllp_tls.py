"""MLLP over TLS and mutual TLS: who may connect, and what is recorded about them."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.engine_process import write_project
from tests.support.engine_thread import EngineThread
from tests.support.mllp_peers import MllpClient
from tests.support.pki import Pki
from tests.unit.hl7_samples import ORU_R01_25

CHANNEL = """
respond_after: received
source:
  type: mllp
  port: 0
  tls: {{cert: "{pki.server_cert}", key: "{pki.server_key}", {client}}}
destinations: []
"""


def engine_with(tmp_path: Path, pki: Pki, client: str = "") -> EngineThread:
    text = CHANNEL.format(pki=pki, client=client)
    return EngineThread(write_project(tmp_path, {"lab": text})).start()


def client_context(pki: Pki, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    if cert is not None:
        ctx.load_cert_chain(cert, key)
    return ctx


@pytest.fixture
def tls_engine(tmp_path: Path, pki: Pki) -> Iterator[EngineThread]:
    engine = engine_with(tmp_path, pki)
    yield engine
    engine.stop()


@pytest.fixture
def mtls_engine(tmp_path: Path, pki: Pki) -> Iterator[EngineThread]:
    engine = engine_with(tmp_path, pki, f'client_ca: "{pki.ca}", allowed_subjects: ["CN=lis.lab-a.example"]')
    yield engine
    engine.stop()


def test_tls_client_gets_an_ack(tls_engine: EngineThread, pki: Pki) -> None:
    with MllpClient(tls_engine.port("lab"), client_context(pki)) as client:
        assert b"MSA|AA|LAB20250314000123" in client.send(ORU_R01_25)


def test_plain_text_client_is_not_served_by_a_tls_listener(tls_engine: EngineThread) -> None:
    with MllpClient(tls_engine.port("lab")) as client:
        client.send_raw(b"\x0b" + ORU_R01_25 + b"\x1c\x0d")
        assert client.closed_by_peer()


def test_allowed_client_certificate_is_served_and_recorded(mtls_engine: EngineThread, pki: Pki) -> None:
    with MllpClient(mtls_engine.port("lab"), client_context(pki, pki.client_cert, pki.client_key)) as client:
        assert b"MSA|AA|" in client.send(ORU_R01_25)
    stored = mtls_engine.call(mtls_engine.engine.store.message(1))
    assert stored is not None and "CN=lis.lab-a.example" in stored.tls_subject


def test_client_without_certificate_is_refused(mtls_engine: EngineThread, pki: Pki) -> None:
    with (
        pytest.raises((ssl.SSLError, ConnectionError, OSError)),
        MllpClient(mtls_engine.port("lab"), client_context(pki)) as client,
    ):
        client.send(ORU_R01_25)


def test_certificate_from_another_ca_is_refused(mtls_engine: EngineThread, pki: Pki) -> None:
    ctx = client_context(pki, pki.stranger_cert, pki.stranger_key)
    with (
        pytest.raises((ssl.SSLError, ConnectionError, OSError)),
        MllpClient(mtls_engine.port("lab"), ctx) as client,
    ):
        client.send(ORU_R01_25)


def test_trusted_certificate_with_a_subject_not_on_the_list_is_refused(
    mtls_engine: EngineThread, pki: Pki
) -> None:
    ctx = client_context(pki, pki.intruder_cert, pki.intruder_key)
    with (
        pytest.raises((ssl.SSLError, ConnectionError, OSError)),
        MllpClient(mtls_engine.port("lab"), ctx) as client,
    ):
        client.send(ORU_R01_25)
    stats = mtls_engine.call(mtls_engine.engine.store.stats())
    assert stats["channels"] == {}  # nothing from the intruder was taken
