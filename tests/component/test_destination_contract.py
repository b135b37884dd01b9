"""The destination contract, run over every registered destination against a real peer:
`send` returns only once the peer took the message; a refusal for good raises
PermanentError; an unavailable, silent or temporarily refusing peer raises RetryableError.
Each error names the peer and the reason, since operators read it in the dashboard."""

from __future__ import annotations

import socket
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Protocol

import pytest

from engine import registry
from engine.contracts import BuildContext, Destination
from engine.errors import PermanentError, RetryableError
from engine.message import HL7V2, Message, SourceMeta
from tests.component.discovery import discover
from tests.unit.hl7_samples import ORU_R01_25


class Harness(Protocol):
    type: str

    async def config(self, scenario: str) -> dict[str, object]: ...
    async def delivered(self) -> list[bytes]: ...
    async def stop(self) -> None: ...


def harnesses() -> dict[str, type[Any]]:
    return discover("destination_harness")


HARNESSES = harnesses()


@pytest.mark.parametrize("destination_type", registry.all_types("destination"))
def test_every_destination_has_a_contract_harness(destination_type: str) -> None:
    assert destination_type in HARNESSES, f"destination {destination_type!r} has no contract harness"


@pytest.fixture(params=sorted(HARNESSES))
async def harness(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Harness]:
    h: Harness = HARNESSES[request.param](tmp_path)
    yield h
    await h.stop()


async def destination(harness: Harness, scenario: str, tmp_path: Path) -> Destination:
    options = await harness.config(scenario)
    config = registry.config_model("destination", harness.type).model_validate(options)
    # A harness may build the component in a project of its own (services, config files).
    context = harness.context() if hasattr(harness, "context") else BuildContext(tmp_path, "contract")
    built: Destination = registry.load("destination", harness.type)(config, context)
    return built


def sample_for(harness: Harness) -> Message:
    """The harness's own sample when the destination takes other documents (a CDA for the DSP)."""
    own: Message = harness.sample() if hasattr(harness, "sample") else sample()
    return own


def sample() -> Message:
    return Message("contract", ORU_R01_25, HL7V2, SourceMeta("test"), id=7, control_id="LAB20250314000123")


async def test_accepted_message_has_reached_the_peer_when_send_returns(
    harness: Harness, tmp_path: Path
) -> None:
    dest = await destination(harness, "accept", tmp_path)
    try:
        await dest.send(sample_for(harness))
        # A destination that sends a derived document says what the peer should hold (`expected`).
        assert await harness.delivered() == [getattr(harness, "expected", bytes)(ORU_R01_25)]
        await dest.send(
            sample_for(harness)
        )  # a retried delivery must not fail (idempotent or keep-alive reuse)
    finally:
        await dest.close()


@pytest.mark.parametrize("scenario", ["unavailable", "retryable", "silent"])
async def test_temporary_trouble_is_retryable(harness: Harness, tmp_path: Path, scenario: str) -> None:
    dest = await destination(harness, scenario, tmp_path)
    try:
        with pytest.raises(RetryableError) as err:
            await dest.send(sample_for(harness))
        assert str(err.value)
    finally:
        await dest.close()


async def test_refusal_for_good_is_permanent(harness: Harness, tmp_path: Path) -> None:
    dest = await destination(harness, "permanent", tmp_path)
    try:
        with pytest.raises(PermanentError) as err:
            await dest.send(sample_for(harness))
        assert str(err.value)
    finally:
        await dest.close()


async def test_mllp_unreadable_ack_is_retryable_with_the_reason(tmp_path: Path) -> None:
    """Regression (found by fuzzing the ACK path): an ACK our parser cannot read is a clear
    retryable error naming the reason, not an unexpected exception."""
    unreadable = b"MSH|^~\\&|R|R|E|E|1||ACK|X|P|2.5||||||KLINGON\rMSA|AA|LAB20250314000123\r"
    server = socket.create_server(("127.0.0.1", 0))

    def answer_once() -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"\x0b" + unreadable + b"\x1c\x0d")

    threading.Thread(target=answer_once, daemon=True).start()
    config = registry.config_model("destination", "mllp").model_validate(
        {"host": "127.0.0.1", "port": server.getsockname()[1], "ack_timeout": 5}
    )
    dest: Destination = registry.load("destination", "mllp")(config, BuildContext(tmp_path, "contract"))
    try:
        with pytest.raises(RetryableError, match='unreadable ACK: unsupported character set "KLINGON"'):
            await dest.send(sample())
    finally:
        await dest.close()
        server.close()
