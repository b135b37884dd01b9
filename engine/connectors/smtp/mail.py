"""MIME for the secure-mail relay: the document entity we sign, the encrypted mail around it,
and the reverse (find the enveloped data, split a signature from its content, list attachments).

Signatures cover canonical MIME (CRLF line ends, RFC 5751 3.1.1): what we sign is produced with
CRLF, and what we verify is canonicalised first, so a relay rewriting line ends breaks nothing.
"""

from __future__ import annotations

import email
import re
from dataclasses import dataclass
from email import policy
from email.message import EmailMessage, Message

from engine.connectors.smtp.smime import SmimeError, embedded_content

PKCS7_MIME = ("application/pkcs7-mime", "application/x-pkcs7-mime")
PKCS7_SIGNATURE = ("application/pkcs7-signature", "application/x-pkcs7-signature")
_EOL = re.compile(rb"\r?\n")


@dataclass(frozen=True)
class Attachment:
    filename: str
    content_type: str
    data: bytes


def canonical(data: bytes) -> bytes:
    return _EOL.sub(b"\r\n", data)


def document_entity(document: bytes, content_type: str, filename: str, body: str) -> bytes:
    """multipart/mixed: a plain-text note (no patient data) and the document as an attachment."""
    entity = EmailMessage(policy=policy.SMTP)
    entity.set_content(body)
    maintype, _, subtype = content_type.partition("/")
    entity.add_attachment(document, maintype=maintype, subtype=subtype or "octet-stream", filename=filename)
    return canonical(entity.as_bytes())


def enveloped_message(der: bytes, headers: dict[str, str]) -> bytes:
    """The mail as sent: `headers`, then the EnvelopedData as application/pkcs7-mime."""
    mail = EmailMessage(policy=policy.SMTP)
    for name, value in headers.items():
        mail[name] = value
    mail.set_content(
        der,
        maintype="application",
        subtype="pkcs7-mime",
        params={"smime-type": "enveloped-data", "name": "smime.p7m"},
        disposition="attachment",
        filename="smime.p7m",
    )
    return mail.as_bytes()


def parse(data: bytes) -> Message:
    return email.message_from_bytes(data, policy=policy.compat32)


def enveloped_der(mail: Message) -> bytes:
    """The DER EnvelopedData of an encrypted mail; refuses anything else with the reason."""
    if mail.get_content_type() not in PKCS7_MIME or mail.get_param("smime-type") == "signed-data":
        raise SmimeError("the message is not S/MIME encrypted (unencrypted mail is refused)")
    payload = mail.get_payload(decode=True)
    if not isinstance(payload, bytes) or not payload:
        raise SmimeError("the message is not S/MIME encrypted (empty or unreadable body)")
    return payload


def signed_parts(entity: bytes) -> tuple[bytes, bytes]:
    """(signed content, DER SignedData) of a `multipart/signed` or opaque signed-data entity."""
    entity = canonical(entity)
    message = parse(entity)
    if message.get_content_type() == "multipart/signed":
        return detached_parts(entity, message)
    der = message.get_payload(decode=True)
    opaque = message.get_content_type() in PKCS7_MIME and message.get_param("smime-type") != "enveloped-data"
    content = embedded_content(der) if opaque and isinstance(der, bytes) else None
    if content is None or not isinstance(der, bytes):
        raise SmimeError("the message is not signed (S/MIME signature required)")
    return canonical(content), der


def detached_parts(entity: bytes, message: Message) -> tuple[bytes, bytes]:
    boundary = message.get_boundary()
    parts = message.get_payload()
    if not boundary or not isinstance(parts, list) or len(parts) != 2:
        raise SmimeError("malformed multipart/signed message")
    if not isinstance(parts[1], Message) or parts[1].get_content_type() not in PKCS7_SIGNATURE:
        raise SmimeError("the message is not signed (no S/MIME signature part)")
    signature = parts[1].get_payload(decode=True)
    body = entity[entity.find(b"\r\n\r\n") + 4 :]
    return first_part(body, boundary.encode("ascii", "replace")), bytes(signature or b"")


def first_part(body: bytes, boundary: bytes) -> bytes:
    """The exact bytes of the first body part: what a multipart/signed signature covers."""
    padded = b"\r\n" + body
    delimiter = b"\r\n--" + boundary
    start = padded.find(delimiter)
    end_of_line = padded.find(b"\r\n", start + len(delimiter)) if start >= 0 else -1
    end = padded.find(delimiter, end_of_line) if end_of_line >= 0 else -1
    if end < 0:
        raise SmimeError("malformed multipart/signed message (boundary not found)")
    return padded[end_of_line + 2 : end]


def attachments(entity: bytes) -> list[Attachment]:
    """Every leaf part that is an attachment (disposition attachment, or a file name)."""
    found = []
    for part in parse(entity).walk():
        filename = part.get_filename() or ""
        if part.is_multipart() or (part.get_content_disposition() != "attachment" and not filename):
            continue
        data = part.get_payload(decode=True)
        found.append(Attachment(filename, part.get_content_type(), data if isinstance(data, bytes) else b""))
    return found
