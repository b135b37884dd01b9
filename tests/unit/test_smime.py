"""S/MIME against an independent implementation: what we sign and encrypt, OpenSSL decrypts and
verifies; what OpenSSL signs and encrypts, we decrypt and verify; every refusal says why."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from engine.connectors.smtp.mail import (
    attachments,
    document_entity,
    enveloped_der,
    enveloped_message,
    parse,
    signed_parts,
)
from engine.connectors.smtp.smime import (
    Identity,
    KeyTransport,
    SmimeError,
    decrypt,
    encrypt,
    sign,
    signer_refs,
    verify,
)
from tests.support.smime_pki import Person, SmimePki, make_smime_pki

CDA_DOC = (
    b'<?xml version="1.0"?>\n<ClinicalDocument xmlns="urn:hl7-org:v3">'
    b'<id root="1.2.3" extension="42"/></ClinicalDocument>\n'
)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SmimePki]:
    yield make_smime_pki(tmp_path_factory.mktemp("smime"))


def identity(person: Person) -> Identity:
    return Identity.load(person.cert, person.key)


def openssl(*args: str | Path, data: bytes = b"") -> bytes:
    done = subprocess.run(
        ["openssl", *map(str, args)], input=data, capture_output=True, timeout=30, check=False
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return done.stdout


def our_mail(pki: SmimePki, transport: KeyTransport) -> bytes:
    entity = document_entity(CDA_DOC, "application/cda+xml", "letter.xml", "See attachment.")
    recipient = x509.load_pem_x509_certificate(pki.gp.cert.read_bytes())
    der = encrypt(sign(entity, identity(pki.platform)), recipient, transport)
    return enveloped_message(der, {"From": pki.platform.email, "To": pki.gp.email, "Subject": "Document"})


def openssl_mail(pki: SmimePki, signer: Person, recipient: Person, *extra: str, entity: bytes = b"") -> bytes:
    entity = entity or document_entity(CDA_DOC, "application/cda+xml", "letter.xml", "See attachment.")
    signed = openssl("cms", "-sign", "-signer", signer.cert, "-inkey", signer.key, *extra, data=entity)
    return openssl(
        "cms",
        "-encrypt",
        "-aes256",
        "-from",
        signer.email,
        "-to",
        recipient.email,
        "-subject",
        "Document",
        recipient.cert,
        data=signed,
    )


@pytest.mark.parametrize("transport", ["pkcs1v15", "oaep"])
def test_our_mail_is_decrypted_and_verified_by_openssl(pki: SmimePki, transport: KeyTransport) -> None:
    mail = our_mail(pki, transport)
    decrypted = openssl("cms", "-decrypt", "-recip", pki.gp.cert, "-inkey", pki.gp.key, data=mail)
    content = openssl("cms", "-verify", "-CAfile", pki.ca, "-purpose", "smimesign", data=decrypted)
    [attachment] = attachments(content)
    assert attachment.data == CDA_DOC and attachment.content_type == "application/cda+xml"
    info = openssl("cms", "-cmsout", "-print", "-inform", "DER", data=enveloped_der(parse(mail))).decode()
    assert "aes-256-cbc" in info and ("rsaesOaep" in info) == (transport == "oaep")


def test_encrypted_mail_headers_carry_no_document(pki: SmimePki) -> None:
    mail = parse(our_mail(pki, "pkcs1v15"))
    assert (
        mail.get_content_type() == "application/pkcs7-mime"
        and mail.get_param("smime-type") == "enveloped-data"
    )
    assert b"ClinicalDocument" not in our_mail(pki, "pkcs1v15")


@pytest.mark.parametrize("extra", [(), ("-nodetach",), ("-keyopt", "rsa_padding_mode:pss")])
def test_openssl_mail_is_decrypted_and_verified(pki: SmimePki, extra: tuple[str, ...]) -> None:
    mail = openssl_mail(pki, pki.gp, pki.platform, *extra)
    content, signature = signed_parts(decrypt(enveloped_der(parse(mail)), identity(pki.platform)))
    gp = x509.load_pem_x509_certificate(pki.gp.cert.read_bytes())
    [ref] = signer_refs(signature)
    assert ref.serial == gp.serial_number and ref.issuer_der == gp.issuer.public_bytes()
    verify(content, signature, gp)
    assert [a.data for a in attachments(content)] == [CDA_DOC]


def test_openssl_oaep_encryption_is_decrypted(pki: SmimePki) -> None:
    entity = document_entity(CDA_DOC, "application/cda+xml", "letter.xml", "See attachment.")
    signed = openssl("cms", "-sign", "-signer", pki.gp.cert, "-inkey", pki.gp.key, data=entity)
    mail = openssl(
        "cms",
        "-encrypt",
        "-aes256",
        "-recip",
        pki.platform.cert,
        "-keyopt",
        "rsa_padding_mode:oaep",
        data=signed,
    )
    content, _ = signed_parts(decrypt(enveloped_der(parse(mail)), identity(pki.platform)))
    assert [a.data for a in attachments(content)] == [CDA_DOC]


def test_content_changed_after_signing_is_refused(pki: SmimePki) -> None:
    entity = document_entity(CDA_DOC, "application/cda+xml", "letter.xml", "See attachment.")
    signed = openssl("cms", "-sign", "-signer", pki.gp.cert, "-inkey", pki.gp.key, data=entity)
    tampered = signed.replace(b"See attachment.", b"See attachment!", 1)
    content, signature = signed_parts(tampered)
    with pytest.raises(SmimeError, match="changed after it was signed"):
        verify(content, signature, x509.load_pem_x509_certificate(pki.gp.cert.read_bytes()))


def test_signature_checked_with_another_certificate_is_refused(pki: SmimePki) -> None:
    signed = openssl(
        "cms",
        "-sign",
        "-signer",
        pki.gp.cert,
        "-inkey",
        pki.gp.key,
        data=b"Content-Type: text/plain\r\n\r\nx",
    )
    content, signature = signed_parts(signed)
    with pytest.raises(SmimeError, match="not signed by the expected certificate"):
        verify(content, signature, x509.load_pem_x509_certificate(pki.intruder.cert.read_bytes()))


def test_mail_for_someone_else_is_refused(pki: SmimePki) -> None:
    mail = openssl_mail(pki, pki.gp, pki.cardiologist)
    with pytest.raises(SmimeError, match="not encrypted for this platform's certificate"):
        decrypt(enveloped_der(parse(mail)), identity(pki.platform))


def test_damaged_ciphertext_is_refused(pki: SmimePki) -> None:
    der = bytearray(enveloped_der(parse(openssl_mail(pki, pki.gp, pki.platform))))
    der[-20] ^= 0xFF
    with pytest.raises(SmimeError, match="cannot be decrypted"):
        decrypt(bytes(der), identity(pki.platform))


def test_unencrypted_and_unsigned_mail_are_refused(pki: SmimePki) -> None:
    with pytest.raises(SmimeError, match="not S/MIME encrypted"):
        enveloped_der(parse(b"From: a@b\r\nContent-Type: text/plain\r\n\r\nhello\r\n"))
    with pytest.raises(SmimeError, match="not signed"):
        signed_parts(b"Content-Type: text/plain\r\n\r\nhello\r\n")
