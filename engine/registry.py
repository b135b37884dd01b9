"""Component registry: YAML `type` -> "module:Class", imported only when used.

Adding a component is one line here. Unknown types fail with a "did you mean" suggestion.
"""

from __future__ import annotations

import difflib
import importlib
from typing import Any, Literal

Kind = Literal["source", "step", "destination"]

SOURCES: dict[str, str] = {
    "mllp": "engine.connectors.mllp.source:MllpSource",
    "file": "engine.connectors.file.source:FileSource",
}

STEPS: dict[str, str] = {
    "filter_message_type": "transforms.filter_message_type:FilterMessageType",
    "set_field": "transforms.set_field:SetField",
    "map_code": "transforms.map_code:MapCode",
    "validate_hl7": "transforms.validate_hl7:ValidateHl7",
}

DESTINATIONS: dict[str, str] = {
    "mllp": "engine.connectors.mllp.destination:MllpDestination",
    "file": "engine.connectors.file.destination:FileDestination",
}

TABLES: dict[Kind, dict[str, str]] = {
    "source": SOURCES,
    "step": STEPS,
    "destination": DESTINATIONS,
}


class UnknownComponent(LookupError):
    """No component of that kind has that type."""


def suggestion(word: str, choices: list[str]) -> str:
    """' (did you mean "x"?)' for the closest choice, or a list of what exists."""
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    if close:
        return f' (did you mean "{close[0]}"?)'
    return f" (known: {', '.join(sorted(choices))})"


def load(kind: Kind, type_name: str) -> Any:
    """The component class registered for `type_name`, imported on first use."""
    table = TABLES[kind]
    target = table.get(type_name)
    if target is None:
        raise UnknownComponent(f'unknown {kind} type "{type_name}"' + suggestion(type_name, list(table)))
    module_name, _, class_name = target.partition(":")
    return getattr(importlib.import_module(module_name), class_name)


def all_types(kind: Kind) -> list[str]:
    return sorted(TABLES[kind])
