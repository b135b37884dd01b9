"""`passerelle test`: channel test cases run offline and report precisely."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.cli import main
from tests.support.engine_process import write_project
from tests.unit.hl7_samples import ORU_R01_25

CHANNEL = """
respond_after: processed
source: {type: mllp, port: 12999}
steps:
  - {type: validate_hl7, required_fields: [PID-3]}
  - {type: set_field, path: MSH-5, value: DSP}
destinations:
  - {name: out, type: mllp, host: 192.0.2.1, port: 1}
tests:
  - name: stamped and sent
    input: sample.hl7
    expect:
      ack: AA
      status: sent
      destinations:
        out: {hl7: {MSH-5: DSP}, contains: [ORU^R01]}
"""

WRONG = """
tests:
  - name: expects the wrong things
    input: sample.hl7
    expect:
      ack: AE
      err_contains: [nothing like this]
      destinations:
        out: {hl7: {MSH-5: ELSEWHERE}}
        ghost: none
"""


@pytest.fixture
def config(tmp_path: Path) -> Path:
    (tmp_path / "sample.hl7").write_bytes(ORU_R01_25)
    return write_project(tmp_path, {"lab": CHANNEL})


def test_passing_cases_run_offline_with_destinations_captured(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # the destination's host is unroutable: a real send would fail; the capture makes it pass
    assert main(["test", "--config", str(config)]) == 0
    assert "PASS lab: stamped and sent (AA, sent)" in capsys.readouterr().out


def test_failing_expectations_are_each_reported_and_exit_non_zero(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (config.parent.parent / "channels" / "lab.tests.yaml").write_text(WRONG)
    assert main(["test", "--config", str(config), "lab"]) == 1
    out = capsys.readouterr().out
    assert "FAIL lab: expects the wrong things (AA, sent)" in out
    assert "expected ACK AE, got AA" in out
    assert "no error text contains 'nothing like this'" in out
    assert "out: MSH-5 is 'DSP', expected 'ELSEWHERE'" in out
    assert "the channel has no destination named 'ghost'" in out
    assert "1 passed, 1 failed" in out


def test_a_malformed_case_is_a_check_error(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (config.parent.parent / "channels" / "lab.tests.yaml").write_text(
        "tests:\n  - {name: x, input: y.hl7, expect: {ack: OK}}\n"
        "  - {name: y, message: 'MSH|', input: y.hl7}\n"
    )
    assert main(["check", "--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert "lab.tests.yaml: tests[0].expect.ack: Input should be 'AA'" in err
    assert "lab.tests.yaml: tests[1]: Value error, give exactly one of `message` and `input`" in err


def test_unknown_channel_is_named(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["test", "--config", str(config), "nope"]) == 2
    assert "unknown channel(s): nope (known: lab)" in capsys.readouterr().err
