"""Routing conditions (`when:`) on steps and destinations, and routing variables kept in the store."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.channel import message_from_row
from engine.config import RouteCondition, load_project
from engine.errors import ConfigError
from engine.store.base import IntakeRecord, NewDelivery
from engine.store.sqlite import SqliteStore
from tests.support.engine_process import write_project
from tests.support.engine_thread import EngineThread
from tests.support.mllp_peers import MllpClient
from tests.unit.hl7_samples import ORU_R01_25

CHANNEL = """
respond_after: processed
source: {type: mllp, port: 0}
steps:
  - {type: set_field, path: MSH-5, value: FLAGGED, when: {var_present: never_set}}
destinations:
  - {name: always, type: file, directory: out-always}
  - {name: never, type: file, directory: out-never, when: {var_present: never_set}}
  - {name: absent, type: file, directory: out-absent, when: {var_absent: never_set}}
"""


def test_conditions() -> None:
    assert RouteCondition(var_present="a").holds({"a": "x"})
    assert not RouteCondition(var_present="a").holds({"a": ""})
    assert RouteCondition(var_absent="b").holds({"a": "x"})
    assert not RouteCondition(var_absent="a").holds({"a": ""})
    assert RouteCondition(var_equals={"a": "x"}, var_absent="b").holds({"a": "x"})
    assert not RouteCondition(var_equals={"a": "x"}).holds({"a": "y"})


def test_unknown_condition_keys_are_config_errors(tmp_path: Path) -> None:
    bad = CHANNEL.replace("var_present: never_set}}\ndestinations", "var_presnt: never_set}}\ndestinations")
    with pytest.raises(ConfigError) as err:
        load_project(write_project(tmp_path, {"lab": bad}))
    assert any('steps[0].when.var_presnt: unknown option (did you mean "var_present"?)' in p
               for p in err.value.problems)


def test_only_destinations_whose_condition_holds_get_the_message(tmp_path: Path) -> None:
    engine = EngineThread(write_project(tmp_path, {"lab": CHANNEL})).start()
    try:
        with MllpClient(engine.port("lab")) as client:
            assert b"MSA|AA|" in client.send(ORU_R01_25)
        stats = engine.call(engine.engine.store.stats())["channels"]["lab"]
    finally:
        engine.stop()
    assert set(stats["destinations"]) == {"always", "absent"}  # no delivery row for `never`
    delivered = list((tmp_path / "out-always").glob("*"))
    assert len(delivered) == 1 and b"FLAGGED" not in delivered[0].read_bytes()  # the step did not run


async def test_routing_variables_survive_a_reload_from_the_store(tmp_path: Path) -> None:
    """Regression: a message reloaded after a restart had lost its vars (enterprise id...)."""
    store = SqliteStore(tmp_path / "s.db")
    await store.open()
    try:
        record = IntakeRecord("lab", "v1", 1.0, "application/hl7-v2", "mllp", "", "", "", "C1", "S", b"h",
                              "queued", "AA", None, ORU_R01_25, deliveries=[NewDelivery("out")],
                              vars=b'{"enterprise_id": "E1"}')
        result = await store.intake(record)
        stored = await store.message(result.message_id)
        assert stored is not None and message_from_row(stored).vars == {"enterprise_id": "E1"}
    finally:
        await store.close()
