"""S/MIME (CMS, RFC 5652 / 8551): sign, encrypt, decrypt and verify, for the secure-mail relay.

Every cryptographic operation is done by `cryptography` (hashes, RSA, ECDSA, AES). The CMS
structures are built and read as follows, and why:

- Signing uses cryptography's `PKCS7SignatureBuilder` (SignedData with signed attributes,
  SHA-256, detached: `multipart/signed`, which every mail client verifies).
- Encryption builds the EnvelopedData with asn1crypto: cryptography's `PKCS7EnvelopeBuilder`
  only offers RSA PKCS#1 v1.5 key transport, and recipients whose certificate asks for
  RSA-OAEP need OAEP. One code path serves both; content encryption is AES-256-CBC.
- Decryption reads the EnvelopedData with asn1crypto for the same reason (OAEP), and so that
  each refusal says precisely why (not for us, cannot be decrypted, unsupported algorithm).
- Verification: cryptography has no general PKCS#7 signature verification. We check, with
  asn1crypto for the structure and cryptography for the maths: the content-type attribute,
  the message-digest attribute against the content, and the signature over the DER of the
  signed attributes, with the certificate the *caller* trusts (the provider directory's copy),
  never one taken from the message. Certificate validity and chaining are the directory's job.

Errors are `SmimeError`s whose text can be sent to the peer as is (no content, no PHI).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from asn1crypto import algos, cms, core
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives import padding as sym_padding
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.serialization import pkcs7

from engine.contracts import ComponentConfig
from engine.errors import PasserelleError

KeyTransport = Literal["oaep", "pkcs1v15"]
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
RSAES_OAEP_OID = x509.ObjectIdentifier("1.2.840.113549.1.1.7")
HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha224": hashes.SHA224,
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}
AES_KEY_BYTES = 32  # AES-256


class SmimeError(PasserelleError):
    """A message is not acceptable S/MIME; the text says why and may be sent to the peer."""


class IdentityConfig(ComponentConfig):
    cert: str
    """PEM certificate of the platform's secure-mail identity (signing / decryption)."""
    key: str
    """PEM private key of `cert` (RSA, so it can also decrypt); readable by the engine only."""
    chain: str = ""
    """PEM intermediate CA certificates to include with signatures (optional)."""


@dataclass(frozen=True)
class Identity:
    """A certificate with its private key (and the intermediates to send with signatures)."""

    cert: x509.Certificate
    key: PrivateKey
    chain: tuple[x509.Certificate, ...] = ()

    @classmethod
    def load(cls, cert: Path, key: Path, chain: Path | None = None) -> Identity:
        private = serialization.load_pem_private_key(key.read_bytes(), password=None)
        if not isinstance(private, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
            raise SmimeError(f"{key}: only RSA and EC private keys are supported")
        extra = tuple(x509.load_pem_x509_certificates(chain.read_bytes())) if chain else ()
        return cls(x509.load_pem_x509_certificate(cert.read_bytes()), private, extra)


@dataclass(frozen=True)
class SignerRef:
    """How a SignerInfo names its certificate: issuer (DER) and serial, or a key identifier."""

    issuer_der: bytes = b""
    serial: int | None = None
    key_id: bytes = b""


# -- sign and encrypt ---------------------------------------------------------------------------


def sign(entity: bytes, signer: Identity) -> bytes:
    """`multipart/signed` MIME entity (CRLF line ends) holding `entity` and its detached signature.

    `entity` must already be canonical MIME (CRLF line ends): it is signed byte for byte.
    """
    builder = pkcs7.PKCS7SignatureBuilder().set_data(entity)
    builder = builder.add_signer(signer.cert, signer.key, hashes.SHA256())
    for cert in signer.chain:
        builder = builder.add_certificate(cert)
    options = [pkcs7.PKCS7Options.DetachedSignature, pkcs7.PKCS7Options.Binary]
    return builder.sign(serialization.Encoding.SMIME, options)


def key_transport_for(cert: x509.Certificate, preference: str = "auto") -> KeyTransport:
    """RSA-OAEP when the directory says so or the certificate's key is an RSAES-OAEP key;
    otherwise PKCS#1 v1.5, which every S/MIME client can decrypt."""
    if preference in ("oaep", "pkcs1v15"):
        return "oaep" if preference == "oaep" else "pkcs1v15"
    return "oaep" if cert.public_key_algorithm_oid == RSAES_OAEP_OID else "pkcs1v15"


def encrypt(content: bytes, recipient: x509.Certificate, transport: KeyTransport) -> bytes:
    """DER ContentInfo(EnvelopedData) of `content` for `recipient`, AES-256-CBC."""
    public = recipient.public_key()
    if not isinstance(public, rsa.RSAPublicKey):
        raise SmimeError("the recipient's certificate has no RSA key (RSA key transport is required)")
    key, iv = os.urandom(AES_KEY_BYTES), os.urandom(16)
    padder = sym_padding.PKCS7(128).padder()
    encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    ciphertext = encryptor.update(padder.update(content) + padder.finalize()) + encryptor.finalize()
    info = cms.KeyTransRecipientInfo(
        {
            "version": "v0",
            "rid": cms.RecipientIdentifier(
                name="issuer_and_serial_number", value=issuer_and_serial(recipient)
            ),
            "key_encryption_algorithm": key_encryption_algorithm(transport),
            "encrypted_key": public.encrypt(key, rsa_padding(transport)),
        }
    )
    enveloped = cms.EnvelopedData(
        {
            "version": "v0",
            "recipient_infos": [cms.RecipientInfo(name="ktri", value=info)],
            "encrypted_content_info": {
                "content_type": "data",
                "content_encryption_algorithm": {"algorithm": "aes256_cbc", "parameters": iv},
                "encrypted_content": ciphertext,
            },
        }
    )
    return bytes(cms.ContentInfo({"content_type": "enveloped_data", "content": enveloped}).dump())


def issuer_and_serial(cert: x509.Certificate) -> cms.IssuerAndSerialNumber:
    parsed = asn1_x509.Certificate.load(cert.public_bytes(serialization.Encoding.DER))
    return cms.IssuerAndSerialNumber({"issuer": parsed.issuer, "serial_number": parsed.serial_number})


def key_encryption_algorithm(transport: KeyTransport) -> cms.KeyEncryptionAlgorithm:
    if transport == "pkcs1v15":
        return cms.KeyEncryptionAlgorithm({"algorithm": "rsaes_pkcs1v15", "parameters": core.Null()})
    params = algos.RSAESOAEPParams(
        {
            "hash_algorithm": {"algorithm": "sha256"},
            "mask_gen_algorithm": {"algorithm": "mgf1", "parameters": {"algorithm": "sha256"}},
        }
    )
    return cms.KeyEncryptionAlgorithm({"algorithm": "rsaes_oaep", "parameters": params})


def rsa_padding(transport: KeyTransport, hash_name: str = "sha256") -> padding.AsymmetricPadding:
    if transport == "pkcs1v15":
        return padding.PKCS1v15()
    algorithm = HASHES.get(hash_name, hashes.SHA1)()
    return padding.OAEP(mgf=padding.MGF1(algorithm), algorithm=algorithm, label=None)


# -- decrypt ------------------------------------------------------------------------------------


def decrypt(der: bytes, identity: Identity) -> bytes:
    """The content of a DER ContentInfo(EnvelopedData) encrypted for `identity`."""
    enveloped = load_content_info(der, "enveloped_data", "the message is not S/MIME encrypted")
    info = recipient_info(enveloped, identity.cert)
    if not isinstance(identity.key, rsa.RSAPrivateKey):
        raise SmimeError("the platform's decryption key is not an RSA key")
    try:
        key = identity.key.decrypt(info["encrypted_key"].native, unwrap_padding(info))
        return decrypt_content(enveloped["encrypted_content_info"], key)
    except ValueError as err:
        raise SmimeError("the message cannot be decrypted (damaged, or not encrypted for us)") from err


def load_content_info(der: bytes, expected: str, refusal: str) -> cms.Asn1Value:
    try:
        info = cms.ContentInfo.load(der)
        if info["content_type"].native != expected:
            raise SmimeError(refusal)
        return info["content"]
    except (ValueError, TypeError, KeyError) as err:
        raise SmimeError(f"{refusal} (unreadable CMS structure)") from err


def recipient_info(enveloped: cms.Asn1Value, cert: x509.Certificate) -> cms.Asn1Value:
    wanted = SignerRef(cert.issuer.public_bytes(), cert.serial_number, subject_key_id(cert))
    for info in enveloped["recipient_infos"]:
        if info.name == "ktri" and ref_of(info.chosen["rid"]) in matching_refs(wanted):
            return info.chosen
    raise SmimeError("the message is not encrypted for this platform's certificate")


def unwrap_padding(info: cms.Asn1Value) -> padding.AsymmetricPadding:
    algorithm = info["key_encryption_algorithm"]
    name = algorithm["algorithm"].native
    if name == "rsaes_pkcs1v15":
        return rsa_padding("pkcs1v15")
    if name == "rsaes_oaep":
        params = algorithm["parameters"]
        return rsa_padding("oaep", params["hash_algorithm"]["algorithm"].native)
    raise SmimeError(f"unsupported key transport algorithm {name}")


def decrypt_content(content_info: cms.Asn1Value, key: bytes) -> bytes:
    algorithm = content_info["content_encryption_algorithm"]
    if algorithm.encryption_cipher != "aes" or algorithm.encryption_mode != "cbc":
        raise SmimeError(f"unsupported content encryption {algorithm['algorithm'].native} (AES-CBC expected)")
    if len(key) != algorithm.key_length:
        raise ValueError("content key of the wrong length")
    decryptor = Cipher(algorithms.AES(key), modes.CBC(algorithm.encryption_iv)).decryptor()
    padded = decryptor.update(content_info["encrypted_content"].native or b"") + decryptor.finalize()
    unpadder = sym_padding.PKCS7(128).unpadder()
    return bytes(unpadder.update(padded) + unpadder.finalize())


# -- verify -------------------------------------------------------------------------------------


def signed_data(signature_der: bytes) -> cms.Asn1Value:
    return load_content_info(signature_der, "signed_data", "the signature is not a CMS SignedData")


def embedded_content(signature_der: bytes) -> bytes | None:
    """The content of an opaque (`application/pkcs7-mime; smime-type=signed-data`) signature."""
    content = signed_data(signature_der)["encap_content_info"]["content"]
    return None if content.native is None else bytes(content.native)


def signer_refs(signature_der: bytes) -> list[SignerRef]:
    """Who signed: one reference per SignerInfo, to look up in the provider directory."""
    return [ref_of(info["sid"]) for info in signed_data(signature_der)["signer_infos"]]


def verify(content: bytes, signature_der: bytes, cert: x509.Certificate) -> None:
    """Raise SmimeError unless `cert` signed `content` (the SignerInfo naming `cert` is checked)."""
    wanted = matching_refs(SignerRef(cert.issuer.public_bytes(), cert.serial_number, subject_key_id(cert)))
    for info in signed_data(signature_der)["signer_infos"]:
        if ref_of(info["sid"]) in wanted:
            check_signer_info(info, content, cert)
            return
    raise SmimeError("the message is not signed by the expected certificate")


def check_signer_info(info: cms.Asn1Value, content: bytes, cert: x509.Certificate) -> None:
    hash_name = info["digest_algorithm"]["algorithm"].native
    if hash_name not in HASHES:
        raise SmimeError(f"unsupported signature digest {hash_name}")
    algorithm = HASHES[hash_name]()
    signed = signed_bytes(info, content, algorithm)
    try:
        check_signature(cert, info["signature_algorithm"], info["signature"].native, signed, algorithm)
    except InvalidSignature as err:
        raise SmimeError("the signature is invalid: the message was changed after it was signed") from err


def signed_bytes(info: cms.Asn1Value, content: bytes, algorithm: hashes.HashAlgorithm) -> bytes:
    """What the signature covers: the signed attributes (as a DER SET), else the content itself.

    With attributes, the content is bound by the message-digest attribute, checked here."""
    attributes = info["signed_attrs"]
    if not attributes.native:
        return content
    values = {attr["type"].native: attr["values"][0].native for attr in attributes}
    if values.get("content_type") != "data":
        raise SmimeError("the signature does not cover MIME data (content-type attribute)")
    digest = hashes.Hash(algorithm)
    digest.update(content)
    if values.get("message_digest") != digest.finalize():
        raise SmimeError("the signature is invalid: the message was changed after it was signed")
    return b"\x31" + bytes(attributes.dump())[1:]  # [0] IMPLICIT -> SET OF, as signed (RFC 5652 5.4)


def check_signature(
    cert: x509.Certificate,
    algorithm: cms.Asn1Value,
    signature: bytes,
    data: bytes,
    digest: hashes.HashAlgorithm,
) -> None:
    public = cert.public_key()
    kind = algorithm.signature_algo
    if isinstance(public, rsa.RSAPublicKey) and kind == "rsassa_pkcs1v15":
        public.verify(signature, data, padding.PKCS1v15(), digest)
    elif isinstance(public, rsa.RSAPublicKey) and kind == "rsassa_pss":
        params = algorithm["parameters"]
        mgf = HASHES.get(params["mask_gen_algorithm"]["parameters"]["algorithm"].native, hashes.SHA1)()
        pss = padding.PSS(padding.MGF1(mgf), params["salt_length"].native)
        public.verify(signature, data, pss, digest)
    elif isinstance(public, ec.EllipticCurvePublicKey) and kind == "ecdsa":
        public.verify(signature, data, ec.ECDSA(digest))
    else:
        raise SmimeError(f"unsupported signature algorithm {kind} for the signer's key")


# -- certificate references ---------------------------------------------------------------------


def ref_of(identifier: cms.Asn1Value) -> SignerRef:
    """SignerRef of a SignerIdentifier / RecipientIdentifier (issuer+serial, or key id)."""
    if identifier.name == "issuer_and_serial_number":
        chosen = identifier.chosen
        return SignerRef(bytes(chosen["issuer"].dump()), int(chosen["serial_number"].native))
    return SignerRef(key_id=bytes(identifier.chosen.native))


def subject_key_id(cert: x509.Certificate) -> bytes:
    try:
        return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    except x509.ExtensionNotFound:
        return b""


def matching_refs(ref: SignerRef) -> set[SignerRef]:
    """The references that name this certificate: by issuer and serial, and by key id if any."""
    refs = {SignerRef(ref.issuer_der, ref.serial)}
    return refs | {SignerRef(key_id=ref.key_id)} if ref.key_id else refs
