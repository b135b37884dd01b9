"""Contract-suite harness discovery: every class with a `type` defined in a harness module.

A new component's harness is a file `tests/component/{source,destination}_harness*.py`; the
suites pick it up by themselves, and fail for any registered component that has none.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any


def discover(prefix: str) -> dict[str, type[Any]]:
    found: dict[str, type[Any]] = {}
    for path in sorted(Path(__file__).parent.glob(f"{prefix}*.py")):
        module = importlib.import_module(f"tests.component.{path.stem}")
        for obj in vars(module).values():
            is_harness = isinstance(obj, type) and isinstance(getattr(obj, "type", None), str)
            if is_harness and obj.__module__ == module.__name__:
                found[obj.type] = obj
    return found
