"""A throw-away S/MIME PKI and provider directory for the secure-mail tests.

Under `root`: `smime/` holds a health CA, the platform's identity and professionals' RSA
certificates (with their e-mail in the SAN, as mail clients expect); `config/directory.yaml`
and `config/providers.yaml` describe the directory. TLS certificates for STARTTLS come from
`tests.support.pki` under `tls/`.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.support.pki import Pki, make_pki

Key = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
PLATFORM_EMAIL = "relay@secure.passerelle.test"
PLATFORM_DOMAIN = "secure.passerelle.test"


@dataclass(frozen=True)
class Person:
    ehealth_id: str
    email: str
    cert: Path
    key: Path


@dataclass(frozen=True)
class SmimePki:
    root: Path
    tls: Pki
    ca: Path
    platform: Person
    gp: Person  # general practitioner, PKCS#1 v1.5 key transport
    cardiologist: Person  # asks for RSA-OAEP in the directory
    expired: Person  # in the directory, certificate expired
    untrusted: Person  # in the directory, certificate from a CA the directory does not trust
    intruder: Person  # certificate from the trusted CA, not in the directory
    no_cert: Person  # in the directory without a certificate
    providers: Path


def name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Passerelle tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def ca_cert(cn: str, key: Key) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name(cn))
        .issuer_name(name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )


def person_cert(
    cn: str, email: str, key: Key, issuer: x509.Certificate, issuer_key: Key, expired: bool = False
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    start = now - datetime.timedelta(days=400 if expired else 1)
    end = now - datetime.timedelta(days=2) if expired else now + datetime.timedelta(days=30)
    return (
        x509.CertificateBuilder()
        .subject_name(name(cn))
        .issuer_name(issuer.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, True, False, False, False, False, False, False), critical=True
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
        .add_extension(x509.SubjectAlternativeName([x509.RFC822Name(email)]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(issuer_key, hashes.SHA256())
    )


def write(folder: Path, stem: str, cert: x509.Certificate, key: Key) -> tuple[Path, Path]:
    cert_path, key_path = folder / f"{stem}.pem", folder / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def make_smime_pki(root: Path) -> SmimePki:
    folder = root / "smime"
    folder.mkdir(parents=True, exist_ok=True)
    ca_key, other_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca, other = ca_cert("Test Health CA", ca_key), ca_cert("Other CA", other_key)
    ca_path, _ = write(folder, "ca", ca, ca_key)

    def person(
        stem: str,
        ehealth_id: str,
        email: str,
        issuer: x509.Certificate = ca,
        issuer_key: Key = ca_key,
        expired: bool = False,
    ) -> Person:
        key = rsa_key()
        cert = person_cert(f"{stem} {ehealth_id}", email, key, issuer, issuer_key, expired)
        return Person(ehealth_id, email, *write(folder, stem, cert, key))

    pki = SmimePki(
        root=root,
        tls=make_pki(root / "tls"),
        ca=ca_path,
        platform=person("platform", "", PLATFORM_EMAIL),
        gp=person("gp", "GP0001", "gp@practice.test"),
        cardiologist=person("cardiologist", "SP0002", "cardio@hospital.test"),
        expired=person("expired", "GP0003", "old@practice.test", expired=True),
        untrusted=person("untrusted", "GP0004", "elsewhere@practice.test", other, other_key),
        intruder=person("intruder", "GP0005", "intruder@practice.test"),
        no_cert=Person("GP0006", "nocert@practice.test", folder / "missing.pem", folder / "missing.key"),
        providers=root / "config" / "providers.yaml",
    )
    write_directory(pki)
    return pki


def write_directory(pki: SmimePki) -> None:
    config = pki.root / "config"
    config.mkdir(parents=True, exist_ok=True)
    (config / "directory.yaml").write_text(
        f"file: config/providers.yaml\nca: {pki.ca.relative_to(pki.root)}\ncheck_interval: 0\n"
    )
    entries = [
        (pki.gp, "general_practitioner", "auto"),
        (pki.cardiologist, "cardiologist", "oaep"),
        (pki.expired, "general_practitioner", "auto"),
        (pki.untrusted, "general_practitioner", "auto"),
    ]
    lines = ["providers:"]
    for person, profession, transport in entries:
        lines += [
            f"  - ehealth_id: {person.ehealth_id}",
            f"    name: Dr {person.ehealth_id}",
            f"    profession: {profession}",
            f"    email: {person.email}",
            f"    certificate: {person.cert.relative_to(pki.root)}",
            f"    key_transport: {transport}",
        ]
    lines += [
        f"  - ehealth_id: {pki.no_cert.ehealth_id}",
        "    name: Dr Nocert",
        f"    email: {pki.no_cert.email}",
    ]
    pki.providers.write_text("\n".join(lines) + "\n")
