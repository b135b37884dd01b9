"""A message reloaded from the store after a restart routes as it did before, on both backends.

Regression: the PostgreSQL store did not keep the routing variables the steps set (SQLite did),
so a message reloaded from it after a restart had none: every `when: {var_present: ...}` turned
false, and destinations reading the variables (the notifiable-disease feed reads
`notifiable` and `enterprise_id`) saw a message without them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.channel import encode_vars, message_loader, routed
from engine.config import ChannelSpec, load_project
from engine.contracts import BuildContext
from engine.message import HL7V2, Message, SourceMeta
from engine.store.base import IntakeRecord, NewDelivery, ProcessedRecord
from tests.support.engine_process import write_project
from tests.support.store_backends import StoreBackend
from tests.unit.test_reporting_detection import SHIPPED, oru
from transforms.detect_notifiable import Config, DetectNotifiable

CHANNEL = """
respond_after: processed
source: {type: mllp, port: 0}
destinations:
  - {name: archive, type: file, directory: out}
  - {name: authority, type: file, directory: authority, when: {var_present: notifiable_diseases}}
  - {name: routine, type: file, directory: routine, when: {var_absent: notifiable_diseases}}
"""


@pytest.fixture(params=["postgresql", "sqlite"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> StoreBackend:
    return StoreBackend.fresh(str(request.param), tmp_path)


def channel_spec(tmp_path: Path) -> ChannelSpec:
    (spec,) = load_project(write_project(tmp_path, {"lab": CHANNEL})).channels
    return spec


def decisions(spec: ChannelSpec, message: Message) -> dict[str, bool]:
    """Which destinations get the message: the channel's own routing."""
    return {d.name: routed(d.when, message) for d in spec.destinations}


def notifiable_positive(tmp_path: Path) -> Message:
    """A SARS-CoV-2 positive after the real `detect_notifiable` step."""
    step = DetectNotifiable(Config(catalogue=str(SHIPPED)), BuildContext(tmp_path, "lab"))
    return step(Message("lab", oru("P1"), HL7V2, SourceMeta("mllp")))


def intake_record(message: Message, status: str, deliveries: list[NewDelivery]) -> IntakeRecord:
    return IntakeRecord(
        "lab", "v1", 1.0, HL7V2, "mllp", "", "", "", "P1", "LAB", b"h", status, "AA", None, message.raw,
        deliveries=deliveries, vars=encode_vars(message.vars) if status != "received" else None,
    )


async def reload_after_restart(backend: StoreBackend, message_id: int) -> Message:
    restarted = backend.store()  # a new process: nothing but what the store kept
    await restarted.open()
    try:
        return await message_loader(restarted, "")(message_id)
    finally:
        await restarted.close()


async def test_processed_at_intake_routes_the_same_after_a_restart(
    backend: StoreBackend, tmp_path: Path
) -> None:
    spec = channel_spec(tmp_path)
    message = notifiable_positive(tmp_path)
    before = decisions(spec, message)
    assert before == {"archive": True, "authority": True, "routine": False}
    store = backend.store()
    await store.open()
    try:
        wanted = [NewDelivery(name) for name, yes in before.items() if yes]
        stored = await store.intake(intake_record(message, "queued", wanted))
    finally:
        await store.close()
    reloaded = await reload_after_restart(backend, stored.message_id)
    assert decisions(spec, reloaded) == before
    assert reloaded.vars == message.vars  # what the notifiable feed reads when it delivers


async def test_processed_after_intake_routes_the_same_after_a_restart(
    backend: StoreBackend, tmp_path: Path
) -> None:
    """respond_after: received: the variables come with the step outcome (`processed`)."""
    spec = channel_spec(tmp_path)
    message = notifiable_positive(tmp_path)
    store = backend.store()
    await store.open()
    try:
        stored = await store.intake(intake_record(message, "received", []))
        wanted = [NewDelivery(name) for name, yes in decisions(spec, message).items() if yes]
        variables = encode_vars(message.vars)
        outcome = ProcessedRecord(stored.message_id, "lab", "queued", None, None, wanted, vars=variables)
        await store.processed(outcome)
    finally:
        await store.close()
    reloaded = await reload_after_restart(backend, stored.message_id)
    assert decisions(spec, reloaded) == decisions(spec, message)
    assert reloaded.vars == message.vars
