"""Step `map_code`: translate a coded field through a lookup table (e.g. local test codes -> LOINC).

The table is inline or in a YAML file of `from: to` pairs. A code missing from the table is
kept, replaced by `default`, or rejected (AE, error 103 "table value not found", naming the
field and the value) as configured.
"""

from __future__ import annotations

from typing import Literal

import yaml
from pydantic import model_validator

from engine.contracts import BuildContext, ComponentConfig
from engine.errors import Finding, Rejected
from engine.formats.hl7v2 import location, parse_path
from engine.message import Message


class Config(ComponentConfig):
    path: str
    """HL7 path of the code, e.g. `OBX[*]-3.1` (every result's test code)."""
    table: dict[str, str] = {}
    """Inline table `from: to`."""
    table_file: str = ""
    """YAML file holding the table (merged under the inline entries)."""
    on_missing: Literal["keep", "default", "reject"] = "keep"
    """What to do with a code that is not in the table."""
    default: str = ""
    """Value written for a missing code when `on_missing: default`."""
    also_set: dict[str, str] = {}
    """Constants written into the same segment occurrence whenever a code is mapped (`OBX-3.3: LN`)."""

    @model_validator(mode="after")
    def _needs_a_table(self) -> Config:
        if not self.table and not self.table_file:
            raise ValueError("give `table` or `table_file`")
        return self


EXAMPLE = {
    "type": "map_code",
    "path": "OBX[*]-3.1",
    "table": {"GLU": "2345-7", "NA": "2951-2"},
    "on_missing": "reject",
    "also_set": {"OBX-3.3": "LN"},
}


class MapCode:
    def __init__(self, config: Config, context: BuildContext) -> None:
        parse_path(config.path)
        self.config = config
        self.table = dict(config.table)
        if config.table_file:
            self.table = {**load_table(context.path(config.table_file)), **self.table}

    def __call__(self, message: Message) -> Message:
        hl7 = message.hl7
        for path in hl7.expand(self.config.path):
            code = hl7.get(path)
            if not code:
                continue
            mapped = self._mapped(code, path)
            if mapped is None:
                continue
            hl7.set(path, mapped)
            for extra_path, value in self.config.also_set.items():
                hl7.set(same_occurrence(extra_path, path), value)
        return message

    def _mapped(self, code: str, path: str) -> str | None:
        if code in self.table:
            return self.table[code]
        if self.config.on_missing == "default":
            return self.config.default
        if self.config.on_missing == "reject":
            text = f'code "{code}" in {path} has no mapping in this channel\'s table'
            raise Rejected([Finding(text, code="103", location=location(path))], ack_code="AE")
        return None


def load_table(path: object) -> dict[str, str]:
    with open(str(path), encoding="utf-8") as handle:
        data = yaml.safe_load(handle) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a table file must be a mapping of code: code")
    return {str(k): str(v) for k, v in data.items()}


def same_occurrence(extra_path: str, matched: str) -> str:
    """`OBX-3.3` next to the concrete `OBX[2]-3.1` becomes `OBX[2]-3.3`."""
    segment = matched.split("-", 1)[0]
    return segment + "-" + extra_path.split("-", 1)[1]
