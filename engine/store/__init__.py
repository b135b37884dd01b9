"""The durable message store (see base.py for the contract)."""

from __future__ import annotations

from pathlib import Path

from engine.config import StoreConfig
from engine.store.base import Store
from engine.store.cipher import PayloadCipher


def open_store(config: StoreConfig, root: Path) -> Store:
    """The configured backend (not yet opened)."""
    if config.type == "postgresql":
        from engine.store.postgres import PostgresStore

        return PostgresStore(
            config.dsn,
            config.pool_size,
            config.max_batch,
            config.retention_days,
            config.lease_seconds,
            payload_cipher(config, root),
        )
    from engine.store.sqlite import SqliteStore

    path = Path(config.path)
    return SqliteStore(
        path if path.is_absolute() else root / path,
        config.synchronous,
        config.max_batch,
        config.max_size_mb * 1024 * 1024,
        payload_cipher(config, root),
    )


def payload_cipher(config: StoreConfig, root: Path) -> PayloadCipher | None:
    """The encryption-at-rest cipher of the configured keys (engine/store/cipher.py), if any."""
    if config.encryption is None:
        return None
    keys = {k: resolve(root, f) for k, f in config.encryption.keys.items()}
    digest_key = resolve(root, config.encryption.digest_key) if config.encryption.digest_key else None
    return PayloadCipher.from_files(keys, config.encryption.active, digest_key)


def resolve(root: Path, value: str) -> Path:
    path = Path(value)
    return path if path.is_absolute() else root / path
