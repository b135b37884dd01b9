"""Encryption at rest of stored payloads (AES-256-GCM, `cryptography`).

What is encrypted: every payload the store keeps (raw message, transformed content, the
answers sent and received). What stays in clear: the metadata the engine and operators search
and count on (channel, status, control id, sender application, times); none of it is patient
data. A copied database file (or its WAL) therefore reveals no names, birth dates or ids.
A destination's order key (e.g. a national id) is stored as a keyed digest instead
(`order_digest`, secret from `store.encryption.digest_key`; docs/design-notes.md says why).

Format of an encrypted value: MAGIC | key id (8 bytes) | nonce (12 bytes) | ciphertext+tag.
The column name is the associated data, so a payload cannot be moved to another column.
Values without MAGIC are plaintext (rows stored before encryption was enabled) and are read
as they are; `passerelle store reencrypt` rewrites them, and rows under old keys, with the
active key while the engine runs (key rotation without downtime).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from engine.errors import ConfigError, StoreError

MAGIC = b"PSE1"
KEY_ID_BYTES = 8
NONCE_BYTES = 12
HEADER_BYTES = len(MAGIC) + KEY_ID_BYTES + NONCE_BYTES
TAG_BYTES = 16
NAME_KEY_LABEL = b"passerelle keyed names v1"  # domain separation: name keys never equal data keys
ORDER_DIGEST_INFO = b"passerelle order-key digest"  # HKDF info: the order-key secret is no data key
ORDER_DIGEST_BYTES = 16  # 128 bits: collisions (two patients sharing an order) are out of reach


def new_key_file(path: Path) -> None:
    """Write a fresh random 256-bit key, base64, readable by the owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(base64.b64encode(AESGCM.generate_key(bit_length=256)).decode() + "\n")


def read_key(path: Path) -> bytes:
    try:
        key = base64.b64decode(path.read_text(encoding="ascii").strip(), validate=True)
    except (OSError, ValueError) as err:
        raise ConfigError([f"{path}: cannot read the store encryption key: {err}"]) from err
    if len(key) != 32:
        raise ConfigError([f"{path}: the store encryption key must be 32 bytes (base64), not {len(key)}"])
    return key


def key_id_bytes(key_id: str) -> bytes:
    raw = key_id.encode("ascii")
    if not raw or len(raw) > KEY_ID_BYTES:
        raise ConfigError(
            [f"store encryption key id {key_id!r} must be 1 to {KEY_ID_BYTES} ASCII characters"]
        )
    return raw.ljust(KEY_ID_BYTES, b"\0")


@dataclass
class PayloadCipher:
    """Encrypts with the active key; decrypts with whichever known key a value names."""

    keys: dict[bytes, AESGCM]
    active: bytes
    name_keys: dict[bytes, bytes] = field(default_factory=dict)
    """Per key id, an HMAC key derived from it for keyed names (`keyed_name`), never the key itself."""
    order_secret: bytes = b""
    """The HMAC key of `order_digest`: the `digest_key` file's key, else derived from the active key."""
    digest_secrets: tuple[bytes, ...] = ()
    """Every secret a stored digest may have been made with: `order_secret` first, then the one
    derived from each configured key (digests made before a rotation or before `digest_key`)."""

    @classmethod
    def from_files(cls, keys: dict[str, Path], active: str, digest_key: Path | None = None) -> PayloadCipher:
        if active not in keys:
            raise ConfigError([f"the active store encryption key {active!r} is not among the keys"])
        raw = {key_id_bytes(k): read_key(p) for k, p in keys.items()}
        current = order_secret(read_key(digest_key) if digest_key else raw[key_id_bytes(active)])
        derived = [order_secret(v) for v in raw.values()]
        return cls(
            {k: AESGCM(v) for k, v in raw.items()},
            key_id_bytes(active),
            {k: hmac.new(v, NAME_KEY_LABEL, hashlib.sha256).digest() for k, v in raw.items()},
            current,
            tuple(dict.fromkeys([current, *derived])),
        )

    def order_digest(self, clear: str) -> str:
        """What is stored and compared instead of a destination's clear order key (e.g. a national
        id): HMAC-SHA256 under `order_secret`, 128 bits, hex. Equal keys give equal digests, so
        per-key ordering holds; the database reveals nothing of the key. Empty stays empty (no order)."""
        if not clear:
            return ""
        return keyed_digest(self.order_secret, clear.encode("utf-8", "surrogateescape"))

    def key_ids(self) -> list[bytes]:
        """The known key ids, the active one first."""
        return [self.active, *(k for k in self.keys if k != self.active)]

    def keyed_name(self, value: bytes, key_id: bytes) -> str:
        """HMAC-SHA256 of `value` under key `key_id`'s name key, hex: a name that reveals nothing
        about `value` to whoever lacks the key (no confirmation of a guessed value)."""
        return hmac.new(self.name_keys[key_id], value, hashlib.sha256).hexdigest()

    def sealed_by(self, data: bytes) -> bytes | None:
        """The key id an encrypted value names, None for plaintext."""
        return data[len(MAGIC) : len(MAGIC) + KEY_ID_BYTES] if data.startswith(MAGIC) else None

    def encrypt(self, data: bytes | None, column: str) -> bytes | None:
        if data is None:
            return None
        nonce = os.urandom(NONCE_BYTES)
        sealed = self.keys[self.active].encrypt(nonce, data, column.encode())
        return MAGIC + self.active + nonce + sealed

    def decrypt(self, data: bytes | None, column: str) -> bytes | None:
        if data is None or not data.startswith(MAGIC):
            return data  # stored before encryption was enabled
        key_id = data[len(MAGIC) : len(MAGIC) + KEY_ID_BYTES]
        aead = self.keys.get(key_id)
        if aead is None:
            name = key_id.rstrip(b"\0").decode("ascii", "replace")
            raise StoreError(f"a stored payload is encrypted with key {name!r}, which is not configured")
        nonce = data[len(MAGIC) + KEY_ID_BYTES : HEADER_BYTES]
        try:
            return aead.decrypt(nonce, data[HEADER_BYTES:], column.encode())
        except InvalidTag as err:
            raise StoreError(
                f"a stored {column} payload failed its integrity check (tampered or wrong key)"
            ) from err

    def is_current(self, data: bytes | None) -> bool:
        """True when the value needs no re-encryption (absent, or under the active key)."""
        return data is None or data[: len(MAGIC) + KEY_ID_BYTES] == MAGIC + self.active


def keyed_digest(secret: bytes, data: bytes) -> str:
    """HMAC-SHA256 of `data` under `secret`, 128 bits, hex: what order keys and the components'
    look-up columns store instead of a clear identifier."""
    return hmac.new(secret, data, hashlib.sha256).digest()[:ORDER_DIGEST_BYTES].hex()


def order_secret(key: bytes) -> bytes:
    """The order-key digest secret derived from a 32-byte key (HKDF-SHA256, its own `info`), so the
    digest never reuses a data key as such. Derived from the `digest_key` file when configured (it
    survives payload-key rotations), else from the active payload key (it changes with it)."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=ORDER_DIGEST_INFO).derive(key)
