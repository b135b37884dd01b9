"""The provider directory: which professionals exist, their secure-mail address and certificate.

Loaded from YAML (`providers: [...]`) or CSV (one row per provider, same column names), named
in `config/directory.yaml`. It is reloaded when the file (or the CA bundle) changes: at most
every `check_interval` seconds a lookup stats the files, and a changed file is read again.
A reload that fails keeps the previous directory (and logs why), so a half-written file never
empties the directory; the first load failing is a configuration error (the engine won't start).

A provider whose certificate file is missing or unreadable stays listed, with the problem
noted: sending to them fails for good, mail signed by them is refused, each with the reason.
"""

from __future__ import annotations

import csv
import datetime
import io
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import structlog
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from engine.contracts import BuildContext
from engine.errors import ConfigError

log = structlog.get_logger("passerelle.directory")

SETTINGS_FILE = "config/directory.yaml"
MAX_CHAIN = 6


class Settings(BaseModel):
    """config/directory.yaml: where the directory is and whom it trusts."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, frozen=True)

    file: str = "config/providers.yaml"
    """The directory: YAML (`providers:` list) or CSV (header row), relative to the project root."""
    ca: str = ""
    """PEM bundle of the CAs that issue professionals' certificates (roots and intermediates).
    Empty: certificates are only pinned by the directory, not checked against a CA (not for production)."""
    check_interval: float = Field(default=2.0, ge=0)
    """Seconds between checks of the files' modification times (0: at every lookup)."""


class ProviderRecord(BaseModel):
    """One provider as written in the directory file."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, frozen=True)

    ehealth_id: str = Field(min_length=1)
    """The professional's national eHealth identifier."""
    name: str
    """Display name."""
    profession: str = ""
    """Profession (e.g. general_practitioner)."""
    email: str = Field(pattern=r"^[^@\s]+@[^@\s]+$")
    """Secure-mail address."""
    certificate: str = ""
    """PEM path of the professional's S/MIME certificate, relative to the project root."""
    key_transport: Literal["auto", "oaep", "pkcs1v15"] = "auto"
    """How to encrypt the content key for them: auto follows the certificate (RSA-OAEP key or not)."""


@dataclass(frozen=True)
class Provider:
    ehealth_id: str
    name: str
    profession: str
    email: str
    certificate: x509.Certificate | None
    certificate_problem: str  # why `certificate` is None, or ""
    key_transport: str


@dataclass(frozen=True)
class Snapshot:
    by_id: dict[str, Provider]
    by_email: dict[str, Provider]
    by_serial: dict[int, list[Provider]]
    by_key_id: dict[bytes, Provider]
    cas: tuple[x509.Certificate, ...]


class Directory:
    def __init__(self, settings: Settings, root: Path, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.root = root
        self.file = self._path(settings.file)
        self.ca_file = self._path(settings.ca) if settings.ca else None
        self._clock = clock
        self._lock = threading.Lock()
        self._stamp = self._stamps()
        self._snapshot = load_snapshot(self.file, self.ca_file, root)
        self._checked = clock()

    def _path(self, value: str) -> Path:
        return Path(value) if Path(value).is_absolute() else self.root / value

    # -- lookups ---------------------------------------------------------------------------------

    def get(self, ehealth_id: str) -> Provider | None:
        return self.snapshot().by_id.get(ehealth_id)

    def by_email(self, address: str) -> Provider | None:
        return self.snapshot().by_email.get(address.strip().lower())

    def by_signer(self, issuer_der: bytes, serial: int | None, key_id: bytes = b"") -> Provider | None:
        """The provider whose certificate a CMS signer/recipient reference names."""
        snap = self.snapshot()
        if key_id:
            return snap.by_key_id.get(key_id)
        for provider in snap.by_serial.get(serial, []) if serial is not None else []:
            if provider.certificate is not None and provider.certificate.issuer.public_bytes() == issuer_der:
                return provider
        return None

    def __len__(self) -> int:
        return len(self.snapshot().by_id)

    def certificate_problem(self, provider: Provider, at: datetime.datetime | None = None) -> str:
        """Why `provider`'s certificate cannot be used now ("" when it can)."""
        if provider.certificate is None:
            return provider.certificate_problem or "is missing from the directory"
        now = at or datetime.datetime.now(datetime.UTC)
        problem = validity_problem(provider.certificate, now)
        cas = self.snapshot().cas
        if problem or self.ca_file is None:
            return problem
        return chain_problem(provider.certificate, cas, now)

    # -- reload on change ------------------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        if self._clock() - self._checked >= self.settings.check_interval:
            self.refresh()
        return self._snapshot

    def refresh(self) -> None:
        """Reload if a file changed; on failure keep the previous directory."""
        with self._lock:
            self._checked = self._clock()
            stamp = self._stamps()
            if stamp == self._stamp:
                return
            try:
                self._snapshot = load_snapshot(self.file, self.ca_file, self.root)
            except ConfigError as err:
                log.warning("directory_reload_failed", file=str(self.file), problems=err.problems)
            else:
                log.info("directory_reloaded", file=str(self.file), providers=len(self._snapshot.by_id))
            self._stamp = stamp

    def _stamps(self) -> tuple[tuple[int, int], ...]:
        return tuple(file_stamp(p) for p in (self.file, self.ca_file) if p is not None)


def file_stamp(path: Path) -> tuple[int, int]:
    try:
        stat = path.stat()
    except OSError:
        return (-1, -1)
    return (stat.st_mtime_ns, stat.st_size)


# -- loading -------------------------------------------------------------------------------------


def load_snapshot(file: Path, ca_file: Path | None, root: Path) -> Snapshot:
    providers = [provider(r, root) for r in read_records(file)]
    problems = duplicates(providers, file)
    if problems:
        raise ConfigError(problems)
    return Snapshot(
        by_id={p.ehealth_id: p for p in providers},
        by_email={p.email.lower(): p for p in providers},
        by_serial=by_serial(providers),
        by_key_id={k: p for p in providers if (k := key_id(p.certificate))},
        cas=load_cas(ca_file),
    )


def read_records(file: Path) -> list[ProviderRecord]:
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError([f"{file}: cannot read the provider directory: {err}"]) from err
    rows = csv_rows(text) if file.suffix.lower() == ".csv" else yaml_rows(text, file)
    records, problems = [], []
    for index, row in enumerate(rows):
        try:
            records.append(ProviderRecord.model_validate(row))
        except ValidationError as err:
            problems += [
                f"{file}: providers[{index}].{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors()
            ]
    if problems:
        raise ConfigError(problems)
    return records


def csv_rows(text: str) -> list[dict[str, Any]]:
    reader = csv.DictReader(io.StringIO(text))
    return [
        {k.strip(): (v or "").strip() for k, v in row.items() if k and (v or "").strip()} for row in reader
    ]


def yaml_rows(text: str, file: Path) -> list[Any]:
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise ConfigError([f"{file}: invalid YAML: {err}"]) from err
    rows = data.get("providers") if isinstance(data, dict) else None
    if not isinstance(rows, list):
        raise ConfigError([f"{file}: providers: a list of providers is required"])
    return rows


def provider(record: ProviderRecord, root: Path) -> Provider:
    cert, problem = load_certificate(record.certificate, root)
    return Provider(
        record.ehealth_id, record.name, record.profession, record.email, cert, problem, record.key_transport
    )


def load_certificate(value: str, root: Path) -> tuple[x509.Certificate | None, str]:
    if not value:
        return None, "is not in the directory (no certificate registered)"
    path = Path(value) if Path(value).is_absolute() else root / value
    try:
        return x509.load_pem_x509_certificate(path.read_bytes()), ""
    except OSError:
        return None, f"file {value} cannot be read"
    except ValueError:
        return None, f"file {value} is not a PEM certificate"


def load_cas(ca_file: Path | None) -> tuple[x509.Certificate, ...]:
    if ca_file is None:
        return ()
    try:
        return tuple(x509.load_pem_x509_certificates(ca_file.read_bytes()))
    except (OSError, ValueError) as err:
        raise ConfigError([f"{ca_file}: cannot read the CA bundle: {err}"]) from err


def duplicates(providers: list[Provider], file: Path) -> list[str]:
    problems, ids, emails = [], set(), set()
    for p in providers:
        if p.ehealth_id in ids:
            problems.append(f"{file}: eHealth ID {p.ehealth_id} is listed twice")
        if p.email.lower() in emails:
            problems.append(f"{file}: e-mail address of {p.ehealth_id} is already used by another provider")
        ids.add(p.ehealth_id)
        emails.add(p.email.lower())
    return problems


def by_serial(providers: list[Provider]) -> dict[int, list[Provider]]:
    index: dict[int, list[Provider]] = {}
    for p in providers:
        if p.certificate is not None:
            index.setdefault(p.certificate.serial_number, []).append(p)
    return index


def key_id(cert: x509.Certificate | None) -> bytes:
    if cert is None:
        return b""
    try:
        return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    except x509.ExtensionNotFound:
        return b""


# -- certificate checks --------------------------------------------------------------------------


def validity_problem(cert: x509.Certificate, now: datetime.datetime) -> str:
    if now < cert.not_valid_before_utc:
        return f"is not valid before {cert.not_valid_before_utc:%Y-%m-%d}"
    if now > cert.not_valid_after_utc:
        return f"expired on {cert.not_valid_after_utc:%Y-%m-%d}"
    return ""


def chain_problem(cert: x509.Certificate, cas: tuple[x509.Certificate, ...], now: datetime.datetime) -> str:
    """ "" when `cert` chains to a certificate of the CA bundle, every link valid now.

    Each step must be a CA certificate (basicConstraints cA) whose key signed the previous one;
    a bundle certificate ends the chain (the bundle is the trust anchor list)."""
    current = cert
    for _ in range(MAX_CHAIN):
        if fingerprint(current) in {fingerprint(ca) for ca in cas}:
            return ""
        issuer = next((ca for ca in cas if issued_by(current, ca)), None)
        if issuer is None:
            return "is not issued by a CA the provider directory trusts"
        problem = validity_problem(issuer, now)
        if problem:
            return f"has an issuing CA certificate that {problem}"
        if issuer.subject == issuer.issuer:
            return ""
        current = issuer
    return "has a certificate chain that is too long"


def issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    if cert.issuer != ca.subject or not is_ca(ca):
        return False
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, Exception):  # InvalidSignature, unsupported key types
        return False
    return True


def is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def fingerprint(cert: x509.Certificate) -> bytes:
    return cert.fingerprint(hashes.SHA256())


# -- the engine's shared instance ----------------------------------------------------------------


def load_settings(file: Path) -> Settings:
    if not file.is_file():
        return Settings()
    try:
        return Settings.model_validate(yaml.safe_load(file.read_text(encoding="utf-8")) or {})
    except (ValidationError, yaml.YAMLError) as err:
        raise ConfigError([f"{file}: {err}"]) from err


def directory_from(context: BuildContext) -> Directory:
    """The engine's provider directory (one per engine, cached in `context.services`)."""
    existing = context.services.get("directory")
    if isinstance(existing, Directory):
        return existing
    directory = Directory(load_settings(context.path(SETTINGS_FILE)), context.root)
    context.services["directory"] = directory
    return directory
