"""`passerelle check`: every problem reported as `file: path: message`, before anything starts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.cli import main
from engine.config import load_project
from engine.errors import ConfigError
from engine.schema import channel_schema

ROOT = Path(__file__).resolve().parents[2]

GOOD = """
source: {type: mllp, port: 12575}
steps:
  - {type: filter_message_type, accept: [ORU^R01]}
destinations:
  - {name: archive, type: file, directory: var/out}
"""


def project(tmp_path: Path, channels: dict[str, str], engine: str = "") -> Path:
    (tmp_path / "config").mkdir()
    (tmp_path / "channels").mkdir()
    (tmp_path / "config" / "engine.yaml").write_text(engine or "store: {path: var/test.db}\n")
    for name, text in channels.items():
        (tmp_path / "channels" / f"{name}.yaml").write_text(text)
    return tmp_path / "config" / "engine.yaml"


def problems(config: Path) -> list[str]:
    with pytest.raises(ConfigError) as err:
        load_project(config)
    return err.value.problems


def test_a_valid_project_loads_with_versions_and_defaults(tmp_path: Path) -> None:
    loaded = load_project(project(tmp_path, {"lab": GOOD}))
    [channel] = loaded.channels
    assert channel.name == "lab" and channel.respond_after == "processed" and len(channel.version) == 16
    assert channel.destinations[0].queue.max_attempts == 10


def test_unknown_type_suggests_the_closest(tmp_path: Path) -> None:
    text = GOOD.replace("filter_message_type", "filter_mesage_type")
    [line] = problems(project(tmp_path, {"lab": text}))
    assert line.endswith(
        'lab.yaml: steps[0].type: unknown step type "filter_mesage_type" '
        '(did you mean "filter_message_type"?)'
    )


def test_unknown_option_suggests_the_closest(tmp_path: Path) -> None:
    text = GOOD.replace("port: 12575", "port: 12575, max_frame_byte: 10")
    [line] = problems(project(tmp_path, {"lab": text}))
    assert line.endswith('lab.yaml: source.max_frame_byte: unknown option (did you mean "max_frame_bytes"?)')


def test_every_problem_of_every_file_is_reported(tmp_path: Path) -> None:
    bad_port = GOOD.replace("12575", "99999")
    bad_queue = GOOD.replace("var/out}", "var/out, queue: {max_attempts: 0, order_by: 'PID-x'}}")
    lines = problems(project(tmp_path, {"a": bad_port, "b": bad_queue, "c": "source: [1, 2"}))
    assert any("a.yaml: source.port: Input should be less than or equal to 65535" in x for x in lines)
    assert any("b.yaml: destinations[0].queue.max_attempts:" in x for x in lines)
    assert any("b.yaml: destinations[0].queue.order_by:" in x for x in lines)
    assert any("c.yaml: line 1: invalid YAML" in x for x in lines)


def test_two_channels_on_one_port_are_refused(tmp_path: Path) -> None:
    lines = problems(project(tmp_path, {"a": GOOD, "b": GOOD}))
    assert any("b.yaml: source.port: port 12575 is already used by channel a" in x for x in lines)


def test_environment_and_secret_file_references(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "secret.txt").write_text("archive-dir\n")
    monkeypatch.setenv("LAB_PORT", "12600")
    text = GOOD.replace("12575", '"${LAB_PORT}"').replace("var/out", '"${file:secret.txt}"')
    [channel] = load_project(project(tmp_path, {"lab": text})).channels
    assert channel.source.config.port == 12600  # type: ignore[attr-defined]
    assert channel.destinations[0].config.directory == "archive-dir"  # type: ignore[attr-defined]


def test_missing_environment_variable_is_named(tmp_path: Path) -> None:
    text = GOOD.replace("12575", '"${NO_SUCH_VARIABLE_X}"')
    lines = problems(project(tmp_path, {"lab": text}))
    assert any(
        "lab.yaml: source.port: environment variable NO_SUCH_VARIABLE_X is not set" in x for x in lines
    )


def test_check_command_exits_non_zero_with_file_path_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = project(tmp_path, {"lab": GOOD.replace("archive,", "archive, colour: blue,")})
    assert main(["check", "--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert "lab.yaml: destinations[0].colour: unknown option" in err and "nothing was started" in err


def test_the_shipped_configuration_checks_clean(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--config", str(ROOT / "config" / "engine.yaml")]) == 0
    assert "channel lab-results" in capsys.readouterr().out


def test_the_committed_channel_schema_is_current() -> None:
    committed = json.loads((ROOT / "config" / "schema" / "channel.schema.json").read_text())
    assert committed == channel_schema(), "run `make schema` and commit config/schema/channel.schema.json"
