"""TLS settings shared by every connector: server and client contexts, peer identity.

Defaults are strict: TLS 1.2 minimum, certificate verification on for clients, and for
servers with `client_ca` a client certificate is required (mutual TLS) and may further be
restricted to an allow-list of subjects.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Literal

from cryptography import x509
from pydantic import Field

from engine.contracts import BuildContext, ComponentConfig

_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


class TlsServerConfig(ComponentConfig):
    cert: str
    """PEM certificate chain of this listener."""
    key: str
    """PEM private key of `cert` (keep it readable by the engine only)."""
    client_ca: str = ""
    """PEM CA bundle. When set, clients must present a certificate it signed (mutual TLS)."""
    allowed_subjects: list[str] = Field(default_factory=list)
    """With mutual TLS: accepted client subjects, as a full RFC 4514 DN or `CN=...`. Empty: any."""
    min_version: Literal["1.2", "1.3"] = "1.2"
    """Oldest TLS version accepted."""


class TlsClientConfig(ComponentConfig):
    ca: str = ""
    """PEM CA bundle to verify the server with (empty: the system's trust store)."""
    cert: str = ""
    """PEM client certificate for mutual TLS (optional)."""
    key: str = ""
    """PEM private key of `cert`."""
    server_name: str = ""
    """Name expected in the server certificate (default: the host)."""
    min_version: Literal["1.2", "1.3"] = "1.2"
    """Oldest TLS version accepted."""


def server_context(config: TlsServerConfig, context: BuildContext) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = _VERSIONS[config.min_version]
    ctx.load_cert_chain(context.path(config.cert), context.path(config.key))
    if config.client_ca:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(context.path(config.client_ca))
    return ctx


def client_context(config: TlsClientConfig, context: BuildContext) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(context.path(config.ca)) if config.ca else None)
    ctx.minimum_version = _VERSIONS[config.min_version]
    if config.cert:
        ctx.load_cert_chain(context.path(config.cert), context.path(config.key) if config.key else None)
    return ctx


def peer_subject(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> str:
    """The peer certificate's subject as an RFC 4514 string, or '' without one."""
    if ssl_object is None:
        return ""
    der = ssl_object.getpeercert(binary_form=True)
    if not der:
        return ""
    return x509.load_der_x509_certificate(der).subject.rfc4514_string()


def subject_allowed(subject: str, allowed: list[str]) -> bool:
    """True when no allow-list is set, or the subject (or its CN) is on it."""
    if not allowed:
        return True
    cns = {part for part in subject.split(",") if part.startswith("CN=")}
    return subject in allowed or any(cn in allowed for cn in cns)


def check_files(config: TlsServerConfig | TlsClientConfig, context: BuildContext) -> list[str]:
    """Missing PEM files, named, so `passerelle check`-time errors are precise."""
    names = [n for n in ("cert", "key", "client_ca", "ca") if getattr(config, n, "")]
    return [
        f"{n}: file {context.path(getattr(config, n))} does not exist"
        for n in names
        if not Path(context.path(getattr(config, n))).is_file()
    ]
