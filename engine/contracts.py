"""The plug-in contracts: what a source, a step and a destination promise.

Each component is one file holding, at module level, a pydantic `Config` (extra keys
forbidden, a docstring per field), an `EXAMPLE` dict (tested), and the class, built as
`Class(config, context)`. The registry finds the file by its YAML `type`.

Source: `start(deliver)` begins receiving; for every message it calls `await deliver(intake)`
and answers its peer only after that returns (the store has committed). If `deliver` raises
`StoreError`, the source answers with its protocol's negative answer (MLLP AR/CR, AMQP
nack-requeue, SFTP leaves the file). `stop()` stops accepting, lets in-flight work finish.

Step: `__call__(message) -> message`, synchronous and free of I/O; raises `Filtered` or
`Rejected` (engine.errors) to end processing with that outcome.

Destination: `send(message)` returns only once the peer accepted the message (returning the
peer's response bytes, if any), or raises `RetryableError` / `PermanentError`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict

from engine.errors import Finding
from engine.message import Message, SourceMeta


class ComponentConfig(BaseModel):
    """Base of every component's Config: unknown keys are errors, never ignored."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, frozen=True)


@dataclass(frozen=True)
class Verdict:
    """What the engine decided about a message at intake.

    `code` uses HL7's original-mode vocabulary for every protocol: AA accepted, AE content
    error (fix and resend), AR refused (unsupported, or could not be taken: retry unchanged).
    `status` is the stored message status after intake.
    """

    code: str
    status: str
    findings: tuple[Finding, ...] = ()

    @property
    def accepted(self) -> bool:
        return self.code == "AA"


@dataclass
class Intake:
    """What a source hands to `deliver`: the bytes, where they came from, and how to answer.

    `control_id` and `sender` identify the message for de-duplication (empty: none).
    `problem` is set when the source could not even read the envelope: the message is stored
    as rejected with that finding. `respond(verdict)` renders the protocol's answer, which is
    stored with the message in the same commit.
    """

    raw: bytes
    meta: SourceMeta
    content_type: str
    control_id: str = ""
    sender: str = ""
    charset: str = ""
    problem: Finding | None = None
    respond: Callable[[Verdict], bytes] | None = None


@dataclass
class Receipt:
    """What `deliver` returns once the message is durably stored (or known as a duplicate).

    `processed` resolves with the verdict after the channel's steps ran; with
    `respond_after: processed` it is already resolved when `deliver` returns.
    """

    message_id: int
    verdict: Verdict
    response: bytes | None
    duplicate: bool = False
    processed: Awaitable[Verdict] | None = field(default=None, repr=False)


Deliver = Callable[[Intake], Awaitable[Receipt]]


@dataclass(frozen=True)
class BuildContext:
    """What a component may know when it is built: where config files live, whose it is."""

    root: Path
    channel: str
    services: dict[str, Any] = field(default_factory=dict)

    def path(self, value: str | Path) -> Path:
        """Resolve a path from configuration relative to the project root."""
        p = Path(value)
        return p if p.is_absolute() else self.root / p


@runtime_checkable
class Source(Protocol):
    async def start(self, deliver: Deliver) -> None: ...

    async def stop(self) -> None: ...


@runtime_checkable
class Step(Protocol):
    def __call__(self, message: Message) -> Message: ...


@runtime_checkable
class Destination(Protocol):
    async def send(self, message: Message) -> bytes | None: ...

    async def close(self) -> None: ...
