"""Step `validate_hl7`: required segments and fields, optionally the full hl7apy structure check.

Every problem found is reported (not just the first): the ACK is AE with one ERR segment per
problem naming the segment occurrence and field (HL7 error 101 required field missing, 100
segment sequence error, 102 data type error), so the sender can fix them all at once.

The structure check parses with hl7apy (about 16 ms per ORU here, so it is opt-in: use it on
channels whose senders are being certified, not on the hot path of a busy feed).
"""

from __future__ import annotations

from pydantic import Field

from engine.contracts import BuildContext, ComponentConfig
from engine.errors import Finding, Rejected
from engine.formats.hl7v2 import Hl7Message, location, parse_path
from engine.message import Message


class Config(ComponentConfig):
    required_segments: list[str] = Field(default_factory=list)
    """Segments that must appear at least once, e.g. `[PID, OBR, OBX]`."""
    required_fields: list[str] = Field(default_factory=list)
    """HL7 paths that must be non-empty; `OBX[*]-3` checks every OBX."""
    structure: bool = False
    """Also check the message structure and data types against the HL7 standard (hl7apy, strict)."""
    warn_only: bool = False
    """Report problems as warnings (ACK AA with ERR severity W) instead of refusing the message."""


EXAMPLE = {
    "type": "validate_hl7",
    "required_segments": ["PID", "OBR", "OBX"],
    "required_fields": ["PID-3", "OBR-4", "OBX[*]-3", "OBX[*]-11"],
}


class ValidateHl7:
    def __init__(self, config: Config, context: BuildContext) -> None:
        for path in config.required_fields:
            parse_path(path)
        self.config = config

    def __call__(self, message: Message) -> Message:
        hl7 = message.hl7
        findings = self.missing_segments(hl7) + self.missing_fields(hl7)
        if self.config.structure and not findings:
            findings += structure_findings(hl7)
        if not findings:
            return message
        if self.config.warn_only:
            message.findings.extend(Finding(f.text, f.code, f.location, "W") for f in findings)
            return message
        raise Rejected(findings, ack_code="AE")

    def missing_segments(self, hl7: Hl7Message) -> list[Finding]:
        return [
            Finding(f"required segment {name} is missing", code="100", location=name)
            for name in self.config.required_segments
            if hl7.count(name) == 0
        ]

    def missing_fields(self, hl7: Hl7Message) -> list[Finding]:
        findings = []
        for pattern in self.config.required_fields:
            segment = parse_path(pattern).seg
            if hl7.count(segment) == 0:
                continue  # reported (or not required) as a segment
            findings += [
                Finding(f"required field {path} is empty", code="101", location=location(path))
                for path in hl7.expand(pattern)
                if not hl7.get(path)
            ]
        return findings


def structure_findings(hl7: Hl7Message) -> list[Finding]:
    """hl7apy's strict parse and validation, its complaints turned into findings."""
    from hl7apy.consts import VALIDATION_LEVEL
    from hl7apy.exceptions import HL7apyException
    from hl7apy.parser import parse_message

    try:
        parsed = parse_message(hl7.to_text(), validation_level=VALIDATION_LEVEL.STRICT, find_groups=True)
        parsed.validate()
    except HL7apyException as err:
        return [Finding(f"HL7 structure: {err}", code="100")]
    except (ValueError, KeyError, IndexError) as err:
        return [Finding(f"HL7 structure could not be checked: {err}", code="102")]
    return []
