"""The HL7 steps: filter_message_type, set_field, map_code, validate_hl7."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from engine import registry
from engine.contracts import BuildContext
from engine.errors import Filtered, Rejected
from engine.message import HL7V2, Message, SourceMeta
from tests.unit.hl7_samples import ADT_A01_23, ORU_R01_25


def step(type_name: str, tmp_path: Path | None = None, **options: Any) -> Any:
    config = registry.config_model("step", type_name).model_validate(options)
    return registry.load("step", type_name)(config, BuildContext(tmp_path or Path("."), "test"))


def oru(raw: bytes = ORU_R01_25) -> Message:
    return Message("test", raw, HL7V2, SourceMeta("test"))


def test_filter_lets_accepted_types_through() -> None:
    message = oru()
    assert step("filter_message_type", accept=["ORU^R01"])(message) is message
    assert step("filter_message_type", accept=["ADT^*"])(oru(ADT_A01_23)).hl7.header.trigger_event == "A01"


def test_filter_drops_other_types_quietly_by_default() -> None:
    with pytest.raises(Filtered, match="ORU\\^R01 is not accepted"):
        step("filter_message_type", accept=["ADT^A01"])(oru())


def test_filter_rejects_with_200_or_201_when_asked() -> None:
    with pytest.raises(Rejected) as unknown_type:
        step("filter_message_type", accept=["ADT^A01"], on_mismatch="reject")(oru())
    assert unknown_type.value.ack_code == "AR" and unknown_type.value.findings[0].code == "200"
    with pytest.raises(Rejected) as unknown_event:
        step("filter_message_type", accept=["ORU^R30"], on_mismatch="reject")(oru())
    assert unknown_event.value.findings[0].code == "201"


def test_set_field_writes_escaped_values_and_rerenders() -> None:
    message = step("set_field", path="MSH-5", value="DSP|MAIN")(oru())
    assert b"|DSP\\F\\MAIN|" in message.content()
    assert message.hl7.get("MSH-5") == "DSP|MAIN" and message.transformed()


def test_set_field_every_occurrence_and_only_if_empty() -> None:
    message = step("set_field", path="OBX[*]-11", value="C")(oru())
    assert set(message.hl7.get_all("OBX[*]-11")) == {"C"}
    kept = step("set_field", path="OBX[*]-11", value="X", only_if_empty=True)(oru())
    assert set(kept.hl7.get_all("OBX[*]-11")) == {"F"}


def test_map_code_translates_and_stamps_the_coding_system(tmp_path: Path) -> None:
    table = tmp_path / "codes.yaml"
    table.write_text("'6690-2': WBC\n")
    mapper = step("map_code", tmp_path, path="OBX[*]-3.1", table_file="codes.yaml",
                  table={"718-7": "HGB"}, also_set={"OBX-3.3": "L"})
    message = mapper(oru())
    assert message.hl7.get("OBX[1]-3.1") == "WBC" and message.hl7.get("OBX[1]-3.3") == "L"
    assert message.hl7.get("OBX[3]-3.1") == "HGB" and message.hl7.get("OBX[2]-3.1") == "789-8"


def test_map_code_rejects_unknown_codes_naming_field_and_value() -> None:
    with pytest.raises(Rejected) as err:
        step("map_code", path="OBX[*]-3.1", table={"6690-2": "WBC"}, on_missing="reject")(oru())
    [finding] = err.value.findings
    assert finding.code == "103" and finding.location == "OBX^2^3^1^1" and '"789-8"' in finding.text


def test_map_code_needs_a_table() -> None:
    with pytest.raises(ValueError, match="give `table` or `table_file`"):
        registry.config_model("step", "map_code").model_validate({"path": "OBX-3.1"})


def test_validate_hl7_reports_every_problem_at_once() -> None:
    source = oru(ORU_R01_25.replace(b"\rSPM|", b"\rXXX|"))
    source.hl7.set("OBR-4", "")
    broken = source.content()
    validate = step("validate_hl7", required_segments=["PID", "SPM"], required_fields=["OBR-4", "PID-3"])
    with pytest.raises(Rejected) as err:
        validate(oru(broken))
    assert [(f.code, f.location) for f in err.value.findings] == [("100", "SPM"), ("101", "OBR^1^4")]
    assert err.value.ack_code == "AE"


def test_validate_hl7_warn_only_keeps_the_message_with_warnings() -> None:
    message = step("validate_hl7", required_fields=["PID-13"], warn_only=True)(oru())
    assert [f.severity for f in message.findings] == ["W"]


def test_validate_hl7_structure_check_with_hl7apy() -> None:
    validate = step("validate_hl7", structure=True)
    broken = oru(ORU_R01_25.replace(b"\rPID|", b"\rZZZ|"))
    with pytest.raises(Rejected) as err:
        validate(broken)
    assert err.value.findings[0].text.startswith("HL7 structure")


def test_invalid_paths_are_refused_when_the_step_is_built() -> None:
    with pytest.raises(ValueError, match="invalid HL7 path"):
        step("set_field", path="PID3", value="x")
