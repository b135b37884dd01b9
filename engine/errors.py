"""The one small error hierarchy of the engine.

Every error the engine raises on purpose derives from `PasserelleError`. Wrap lower-level
errors with context (`raise RetryableError("sending to lab-a") from err`); never swallow one.
"""

from __future__ import annotations

from dataclasses import dataclass, field


class PasserelleError(Exception):
    """Base of every error the engine raises on purpose."""


class ConfigError(PasserelleError):
    """Configuration is invalid; `problems` holds one `file: path: message` line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class StoreError(PasserelleError):
    """The message store could not commit; nothing of the failed batch is stored."""


class FrameError(PasserelleError):
    """A transport frame is malformed or too large (e.g. MLLP)."""


class ParseError(PasserelleError):
    """The payload cannot be parsed (no MSH, undecodable bytes, malformed XML...)."""


class DeliveryError(PasserelleError):
    """A destination failed to deliver. Subclasses tell the queue what to do next."""


class RetryableError(DeliveryError):
    """The peer did not take the message now; retry later with backoff (timeouts, AR, 4xx)."""


class PermanentError(DeliveryError):
    """The peer will never take this message as it is; dead-letter it (AE, 5xx, bad data)."""


@dataclass(frozen=True)
class Finding:
    """One problem found in a message, reported to the sender and stored with the message.

    `code` is an HL7 table 0357 code ("101") or a rule id ("lab-pid-1"); `location` is an
    HL7 location (`PID^1^3^1`) or an XPath; `severity` is E (error), W (warning), I (info).
    """

    text: str
    code: str = "207"
    location: str = ""
    severity: str = "E"


class StepOutcome(PasserelleError):
    """Raised by a step to end a message's processing early, with a reason."""


class Filtered(StepOutcome):
    """The channel does not want this message: outcome `filtered`, accepted (AA)."""


@dataclass
class Rejected(StepOutcome):
    """The message is wrong and will not be processed: outcome `rejected`.

    `ack_code` is what an HL7 sender hears: AE (fix and resend) for content errors,
    AR (refused: unsupported type/version, or could not be taken) otherwise.
    """

    findings: list[Finding] = field(default_factory=list)
    ack_code: str = "AE"

    def __post_init__(self) -> None:
        super().__init__("; ".join(f.text for f in self.findings) or "rejected")
