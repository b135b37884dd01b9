"""Step `set_field`: write a constant into an HL7 field (e.g. stamp MSH-5/6 for a receiver)."""

from __future__ import annotations

from engine.contracts import BuildContext, ComponentConfig
from engine.errors import Finding, Rejected
from engine.formats.hl7v2 import parse_path
from engine.message import Message


class Config(ComponentConfig):
    path: str
    """HL7 path to write, e.g. `MSH-5`, `PID-3[2].4`, `OBX[*]-11` (every OBX)."""
    value: str
    """The value, unescaped (separators in it are escaped when written)."""
    only_if_empty: bool = False
    """Keep a value the sender already put there."""


EXAMPLE = {"type": "set_field", "path": "MSH-5", "value": "DSP"}


class SetField:
    def __init__(self, config: Config, context: BuildContext) -> None:
        parse_path(config.path)
        self.config = config

    def __call__(self, message: Message) -> Message:
        hl7 = message.hl7
        for path in hl7.expand(self.config.path):
            if self.config.only_if_empty and hl7.get(path):
                continue
            try:
                hl7.set(path, self.config.value)
            except ValueError as err:
                raise Rejected([Finding(f"cannot set {path}: {err}", code="207")], ack_code="AR") from err
        return message
