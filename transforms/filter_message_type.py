"""Step `filter_message_type`: let through only the message types a channel is for.

A message whose MSH-9 matches none of `accept` is either filtered (outcome `filtered`,
ACK AA: the sender did nothing wrong) or, with `on_mismatch: reject`, refused with AR and
HL7 error 200 (unsupported message type) or 201 (unsupported event).
"""

from __future__ import annotations

import fnmatch
from typing import Literal

from pydantic import Field

from engine.contracts import BuildContext, ComponentConfig
from engine.errors import Filtered, Finding, Rejected
from engine.message import Message


class Config(ComponentConfig):
    accept: list[str] = Field(min_length=1)
    """Accepted types as `CODE^EVENT` (e.g. `ORU^R01`); `*` and `?` wildcards (`ADT^*`)."""
    on_mismatch: Literal["filter", "reject"] = "filter"
    """`filter`: drop quietly with ACK AA. `reject`: answer AR (error 200/201) so the sender knows."""


EXAMPLE = {"type": "filter_message_type", "accept": ["ORU^R01"], "on_mismatch": "reject"}


class FilterMessageType:
    def __init__(self, config: Config, context: BuildContext) -> None:
        self.config = config
        self.patterns = [p.upper() for p in config.accept]

    def __call__(self, message: Message) -> Message:
        header = message.hl7.header
        kind = f"{header.message_code}^{header.trigger_event}".upper()
        if any(fnmatch.fnmatchcase(kind, p) for p in self.patterns):
            return message
        text = (
            f"message type {kind} is not accepted by this channel (accepted: {', '.join(self.config.accept)})"
        )
        if self.config.on_mismatch == "filter":
            raise Filtered(text)
        code_known = any(
            fnmatch.fnmatchcase(header.message_code.upper(), p.split("^")[0]) for p in self.patterns
        )
        raise Rejected(
            [Finding(text, code="201" if code_known else "200", location="MSH^1^9")], ack_code="AR"
        )
