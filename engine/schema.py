"""The JSON Schema of a channel file, generated from the component Config models.

Editors (VS Code YAML, IntelliJ) use it to complete and check channel files as people type;
`passerelle check` remains the authority. Regenerate with `passerelle schema`; a test fails
when the committed file is stale.
"""

from __future__ import annotations

from typing import Any

from engine import registry
from engine.config import ChannelFile, DestinationEntry


def component_schema(
    kind: registry.Kind, type_name: str, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    schema: dict[str, Any] = registry.config_model(kind, type_name).model_json_schema()
    schema["properties"] = {"type": {"const": type_name}, **(extra or {}), **schema.get("properties", {})}
    schema["required"] = ["type", *(extra or {}).keys() & {"name"}, *schema.get("required", [])]
    schema["title"] = f"{kind} {type_name}"
    return schema


def one_of(kind: registry.Kind, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"oneOf": [component_schema(kind, t, extra) for t in registry.all_types(kind)]}


def channel_schema() -> dict[str, Any]:
    schema = ChannelFile.model_json_schema()
    entry = DestinationEntry.model_json_schema()
    destination_extra = {"name": entry["properties"]["name"], "queue": {"$ref": "#/$defs/QueueConfig"}}
    schema.setdefault("$defs", {}).update(entry.get("$defs", {}))
    schema["properties"]["source"] = one_of("source")
    schema["properties"]["steps"] = {"type": "array", "items": one_of("step")}
    schema["properties"]["destinations"] = {
        "type": "array",
        "items": one_of("destination", destination_extra),
    }
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "Passerelle channel"
    return schema
