"""Step `validate_xsd`: check a CDA document against the CDA R2 XML Schema.

Every schema error rejects the message (AE) with a finding naming the line, the element's
XPath and libxml2's explanation. The schema is vendored under `schematron/cda-core/`:
`sdtc` (SDTC-extended, what most real documents need) or `normative` (POCD_MT000040 as
published), or a path to another .xsd. For HL7 v2 messages the CDA is read from `hl7_path`.
"""

from __future__ import annotations

from engine.contracts import BuildContext, ComponentConfig
from engine.errors import ConfigError
from engine.formats.cda import MAX_BYTES, MAX_DEPTH
from engine.message import Message
from engine.validation.steps import conclude, parsed
from engine.validation.xsd import xsd_validator


class Config(ComponentConfig):
    schema_name: str = "sdtc"
    """`sdtc` (CDA R2 with SDTC extensions), `normative` (CDA R2 as published), or a path to an .xsd."""
    hl7_path: str = "OBX-5.5"
    """For HL7 v2 messages: the field holding the CDA (Base64 when the component before it says so)."""
    max_bytes: int = MAX_BYTES
    """Refuse documents larger than this many bytes."""
    max_depth: int = MAX_DEPTH
    """Refuse documents nesting elements deeper than this."""


EXAMPLE: dict[str, object] = {"type": "validate_xsd", "schema_name": "sdtc"}
XsdConfig = Config


class ValidateXsd:
    def __init__(self, config: XsdConfig, context: BuildContext) -> None:
        self.config = config
        schema = config.schema_name
        where = schema if "/" not in schema else str(context.path(schema))
        try:  # load now: a missing or broken schema is a configuration error
            self.validator = xsd_validator(context.root, where)
        except (OSError, ValueError) as err:
            problem = f"channel {context.channel}: schema_name: cannot load {schema}: {err}"
            raise ConfigError([problem]) from err

    def __call__(self, message: Message) -> Message:
        c = self.config
        tree = parsed(message, c.hl7_path, c.max_bytes, c.max_depth)
        return conclude(message, self.validator.validate(tree), keep_information=False)
