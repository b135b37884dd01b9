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
    "sftp": "engine.connectors.sftp.source:SftpSource",
    "amqp": "engine.connectors.amqp.source:AmqpSource",
    "pix_pdq": "engine.mpi.query_source:PixPdqSource",
    "smtp": "engine.connectors.smtp.source:SmtpSource",
}

STEPS: dict[str, str] = {
    "filter_message_type": "transforms.filter_message_type:FilterMessageType",
    "set_field": "transforms.set_field:SetField",
    "map_code": "transforms.map_code:MapCode",
    "validate_hl7": "transforms.validate_hl7:ValidateHl7",
    "validate_schematron": "transforms.validate_schematron:ValidateSchematron",
    "validate_xsd": "transforms.validate_xsd:ValidateXsd",
    "resolve_patient": "transforms.resolve_patient:ResolvePatient",
    "mpi_adt": "transforms.mpi_adt:MpiAdt",
    "hl7_to_cda_lab": "transforms.hl7_to_cda_lab:Hl7ToCdaLab",
    "dsp_check": "transforms.dsp_check:DspCheck",
    "detect_notifiable": "transforms.detect_notifiable:DetectNotifiable",
}

DESTINATIONS: dict[str, str] = {
    "mllp": "engine.connectors.mllp.destination:MllpDestination",
    "file": "engine.connectors.file.destination:FileDestination",
    "sftp": "engine.connectors.sftp.destination:SftpDestination",
    "amqp": "engine.connectors.amqp.destination:AmqpDestination",
    "secure_mail": "engine.connectors.smtp.destination:SecureMailDestination",
    "dsp_store": "engine.dsp.destination:DspStore",
    "reporting_feed": "engine.reporting.destination:ReportingFeed",
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


def _target(kind: Kind, type_name: str) -> tuple[Any, str]:
    table = TABLES[kind]
    target = table.get(type_name)
    if target is None:
        raise UnknownComponent(f'unknown {kind} type "{type_name}"' + suggestion(type_name, list(table)))
    module_name, _, class_name = target.partition(":")
    return importlib.import_module(module_name), class_name


def load(kind: Kind, type_name: str) -> Any:
    """The component class registered for `type_name`, imported on first use."""
    module, class_name = _target(kind, type_name)
    return getattr(module, class_name)


def config_model(kind: Kind, type_name: str) -> Any:
    """The component's pydantic `Config`, defined beside the class in the same file."""
    module, _ = _target(kind, type_name)
    return module.Config


def example(kind: Kind, type_name: str) -> dict[str, Any]:
    """The component's tested `EXAMPLE` configuration."""
    module, _ = _target(kind, type_name)
    return dict(module.EXAMPLE)


def all_types(kind: Kind) -> list[str]:
    return sorted(TABLES[kind])
