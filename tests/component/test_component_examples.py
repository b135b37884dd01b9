"""Every registered component documents itself: its EXAMPLE validates against its Config,
and every option has a description (the generated reference is built from them)."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from engine import registry

COMPONENTS = [(kind, name) for kind in ("source", "step", "destination") for name in registry.all_types(kind)]


@pytest.mark.parametrize(("kind", "name"), COMPONENTS)
def test_example_is_valid(kind: registry.Kind, name: str) -> None:
    example = registry.example(kind, name)
    assert example.pop("type") == name
    example.pop("name", None) if kind == "destination" else None
    example.pop("queue", None) if kind == "destination" else None
    registry.config_model(kind, name).model_validate(example)


@pytest.mark.parametrize(("kind", "name"), COMPONENTS)
def test_every_option_is_described(kind: registry.Kind, name: str) -> None:
    undocumented = missing_descriptions(registry.config_model(kind, name))
    assert not undocumented, f"{kind} {name}: options without a docstring: {undocumented}"


def missing_descriptions(model: type[BaseModel], prefix: str = "") -> list[str]:
    missing = []
    for field_name, info in model.model_fields.items():
        if not info.description:
            missing.append(prefix + field_name)
        annotation = info.annotation
        for candidate in getattr(annotation, "__args__", (annotation,)):
            if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                missing += missing_descriptions(candidate, f"{prefix}{field_name}.")
    return missing


def test_unknown_type_suggests_the_closest() -> None:
    with pytest.raises(registry.UnknownComponent, match='did you mean "validate_hl7"'):
        registry.load("step", "validate_hl8")
