"""Configuration: `config/engine.yaml` and one YAML file per channel, validated before anything starts.

Every problem is reported as a `file: path: message` line (all of them, not just the first);
unknown keys and unknown component types are errors with a "did you mean" suggestion.
String values may reference `${NAME}` / `${NAME:-default}` (environment) and `${file:PATH}`
(a secret file's content, trailing newline stripped), resolved before validation.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from engine import registry
from engine.contracts import ComponentConfig
from engine.errors import ConfigError

_REFERENCE = re.compile(r"\$\{([^}]*)\}")
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
M = TypeVar("M", bound=BaseModel)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, frozen=True)


class EncryptionConfig(Strict):
    keys: dict[str, str]
    """Key id (1-8 ASCII characters) -> key file (32 random bytes, base64; `passerelle store new-key`).
    Keep old keys listed until `passerelle store reencrypt` has moved every payload to the active one."""
    active: str
    """The key id new payloads are encrypted with."""
    digest_key: str = ""
    """Key file (same format, `passerelle store new-key`) of the digest stored instead of a destination's
    clear `order_by` key. Recommended: it never rotates, so a patient's open deliveries keep their
    order across payload-key rotations. Without it the digest derives from the active key, and
    deliveries created before a rotation are not ordered with those created after it."""


class StoreConfig(Strict):
    type: Literal["sqlite", "postgresql"] = "sqlite"
    """Store backend: `sqlite`, the embedded default (one engine process), or `postgresql`, shared by
    several engine processes and machines (`passerelle run --workers N`, scale-out)."""
    path: str = "var/passerelle.db"
    """SQLite database file, relative to the project root."""
    dsn: str = ""
    """PostgreSQL connection string, e.g. `postgresql://passerelle@db:5432/passerelle` (required with
    `postgresql`; keep the password in a file: `${file:config/secrets/pg-dsn}`)."""
    pool_size: int = Field(default=8, ge=1, le=100)
    """PostgreSQL: most connections per engine process for reads and claims (plus one for writes)."""
    retention_days: int = Field(default=0, ge=0)
    """PostgreSQL: drop a month of messages (its partitions) once it ended this many days ago and all
    its messages are final; 0 keeps everything."""
    lease_seconds: float = Field(default=15.0, ge=1.0, le=3600.0)
    """PostgreSQL: a worker process that stops renewing its lease (it died) loses its unfinished work
    to the other workers after this long."""
    synchronous: Literal["full", "normal"] = "full"
    """SQLite `synchronous` pragma. `full` survives power loss; keep it for clinical data."""
    max_batch: int = Field(default=512, ge=1, le=10_000)
    """Most operations grouped into one commit (group commit bounds)."""
    encryption: EncryptionConfig | None = None
    """Encrypt stored payloads and DSP document blobs (AES-256-GCM); search metadata stays in clear."""
    max_size_mb: int = Field(default=0, ge=0)
    """Quota on the database size (0: none). When reached, intake answers AR/nack: senders keep
    their messages and resend, instead of the disk filling up under the engine. SQLite only."""

    @model_validator(mode="after")
    def _dsn_for_postgresql(self) -> StoreConfig:
        if self.type == "postgresql" and not self.dsn:
            raise ValueError("store type postgresql needs a `dsn`")
        return self


class DashboardConfig(Strict):
    enabled: bool = False
    """Serve the operations dashboard, JSON API, `/metrics` and `/health/*` (engine/dashboard/)."""
    host: str = "127.0.0.1"
    """Listen address."""
    port: int = Field(default=8080, ge=0, le=65535)
    """Listen port (0: any free port, for tests)."""
    users_file: str = "config/users.yaml"
    """Dashboard users with scrypt-hashed passwords, written by `passerelle user add NAME --role ROLE`."""
    session_idle_minutes: float = Field(default=30.0, gt=0)
    """A session unused this long ends (the user logs in again)."""
    session_max_hours: float = Field(default=12.0, gt=0)
    """A session ends this long after login, whatever its use."""
    secure_cookies: Literal["auto", "always", "never"] = "auto"
    """`Secure` cookie flag: `auto` sets it when the request came over HTTPS (directly or via a local
    proxy)."""
    login_attempts: int = Field(default=5, ge=1)
    """Failed logins allowed per user name and per client address within `login_window`; then HTTP 429."""
    login_window: float = Field(default=300.0, gt=0)
    """Seconds over which failed logins are counted."""
    public_metrics: bool = True
    """`/metrics` needs no login (Prometheus scrapes it); it holds counts only, never patient data."""


class AlertRule(Strict):
    """One alert, evaluated every second, shown on the dashboard and exported as a metric."""

    name: str
    """Alert name (dashboard banner and the `alert` label of `passerelle_alert_active`)."""
    kind: Literal["queue_depth", "error_rate", "oldest_age", "channel_down", "reporting_overdue"]
    """`queue_depth`: open deliveries > threshold; `error_rate`: fraction of messages rejected or failed
    for good over `window` > threshold; `oldest_age`: seconds the oldest open delivery waits > threshold;
    `channel_down`: the channel's source is not listening; `reporting_overdue`: notifiable-disease
    reports still undelivered after `timeliness.alert_after_seconds` (config/reporting.yaml) > threshold."""
    channel: str = "*"
    """Channels watched (a glob: `lab-*`)."""
    destination: str = "*"
    """Destinations watched (a glob), for `queue_depth` and `oldest_age`."""
    threshold: float = Field(default=0.0, ge=0)
    """The alert is active above this value."""
    window: float = Field(default=300.0, gt=0, le=3600)
    """Seconds over which `error_rate` is computed."""


class BusConfig(Strict):
    """Between intake and processing (engine/bus/). `none`: each process runs the steps of the
    messages it received (embedded, zero configuration). `amqp`: the ids of `received` messages go
    through RabbitMQ quorum queues, `partitions` per channel, and every worker process consumes
    them (per-key order kept: docs/design-notes.md, "The work bus"). Needs the PostgreSQL store."""

    type: Literal["none", "amqp"] = "none"
    """`none` (embedded) or `amqp` (RabbitMQ work queues shared by every worker process)."""
    url: str = "amqp://guest:guest@127.0.0.1:5672/%2F"
    """Broker URL (`amqps://` for TLS); keep the password in a file: `${file:config/secrets/bus-url}`."""
    partitions: int = Field(default=12, ge=1, le=1024)
    """Work queues per channel. A message goes to the partition of its order key (the first
    destination `order_by`), so one key is processed by one worker at a time, in order. More
    partitions than worker processes spreads the work; 12 divides evenly over 1, 2, 3, 4 and 6."""
    prefetch: int = Field(default=256, ge=1, le=65535)
    """Unacknowledged messages per partition consumer (in-flight bound)."""
    sweep_interval: float = Field(default=5.0, gt=0)
    """Seconds between looks for `received` messages whose publication was not confirmed."""
    sweep_after: float = Field(default=10.0, ge=0)
    """Age (seconds) after which an unconfirmed `received` message is published again by the sweep."""
    operation_timeout: float = Field(default=30.0, gt=0)
    """Seconds a connection, declaration or publisher confirm may take."""

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        """`bus: amqp` is `bus: {type: amqp}` (local broker, default credentials)."""
        return {"type": value} if isinstance(value, str) else value


class LoggingConfig(Strict):
    level: Literal["debug", "info", "warning", "error"] = "info"
    """Lowest level written. Logs never contain patient data at any level."""
    format: Literal["json", "console"] = "json"
    """`json` (one object per line) for machines, `console` for people."""


class EngineConfig(Strict):
    store: StoreConfig = StoreConfig()
    """The durable message store."""
    channels_dir: str = "channels"
    """Folder holding one YAML file per channel."""
    dashboard: DashboardConfig = DashboardConfig()
    """Operations dashboard."""
    alerts: list[AlertRule] = []
    """Alert rules shown on the dashboard and exported as metrics."""
    logging: LoggingConfig = LoggingConfig()
    """Structured logs."""
    shutdown_timeout: float = Field(default=30.0, gt=0)
    """Seconds SIGTERM waits for in-flight work before exiting (unfinished work resumes at start)."""
    reload_interval: float = Field(default=2.0, ge=0)
    """Seconds between checks of the channel files for changes (hot reload); 0 turns it off."""
    event_loop: Literal["asyncio", "uvloop"] = "uvloop"
    """uvloop is about twice as fast on the MLLP hot path (bench/BENCHMARKS.md)."""
    bus: BusConfig = BusConfig()
    """Intake and processing separated by RabbitMQ work queues (`amqp`), or not (`none`)."""

    @model_validator(mode="after")
    def _bus_needs_shared_store(self) -> EngineConfig:
        if self.bus.type == "amqp" and self.store.type != "postgresql":
            raise ValueError("bus: amqp needs the PostgreSQL store (store: {type: postgresql, dsn: ...}): "
                             "the workers consuming the bus read the messages from the shared store")
        return self


class QueueConfig(Strict):
    """The durable queue in front of a destination."""

    max_attempts: int = Field(default=10, ge=1)
    """Attempts before the delivery is dead-lettered."""
    initial_backoff: float = Field(default=1.0, gt=0)
    """Seconds before the first retry."""
    max_backoff: float = Field(default=300.0, gt=0)
    """Upper bound of the wait between retries."""
    backoff_multiplier: float = Field(default=2.0, ge=1)
    """Each retry waits this many times longer than the last."""
    jitter: float = Field(default=0.2, ge=0, le=1)
    """Random fraction added to or removed from each wait, so retries do not stampede."""
    max_age: float = Field(default=86_400.0, gt=0)
    """Seconds after which an undelivered message is dead-lettered whatever the attempt count."""
    order_by: str = ""
    """HL7 path (e.g. `PID-3.1`): messages with the same key are delivered strictly in order."""
    concurrency: int = Field(default=4, ge=1, le=256)
    """Deliveries in flight at once (per key when ordered: one)."""
    max_in_memory: int = Field(default=10_000, ge=10)
    """Queued deliveries kept in memory; beyond this they wait in the store and are reloaded."""


class RouteCondition(Strict):
    """When a destination gets a message, decided from the variables the steps set. All given
    tests must hold. Evaluated once, after the steps; the decision is stored with the message."""

    var_present: str = ""
    """This variable must be set and non-empty (e.g. `notifiable_diseases`)."""
    var_absent: str = ""
    """This variable must not be set (e.g. `dsp_refused`)."""
    var_equals: dict[str, str] = {}
    """These variables must have exactly these values."""

    def holds(self, variables: dict[str, str]) -> bool:
        return (
            (not self.var_present or bool(variables.get(self.var_present)))
            and (not self.var_absent or self.var_absent not in variables)
            and all(variables.get(k) == v for k, v in self.var_equals.items())
        )


class DestinationEntry(Strict):
    name: str
    """Name of this destination within the channel (queues and stats use it)."""
    type: str
    """Destination type (see the reference)."""
    queue: QueueConfig = QueueConfig()
    """Retry, ordering and bounds of this destination's durable queue."""
    when: RouteCondition | None = None
    """Only messages meeting this condition go to this destination (default: every message)."""
    model_config = ConfigDict(extra="allow", frozen=True)


class ChannelFile(Strict):
    """The shape of a channel file; component options are checked against each component's Config."""

    name: str = ""
    """Channel name; defaults to the file name without `.yaml`."""
    description: str = ""
    """What the channel is for, for people reading the dashboard."""
    enabled: bool = True
    """A disabled channel is checked but not started."""
    respond_after: Literal["received", "processed"] = "processed"
    """`processed`: steps run before the ACK, which reports their findings. `received`: ACK once stored."""
    source: dict[str, Any]
    """Where messages come from: `type` plus that source's options."""
    steps: list[dict[str, Any]] = []
    """Steps run in order: each a `type` plus its options."""
    destinations: list[dict[str, Any]] = []
    """Where processed messages go; each has its own durable queue."""
    tests: list[dict[str, Any]] = []
    """Test cases run by `passerelle test` (see docs/channel-tests.md)."""


@dataclass(frozen=True)
class ComponentSpec:
    type: str
    config: ComponentConfig
    when: RouteCondition | None = None


@dataclass(frozen=True)
class DestinationSpec:
    name: str
    type: str
    config: ComponentConfig
    queue: QueueConfig
    when: RouteCondition | None = None


@dataclass(frozen=True)
class ChannelSpec:
    """A validated channel, ready to build."""

    name: str
    file: Path
    version: str
    description: str
    enabled: bool
    respond_after: str
    source: ComponentSpec
    steps: list[ComponentSpec]
    destinations: list[DestinationSpec]
    tests: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Problems:
    """Collects `file: path: message` lines."""

    lines: list[str] = field(default_factory=list)

    def add(self, file: Path | str, path: str, message: str) -> None:
        self.lines.append(f"{file}: {path or '(top)'}: {message}")

    def raise_if_any(self) -> None:
        if self.lines:
            raise ConfigError(self.lines)


# libyaml's scanner and parser when PyYAML was built with it (10x faster on channel files), with
# PyYAML's safe constructor either way: the same documents give the same Python values.
_SafeLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_yaml(file: Path, problems: Problems) -> Any:
    try:
        raw = file.read_bytes()
    except OSError as err:
        problems.add(file, "", f"cannot read: {err.strerror}")
        return None
    return parse_yaml(raw, file, problems)


def parse_yaml(raw: bytes, file: Path, problems: Problems) -> Any:
    """YAML bytes said to come from `file` (the name only labels the problems)."""
    try:
        return yaml.load(raw, Loader=_SafeLoader)  # a safe loader, C or Python
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        # libyaml places "unexpected end of the file" one line past a last line without newline
        last_line = raw.count(b"\n") + (not raw.endswith(b"\n"))
        where = f"line {min(mark.line + 1, max(last_line, 1))}" if mark is not None else ""
        problems.add(file, where, f"invalid YAML: {getattr(err, 'problem', err)}")
    return None


def resolve_references(node: Any, file: Path, path: str, problems: Problems, root: Path) -> Any:
    """Replace `${...}` references in every string of a parsed YAML tree."""
    if isinstance(node, dict):
        return {k: resolve_references(v, file, join(path, str(k)), problems, root) for k, v in node.items()}
    if isinstance(node, list):
        return [resolve_references(v, file, f"{path}[{i}]", problems, root) for i, v in enumerate(node)]
    if isinstance(node, str) and "${" in node:
        return _REFERENCE.sub(lambda m: reference_value(m.group(1), file, path, problems, root), node)
    return node


def reference_value(ref: str, file: Path, path: str, problems: Problems, root: Path) -> str:
    if ref.startswith("file:"):
        secret = Path(ref[5:])
        secret = secret if secret.is_absolute() else root / secret
        try:
            return secret.read_text(encoding="utf-8").rstrip("\n")
        except OSError as err:
            problems.add(file, path, f"secret file {secret} cannot be read: {err.strerror}")
            return ""
    name, has_default, default = ref.partition(":-")
    value = os.environ.get(name)
    if value is None and not has_default:
        problems.add(file, path, f"environment variable {name} is not set (use ${{{name}:-default}})")
    return value if value is not None else default


def join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def format_location(loc: tuple[Any, ...], prefix: str) -> str:
    path = prefix
    for part in loc:
        path = f"{path}[{part}]" if isinstance(part, int) else join(path, str(part))
    return path


def report_validation(
    err: ValidationError, model: type[BaseModel], file: Path, prefix: str, problems: Problems
) -> None:
    """Turn pydantic errors into `file: path: message` lines, with "did you mean" for unknown keys."""
    for item in err.errors():
        loc = tuple(item["loc"])
        message = item["msg"]
        if item["type"] == "extra_forbidden" and loc:
            fields = known_fields(model, loc[:-1])
            message = "unknown option" + registry.suggestion(str(loc[-1]), fields)
        problems.add(file, format_location(loc, prefix), message)


def known_fields(model: type[BaseModel], parents: tuple[Any, ...]) -> list[str]:
    """Field names of the (possibly nested) model at `parents`."""
    current: Any = model
    for part in parents:
        if isinstance(part, int):
            continue
        info = getattr(current, "model_fields", {}).get(part)
        annotation = getattr(info, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return list(getattr(current, "model_fields", {}))
        current = annotation
    return list(getattr(current, "model_fields", {}))


def validate_model(model: type[M], data: Any, file: Path, prefix: str, problems: Problems) -> M | None:
    try:
        return model.model_validate(data)
    except ValidationError as err:
        report_validation(err, model, file, prefix, problems)
        return None


def build_component(
    kind: registry.Kind, data: Any, file: Path, path: str, problems: Problems, drop: tuple[str, ...] = ()
) -> ComponentSpec | None:
    """Validate one `type: ...` mapping against the registered component's Config."""
    if not isinstance(data, dict) or not isinstance(data.get("type"), str):
        problems.add(file, path, f"a {kind} needs a `type`")
        return None
    try:
        model = registry.config_model(kind, data["type"])
    except registry.UnknownComponent as err:
        problems.add(file, join(path, "type"), str(err))
        return None
    options = {k: v for k, v in data.items() if k != "type" and k not in drop}
    config = validate_model(model, options, file, path, problems)
    return ComponentSpec(data["type"], config) if config is not None else None


def load_step(data: Any, file: Path, path: str, problems: Problems) -> ComponentSpec | None:
    """A step, with its optional `when:` condition (the step runs only when it holds)."""
    spec = build_component("step", data, file, path, problems, drop=("when",))
    raw_when = data.get("when") if isinstance(data, dict) else None
    when = validate_model(RouteCondition, raw_when, file, join(path, "when"), problems) if raw_when else None
    return None if spec is None else ComponentSpec(spec.type, spec.config, when)


def load_engine_config(file: Path) -> EngineConfig:
    problems = Problems()
    root = file.parent.parent if file.parent.name == "config" else file.parent
    data = load_yaml(file, problems) or {}
    data = resolve_references(data, file, "", problems, root)
    config = validate_model(EngineConfig, data, file, "", problems)
    problems.raise_if_any()
    assert config is not None
    return config


def load_channel(file: Path, root: Path, problems: Problems) -> ChannelSpec | None:
    try:
        raw = file.read_bytes()
    except OSError as err:
        problems.add(file, "", f"cannot read: {err.strerror}")
        return None
    return parse_channel(raw, file, root, problems)


def parse_channel(raw: bytes, file: Path, root: Path, problems: Problems) -> ChannelSpec | None:
    """A channel from the bytes of `file` (read once by the caller; `file` names it and its tests)."""
    data = resolve_references(parse_yaml(raw, file, problems), file, "", problems, root)
    if data is None:
        if not problems.lines:
            problems.add(file, "", "the file is empty")
        return None
    shell = validate_model(ChannelFile, data, file, "", problems)
    if shell is None:
        return None
    name = shell.name or file.stem
    if not _NAME.match(name):
        problems.add(
            file, "name", f'"{name}" is not a valid channel name (lowercase letters, digits, - and _)'
        )
    source = build_component("source", shell.source, file, "source", problems)
    steps = [load_step(s, file, f"steps[{i}]", problems) for i, s in enumerate(shell.steps)]
    destinations = [
        load_destination(d, file, f"destinations[{i}]", problems) for i, d in enumerate(shell.destinations)
    ]
    check_destination_names(destinations, file, problems)
    tests = load_tests(file, shell.tests, root, problems)
    if source is None or None in steps or None in destinations:
        return None
    return ChannelSpec(
        name=name,
        file=file,
        version=hashlib.sha256(raw).hexdigest()[:16],
        description=shell.description,
        enabled=shell.enabled,
        respond_after=shell.respond_after,
        source=source,
        steps=[s for s in steps if s],
        destinations=[d for d in destinations if d],
        tests=tests,
    )


def load_tests(
    file: Path, inline: list[dict[str, Any]], root: Path, problems: Problems
) -> list[dict[str, Any]]:
    """Test cases from the channel file and its sibling `<name>.tests.yaml`, each validated."""
    from engine.channel_tests import ChannelTest

    cases = [(file, f"tests[{i}]", case) for i, case in enumerate(inline)]
    sibling = file.with_name(f"{file.stem}.tests.yaml")
    if sibling.exists():
        data = resolve_references(load_yaml(sibling, problems), sibling, "", problems, root) or {}
        items = data.get("tests", []) if isinstance(data, dict) else []
        cases += [(sibling, f"tests[{i}]", case) for i, case in enumerate(items)]
    valid = []
    for where, path, case in cases:
        if validate_model(ChannelTest, case, where, path, problems) is not None:
            valid.append(case)
    return valid


def load_destination(data: Any, file: Path, path: str, problems: Problems) -> DestinationSpec | None:
    if not isinstance(data, dict):
        problems.add(file, path, "a destination must be a mapping with `name` and `type`")
        return None
    entry = validate_model(DestinationEntry, data, file, path, problems)
    spec = build_component("destination", data, file, path, problems, drop=("name", "queue", "when"))
    queue = data.get("queue")
    order_by = queue.get("order_by") if isinstance(queue, dict) else None
    if isinstance(order_by, str) and order_by:
        check_hl7_path(order_by, file, join(path, "queue.order_by"), problems)
    if entry is None or spec is None:
        return None
    return DestinationSpec(entry.name, spec.type, spec.config, entry.queue, entry.when)


def check_hl7_path(path: str, file: Path, where: str, problems: Problems) -> None:
    from engine.formats.hl7v2 import parse_path

    try:
        parse_path(path)
    except ValueError as err:
        problems.add(file, where, str(err))


def check_destination_names(
    destinations: list[DestinationSpec | None], file: Path, problems: Problems
) -> None:
    seen: set[str] = set()
    for i, dest in enumerate(destinations):
        if dest is not None and dest.name in seen:
            problems.add(file, f"destinations[{i}].name", f'destination name "{dest.name}" is used twice')
        if dest is not None:
            seen.add(dest.name)


def load_channels(directory: Path, root: Path) -> list[ChannelSpec]:
    """Every `*.yaml` channel in `directory`, all validated; ConfigError lists every problem."""
    problems = Problems()
    if not directory.is_dir():
        problems.add(directory, "", "channels folder does not exist")
        problems.raise_if_any()
    files = sorted(p for p in directory.glob("*.yaml") if not p.name.endswith(".tests.yaml"))
    specs = [spec for f in files if (spec := load_channel(f, root, problems)) is not None]
    check_unique_channels(specs, problems)
    problems.raise_if_any()
    return specs


def check_unique_channels(specs: list[ChannelSpec], problems: Problems) -> None:
    names: dict[str, Path] = {}
    listeners: dict[tuple[str, int], str] = {}
    for spec in specs:
        if spec.name in names:
            problems.add(spec.file, "name", f'channel "{spec.name}" is also defined in {names[spec.name]}')
        names[spec.name] = spec.file
        port = getattr(spec.source.config, "port", None)
        if spec.enabled and isinstance(port, int) and port:
            key = (str(getattr(spec.source.config, "host", "")), port)
            if key in listeners:
                problems.add(
                    spec.file, "source.port", f"port {port} is already used by channel {listeners[key]}"
                )
            listeners[key] = spec.name


@dataclass(frozen=True)
class Project:
    """The engine configuration with its channels, all validated."""

    root: Path
    engine: EngineConfig
    channels: list[ChannelSpec]

    @property
    def store_path(self) -> Path:
        return self.root / self.engine.store.path


def load_project(engine_file: Path) -> Project:
    """Load and validate everything, or raise ConfigError listing every problem."""
    engine_file = engine_file.resolve()
    root = engine_file.parent.parent if engine_file.parent.name == "config" else engine_file.parent
    engine = load_engine_config(engine_file)
    channels = load_channels(root / engine.channels_dir, root)
    return Project(root=root, engine=engine, channels=channels)
