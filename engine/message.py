"""The message that flows through a channel, and what a source hands to the engine.

A `Message` is what steps see and what destinations send. It holds the bytes as received
(never modified), the current content after steps, the metadata of the source, and a lazily
parsed HL7 view: steps that edit fields edit `message.hl7`, and `content()` re-renders it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from engine.errors import Finding

if TYPE_CHECKING:
    from engine.formats.hl7v2 import Hl7Message

HL7V2 = "application/hl7-v2"
CDA = "application/cda+xml"
XML = "application/xml"
DICOM = "application/dicom"
JSON = "application/json"


@dataclass(frozen=True)
class SourceMeta:
    """Where a message came from. No patient data here: it is logged and shown freely."""

    source_type: str
    peer: str = ""
    tls_subject: str = ""
    filename: str = ""


@dataclass
class Message:
    """One message inside the engine.

    `raw` is immutable evidence of what was received. `body` is the current content; when a
    step parsed the HL7 view (`hl7`) and changed it, `content()` renders the new bytes.
    """

    channel: str
    raw: bytes
    content_type: str
    meta: SourceMeta
    received_at: float = field(default_factory=time.time)
    id: int | None = None
    control_id: str = ""
    sender: str = ""
    charset: str = ""
    body: bytes | None = None
    vars: dict[str, str] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    _hl7: Hl7Message | None = None

    @property
    def hl7(self) -> Hl7Message:
        """The HL7 v2 view of the current content, parsed once on first use."""
        if self._hl7 is None:
            from engine.formats.hl7v2 import parse

            self._hl7 = parse(self.body if self.body is not None else self.raw, self.charset)
        return self._hl7

    def content(self) -> bytes:
        """The current content: re-rendered if a step changed the HL7 view."""
        if self._hl7 is not None and self._hl7.modified:
            self.body = self._hl7.to_bytes()
            self._hl7.modified = False
        return self.body if self.body is not None else self.raw

    def forget_parse(self) -> None:
        """Drop the parsed view to keep queued messages small; kept if it holds unrendered changes."""
        if self._hl7 is not None and not self._hl7.modified:
            self._hl7 = None

    def transformed(self) -> bool:
        """True when the current content differs from what was received."""
        return self.content() != self.raw
