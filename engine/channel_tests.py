"""`passerelle test`: run a channel's test cases offline.

Each case feeds one input through the channel exactly as its source would (for MLLP, the
same envelope checks and the same ACK rendering), with a throw-away store, and with every
destination replaced by a capture: no network, no side effect. Then it checks the answer
(ACK code, ERR texts), the final status, and what each destination would have received.

Cases live in the channel file under `tests:` or in a sibling `<channel>.tests.yaml`.
"""

from __future__ import annotations

import asyncio
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from engine.config import ChannelSpec, DestinationSpec, Project
from engine.contracts import BuildContext, Intake, Receipt
from engine.message import HL7V2, Message, SourceMeta

FINAL = ("sent", "filtered", "rejected", "errored")
XML_NAMESPACES = {
    "cda": "urn:hl7-org:v3",
    "hl7": "urn:hl7-org:v3",
    "sdtc": "urn:hl7-org:sdtc",
    "xsi": "http://www.w3.org/2001/XMLSchema-instance",
}


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, frozen=True)


class DeliveryExpectation(Strict):
    exact: str | None = None
    """The whole payload, exactly (HL7 segments may be written one per line)."""
    contains: list[str] = Field(default_factory=list)
    """Fragments the payload must contain."""
    hl7: dict[str, str] = Field(default_factory=dict)
    """HL7 path -> expected value, e.g. `PID-3.1: "1980010112302"`."""
    xpath: dict[str, str] = Field(default_factory=dict)
    """XPath (prefixes cda, sdtc, xsi) -> expected string value."""
    golden: str = ""
    """File (relative to the project root) holding the expected payload."""


class Expectation(Strict):
    ack: Literal["AA", "AE", "AR", "CA", "CE", "CR"] | None = None
    """Expected acknowledgement code (MSA-1)."""
    err_contains: list[str] = Field(default_factory=list)
    """Fragments the ACK's error texts must contain."""
    status: Literal["sent", "filtered", "rejected", "errored", "queued", "received"] | None = None
    """Expected final message status."""
    destinations: dict[str, DeliveryExpectation | Literal["none"]] = Field(default_factory=dict)
    """Per destination name: what it receives, or `none` (it receives nothing)."""


class ChannelTest(Strict):
    name: str
    """What the case shows, in words."""
    message: str = ""
    """The input inline (HL7 segments one per line: line ends become carriage returns)."""
    input: str = ""
    """Or a file (relative to the project root) holding the input bytes."""
    encoding: str = "utf-8"
    """Encoding of an inline `message`."""
    peer: str = "test"
    """Source metadata: the peer address."""
    tls_subject: str = ""
    """Source metadata: the client certificate subject."""
    expect: Expectation = Expectation()
    """What must happen."""

    @model_validator(mode="after")
    def _one_input(self) -> ChannelTest:
        if bool(self.message) == bool(self.input):
            raise ValueError("give exactly one of `message` and `input`")
        return self

    def payload(self, root: Path) -> bytes:
        if self.input:
            return (root / self.input).read_bytes()
        text = self.message.strip("\n")
        if text.startswith(("MSH", "FHS", "BHS")):
            text = text.replace("\r\n", "\n").replace("\n", "\r") + "\r"
        return text.encode(self.encoding)


@dataclass
class CaseResult:
    channel: str
    name: str
    failures: list[str] = field(default_factory=list)
    summary: str = ""

    @property
    def passed(self) -> bool:
        return not self.failures


class Capture:
    """Stands in for a destination: records what it would have sent."""

    def __init__(self) -> None:
        self.payloads: list[bytes] = []

    async def send(self, message: Message) -> bytes | None:
        self.payloads.append(message.content())
        return None

    async def close(self) -> None:
        return None


async def run_channel_tests(
    project: Project, spec: ChannelSpec, cases: list[ChannelTest]
) -> list[CaseResult]:
    results = []
    for case in cases:
        with tempfile.TemporaryDirectory(prefix="passerelle-test-") as folder:
            results.append(await run_case(project, spec, case, Path(folder)))
    return results


async def run_case(project: Project, spec: ChannelSpec, case: ChannelTest, folder: Path) -> CaseResult:
    from engine.store.sqlite import SqliteStore

    store = SqliteStore(folder / "test.db", synchronous="normal")
    await store.open()
    captures = {d.name: Capture() for d in spec.destinations}
    channel = build_offline(project, spec, store, captures)
    try:
        await channel.start(open_source=False)
        receipt = await channel.accept(intake(channel.source, case, project.root))
        status = await final_status(store, receipt.message_id)
        return judge(spec.name, case, receipt, status, captures, project.root)
    except Exception as err:  # a broken case is a failed case, with the reason
        return CaseResult(spec.name, case.name, [f"could not run: {type(err).__name__}: {err}"])
    finally:
        await channel.stop(5.0)
        await store.close()


def build_offline(project: Project, spec: ChannelSpec, store: Any, captures: dict[str, Capture]) -> Any:
    from engine import registry
    from engine.channel import Channel, message_loader

    context = BuildContext(project.root, spec.name, {"store": store})
    source = registry.load("source", spec.source.type)(spec.source.config, context)
    steps = [registry.load("step", s.type)(s.config, context) for s in spec.steps]
    queues = [capture_queue(spec, d, captures[d.name], store, message_loader) for d in spec.destinations]
    return Channel(spec, source, steps, queues, store)


def capture_queue(spec: ChannelSpec, dest: DestinationSpec, capture: Capture, store: Any, loader: Any) -> Any:
    from engine.dispatch import DestinationQueue

    return DestinationQueue(spec.name, dest.name, capture, dest.queue, store, loader(store, ""))


def intake(source: Any, case: ChannelTest, root: Path) -> Intake:
    """The Intake the channel's real source would build for this input: the MLLP listener's own
    (envelope checks, ACK rendering), else what the file and queue sources build (content type
    sniffed, HL7 identified by MSH-10, anything else by its content hash)."""
    from engine.formats.hl7v2 import read_header
    from engine.formats.sniff import content_id, hl7_envelope, sniff

    payload = case.payload(root)
    meta = SourceMeta("test", case.peer, case.tls_subject, case.input)
    content_type = sniff(payload[:4096]) or str(getattr(source.config, "fallback_content_type", "")) or HL7V2
    builder = getattr(source, "intake_for", None)
    if content_type == HL7V2 and builder is not None:
        return builder(payload, read_header(payload), meta)  # type: ignore[no-any-return]
    if content_type == HL7V2:
        env = hl7_envelope(payload, str(getattr(source.config, "charset", "")), "test")
        return Intake(payload, meta, HL7V2, env.control_id, env.sender, env.charset, env.problem)
    return Intake(payload, meta, content_type, content_id(payload), "test")


async def final_status(store: Any, message_id: int, timeout: float = 20.0) -> str:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        stored = await store.message(message_id)
        status: str = stored.status if stored else "missing"
        if status in FINAL or asyncio.get_running_loop().time() > deadline:
            return status
        await asyncio.sleep(0.02)


def judge(
    channel: str, case: ChannelTest, receipt: Receipt, status: str, captures: dict[str, Capture], root: Path
) -> CaseResult:
    result = CaseResult(
        channel, case.name, summary=", ".join(x for x in (ack_code(receipt.response), status) if x)
    )
    expect = case.expect
    if expect.ack and ack_code(receipt.response) != expect.ack:
        result.failures.append(f"expected ACK {expect.ack}, got {ack_code(receipt.response) or 'no ACK'}")
    texts = error_texts(receipt)
    for fragment in expect.err_contains:
        if fragment not in texts:
            result.failures.append(f"no error text contains {fragment!r} (errors: {texts or 'none'})")
    if expect.status and status != expect.status:
        result.failures.append(f"expected status {expect.status}, got {status}")
    for name, wanted in expect.destinations.items():
        result.failures += check_destination(name, wanted, captures, root)
    return result


def ack_code(response: bytes | None) -> str:
    if not response or b"MSA" not in response:
        return ""
    from engine.formats.hl7v2 import parse

    return parse(response).get("MSA-1")


def error_texts(receipt: Receipt) -> str:
    return " | ".join(f.text for f in receipt.verdict.findings)


def check_destination(
    name: str, wanted: DeliveryExpectation | str, captures: dict[str, Capture], root: Path
) -> list[str]:
    if name not in captures:
        return [f"the channel has no destination named {name!r} (it has: {', '.join(captures)})"]
    payloads = captures[name].payloads
    if wanted == "none":
        return [f"{name}: expected nothing, received {len(payloads)} message(s)"] if payloads else []
    assert isinstance(wanted, DeliveryExpectation)
    if len(payloads) != 1:
        return [f"{name}: expected one message, received {len(payloads)}"]
    return payload_failures(name, payloads[0], wanted, root)


def payload_failures(name: str, payload: bytes, wanted: DeliveryExpectation, root: Path) -> list[str]:
    failures = []
    text = payload.decode("utf-8", errors="replace")
    if wanted.exact is not None and normalise(wanted.exact) != normalise(text):
        failures.append(f"{name}: payload differs from the expected one")
    if wanted.golden and (root / wanted.golden).read_bytes() != payload:
        failures.append(f"{name}: payload differs from the golden file {wanted.golden}")
    failures += [f"{name}: payload does not contain {c!r}" for c in wanted.contains if c not in text]
    failures += hl7_failures(name, payload, wanted.hl7) + xpath_failures(name, payload, wanted.xpath)
    return failures


def normalise(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n").strip("\n")


def hl7_failures(name: str, payload: bytes, paths: dict[str, str]) -> list[str]:
    if not paths:
        return []
    from engine.errors import ParseError
    from engine.formats.hl7v2 import parse

    try:
        message = parse(payload)
    except ParseError as err:
        return [f"{name}: the payload is not HL7 v2 ({err})"]
    return [
        f"{name}: {path} is {message.get(path)!r}, expected {value!r}"
        for path, value in paths.items()
        if message.get(path) != value
    ]


def xpath_failures(name: str, payload: bytes, paths: dict[str, str]) -> list[str]:
    if not paths:
        return []
    from engine.errors import ParseError
    from engine.formats.cda import parse_xml

    try:
        tree = parse_xml(payload)
    except ParseError as err:
        return [f"{name}: the payload is not XML ({err})"]
    failures = []
    for path, value in paths.items():
        found = tree.xpath(f"string({path})", namespaces=XML_NAMESPACES)
        if found != value:
            failures.append(f"{name}: {path} is {found!r}, expected {value!r}")
    return failures


def load_cases(spec: ChannelSpec) -> list[ChannelTest]:
    """The channel's cases (already validated by `passerelle check`)."""
    return [ChannelTest.model_validate(item) for item in spec.tests]


def format_results(results: list[CaseResult]) -> str:
    lines = []
    for r in results:
        mark = "PASS" if r.passed else "FAIL"
        lines.append(
            f"{mark} {r.channel}: {r.name} ({r.summary})" if r.summary else f"{mark} {r.channel}: {r.name}"
        )
        lines += [f"     - {failure}" for failure in r.failures]
    failed = sum(not r.passed for r in results)
    lines.append(f"{len(results) - failed} passed, {failed} failed")
    return "\n".join(lines)
